"""Saving models in tiler's own formats: the checkpoint and TorchScript with tiler's metadata.

* :func:`save_checkpoint` writes one ``torch.save`` file ``{"format": "tiler-checkpoint", "version": 1, "spec": ...,
  "normalization": ..., "class_names": [...], "class_colors": [...], "state_dict": ...}`` holding only plain types
  and tensors, so that it loads weights-only;
* :func:`save_torchscript` scripts (or traces) a network and stores the same metadata as its ``tiler.json``.

Both are read back by :func:`tiler.model.load.load_model` (:mod:`tiler.model.sources.tiler`). ``load_model`` and
``LoadedModel`` are also importable from here, as before they moved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tiler.errors import ModelError
from tiler.model.load import FORMATS, load_model
from tiler.model.loaded import LoadedModel, names_colors
from tiler.model.loaded import names_colors as _names_colors  # noqa: F401 - tests/io/test_io_store.py imports it here
from tiler.model.normalize import Normalization
from tiler.model.sources.tiler import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, TORCHSCRIPT_META
from tiler.model.spec import ModelSpec

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "FORMATS",
    "LoadedModel",
    "load_model",
    "save_checkpoint",
    "save_torchscript",
]


def save_checkpoint(
    path: str | os.PathLike[str],
    network: torch.nn.Module,
    *,
    spec: ModelSpec,
    normalization: Normalization | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write a tiler checkpoint (plain types and tensors only), atomically.

    Returns:
        The path written.

    """
    names, colors = names_colors(spec, class_names, class_colors)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": spec.to_dict(),
        "normalization": (normalization or Normalization()).to_dict(),
        "class_names": list(names),
        "class_colors": [list(c) for c in colors],
        "state_dict": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, out)
    return out


def _meta(
    spec: ModelSpec | None,
    normalization: Normalization | None,
    class_names: Sequence[str] | None,
    class_colors: Sequence[Sequence[int]] | None,
) -> dict[str, Any]:
    names, colors = names_colors(spec, class_names, class_colors)
    return {
        "spec": spec.to_dict() if spec is not None else None,
        "normalization": (normalization or Normalization()).to_dict(),
        "class_names": list(names),
        "class_colors": [list(c) for c in colors],
    }


def save_torchscript(
    path: str | os.PathLike[str],
    network: torch.nn.Module,
    *,
    spec: ModelSpec | None = None,
    normalization: Normalization | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    example: torch.Tensor | None = None,
) -> Path:
    """Script (or trace, given ``example``) a network and save it with tiler metadata as an extra file."""
    network = network.eval()
    try:
        module = torch.jit.trace(network, example) if example is not None else torch.jit.script(network)
    except Exception as err:  # noqa: BLE001 - scripting errors come in many types
        raise ModelError(
            f"could not convert {type(network).__name__} to TorchScript: {err}. Pass example=<a tile "
            "batch> to trace it."
        ) from err
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {TORCHSCRIPT_META: json.dumps(_meta(spec, normalization, class_names, class_colors))}
    torch.jit.save(module, str(out), _extra_files=extra)
    return out
