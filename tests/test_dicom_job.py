"""DICOM end to end: a CT series folder in, labels and a DICOM SEG out, the SEG sent to a real PACS (Orthanc).

One module-scoped job (series → store, NIfTI and SEG, sent by STOW-RS) serves the read-only tests; the tests
that fail a send or refuse an input run their own small jobs.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
import yaml
import zarr

from tests.dicom_series import write_series
from tests.orthanc import Orthanc  # the session's PACS, the fixture orthanc, comes from conftest
from tiler.cli import main as cli_main
from tiler.model import ModelSpec, Normalization, build_network, save_checkpoint

CLASSES = ["background", "soft tissue", "bone", "lesion"]
SHAPE = (12, 24, 28)


def ct_volume(seed: int = 0) -> np.ndarray:
    """A CT-like ``(D, H, W)`` volume in HU: air around a body ellipse holding a bright bone and a soft blob."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    hu = np.full(SHAPE, -1000.0)
    hu[(h / 0.8) ** 2 + (w / 0.9) ** 2 < 1] = 40.0
    hu[(h - 0.2) ** 2 + (w + 0.3) ** 2 < 0.05] = 900.0
    hu[d**2 + (h + 0.3) ** 2 + (w - 0.3) ** 2 < 0.1] = 120.0
    return np.round(hu + rng.normal(0, 10, SHAPE))


def write_model(path: Path) -> Path:
    torch.manual_seed(3)
    spec = ModelSpec("UNet", 3, 1, len(CLASSES), args={"channels": [4, 8], "strides": [2], "num_res_units": 0})
    net = build_network(spec)
    return save_checkpoint(path, net, spec=spec, normalization=Normalization(kind="meanstd", mean=(0.0,), std=(500.0,)),
                           class_names=CLASSES)


def job_config(root: Path, image: Path, weights: Path, out: Path, **output: Any) -> Path:
    config = root / f"{out.stem}.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(image)}, "model": {"weights": str(weights), "threads": 1},
        "tiling": {"tile": [8, 16, 16], "overlap": [2, 4, 4], "block": [12, 24, 28]},
        "output": {"path": str(out), "chunks": [6, 12, 14], **output},
    }))
    return config


def labels_of(store: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(store), mode="r")["labels"][:])


def orthanc_get(server: Orthanc, path: str) -> Any:
    with urllib.request.urlopen(server.http_url.rstrip("/") + path, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def dicom_job(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dicom-job")
    series = root / "series"
    hu = ct_volume()
    series_uid = write_series(series, hu, spacing=(2.5, 0.8, 0.8), intercept=-1024.0, description="chest")
    weights = write_model(root / "ct.pt")
    out = root / "out" / "chest.zarr"
    config = job_config(root, series, weights, out, exports=["nifti", "dicom-seg"],
                        dicom={"send": orthanc.dicomweb_url})
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    assert code == 0
    return {"root": root, "series": series, "series_uid": series_uid, "hu": hu, "weights": weights, "out": out,
            "config": config, "seg": root / "out" / "chest.seg.dcm"}


def test_a_dicom_series_folder_runs_and_its_seg_references_the_series_with_the_labels(
    dicom_job: dict[str, Any],
) -> None:
    labels = labels_of(dicom_job["out"])
    seg = hd.seg.segread(str(dicom_job["seg"]))
    source = pydicom.dcmread(next(dicom_job["series"].iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dicom_job["series_uid"]
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.SeriesInstanceUID != dicom_job["series_uid"]
    present = [int(c) for c in np.unique(labels) if c != 0]
    assert len(present) >= 2, "the fixture's model should find at least two classes"
    names = [desc.SegmentLabel for desc in seg.SegmentSequence]
    assert names == [CLASSES[c] for c in present]
    # the SEG's frames, put back on the source slices, equal the labels of every class present
    uids = [(ds.SOPInstanceUID, float(np.dot(ds.ImagePositionPatient, [0, 0, 1])))
            for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in dicom_job["series"].iterdir())]
    ordered = [uid for uid, _ in sorted(uids, key=lambda u: u[1])]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=ordered, combine_segments=True,
                                               relabel=True)
    expected = np.zeros_like(labels)
    for number, c in enumerate(present, start=1):
        expected[labels == c] = number
    np.testing.assert_array_equal(pixels, expected)


def test_the_same_series_as_simpleitks_nifti_gives_the_same_labels_and_affine(
    dicom_job: dict[str, Any], tmp_path: Path
) -> None:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom_job["series"])))
    nifti = tmp_path / "chest.nii.gz"
    sitk.WriteImage(reader.Execute(), str(nifti))
    out = tmp_path / "from-nifti.zarr"
    config = job_config(tmp_path, nifti, dicom_job["weights"], out, exports=["nifti"])
    assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) == 0
    np.testing.assert_array_equal(labels_of(out), labels_of(dicom_job["out"]))
    ours = nib.load(str(dicom_job["out"].with_name("chest.nii.gz")))
    np.testing.assert_allclose(ours.affine, nib.load(str(nifti)).affine, atol=1e-4)


