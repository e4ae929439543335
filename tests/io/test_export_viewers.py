"""Each export opened with the tools of its field: class names and colours where its viewers look for them.

COG: ``rio cogeo validate``, GDAL's own ``gdalinfo -json`` (category names, raster attribute table), mode
overviews. NIfTI: nibabel, and the 3D Slicer / ITK-SNAP label tables beside it parsed as those programs read
them. OME-Zarr: ``ome-zarr-models`` validation of the path a run prints, and ``ome-zarr`` (the reader behind
napari-ome-zarr) finding the image and its labels there. Quicklook: a legend, and a volume's three slices.
"""

from __future__ import annotations

import shlex
import warnings

import nibabel as nib
import numpy as np
import pytest
import rasterio
from PIL import Image

from tests.io.array_reader import ArrayReader
from tests.shared_data import SHARED_DATA
from tiler.geometry import BlockPartition, Window
from tiler.io import open_reader
from tiler.io.base import Georef
from tiler.io.export import (
    aux_path,
    export_cog,
    export_nifti,
    export_ome_zarr,
    label_table_paths,
    write_quicklook,
)
from tiler.io.scenes_files import write_satellite
from tiler.io.store import OutputStore

NAMES = ["water", "dense forest", "urban"]
COLORS = [[0, 90, 200], [20, 140, 40], [200, 60, 60]]


def _store(path, labels, *, georef=None, names=NAMES, colors=COLORS, chunks=None):
    chunks = chunks or tuple(min(64, n) for n in labels.shape)
    attrs = {"class_names": list(names), "class_colors": [list(c) for c in colors]}
    if georef is not None:
        attrs["georef"] = georef
    store = OutputStore.create(
        path, shape=labels.shape, num_classes=len(names), chunks=chunks, pixels_hash="c", attrs=attrs
    )
    for block in BlockPartition(store.shape, store.chunks):
        store.write_block(block, labels[block.slices])
    return store


@pytest.fixture
def raster(tmp_path, stand_in):
    scene = stand_in((300, 520), channels=3, dtype=np.uint8, image_nodata=0)
    write_satellite(scene, tmp_path / "img.tif", tmp_path / "truth.tif", block=256)
    reader = open_reader(tmp_path / "img.tif")
    labels = scene.read(Window.from_shape(scene.shape))[1]
    return reader, _store(tmp_path / "out.zarr", labels, georef=reader.georef), labels


# -- COG ---------------------------------------------------------------------------------------------------
def test_cog_validates_and_gdal_shows_the_class_names(tmp_path, raster):
    from rio_cogeo.cogeo import cog_validate

    from tests.io.gdal_c import gdalinfo

    reader, store, _ = raster
    out = export_cog(store, tmp_path / "pred.cog.tif", reference=reader)
    valid, errors, _ = cog_validate(str(out))
    assert valid, errors
    assert aux_path(out).name == "pred.cog.tif.aux.xml" and aux_path(out).is_file()
    info = gdalinfo(out)
    band = info["bands"][0]
    assert band["categories"] == NAMES
    assert band["description"] == "class" and band["noDataValue"] == store.nodata_label
    rat = info["rat"]
    columns = [f["name"] for f in rat["fieldDefn"]]
    assert rat["tableType"] == "thematic" and columns == ["Value", "Class", "Red", "Green", "Blue", "Alpha"]
    assert [f["usage"] for f in rat["fieldDefn"]] == [5, 2, 6, 7, 8, 9]  # min/max, name, red, green, blue, alpha
    assert [r["f"] for r in rat["row"]] == [[k, n, *c, 255] for k, (n, c) in enumerate(zip(NAMES, COLORS, strict=True))]


