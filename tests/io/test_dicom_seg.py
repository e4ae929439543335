"""The DICOM SEG export: lossless labels over the source series, read back with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.dicom_series import write_series
from tiler.errors import ConfigError, OutputError
from tiler.geometry import BlockPartition
from tiler.io.dicom_seg import export_dicom_seg
from tiler.io.store import OutputStore

SHAPE = (6, 24, 20)
NAMES = ["background", "liver", "kidney", "tumour"]
COLORS = [(0, 0, 0), (200, 60, 40), (40, 200, 60), (255, 255, 0)]


def read_sources(folder: Path) -> list[pydicom.Dataset]:
    """The series under ``folder`` in slice order (ImagePositionPatient projected on the slice normal)."""
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]

    def depth(ds: pydicom.Dataset) -> float:
        o = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return float(np.cross(o[:3], o[3:]) @ np.asarray(ds.ImagePositionPatient, dtype=float))

    return sorted(datasets, key=depth)


def make_store(path: Path, labels: np.ndarray, *, names=NAMES, colors=COLORS) -> OutputStore:
    store = OutputStore.create(
        path,
        shape=labels.shape,
        num_classes=len(names),
        chunks=(2, labels.shape[1], labels.shape[2]),
        pixels_hash="seg-test",
        attrs={"class_names": list(names), "class_colors": [list(c) for c in colors]},
    )
    for block in BlockPartition(store.shape, store.chunks):
        store.write_block(block, labels[block.slices])
    return store


def sample_labels(seed: int = 0) -> np.ndarray:
    """Classes 0, 1 and 3 in blobs (class 2 absent), a nodata (255) corner."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:4, 4:15, 3:12] = 1
    labels[2:6, 10:20, 8:18] = 3
    rng = np.random.default_rng(seed)
    labels[rng.random(SHAPE) < 0.02] = 1  # scattered single pixels too
    labels[0, :3, :3] = 255
    return labels


@pytest.fixture
def series(tmp_path: Path) -> tuple[str, list[pydicom.Dataset]]:
    volume = np.random.default_rng(1).integers(-1000, 1500, SHAPE).astype(np.int16)
    uid = write_series(tmp_path / "ct", volume, spacing=(2.0, 0.7, 0.7))
    return uid, read_sources(tmp_path / "ct")


def export(store: OutputStore, out: Path, sources, **kwargs) -> hd.seg.Segmentation:
    path = export_dicom_seg(store, out, sources=sources, algorithm="unet.pt", algorithm_version="sha256:ab12", **kwargs)
    assert path == out and out.is_file()
    return hd.seg.segread(out)


def pixels(seg: hd.seg.Segmentation, sources: list[pydicom.Dataset], **kwargs) -> np.ndarray:
    """The SEG's segment numbers per source slice, ``(D, H, W)``."""
    return seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources], combine_segments=True, skip_overlap_checks=False, **kwargs
    )


@pytest.mark.parametrize(
    ("segmentation_type", "numbers"),
    [
        pytest.param("binary", {1: 1, 3: 2}, id="binary:1..n"),
        pytest.param("labelmap", {1: 1, 3: 3}, id="labelmap:class-values"),
    ],
)
def test_seg_is_lossless_and_references_series(tmp_path, series, segmentation_type, numbers):
    uid, sources = series
    labels = sample_labels()
    store = make_store(tmp_path / "out.zarr", labels)
    seg = export(store, tmp_path / "out.seg.dcm", sources, segmentation_type=segmentation_type)

    assert seg.SegmentationType == segmentation_type.upper()
    assert seg.get_segment_numbers() == sorted(numbers.values())  # class 2 absent, background and nodata never
    assert [seg.get_segment_description(n).segment_label for n in numbers.values()] == ["liver", "tumour"]
    expected = np.zeros_like(labels)
    for class_value, number in numbers.items():
        expected[labels == class_value] = number
    assert np.array_equal(pixels(seg, sources), expected)
    if segmentation_type == "labelmap":  # the stored value is the class value
        assert np.array_equal(pixels(seg, sources), np.where(labels == 255, 0, labels))

    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    first = sources[0]
    assert (seg.PatientID, seg.StudyInstanceUID) == (first.PatientID, first.StudyInstanceUID)
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != uid and seg.SeriesNumber == 300 and seg.InstanceNumber == 1
    assert (seg.Manufacturer, seg.ManufacturerModelName) == ("tiler", "unet.pt")


def test_seg_segment_metadata(tmp_path, series):
    _, sources = series
    store = make_store(tmp_path / "out.zarr", sample_labels())
    seg = export(store, tmp_path / "out.seg.dcm", sources)
    desc = seg.get_segment_description(2)
    assert desc.segment_label == "tumour"
    assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert desc.algorithm_identification[0].AlgorithmName == "unet.pt"
    assert desc.algorithm_identification[0].AlgorithmVersion == "sha256:ab12"
    assert desc.segmented_property_type.value == "85756007"
    item = seg.SegmentSequence[1]
    rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(rgb, COLORS[3], atol=2)