def test_the_seg_is_stored_in_the_pacs_and_found_by_a_query_on_the_study(
    dicom_job: dict[str, Any], orthanc: Orthanc
) -> None:
    seg = pydicom.dcmread(dicom_job["seg"], stop_before_pixels=True)
    found = orthanc_get(orthanc, f"/dicom-web/studies/{seg.StudyInstanceUID}/series?Modality=SEG")
    assert [s["0020000E"]["Value"][0] for s in found] == [seg.SeriesInstanceUID]
    record = json.loads((dicom_job["out"] / ".tiler" / "exports" / "dicom_seg_sent.json").read_text())
    assert record["settings"]["target"] == orthanc.dicomweb_url


def test_a_rerun_sends_nothing_again(dicom_job: dict[str, Any], orthanc: Orthanc) -> None:
    seg = pydicom.dcmread(dicom_job["seg"], stop_before_pixels=True)
    before = dicom_job["seg"].read_bytes()
    stats = orthanc_get(orthanc, "/statistics")["CountInstances"]
    assert cli_main(["--quiet", "run", str(dicom_job["config"]), "--engine", "local"]) == 0
    assert dicom_job["seg"].read_bytes() == before
    assert orthanc_get(orthanc, "/statistics")["CountInstances"] == stats
    found = orthanc_get(orthanc, f"/dicom-web/studies/{seg.StudyInstanceUID}/series?Modality=SEG")
    assert len(found) == 1
    assert cli_main(["--quiet", "verify", str(dicom_job["out"])]) == 0  # the send's record is one verify accepts


