"""Model weights in object storage: ``model.weights: s3://bucket/models/landcover.pt`` read through a local cache.

Every process that reads the model (the driver planning, each Ray actor loading it, on whatever node) calls
:func:`local_weights` and gets a local path: the weights themselves when they are local, else a copy of the object
(or of every object under a prefix: an nnU-Net results folder, a MONAI bundle) in the cache folder
``$TILER_CACHE_DIR`` (default ``$XDG_CACHE_HOME/tiler``, ``~/.cache/tiler``) under ``models/<key>/<name>``. The
key is a digest of the URL and the ETags of its objects, so a model replaced in the bucket is fetched again while
an unchanged one is read from disk; a copy appears whole (downloaded under a temporary name, then renamed), so a
process killed mid-download leaves no half model to load. The identity of a job
(:func:`tiler.config.identity.weights_identity`) digests the copy, as it would the local file. Credentials come
from the environment of the reading process, as for outputs (:mod:`tiler.io.objects`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tiler.errors import ReadError
from tiler.io.atomic import temp_path
from tiler.io.objects import ObjectPath
from tiler.paths import is_object_url

__all__ = ["cache_dir", "local_weights"]

_FETCHED: dict[tuple[str, str], str] = {}  # (url, version) -> local copy, per process


def cache_dir() -> Path:
    """The cache folder: ``$TILER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tiler``, else ``~/.cache/tiler``."""
    if os.environ.get("TILER_CACHE_DIR"):
        return Path(os.environ["TILER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiler"


def _objects(url: str) -> tuple[ObjectPath, list[tuple[str, str]]]:
    """The object (or prefix) at ``url`` and ``(key relative to it, ETag)`` of each object it holds."""
    where = ObjectPath(url)
    meta = where.head()
    if meta is not None:
        return where, [("", str(meta.get("e_tag")))]
    return where, where.walk()


def local_weights(weights: str) -> str:
    """A local path holding ``weights``: itself, or the cached copy of the object or prefix it names in a bucket.

    Raises:
        ReadError: nothing is stored at the URL, or the bucket cannot be read (naming the URL and the fix).
    """
    if not is_object_url(weights):
        return weights
    try:
        where, listing = _objects(weights)
    except OSError as exc:
        raise ReadError(
            f"model.weights: {weights} cannot be read ({' '.join(str(exc).split())[:300]}); fix: check the URL and "
            "the credentials and endpoint (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...) of every process that loads the "
            "model (the driver and every Ray worker)"
        ) from None
    if not listing:
        raise ReadError(
            f"model.weights: {weights} holds no object (no such key, nor any under it as a folder); fix: check the "
            "bucket and key, e.g. with `aws s3 ls`"
        )
    version = hashlib.sha256(repr((str(where), sorted(listing))).encode()).hexdigest()[:20]
    known = _FETCHED.get((str(where), version))
    if known is not None and os.path.exists(known):
        return known
    target = cache_dir() / "models" / version / where.name
    if not target.exists():
        _download(where, listing, target)
    _FETCHED[(str(where), version)] = str(target)
    return str(target)


def _download(where: ObjectPath, listing: list[tuple[str, str]], target: Path) -> None:
    """Copy the object (``listing == [("", tag)]``) or every object under the prefix to ``target``, whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        if [rel for rel, _ in listing] == [""]:
            where.download(tmp)
        else:
            for rel, _ in listing:
                file = tmp / rel
                file.parent.mkdir(parents=True, exist_ok=True)
                (where / rel).download(file)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():  # another process put the same version in place first: keep theirs
                raise
    except OSError as exc:
        raise ReadError(
            f"model.weights: {where} cannot be copied to the cache {target.parent} ({exc}); fix: check the "
            "credentials, and set TILER_CACHE_DIR to a writable folder with room"
        ) from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
