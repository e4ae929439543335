"""DICOM series reader: slice order, values and affine against SimpleITK, windowed reads, refusals."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.dicom_series import write_series
from tiler.errors import InputError, ReadError
from tiler.geometry import Window
from tiler.io import detect_format, open_reader
from tiler.io.dicom import DicomSeriesReader, is_dicom_file, is_dicom_folder, list_series
from tiler.io.volume import NiftiReader

SHAPE = (6, 16, 20)


def _hu(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, shape).astype(np.float64)


def _oblique() -> list[float]:
    a, b = np.deg2rad(20.0), np.deg2rad(30.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rx @ rz
    return [float(v) for v in (*rot[:, 0], *rot[:, 1])]


def _full(reader) -> np.ndarray:
    return reader.read(Window.from_shape(reader.shape))


def _sitk_nifti(folder: Path, out: Path) -> NiftiReader:
    sitk = pytest.importorskip("SimpleITK")
    series = sitk.ImageSeriesReader()
    series.SetFileNames(series.GetGDCMSeriesFileNames(str(folder)))
    sitk.WriteImage(series.Execute(), str(out))
    return NiftiReader(str(out))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _check_one_line(exc: pytest.ExceptionInfo, *names: str) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)
    return message


# -- values and geometry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "orientation",
    [pytest.param((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), id="axial"), pytest.param(_oblique(), id="oblique")],
)
def test_shuffled_ct_series_equals_hu_and_simpleitk_nifti(tmp_path, orientation):
    hu = _hu()
    folder = tmp_path / "ct"
    uid = write_series(folder, hu, spacing=(2.5, 0.7, 0.9), orientation=orientation, intercept=-1024.0)
    reader = DicomSeriesReader(str(folder))
    assert reader.shape == SHAPE and reader.channels == 1 and reader.nodata is None
    assert reader.series_uid == uid and reader.modality == "CT"
    assert reader.dtype == np.dtype(np.int32)  # uint16 stored + intercept -1024 does not fit int16
    full = _full(reader)
    assert full.dtype == np.int32 and np.array_equal(full[0], hu.astype(np.int32))
    assert np.allclose(reader.georef.spacing, (2.5, 0.7, 0.9))  # (D, H, W): PixelSpacing is (row, column)
    nifti = _sitk_nifti(folder, tmp_path / "sitk.nii.gz")
    assert nifti.shape == reader.shape
    assert np.array_equal(_full(nifti).astype(np.int64), full.astype(np.int64))
    assert np.allclose(np.asarray(reader.georef.affine), np.asarray(nifti.georef.affine), rtol=0.0, atol=1e-4)


def test_slices_sorted_ascending_along_normal(tmp_path):
    folder = tmp_path / "ct"
    write_series(folder, _hu(), origin=(0.0, 0.0, 50.0))
    reader = DicomSeriesReader(str(folder))
    z = [float(ds.ImagePositionPatient[2]) for ds in reader.source_datasets()]
    assert z == [50.0 + 2.5 * k for k in range(SHAPE[0])]
    assert all("PixelData" not in ds for ds in reader.source_datasets())
    assert [str(f) for f in reader.files] == [str(ds.filename) for ds in reader.source_datasets()]


def test_windowed_read_equals_full_slice_and_reads_only_its_files(tmp_path, monkeypatch):
    folder = tmp_path / "ct"
    write_series(folder, _hu())
    reader = DicomSeriesReader(str(folder))
    full = _full(reader)
    opened: list[str] = []
    dcmread = pydicom.dcmread

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return dcmread(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    window = Window((2, 3, 4), (4, 11, 17))
    part = reader.read(window)
    assert part.shape == (1, 2, 8, 13)
    assert np.array_equal(part, full[(slice(None), *window.slices)])
    assert opened == list(reader.files[2:4])


def test_float_slope_gives_float32_values(tmp_path):
    stored = np.random.default_rng(1).integers(0, 4000, SHAPE)
    values = stored * 0.5 - 1024.25
    folder = tmp_path / "mr"
    write_series(folder, values, slope=0.5, intercept=-1024.25, modality="MR")
    reader = DicomSeriesReader(str(folder))
    assert reader.dtype == np.dtype(np.float32) and reader.modality == "MR"
    assert np.array_equal(_full(reader)[0], values.astype(np.float32))


def test_intercept_applied_per_slice(tmp_path):
    hu = _hu()
    folder = tmp_path / "ct"
    write_series(folder, hu)
    reader = DicomSeriesReader(str(folder))
    third = reader.files[3]
    ds = pydicom.dcmread(third)
    ds.RescaleIntercept = -1000
    ds.save_as(third)
    expected = hu.copy()
    expected[3] += 24
    assert np.array_equal(_full(DicomSeriesReader(str(folder)))[0], expected)


def test_single_slice_series_takes_slice_thickness(tmp_path):
    folder = tmp_path / "one"
    write_series(folder, _hu((1, 16, 20)), spacing=(3.0, 0.5, 0.7))
    reader = DicomSeriesReader(str(folder))
    assert reader.shape == (1, 16, 20)
    assert np.allclose(reader.georef.spacing, (3.0, 0.5, 0.7))
    assert np.allclose(np.asarray(reader.georef.affine)[:3, 2], (0.0, 0.0, 3.0))


def test_threshold_gives_valid_mask(tmp_path):
    hu = _hu()
    folder = tmp_path / "ct"
    write_series(folder, hu)
    reader = open_reader(folder, threshold=-500.0)
    mask = reader.valid_mask(Window.from_shape(SHAPE))
    assert mask is not None and np.array_equal(mask, hu > -500)


# -- compressed pixels ------------------------------------------------------------------------------------


def _compress_all(folder: Path, syntax) -> None:
    for path in _files(folder):
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)


@pytest.mark.parametrize(
    "syntax,plugin",
    [
        pytest.param(RLELossless, None, id="rle"),
        pytest.param(JPEG2000Lossless, "openjpeg", id="jpeg2000"),
        pytest.param(JPEGLSLossless, "jpeg_ls", id="jpeg-ls"),
    ],
)
def test_compressed_series_decodes(tmp_path, syntax, plugin):
    if plugin is not None:
        pytest.importorskip(plugin)
    hu = _hu((3, 32, 32))
    folder = tmp_path / "ct"
    write_series(folder, hu)
    _compress_all(folder, syntax)
    assert {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in _files(folder)} == {syntax}
    assert np.array_equal(_full(DicomSeriesReader(str(folder)))[0], hu)


def test_undecodable_slice_names_file_and_decoders(tmp_path):
    folder = tmp_path / "ct"
    write_series(folder, _hu((3, 32, 32)))
    _compress_all(folder, RLELossless)
    reader = DicomSeriesReader(str(folder))
    broken = reader.files[1]
    ds = pydicom.dcmread(broken)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # RLE bytes labelled as JPEG 2000
    ds.save_as(broken)
    with pytest.raises(ReadError, match="cannot decode") as exc:
        reader.read(Window((0, 0, 0), (3, 32, 32)))
    _check_one_line(exc, broken, "pip install pylibjpeg")


# -- pickling, fingerprint, detection ---------------------------------------------------------------------


def test_reader_pickles_and_reads_after_unpickling(tmp_path):
    folder = tmp_path / "ct"
    write_series(folder, _hu())
    reader = DicomSeriesReader(str(folder))
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.files == reader.files and clone.georef == reader.georef
    assert np.array_equal(_full(clone), _full(reader))


def test_fingerprint_stable_under_renaming_changes_without_a_file(tmp_path):
    folder = tmp_path / "ct"
    write_series(folder, _hu())
    before = DicomSeriesReader(str(folder)).fingerprint()
    for i, path in enumerate(_files(folder)):
        path.rename(folder / f"IM{i:04d}")
    renamed = DicomSeriesReader(str(folder))
    assert renamed.fingerprint() == before and len(before) == 64
    os.remove(renamed.files[-1])  # the last slice: the rest stays evenly spaced
    assert DicomSeriesReader(str(folder)).fingerprint() != before


def test_detect_format_and_open_reader_give_dicom_reader(tmp_path):
    folder = tmp_path / "ct"
    uid = write_series(folder, _hu())
    (folder / "README.txt").write_text("not DICOM")
    assert is_dicom_folder(folder) and not is_dicom_folder(tmp_path / "nothing")
    assert is_dicom_file(_files(folder)[0]) and not is_dicom_file(folder / "README.txt")
    assert detect_format(str(folder)) == "dicom"
    reader = open_reader(folder)
    assert isinstance(reader, DicomSeriesReader) and reader.format == "dicom" and reader.series_uid == uid
    assert open_reader(folder, format="dicom").shape == SHAPE


# -- refusals ---------------------------------------------------------------------------------------------


def _sr(path: Path, series_uid: str | None = None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)


def test_two_series_refused_naming_both_then_series_picks_one(tmp_path):
    folder = tmp_path / "mixed"
    hu_a, hu_b = _hu(seed=1), _hu((4, 16, 20), seed=2)
    uid_a = write_series(folder, hu_a, description="axial soft", seed=1)
    uid_b = write_series(folder, hu_b, description="bone", seed=2)
    assert {info.uid: info.files for info in list_series(folder).values()} == {uid_a: 6, uid_b: 4}
    with pytest.raises(InputError, match="holds 2 image series") as exc:
        DicomSeriesReader(str(folder))
    _check_one_line(exc, str(folder), uid_a, uid_b, "'bone'", "input.series")
    picked = open_reader(folder, series=uid_b)
    assert picked.shape == (4, 16, 20) and np.array_equal(_full(picked)[0], hu_b)


def test_unknown_series_refused_naming_those_there(tmp_path):
    folder = tmp_path / "ct"
    uid = write_series(folder, _hu())
    with pytest.raises(InputError, match="has no series '1.2.3.999'") as exc:
        DicomSeriesReader(str(folder), series="1.2.3.999")
    _check_one_line(exc, str(folder), uid)


def test_sr_only_folder_is_not_an_image_series(tmp_path):
    folder = tmp_path / "sr"
    folder.mkdir()
    _sr(folder / "report.dcm")
    with pytest.raises(InputError, match="not an image series") as exc:
        DicomSeriesReader(str(folder))
    _check_one_line(exc, str(folder), "Basic Text SR")


def test_sr_beside_an_image_series_is_ignored(tmp_path):
    folder = tmp_path / "ct"
    hu = _hu()
    write_series(folder, hu)
    _sr(folder / "report.dcm")
    (folder / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")  # a damaged DICOMDIR is skipped by name
    assert np.array_equal(_full(DicomSeriesReader(str(folder)))[0], hu)


@pytest.mark.parametrize("junk", [pytest.param(False, id="empty"), pytest.param(True, id="only-non-dicom")])
def test_folder_without_dicom_refused(tmp_path, junk):
    folder = tmp_path / "empty"
    folder.mkdir()
    if junk:
        (folder / "notes.txt").write_text("hello")
    with pytest.raises(ReadError, match="holds no DICOM files") as exc:
        DicomSeriesReader(str(folder))
    _check_one_line(exc, str(folder))


def test_single_dcm_file_refused_asking_for_the_folder(tmp_path):
    folder = tmp_path / "ct"
    write_series(folder, _hu())
    one = str(_files(folder)[0])
    for opener in (DicomSeriesReader, open_reader):
        with pytest.raises(ReadError, match="single DICOM file") as exc:
            opener(one)
        _check_one_line(exc, one, str(folder))


def test_multi_frame_refused(tmp_path):
    folder = tmp_path / "mf"
    write_series(folder, _hu((1, 16, 20)))
    path = _files(folder)[0]
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path)
    with pytest.raises(ReadError, match="multi-frame DICOM is not supported yet") as exc:
        DicomSeriesReader(str(folder))
    _check_one_line(exc, str(folder), "NumberOfFrames=2", "single-frame")


def _positions(gaps, *, sideways=0.0):
    z = np.concatenate([[30.0], 30.0 + np.cumsum(gaps)])
    return [(-100.0, -120.0 + sideways * k, float(zk)) for k, zk in enumerate(z)]


def _remove_middle(folder: Path) -> None:
    reader = DicomSeriesReader(str(folder))
    os.remove(reader.files[2])


def _bad_pixel_spacing(folder: Path) -> None:
    path = _files(folder)[0]
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [0.9, 0.8]
    ds.save_as(path)


@pytest.mark.parametrize(
    "positions,damage,match,named",
    [
        pytest.param(_positions([2.5, 2.5, 4.0, 2.5, 2.5]), None, "uneven slice spacing", ("2.5", "4 mm"),
                     id="uneven"),
        pytest.param(None, _remove_middle, "uneven slice spacing", ("2.5", "5 mm"), id="missing-slice"),
        pytest.param(_positions([2.5] * 5, sideways=2.5 * np.tan(np.deg2rad(10))), None, "gantry tilt",
                     ("10.00°",), id="gantry-tilt"),
        pytest.param(_positions([2.5, 0.0, 2.5, 2.5, 2.5]), None, "duplicate slice position", (), id="duplicate"),
        pytest.param(None, _bad_pixel_spacing, "mixes PixelSpacing", ("0.9",), id="pixel-spacing"),
    ],
)  # fmt: skip
def test_irregular_series_refused(tmp_path, positions, damage, match, named):
    folder = tmp_path / "ct"
    uid = write_series(folder, _hu(), positions=positions)
    if damage is not None:
        damage(folder)
    with pytest.raises(InputError, match=match) as exc:
        DicomSeriesReader(str(folder))
    _check_one_line(exc, str(folder), uid, *named)
