"""Reading a model package's files: JSON configs and weight tensors, without running anything from them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tiler.errors import ModelError, ReadError
from tiler.model.checkpoint import _safe_load, check_state

__all__ = ["load_state", "read_json", "read_state", "state_of"]


def read_json(path: Path, *, what: str) -> Any:
    """Parse a JSON file (plain data only: ``json`` builds dicts, lists, strings and numbers).

    Raises:
        ReadError: The file is missing or is not valid JSON.

    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ReadError(f"{what} {path} could not be read ({err}); give the package folder it belongs to.") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ReadError(f"{what} {path} is not valid JSON ({err}); the package is damaged or of another kind.") from err


def read_state(path: Path) -> Any:
    """Tensors of a weights file: safetensors by suffix, else ``torch.load(weights_only=True)``."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ReadError(f"weights {path} are not a readable safetensors file ({err}).") from err
    return _safe_load(path)


def state_of(data: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict in ``data``: itself, or under ``state_dict`` / ``model`` / ``network`` (training checkpoints)."""
    if not isinstance(data, Mapping):
        raise ModelError(f"weights {path} hold a {type(data).__name__}, not a state dict; save model.state_dict().")
    for key in ("state_dict", "model", "network"):
        inner = data.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return data


def load_state(network: torch.nn.Module, state: Mapping[str, Any], *, path: Path, built: str) -> torch.nn.Module:
    """Load ``state`` into ``network`` after checking every tensor's name and shape (strict).

    Args:
        network: The freshly built network.
        state: Its weights, read from ``path``.
        path: The weights file, for messages.
        built: What the network was built from, for messages (``"smp Unet with encoder_name='resnet18'"``).

    Returns:
        The network with the weights, in eval mode.

    """
    check_state(state, network, path=path, built=built, fix="the config does not match the weights")
    network.load_state_dict(dict(state), strict=True)
    return network.eval()
