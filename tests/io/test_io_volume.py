"""Volume readers (NIfTI, zarr) and the slab-by-slab NIfTI writer: axis convention, affine, byte order."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import zarr

from tests.shared_data import SHARED_DATA
from tiler.errors import InputError
from tiler.geometry import Window
from tiler.io import open_reader
from tiler.io.scenes_files import write_ct
from tiler.io.volume import NiftiReader, ZarrReader, affine_from_spacing, spacing_from_affine, write_nifti_slabs

ANAT = str(SHARED_DATA / "anatomical.nii")


def test_big_endian_nifti_is_exposed_reversed_and_native():
    reader = open_reader(ANAT)
    raw = np.asarray(nib.load(ANAT).dataobj)  # (i, j, k) = (33, 41, 25), big-endian
    assert isinstance(reader, NiftiReader)
    assert reader.shape == (25, 41, 33) and reader.channels == 1
    assert reader.dtype == np.dtype(np.int16) and reader.dtype.isnative
    full = reader.read(Window.from_shape(reader.shape))
    assert full.dtype.isnative
    assert np.array_equal(full[0], raw.transpose(2, 1, 0))
    assert reader.georef.spacing == (2.0, 2.0, 2.0)
    assert np.allclose(reader.georef.affine, nib.load(ANAT).affine)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None and np.array_equal(
        clone.read(Window((3, 4, 5), (9, 20, 30))), full[:, 3:9, 4:20, 5:30]
    )


@pytest.mark.parametrize(
    "start,stop",
    [
        pytest.param((0, 0, 0), (5, 41, 33), id="slab"),
        pytest.param((3, 10, 7), (11, 30, 20), id="interior"),
    ],
)
def test_nifti_window_equals_slice(start, stop):
    reader = open_reader(ANAT)
    full = reader.read(Window.from_shape(reader.shape))
    window = Window(start, stop)
    assert np.array_equal(reader.read(window), full[(slice(None), *window.slices)])


def test_nifti_boundless_read_pads_zero():
    reader = open_reader(ANAT)
    out = reader.read(Window((-2, 0, 30), (3, 41, 40)))
    assert out.shape == (1, 5, 41, 10)
    assert not out[:, :2].any() and not out[..., 3:].any()
    assert np.array_equal(out[0, 2:, :, :3], reader.read(Window((0, 0, 30), (3, 41, 33)))[0])


@pytest.mark.parametrize("suffix", [pytest.param(".nii", id="nii"), pytest.param(".nii.gz", id="nii.gz")])
def test_anatomical_round_trip_keeps_pixels_and_affine(tmp_path, suffix):
    reader = open_reader(ANAT)
    out = tmp_path / f"copy{suffix}"
    slabs = (reader.read(Window((z, 0, 0), (min(z + 4, 25), 41, 33)))[0] for z in range(0, 25, 4))
    write_nifti_slabs(
        out, reader.shape, dtype=reader.dtype, affine=np.asarray(reader.georef.affine), slabs=slabs
    )
    again = open_reader(out)
    assert again.shape == reader.shape and again.dtype == reader.dtype
    assert np.array_equal(
        again.read(Window.from_shape(again.shape)), reader.read(Window.from_shape(reader.shape))
    )
    assert np.allclose(again.georef.affine, reader.georef.affine)
    assert np.array_equal(np.asarray(nib.load(out).dataobj), np.asarray(nib.load(ANAT).dataobj))


def test_write_ct_anisotropic_spacing(tmp_path, stand_in):
    scene = stand_in((6, 10, 12), channels=1, dtype=np.int16, spacing=(2.5, 0.8, 0.7))
    write_ct(scene, tmp_path / "ct.nii.gz", tmp_path / "truth.nii.gz", slab=4)
    image = open_reader(tmp_path / "ct.nii.gz")
    truth = open_reader(tmp_path / "truth.nii.gz")
    assert image.shape == truth.shape == (6, 10, 12)
    assert np.allclose(image.georef.spacing, (2.5, 0.8, 0.7))
    assert np.allclose(nib.load(tmp_path / "ct.nii.gz").header.get_zooms(), (0.7, 0.8, 2.5))
    whole = Window.from_shape(scene.shape)
    assert np.array_equal(image.read(whole), scene.read(whole)[0])
    assert np.array_equal(truth.read(whole)[0], scene.read(whole)[1]) and truth.dtype == np.uint8


def test_volume_threshold_mask(tmp_path):
    data = np.full((4, 5, 6), -1000, np.int16)
    data[1:3, 2:4, 1:5] = 40
    write_nifti_slabs(tmp_path / "v.nii", data.shape, dtype=data.dtype, affine=np.eye(4), slabs=[data])
    assert open_reader(tmp_path / "v.nii").valid_mask(Window((0, 0, 0), (4, 5, 6))) is None
    reader = open_reader(tmp_path / "v.nii", threshold=-500)
    assert np.array_equal(reader.valid_mask(Window((0, 0, 0), (4, 5, 6))), data > -500)
    outside = reader.valid_mask(Window((2, 0, 0), (6, 5, 6)))
    assert not outside[2:].any()


def _four_d(tmp_path):
    data = np.arange(5 * 6 * 7 * 2, dtype=np.float32).reshape(5, 6, 7, 2)  # (i, j, k, t)
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), path)
    return path, data


def test_4d_nifti_needs_channels_option(tmp_path):
    path, _ = _four_d(tmp_path)
    with pytest.raises(InputError, match=r"4D NIfTI.*channels_from_4d=True"):
        open_reader(path)


def test_4d_nifti_channels(tmp_path):
    path, data = _four_d(tmp_path)
    reader = open_reader(path, channels_from_4d=True)
    assert reader.shape == (7, 6, 5) and reader.channels == 2
    assert reader.georef.spacing == (3.0, 2.0, 1.0)
    assert np.array_equal(reader.read(Window((0, 0, 0), (7, 6, 5))), data.transpose(3, 2, 1, 0))


def test_zarr_v3_array_with_attributes(tmp_path):
    data = np.random.default_rng(0).integers(0, 100, (6, 8, 10)).astype(np.uint16)
    arr = zarr.create_array(tmp_path / "vol.zarr", shape=data.shape, chunks=(2, 4, 4), dtype=data.dtype)
    arr[...] = data
    arr.attrs["spacing"] = [3.0, 1.0, 0.5]
    reader = open_reader(tmp_path / "vol.zarr")
    assert isinstance(reader, ZarrReader) and reader.shape == (6, 8, 10) and reader.channels == 1
    assert reader.georef.spacing == (3.0, 1.0, 0.5)
    window = Window((1, 2, 3), (5, 7, 12))
    expected = np.zeros((1, 4, 5, 9), np.uint16)
    expected[0, :, :, :7] = data[1:5, 2:7, 3:10]
    assert np.array_equal(reader.read(window), expected)
    clone = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(clone.read(window), expected)


def test_zarr_group_member_and_single_array_group(tmp_path):
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("image", shape=data.shape, chunks=(2, 3, 4, 5), dtype=data.dtype)[...] = data
    whole = Window((0, 0, 0), (3, 4, 5))
    single = open_reader(tmp_path / "g.zarr")
    named = open_reader(f"{tmp_path}/g.zarr:image")
    assert single.channels == named.channels == 2
    assert np.array_equal(single.read(whole), data) and np.array_equal(named.read(whole), data)
    group.create_array("other", shape=(3, 4, 5), dtype="u1")
    with pytest.raises(InputError, match=r"holds arrays .*name one"):
        open_reader(tmp_path / "g.zarr")


def test_zarr_v2_read_through_zarr3(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    arr = zarr.create_array(
        tmp_path / "v2.zarr", shape=data.shape, chunks=(2, 5, 6), dtype=data.dtype, zarr_format=2
    )
    arr[...] = data
    assert np.array_equal(open_reader(tmp_path / "v2.zarr").read(Window((0, 0, 0), (4, 5, 6)))[0], data)


def test_affine_from_spacing_inverts_spacing_from_affine_and_places_voxels():
    spacing = (2.5, 0.8, 0.7)  # (D, H, W)
    affine = affine_from_spacing(spacing, origin=(1.0, 2.0, 3.0))
    assert spacing_from_affine(affine) == pytest.approx(spacing, abs=1e-12)
    # voxel (z, y, x) = (2, 3, 4) is NIfTI (i, j, k) = (4, 3, 2): x * sW + origin_x, y * sH + origin_y, z * sD + ...
    world = affine @ np.array([4, 3, 2, 1.0])
    assert world[:3] == pytest.approx((1.0 + 4 * 0.7, 2.0 + 3 * 0.8, 3.0 + 2 * 2.5), abs=1e-12)
    assert np.linalg.solve(affine, world) == pytest.approx((4, 3, 2, 1), abs=1e-12)


def test_a_zarr_volumes_spacing_round_trips_through_its_affine(tmp_path):
    arr = zarr.create_array(tmp_path / "v.zarr", shape=(4, 5, 6), chunks=(2, 5, 6), dtype="int16")
    arr.attrs["spacing"] = [2.5, 0.8, 0.7]
    georef = open_reader(tmp_path / "v.zarr").georef
    assert georef.spacing == (2.5, 0.8, 0.7)
    assert spacing_from_affine(np.asarray(georef.affine)) == pytest.approx((2.5, 0.8, 0.7), abs=1e-12)
