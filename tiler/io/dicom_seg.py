"""The DICOM Segmentation (SEG) export: 3D labels as one SEG instance that references the source series.

The labels of a 3D output store ``(D, H, W)`` are written with highdicom as a ``.seg.dcm`` over the source
series (one plane per source slice, in the store's depth order): the SEG copies the patient and study of the
sources, references their series and frame of reference, and opens in viewers over the CT or MR it came from
(3D Slicer, OHIF, a PACS).

Segments: one per class present in the labels, class 0 and any class named ``background`` excepted, and never
the nodata label (those pixels are left unsegmented). Its label is the class name, its display colour the class
colour, its category and type the generic SNOMED CT "Tissue", and its algorithm the model that made it (type
AUTOMATIC, family "Artificial Intelligence"). In a ``"binary"`` SEG (the default, read by the most viewers) the
segments are numbered 1..n in class order; in a ``"labelmap"`` SEG each segment number is its class value, so a
pixel's stored value is its class. A map with no foreground at all is still written, as one empty segment (the
first foreground class) over every slice.

highdicom takes the whole volume at once: the labels are read slab by slab into one ``(D, H, W)`` array of the
store's label dtype (uint8, or uint16 past 255 classes), the only full copy held. The file appears whole or not
at all (:func:`tiler.io.atomic.atomic_path`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from tiler.errors import ConfigError, OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.atomic import BeforeMove, atomic_path
from tiler.io.base import one_line
from tiler.io.export import _check_writable
from tiler.io.objects import AnyPath, PathArg, as_path
from tiler.version import __version__

SEGMENTATION_TYPES = ("binary", "labelmap")
"""The SEG flavours written: one bit plane per segment and slice, or one plane of segment numbers per slice."""

SERIES_NUMBER = 300
"""The SEG's series number (new series in the source study; viewers list series by number)."""

MANUFACTURER = "tiler"
BACKGROUND_NAMES = frozenset({"background"})
"""Class names (compared case-insensitively) that are background, as class 0 is, and never a segment."""

_SLAB_BYTES = 64 * 2**20
"""Labels read per step when the store has no write unit to follow."""

_LO_MAX = 64
"""Longest DICOM LO (long string) value: segment labels, model name, algorithm name and version."""