def test_seg_names_background_class_not_zero(tmp_path, series):
    """A class named background is not a segment wherever it is; its pixels are left unsegmented."""
    _, sources = series
    names = ["air", "background", "bone"]
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, :10] = 1
    labels[2:4, 12:, 5:] = 2
    store = make_store(tmp_path / "out.zarr", labels, names=names, colors=COLORS[:3])
    seg = export(store, tmp_path / "out.seg.dcm", sources, segmentation_type="labelmap")
    assert seg.get_segment_numbers() == [2]
    assert np.array_equal(pixels(seg, sources), np.where(labels == 2, 2, 0))


@pytest.mark.parametrize("segmentation_type", ["binary", "labelmap"])
def test_seg_all_background_has_one_empty_segment(tmp_path, series, segmentation_type):
    _, sources = series
    labels = np.zeros(SHAPE, np.uint8)
    labels[0] = 255
    store = make_store(tmp_path / "out.zarr", labels)
    seg = export(store, tmp_path / "out.seg.dcm", sources, segmentation_type=segmentation_type)
    assert seg.get_segment_numbers() == [1]
    assert seg.get_segment_description(1).segment_label == "liver"
    assert not pixels(seg, sources).any()


def test_seg_without_foreground_class_is_refused(tmp_path, series):
    _, sources = series
    store = make_store(tmp_path / "out.zarr", np.zeros(SHAPE, np.uint8), names=["background"], colors=[(0, 0, 0)])
    with pytest.raises(OutputError, match=r"out\.zarr: no class was found .*foreground"):
        export_dicom_seg(store, tmp_path / "out.seg.dcm", sources=sources, algorithm="m", algorithm_version="1")
    assert not list(tmp_path.glob("*.seg.dcm")) and not list(tmp_path.glob(".tiler-tmp-*"))


def _one_slice_short(sources: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return sources[:-1]


def _one_slice_taller(sources: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    taller = sources[0].copy()
    taller.Rows = SHAPE[1] + 1
    return [taller, *sources[1:]]


@pytest.mark.parametrize(
    ("cut", "shown"),
    [
        pytest.param(_one_slice_short, r"\(5, 24, 20\)", id="one-slice-short"),
        pytest.param(_one_slice_taller, r"\(6, mixed \[\(24, 20\), \(25, 20\)\]\)", id="rows-differ"),
    ],
)
def test_seg_shape_mismatch_names_both_shapes(tmp_path, series, cut, shown):
    _, sources = series
    store = make_store(tmp_path / "out.zarr", sample_labels())
    with pytest.raises(OutputError, match=rf"out\.zarr: its labels have shape \(6, 24, 20\) but .* shape {shown}"):
        export_dicom_seg(store, tmp_path / "out.seg.dcm", sources=cut(sources), algorithm="m", algorithm_version="1")
    assert not (tmp_path / "out.seg.dcm").exists()


def test_seg_bad_type_and_hook(tmp_path, series):
    _, sources = series
    store = make_store(tmp_path / "out.zarr", sample_labels())
    with pytest.raises(ConfigError, match=r"segmentation_type='fractional'.*'binary'"):
        export_dicom_seg(
            store, tmp_path / "x.seg.dcm", sources=sources, segmentation_type="fractional", algorithm="m",
            algorithm_version="1",
        )  # fmt: skip
    seen: list[tuple[str, str]] = []

    def hook(tmp: Path, final: Path) -> None:
        assert tmp.is_file() and not final.exists()
        seen.append((tmp.parent.name, final.name))
        raise OutputError("stop before the move")

    with pytest.raises(OutputError, match="stop before the move"):
        export_dicom_seg(
            store, tmp_path / "x.seg.dcm", sources=sources, algorithm="m", algorithm_version="1", before_move=hook
        )
    assert seen == [(tmp_path.name, "x.seg.dcm")]
    assert not (tmp_path / "x.seg.dcm").exists() and not list(tmp_path.glob(".tiler-tmp-*"))


def test_seg_long_model_name_is_a_valid_lo(tmp_path, series):
    _, sources = series
    store = make_store(tmp_path / "out.zarr", sample_labels())
    name = "C:\\models\\" + "x" * 100
    out = export_dicom_seg(store, tmp_path / "o.seg.dcm", sources=sources, algorithm=name, algorithm_version="1")
    seg = hd.seg.segread(out)
    assert seg.ManufacturerModelName == ("C:/models/" + "x" * 100)[:64]
