"""The output store: one zarr v3 group holding labels, optional probabilities, georeferencing and job state.

Layout of ``<path>/``::

    zarr.json                 group attributes: georef, class names/colours, config hash, version, complete
    labels/                   uint8 (uint16 past 255 classes) (*shape), fill value = nodata label
    probabilities/            optional (K, *shape), chunks (K, *chunks)
    .tiler/blocks/<key>.json  one completion record per block, written atomically (temp file + os.replace)
    .tiler/lock               the job lock (exclusive create), holding owner, pid, host, time

Block records are separate files because zarr attribute updates from several processes would race. The
``complete`` attribute is written last, by :meth:`OutputStore.mark_complete`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

import tiler
from tiler.errors import OutputError
from tiler.geometry import Window
from tiler.io.base import Georef

PROBABILITY_DTYPES = {"float16": np.float16, "uint8": np.uint8, "float32": np.float32}
STATE_DIR = ".tiler"


def _safe_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(key))


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a job lock or ledger claim it holds is live)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputStore:
    """A zarr v3 output store; create it with :meth:`create`, re-open it with :meth:`open`."""

    def __init__(self, path: str | os.PathLike[str], group: zarr.Group) -> None:
        self.path = Path(path)
        self.group = group

    # -- lifecycle ------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        shape: Sequence[int],
        num_classes: int,
        chunks: Sequence[int],
        labels_dtype: str | np.dtype | None = None,
        nodata_label: int = 255,
        probabilities: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        config_hash: str,
        overwrite: bool = False,
        shards: Sequence[int] | None = None,
    ) -> OutputStore:
        """Create the store, or re-open it for resume when it holds the same config hash.

        Args:
            path: Store directory.
            shape: Spatial output shape (H, W) or (D, H, W).
            num_classes: Number of classes K.
            chunks: Chunk shape per spatial axis.
            labels_dtype: uint8 or uint16; default uint8, uint16 when ``num_classes`` > 255.
            nodata_label: Label of pixels with no prediction (the labels' fill value).
            probabilities: None (no probabilities), ``"float16"``, ``"uint8"`` (x255) or ``"float32"``.
            attrs: Extra group attributes: ``georef`` (a :class:`Georef` or its attrs), ``class_names``,
                ``class_colors``, ``config``...
            config_hash: Hash of the job's configuration; a store with another hash is refused.
            overwrite: Delete an existing store first.
            shards: Optional shard shape per spatial axis (a multiple of ``chunks``).

        Raises:
            OutputError: unwritable path, or a store holding another job's result (without ``overwrite``).

        """
        path = Path(path)
        if path.exists():
            if overwrite:
                cls._check_not_locked(path)
                try:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                except OSError as exc:
                    raise OutputError(
                        f"cannot delete existing output {path} for --overwrite: {exc}."
                    ) from exc
            else:
                existing = cls.open(path)
                if existing.config_hash != config_hash:
                    raise OutputError(
                        f"output {path} already holds the result of another job (config hash "
                        f"{existing.config_hash}, this job {config_hash}); pass --overwrite to replace it "
                        f"or choose another output path."
                    )
                return existing
        shape = tuple(int(n) for n in shape)
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != len(shape):
            raise OutputError(
                f"chunks={chunks} must have one value per axis of shape={shape} (output {path})."
            )
        dtype = (
            np.dtype(labels_dtype)
            if labels_dtype is not None
            else np.dtype(np.uint16 if num_classes > 255 else np.uint8)
        )
        if probabilities is not None and probabilities not in PROBABILITY_DTYPES:
            raise OutputError(
                f"probabilities={probabilities!r} for output {path}; "
                f"use None or one of {sorted(PROBABILITY_DTYPES)}."
            )
        meta = dict(attrs or {})
        georef = meta.get("georef")
        if isinstance(georef, Georef):
            meta["georef"] = georef.to_attrs()
        meta.update(
            config_hash=config_hash,
            num_classes=int(num_classes),
            nodata_label=int(nodata_label),
            tiler_version=tiler.__version__,
            complete=False,
        )
        try:
            group = zarr.open_group(str(path), mode="w", zarr_format=3)
            group.create_array(
                "labels",
                shape=shape,
                chunks=chunks,
                shards=tuple(shards) if shards else None,
                dtype=dtype,
                fill_value=int(nodata_label),
                dimension_names=_dim_names(len(shape)),
            )
            if probabilities is not None:
                k = int(num_classes)
                group.create_array(
                    "probabilities",
                    shape=(k, *shape),
                    chunks=(k, *chunks),
                    shards=(k, *shards) if shards else None,
                    dtype=PROBABILITY_DTYPES[probabilities],
                    fill_value=0,
                    dimension_names=("c", *_dim_names(len(shape))),
                )
            (path / STATE_DIR / "blocks").mkdir(parents=True, exist_ok=True)
            group.attrs.update(meta)
        except OSError as exc:
            raise OutputError(
                f"cannot write the output store at {path}: {exc}. "
                f"Choose a writable location (check permissions "
                f"and free space)."
            ) from exc
        return cls(path, group)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: Literal["r", "r+"] = "r+") -> OutputStore:
        """Open an existing store (``mode="r"`` for read-only consumers such as exports)."""
        path = Path(path)
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
            if "labels" not in group or "config_hash" not in group.attrs:
                raise OutputError(
                    f"{path} exists but is not a tiler output store (no labels array / config hash); choose "
                    f"another output path or delete it."
                )
        except OutputError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise OutputError(
                f"{path} exists but cannot be opened as a tiler output store ({exc}); "
                f"choose another output path "
                f"or pass --overwrite to replace it."
            ) from exc
        return cls(path, group)

    # -- properties ------------------------------------------------------------------------------------
    def _attr(self, key: str, default: Any = None) -> Any:
        return self.group.attrs.get(key, default)

    @property
    def attrs(self) -> dict[str, Any]:
        """The group attributes (a fresh copy)."""
        return dict(self.group.attrs)

    @property
    def labels(self) -> zarr.Array:
        """The labels array (*shape)."""
        return self.group["labels"]  # type: ignore[return-value]

    @property
    def probabilities(self) -> zarr.Array | None:
        """The probabilities array (K, *shape), or None."""
        return self.group["probabilities"] if "probabilities" in self.group else None  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial output shape."""
        return tuple(self.labels.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        """Chunk shape per spatial axis."""
        return tuple(self.labels.chunks)

    @property
    def write_unit(self) -> tuple[int, ...]:
        """The smallest independently writable box: the shard shape when sharded, else the chunk shape."""
        shards = getattr(self.labels, "shards", None)
        return tuple(shards) if shards else self.chunks

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return int(self._attr("num_classes"))

    @property
    def nodata_label(self) -> int:
        """The label of pixels without prediction."""
        return int(self._attr("nodata_label"))

    @property
    def config_hash(self) -> str:
        """The hash of the configuration that produced this store."""
        return str(self._attr("config_hash"))

    @property
    def complete(self) -> bool:
        """Whether :meth:`mark_complete` has run."""
        return bool(zarr.open_group(str(self.path), mode="r").attrs.get("complete", False))

    @property
    def georef(self) -> Georef:
        """The georeferencing of the output (same as the input's)."""
        return Georef.from_attrs(self._attr("georef"))

    @property
    def class_names(self) -> list[str]:
        """Class names (``class_<k>`` when none were stored)."""
        names = self._attr("class_names")
        return list(names) if names else [f"class_{k}" for k in range(self.num_classes)]

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        """Class colours as RGB (a default palette when none were stored)."""
        colors = self._attr("class_colors")
        if colors:
            return [(int(c[0]), int(c[1]), int(c[2])) for c in colors]
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        rgb = [cmap(k % 20) for k in range(self.num_classes)]
        return [(int(255 * c[0]), int(255 * c[1]), int(255 * c[2])) for c in rgb]

    # -- writing ---------------------------------------------------------------------------------------
    def check_aligned(self, window: Window) -> None:
        """Raise OutputError unless ``window`` covers whole write units (chunks, or shards when sharded)."""
        unit = self.write_unit
        shape = self.shape
        if window.ndim != len(shape) or not Window.from_shape(shape).contains(window):
            raise OutputError(f"block window {window} lies outside output {self.path} of shape {shape}.")
        bad = [
            (a, b, u)
            for a, b, u, n in zip(window.start, window.stop, unit, shape, strict=True)
            if a % u or (b % u and b != n)
        ]
        if bad:
            raise OutputError(
                f"block window start={window.start} stop={window.stop} is not aligned to the chunk grid "
                f"{unit} of {self.path}; two writers could share a chunk. "
                f"Use blocks that are whole multiples of {unit}."
            )

    def write_block(
        self, window: Window, labels: np.ndarray, probabilities: np.ndarray | None = None
    ) -> None:
        """Overwrite exactly ``window`` (chunk-aligned) with labels (*window.shape), probs (K, ...)."""
        self.check_aligned(window)
        if tuple(labels.shape) != window.shape:
            raise OutputError(f"labels of shape {labels.shape} do not match block {window} of {self.path}.")
        self.labels[window.slices] = labels.astype(self.labels.dtype, copy=False)
        probs = self.probabilities
        if probabilities is not None and probs is not None:
            if tuple(probabilities.shape) != (self.num_classes, *window.shape):
                raise OutputError(
                    f"probabilities of shape {probabilities.shape} do not match (K={self.num_classes}, "
                    f"*{window.shape}) for {self.path}."
                )
            if probs.dtype == np.uint8 and probabilities.dtype != np.uint8:
                probabilities = np.clip(np.rint(probabilities * 255), 0, 255)
            probs[(slice(None), *window.slices)] = probabilities.astype(probs.dtype, copy=False)

    @property
    def _blocks_dir(self) -> Path:
        return self.path / STATE_DIR / "blocks"

    def record_block(self, key: str, record: Mapping[str, Any]) -> None:
        """Record a finished block (one JSON file per block, atomic; safe from many processes)."""
        self._blocks_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self._blocks_dir / f"{_safe_key(key)}.json", {"key": key, **dict(record)})

    def block_records(self) -> dict[str, dict[str, Any]]:
        """Every recorded block, by key."""
        out: dict[str, dict[str, Any]] = {}
        if not self._blocks_dir.exists():
            return out
        for file in sorted(self._blocks_dir.glob("*.json")):
            with open(file) as f:
                rec = json.load(f)
            out[str(rec.pop("key", file.stem))] = rec
        return out

    def mark_complete(self, summary: Mapping[str, Any]) -> None:
        """Write the summary and set ``complete``; call last, after every block is recorded."""
        self.group.attrs.update({"summary": dict(summary), "complete": True})

    # -- job lock --------------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        """The lock file."""
        return self.path / STATE_DIR / "lock"

    @staticmethod
    def _read_lock(lock: Path) -> dict[str, Any] | None:
        try:
            with open(lock) as f:
                return dict(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"owner": "unknown", "pid": -1, "host": "unknown"}

    @classmethod
    def _check_not_locked(cls, path: Path) -> None:
        held = cls._read_lock(path / STATE_DIR / "lock")
        if held and not cls._stale(held):
            raise OutputError(
                f"output {path} is being written by job {held.get('owner')} (pid {held.get('pid')} on "
                f"{held.get('host')}); wait for it to finish or use another output."
            )

    @staticmethod
    def _stale(held: Mapping[str, Any]) -> bool:
        return held.get("host") == socket.gethostname() and not pid_alive(int(held.get("pid", -1)))

    def acquire_lock(self, owner: str) -> None:
        """Take the job lock, or raise OutputError naming the job holding it (stale locks are taken over)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read_lock(self.lock_path)
                if held is None:
                    continue
                if held.get("owner") == owner and held.get("pid") == os.getpid():
                    return
                if self._stale(held):
                    self.lock_path.unlink(missing_ok=True)
                    continue
                raise OutputError(
                    f"output {self.path} is being written by job {held.get('owner')} "
                    f"(pid {held.get('pid')} on "
                    f"{held.get('host')}); wait for it to finish or use another output."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f)
            return
        raise OutputError(
            f"could not take the lock {self.lock_path}; another job keeps taking it. Retry later."
        )

    def release_lock(self) -> None:
        """Drop the job lock if this process holds it."""
        held = self._read_lock(self.lock_path)
        if held is not None and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
            self.lock_path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return (
            f"OutputStore({str(self.path)!r}, shape={self.shape}, chunks={self.chunks}, "
            f"complete={self.complete})"
        )


def _dim_names(ndim: int) -> tuple[str, ...]:
    return ("z", "y", "x")[-ndim:] if ndim <= 3 else tuple(f"d{i}" for i in range(ndim))
