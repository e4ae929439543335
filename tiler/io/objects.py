"""Paths in object storage: :class:`ObjectPath`, the slice of :class:`pathlib.Path` the output store needs.

An output store, its job lock, its records and its exports may live in a bucket (``s3://``, ``gs://``, ``az://``)
as well as in a folder. :func:`as_path` turns a string into a :class:`pathlib.Path` or an :class:`ObjectPath`, and
the store layer uses the methods both share (``/``, ``name``, ``with_name``, ``parent``, ``read_bytes``,
``exists``, ``is_file``, ``is_dir``, ``iterdir``, ``glob``, ``unlink``, ``mkdir``), so its rules are written once:

* **No folders.** A key prefix "exists" while an object lies under it; ``mkdir`` does nothing.
* **Whole objects.** A ``PUT`` is atomic: an object is absent or whole, so :meth:`ObjectPath.write_bytes` is what
  ``os.replace`` of a temporary is on a disk. :meth:`ObjectPath.upload` sends a local file (multipart above
  5 MiB, completed last): an interrupted upload leaves nothing under the key.
* **Create-only and compare-and-swap.** :meth:`ObjectPath.create` is a conditional put (``If-None-Match: *``)
  and :meth:`ObjectPath.swap` one on the object's ETag (``If-Match``): the job lock's exclusivity.
* **Errors.** A missing object raises :class:`FileNotFoundError` and any other storage failure an
  :class:`OSError` naming the URL, so code written for files keeps its ``except`` clauses.

Credentials and endpoints come from each cloud's standard environment variables, read by obstore in the process
that touches the bucket (the driver, each Ray worker): ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an
S3-compatible server (plain ``http://`` allowed then), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``; ``GOOGLE_APPLICATION_CREDENTIALS``;
``AZURE_STORAGE_ACCOUNT_NAME`` with a key or SAS token. The zarr arrays are opened on the same obstore store
through :class:`zarr.storage.ObjectStore` (:func:`zarr_store`), so Ray actors write their chunks straight to the
bucket.

>>> p = ObjectPath("s3://bucket/out/scene.zarr")
>>> str(p / "labels" / "zarr.json"), p.name, str(p.parent), str(p.with_name(".scene.zarr.lock"))
('s3://bucket/out/scene.zarr/labels/zarr.json', 'scene.zarr', 's3://bucket/out', 's3://bucket/out/.scene.zarr.lock')
>>> type(as_path("out/scene.zarr")).__name__, type(as_path("gs://b/scene.zarr")).__name__
('PosixPath', 'ObjectPath')
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tiler.io.cloud import s3_endpoint
from tiler.paths import OBJECT_SCHEMES, is_object_url
from tiler.redact import redact

if TYPE_CHECKING:
    import zarr.abc.store

__all__ = [
    "AnyPath", "ObjectPath", "PathArg", "as_path", "lexists", "local_copy", "relpath", "resolved", "zarr_store",
]  # fmt: skip

_ENV_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP",
             "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_ACCOUNT_NAME",
             "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN")  # fmt: skip
_STORES: dict[tuple[Any, ...], Any] = {}  # (scheme, bucket, relevant environment) -> obstore store, per process


def _object_store(scheme: str, bucket: str, prefix: str = "") -> Any:
    """The obstore store of ``scheme://bucket/prefix`` for this process's environment now (cached per environment)."""
    from obstore.store import from_url

    key = (scheme, bucket, prefix, *(os.environ.get(k) for k in _ENV_KEYS))
    store = _STORES.get(key)
    if store is None:
        options: dict[str, Any] = {}
        found = s3_endpoint(os.environ) if scheme == "s3" else None  # the variables GDAL is given too
        endpoint = found[1] if found is not None else None
        if endpoint is not None:
            options["endpoint"] = endpoint
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                options["region"] = region
        client: Any = {"allow_http": True} if endpoint is not None and endpoint.startswith("http://") else None
        store = from_url(f"{scheme}://{bucket}/{prefix}".rstrip("/"), client_options=client, **options)
        _STORES[key] = store
    return store


def _os_error(url: str, exc: BaseException) -> OSError:
    """``exc`` from obstore as the OSError file code expects: FileNotFoundError for a missing object."""
    from obstore.exceptions import NotFoundError

    text = redact(" ".join(str(exc).split())[:400])
    if isinstance(exc, NotFoundError | FileNotFoundError):
        return FileNotFoundError(2, f"no such object ({text})", url)
    return OSError(f"{url}: {type(exc).__name__}: {text}")