def test_cog_nodata_is_the_stores_nodata_label_not_the_inputs(tmp_path, raster):
    """The README's claim: the COG's nodata is output.nodata_label (the input here uses 0, a class index)."""
    reader, store, labels = raster
    assert reader.nodata == 0
    with rasterio.open(export_cog(store, tmp_path / "p.tif", reference=reader)) as cog:
        assert cog.nodata == store.nodata_label == 255
        assert np.array_equal(cog.read(1) == 255, labels == 255)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_cog_overviews_take_the_most_frequent_class(tmp_path):
    # every 2x2 cell holds its class three times and another class at the top left, where nearest would pick
    rng = np.random.default_rng(3)
    cells = rng.integers(0, 3, (512, 512)).astype(np.uint8)
    labels = np.kron(cells, np.ones((2, 2), np.uint8))
    labels[::2, ::2] = (cells + 1) % 3
    store = _store(tmp_path / "m.zarr", labels, chunks=(256, 256))
    out = export_cog(store, tmp_path / "m.tif")
    with rasterio.open(out, overview_level=0) as level1:
        assert level1.shape == (512, 512)
        assert np.array_equal(level1.read(1), cells)


# -- NIfTI -------------------------------------------------------------------------------------------------
def _read_ctbl(path):
    rows = {}
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Color table file")
    for line in lines:
        if line.startswith("#"):
            continue
        k, name, r, g, b, a = line.split()
        rows[int(k)] = (name, (int(r), int(g), int(b)), int(a))
    return rows


def _read_itksnap(path):
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        fields = shlex.split(line)
        k, r, g, b, a, vis, mesh, label = fields
        rows[int(k)] = (label, (int(r), int(g), int(b)), float(a), int(vis))
    return rows


def test_nifti_has_slicer_and_itksnap_label_tables_beside_it(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (12, 20, 24)).astype(np.uint8)
    labels[0] = 255
    georef = Georef(kind="volume", spacing=(2.0, 0.5, 0.5))
    store = _store(tmp_path / "v.zarr", labels, georef=georef, chunks=(6, 20, 24))
    out = export_nifti(store, tmp_path / "ct.nii.gz")
    assert np.array_equal(np.asarray(nib.load(out).dataobj).transpose(2, 1, 0), labels)
    tables = label_table_paths(out)
    assert {p.name for p in tables.values()} == {"ct.ctbl", "ct.itksnap.txt"}
    slicer = _read_ctbl(tables["ctbl"])
    assert slicer[1] == ("dense_forest", tuple(COLORS[1]), 255)  # Slicer: spaces become underscores
    assert [slicer[k][0] for k in range(3)] == ["water", "dense_forest", "urban"]
    assert slicer[255] == ("nodata", (0, 0, 0), 0)
    snap = _read_itksnap(tables["itksnap"])
    assert snap[1] == ("dense forest", tuple(COLORS[1]), 1.0, 1)
    assert snap[255][2:] == (0.0, 0)  # nodata transparent and hidden
    assert set(snap) == set(slicer) == {0, 1, 2, 255}


# -- OME-Zarr ---------------------------------------------------------------------------------------------
def _validate(path):
    """``ome-zarr-models validate <path>``: the group must parse as OME-Zarr with no validation warning."""
    import ome_zarr_models
    from ome_zarr_models.exceptions import ValidationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidationWarning)
        return ome_zarr_models.open_ome_zarr(str(path))


def _ome_nodes(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path)))())


@pytest.mark.parametrize("case", ["raster", "volume"])
def test_ome_zarr_validates_and_opens_with_the_image_and_its_labels(tmp_path, raster, case):
    from ome_zarr_models.v05.image import Image as OmeImage

    if case == "raster":
        reader, store, labels = raster
        image = reader.read(Window.from_shape(reader.shape))
    else:
        rng = np.random.default_rng(1)
        labels = rng.integers(0, 3, (10, 600, 40)).astype(np.uint8)
        image = rng.integers(0, 4000, (1, *labels.shape)).astype(np.int16)
        georef = Georef(kind="volume", spacing=(3.0, 0.8, 0.8))
        reader = ArrayReader(image, georef=georef)
        store = _store(tmp_path / "v.zarr", labels, georef=georef, chunks=(5, 128, 40))
    out = export_ome_zarr(store, tmp_path / "pred.ome.zarr", reader=reader)
    model = _validate(out)  # the printed path itself, not only labels/classes
    assert isinstance(model, OmeImage)
    assert model.labels is not None and model.labels.label_paths == ["classes"]
    meta = model.labels.get_image_labels_group("classes").ome_attributes.image_label
    assert {c.label_value for c in meta.colors} == {p.label_value for p in meta.properties} == {0, 1, 2, 255}
    nodes = _ome_nodes(out)
    root = nodes[0]
    assert np.array_equal(np.asarray(root.data[0]), image if image.shape[0] > 1 else image[0])
    label_nodes = [n for n in nodes if "color" in n.metadata]
    assert len(label_nodes) == 1
    assert np.array_equal(np.asarray(label_nodes[0].data[0]), labels)
    assert label_nodes[0].metadata["properties"][1]["class"] == "dense forest"
    assert len(root.data) == len(label_nodes[0].data) >= (2 if case == "volume" else 1)
    if case == "volume":
        axes = model.ome_attributes.multiscales[0].axes
        assert [a.name for a in axes] == ["z", "y", "x"] and axes[0].unit == "millimeter"


