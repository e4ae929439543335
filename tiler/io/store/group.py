"""The store's group ``zarr.json``: who the store is, opening it, and rewriting its attributes atomically.

Who the store is: a tiler store or not, what pixels it holds, who finished it.

Stores carry the ``tiler_store`` marker; stores written before it are recognised by their (legacy)
``config_hash``, tiler version and labels array. A store's pixels are named by ``pixels_hash``; a store from before
the pixels/config split recorded one ``config_hash`` instead, which names its pixels (or, between the commit that
made it cover exports and scores and the split, the job's config hash). A finished store names the finishing that
wrote its exports and reports by ``job_hash`` (legacy: its ``config_hash``). Each question is one small JSON read
(and a listing of the block records' folder), no zarr: cheap enough for every input an archive skips as done.
Attributes are changed by rewriting the whole ``zarr.json`` (one atomic, fsynced replace, the inline consolidated
metadata kept), never by zarr's attribute updates: several processes may read it at any time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import zarr

from tiler.errors import OutputError
from tiler.geometry import BlockPartition
from tiler.io.atomic import write_json_atomic
from tiler.io.objects import AnyPath, PathArg, as_path, lexists, zarr_store
from tiler.io.store.layout import (
    BLOCK_SHAPE,
    STATE_DIR,
    STORE_FORMAT,
    STORE_MARKER,
    array_geometry,
    check_store_metadata,
    read_json,
    whole_numbers,
)

__all__ = [
    "finished_job_hash", "group_attrs", "holds_pixels_of", "is_tiler_store", "not_a_store", "open_store_group",
    "resume_group", "rewrite_attrs",
]  # fmt: skip


def group_attrs(path: AnyPath) -> dict[str, Any] | None:
    """The attributes in the group ``zarr.json`` of the folder ``path``; None when it has no readable group."""
    try:
        meta = read_json(path / "zarr.json")
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    attrs = meta.get("attributes")
    return attrs if isinstance(attrs, dict) else None


def is_tiler_store(path: PathArg) -> bool:
    """Whether ``path`` holds a tiler store, judged by its own metadata (one small JSON read, no zarr)."""
    path = as_path(path)
    try:
        meta = read_json(path / "zarr.json")
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return False
    attrs = meta.get("attributes")
    if not isinstance(attrs, dict):
        return False
    if attrs.get(STORE_MARKER) == STORE_FORMAT:
        return True
    return "config_hash" in attrs and "tiler_version" in attrs and (path / "labels" / "zarr.json").is_file()


def not_a_store(path: AnyPath, detail: str = "") -> OutputError:
    """The OutputError for a ``path`` that exists and is no (readable) tiler store, with the fix."""
    what = "is not a tiler output store" if not detail else f"is not a readable tiler output store ({detail})"
    return OutputError(
        f"{path} exists and {what}: no tiler metadata in {path / 'zarr.json'}. It was left untouched; "
        f"choose another output path, or remove it by hand if it is yours to delete."
    )


def holds_pixels_of(attrs: Mapping[str, Any], pixels_hash: str, job_hash: str | None = None) -> bool:
    """Whether a store with group ``attrs`` holds what a job with ``pixels_hash`` (config hash ``job_hash``) writes.

    >>> holds_pixels_of({"pixels_hash": "p1"}, "p1"), holds_pixels_of({"config_hash": "j1"}, "p1", "j1")
    (True, True)
    """
    own = attrs.get("pixels_hash")
    if own is not None:
        return str(own) == pixels_hash
    legacy = attrs.get("config_hash")
    return legacy is not None and str(legacy) in (pixels_hash, job_hash)


def finished_job_hash(path: PathArg) -> str | None:
    """The config hash of the job that finished the store at ``path``; None if it is not complete (or absent).

    Reads the group's and the labels' ``zarr.json`` and lists the block records' folder: a ``complete`` flag over
    a block with no record file (set by hand on a partial store) is not believed. A complete store from before the
    pixels/config split answers with its legacy ``config_hash``.
    """
    attrs = group_attrs(as_path(path))
    if attrs is None or not attrs.get("complete", False) or not _every_block_listed(as_path(path), attrs):
        return None
    job = attrs.get("job_hash")
    if job is None and attrs.get("pixels_hash") is None:
        job = attrs.get("config_hash")
    return str(job) if job is not None else None


def _every_block_listed(path: AnyPath, attrs: Mapping[str, Any]) -> bool:
    """Whether every block of the store's partition has a record file (names only); True when it keeps none."""
    block = whole_numbers(attrs.get(BLOCK_SHAPE))
    if block is None:
        return True
    try:
        geometry = array_geometry(path / "labels" / "zarr.json")
        folder = path / STATE_DIR / "blocks"
        names = {p.name for p in folder.iterdir()}
    except (OutputError, OSError):
        return False
    if geometry is None or len(geometry[0]) != len(block):
        return False
    partition = BlockPartition(geometry[0], block)
    return all(f"{'_'.join(map(str, p))}.json" in names for p in partition.positions())