class ObjectPath:
    """A key (or a key prefix, a "folder") in a bucket: ``s3://bucket/key``; immutable and hashable."""

    __slots__ = ("bucket", "key", "scheme")

    def __init__(self, url: str | ObjectPath) -> None:
        url = str(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in OBJECT_SCHEMES or not parts.netloc:
            raise ValueError(f"{url!r} is not an object storage URL ({', '.join(s + '://' for s in OBJECT_SCHEMES)})")
        self.scheme = scheme
        self.bucket = parts.netloc
        self.key = str(PurePosixPath("/" + parts.path.strip("/")))[1:]

    # -- pure path ---------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str) -> ObjectPath:
        return ObjectPath(f"{self}/{str(part).strip('/')}")

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath("/" + self.key)

    @property
    def name(self) -> str:
        """The last key segment (``scene.zarr``)."""
        return self._pure.name

    @property
    def stem(self) -> str:
        """The name without its last suffix."""
        return self._pure.stem

    @property
    def suffix(self) -> str:
        """The name's last suffix (``.zarr``)."""
        return self._pure.suffix

    @property
    def parent(self) -> ObjectPath:
        """The enclosing prefix (the bucket itself at the top)."""
        return ObjectPath(f"{self.scheme}://{self.bucket}{self._pure.parent}")

    def with_name(self, name: str) -> ObjectPath:
        """The sibling key ``name``."""
        return ObjectPath(f"{self.scheme}://{self.bucket}{self._pure.with_name(name)}")

    def with_suffix(self, suffix: str) -> ObjectPath:
        """This key with its last suffix replaced."""
        return ObjectPath(f"{self.scheme}://{self.bucket}{self._pure.with_suffix(suffix)}")

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        """The key below ``other`` (raises ValueError when it is not below)."""
        return self._pure.relative_to(other._pure)

    # -- storage -------------------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        """The obstore store of this path's bucket (:mod:`obstore.store`)."""
        return _object_store(self.scheme, self.bucket)

    def head(self) -> dict[str, Any] | None:
        """The object's metadata (``size``, ``e_tag``, ``last_modified``), or None when there is none."""
        import obstore

        try:
            return dict(obstore.head(self.store, self.key))
        except FileNotFoundError:
            return None
        except Exception as exc:
            error = _os_error(str(self), exc)
            if isinstance(error, FileNotFoundError):
                return None
            raise error from exc

    def read_bytes(self) -> bytes:
        """The object's bytes. Raises FileNotFoundError when absent, OSError on any other failure."""
        import obstore

        try:
            return bytes(obstore.get(self.store, self.key).bytes())
        except Exception as exc:
            raise _os_error(str(self), exc) from exc

    def read_text(self, encoding: str = "utf-8") -> str:
        """The object's bytes decoded."""
        return self.read_bytes().decode(encoding)

    def iter_bytes(self) -> Iterator[bytes]:
        """The object's bytes in chunks (for digests of objects larger than memory should hold)."""
        import obstore

        try:
            for chunk in obstore.get(self.store, self.key):
                yield bytes(chunk)
        except Exception as exc:
            raise _os_error(str(self), exc) from exc

    def download(self, local: Path) -> int:
        """Write the object's bytes to the local file ``local``, chunk by chunk; returns its size."""
        size = 0
        with open(local, "wb") as f:
            for chunk in self.iter_bytes():
                size += f.write(chunk)
        return size

    def _put(self, data: bytes | Path, mode: Any = None) -> dict[str, Any]:
        import obstore

        return dict(obstore.put(self.store, self.key, data, mode=mode))

    def write_bytes(self, data: bytes) -> int:
        """Put ``data`` under this key (whole or not at all), replacing any object there; returns its length."""
        try:
            self._put(bytes(data))
        except Exception as exc:
            raise _os_error(str(self), exc) from exc
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        """Put ``text`` encoded under this key."""
        return self.write_bytes(text.encode(encoding))

    def create(self, data: bytes) -> str | None:
        """Put ``data`` only if no object is there (``If-None-Match: *``): its ETag, or None when one exists."""
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            return str(self._put(bytes(data), mode="create").get("e_tag"))
        except (AlreadyExistsError, PreconditionError):
            return None
        except Exception as exc:
            raise _os_error(str(self), exc) from exc

    def swap(self, data: bytes, e_tag: str) -> str | None:
        """Replace the object only if its ETag is still ``e_tag`` (``If-Match``): the new ETag, or None."""
        from obstore.exceptions import NotFoundError, PreconditionError

        try:
            return str(self._put(bytes(data), mode={"e_tag": e_tag}).get("e_tag"))
        except (PreconditionError, NotFoundError):
            return None
        except Exception as exc:
            raise _os_error(str(self), exc) from exc

    def upload(self, local: str | os.PathLike[str]) -> None:
        """Send the local file under this key: multipart above 5 MiB, the object appearing only once complete."""
        try:
            self._put(Path(local))
        except Exception as exc:
            raise _os_error(str(self), exc) from exc

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the object (deleting an absent object is not an error on object stores)."""
        import obstore

        if not missing_ok and self.head() is None:
            raise FileNotFoundError(2, "no such object", str(self))
        try:
            obstore.delete(self.store, self.key)
        except Exception as exc:
            error = _os_error(str(self), exc)
            if not isinstance(error, FileNotFoundError):
                raise error from exc

    def _children(self) -> tuple[list[str], list[str]]:
        """The names of the "folders" and objects right below this prefix."""
        import obstore

        prefix = f"{self.key}/" if self.key else ""
        try:
            listing = obstore.list_with_delimiter(self.store, prefix or None)
        except Exception as exc:
            raise _os_error(str(self), exc) from exc
        folders = [p.rstrip("/").rsplit("/", 1)[-1] for p in listing["common_prefixes"]]
        files = [o["path"].rsplit("/", 1)[-1] for o in listing["objects"]]
        return folders, files

    def walk(self) -> list[tuple[str, str]]:
        """``(key relative to this prefix, ETag)`` of every object below it (``labels/c/0/0``), sorted."""
        import obstore

        prefix = f"{self.key}/" if self.key else ""
        try:
            listing = obstore.list(self.store, prefix or None)
            found = [(o["path"], str(o.get("e_tag"))) for batch in listing for o in batch]
        except Exception as exc:
            raise _os_error(str(self), exc) from exc
        return sorted((k[len(prefix) :], tag) for k, tag in found if k.startswith(prefix))

    def walk_keys(self) -> list[str]:
        """Every key below this prefix, relative to it, sorted."""
        return [key for key, _ in self.walk()]

    def iterdir(self) -> Iterator[ObjectPath]:
        """The keys and prefixes right below this prefix."""
        folders, files = self._children()
        for name in sorted({*folders, *files}):
            yield self / name

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Children whose name matches ``pattern`` (one level: ``*.json``)."""
        for child in self.iterdir():
            if fnmatch.fnmatchcase(child.name, pattern):
                yield child

    def is_file(self) -> bool:
        """Whether an object lies at this key."""
        return self.head() is not None

    def is_dir(self) -> bool:
        """Whether objects lie below this prefix."""
        folders, files = self._children()
        return bool(folders or files)

    def exists(self) -> bool:
        """An object at this key, or below it."""
        return self.is_file() or self.is_dir()

    def is_symlink(self) -> bool:
        """Object stores have no links."""
        return False

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: object stores have no folders."""

    def remove_tree(self) -> None:
        """Delete this key and every object below it."""
        import obstore

        keys = [f"{self.key}/{k}" if self.key else k for k in self.walk_keys()]
        if self.head() is not None:
            keys.append(self.key)
        try:
            for start in range(0, len(keys), 1000):
                obstore.delete(self.store, keys[start : start + 1000])
        except Exception as exc:
            raise _os_error(str(self), exc) from exc


AnyPath = Path | ObjectPath
"""Where an output lies: a local path or an object storage key."""
PathArg = str | os.PathLike[str] | ObjectPath
"""What functions taking an output's location accept (:func:`as_path` reads it)."""


def as_path(path: PathArg) -> AnyPath:
    """``path`` as an :class:`ObjectPath` for ``s3://``, ``gs://``, ``az://`` URLs, else as a :class:`Path`."""
    if isinstance(path, ObjectPath | Path):
        return path
    text = os.fspath(path)
    return ObjectPath(text) if is_object_url(text) else Path(text)


def lexists(path: PathArg) -> bool:
    """Whether anything lies at ``path``: a file, folder or link (broken ones too), or an object or prefix."""
    where = as_path(path)
    return where.exists() if isinstance(where, ObjectPath) else os.path.lexists(where)


def resolved(path: PathArg) -> str:
    """``path`` as one spelling per location: its URL for an object, the real path (links resolved) for a file."""
    where = as_path(path)
    return str(where) if isinstance(where, ObjectPath) else os.path.realpath(where)


def relpath(path: PathArg, start: PathArg) -> str:
    """``path`` relative to the folder or prefix ``start``, ``/``-separated; an object elsewhere keeps its URL.

    >>> relpath("s3://b/out/x.tif", "s3://b/out"), relpath("/data/out/x.tif", "/data"), relpath("s3://b/x", "/data")
    ('x.tif', 'out/x.tif', 's3://b/x')
    """
    where, base = as_path(path), as_path(start)
    if isinstance(where, ObjectPath) or isinstance(base, ObjectPath):
        same = isinstance(where, ObjectPath) and isinstance(base, ObjectPath) and where.bucket == base.bucket
        return posixpath.relpath("/" + where.key, "/" + base.key) if same else str(where)  # type: ignore[union-attr]
    return Path(os.path.relpath(os.path.abspath(where), os.path.abspath(base))).as_posix()


@contextlib.contextmanager
def local_copy(path: PathArg) -> Iterator[Path]:
    """A local file with ``path``'s bytes for the block: the file itself, or a temporary download of the object."""
    where = as_path(path)
    if not isinstance(where, ObjectPath):
        yield where
        return
    with tempfile.TemporaryDirectory(prefix=".tiler-download-") as folder:
        local = Path(folder) / where.name
        where.download(local)
        yield local


def zarr_store(path: AnyPath, *, read_only: bool = False) -> zarr.abc.store.Store | str:
    """What ``zarr.open_group`` opens for ``path``: the folder's name, or zarr's store for obstore on the bucket."""
    if not isinstance(path, ObjectPath):
        return str(path)
    from zarr.storage import ObjectStore

    return ObjectStore(_object_store(path.scheme, path.bucket, path.key), read_only=read_only)
