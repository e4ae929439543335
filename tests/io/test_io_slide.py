"""Slide readers: pyramidal OME-TIFF written tile by tile, level choice by mpp, tissue mask, OpenSlide."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

from tests.shared_data import SHARED_DATA
from tiler.errors import InputError
from tiler.geometry import Window
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
