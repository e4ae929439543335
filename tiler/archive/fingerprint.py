"""Input fingerprints: a cheap identity of a file that changes whenever it is rewritten or touched."""

from __future__ import annotations

import hashlib
import os

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


def missing_fingerprint(path: str) -> str:
    """The stand-in identity of an input that cannot be read (its path alone)."""
    return "missing:" + hashlib.sha256(path.encode()).hexdigest()
