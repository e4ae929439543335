"""The network of an nnU-Net configuration, rebuilt from its ``architecture`` entry through allow-lists.

nnU-Net locates ``network_class_name`` and every ``_kw_requires_import`` value with ``pydoc.locate``: any
importable name a plans file gives is imported and called. tiler builds only the
``dynamic_network_architectures`` U-Nets of :data:`NETWORKS`; each ``_kw_requires_import`` value must be one
of the torch layers (or residual blocks) of :data:`LAYERS`; every other keyword argument is taken as the
JSON literal it is. Anything else is refused, naming the key.

Before anything is allocated, :func:`check_size` counts the network's parameters on the ``meta`` device and
one patch's feature maps from the declared ``features_per_stage`` and ``strides``, and refuses what would
not fit in this machine's (and its container's) memory, naming the plans file, the key and its value.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import torch
from torch import nn

from tiler.errors import ModelError
from tiler.model.memory import check_network_size

__all__ = ["LAYERS", "MAX_DEPTH", "NETWORKS", "build_network", "check_size", "layer_names", "network_class"]

NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")
"""The ``dynamic_network_architectures.architectures.unet`` classes tiler builds (nnU-Net's U-Nets)."""

_NETWORK_MODULES = (
    "dynamic_network_architectures.architectures.unet",
    "dynamic_network_architectures.architectures.residual_unet",  # where old plans say ResidualEncoderUNet lives
)

LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.LeakyReLU, nn.ReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
)  # fmt: skip
"""The torch layers a plans file may name in ``_kw_requires_import`` (conv, norm, dropout and nonlinearity ops)."""

MAX_DEPTH = 64
"""Most stages, and most convolutions or blocks per stage, an architecture may ask for (nnU-Net plans use <= 8)."""
_DEPTH_KEYS = ("n_stages", "n_conv_per_stage", "n_conv_per_stage_decoder", "n_blocks_per_stage")
ACTIVATION_COPIES = 3
"""Feature maps of a stage held at once during inference: its skip connection, its input and its output."""


def _import_dna() -> Any:
    try:
        from dynamic_network_architectures.architectures import unet
        from dynamic_network_architectures.building_blocks import residual
    except ImportError as err:
        raise ModelError(
            f"nnU-Net models need dynamic_network_architectures ({err}); install it with "
            "pip install -c constraints.txt 'tiler[nnunet]'."
        ) from err
    return unet, residual


@cache
def layer_names() -> dict[str, Any]:
    """Every accepted spelling of an allowed layer (``torch.nn.modules.conv.Conv3d``, ``torch.nn.Conv3d``) → class."""
    _, residual = _import_dna()
    out: dict[str, Any] = {}
    for cls in LAYERS:
        out[f"{cls.__module__}.{cls.__qualname__}"] = cls
        out[f"torch.nn.{cls.__qualname__}"] = cls
    for cls in (residual.BasicBlockD, residual.BottleneckD):  # ResidualEncoderUNet's ``block`` argument
        out[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return out


def network_class(name: Any, *, source: str) -> type[nn.Module]:
    """The allowed class ``architecture.network_class_name`` names, or a refusal naming it.

    Accepted: ``dynamic_network_architectures.architectures.unet.<Name>`` (what nnU-Net writes), the old
    ``...residual_unet.<Name>``, or the bare ``<Name>``, for each ``<Name>`` of :data:`NETWORKS`.
    """
    if not isinstance(name, str):
        raise ModelError(f"{source}: architecture.network_class_name is {name!r}; give a class name.")
    module, _, short = name.rpartition(".")
    if short not in NETWORKS or (module and module not in _NETWORK_MODULES):
        raise ModelError(
            f"{source}: architecture.network_class_name is {name!r}, refused: tiler builds only "
            f"dynamic_network_architectures' {list(NETWORKS)} and imports nothing else a plans file names "
            "(nnU-Net would import and run it)."
        )
    unet, _ = _import_dna()
    cls = getattr(unet, short)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"{source}: {short} is not a network class in this dynamic_network_architectures.")
    return cls


def _kwargs(arch: Mapping[str, Any], cls: type[nn.Module], source: str) -> dict[str, Any]:
    kwargs = arch.get("arch_kwargs")
    if not isinstance(kwargs, Mapping):
        raise ModelError(f"{source}: architecture.arch_kwargs is {kwargs!r}; it must be a mapping of arguments.")
    imports = arch.get("_kw_requires_import", [])
    if not isinstance(imports, list | tuple) or not all(isinstance(k, str) for k in imports):
        raise ModelError(f"{source}: architecture._kw_requires_import is {imports!r}; give a list of argument names.")
    out = dict(kwargs)
    for key in _DEPTH_KEYS:
        if key in out:
            _check_depth(key, out[key], source)
    names = layer_names()
    for key in imports:
        if key not in out:
            raise ModelError(f"{source}: architecture._kw_requires_import names {key!r}, which arch_kwargs lacks.")
        value = out[key]
        if value is None:
            continue
        if not isinstance(value, str) or value not in names:
            raise ModelError(
                f"{source}: architecture.arch_kwargs.{key} is {value!r}, refused: tiler imports only these layers "
                f"by name: {sorted(n for n in names if not n.startswith('torch.nn.modules'))}."
            )
        out[key] = names[value]
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in out if k not in params)
    if unknown:
        raise ModelError(
            f"{source}: architecture.arch_kwargs has {unknown}, which {cls.__name__} does not take; the plans were "
            "written for another dynamic_network_architectures version."
        )
    for key in ("input_channels", "num_classes"):
        if key in out:
            raise ModelError(f"{source}: architecture.arch_kwargs sets {key!r}; nnU-Net takes it from dataset.json.")
    out["deep_supervision"] = False  # as nnU-Net's predictor builds it: the full-resolution output only
    return out


