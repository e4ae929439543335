"""A real Orthanc PACS on loopback for the tests: DICOM C-STORE and DICOMweb (STOW-RS, QIDO-RS) against a server.

:func:`start_orthanc` writes a temporary configuration (free loopback ports, storage and index in a temporary
folder, no authentication, every calling AE allowed to store, the DICOMweb plugin at ``/dicom-web/``), starts
``/usr/sbin/Orthanc`` (Debian packages ``orthanc`` and ``orthanc-dicomweb``, installed by ``make test``) and stops
it on exit. The session fixture :func:`orthanc` shares one server between the test modules: ``tests/conftest.py``
registers it once (a session fixture imported into two modules is two fixtures, two servers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
START_TIMEOUT = 30.0
"""Seconds Orthanc has to answer ``GET /system`` (it starts in about a second)."""


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc on loopback.

    Attributes:
        http_url: Its REST API, ``http://127.0.0.1:<port>``.
        dicomweb_url: Its DICOMweb root, ``http://127.0.0.1:<port>/dicom-web``.
        dicom_port: Its DICOM (DIMSE) port on 127.0.0.1.
        aet: Its application entity title.
        folder: The folder holding its configuration, storage and log.
    """

    http_url: str
    dicomweb_url: str
    dicom_port: int
    aet: str = "ORTHANC"
    folder: Path = Path(".")

    @property
    def dicom_target(self) -> str:
        """The C-STORE target of :func:`tiler.io.pacs.send_file`: ``dicom://ORTHANC@127.0.0.1:<port>``."""
        return f"dicom://{self.aet}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str) -> Any:
        """``GET`` a REST path (``/system``, ``/instances/<id>``) and return the decoded JSON."""
        with urllib.request.urlopen(self.http_url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: Any) -> Any:
        """``POST`` JSON to a REST path (``/tools/find``) and return the decoded JSON answer."""
        request = urllib.request.Request(
            self.http_url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def find_instances(self, **query: str) -> list[dict[str, Any]]:
        """The stored instances matching a ``/tools/find`` query on DICOM keywords (``SOPInstanceUID=...``)."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": query, "Expand": True})
        return list(found)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_config(folder: Path, *, http_port: int, dicom_port: int, aet: str = "ORTHANC") -> dict[str, Any]:
    """The configuration of a throwaway test server (Orthanc 1.10 option names)."""
    return {
        "Name": "tiler-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "SyncStorageArea": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "MetricsEnabled": False,
        "HttpThreadsCount": 8,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {},
        "DicomThreadsCount": 2,
        "SaveJobs": False,
        "OverwriteInstances": True,
        "DeidentifyLogs": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1"},
    }


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate ``process`` (SIGTERM: Orthanc closes its index cleanly), kill it if it does not exit."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _wait_ready(server: Orthanc, process: subprocess.Popen[bytes], log: Path, timeout: float) -> bool:
    """Wait until ``GET /system`` answers; False when Orthanc exited (a port taken meanwhile), raise on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError, ValueError):
            if server.get("/system").get("DicomAet") == server.aet:
                return True
        time.sleep(0.1)
    _stop(process)
    raise RuntimeError(f"Orthanc did not answer GET /system within {timeout:.0f} s; its log ends: {_log_tail(log)}")


@contextlib.contextmanager
def start_orthanc(tmp_dir: str | os.PathLike[str], *, timeout: float = START_TIMEOUT) -> Iterator[Orthanc]:
    """Run Orthanc on loopback with its configuration, storage and log in ``tmp_dir``; stop it on exit.

    Ports are picked free just before the start; when another process takes one meanwhile and Orthanc exits,
    it is started again on new ports (three tries).

    Raises:
        RuntimeError: Orthanc is not installed, exits three times, or does not answer within ``timeout``
            (the message ends with its log).
    """
    if not Path(ORTHANC).is_file() or not Path(DICOMWEB_PLUGIN).is_file():
        raise RuntimeError(
            f"Orthanc is not installed ({ORTHANC} with {DICOMWEB_PLUGIN}): run `make test`, which installs the "
            f"Debian packages orthanc and orthanc-dicomweb."
        )
    folder = Path(tmp_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "orthanc.log"
    for _ in range(3):
        http_port, dicom_port = free_port(), free_port()
        config = folder / "orthanc.json"
        config.write_text(json.dumps(orthanc_config(folder, http_port=http_port, dicom_port=dicom_port), indent=2))
        server = Orthanc(
            http_url=f"http://127.0.0.1:{http_port}",
            dicomweb_url=f"http://127.0.0.1:{http_port}/dicom-web",
            dicom_port=dicom_port,
            folder=folder,
        )
        with open(log, "ab") as out:
            process = subprocess.Popen([ORTHANC, str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
        try:
            if not _wait_ready(server, process, log, timeout):
                continue
            yield server
            return
        finally:
            _stop(process)
    raise RuntimeError(f"Orthanc exited three times before answering; its log ends: {_log_tail(log)}")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the test session (fails, never skips, where Orthanc is not installed)."""
    missing = [p for p in (ORTHANC, DICOMWEB_PLUGIN) if not Path(p).is_file()]
    if missing or shutil.which(ORTHANC) is None:
        pytest.fail(
            f"{', '.join(missing) or ORTHANC + ' (not executable)'} is missing: run `make test`, which installs the "
            f"Debian packages orthanc and orthanc-dicomweb (the PACS tests need a real server)."
        )
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
