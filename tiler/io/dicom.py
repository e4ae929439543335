"""DICOM series (one folder, one file per slice) read as a volume, one slice file per exposed ``D`` index.

Axis convention, stated once: the series is exposed as ``(D, H, W)`` = (slice, row, column). Slices are
sorted by ImagePositionPatient projected on the slice normal (row direction × column direction, from
ImageOrientationPatient), ascending, as GDCM and SimpleITK sort them. ``Georef.affine`` is the NIfTI (RAS)
affine that SimpleITK's ``ImageSeriesReader`` + ``WriteImage(".nii.gz")`` gives: voxel ``(i, j, k)`` =
(column, row, slice) maps to LPS millimetres by ``[row_dir·sW, col_dir·sH, step, position_0]`` and the first
two rows are negated (LPS -> RAS), where ``step = (position_last - position_0) / (D - 1)``.

Opening reads headers only (``stop_before_pixels``); a read decodes only the slices its window spans, one
``pydicom.dcmread`` per slice, so the series is never held in memory. Values are the modality values:
``stored · RescaleSlope + RescaleIntercept``, per slice.

Finding and checking the series lives in :mod:`tiler.io.dicom_series`; its public names are importable here too.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import UID

from tiler.errors import ReadError
from tiler.geometry import Window
from tiler.io.base import Georef, Reader, check_dtype, check_exists, one_line
from tiler.io.dicom_series import (
    DICOM_SUFFIXES,
    INSTALL_DECODERS,
    SeriesInfo,
    _check_slices,
    _order,
    _pick_series,
    _scan,
    _series_affine,
    _value_dtype,
    folder_fingerprint,
    is_dicom_file,
    is_dicom_folder,
    list_series,
    single_file_error,
    uid_digest,
)
from tiler.io.volume import _VolumeMask, check_affine

__all__ = [
    "DICOM_SUFFIXES", "DicomSeriesReader", "SeriesInfo", "folder_fingerprint", "is_dicom_file", "is_dicom_folder",
    "list_series", "single_file_error", "uid_digest",
]  # fmt: skip


# -- the reader -----------------------------------------------------------------------------------------


class DicomSeriesReader(_VolumeMask, Reader):
    """One DICOM series (a folder of single-frame slice files) as a ``(D, H, W)`` volume, read slice by slice.

    Args:
        path: The folder holding the series' files (any names, any order; subfolders are not searched).
        series: SeriesInstanceUID to read when the folder holds several series.
        threshold: Foreground threshold for :meth:`valid_mask` (e.g. ``-500`` HU); None = all valid. With
            ``mask="body"``, the HU above which a voxel may be body (None: ``-500``).
        mask: ``"body"`` for the body mask (see :class:`tiler.io.volume._VolumeMask`; only the kept slices'
            files are decoded to compute it); ``"auto"``/``"none"``: the threshold.

    Attributes:
        files: File paths in ``D`` order.
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID, or None.
        modality: Modality (``CT``, ``MR``, ...).

    """

    format = "dicom"
    _slices_apart = True  # one file per slice: the body mask decodes only the slices it keeps

    def __init__(
        self, path: str, *, series: str | None = None, threshold: float | None = None, mask: str = "auto"
    ) -> None:
        self.path = str(path)
        self._init_mask(mask, threshold)
        check_exists(self.path)
        if not os.path.isdir(self.path):
            raise single_file_error(self.name)
        slices = _pick_series(self.name, _scan(self.path), series)
        where = f"DICOM series {slices[0].series_uid} in {self.name}"
        _check_slices(where, slices)
        ordered, step = _order(where, slices)
        first = ordered[0]
        self.files: tuple[str, ...] = tuple(s.path for s in ordered)
        self.series_uid = first.series_uid
        self.study_uid = first.study_uid
        self.frame_of_reference_uid = first.frame_uid
        self.modality = first.modality
        self._sop_uids = tuple(s.sop_uid for s in ordered)
        self._rescale = tuple((s.slope, s.intercept) for s in ordered)
        self.shape = (len(ordered), first.rows, first.cols)
        self.channels = 1
        self.dtype = check_dtype(self.name, _value_dtype(ordered))
        self.nodata = None
        affine = _series_affine(first, step)
        check_affine(self.name, affine)
        spacing = (float(np.linalg.norm(step)), first.pixel_spacing[0], first.pixel_spacing[1])
        self.georef = Georef(kind="volume", affine=affine.tolist(), spacing=spacing)

    def _open(self) -> Any:
        return self.files  # no handle is kept: each read opens the slice files it needs

    def _close_handle(self, handle: Any) -> None:
        return None

    def fingerprint(self) -> str:
        """sha256 hex of the series' SOPInstanceUIDs sorted, as opened (file names and copies keep it)."""
        return uid_digest(self._sop_uids)

    def source_datasets(self) -> list[pydicom.Dataset]:
        """The header datasets (no pixel data) of the slice files in ``D`` order, read again on each call."""
        out: list[pydicom.Dataset] = []
        for path in self.files:
            try:
                out.append(pydicom.dcmread(path, stop_before_pixels=True))
            except Exception as exc:  # noqa: BLE001 - missing or damaged since opening
                raise ReadError(
                    one_line(f"cannot read the DICOM header of {path} (series {self.series_uid}): {exc}.")
                ) from exc
        return out

    def _stored_slice(self, d: int) -> np.ndarray:
        """Stored values of slice ``d``: (H, W)."""
        path = self.files[d]
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001 - missing or damaged since opening
            raise ReadError(
                one_line(
                    f"cannot read slice {d} of DICOM series {self.series_uid} ({path}): {exc}. The folder changed "
                    f"since it was opened, or the file is damaged; restore it and run again."
                )
            ) from exc
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom's pixel handlers raise many kinds
            name = UID(str(syntax)).name if syntax else "unknown transfer syntax"
            raise ReadError(
                one_line(
                    f"cannot decode the pixels of {path} (slice {d} of DICOM series {self.series_uid}, {name}): "
                    f"{exc}. Install the decoders ({INSTALL_DECODERS}), or decompress the series "
                    f"(e.g. `gdcmconv --raw`)."
                )
            ) from exc
        if pixels.shape != self.shape[1:]:
            raise ReadError(
                one_line(
                    f"slice {d} of DICOM series {self.series_uid} ({path}) decodes to shape {pixels.shape}, "
                    f"not Rows x Columns {self.shape[1:]}; the file is damaged or not single-frame grey-level."
                )
            )
        return pixels

    def _read_inside(self, window: Window) -> np.ndarray:
        (d0, h0, w0), (d1, h1, w1) = window.start, window.stop
        out = np.empty((1, d1 - d0, h1 - h0, w1 - w0), dtype=self.dtype)
        for d in range(d0, d1):
            stored = self._stored_slice(d)[h0:h1, w0:w1]
            slope, intercept = self._rescale[d]
            if self.dtype.kind == "f":
                out[0, d - d0] = stored.astype(np.float64) * slope + intercept
            else:
                out[0, d - d0] = stored.astype(np.int64) + int(intercept)
        return out