def _check_depth(key: str, value: Any, source: str) -> None:
    """Refuse a stage or convolution count that is not a whole number (or list of them) in ``1..MAX_DEPTH``."""
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DEPTH for v in items):
        raise ModelError(
            f"{source}: architecture.arch_kwargs.{key} is {value!r}; give a whole number (or a list of them) from 1 "
            f"to {MAX_DEPTH}, as the plans nnU-Net wrote (a real network has at most 8 stages)."
        )


def _per_axis(value: Any, ndim: int) -> list[int] | None:
    """``value`` (an int, or a list of ``ndim`` ints) as a list of ``ndim`` positive ints, or None."""
    items = [value] * ndim if isinstance(value, int) else value
    if not isinstance(items, list) or len(items) != ndim:
        return None
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        return None
    return items


def activation_bytes(kwargs: Mapping[str, Any], patch: Sequence[int]) -> int:
    """Bytes of one patch's float32 feature maps, ``3 · 4 · Σ_s features_s · Π(patch / cumulative stride_s)``.

    Counts :data:`ACTIVATION_COPIES` maps per stage (skip connection, input, output). Returns 0 when the
    arguments are not the plain lists this needs (the build then reports them).

    >>> activation_bytes({"n_stages": 2, "features_per_stage": [8, 16], "strides": [1, 2]}, (32, 32))
    147456
    """
    n = kwargs.get("n_stages")
    features = kwargs.get("features_per_stage")
    strides = kwargs.get("strides")
    if isinstance(features, int) and isinstance(n, int):
        features = [features] * n
    if not (isinstance(features, list) and isinstance(strides, list) and len(features) == len(strides)):
        return 0
    size = [int(p) for p in patch]
    total = 0
    for f, stride in zip(features, strides, strict=True):
        axes = _per_axis(stride, len(size))
        if axes is None or isinstance(f, bool) or not isinstance(f, int):
            return 0
        size = [max(1, -(-a // s)) for a, s in zip(size, axes, strict=True)]
        total += f * math.prod(size)
    return ACTIVATION_COPIES * 4 * total


def _parameter_count(cls: type[nn.Module], kwargs: Mapping[str, Any], in_channels: int, classes: int) -> int | None:
    """Parameters of the network built on the meta device (nothing allocated); None when it cannot be built so."""
    try:
        with torch.device("meta"):
            network = cls(input_channels=in_channels, num_classes=classes, **kwargs)
    except Exception:  # noqa: BLE001 - the real build reports what the arguments got wrong
        return None
    return sum(p.numel() for p in network.parameters())


def check_size(
    arch: Mapping[str, Any], *, in_channels: int, classes: int, patch: Sequence[int], source: str, folds: int = 1
) -> None:
    """Refuse a configuration whose network, or one patch's activations, would not fit in memory (nothing built).

    Args:
        arch: The configuration's ``architecture`` entry.
        in_channels: Input channels.
        classes: Output classes.
        patch: The configuration's ``patch_size`` (the tile).
        source: Where ``arch`` came from, for messages.
        folds: Networks the ensemble holds (one per fold).

    Raises:
        ModelError: Naming the plans file, the argument holding the largest size and its value.

    """
    cls = network_class(arch.get("network_class_name"), source=source)
    kwargs = _kwargs(arch, cls, source)
    params = _parameter_count(cls, kwargs, in_channels, classes)
    activations = activation_bytes(kwargs, patch)
    if params is None and not activations:
        return
    declared = arch.get("arch_kwargs")
    args = {f"architecture.arch_kwargs.{k}": v for k, v in declared.items()} if isinstance(declared, Mapping) else {}
    if activations:
        args["patch_size"] = [int(v) for v in patch]
    check_network_size(params or 0, source=source, args=args, activations=activations, networks=folds)


def build_network(arch: Mapping[str, Any], *, in_channels: int, classes: int, source: str) -> nn.Module:
    """Instantiate the configuration's network (random weights) from its ``architecture`` entry.

    Args:
        arch: ``{"network_class_name": ..., "arch_kwargs": {...}, "_kw_requires_import": [...]}``.
        in_channels: Input channels (``dataset.json`` ``channel_names``).
        classes: Output classes (labels without ``ignore``).
        source: Where ``arch`` came from, for messages.

    Returns:
        The network in eval mode.

    Raises:
        ModelError: A class or layer outside the allow-lists, or arguments the class refuses.

    """
    cls = network_class(arch.get("network_class_name"), source=source)
    kwargs = _kwargs(arch, cls, source)
    try:
        with torch.random.fork_rng():  # the weights are overwritten; keep the caller's random stream untouched
            network = cls(input_channels=in_channels, num_classes=classes, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError, AttributeError, RuntimeError,
            MemoryError) as err:  # fmt: skip
        raise ModelError(
            f"{source}: {cls.__name__} refused the plans' arch_kwargs ({type(err).__name__}: {err}); the plans were "
            "edited or written for another dynamic_network_architectures version."
        ) from err
    return network.eval()
