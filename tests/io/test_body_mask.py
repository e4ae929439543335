"""``mask="body"`` on volumes: the body of a CT found at low resolution, the air around it invalid.

The scene, stated once: a CT of 40 slices of 96×96 (``(D, H, W)``), air at -1000 HU; a body (an elliptic
cylinder through every slice, 40 HU) holding a lung (-850 HU) that reaches the first slice through an airway,
so only hole filling slice by slice (not in 3D) makes it body; a table (0 HU) under the body, 10 voxels of
air apart, and bright specks (300 HU) in the air.
"""

from __future__ import annotations

import copy
import pickle

import nibabel as nib
import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin
from scipy import ndimage

from tests.dicom_series import write_series
from tiler.errors import ReadError
from tiler.geometry import BlockPartition, Window
from tiler.io import open_reader
from tiler.io.masks import body_mask, upsample_mask
from tiler.io.volume import NiftiReader, ZarrReader, read_strided

SHAPE = (40, 96, 96)
AIR, TISSUE, LUNG, TABLE, SPECK = -1000, 40, -850, 0, 300


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CT (D, H, W) int16, the body (lung and airway included) and the outside objects, bool (D, H, W)."""
    z, y, x = np.indices(SHAPE)
    body = ((y - 44) / 30.0) ** 2 + ((x - 48) / 36.0) ** 2 <= 1.0  # rows 14..74, columns 12..84
    lung = (((y - 44) / 14.0) ** 2 + ((x - 36) / 10.0) ** 2 <= 1.0) & (z >= 8) & (z < 32)
    airway = ((y - 44) ** 2 + (x - 36) ** 2 <= 9) & (z < 8)  # from the lung up to the first slice
    table = (y >= 84) & (y < 87) & (x >= 10) & (x < 86)
    specks = np.zeros(SHAPE, dtype=bool)
    specks[tuple(np.array([(3, 2, 2), (20, 5, 90), (37, 90, 3), (10, 93, 93)]).T)] = True
    ct = np.full(SHAPE, AIR, dtype=np.int16)
    ct[body] = TISSUE
    ct[lung | airway] = LUNG
    ct[table] = TABLE
    ct[specks] = SPECK
    return ct, body, table | specks


@pytest.fixture(scope="module")
def scene():
    return _scene()


@pytest.fixture(scope="module")
def ct_nifti(tmp_path_factory, scene):
    path = tmp_path_factory.mktemp("ct") / "ct.nii"
    nib.save(nib.Nifti1Image(scene[0].transpose(2, 1, 0), np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return str(path)


@pytest.fixture(scope="module")
def ct_zarr(tmp_path_factory, scene):
    path = tmp_path_factory.mktemp("ct") / "ct.zarr"
    arr = zarr.create_array(str(path), shape=SHAPE, chunks=(8, 48, 48), dtype="int16")
    arr[:] = scene[0]
    return str(path)


@pytest.fixture(params=[pytest.param(128, id="full-res"), pytest.param(20, id="strided-2x5x5")])
def mask_size(request, monkeypatch):
    """BODY_MASK_SIZE: 128 keeps the 40×96×96 scene whole, 20 reads every (2, 5, 5)-th voxel (96 = 19·5 + 1)."""
    monkeypatch.setattr("tiler.io.volume.BODY_MASK_SIZE", request.param)
    monkeypatch.setattr("tiler.io.volume.STRIDED_SLAB_VOXELS", 96 * 96 * 4)  # several slabs
    return request.param


def _whole(reader) -> np.ndarray:
    mask = reader.valid_mask(Window.from_shape(reader.shape))
    assert mask is not None and mask.dtype == bool and mask.shape == reader.shape
    return mask


def test_body_mask_covers_the_body_and_its_lungs_not_the_air_table_or_specks(ct_nifti, scene, mask_size):
    ct, body, outside = scene
    reader = open_reader(ct_nifti, mask="body")
    strides = reader.body_strides()
    assert strides == ((1, 1, 1) if mask_size == 128 else (2, 5, 5))
    mask = _whole(reader)
    assert mask[body].all(), "a body voxel (tissue, lung or airway) is outside the mask"
    assert not mask[outside].any(), "the table or a speck is in the mask"
    # a mask voxel lies at most 2 low-resolution voxels (sampling + the one-voxel margin) from the body
    near = ndimage.maximum_filter(body, size=tuple(4 * s - 1 for s in strides))
    assert (~near).mean() > 0.3 and not (mask & ~near).any()  # the air away from the body is outside the mask


def test_body_mask_window_by_window_equals_the_whole(ct_nifti, mask_size):
    reader = open_reader(ct_nifti, mask="body")
    whole = _whole(reader)
    assert whole.any() and not whole.all()
    low, (sd, sh, sw) = reader.body_mask_lowres(), reader.body_strides()
    blocks = low.repeat(sd, axis=0).repeat(sh, axis=1).repeat(sw, axis=2)  # each low-res voxel a block
    assert np.array_equal(whole, blocks[: SHAPE[0], : SHAPE[1], : SHAPE[2]])  # the last blocks clipped
    for window in BlockPartition(SHAPE, (7, 33, 40)):
        assert np.array_equal(reader.valid_mask(window), whole[window.slices]), window
    boundless = Window((-3, 80, -5), (5, 101, 30))
    part = reader.valid_mask(boundless)
    inside = boundless.clip(SHAPE)
    assert inside is not None
    assert np.array_equal(part[inside.relative_to(boundless).slices], whole[inside.slices])
    assert part.sum() == whole[inside.slices].sum()  # False past the volume's edge
    pixels, masked = reader.read_masked(Window((10, 20, 30), (17, 60, 90)))
    assert np.array_equal(masked, whole[10:17, 20:60, 30:90]) and pixels.shape == (1, 7, 40, 60)


def test_zarr_and_dicom_of_the_same_ct_give_the_same_mask(ct_nifti, ct_zarr, scene, tmp_path, mask_size):
    expected = _whole(open_reader(ct_nifti, mask="body"))
    from_zarr = open_reader(ct_zarr, mask="body")
    assert isinstance(from_zarr, ZarrReader)
    assert np.array_equal(_whole(from_zarr), expected)
    folder = tmp_path / "series"
    write_series(folder, scene[0].astype(np.float64), intercept=-1024.0)
    assert np.array_equal(_whole(open_reader(folder, mask="body")), expected)


def test_threshold_mask_is_unchanged_without_body(ct_nifti, scene):
    ct = scene[0]
    assert open_reader(ct_nifti).valid_mask(Window.from_shape(SHAPE)) is None
    by_threshold = _whole(open_reader(ct_nifti, threshold=-500.0))
    assert np.array_equal(by_threshold, ct > -500)  # the lung is out, the table is in: per voxel


def test_body_threshold_follows_threshold(ct_nifti):
    assert _whole(open_reader(ct_nifti, mask="body", threshold=-1100.0)).all()  # the air is body too
    assert not _whole(open_reader(ct_nifti, mask="body", threshold=1000.0)).any()  # nothing is body


def test_a_reader_copied_or_pickled_keeps_the_mask_without_reading_again(ct_nifti, monkeypatch):
    reader = open_reader(ct_nifti, mask="body")
    assert isinstance(reader, NiftiReader)
    early_copy = copy.copy(reader)  # a thread's copy, made before the mask was computed
    early_pickle = pickle.dumps(reader)
    whole = _whole(reader)
    late_pickle = pickle.loads(pickle.dumps(reader))
    late_copy = copy.copy(reader)

    def no_reading(self, window):
        raise AssertionError(f"pixels read again for {window}")

    monkeypatch.setattr(NiftiReader, "_read_inside", no_reading)
    for other in (early_copy, late_copy, late_pickle):
        assert np.array_equal(_whole(other), whole)
    monkeypatch.undo()
    assert np.array_equal(_whole(pickle.loads(early_pickle)), whole)  # pickled before: computed again there
    assert len(pickle.dumps(reader)) < 1_000_000  # the low-resolution mask travels, never the volume


def test_non_finite_voxels_are_never_valid(tmp_path, scene):
    ct, body, _ = scene
    data = ct.astype(np.float32)
    data[20, 44, 60] = np.nan  # in the tissue
    data[20, 44, 36] = np.inf  # in the lung
    path = tmp_path / "nan.zarr"
    zarr.create_array(str(path), shape=SHAPE, chunks=(8, 96, 96), dtype="float32")[:] = data
    mask = _whole(open_reader(str(path), mask="body"))
    assert not mask[20, 44, 60] and not mask[20, 44, 36]
    body[20, 44, 60] = body[20, 44, 36] = False
    assert mask[body].all()


@pytest.mark.parametrize(
    "block,expected",
    [
        pytest.param((3,), [0, 0, 0, 1, 1, 1, 2], id="blocks-of-3-last-clipped"),
        pytest.param(None, [0, 0, 1, 1, 1, 2, 2], id="proportional"),
    ],
)
def test_upsample_mask_maps_each_pixel_to_its_block(block, expected):
    low = np.array([1, 2, 3])  # which mask pixel each full-resolution pixel takes, read as values
    out = np.zeros(9, dtype=int)
    for value in low:
        out += value * upsample_mask(low == value, Window((-1,), (8,)), (7,), block=block)
    assert out.tolist() == [0, *(v + 1 for v in expected), 0]


def test_an_all_air_volume_has_an_empty_mask():
    air = np.full((1, 6, 8, 8), float(AIR))
    assert body_mask(air).shape == (6, 8, 8) and not body_mask(air).any()


@pytest.mark.parametrize(
    "slab_voxels,slices_apart",
    [
        pytest.param(96 * 96 * 40, False, id="one-slab"),
        pytest.param(96 * 96 * 4, False, id="slabs"),
        pytest.param(96 * 20, False, id="row-bands"),
        pytest.param(96 * 20, True, id="kept-slices-only"),
    ],
)
def test_read_strided_equals_every_nth_voxel_and_never_holds_more_than_a_slab(scene, slab_voxels, slices_apart):
    volume = scene[0][None]
    strides = (3, 4, 5)
    windows: list[Window] = []

    def read(window: Window) -> np.ndarray:
        windows.append(window)
        return volume[(slice(None), *window.slices)]

    low = read_strided(read, SHAPE, strides, slab_voxels=slab_voxels, slices_apart=slices_apart)
    assert np.array_equal(low, volume[:, ::3, ::4, ::5])
    assert max(int(np.prod(w.shape)) for w in windows) <= slab_voxels
    if slices_apart:
        assert sorted({w.start[0] for w in windows}) == list(range(0, SHAPE[0], 3))
        assert all(w.shape[0] == 1 for w in windows)


def test_body_mask_on_a_geotiff_is_a_one_line_read_error(tmp_path):
    path = tmp_path / "dem.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8", "crs": "EPSG:32631"}
    with rasterio.open(path, "w", transform=from_origin(0, 80, 10, 10), **profile) as dst:
        dst.write(np.ones((1, 8, 8), dtype=np.uint8))
    with pytest.raises(ReadError, match=r"mask='body' is a CT volume's body mask, but .*dem\.tif is a raster") as exc:
        open_reader(path, mask="body")
    assert "\n" not in str(exc.value) and "mask='auto'" in str(exc.value)
