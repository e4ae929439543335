"""Building a new store: the group with every attribute, its arrays, their consolidated metadata, state folders.

The whole group is written into an empty temporary folder that the caller renames into place
(:func:`~tiler.io.atomic.atomic_dir`), so a store either exists with all its metadata or not at all. Every array's
metadata is also kept inline in the group's ``zarr.json`` (zarr-python's consolidated metadata), so readers such as
``xarray.open_zarr`` find the arrays without listing folders: they never meet the ``.tiler`` state folder, which is
no zarr node, nor ask for consolidation. Arrays never change their metadata after this build, so the copy stays
true; the store itself always opens each array from its own ``zarr.json`` (:func:`check_store_metadata` checks
those).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tiler.errors import GeometryError, OutputError
from tiler.io.atomic import atomic_dir, clean_temporaries, output_error, write_json_atomic
from tiler.io.base import Georef
from tiler.io.objects import AnyPath, ObjectPath
from tiler.io.store.chunks import ARRAY_CONFIG, chunk_codecs
from tiler.io.store.coords import TRANSFORM_ORDER, coordinate_arrays, data_var_attrs, dim_names
from tiler.io.store.layout import BLOCK_SHAPE, STATE_DIR, STORE_FORMAT, STORE_MARKER, read_json
from tiler.label_rules import labels_dtype
from tiler.version import __version__

__all__ = ["PROBABILITY_DTYPES", "build_group", "check_create_args", "consolidate_metadata", "new_store"]

PROBABILITY_DTYPES = {"float16": np.float16, "uint8": np.uint8, "float32": np.float32}
"""The probabilities' storage types by name (``uint8`` holds the probability x255)."""


def consolidate_metadata(root: Path, names: Sequence[str]) -> None:
    """Keep the metadata of the arrays ``names`` inline in the group's ``zarr.json`` (one atomic rewrite).

    The form zarr-python's ``consolidate_metadata`` writes for a zarr v3 group whose children are all arrays:
    ``consolidated_metadata = {"kind": "inline", "must_understand": false, "metadata": {name: <its zarr.json>}}``.
    """
    meta = read_json(root / "zarr.json")
    meta["consolidated_metadata"] = {
        "kind": "inline",
        "must_understand": False,
        "metadata": {name: read_json(root / name / "zarr.json") for name in sorted(names)},
    }
    write_json_atomic(root / "zarr.json", meta, indent=2)


def build_group(
    root: Path,
    meta: Mapping[str, Any],
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    shards: Sequence[int] | None,
    dtype: np.dtype,
    nodata_label: int,
    num_classes: int,
    probabilities: str | None,
) -> None:
    """Write a whole store into the empty folder ``root``: group with every attribute, arrays, state folders.

    Args:
        root: The empty folder.
        meta: The group attributes (``georef`` as attrs).
        shape: Spatial shape (H, W) or (D, H, W).
        chunks: Chunk shape per spatial axis.
        shards: Shard shape per spatial axis, or None.
        dtype: The labels' dtype.
        nodata_label: The labels' fill value and ``_FillValue``.
        num_classes: K, the probabilities' first axis.
        probabilities: A key of :data:`PROBABILITY_DTYPES`, or None for no probabilities.

    Besides ``labels`` ``(*shape)`` (and ``probabilities`` ``(K, *shape)``) the group holds what xarray and
    rioxarray read (:mod:`tiler.io.store.coords`).
    """
    georef = Georef.from_attrs(meta.get("georef"))
    attrs = dict(meta)
    if georef.transform is not None:
        attrs["georef_transform_order"] = TRANSFORM_ORDER
    group = zarr.open_group(str(root), mode="w", zarr_format=3, attributes=attrs)
    names = dim_names(len(shape))
    group.create_array(
        "labels", shape=shape, chunks=chunks, shards=tuple(shards) if shards else None, dtype=dtype,
        fill_value=nodata_label, compressors=chunk_codecs(), dimension_names=names, config=ARRAY_CONFIG,
        attributes=data_var_attrs(georef, nodata=nodata_label),
    )  # fmt: skip
    if probabilities is not None:
        group.create_array(
            "probabilities", shape=(num_classes, *shape), chunks=(num_classes, *chunks),
            shards=(num_classes, *shards) if shards else None, dtype=PROBABILITY_DTYPES[probabilities], fill_value=0,
            compressors=chunk_codecs(), dimension_names=("c", *names), config=ARRAY_CONFIG,
            attributes=data_var_attrs(georef),
        )  # fmt: skip
    coords = coordinate_arrays(georef, shape)
    for name, (values, dims, array_attrs) in coords.items():
        arr = group.create_array(
            name, shape=values.shape, dtype=values.dtype, dimension_names=dims, attributes=array_attrs, fill_value=0
        )
        arr[...] = values
    consolidate_metadata(root, ["labels", *(["probabilities"] if probabilities is not None else []), *coords])
    for sub in ("blocks", "exports"):
        (root / STATE_DIR / sub).mkdir(parents=True, exist_ok=True)