# -- quicklook ---------------------------------------------------------------------------------------------
def _has_swatch(png, color):
    return bool(np.all(png[..., :3] == color, axis=-1).sum() >= 25)


def test_quicklook_has_a_legend_with_every_class(tmp_path, raster):
    reader, store, labels = raster
    png = np.asarray(Image.open(write_quicklook(store, tmp_path / "q.png", reader=reader)))
    h, w = labels.shape
    assert png.shape[0] >= h and png.shape[1] > w + 40
    legend = png[:, w:]
    for color in COLORS:
        assert _has_swatch(legend, color), color
    box = legend[legend[..., 3] == 255][:, :3]  # the legend: opaque, mostly white behind dark text
    assert len(box) and np.mean(np.all(box == 255, axis=-1)) > 0.5 and np.any(box.sum(-1) < 100)


def test_volume_quicklook_shows_three_orthogonal_slices_at_a_readable_size(tmp_path):
    # each middle plane holds its own class: 1 in z = mid, 2 in y = mid, 3 in x = mid
    d, h, w = 20, 60, 50
    spacing = (3.0, 0.8, 0.8)  # mm: extents 60, 48 and 40 mm, so z is drawn 3.75x a voxel's y or x
    labels = np.zeros((d, h, w), np.uint8)
    labels[d // 2] = 1
    labels[:, h // 2] = 2
    labels[:, :, w // 2] = 3
    names, colors = ["background", "a", "b", "c"], [[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250]]
    georef = Georef(kind="volume", spacing=spacing)
    store = _store(tmp_path / "v.zarr", labels, georef=georef, names=names, colors=colors, chunks=(10, 60, 50))
    png = np.asarray(Image.open(write_quicklook(store, tmp_path / "v.png")))
    px_per_mm = 384 / 60  # the largest extent drawn at 384 pixels

    def drawn(k):
        return int(np.all(png[..., :3] == colors[k], axis=-1).sum())

    z_panel = (h * spacing[1] * px_per_mm) * (w * spacing[2] * px_per_mm)
    y_panel = (d * spacing[0] * px_per_mm) * (w * spacing[2] * px_per_mm)
    x_panel = (d * spacing[0] * px_per_mm) * (h * spacing[1] * px_per_mm)
    assert drawn(1) == pytest.approx(z_panel, rel=0.05)  # class 1 is seen only in the z slice
    assert drawn(2) == pytest.approx(y_panel, rel=0.05)
    assert drawn(3) == pytest.approx(x_panel, rel=0.05)
    assert max(png.shape[:2]) >= 384
    over = np.asarray(Image.open(write_quicklook(store, tmp_path / "o.png", reader=ArrayReader(labels[None] * 100))))
    assert over.shape == png.shape


def test_quicklook_of_a_real_volume_is_readable(tmp_path):
    reader = open_reader(str(SHARED_DATA / "anatomical.nii"))
    volume = reader.read(Window.from_shape(reader.shape))[0]
    labels = (volume > 200).astype(np.uint8) + (volume > 400).astype(np.uint8)
    store = _store(tmp_path / "v.zarr", labels, georef=reader.georef, chunks=reader.shape)
    png = np.asarray(Image.open(write_quicklook(store, tmp_path / "v.png", reader=reader)))
    assert min(reader.shape) < 50 and max(png.shape[:2]) >= 384  # was 41x33 pixels at native size
    assert _has_swatch(png, COLORS[2])  # the legend
