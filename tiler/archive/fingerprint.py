"""Input fingerprints: a cheap identity of a file that changes whenever it is rewritten or touched."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from tiler.paths import is_remote

EDGE_BYTES = 1 << 20


def fingerprint(path: str, *, edge_bytes: int = EDGE_BYTES) -> str:
    """Return a cheap identity of an input: sha256 of size, mtime and ctime (ns), first and last ``edge_bytes``.

    The ctime is what ``cp -p``, ``rsync -t`` and ``touch -r`` cannot set back: a file rewritten in place with its
    size and mtime restored is a new input. (Moving or chmod-ing a file changes its ctime too: it is run once more.)

    A directory (e.g. a zarr input) hashes the relative names, sizes and mtimes of its files instead, and a DICOM
    series folder its instances' SOPInstanceUIDs (:func:`tiler.io.dicom.folder_fingerprint`: copies and renamed
    files keep it). A remote path (URL, GDAL virtual path) is identified by the path alone.

    Raises:
        OSError: The path does not exist or cannot be read.

    """
    digest = hashlib.sha256(b"tiler-fingerprint-v2\0")
    if is_remote(path):
        digest.update(b"remote\0" + path.encode())
        return digest.hexdigest()
    if os.path.isdir(path):
        from tiler.io.dicom import folder_fingerprint, is_dicom_folder

        if is_dicom_folder(path):
            digest.update(b"dicom\0" + folder_fingerprint(path).encode())
            return digest.hexdigest()
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                name = os.path.relpath(full, path)
                digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0".encode())
        return digest.hexdigest()
    st = os.stat(path)
    digest.update(f"file\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(edge_bytes))
        if st.st_size > edge_bytes:
            fh.seek(max(edge_bytes, st.st_size - edge_bytes))
            digest.update(fh.read(edge_bytes))
    return digest.hexdigest()


ASSET_VERSION_FIELDS = ("file:checksum", "file:size", "checksum:multihash", "etag", "updated")
"""Asset fields that change when an asset file is replaced (the file extension's checksum and size, an etag)."""


def item_fingerprint(path: str, assets: Sequence[str] | None) -> str:
    """The identity of a STAC item input (``<file.json>#<item id>``): its id and the assets it stacks, in order.

    Each asset adds its key, its absolute href, the fields of :data:`ASSET_VERSION_FIELDS` it carries, and, when its
    href is a local file, that file's own :func:`fingerprint` (so rewriting one asset file reruns the item). A remote
    asset without such fields is identified by its href alone, as a remote raster is. The rest of the item's JSON
    (other assets, properties) is not part of it: it does not change the pixels read.

    Raises:
        OSError: The item file or a local asset file cannot be read (a :class:`~tiler.errors.ReadError`).
        InputError: The file holds no such item, or the item lacks an asset of ``assets``.
    """
    from tiler.io.stac_item import asset_hrefs, load_item

    item = load_item(path)
    digest = hashlib.sha256(b"tiler-stac-item-v1\0" + item.id.encode() + b"\0")
    for key, href, fields in asset_hrefs(item, assets, name=path):
        digest.update(f"{key}\0{href}\0".encode())
        versions = {k: fields[k] for k in ASSET_VERSION_FIELDS if k in fields}
        digest.update(json.dumps(versions, sort_keys=True, default=str).encode() + b"\0")
        if not is_remote(href):
            digest.update(fingerprint(href).encode())
    return digest.hexdigest()


def missing_fingerprint(path: str) -> str:
    """The stand-in identity of an input that cannot be read (its path alone)."""
    return "missing:" + hashlib.sha256(path.encode()).hexdigest()
