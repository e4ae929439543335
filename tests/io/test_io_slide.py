"""Slide readers: pyramidal OME-TIFF written tile by tile, level choice by mpp, tissue mask, OpenSlide."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

from tests.shared_data import SHARED_DATA
from tiler.errors import InputError
from tiler.geometry import BlockPartition, Window
from tiler.io import detect_format, open_reader
from tiler.io.scenes_files import write_slide
from tiler.io.slide import OpenSlideReader, TiffSlideReader, choose_level
from tiler.scenes import slide_scene


@pytest.fixture(scope="module")
def slide_files(tmp_path_factory):
    scene = slide_scene((600, 700), seed=3, mpp=0.5)
    folder = tmp_path_factory.mktemp("slide")
    write_slide(scene, folder / "slide.ome.tif", folder / "truth.ome.tif", levels=3)
    image, labels = scene.read(Window.from_shape(scene.shape))
    return folder, image, labels


def test_pyramid_is_tiled_with_levels_and_mpp(slide_files):
    folder, image, _ = slide_files
    with tifffile.TiffFile(folder / "slide.ome.tif") as tif:
        series = tif.series[0]
        assert tif.is_ome and series.axes == "YXS"
        assert [lv.shape[:2] for lv in series.levels] == [(600, 700), (300, 350), (150, 175)]
        assert tif.pages[0].is_tiled
    reader = open_reader(folder / "slide.ome.tif")
    assert isinstance(reader, TiffSlideReader)
    assert reader.mpp == pytest.approx(0.5) and reader.shape == (600, 700) and reader.channels == 3
    assert np.array_equal(reader.read(Window.from_shape(reader.shape)), image)


@pytest.mark.parametrize(
    "mpp,level,shape",
    [
        pytest.param(0.5, 0, (600, 700), id="native"),
        pytest.param(1.05, 1, (300, 350), id="within-10%"),
        pytest.param(0.9, 0, (600, 700), id="between-levels-takes-finer"),
        pytest.param(4.0, 2, (150, 175), id="coarser-than-pyramid"),
        pytest.param(0.1, 0, (600, 700), id="finer-than-level0"),
    ],
)
def test_level_for_requested_mpp(slide_files, mpp, level, shape):
    folder, image, _ = slide_files
    reader = open_reader(folder / "slide.ome.tif", mpp=mpp)
    assert reader.level == level and reader.shape == shape
    assert reader.mpp == pytest.approx(0.5 * 2**level)
    f = 2**level
    window = Window((10, 20), (70, 100))
    assert np.array_equal(reader.read(window), image[:, ::f, ::f][(slice(None), *window.slices)])


def test_choose_level_table():
    mpps = [0.25, 0.5, 1.0, 2.0]
    assert [choose_level(mpps, m, None) for m in (0.25, 0.5, 0.54, 0.56, 3.0, None)] == [0, 1, 1, 1, 3, 0]
    assert choose_level(mpps, 3.0, level=2) == 2
    with pytest.raises(InputError, match=r"level=4 does not exist; this slide has levels 0\.\.3"):
        choose_level(mpps, None, 4)


def test_boundless_slide_read_and_pickle(slide_files):
    folder, image, _ = slide_files
    reader = open_reader(folder / "slide.ome.tif")
    window = Window((580, 690), (620, 720))
    out = pickle.loads(pickle.dumps(reader)).read(window)
    assert out.shape == (3, 40, 30)
    assert np.array_equal(out[:, :20, :10], image[:, 580:, 690:]) and not out[:, 20:].any()


def test_tissue_mask_matches_truth(slide_files):
    folder, _, labels = slide_files
    reader = open_reader(folder / "slide.ome.tif")
    mask = reader.valid_mask(Window.from_shape(reader.shape))
    tissue = labels > 0
    assert 0.05 < tissue.mean() < 0.95
    assert (mask == tissue).mean() > 0.97
    coarse = open_reader(folder / "slide.ome.tif", mpp=2.0)
    assert (coarse.valid_mask(Window.from_shape(coarse.shape)) == tissue[::4, ::4]).mean() > 0.95
    assert open_reader(folder / "slide.ome.tif", mask="none").valid_mask(Window((0, 0), (5, 5))) is None


def test_truth_tiff_reads_back(slide_files):
    folder, _, labels = slide_files
    truth = open_reader(folder / "truth.ome.tif")
    assert truth.channels == 1 and truth.dtype == np.uint8 and truth.mpp == pytest.approx(0.5)
    assert np.array_equal(truth.read(Window.from_shape(truth.shape))[0], labels)


def test_openslide_reader_on_tiled_tiff(slide_files):
    folder, image, _ = slide_files
    reader = open_reader(folder / "slide.ome.tif", format="openslide")
    assert isinstance(reader, OpenSlideReader)
    assert reader.mpp == pytest.approx(0.5) and reader.shape == (600, 700)
    window = Window((100, 200), (164, 296))
    assert np.array_equal(reader.read(window), image[(slice(None), *window.slices)])
    assert pickle.loads(pickle.dumps(reader)).read(window).shape == (3, 64, 96)


def test_detect_format_by_name_and_tags(slide_files):
    folder, _, _ = slide_files
    assert detect_format(str(folder / "slide.ome.tif")) == "tiff-slide"
    assert detect_format(str(SHARED_DATA / "RGB.byte.tif")) == "raster"
    assert detect_format("/vsis3/bucket/scene.tif") == "raster"
    assert detect_format("case.svs") == "openslide" and detect_format("ct.nii.gz") == "nifti"


@pytest.fixture(scope="module")
def generic_pyramid(tmp_path_factory):
    """A plain tiled TIFF whose reduced-resolution pages OpenSlide reads as levels 1 and 2 (exact decimations)."""
    image = np.random.default_rng(5).integers(0, 255, (600, 700, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("generic") / "pyramid.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(3):
            tw.write(image[:: 2**k, :: 2**k], tile=(64, 64), photometric="rgb", compression="zlib",
                     subfiletype=1 if k else 0)
    return path, np.moveaxis(image, -1, 0)


def _refuse_full_resolution(monkeypatch, reader):  # noqa: ANN001, ANN202
    def refuse(self, window):  # noqa: ANN001, ANN202
        raise AssertionError(f"read_sampled read the exposed level at {window}")

    monkeypatch.setattr(type(reader), "_read_inside", refuse)


@pytest.mark.parametrize("fmt", ["tiff-slide", "openslide"])
@pytest.mark.parametrize(("step", "level"), [(1, 0), (2, 1), (3, 1), (4, 2), (8, 2)])
def test_a_sampled_read_comes_from_the_coarsest_level_fine_enough(
    slide_files, generic_pyramid, monkeypatch, fmt, step, level
):
    if fmt == "tiff-slide":
        path, image = slide_files[0] / "slide.ome.tif", slide_files[1]
    else:
        path, image = generic_pyramid
    reader = open_reader(path, format=fmt)
    assert len(reader.level_shapes) == 3
    if level:
        _refuse_full_resolution(monkeypatch, reader)
    got = reader.read_sampled(step)
    assert got.shape == (3, -(-600 // step), -(-700 // step)) and got.dtype == np.uint8
    f = 2**level  # the level's pixel floor(i * step / f) is full-resolution pixel f * floor(i * step / f)
    rows = np.minimum(np.arange(got.shape[1]) * step // f, 600 // f - 1) * f
    cols = np.minimum(np.arange(got.shape[2]) * step // f, 700 // f - 1) * f
    assert np.array_equal(got, image[:, rows][:, :, cols])
    if step % f == 0:
        assert np.array_equal(got, image[:, ::step, ::step])


def test_a_sampled_read_of_a_coarser_exposed_level_uses_the_levels_below_it(slide_files, monkeypatch):
    folder, image, _ = slide_files
    reader = open_reader(folder / "slide.ome.tif", level=1)
    _refuse_full_resolution(monkeypatch, reader)
    assert np.array_equal(reader.read_sampled(2), image[:, ::4, ::4])  # level 2 is 2x coarser than level 1


def test_the_quicklook_of_a_pyramidal_slide_never_decodes_its_full_resolution(slide_files, tmp_path, monkeypatch):
    from PIL import Image

    from tiler.io.export import write_quicklook
    from tiler.io.store import OutputStore

    folder, _, labels = slide_files
    reader = open_reader(folder / "slide.ome.tif")
    store = OutputStore.create(
        tmp_path / "out.zarr", shape=reader.shape, num_classes=int(labels.max()) + 1, chunks=(256, 256),
        pixels_hash="h", attrs={"georef": reader.georef},
    )
    for window in BlockPartition(reader.shape, (256, 256)):
        store.write_block(window, labels[window.slices].astype(np.uint8))
    # max_size 175: every 4th pixel, which level 2 holds exactly, so the picture is the full-resolution one
    expected = _quicklook_from_full_resolution(store, reader, tmp_path)
    _refuse_full_resolution(monkeypatch, reader)
    got = np.asarray(Image.open(write_quicklook(store, tmp_path / "sampled.png", reader=reader, max_size=175)))
    assert np.array_equal(got, expected)


def _quicklook_from_full_resolution(store, reader, tmp_path):  # noqa: ANN001, ANN202
    """The quicklook drawn over the input read through the base class (full-resolution row bands)."""
    from PIL import Image

    from tiler.io.base import Reader
    from tiler.io.export import write_quicklook

    class FullResolution:
        def __getattr__(self, name):  # noqa: ANN001, ANN204
            return getattr(reader, name)

        def read_sampled(self, step):  # noqa: ANN001, ANN202
            return Reader.read_sampled(reader, step)

    path = write_quicklook(store, tmp_path / "over-full.png", reader=FullResolution(), max_size=175)
    return np.asarray(Image.open(path))
