"""Local or remote: the one rule telling a file on this machine from a GDAL virtual path or a URL.

A path is *remote* when it is a GDAL virtual file system path (``/vsicurl/...``, ``/vsis3/...``) or a URL
(``s3://...``, ``https://...``, any ``scheme://`` at the start). Remote paths are never resolved against a
folder, never checked for existence on this machine and never hashed as files.
"""

from __future__ import annotations

import os
import re

__all__ = ["OBJECT_SCHEMES", "is_local", "is_object_url", "is_remote", "local_realpath"]

OBJECT_SCHEMES = ("s3", "gs", "az")
"""The URL schemes of the object stores an output may be written to (``http(s)://`` is read-only)."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """Whether ``path`` is a GDAL virtual path or a URL.

    >>> [is_remote(p) for p in ("/vsis3/bucket/a.tif", "s3://bucket/a.tif", "data/a.tif", "/data/x://y.tif")]
    [True, True, False, False]
    """
    return path.startswith("/vsi") or _URL.match(path) is not None


def is_object_url(path: str) -> bool:
    """Whether ``path`` names an object store location tiler can write (``s3://``, ``gs://``, ``az://``).

    >>> [is_object_url(p) for p in ("s3://b/x.zarr", "https://h/x.zarr", "/data/x.zarr", "/vsis3/b/x.zarr")]
    [True, False, False, False]
    """
    match = _URL.match(path)
    return match is not None and match.group(0)[:-3].lower() in OBJECT_SCHEMES


def is_local(path: str) -> bool:
    """Whether ``path`` names a file on this machine (the opposite of :func:`is_remote`)."""
    return not is_remote(path)


def local_realpath(path: str | None) -> str | None:
    """``path`` with every symlink resolved when it is local; None for None or a remote path."""
    if path is None or is_remote(path):
        return None
    return os.path.realpath(path)