def test_a_failed_send_fails_the_input_keeps_the_seg_and_a_rerun_sends_only_the_seg(
    dicom_job: dict[str, Any], orthanc: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = tmp_path / "series"
    write_series(series, ct_volume(seed=1), intercept=-1024.0, patient_id="TILER-TEST-2")
    out = tmp_path / "out.zarr"
    closed = f"127.0.0.1:{_closed_port()}"
    config = job_config(tmp_path, series, dicom_job["weights"], out, exports=["dicom-seg"],
                        dicom={"send": closed, "called_ae": orthanc.aet})
    assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any(closed in line and "out.seg.dcm" in line for line in err), err
    seg = tmp_path / "out.seg.dcm"
    kept = seg.read_bytes()
    assert not zarr.open_group(str(out), mode="r").attrs.get("complete", False)
    # the PACS is reachable again (C-STORE this time): the rerun sends the SEG it kept, drawing nothing again
    config = job_config(tmp_path, series, dicom_job["weights"], out, exports=["dicom-seg"],
                        dicom={"send": f"127.0.0.1:{orthanc.dicom_port}", "called_ae": orthanc.aet})
    assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) == 0
    assert seg.read_bytes() == kept
    sop = pydicom.dcmread(seg, stop_before_pixels=True).SOPInstanceUID
    lookup = urllib.request.Request(orthanc.http_url.rstrip("/") + "/tools/lookup", data=sop.encode(), method="POST")
    with urllib.request.urlopen(lookup, timeout=30) as answer:
        assert [hit["Type"] for hit in json.loads(answer.read())] == ["Instance"]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dicom_seg_for_a_nifti_input_is_refused_before_any_block(
    dicom_job: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nifti = dicom_job["out"].with_name("chest.nii.gz")
    out = tmp_path / "refused.zarr"
    config = job_config(tmp_path, nifti, dicom_job["weights"], out, exports=["dicom-seg"])
    assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dicom-seg" in err and str(nifti) in err and "fix:" in err
    assert not out.exists()


@pytest.mark.parametrize("problem", ["uneven spacing", "two series", "not an image"])
def test_a_bad_series_gets_one_line_naming_the_folder(
    dicom_job: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    series = tmp_path / "series"
    hu = ct_volume()[:6]
    if problem == "uneven spacing":
        positions = [(0.0, 0.0, z) for z in (0, 2.5, 5, 7.5, 12.5, 15)]
        write_series(series, hu, positions=positions)
    elif problem == "two series":
        write_series(series, hu, seed=1, description="first")
        write_series(series, hu, seed=2, description="second")
    else:
        write_series(tmp_path / "image", hu)
        sr = pydicom.dcmread(next((tmp_path / "image").iterdir()))
        del sr.PixelData, sr.ImagePositionPatient
        sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
        series.mkdir()
        sr.save_as(series / "report.dcm", enforce_file_format=True)
    out = tmp_path / "out.zarr"
    config = job_config(tmp_path, series, dicom_job["weights"], out, exports=["dicom-seg"])
    assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(series) in err, err
    assert {"uneven spacing": "spacing", "two series": "input.series", "not an image": "not an image"}[problem] in err
    assert not out.exists()


def test_an_archive_of_series_folders_runs_each_and_knows_them_by_their_instances(
    dicom_job: dict[str, Any], tmp_path: Path
) -> None:
    from tiler.archive.config import load_archive
    from tiler.archive.run import run_archive

    for i in (1, 2):
        write_series(tmp_path / "ct" / f"p{i}", ct_volume(seed=i), patient_id=f"P{i}", seed=i)
    (tmp_path / "archive.yaml").write_text(yaml.safe_dump({
        "archive": {"root": "out"}, "input": {"path": "ct/*"},
        "model": {"weights": str(dicom_job["weights"]), "threads": 1},
        "tiling": {"tile": [8, 16, 16], "overlap": [2, 4, 4], "block": [12, 24, 28]},
        "output": {"chunks": [6, 12, 14], "exports": ["dicom-seg"]},
    }))

    def run() -> Any:
        return run_archive(load_archive(tmp_path / "archive.yaml", []), engine="local", quiet=True)

    assert run().counts == {"done": 2, "skipped": 0, "failed": 0, "total": 2}
    for i in (1, 2):
        seg = pydicom.dcmread(tmp_path / "out" / f"p{i}" / f"p{i}.seg.dcm", stop_before_pixels=True)
        assert seg.PatientID == f"P{i}"
    # renamed files are the same instances: nothing to do; a removed instance is another series: run again
    first = sorted((tmp_path / "ct" / "p1").iterdir())[0]
    first.rename(first.with_name("renamed.dcm"))
    assert run().counts == {"done": 0, "skipped": 2, "failed": 0, "total": 2}
    top = max((tmp_path / "ct" / "p2").iterdir(),
              key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    top.unlink()
    assert run().counts == {"done": 1, "skipped": 1, "failed": 0, "total": 2}
