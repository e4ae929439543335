"""Careless and hostile inputs at the reader (issue 17): invalid pixels, odd dtypes and affines, format
detection, network hangs, credentials in GDAL options, huge sparse rasters."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
import zarr
from rasterio.transform import Affine

from tests.io.conftest import DATA
from tiler.blend import Blender
from tiler.engine.work import blocks_of, infer_block, prepare_block
from tiler.errors import InputError, ReadError
from tiler.geometry import TileGrid, Window
from tiler.io import check_has_data, detect_format, open_reader
from tiler.model.checkpoint import LoadedModel
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import ModelSpec, build_network

TRANSFORM = Affine(10, 0, 500000, 0, -10, 5000000)


def _write(path: Path, data: np.ndarray, **extra: object) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": str(data.dtype),
        "crs": "EPSG:32633",
        "transform": TRANSFORM,
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _float_image(shape: tuple[int, int] = (96, 80), channels: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 100, (channels, *shape)).astype(np.float32)


# ------------------------------------------------------------------------------- non-finite pixels


@pytest.mark.parametrize(
    ("nodata", "fill"),
    [
        pytest.param(math.nan, 0.0, id="nodata=nan->fill 0"),
        pytest.param(None, 0.0, id="no nodata->fill 0"),
        pytest.param(-9999.0, -9999.0, id="nodata=-9999->fill nodata"),
    ],
)
def test_nan_and_inf_pixels_are_invalid_and_read_as_the_fill_value(tmp_path, nodata, fill):
    data = _float_image((20, 30))
    data[0, 3:5, 4:9] = np.nan
    data[1, 10, 10] = np.inf
    data[0, 12, 2] = -np.inf
    extra = {} if nodata is None else {"nodata": nodata}
    reader = open_reader(_write(tmp_path / "bad.tif", data, **extra))
    bad = ~np.isfinite(data).all(axis=0)
    whole = Window((0, 0), (20, 30))
    pixels, valid = reader.read_masked(whole)
    assert reader.fill == fill
    assert np.array_equal(valid, ~bad)
    assert np.array_equal(reader.valid_mask(whole), ~bad)
    for out in (pixels, reader.read(whole)):
        assert np.isfinite(out).all()
        assert np.all(out[:, bad] == fill) and np.array_equal(out[:, ~bad], data[:, ~bad])


def test_boundless_read_of_a_nan_nodata_raster_is_finite(tmp_path):
    reader = open_reader(_write(tmp_path / "nan.tif", _float_image((10, 10)), nodata=math.nan))
    window = Window((-4, -4), (14, 14))
    pixels, valid = reader.read_masked(window)
    assert np.isfinite(reader.read(window)).all() and np.isfinite(pixels).all()
    assert np.all(pixels[:, :4] == 0) and valid is not None and not valid[:4].any() and valid[4:14, 4:14].all()


def test_nan_pixels_are_invalid_even_with_mask_none(tmp_path):
    data = _float_image((8, 8))
    data[:, 2, 3] = np.nan
    reader = open_reader(_write(tmp_path / "nan.tif", data), mask="none")
    pixels, valid = reader.read_masked(Window((0, 0), (8, 8)))
    assert valid is not None and not valid[2, 3] and valid.sum() == 63 and np.isfinite(pixels).all()


def test_nan_voxels_are_invalid_in_a_volume_with_a_threshold(tmp_path):
    data = np.full((4, 5, 6), 100.0, np.float32)
    data[1, 2, 3] = np.nan
    data[2, 0, 0] = np.inf  # above any threshold, still not data
    nib.save(nib.Nifti1Image(np.transpose(data, (2, 1, 0)), np.eye(4)), tmp_path / "v.nii")
    reader = open_reader(tmp_path / "v.nii", threshold=-500.0)
    pixels, valid = reader.read_masked(Window((0, 0, 0), (4, 5, 6)))
    assert valid is not None and not valid[1, 2, 3] and not valid[2, 0, 0] and valid.sum() == 118
    assert np.isfinite(pixels).all() and np.isfinite(reader.read(Window((0, 0, 0), (4, 5, 6)))).all()


def _predict() -> TileRunner:
    torch.manual_seed(0)
    spec = ModelSpec("UNet", 2, 2, 3, args={"channels": [4, 8], "strides": [2], "num_res_units": 0})
    model = LoadedModel(build_network(spec), spec, Normalization("meanstd", mean=(50.0,), std=(30.0,)),
                        ("a", "b", "c"), ((0, 0, 0),) * 3)
    return TileRunner(model, device="cpu", batch_size=4, threads=1)


def _probabilities(path: Path, predict: TileRunner) -> tuple[np.ndarray, np.ndarray, int]:
    reader = open_reader(path)
    grid = TileGrid(reader.shape, (32, 32), (8, 8))
    probs = np.zeros((3, *reader.shape), np.float32)
    valid = np.ones(reader.shape, bool)
    skipped = 0
    for block in blocks_of(grid, (48, 48)):
        prepared = prepare_block(block, grid, read=reader.read, read_masked=reader.read_masked)
        skipped += prepared.stats.tiles_skipped
        # one tile per call: a batch's other tiles (which skipping changes) move float32 results by an ulp
        result, _ = infer_block(prepared, grid, predict=predict, blender=Blender("gaussian"), num_classes=3,
                                batch_size=1, probabilities="float32")
        assert result.probabilities is not None
        probs[(slice(None), *block.slices)] = result.probabilities
        if prepared.valid is not None:
            valid[block.slices] = prepared.valid
    return probs, valid, skipped


@pytest.mark.parametrize("nodata", [pytest.param(math.nan, id="nodata=nan"), pytest.param(None, id="no nodata")])
def test_nan_pixels_leave_valid_probabilities_finite_and_equal_to_fill_value_run(tmp_path, nodata):
    data = _float_image()
    data[:, 48:80, 0:32] = np.nan  # the whole tile at (48, 0) is NaN: skipped
    data[0, 10, 50], data[1, 60, 60] = np.nan, np.nan  # lone NaN pixels inside tiles that run
    extra = {} if nodata is None else {"nodata": nodata}
    filled = np.where(np.isfinite(data).all(axis=0), data, 0.0).astype(np.float32)
    predict = _predict()
    probs, valid, skipped = _probabilities(_write(tmp_path / "nan.tif", data, **extra), predict)
    expected, _, _ = _probabilities(_write(tmp_path / "filled.tif", filled, **extra), predict)
    bad = ~np.isfinite(data).all(axis=0)
    assert np.array_equal(valid, ~bad)
    assert np.isfinite(probs).all()
    assert np.array_equal(probs[:, ~bad], expected[:, ~bad])
    assert skipped >= 1  # the all-NaN tile never reached the network


# ------------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    "dtype", [pytest.param("complex64", id="complex64"), pytest.param("complex_int16", id="cint16")]
)
def test_complex_raster_is_refused_at_open(tmp_path, dtype):
    path = tmp_path / "slc.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype=dtype, crs="EPSG:32633",
                       transform=TRANSFORM) as dst:
        if dtype == "complex64":
            dst.write(np.ones((1, 8, 8), np.complex64))
    with pytest.raises(InputError, match=rf"slc\.tif has pixels of dtype {dtype}.*real-valued.*Convert"):
        open_reader(path)


@pytest.mark.parametrize(
    "dtype", [pytest.param("complex128", id="complex128"), pytest.param("U4", id="string")]
)
def test_unsupported_zarr_dtype_is_refused_at_open(tmp_path, dtype):
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=(2, 3, 4), dtype=dtype, chunks=(2, 3, 4))
    arr[...] = np.ones((2, 3, 4)).astype(dtype)
    with pytest.raises(InputError, match=r"v\.zarr has pixels of dtype .*tiler cannot segment.*Convert"):
        open_reader(tmp_path / "v.zarr")


def test_complex_nifti_is_refused_at_open(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)), tmp_path / "c.nii")
    with pytest.raises(InputError, match=r"c\.nii has pixels of dtype complex64"):
        open_reader(tmp_path / "c.nii")


# ------------------------------------------------------------------------------- NIfTI affine


@pytest.mark.parametrize(
    ("affine", "problem"),
    [
        pytest.param(np.diag([1.0, 1.0, 0.0, 1.0]), "singular", id="zero voxel size"),
        pytest.param(np.array([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "singular", id="collinear"),
        pytest.param(np.diag([1.0, np.nan, 1.0, 1.0]), "non-finite", id="nan"),
    ],
)
def test_nifti_with_singular_or_nan_affine_is_refused_at_open(tmp_path, affine, problem):
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), None)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, tmp_path / "bad.nii")
    assert nib.load(tmp_path / "bad.nii").header.get_sform(coded=True)[1] == 1
    with pytest.raises(ReadError, match=rf"bad\.nii has a {problem} affine.*Fix the header"):
        open_reader(tmp_path / "bad.nii")


# ------------------------------------------------------------------------------- format detection


def test_geotiff_under_a_folder_named_zarr_opens_as_a_raster(tmp_path):
    folder = tmp_path / "survey.zarr-exports"
    folder.mkdir()
    path = _write(folder / "labels.tif", np.ones((1, 8, 8), np.uint8))
    assert detect_format(str(path)) == "raster"
    assert open_reader(path).format == "raster"


def test_zarr_store_is_recognised_by_its_metadata_not_its_name(tmp_path):
    zarr.create_array(str(tmp_path / "scan"), shape=(2, 3, 4), dtype="uint8", chunks=(2, 3, 4))[...] = 1
    assert detect_format(str(tmp_path / "scan")) == "zarr"
    assert open_reader(tmp_path / "scan").shape == (2, 3, 4)


# ------------------------------------------------------------------------------- network


class _SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers; stops itself after ``life`` s."""

    def __init__(self, life: float = 40.0) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.deadline = time.monotonic() + life
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conns = []
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                conns.append(self.sock.accept()[0])
            except TimeoutError:
                continue
        for conn in conns:
            conn.close()
        self.sock.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def silent_server() -> Iterator[_SilentServer]:
    server = _SilentServer()
    yield server
    server.close()