class LabelSource(Protocol):
    """What the SEG export reads: a 3D label store (an :class:`~tiler.io.store.OutputStore` is one)."""

    path: Path

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape ``(D, H, W)``."""
        ...

    @property
    def class_names(self) -> list[str]:
        """Class names, indexed by class value."""
        ...

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        """Class colours as RGB 0..255, indexed by class value."""
        ...

    @property
    def nodata_label(self) -> int:
        """The label of pixels without prediction."""
        ...

    def read(self, selection: Window) -> np.ndarray:
        """The labels of ``selection``, shape ``selection.shape``."""
        ...


@dataclass(frozen=True)
class Segment:
    """One SEG segment: the class it shows and its number in the SEG."""

    class_value: int
    number: int
    label: str
    color: tuple[int, int, int]


def export_dicom_seg(
    store: LabelSource,
    out_path: PathArg,
    *,
    sources: Sequence[pydicom.Dataset],
    segmentation_type: str = "binary",
    algorithm: str,
    algorithm_version: str,
    before_move: BeforeMove | None = None,
) -> AnyPath:
    """Write the 3D labels of ``store`` as a DICOM SEG over the source series ``sources``.

    Args:
        store: A 3D output store, labels ``(D, H, W)`` with slice ``k`` over ``sources[k]``.
        out_path: The file to write (``<name>.seg.dcm``).
        sources: The source series' datasets (headers suffice, pixel data is not read), in the store's depth
            order; all of one series and frame of reference, each ``Rows`` x ``Columns`` = ``(H, W)``.
        segmentation_type: ``"binary"`` (the default: widest viewer support) or ``"labelmap"`` (pixel value =
            class value).
        algorithm: The model that made the labels (its name: the SEG's model name and segments' algorithm).
        algorithm_version: Its version (a checkpoint digest, a release).
        before_move: Called as ``before_move(tmp, final)`` once the SEG is complete, just before its move.

    Returns:
        ``out_path``.

    Raises:
        ConfigError: ``segmentation_type`` is neither ``"binary"`` nor ``"labelmap"``.
        OutputError: the store's shape does not match the sources, the store has no foreground class, highdicom
            refuses the sources, or the file cannot be written.

    """
    out_path = as_path(out_path)
    if segmentation_type not in SEGMENTATION_TYPES:
        raise ConfigError(
            f"DICOM SEG segmentation_type={segmentation_type!r} is not one of {', '.join(SEGMENTATION_TYPES)}; "
            f"use 'binary' (read by most viewers) or 'labelmap'."
        )
    _check_writable(out_path)
    _check_shape(store, sources)
    volume, present = read_labels(store)
    segments, empty = plan_segments(store, present, labelmap=segmentation_type == "labelmap")
    renumber(volume, segments, slab=_slab_depth(store))
    seg = _build(
        store, sources, volume, segments, segmentation_type=segmentation_type, empty=empty,
        algorithm=algorithm, algorithm_version=algorithm_version,
    )  # fmt: skip
    with atomic_path(out_path, what="write the DICOM SEG", before_move=before_move) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out_path


def _check_shape(store: LabelSource, sources: Sequence[pydicom.Dataset]) -> None:
    """Refuse a store whose ``(D, H, W)`` is not ``(len(sources), Rows, Columns)``."""
    if not sources:
        raise OutputError(f"cannot write a DICOM SEG of {store.path}: no source DICOM datasets were given.")
    frames = {(int(getattr(ds, "Rows", -1)), int(getattr(ds, "Columns", -1))) for ds in sources}
    rows, cols = next(iter(frames))
    source_shape = (len(sources), rows, cols) if len(frames) == 1 else f"({len(sources)}, mixed {sorted(frames)})"
    if tuple(store.shape) != source_shape:
        raise OutputError(
            f"cannot write a DICOM SEG of {store.path}: its labels have shape {tuple(store.shape)} but the source "
            f"series has shape {source_shape} (slices, Rows, Columns); export the SEG over the series the job read."
        )


def _slab_depth(store: LabelSource) -> int:
    """Slices read per step: the store's write unit depth, else about :data:`_SLAB_BYTES` of labels."""
    unit = getattr(store, "write_unit", None)
    if unit:
        return max(1, int(unit[0]))
    _, height, width = store.shape
    return max(1, _SLAB_BYTES // max(1, 2 * height * width))


def read_labels(store: LabelSource) -> tuple[np.ndarray, set[int]]:
    """The whole label volume ``(D, H, W)``, nodata pixels as 0, and the class values present (nodata excluded).

    Read slab by slab (the store's write unit in depth); the array has the dtype of the store's labels.
    """
    shape = tuple(store.shape)
    nodata = store.nodata_label
    slab = _slab_depth(store)
    volume: np.ndarray | None = None
    present: set[int] = set()
    for window in BlockPartition(shape, (slab, shape[1], shape[2])):
        labels = np.asarray(store.read(window))
        if volume is None:
            volume = np.zeros(shape, dtype=labels.dtype if labels.dtype.kind == "u" else np.uint16)
        counts = np.bincount(labels.ravel().astype(np.intp, copy=False))
        present.update(int(k) for k in np.flatnonzero(counts) if k != nodata)
        target = volume[window.slices]
        target[...] = labels
        target[labels == nodata] = 0
    if volume is None:
        raise OutputError(f"cannot write a DICOM SEG of {store.path}: its labels are empty (shape {shape}).")
    return volume, present


def is_background(class_value: int, name: str) -> bool:
    """Whether a class is background (never a segment): class 0, or a class named ``background``.

    >>> is_background(0, "tissue"), is_background(2, "Background"), is_background(1, "tumour")
    (True, True, False)
    """
    return class_value == 0 or name.strip().lower() in BACKGROUND_NAMES


def plan_segments(store: LabelSource, present: set[int], *, labelmap: bool) -> tuple[list[Segment], bool]:
    """The segments of a SEG over the classes ``present``, and whether the map is empty (no foreground).

    Binary SEGs number their segments 1..n in class order; labelmap SEGs number each by its class value. An
    empty map gets one segment: the first foreground class of the store.

    Raises:
        OutputError: the map is empty and the store has no foreground class to name its one segment.
    """
    names, colors, nodata = list(store.class_names), list(store.class_colors), store.nodata_label

    def name_of(k: int) -> str:
        return names[k] if k < len(names) else f"class_{k}"

    foreground = sorted(k for k in present if k != nodata and not is_background(k, name_of(k)))
    empty = not foreground
    if empty:
        candidates = [k for k in range(len(names)) if k != nodata and not is_background(k, names[k])]
        if not candidates:
            raise OutputError(
                f"cannot write a DICOM SEG of {store.path}: no class was found in its labels and its classes "
                f"{names} hold no foreground class to name an empty segment; name the classes in the job config."
            )
        foreground = candidates[:1]
    segments = [
        Segment(
            class_value=k,
            number=k if labelmap else i + 1,
            label=name_of(k),
            color=colors[k] if k < len(colors) else (128, 128, 128),
        )
        for i, k in enumerate(foreground)
    ]
    return segments, empty


def renumber(volume: np.ndarray, segments: Sequence[Segment], *, slab: int) -> None:
    """Replace, in place and ``slab`` slices at a time, each class value by its segment number (others by 0).

    >>> v = np.array([[[0, 1, 2, 3]]], np.uint8)
    >>> renumber(v, [Segment(1, 1, "a", (0, 0, 0)), Segment(3, 2, "c", (0, 0, 0))], slab=1)
    >>> v.tolist()
    [[[0, 1, 0, 2]]]
    """
    lut = np.zeros(int(volume.max(initial=0)) + 1, dtype=volume.dtype)
    for seg in segments:
        if seg.class_value < lut.size:
            lut[seg.class_value] = seg.number
    for z0 in range(0, volume.shape[0], slab):
        volume[z0 : z0 + slab] = lut[volume[z0 : z0 + slab]]


def _lo(text: str) -> str:
    """``text`` as a DICOM LO value: one line, no backslash (the value separator), at most 64 characters."""
    return " ".join(str(text).replace("\\", "/").split())[:_LO_MAX] or "unknown"


def _display_color(rgb: tuple[int, int, int]) -> hd.color.CIELabColor | None:
    try:
        return hd.color.CIELabColor.from_rgb(*(min(255, max(0, int(c))) for c in rgb))
    except ValueError:  # an RGB colour outside the CIELab range DICOM stores
        return None


def segment_descriptions(
    segments: Sequence[Segment], *, algorithm: str, algorithm_version: str
) -> list[hd.seg.SegmentDescription]:
    """The highdicom descriptions of ``segments``: label, colour, generic "Tissue" codes, the automatic algorithm."""
    algo = hd.AlgorithmIdentificationSequence(
        name=_lo(algorithm), version=_lo(algorithm_version), family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=seg.number,
            segment_label=_lo(seg.label),
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            display_color=_display_color(seg.color),
        )
        for seg in segments
    ]


def _build(
    store: LabelSource,
    sources: Sequence[pydicom.Dataset],
    volume: np.ndarray,
    segments: Sequence[Segment],
    *,
    segmentation_type: str,
    empty: bool,
    algorithm: str,
    algorithm_version: str,
) -> hd.seg.Segmentation:
    """The highdicom Segmentation of ``volume`` (segment numbers, ``(D, H, W)``) over ``sources``."""
    try:
        return hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=volume,
            segmentation_type=segmentation_type.upper(),
            segment_descriptions=segment_descriptions(
                segments, algorithm=algorithm, algorithm_version=algorithm_version
            ),
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=_lo(algorithm),
            software_versions=_lo(__version__),
            device_serial_number="0",
            series_description=_lo(f"tiler segmentation ({algorithm})"),
            omit_empty_frames=not empty,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        uid = getattr(sources[0], "SeriesInstanceUID", "?")
        raise OutputError(
            one_line(
                f"cannot write a DICOM SEG of {store.path} over the series {uid}: highdicom refused it: {exc}; "
                f"the sources must be one single-frame series with one frame of reference, in slice order."
            )
        ) from exc