def unfinished_build(path: ObjectPath) -> bool:
    """Whether the prefix ``path`` holds only what a store creation killed mid-upload leaves: array ``zarr.json``s.

    A store in a bucket is uploaded with its group ``zarr.json`` last (:func:`~tiler.io.atomic.atomic_dir`), so such
    a prefix was never a store and holds no pixel: a new creation may clear it.
    """
    keys = path.walk_keys()
    return bool(keys) and "zarr.json" not in keys and all(k.endswith("/zarr.json") for k in keys)


def check_create_args(
    path: AnyPath,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    block: Sequence[int] | None,
    probabilities: str | None,
) -> None:
    """Refuse chunks, a block or a probabilities type that cannot make a store of spatial ``shape``.

    Raises:
        OutputError: naming the value, the output and the rule.

    """
    if len(chunks) != len(shape):
        raise OutputError(f"chunks={chunks} must have one value per axis of shape={shape} (output {path}).")
    if block is not None and (len(tuple(block)) != len(shape) or any(int(b) < 1 for b in block)):
        raise OutputError(f"block={tuple(block)} must have one value of at least 1 per axis of shape={shape} "
                          f"(output {path}).")
    if probabilities is not None and probabilities not in PROBABILITY_DTYPES:
        raise OutputError(
            f"probabilities={probabilities!r} for output {path}; use None or one of {sorted(PROBABILITY_DTYPES)}."
        )


def new_store(
    path: AnyPath,
    *,
    shape: tuple[int, ...],
    num_classes: int,
    chunks: tuple[int, ...],
    nodata_label: int,
    probabilities: str | None,
    attrs: Mapping[str, Any] | None,
    pixels_hash: str,
    shards: Sequence[int] | None,
    block: Sequence[int] | None,
    replace: bool,
) -> None:
    """Build a new store at ``path`` under a temporary name and move it into place (replacing one: ``replace``).

    The arguments are :meth:`OutputStore.create`'s; the group attributes are ``attrs`` (``georef`` as attrs),
    the store marker, ``pixels_hash``, ``num_classes``, ``nodata_label``, the tiler version, ``complete=False``
    and, with a ``block``, ``block_shape``.

    Raises:
        OutputError: the path cannot be written, the classes or nodata label pass 65535, or a store appeared at
            ``path`` meanwhile.

    """
    try:
        dtype = labels_dtype(int(num_classes), int(nodata_label))
    except GeometryError as exc:
        raise OutputError(f"output {path}: {exc}") from None
    meta = dict(attrs or {})
    if isinstance(meta.get("georef"), Georef):
        meta["georef"] = meta["georef"].to_attrs()
    meta.update(
        {STORE_MARKER: STORE_FORMAT}, pixels_hash=pixels_hash, num_classes=int(num_classes),
        nodata_label=int(nodata_label), tiler_version=__version__, complete=False,
        **({BLOCK_SHAPE: [int(b) for b in block]} if block is not None else {}),
    )  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc, what="write the output store at") from exc
    clean_temporaries(path.parent)
    with atomic_dir(path, replace=replace, what="write the output store at") as tmp:
        build_group(
            tmp, meta, shape=shape, chunks=chunks, shards=shards, dtype=dtype, nodata_label=int(nodata_label),
            num_classes=int(num_classes), probabilities=probabilities,
        )