def open_store_group(path: AnyPath, mode: Literal["r", "r+"]) -> zarr.Group:
    """The zarr group of the store at ``path``, its arrays opened from their own ``zarr.json`` (never the copy).

    Raises:
        OutputError: ``path`` is missing or is not a tiler store, or its metadata declares shapes no job writes
            (:func:`~tiler.io.store.layout.check_store_metadata`, checked before zarr allocates anything).

    """
    if not lexists(path):
        raise OutputError(f"output store {path} does not exist; run the job that writes it first.")
    if not is_tiler_store(path):
        raise not_a_store(path)
    check_store_metadata(path)
    try:
        group = zarr.open_group(zarr_store(path, read_only=mode == "r"), mode=mode, zarr_format=3,
                                use_consolidated=False)
        if "labels" not in group:
            raise not_a_store(path, "no labels array")
    except OutputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise not_a_store(path, str(exc)) from exc
    return group


def rewrite_attrs(path: AnyPath, changes: Mapping[str, Any], *, remove: Sequence[str] = ()) -> None:
    """Rewrite the group ``zarr.json`` of the store at ``path`` with ``changes`` set and ``remove`` dropped.

    Raises:
        OutputError: the file cannot be read (the store is damaged), or written.

    """
    meta_path = path / "zarr.json"
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError) as exc:
        raise OutputError(
            f"cannot read {meta_path} to update it ({exc}); the store is damaged. Rerun the job with "
            f"--overwrite to rebuild it."
        ) from exc
    attributes = meta.setdefault("attributes", {})
    attributes.update(changes)
    for key in remove:
        attributes.pop(key, None)
    write_json_atomic(meta_path, meta, indent=2)


def resume_group(path: AnyPath, pixels_hash: str, job_hash: str | None, block: Sequence[int] | None) -> None:
    """Take over the existing store at ``path`` for a job with ``pixels_hash``: its hashes and ``block_shape`` updated.

    A store from before the pixels/config split gets both hashes named; ``block`` (the job's partition) is kept as
    ``block_shape``.

    Raises:
        OutputError: the store holds another job's pixels (:func:`holds_pixels_of`), with the fix.

    """
    attrs = group_attrs(path) or {}
    if not holds_pixels_of(attrs, pixels_hash, job_hash):
        raise OutputError(
            f"output {path} already holds the result of another job (pixels hash "
            f"{attrs.get('pixels_hash', attrs.get('config_hash'))}, this job {pixels_hash}: the input, model, tiling "
            f"or output layout differ); pass --overwrite to replace it or choose another output path."
        )
    if attrs.get("pixels_hash") is None:  # a store from before the split: name its two hashes
        finished = finished_job_hash(path)
        rewrite_attrs(path, {"pixels_hash": pixels_hash, **({"job_hash": finished} if finished else {})})
    if block is not None and attrs.get(BLOCK_SHAPE) != [int(b) for b in block]:
        rewrite_attrs(path, {BLOCK_SHAPE: [int(b) for b in block]})
