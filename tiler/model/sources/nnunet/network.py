"""The network of an nnU-Net configuration, rebuilt from its ``architecture`` entry through allow-lists.

nnU-Net locates ``network_class_name`` and every ``_kw_requires_import`` value with ``pydoc.locate``: any
importable name a plans file gives is imported and called. tiler builds only the
``dynamic_network_architectures`` U-Nets of :data:`NETWORKS`; each ``_kw_requires_import`` value must be one
of the torch layers (or residual blocks) of :data:`LAYERS`; every other keyword argument is taken as the
JSON literal it is. Anything else is refused, naming the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cache
from typing import Any

import torch
from torch import nn

from tiler.errors import ModelError

__all__ = ["LAYERS", "NETWORKS", "build_network", "layer_names", "network_class"]

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
    names = layer_names()
    for key in imports:
        if key not in out:
            raise ModelError(f"{source}: architecture._kw_requires_import names {key!r}, which arch_kwargs lacks.")
        value = out[key]
        if value is None:
            continue
        if value not in names:
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
    except (TypeError, ValueError, AssertionError, KeyError, IndexError) as err:
        raise ModelError(
            f"{source}: {cls.__name__} refused the plans' arch_kwargs ({type(err).__name__}: {err}); the plans were "
            "edited or written for another dynamic_network_architectures version."
        ) from err
    return network.eval()
