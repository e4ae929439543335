"""Sending DICOM to a PACS: STOW-RS and C-STORE into a real Orthanc, and every failure named with its fix."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage

from tests.dicom_series import write_series
from tests.orthanc import Orthanc, free_port  # the session's PACS, the fixture orthanc, comes from conftest
from tiler.errors import ConfigError, OutputError
from tiler.geometry import Window
from tiler.io.dicom_seg import export_dicom_seg
from tiler.io.pacs import DicomNodeTarget, DicomWebTarget, parse_target, send_file

SHAPE = (4, 16, 12)


class ArrayLabels:
    """A 3D label map in memory with the attributes the SEG export reads (no output store needed)."""

    class_names = ["background", "lesion"]
    class_colors = [(0, 0, 0), (230, 30, 30)]
    nodata_label = 255

    def __init__(self, labels: np.ndarray, path: Path) -> None:
        self.labels, self.path, self.shape = labels, path, labels.shape

    def read(self, selection: Window) -> np.ndarray:
        return self.labels[selection.slices].copy()


def _sources(folder: Path) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]

    def depth(ds: pydicom.Dataset) -> float:
        o = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return float(np.cross(o[:3], o[3:]) @ np.asarray(ds.ImagePositionPatient, dtype=float))

    return sorted(datasets, key=depth)


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path | str]:
    """A CT series (its own study, patient) and a SEG over it; the paths of one CT slice and of the SEG."""
    volume = np.random.default_rng(3).integers(-1000, 1000, SHAPE).astype(np.int16)
    patient = f"PACS-{tmp_path.name[-20:]}"
    write_series(tmp_path / "ct", volume, patient_id=patient)
    sources = _sources(tmp_path / "ct")
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:3, 4:10, 3:9] = 1
    seg = export_dicom_seg(
        ArrayLabels(labels, tmp_path / "labels"), tmp_path / "pred.seg.dcm", sources=sources, algorithm="unet",
        algorithm_version="1",
    )  # fmt: skip
    return {"seg": seg, "ct": next((tmp_path / "ct").glob("*.dcm")), "study": str(sources[0].StudyInstanceUID)}


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _stored_instances(server: Orthanc, study_uid: str) -> set[str]:
    """SOPInstanceUIDs Orthanc holds in the study, through QIDO-RS."""
    url = f"{server.dicomweb_url}/studies/{study_uid}/instances"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/dicom+json"})) as r:
        body = r.read()
    return {item["00080018"]["Value"][0] for item in json.loads(body)} if body else set()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("http://pacs:8042/dicom-web/", DicomWebTarget("http://pacs:8042/dicom-web"), id="dicomweb"),
        pytest.param(
            "https://u:pw@pacs/dicom-web?x=1", DicomWebTarget("https://pacs/dicom-web?x=1", ("u", "pw")), id="creds"
        ),
        pytest.param("pacs.local:104", DicomNodeTarget("pacs.local", 104), id="host:port"),
        pytest.param("ORTHANC@10.0.0.2:4242", DicomNodeTarget("10.0.0.2", 4242, "ORTHANC"), id="aet@host:port"),
        pytest.param("dicom://PACS1@[::1]:11112", DicomNodeTarget("::1", 11112, "PACS1"), id="dicom-url-ipv6"),
    ],
)
def test_parse_target(text, expected):
    parsed = parse_target(text)
    assert parsed == expected
    if isinstance(parsed, DicomWebTarget):
        assert "pw" not in str(parsed) and "pw" not in repr(parsed)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        pytest.param("pacs", "needs a host and a port", id="no-port"),
        pytest.param("pacs:0", "needs a host and a port", id="port-0"),
        pytest.param("pacs:99999", "needs a host and a port", id="port-too-big"),
        pytest.param("ftp://pacs/dicom", "scheme ftp:// is not supported", id="scheme"),
        pytest.param("A-VERY-LONG-AE-TITLE@pacs:104", "AE title before @", id="long-aet"),
        pytest.param("http:///dicom-web", "no host", id="http-no-host"),
    ],
)
def test_parse_target_refuses(text, why):
    with pytest.raises(ConfigError, match=rf"PACS target .*{why}.*DICOMweb base URL"):
        parse_target(text)


@pytest.mark.parametrize("which", ["ct", "seg"])
def test_stow_rs_stores_instance(orthanc, study, which):
    path = study[which]
    before = _digest(path)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    ack = send_file(path, orthanc.dicomweb_url)
    assert ack.startswith(f"STOW-RS to {orthanc.dicomweb_url}: stored {uid}; retrieve at http")
    assert uid in _stored_instances(orthanc, study["study"])
    assert _digest(path) == before


@pytest.mark.parametrize(
    "form", [pytest.param("dicom-url", id="dicom://AET@host:port"), pytest.param("bare", id="host:port+called_ae")]
)
def test_c_store_stores_seg(orthanc, study, form):
    path = study["seg"]
    before = _digest(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == SegmentationStorage
    if form == "bare":
        ack = send_file(path, f"127.0.0.1:{orthanc.dicom_port}", called_ae=orthanc.aet, calling_ae="TILERTEST")
    else:
        ack = send_file(path, orthanc.dicom_target)
    node = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    assert ack == f"C-STORE to {node}: stored {ds.SOPInstanceUID}, status 0x0000 (Success)"
    assert ds.SOPInstanceUID in _stored_instances(orthanc, study["study"])
    found = orthanc.find_instances(SOPInstanceUID=str(ds.SOPInstanceUID))
    assert len(found) == 1 and found[0]["MainDicomTags"]["SOPInstanceUID"] == ds.SOPInstanceUID
    assert _digest(path) == before


@pytest.mark.parametrize(
    ("target", "match"),
    [
        pytest.param(
            "dicom://ORTHANC@127.0.0.1:{port}", r"ORTHANC@127\.0\.0\.1:{port} failed: no connection ", id="dimse"
        ),
        pytest.param(
            "http://127.0.0.1:{port}/dicom-web",
            r"http://127\.0\.0\.1:{port}/dicom-web failed: no HTTP answer",
            id="http",
        ),
    ],
)
def test_send_to_closed_port_names_target(study, target, match):
    port = free_port()
    path = study["seg"]
    before = _digest(path)
    with pytest.raises(OutputError, match=rf"sending .*pred\.seg\.dcm to {match.format(port=port)}.*reachable"):
        send_file(path, target.format(port=port), timeout=5)
    assert _digest(path) == before


def test_stow_to_wrong_path_names_http_status(orthanc, study):
    path = study["seg"]
    before = _digest(path)
    url = orthanc.http_url.replace("http://", "http://user:s3cret@") + "/no-such-root"
    with pytest.raises(OutputError, match=r"/no-such-root failed: HTTP 404 Not Found.*DICOMweb root") as info:
        send_file(path, url)
    assert "s3cret" not in str(info.value) and "***@127.0.0.1" in str(info.value)
    assert "\n" not in str(info.value)
    assert _digest(path) == before


@pytest.fixture
def scp() -> Iterator[dict]:
    """A pynetdicom C-STORE SCP on loopback: AE ``STRICT``, CT storage only, answering ``state["status"]``."""
    from pynetdicom import AE, evt

    state: dict = {"status": 0x0000}
    ae = AE(ae_title="STRICT")
    ae.require_called_aet = True
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: state["status"])]
    )
    state["port"] = server.server_address[1]
    yield state
    server.shutdown()


def test_c_store_rejected_association_names_reason(scp, study):
    with pytest.raises(OutputError, match=r"WRONG@127\.0\.0\.1:\d+ failed: the association was rejected .*Called AE "
                       r"title not recognised.*check called_ae"):  # fmt: skip
        send_file(study["ct"], f"127.0.0.1:{scp['port']}", called_ae="WRONG", timeout=10)


def test_c_store_failure_status_names_status(scp, study):
    scp["status"] = 0xA700
    with pytest.raises(OutputError, match=r"STRICT@.* failed: the PACS answered status 0xA700 \(Failure: Refused: "
                       r"Out of Resources\) for instance [\d.]+; see the PACS's log"):  # fmt: skip
        send_file(study["ct"], f"STRICT@127.0.0.1:{scp['port']}", timeout=10)


def test_c_store_warning_status_is_stored(scp, study):
    scp["status"] = 0xB000
    ack = send_file(study["ct"], f"STRICT@127.0.0.1:{scp['port']}", timeout=10)
    assert ack.endswith("status 0xB000 (Warning: Coercion of Data Elements)")


def test_c_store_unsupported_sop_class(scp, study):
    with pytest.raises(OutputError, match=r"accepts no presentation context for SOP class Segmentation Storage"):
        send_file(study["seg"], f"STRICT@127.0.0.1:{scp['port']}", timeout=10)


def test_send_refuses_non_dicom_file(tmp_path):
    path = tmp_path / "not.dcm"
    path.write_bytes(b"plain text")
    with pytest.raises(OutputError, match=r"cannot send .*not\.dcm: it is not a readable DICOM file"):
        send_file(path, "127.0.0.1:104")
    assert path.read_bytes() == b"plain text"


def test_bad_calling_ae_is_a_config_error(study):
    with pytest.raises(ConfigError, match=r"calling_ae='THIS-TITLE-IS-TOO-LONG' is not a DICOM AE title"):
        send_file(study["ct"], "127.0.0.1:104", calling_ae="THIS-TITLE-IS-TOO-LONG")