@pytest.mark.timeout(120)  # a hang guard: without GDAL's low-speed limit the read waits forever
def test_vsicurl_server_that_never_answers_fails_with_one_line_error(silent_server):
    with pytest.raises(ReadError, match=r"cannot open /vsicurl/http://127\.0\.0\.1.*GDAL_HTTP_LOW_SPEED_TIME") as info:
        open_reader(f"/vsicurl/http://127.0.0.1:{silent_server.port}/x.tif")
    assert "\n" not in str(info.value)


def test_network_timeouts_are_defaults_that_input_gdal_options_override(silent_server):
    from tiler.io.raster import NETWORK_GDAL_OPTIONS, RasterReader

    assert NETWORK_GDAL_OPTIONS["GDAL_HTTP_TIMEOUT"] <= 30
    with pytest.raises(ReadError, match=r"GDAL_HTTP_LOW_SPEED_TIME=1 s"):
        RasterReader(f"/vsicurl/http://127.0.0.1:{silent_server.port}/y.tif",
                     gdal_options={"GDAL_HTTP_LOW_SPEED_TIME": 1, "GDAL_HTTP_MAX_RETRY": 0})


def test_aws_keys_in_gdal_options_give_a_read_error_without_the_secret(silent_server):
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    options = {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_S3_ENDPOINT": f"127.0.0.1:{silent_server.port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
        "GDAL_HTTP_LOW_SPEED_TIME": 1, "GDAL_HTTP_MAX_RETRY": 0,
    }
    with pytest.raises(ReadError, match=r"cannot open /vsis3/bucket/x\.tif") as info:
        open_reader("/vsis3/bucket/x.tif", gdal_options=options)
    assert secret not in str(info.value) and "AKIAIOSFODNN7EXAMPLE" not in str(info.value)


def test_signed_url_signature_is_not_in_reader_errors(silent_server):
    url = f"/vsicurl/http://user:hunter2@127.0.0.1:{silent_server.port}/x.tif?X-Amz-Signature=deadbeef42&sig=s3cr3t"
    with pytest.raises(ReadError) as info:
        open_reader(url, gdal_options={"GDAL_HTTP_LOW_SPEED_TIME": 1, "GDAL_HTTP_MAX_RETRY": 0})
    text = str(info.value)
    assert "deadbeef42" not in text and "s3cr3t" not in text and "hunter2" not in text
    assert "X-Amz-Signature=***" in text


# ------------------------------------------------------------------------------- huge sparse raster


def _sparse(path: Path, side: int, *, block_at: tuple[int, int] | None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1, dtype="uint8", nodata=0,
                       tiled=True, blockxsize=512, blockysize=512, sparse_ok=True, crs="EPSG:32633",
                       transform=TRANSFORM) as dst:
        if block_at is not None:
            r, c = block_at
            dst.write(np.ones((1, 512, 512), np.uint8), window=rasterio.windows.Window(c, r, 512, 512))
    return path


@pytest.mark.timeout(120)  # a hang guard: reading the 10-gigapixel raster whole would take far longer
def test_huge_sparse_all_nodata_raster_is_refused(tmp_path):
    for path in (_sparse(tmp_path / "empty.tif", 100_000, block_at=None), Path(DATA) / "all-nodata.tif"):
        reader = open_reader(path)
        with pytest.raises(InputError, match=rf"every pixel is nodata \(value 0\) in .*{path.name}.*nothing to"):
            check_has_data(reader)


@pytest.mark.timeout(120)  # a hang guard: reading the 10-gigapixel raster whole would take far longer
def test_huge_sparse_raster_with_one_stored_block_is_found(tmp_path):
    reader = open_reader(_sparse(tmp_path / "one.tif", 100_000, block_at=(99_328, 99_328)))
    check_has_data(reader)


def test_tissue_mask_of_a_single_level_slide_never_reads_the_whole_level(tmp_path, monkeypatch):
    import tifffile

    from tiler.io import slide

    rgb = np.full((4096, 4096, 3), 255, np.uint8)
    rgb[1000:3000, 1000:3000] = (180, 60, 140)
    tifffile.imwrite(tmp_path / "s.ome.tif", rgb, tile=(256, 256), photometric="rgb")
    monkeypatch.setattr(slide, "TISSUE_MASK_SIZE", 512)
    reader = open_reader(tmp_path / "s.ome.tif")
    seen: list[tuple[int, ...]] = []
    original = reader._to_channels_first

    def spy(data: np.ndarray) -> np.ndarray:
        seen.append(data.shape)
        return original(data)

    monkeypatch.setattr(reader, "_to_channels_first", spy)
    mask = reader.valid_mask(Window((0, 0), (4096, 4096)))
    assert mask is not None and 0.2 < mask.mean() < 0.3
    assert max(math.prod(s) for s in seen) <= 512 * 512 * 3
