"""Reading a model package's files: JSON configs and weight tensors, without running anything from them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tiler.errors import ModelError, ReadError
from tiler.model.weights import check_state, safe_load

__all__ = ["MAX_DEPTH", "check_depth", "load_state", "read_json", "read_state", "state_of"]


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
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReadError(f"{what} {path} is not valid JSON ({err}); the package is damaged or of another kind.") from err
    except RecursionError:  # the parser's own nesting limit
        raise ReadError(_too_deep(path, what)) from None
    check_depth(data, path, what=what)
    return data


MAX_DEPTH = 64
"""Most levels of nesting a package's config may have (MONAI bundles and nnU-Net plans use about 8)."""


def _too_deep(path: Path, what: str) -> str:
    return (
        f"{what} {path} nests lists or mappings more than {MAX_DEPTH} levels deep; a real config nests a few levels. "
        "Fix: give the package's own config."
    )


def check_depth(data: Any, path: Path, *, what: str) -> None:
    """Raise ReadError when ``data`` nests lists or mappings more than :data:`MAX_DEPTH` levels.

    Counted without recursion, every YAML alias at its full depth (an object reached twice is measured once).
    """
    heights: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        value, done = stack.pop()
        if not isinstance(value, Mapping | list | tuple) or (id(value) in heights and not done):
            continue
        children = [c for c in (value.values() if isinstance(value, Mapping) else value)
                    if isinstance(c, Mapping | list | tuple)]  # fmt: skip
        if done:
            heights[id(value)] = 1 + max((heights[id(c)] for c in children), default=0)
            if heights[id(value)] > MAX_DEPTH:
                raise ReadError(_too_deep(path, what))
            continue
        stack.append((value, True))
        stack.extend((c, False) for c in children if id(c) not in heights)


def read_state(path: Path) -> Any:
    """Tensors of a weights file: safetensors by suffix, else ``torch.load(weights_only=True)``."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ReadError(f"weights {path} are not a readable safetensors file ({err}).") from err
    return safe_load(path)


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
