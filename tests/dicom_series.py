"""Synthetic DICOM series for the tests, written with pydicom as a scanner would write them.

:func:`write_series` writes one CT (or MR) series of a ``(D, H, W)`` volume, one file per slice, in shuffled
order and with random file names, stored values ``(hu - intercept) / slope`` as int16 or uint16.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_series(
    folder: str | Path,
    volume: np.ndarray,
    *,
    spacing: Sequence[float] = (2.5, 0.8, 0.8),
    origin: Sequence[float] = (-100.0, -120.0, 30.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    positions: Sequence[Sequence[float]] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    description: str = "synthetic series",
    seed: int = 0,
    patient_id: str = "TILER-TEST-1",
) -> str:
    """Write ``volume`` (``(D, H, W)``, values in output units, e.g. HU) as one series under ``folder``.

    Slice ``k`` lies at ``origin + k * spacing[0] * normal`` (``normal`` = row direction × column direction)
    unless ``positions`` gives each slice's ImagePositionPatient. Files are named at random and written in
    shuffled order, so nothing but the headers tells the slice order.

    Returns:
        The SeriesInstanceUID.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    depth, rows, cols = volume.shape
    row_dir = np.asarray(orientation[:3], dtype=float)
    col_dir = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    stored = np.round((volume.astype(np.float64) - intercept) / slope)
    signed = stored.min() < 0
    dtype = np.int16 if signed else np.uint16
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    rng = random.Random(seed)
    order = list(range(depth))
    rng.shuffle(order)
    for k in order:
        position = positions[k] if positions is not None else np.asarray(origin) + k * spacing[0] * normal
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientName = "Test^Tiler"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20261207"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "A1"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 1
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.Manufacturer = "tiler tests"
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = 120
        ds.PixelData = stored[k].astype(dtype).tobytes()
        ds.save_as(folder / f"{rng.getrandbits(48):012x}.dcm", enforce_file_format=True)
    return series_uid
