"""The bad-input list: each case raises the project's error naming the cause, and leaves no complete flag."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.shared_data import SHARED_DATA
from tiler.errors import InputError, OutputError, ReadError
from tiler.geometry import BlockPartition, Window
from tiler.io import check_has_data, open_reader
from tiler.io.store import OutputStore

DATA = str(SHARED_DATA)


def _mini_job(reader, out, *, pixels_hash="job"):
    """What a job does with the io layer: check, create, write every block, mark complete last."""
    store = OutputStore.create(
        out, shape=reader.shape, num_classes=2, chunks=(256, 256), pixels_hash=pixels_hash
    )
    check_has_data(reader)
    for block in BlockPartition(reader.shape, (512, 512)):
        image = reader.read(block)
        store.write_block(block, (image[0] > 127).astype(np.uint8))
        store.record_block(str(block.start), {"ok": True})
    store.mark_complete({"blocks": len(store.block_records())})
    return store


def test_missing_file(tmp_path):
    with pytest.raises(ReadError, match=r"nope\.tif does not exist; check the path"):
        open_reader(tmp_path / "nope.tif")


def test_corrupt_file_names_file_and_window(tmp_path):
    reader = open_reader(f"{DATA}/corrupt.tif")  # the header opens
    with pytest.raises(
        ReadError, match=r"window start=\(512, 512\) stop=\(1024, 1024\) of .*corrupt\.tif failed"
    ):
        reader.read(Window((512, 512), (1024, 1024)))
    with pytest.raises(ReadError, match=r"corrupt\.tif"):
        _mini_job(reader, tmp_path / "out.zarr")
    store = OutputStore.open(tmp_path / "out.zarr")
    assert not store.complete and len(store.block_records()) == 3


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("notes.txt", id="txt"),
        pytest.param("image.xyz", id="xyz"),
        pytest.param("noext", id="none"),
    ],
)
def test_unsupported_format_lists_supported(tmp_path, name):
    (tmp_path / name).write_text("hello")
    with pytest.raises(ReadError, match=r"unsupported format .*Supported: rasters: .*nii.*svs"):
        open_reader(tmp_path / name)


def test_unknown_format_option():
    with pytest.raises(ReadError, match=r"format='jpeg' is not supported.*'raster'"):
        open_reader(f"{DATA}/RGB.byte.tif", format="jpeg")


def test_all_nodata_input(tmp_path):
    reader = open_reader(f"{DATA}/all-nodata.tif")
    assert reader.nodata == 0 and not reader.valid_mask(Window.from_shape(reader.shape)).any()
    with pytest.raises(
        InputError, match=r"every pixel is nodata \(value 0\).*all-nodata\.tif.*nothing to segment"
    ):
        check_has_data(reader)
    with pytest.raises(InputError, match=r"nothing to segment"):
        _mini_job(reader, tmp_path / "out.zarr")
    assert not OutputStore.open(tmp_path / "out.zarr").complete


def test_image_smaller_than_one_tile_reads_boundless(tmp_path):
    reader = open_reader(f"{DATA}/float_raster_with_nodata.tif")
    out = reader.read(Window((0, 0), (256, 256)))
    assert out.shape == (1, 256, 256) and np.all(out[0, 12:, :] == np.float32(reader.nodata))
    check_has_data(reader)


def test_rotated_transform_is_refused(tmp_path):
    path = tmp_path / "rotated.tif"
    profile = {
        "driver": "GTiff",
        "width": 8,
        "height": 8,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(10, 2, 500000, 2, -10, 5000000),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((1, 8, 8), np.uint8))
    with pytest.raises(InputError, match=r"rotated\.tif has a rotated/sheared transform.*gdalwarp"):
        open_reader(path)


def test_nan_pixels_are_not_valid_and_all_nan_has_no_data(tmp_path):
    path = tmp_path / "nan.tif"
    profile = {
        "driver": "GTiff",
        "width": 8,
        "height": 8,
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": Affine(10, 0, 500000, 0, -10, 5000000),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 8, 8), np.nan, np.float32))
    with pytest.raises(InputError, match=r"every pixel is nodata \(masked\)"):
        check_has_data(open_reader(path))


def test_4d_nifti_without_option(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(InputError, match=r"4d\.nii is a 4D NIfTI.*channels_from_4d=True"):
        open_reader(tmp_path / "4d.nii")


def test_unwritable_output_location():
    reader = open_reader(f"{DATA}/RGB.byte.tif")
    with pytest.raises(OutputError, match=r"cannot write the output store at /proc/tiler-out\.zarr"):
        _mini_job(reader, "/proc/tiler-out.zarr")


def test_output_holding_another_jobs_result(tmp_path):
    reader = open_reader(f"{DATA}/RGB.byte.tif")
    done = _mini_job(reader, tmp_path / "out.zarr", pixels_hash="first")
    assert done.complete
    with pytest.raises(
        OutputError, match=r"already holds the result of another job.*first.*second.*--overwrite"
    ):
        _mini_job(reader, tmp_path / "out.zarr", pixels_hash="second")
    kept = OutputStore.open(tmp_path / "out.zarr")
    assert kept.pixels_hash == "first" and kept.complete
