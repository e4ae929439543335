"""Exports: COG that drops onto the source, NIfTI with the input affine, OME-Zarr labels, quicklook PNG."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
import zarr
from PIL import Image

import tiler.io.export as export_mod
from tests.shared_data import SHARED_DATA
from tiler.errors import OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io import open_reader
from tiler.io.export import export_cog, export_nifti, export_ome_zarr, write_quicklook
from tiler.io.scenes_files import write_satellite
from tiler.io.store import OutputStore

ANAT = str(SHARED_DATA / "anatomical.nii")


def _fill(store, labels):
    for block in BlockPartition(store.shape, store.chunks):
        store.write_block(block, labels[block.slices])


@pytest.fixture
def raster_case(tmp_path, stand_in):
    scene = stand_in((1100, 1300), channels=2, dtype=np.uint16, image_nodata=0)
    write_satellite(scene, tmp_path / "img.tif", tmp_path / "truth.tif", block=512)
    reader = open_reader(tmp_path / "img.tif")
    store = OutputStore.create(
        tmp_path / "out.zarr",
        shape=reader.shape,
        num_classes=3,
        chunks=(256, 256),
        pixels_hash="c",
        attrs={
            "georef": reader.georef,
            "class_names": list(scene.class_names),
            "class_colors": [list(c) for c in scene.class_colors],
        },
    )
    labels = scene.read(Window.from_shape(scene.shape))[1]
    _fill(store, labels)
    return reader, store, labels


def test_cog_is_valid_and_drops_onto_source(tmp_path, raster_case):
    reader, store, labels = raster_case
    out = export_cog(store, tmp_path / "pred.tif", reference=reader)
    with rasterio.open(out) as cog, rasterio.open(reader.path) as src:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cog.profile["tiled"] and cog.profile["blockxsize"] == 512
        assert cog.overviews(1) and cog.overviews(1)[0] == 2
        assert cog.crs == src.crs and cog.transform == src.transform
        assert (cog.width, cog.height) == (src.width, src.height)
        assert cog.nodata == 255 and cog.dtypes[0] == "uint8"
        assert np.array_equal(cog.read(1), labels)
        assert cog.colormap(1)[1][:3] == (0, 255, 0)
    assert not list(tmp_path.glob(".tiler-tmp-*"))  # temporary folder and file removed


def test_cog_of_a_map_too_big_for_memory_goes_through_a_temporary_file_and_is_the_same(
    tmp_path, raster_case, monkeypatch
):
    reader, store, labels = raster_case
    in_memory = export_cog(store, tmp_path / "memory.tif", reference=reader)
    made: list[str] = []
    real_open = export_mod.rasterio.open

    def spy(path, *args, **kwargs):  # noqa: ANN001, ANN202 - records which sources export_cog writes
        if args[:1] == ("w",):
            made.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(export_mod, "COG_IN_MEMORY_BYTES", labels.nbytes - 1)
    monkeypatch.setattr(export_mod.rasterio, "open", spy)
    on_disk = export_cog(store, tmp_path / "disk.tif", reference=reader)
    monkeypatch.undo()

    assert len(made) == 1 and made[0].endswith("labels.tif") and ".tiler-tmp-" in made[0]
    with rasterio.open(in_memory) as a, rasterio.open(on_disk) as b:
        assert a.profile == b.profile and a.overviews(1) == b.overviews(1) and a.colormap(1) == b.colormap(1)
        for level in (1, 2, 4):
            shape = (a.height // level, a.width // level)
            assert np.array_equal(a.read(1, out_shape=shape), b.read(1, out_shape=shape))
        assert np.array_equal(b.read(1), labels)
    assert not list(tmp_path.glob(".tiler-tmp-*"))


def test_cog_georef_from_store_by_default(tmp_path, raster_case):
    reader, store, _ = raster_case
    with rasterio.open(export_cog(store, tmp_path / "p.tif")) as cog:
        assert cog.transform == rasterio.open(reader.path).transform


def test_cog_refuses_unwritable_folder(tmp_path, raster_case):
    _, store, _ = raster_case
    with pytest.raises(OutputError, match=r"cannot write .*missing.*not writable"):
        export_cog(store, tmp_path / "missing" / "p.tif")


def test_nifti_export_keeps_affine(tmp_path):
    reader = open_reader(ANAT)
    labels = (reader.read(Window.from_shape(reader.shape))[0] > 200).astype(np.uint8)
    store = OutputStore.create(
        tmp_path / "v.zarr",
        shape=reader.shape,
        num_classes=2,
        chunks=(8, 41, 33),
        pixels_hash="c",
        attrs={"georef": reader.georef},
    )
    _fill(store, labels)
    out = export_nifti(store, tmp_path / "pred.nii.gz")
    img = nib.load(out)
    assert np.allclose(img.affine, nib.load(ANAT).affine)
    assert img.get_data_dtype() == np.uint8
    again = open_reader(out)
    assert np.array_equal(again.read(Window.from_shape(again.shape))[0], labels)


def test_ome_zarr_labels_pyramid(tmp_path, raster_case):
    reader, store, labels = raster_case
    out = export_ome_zarr(store, tmp_path / "pred.ome.zarr", reader=reader)
    root = zarr.open_group(out, mode="r")
    assert root["labels"].attrs["ome"]["labels"] == ["classes"]
    group = root["labels/classes"]
    meta = group.attrs["ome"]
    assert meta["version"] == "0.5"
    datasets = meta["multiscales"][0]["datasets"]
    assert len(datasets) >= 2
    assert np.array_equal(group["0"][...], labels)
    assert np.array_equal(group["1"][...], labels[::2, ::2])
    assert datasets[1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0]
    colors = {c["label-value"]: c["rgba"] for c in meta["image-label"]["colors"]}
    assert colors[0] == [255, 0, 0, 255] and colors[255][3] == 0
    assert meta["image-label"]["properties"][2]["class"] == "c"
    # the input's pixels at the root, one level per label level
    image = reader.read(Window.from_shape(reader.shape))
    assert np.array_equal(root["0"][...], image)
    assert len(root.attrs["ome"]["multiscales"][0]["datasets"]) == len(datasets)


def test_quicklook_png(tmp_path, raster_case):
    reader, store, labels = raster_case
    plain = Image.open(write_quicklook(store, tmp_path / "q.png", max_size=256))
    assert plain.mode == "RGBA"
    step = -(-1300 // 256)
    h, w = labels[::step, ::step].shape
    alpha = np.asarray(plain)[:h, :w, 3]  # the map at the top left, the legend to its right
    assert plain.size[0] > w and plain.size[1] >= h
    assert np.array_equal(alpha == 0, labels[::step, ::step] == 255)
    over = np.asarray(Image.open(write_quicklook(store, tmp_path / "o.png", reader=reader, max_size=256)))
    assert over.shape == np.asarray(plain).shape and np.all(over[:h, :w, 3] == 255)


def test_landsat_band_round_trips_through_store_and_cog(tmp_path):
    reader = open_reader(str(SHARED_DATA / "RGB.byte.tif"), bands=[2])
    band = reader.read(Window.from_shape(reader.shape))[0]
    store = OutputStore.create(
        tmp_path / "l.zarr",
        shape=reader.shape,
        num_classes=256,
        chunks=(128, 128),
        nodata_label=0,
        pixels_hash="c",
        attrs={"georef": reader.georef.to_attrs()},
    )
    _fill(store, band)
    again = open_reader(export_cog(store, tmp_path / "band.tif"))
    assert again.georef == reader.georef and again.nodata == reader.nodata == 0
    assert np.array_equal(again.read(Window.from_shape(again.shape))[0], band)
    full = Window.from_shape(reader.shape)
    assert np.array_equal(again.valid_mask(full), band != 0)
