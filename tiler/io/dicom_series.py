"""DICOM series in a folder: finding the files, listing the series, checking and ordering the slices.

What :class:`tiler.io.dicom.DicomSeriesReader` opens a series with: the folder is scanned once, headers only
(``stop_before_pixels``; :func:`list_series`); the slices of the chosen series are checked to make one regular
grid (:func:`_check_slices`), sorted by ImagePositionPatient projected on the slice normal (:func:`_order`), and
mapped to the NIfTI (RAS) affine (:func:`_series_affine`): see :mod:`tiler.io.dicom` for the conventions.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import UID, MediaStorageDirectoryStorage

from tiler.errors import InputError, ReadError
from tiler.io.base import one_line

__all__ = [
    "DICOM_SUFFIXES", "SeriesInfo", "folder_fingerprint", "is_dicom_file", "is_dicom_folder", "list_series",
    "single_file_error", "uid_digest",
]  # fmt: skip

DICOM_SUFFIXES = (".dcm", ".dicom")
"""File suffixes of single DICOM files (refused: a series is read from its folder)."""

PROBE_FILES = 16
"""How many regular files :func:`is_dicom_folder` looks at before answering no."""

SPACING_TOLERANCE = 0.01
"""Largest relative difference of a slice gap from the median gap (1 %) before a series counts as uneven."""

TILT_TOLERANCE = 0.01
"""Largest sideways/along ratio of a step between consecutive slice positions (about 0.6°) before gantry tilt."""

DUPLICATE_MM = 1e-3
"""Two slices closer than this along the normal (millimetres) lie at the same position."""

NON_IMAGE_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.5"})
"""SOP classes that carry pixels but are not images of the patient (Segmentation, Surface Segmentation)."""

INSTALL_DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pyjpegls (or python-gdcm)"

_SCAN_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "SeriesDescription", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "NumberOfFrames",
]  # fmt: skip


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        modality: Modality (``CT``, ``MR``, ...; "" when absent).
        files: Number of image files (slices) of the series in the folder.

    """

    uid: str
    description: str
    modality: str
    files: int

    def label(self) -> str:
        """``uid ("description", N slices)`` for messages."""
        return f"{self.uid} ({self.description!r}, {self.files} slices)"


@dataclass(frozen=True)
class _Slice:
    """What opening needs from one image file's header."""

    path: str
    sop_uid: str
    series_uid: str
    study_uid: str
    frame_uid: str | None
    modality: str
    description: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    thickness: float | None
    rows: int
    cols: int
    samples: int
    frames: int
    enhanced: bool
    bits_stored: int
    signed: bool
    slope: float
    intercept: float

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest stored value BitsStored and PixelRepresentation allow."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1


@dataclass
class _Scan:
    """A folder's DICOM files: image headers, the SOP class names of the rest, whether a DICOMDIR is there."""

    images: list[_Slice]
    others: list[str]
    dicomdir: bool
    looked_at: int


