"""The files a model reads: what a job's identity hashes, so that weights changed in place are noticed.

A single model file is read alone, except an ONNX graph, which also reads the external data files its
tensors name. A package folder is read in part, and only that part counts (a README or a training log
beside it does not):

* a MONAI bundle: its inference config, ``configs/metadata.json`` when present, and its weights;
* an smp folder: ``config.json`` and ``model.safetensors``;
* an nnU-Net results folder: ``plans.json``, ``dataset.json`` and the chosen folds' checkpoints.

Nothing is loaded: names, and for ONNX a scan of the graph's bytes for external data locations. This
module imports nothing heavy (the config package hashes with it on a driver that never imports torch).
"""

from __future__ import annotations

import functools
import mmap
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tiler.errors import TilerError
from tiler.model.sources.detect import (
    BUNDLE_WEIGHTS,
    FOLDER_SOURCES,
    SMP_FILES,
    bundle_config,
    detect_source,
    fold_checkpoints,
)

__all__ = ["external_data", "model_files"]

_LOCATION = re.compile(rb"\x0a\x08location\x12")
"""An ONNX ``StringStringEntryProto`` whose key (field 1) is ``location``, followed by its value (field 2)."""


def _varint(data: bytes | mmap.mmap, at: int) -> tuple[int, int]:
    """A protobuf varint at ``at``: its value and the offset after it."""
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            break
        shift += 7
    return value, at


@functools.lru_cache(maxsize=64)
def _locations(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    """External data locations named in an ONNX file (cached by path, size and mtime)."""
    found: list[str] = []
    with open(path, "rb") as fh:
        if size == 0:
            return ()
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for match in _LOCATION.finditer(data):
                length, start = _varint(data, match.end())
                if 0 < length <= 4096 and start + length <= len(data):
                    try:
                        found.append(bytes(data[start : start + length]).decode("utf-8"))
                    except UnicodeDecodeError:
                        continue
    return tuple(dict.fromkeys(found))


def external_data(graph: Path) -> list[Path]:
    """The external data files an ONNX graph names (``location`` entries, relative to its folder) that exist.

    A location is found by scanning the graph's bytes for the protobuf encoding of ``key: "location"``; one
    that does not name a file beside the graph is left out (onnxruntime reports it when it loads the graph).
    """
    stat = graph.stat()
    out = []
    for location in _locations(str(graph.resolve()), stat.st_size, stat.st_mtime_ns):
        path = graph.parent / location
        if path.is_file():
            out.append(path)
    return out


def _nnunet_files(folder: Path, folds: Sequence[str] | None, checkpoint: str) -> list[Path]:
    return [folder / "plans.json", folder / "dataset.json", *fold_checkpoints(folder, folds, checkpoint)]


def model_files(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    nnunet_folds: Sequence[str] | None = None,
    nnunet_checkpoint: str = "checkpoint_final.pth",
) -> list[Path] | None:
    """Every file the model at ``path`` reads, the main one first; None when that cannot be told.

    Args:
        path: The model file or package folder (local).
        format: ``model.format``; ``auto`` detects a folder's kind.
        nnunet_folds: ``model.nnunet.folds`` (None: every fold with a checkpoint, as the loader picks them).
        nnunet_checkpoint: ``model.nnunet.checkpoint``.

    Returns:
        The files (those that exist), or None for a path that is neither a file nor a folder of a known kind.

    """
    p = Path(path)
    if p.is_file():
        return [p, *external_data(p)] if p.suffix.lower() == ".onnx" else [p]
    if not p.is_dir():
        return None
    try:
        kind = format if format in FOLDER_SOURCES else detect_source(p)
    except TilerError:
        return None  # neither kind, or both: loading the model names the problem
    files: list[Path | None]
    if kind == "monai":
        weights = next((p / w for w in BUNDLE_WEIGHTS if (p / w).is_file()), None)
        files = [bundle_config(p), p / "configs" / "metadata.json", weights]
    elif kind == "smp":
        files = [p / name for name in SMP_FILES]
    elif kind == "nnunet":
        files = list(_nnunet_files(p, nnunet_folds, nnunet_checkpoint))
    else:
        return None
    return [f for f in files if f is not None and f.is_file()]
