"""Secret redaction: credentials are replaced by ``***`` in every text or mapping tiler writes or prints.

Two kinds of secret are recognised:

* **credential-bearing keys** (GDAL/cloud configuration options and headers): a key whose name contains
  ``SECRET``, ``TOKEN``, ``PASSWORD``/``PASSWD``, ``USERPWD``, ``CREDENTIAL``, ``SIGNATURE``, ``COOKIE``,
  ``AUTH`` (``GDAL_HTTP_AUTH``, ``Authorization``), ``HEADERS`` (``GDAL_HTTP_HEADERS`` may carry an
  ``Authorization`` header) or a ``KEY`` word (``AWS_ACCESS_KEY_ID``, ``AZURE_STORAGE_ACCESS_KEY``,
  ``api_key``): in a mapping its value becomes ``***``; in text, ``KEY=value``, ``KEY: value`` and
  ``'KEY': 'value'`` become ``KEY=***`` (quotes kept);
* **URLs**: the user information (``https://user:pass@host``) and every query value (signed URLs carry
  ``X-Amz-Signature=...``, ``sig=...``, ``token=...``) become ``***``; the parameter names are kept.

Redaction is for what is shown and stored; the reader keeps the real path and options to open the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, overload

__all__ = ["MASK", "is_secret_key", "redact", "redacted_config_dict"]

MASK = "***"

_SECRET_KEY = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|USERPWD|CREDENTIAL|SIGNATURE|COOKIE|AUTH|HEADERS|(?:^|[_-])KEY(?:$|[_-])",
    re.IGNORECASE,
)
_KEY_CHARS = r"[A-Za-z0-9_.-]"
# KEY=value, KEY: value, 'KEY': 'value', "KEY"="value" for a credential-bearing key (not inside a path)
_KEY_VALUE = re.compile(
    rf"(?<![\w/.:-])(?P<key>(?P<q>['\"]?)(?P<name>{_KEY_CHARS}+)(?P=q))(?P<sep>\s*[:=]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|(?:(?:bearer|basic|digest|token|negotiate|aws4-hmac-sha256)\s+)?[^\s,;&'\"}\])]*[^\s,;&'\"}\]).:])",
    re.IGNORECASE,
)
# a headers option holds whole header lines: everything to the end of the line (or the closing quote)
_HEADERS_VALUE = re.compile(r"(?P<head>\b\w*HEADERS['\"]?\s*[:=]\s*['\"]?)[^\n'\"]+", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@?#]+@")
_QUERY_VALUE = re.compile(r"(?P<name>[?&;][^=&;#]*=)[^&;#]*")


def is_secret_key(name: str) -> bool:
    """Whether a configuration key or header name carries a credential.

    >>> is_secret_key("AWS_SECRET_ACCESS_KEY"), is_secret_key("GDAL_HTTP_USERPWD"), is_secret_key("GDAL_CACHEMAX")
    (True, True, False)
    """
    return bool(_SECRET_KEY.search(name))


def _redact_url(match: re.Match[str]) -> str:
    url = _USERINFO.sub(rf"\g<scheme>{MASK}@", match.group(0))
    head, sep, rest = url.partition("?")
    if not sep:
        return url
    return head + _QUERY_VALUE.sub(rf"\g<name>{MASK}", sep + rest)


def _redact_key_value(match: re.Match[str]) -> str:
    if not is_secret_key(match.group("name")):
        return match.group(0)
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{match.group('sep')}{quote}{MASK}{quote}"


def _redact_text(text: str) -> str:
    text = _URL.sub(_redact_url, text)
    text = _HEADERS_VALUE.sub(rf"\g<head>{MASK}", text)
    return _KEY_VALUE.sub(_redact_key_value, text)


@overload
def redact(value: str) -> str: ...
@overload
def redact(value: Mapping[str, Any]) -> dict[str, Any]: ...
@overload
def redact(value: Any) -> Any: ...
def redact(value: Any) -> Any:
    """Return ``value`` with every secret replaced by ``***`` (see the module docstring).

    Args:
        value: A string, or a mapping / list (redacted recursively into new dicts and lists); anything
            else is returned unchanged.

    >>> redact("/vsicurl/https://u:pw@host/a.tif?X-Amz-Signature=abc&X-Amz-Date=1")
    '/vsicurl/https://***@host/a.tif?X-Amz-Signature=***&X-Amz-Date=***'
    >>> redact({"GDAL_HTTP_USERPWD": "u:pw", "GDAL_CACHEMAX": "256"})
    {'GDAL_HTTP_USERPWD': '***', 'GDAL_CACHEMAX': '256'}
    """
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (MASK if isinstance(k, str) and is_secret_key(k) and v not in (None, "") else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redacted_config_dict(cfg: Any) -> dict[str, Any]:
    """A job configuration (pydantic model) as JSON-ready plain types, secrets redacted, for stores and reports."""
    dumped: dict[str, Any] = redact(cfg.model_dump(mode="json"))
    return dumped