# -- finding DICOM files --------------------------------------------------------------------------------


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file starting with the 128-byte DICOM preamble and ``DICM`` (reads 132 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory in which one of the first :data:`PROBE_FILES` regular files is DICOM."""
    try:
        entries = os.scandir(path)
    except OSError:
        return False
    looked = 0
    with entries:
        for entry in entries:
            if looked >= PROBE_FILES:
                return False
            if not _is_regular(entry):
                continue
            looked += 1
            if is_dicom_file(entry.path):
                return True
    return False


def _is_regular(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def single_file_error(path: str) -> ReadError:
    """The refusal of one DICOM file given as input (a volume is a series: give its folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    return ReadError(
        one_line(
            f"{path} is a single DICOM file; tiler reads a DICOM series from the folder holding all its slice "
            f"files. Give the folder instead (input.path: {folder})."
        )
    )


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == count and all(math.isfinite(v) for v in out) else None


def _number(value: Any, default: float) -> float:
    try:
        return default if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return default


def _header(path: str) -> _Slice | str | None:
    """One file's header: a :class:`_Slice` for an image, the SOP class name of a non-image, None for a DICOMDIR."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_SCAN_TAGS)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a damaged header
        raise ReadError(
            one_line(f"cannot read the DICOM header of {path}: {exc}. Remove or replace that file and run again.")
        ) from exc
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else "") or "")
    if sop_class == MediaStorageDirectoryStorage:
        return None
    name = UID(sop_class).name.removesuffix(" Storage") if sop_class else "unknown SOP class"
    frames = int(_number(ds.get("NumberOfFrames"), 1))
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    if sop_class in NON_IMAGE_SOP_CLASSES or not ds.get("Rows") or not ds.get("Columns"):
        return name
    enhanced = position is None and (frames > 1 or name.startswith(("Enhanced", "Legacy Converted Enhanced")))
    if (position is None or orientation is None) and not enhanced:
        return f"{name} without ImagePositionPatient/ImageOrientationPatient"
    spacing = _floats(ds.get("PixelSpacing"), 2) or (1.0, 1.0)
    thickness = _number(ds.get("SliceThickness"), 0.0)
    return _Slice(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        frame_uid=str(ds.FrameOfReferenceUID) if ds.get("FrameOfReferenceUID") else None,
        modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        position=position,
        orientation=orientation or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        pixel_spacing=(spacing[0], spacing[1]),
        thickness=thickness if thickness > 0 else None,
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        samples=int(_number(ds.get("SamplesPerPixel"), 1)),
        frames=frames,
        enhanced=enhanced,
        bits_stored=int(_number(ds.get("BitsStored"), _number(ds.get("BitsAllocated"), 16))),
        signed=int(_number(ds.get("PixelRepresentation"), 0)) == 1,
        slope=_number(ds.get("RescaleSlope"), 1.0),
        intercept=_number(ds.get("RescaleIntercept"), 0.0),
    )


def _scan(folder: str) -> _Scan:
    """Read the header of every DICOM file directly in ``folder`` (not its subfolders), in name order."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if _is_regular(e)), key=lambda e: e.name)
    except OSError as exc:
        raise ReadError(
            one_line(f"cannot list the DICOM folder {folder}: {exc}. Check it exists and is readable.")
        ) from exc
    scan = _Scan(images=[], others=[], dicomdir=False, looked_at=len(entries))
    for entry in entries:
        if not is_dicom_file(entry.path):
            continue
        if entry.name.upper() == "DICOMDIR":
            scan.dicomdir = True
            continue
        found = _header(entry.path)
        if found is None:
            scan.dicomdir = True
        elif isinstance(found, str):
            scan.others.append(found)
        else:
            scan.images.append(found)
    return scan


def _series_infos(images: Sequence[_Slice]) -> dict[str, SeriesInfo]:
    groups: dict[str, list[_Slice]] = {}
    for s in images:
        groups.setdefault(s.series_uid, []).append(s)
    return {
        uid: SeriesInfo(uid=uid, description=group[0].description, modality=group[0].modality, files=len(group))
        for uid, group in groups.items()
    }


def list_series(folder: str | os.PathLike[str]) -> dict[str, SeriesInfo]:
    """The image series whose files lie directly in ``folder``, by SeriesInstanceUID (headers only).

    Non-image DICOM files (structured reports, segmentations, a DICOMDIR) and non-DICOM files are left out.
    """
    return _series_infos(_scan(os.fspath(folder)).images)


def uid_digest(uids: Sequence[str]) -> str:
    """sha256 hex of SOPInstanceUIDs, sorted: the identity of a set of instances, whatever their files are called."""
    return hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()


def folder_fingerprint(folder: str | os.PathLike[str]) -> str:
    """The identity of the images directly in ``folder``: :func:`uid_digest` of their SOPInstanceUIDs (headers only).

    Renaming or copying the files keeps it; adding or removing an instance changes it (a changed image gets a new
    SOPInstanceUID, as the standard requires). An archive identifies a series folder by it.
    """
    return uid_digest([s.sop_uid for s in _scan(os.fspath(folder)).images])


# -- choosing and checking the series -------------------------------------------------------------------


def _pick_series(folder: str, scan: _Scan, series: str | None) -> list[_Slice]:
    """The image files of the one series in ``scan`` (or of ``series``), or the refusal saying why not."""
    if not scan.images:
        if scan.others:
            kinds = sorted(set(scan.others))
            raise InputError(
                one_line(
                    f"DICOM folder {folder} is not an image series: its {len(scan.others)} DICOM file(s) are "
                    f"{', '.join(kinds)}, not positioned image slices. Give the folder of the CT/MR image series "
                    f"itself."
                )
            )
        where = "holds only a DICOMDIR (the images sit in its subfolders)" if scan.dicomdir else "holds no DICOM files"
        raise ReadError(
            one_line(
                f"DICOM folder {folder} {where}: {scan.looked_at} file(s) looked at, none starts with the DICOM "
                f"preamble 'DICM'. Give the folder holding one series' slice files (subfolders are not searched)."
            )
        )
    infos = _series_infos(scan.images)
    listing = "; ".join(info.label() for info in infos.values())
    if series is not None:
        if series not in infos:
            raise InputError(
                one_line(
                    f"DICOM folder {folder} has no series {series!r}; the series there are: {listing}. "
                    f"Set input.series to one of these SeriesInstanceUIDs."
                )
            )
        return [s for s in scan.images if s.series_uid == series]
    if len(infos) > 1:
        raise InputError(
            one_line(
                f"DICOM folder {folder} holds {len(infos)} image series: {listing}. Pick one with "
                f"input.series: <uid> (open_reader(..., series=<uid>)), or give a folder holding one series."
            )
        )
    return list(scan.images)


def _check_slices(where: str, slices: Sequence[_Slice]) -> None:
    """Refuse multi-frame, colour and slices whose orientation, size or pixel spacing differ."""
    multi = next((s for s in slices if s.frames > 1 or s.enhanced), None)
    if multi is not None:
        raise ReadError(
            one_line(
                f"{where} is enhanced/multi-frame ({os.path.basename(multi.path)} holds NumberOfFrames="
                f"{multi.frames}): enhanced multi-frame DICOM is not supported yet. Convert it to single-frame "
                f"slices first (e.g. dcm4che `emf2sf`), or to NIfTI with dcm2niix."
            )
        )
    colour = next((s for s in slices if s.samples != 1), None)
    if colour is not None:
        raise InputError(
            one_line(
                f"{where} has SamplesPerPixel={colour.samples} ({os.path.basename(colour.path)}); tiler reads "
                f"grey-level series with one sample per pixel. Convert it to one grey channel first."
            )
        )
    first = slices[0]
    checks = (
        ("ImageOrientationPatient", lambda s: s.orientation, 1e-4),
        ("Rows/Columns", lambda s: (s.rows, s.cols), 0.0),
        ("PixelSpacing", lambda s: s.pixel_spacing, 1e-4),
    )
    for name, value, tolerance in checks:
        odd = next((s for s in slices if not np.allclose(value(s), value(first), rtol=0.0, atol=tolerance)), None)
        if odd is not None:
            raise InputError(
                one_line(
                    f"{where} mixes {name} values: {list(value(first))} ({os.path.basename(first.path)}) and "
                    f"{list(value(odd))} ({os.path.basename(odd.path)}). A volume needs one {name} for every slice; "
                    f"export the main stack alone (without localizers or reformats), or split the series."
                )
            )


def _slice_normal(where: str, orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise InputError(
            one_line(
                f"{where} has a degenerate ImageOrientationPatient {list(orientation)} (row and column directions "
                f"parallel): its slices cannot be placed. Fix the headers or re-export the series."
            )
        )
    return normal / norm


def _order(where: str, slices: Sequence[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Slices sorted along the normal, and the LPS step from one slice to the next (millimetres, (3,)).

    The step is ``(position_last - position_first) / (D - 1)`` as ITK computes it; a single slice steps by
    its SliceThickness (1.0 when absent) along the normal. Refuses duplicate positions, gantry tilt and
    uneven spacing.
    """
    normal = _slice_normal(where, slices[0].orientation)
    positions = np.array([s.position for s in slices], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    ordered = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    if len(ordered) == 1:
        return ordered, normal * (ordered[0].thickness or 1.0)
    gaps = np.diff(along)
    same = np.flatnonzero(gaps < DUPLICATE_MM)
    if same.size:
        a, b = ordered[same[0]], ordered[same[0] + 1]
        raise InputError(
            one_line(
                f"{where} has {same.size} duplicate slice position(s): {os.path.basename(a.path)} and "
                f"{os.path.basename(b.path)} both lie at {list(np.round(positions[same[0]], 4))} mm. Remove the "
                f"duplicates (or split the series: several acquisitions share this SeriesInstanceUID)."
            )
        )
    steps = np.diff(positions, axis=0)
    sideways = np.linalg.norm(steps - gaps[:, None] * normal, axis=1)
    if (sideways > TILT_TOLERANCE * gaps + DUPLICATE_MM).any():
        angle = math.degrees(math.atan(float((sideways / gaps).max())))
        raise InputError(
            one_line(
                f"{where} has a gantry tilt of about {angle:.2f}° (consecutive ImagePositionPatient steps leave the "
                f"slice normal from ImageOrientationPatient): tiler reads untilted stacks only. Resample it to an "
                f"orthogonal grid first (e.g. dcm2niix, which corrects gantry tilt, or a SimpleITK resample)."
            )
        )
    median = float(np.median(gaps))
    if (np.abs(gaps - median) > SPACING_TOLERANCE * median).any():
        raise InputError(
            one_line(
                f"{where} has uneven slice spacing: gaps from {gaps.min():.4g} to {gaps.max():.4g} mm along the normal "
                f"(median {median:.4g} mm, {len(ordered)} slices), e.g. a missing slice or variable spacing. "
                f"Resample it to a regular spacing (e.g. SimpleITK, 3D Slicer) or export a regular series."
            )
        )
    return ordered, (positions[-1] - positions[0]) / (len(ordered) - 1)


def _series_affine(first: _Slice, step: np.ndarray) -> np.ndarray:
    """The NIfTI (RAS) 4x4 affine of voxel ``(i, j, k)`` = (column, row, slice), first slice at ``k = 0``."""
    orientation = np.asarray(first.orientation, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * first.pixel_spacing[1]
    affine[:3, 1] = orientation[3:] * first.pixel_spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = first.position if first.position is not None else (0.0, 0.0, 0.0)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _value_dtype(slices: Sequence[_Slice]) -> np.dtype:
    """float32 when a slope is not 1 or an intercept not integral, else the smallest int holding the values."""
    if any(s.slope != 1.0 or not float(s.intercept).is_integer() for s in slices):
        return np.dtype(np.float32)
    low = min(s.stored_range[0] + int(s.intercept) for s in slices)
    high = max(s.stored_range[1] + int(s.intercept) for s in slices)
    for candidate in (np.int16, np.int32, np.int64):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.float64)
