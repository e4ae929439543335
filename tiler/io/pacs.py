"""Sending a DICOM file to a PACS: DICOMweb STOW-RS or DICOM C-STORE, one file per call, acknowledged or refused.

A target is written one of two ways:

* a DICOMweb base URL, ``http(s)://[user:password@]host[:port]/<root>`` (Orthanc: ``http://pacs:8042/dicom-web``):
  the file is stored with STOW-RS (``POST <root>/studies``); credentials in the URL are sent as HTTP basic
  authentication and never shown (:func:`tiler.redact.redact`);
* a DICOM node, ``host:port``, ``AET@host:port`` or ``dicom://AET@host:port`` (IPv6 hosts in brackets,
  ``[::1]:4242``): the file is stored with a C-STORE over a DICOM association to that node, called as ``AET``
  when the target names one, else as the ``called_ae`` argument (default ``ANY-SCP``).

:func:`send_file` returns the server's acknowledgement as one line of text (to be recorded with the send) and
raises :class:`~tiler.errors.OutputError` for every failure, naming the file, the target, what the server
answered and the fix. The file is only read, never changed or removed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tiler.errors import ConfigError, OutputError
from tiler.io.base import one_line
from tiler.redact import redact

DEFAULT_CALLED_AE = "ANY-SCP"
"""The AE title called when neither the target nor the caller names one (most PACS accept any called title)."""

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_BODY_EXCERPT = 300
"""Characters of an HTTP error body quoted in the error."""

_TARGET_FORMS = (
    "a DICOMweb base URL (http://pacs:8042/dicom-web) or a DICOM node (host:port, AET@host:port or "
    "dicom://AET@host:port)"
)


@dataclass(frozen=True)
class DicomWebTarget:
    """A DICOMweb service: its base URL without credentials, and the credentials apart.

    Attributes:
        url: The base URL (``http://pacs:8042/dicom-web``), user information removed.
        auth: ``(user, password)`` from the URL's user information, or None.
    """

    url: str
    auth: tuple[str, str] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        return redact(f"{scheme}{sep}***@{rest}" if self.auth is not None else self.url)


@dataclass(frozen=True)
class DicomNodeTarget:
    """A DICOM node (C-STORE SCP).

    Attributes:
        host: Host name or IP address.
        port: TCP port.
        called_ae: The AE title the target names (``AET@host:port``), or None.
    """

    host: str
    port: int
    called_ae: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.called_ae or ''}{'@' if self.called_ae else ''}{host}:{self.port}"


Target = DicomWebTarget | DicomNodeTarget


def parse_target(target: str) -> Target:
    """The PACS ``target`` names: a DICOMweb service or a DICOM node (forms: see the module docstring).

    >>> parse_target("http://pacs:8042/dicom-web")
    DicomWebTarget(url='http://pacs:8042/dicom-web')
    >>> parse_target("ORTHANC@pacs:4242")
    DicomNodeTarget(host='pacs', port=4242, called_ae='ORTHANC')
    >>> parse_target("[::1]:104")
    DicomNodeTarget(host='::1', port=104, called_ae=None)

    Raises:
        ConfigError: ``target`` is none of these forms (no host, no port, a port out of range, an AE title
            longer than 16 characters, another URL scheme).
    """
    text = str(target).strip()
    head, sep, _ = text.partition("://")
    scheme = head.lower() if sep else ""
    if scheme in ("http", "https"):
        return _parse_dicomweb(text)
    if scheme not in ("", "dicom"):
        raise _target_error(text, f"the scheme {scheme}:// is not supported")
    parts = urlsplit(text if scheme else f"dicom://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or port == 0 or parts.path not in ("", "/") or parts.query:
        raise _target_error(text, "it needs a host and a port between 1 and 65535")
    aet = parts.username or None
    if aet is not None and (parts.password is not None or not _valid_ae(aet)):
        raise _target_error(text, "the AE title before @ must be 1 to 16 characters, no backslash")
    return DicomNodeTarget(host=parts.hostname, port=port, called_ae=aet)


def _parse_dicomweb(text: str) -> DicomWebTarget:
    parts = urlsplit(text)
    try:
        _ = parts.port
    except ValueError:
        raise _target_error(text, "its port is not a number between 1 and 65535") from None
    if not parts.hostname:
        raise _target_error(text, "it has no host")
    auth = (parts.username or "", parts.password or "") if parts.username is not None else None
    netloc = parts.netloc.rsplit("@", 1)[-1]
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
    return DicomWebTarget(url=url, auth=auth)


def _target_error(text: str, why: str) -> ConfigError:
    return ConfigError(one_line(f"PACS target {text!r}: {why}; write it as {_TARGET_FORMS}."))


def _valid_ae(title: str) -> bool:
    """Whether ``title`` is a DICOM AE title: 1 to 16 printable characters, no backslash, not only spaces."""
    return 0 < len(title) <= 16 and title.strip() != "" and title.isprintable() and "\\" not in title


def send_file(
    path: str | os.PathLike[str],
    target: str,
    *,
    calling_ae: str = "TILER",
    called_ae: str | None = None,
    timeout: float = 60,
) -> str:
    """Send the DICOM file ``path`` to the PACS ``target`` and return its acknowledgement.

    Args:
        path: A DICOM Part 10 file (read, never changed).
        target: A DICOMweb base URL (STOW-RS) or a DICOM node ``host:port`` / ``AET@host:port`` (C-STORE).
        calling_ae: This side's AE title in a C-STORE (the PACS may only accept known callers).
        called_ae: The PACS's AE title in a C-STORE when the target names none (default ``ANY-SCP``).
        timeout: Seconds allowed for the connection and for each answer.

    Returns:
        One line to record: what was stored where and the server's status (the retrieve URL of a STOW-RS).

    Raises:
        ConfigError: ``target`` or an AE title cannot be used as written.
        OutputError: ``path`` is not a readable DICOM file, or the send failed (connection refused, association
            rejected, a failure status, an HTTP error); the message names the file, the target, the server's
            answer and the fix.
    """
    path = Path(path)
    parsed = parse_target(target)
    dataset = _read(path)
    if isinstance(parsed, DicomWebTarget):
        return _stow(path, dataset, parsed, timeout=timeout)
    return _c_store(path, dataset, parsed, calling_ae=calling_ae, called_ae=called_ae, timeout=timeout)


def _read(path: Path) -> pydicom.Dataset:
    """The dataset of ``path``, refused unless it names its SOP class, instance and transfer syntax."""
    try:
        dataset = pydicom.dcmread(path)
    except (OSError, InvalidDicomError, ValueError) as exc:
        raise OutputError(one_line(f"cannot send {path}: it is not a readable DICOM file ({exc}).")) from exc
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in dataset]
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}):
        missing.append("file meta TransferSyntaxUID")
    if missing:
        raise OutputError(f"cannot send {path}: it is not a DICOM instance (no {', '.join(missing)}).")
    return dataset


def _failure(path: Path, target: Target, answer: str, fix: str) -> OutputError:
    return OutputError(one_line(f"sending {path} to {target} failed: {answer}; {fix}."))


# -- DICOMweb STOW-RS -----------------------------------------------------------------------------------------
def _stow(path: Path, dataset: pydicom.Dataset, target: DicomWebTarget, *, timeout: float) -> str:
    """Store ``dataset`` with STOW-RS; the acknowledgement names the instance and its retrieve URL."""
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    session.auth = target.auth
    try:
        client = DICOMwebClient(target.url, session=session, timeout=timeout)
        client.set_http_retry_params(retry=False)  # its retries also repeat refused connections and timeouts
        answer = client.store_instances([dataset])
    except requests.HTTPError as exc:
        raise _http_failure(path, target, exc.response) from exc
    except requests.RequestException as exc:
        raise _failure(
            path, target, f"no HTTP answer ({type(exc).__name__}: {exc})",
            "check the URL's host and port and that the DICOMweb server is running and reachable from here",
        ) from exc  # fmt: skip
    except ValueError as exc:  # a malformed URL, or an answer that is not DICOM JSON or XML
        raise _failure(
            path, target, f"the DICOMweb client refused the exchange ({exc})",
            "check that the URL is the server's DICOMweb root (e.g. http://pacs:8042/dicom-web)",
        ) from exc  # fmt: skip
    finally:
        session.close()
    return _stow_ack(path, dataset, target, answer)


def _http_failure(path: Path, target: DicomWebTarget, response: requests.Response | None) -> OutputError:
    if response is None:
        return _failure(path, target, "an HTTP error without a response", "see the server's log")
    body = " ".join(response.text.split())[:_BODY_EXCERPT]
    answer = f"HTTP {response.status_code} {response.reason or ''}".strip() + (f": {body}" if body else "")
    code = response.status_code
    if code in (401, 403):
        fix = "give the DICOMweb user and password in the URL (https://user:password@host/dicom-web)"
    elif code in (404, 405):
        fix = "check the URL: it must be the server's DICOMweb root (Orthanc: http://host:8042/dicom-web)"
    elif code == 413:
        fix = "the server refuses a file this large: raise its upload limit"
    elif code == 409:
        fix = "the server refused the instance (a conflicting instance or an unsupported SOP class): see its log"
    elif code in (408, 429, 502, 503, 504):
        fix = "the server is busy or restarting: send again later (rerun the job: the SEG is sent again)"
    else:
        fix = "see the server's log; send again once it accepts uploads"
    return _failure(path, target, answer, fix)


def _stow_ack(path: Path, dataset: pydicom.Dataset, target: DicomWebTarget, answer: pydicom.Dataset) -> str:
    """The acknowledgement of a STOW-RS answer; an answer that lists the instance as failed (or not at all) raises."""
    uid = str(dataset.SOPInstanceUID)
    refused = getattr(answer, "FailedSOPSequence", [])
    failed = [item for item in refused if item.get("ReferencedSOPInstanceUID") == uid]
    if failed:
        reason = failed[0].get("FailureReason")
        raise _failure(
            path, target, f"the server refused instance {uid} (failure reason {_hex(reason)})",
            "see the server's log: the SOP class may be unsupported or the instance may conflict with a stored one",
        )  # fmt: skip
    listed = getattr(answer, "ReferencedSOPSequence", [])
    stored = [item for item in listed if item.get("ReferencedSOPInstanceUID") == uid]
    if not stored:
        raise _failure(
            path, target, f"the server's answer does not list instance {uid} as stored",
            "check that the URL is the server's DICOMweb root and see the server's log",
        )  # fmt: skip
    item = stored[0]
    warning = f", warning {_hex(item.get('WarningReason'))}" if item.get("WarningReason") is not None else ""
    where = redact(str(item.get("RetrieveURL") or getattr(answer, "RetrieveURL", "") or target))
    return one_line(f"STOW-RS to {target}: stored {uid}{warning}; retrieve at {where}")


def _hex(value: Any) -> str:
    return f"0x{int(value):04X}" if isinstance(value, int) else str(value)


# -- DICOM C-STORE ------------------------------------------------------------------------------------------------
def _c_store(
    path: Path,
    dataset: pydicom.Dataset,
    target: DicomNodeTarget,
    *,
    calling_ae: str,
    called_ae: str | None,
    timeout: float,
) -> str:
    """Store ``dataset`` with a C-STORE over one association; the acknowledgement gives the DIMSE status."""
    from pynetdicom import AE, evt

    aet = target.called_ae or called_ae or DEFAULT_CALLED_AE
    for role, title in (("calling_ae", calling_ae), ("called_ae", aet)):
        if not _valid_ae(title):
            raise ConfigError(f"{role}={title!r} is not a DICOM AE title: use 1 to 16 characters, no backslash.")
    node = DicomNodeTarget(host=target.host, port=target.port, called_ae=aet)
    sop_class = UID(str(dataset.SOPClassUID))
    syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
    syntaxes = [syntax, *(s for s in _UNCOMPRESSED if s != syntax)] if syntax in _UNCOMPRESSED else [syntax]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(sop_class, syntaxes)
    answers: list[Any] = []
    assoc = ae.associate(
        target.host, target.port, ae_title=aet, evt_handlers=[(evt.EVT_ACSE_RECV, lambda event: answers.append(event))]
    )
    try:
        if not assoc.is_established:
            raise _association_failure(path, node, assoc, answers, sop_class=sop_class, syntax=syntax, timeout=timeout)
        try:
            status = assoc.send_c_store(dataset)
        except (ValueError, RuntimeError, AttributeError) as exc:  # no usable context, a dataset it cannot encode
            raise _failure(
                path, node, f"the C-STORE could not be sent ({exc})",
                "check that the file is a valid DICOM instance in a transfer syntax the PACS accepts",
            ) from exc  # fmt: skip
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return _c_store_ack(path, node, dataset, status)


def _association_failure(
    path: Path,
    node: DicomNodeTarget,
    assoc: Any,
    answers: list[Any],
    *,
    sop_class: UID,
    syntax: UID,
    timeout: float,
) -> OutputError:
    """Why no association was established: rejected, no accepted context, no connection, or no answer."""
    if assoc.is_rejected:
        primitive = answers[-1].primitive if answers else None
        reason = "no reason given"
        if primitive is not None:
            reason = f"{primitive.result_str} by the {primitive.source_str}: {primitive.reason_str}"
        return _failure(
            path, node, f"the association was rejected ({reason})",
            f"check called_ae (the PACS's AE title, here {node.called_ae!r}) and that the PACS accepts the calling "
            f"AE title {assoc.requestor.ae_title!r} from this host",
        )  # fmt: skip
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        return _failure(
            path, node, f"the PACS accepts no presentation context for SOP class {sop_class.name} in {syntax.name}",
            "enable that SOP class (or transfer syntax) on the PACS",
        )  # fmt: skip
    try:
        with socket.create_connection((node.host, node.port), timeout=min(timeout, 10.0)):
            pass
    except OSError as exc:
        return _failure(
            path, node, f"no connection ({exc.strerror or exc})",
            "check the host and port and that the PACS is running and reachable from this machine",
        )  # fmt: skip
    return _failure(
        path, node, f"the server took the connection but gave no DICOM association within {timeout:g} s",
        "check that the port is the PACS's DICOM port (not its HTTP port) and raise timeout_s if it is slow",
    )  # fmt: skip


def _c_store_ack(path: Path, node: DicomNodeTarget, dataset: pydicom.Dataset, status: pydicom.Dataset) -> str:
    """The acknowledgement of a C-STORE status: success or warning; a failure (or no answer) raises."""
    from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS, code_to_category

    uid = str(dataset.SOPInstanceUID)
    if "Status" not in status:
        raise _failure(
            path, node, "no C-STORE answer (the association was aborted or timed out)",
            "see the PACS's log, and raise timeout_s for a slow PACS",
        )  # fmt: skip
    code = int(status.Status)
    category = code_to_category(code)
    meaning = {**GENERAL_STATUS, **STORAGE_SERVICE_CLASS_STATUS}.get(code, (category, ""))[1]
    comment = f" - {status.ErrorComment}" if status.get("ErrorComment") else ""
    shown = f"status 0x{code:04X} ({category}{': ' + meaning if meaning else ''}{comment})"
    if category not in ("Success", "Warning"):
        raise _failure(
            path, node, f"the PACS answered {shown} for instance {uid}",
            "see the PACS's log (out of resources: free its storage; refused or not understood: it may not accept "
            "this SOP class)",
        )  # fmt: skip
    return one_line(f"C-STORE to {node}: stored {uid}, {shown}")
