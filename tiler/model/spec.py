"""Model specs: which MONAI network, with which dimensions and arguments, stored as plain types.

The networks are an explicit allow-list of dense-prediction classes of ``monai.networks.nets`` (each
takes ``spatial_dims``, ``in_channels`` and ``out_channels`` and returns ``(N, K, *S)``); a name is
looked up in that list, never imported from a user string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.networks import nets
from monai.utils import OptionalImportError

from tiler.errors import ModelError
from tiler.model.memory import check_network_size

__all__ = [
    "ARCHITECTURES", "MAX_CHANNELS", "MAX_CLASSES", "MAX_PARAMETERS", "MONAI_ALIASES", "ModelSpec", "build_network",
    "check_size", "default_args", "resolve_architecture",
]  # fmt: skip

MAX_CHANNELS = 4096
"""Most input channels, and most feature channels of any layer, a spec may ask for."""
MAX_CLASSES = 65535
"""Most classes (labels are stored as uint16 at most)."""
MAX_PARAMETERS = 2**30
"""Most parameters a network may have (4 GiB of float32), counted before anything is allocated."""
_WIDTH_ARGS = ("channels", "features", "filters", "feature_size")
_POSITIVE_ARGS = (
    "strides", "kernel_size", "up_kernel_size", "upsample_kernel_size", "window_size", "num_heads", "depths",
    "patch_size",
)  # fmt: skip
_MAX_POSITIVE = 1024

ARCHITECTURES: dict[str, type[torch.nn.Module]] = {
    "AHNet": nets.AHNet,
    "AttentionUnet": nets.AttentionUnet,
    "BasicUNet": nets.BasicUNet,
    "BasicUNetPlusPlus": nets.BasicUNetPlusPlus,
    "DynUNet": nets.DynUNet,
    "FlexibleUNet": nets.FlexibleUNet,
    "HighResNet": nets.HighResNet,
    "MedNeXt": nets.MedNeXt,
    "SegResNet": nets.SegResNet,
    "SegResNetDS": nets.SegResNetDS,
    "SwinUNETR": nets.SwinUNETR,
    "UNETR": nets.UNETR,
    "UNet": nets.UNet,
    "VNet": nets.VNet,
}
"""The MONAI networks tiler builds, by their canonical ``monai.networks.nets`` name."""

MONAI_ALIASES: dict[str, str] = {
    name: canonical
    for name, obj in vars(nets).items()
    if not name.startswith("_")
    for canonical, cls in ARCHITECTURES.items()
    if obj is cls
}
"""Every name ``monai.networks.nets`` exports for an allowed class (``Unet``, ``BasicUnet``...) → canonical name."""

# Constructor arguments that would download weights: the weights always come from the model file.
_DOWNLOADING_ARGS = ("pretrained",)


def resolve_architecture(name: str) -> str | None:
    """The canonical allowed name for ``name``, ``monai.networks.nets.name`` or ``monai.networks.nets.<module>.name``.

    >>> resolve_architecture("monai.networks.nets.Unet")
    'UNet'
    >>> resolve_architecture("os.system") is None
    True
    """
    prefix = "monai.networks.nets."
    short = name[len(prefix) :] if name.startswith(prefix) else name
    module, _, short = short.rpartition(".")
    canonical = MONAI_ALIASES.get(short)
    if canonical is None:
        return None
    if module and (not name.startswith(prefix) or ARCHITECTURES[canonical].__module__ != prefix + module):
        return None
    return canonical


def default_args(architecture: str, spatial_dims: int) -> dict[str, Any]:
    """Small, fast default arguments for ``architecture`` in ``spatial_dims`` dimensions."""
    if architecture == "UNet":
        return {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}
    if architecture == "BasicUNet":
        return {"features": [16, 16, 32, 64, 128, 16]}
    if architecture == "DynUNet":
        return {
            "kernel_size": [3, 3, 3, 3],
            "strides": [1, 2, 2, 2],
            "upsample_kernel_size": [2, 2, 2],
            "filters": [16, 32, 64, 128],
        }
    if architecture == "SwinUNETR":
        return {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3], "window_size": 4}
    return {}


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a spec survives ``torch.load(weights_only=True)`` and YAML."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _ints(name: str, value: Any, low: int, high: int) -> None:
    """Raise ModelError unless ``value`` is an int (or nested lists of ints) within ``low..high``."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, list):
            _ints(name, item, low, high)
        elif isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise ModelError(
                f"model args.{name}={value!r} must be a whole number (or a list of them) between {low} and "
                f"{high}; fix the spec's args."
            )


def _check_args(args: Mapping[str, Any]) -> None:
    """Check the size-bearing constructor arguments before anything is built: widths, kernels, strides."""
    for name, value in args.items():
        if name in _WIDTH_ARGS:
            _ints(name, value, 1, MAX_CHANNELS)
        elif name in _POSITIVE_ARGS:
            _ints(name, value, 1, _MAX_POSITIVE)
        elif name == "num_res_units":
            _ints(name, value, 0, 64)


def _parameter_count(cls: type[torch.nn.Module], spec: ModelSpec) -> int | None:
    """Parameters of the network, built on the meta device (nothing allocated); None when it cannot be."""
    try:
        with torch.device("meta"):
            net = cls(spatial_dims=spec.spatial_dims, in_channels=spec.in_channels, out_channels=spec.out_channels,
                      **dict(spec.args))  # fmt: skip
    except Exception:  # noqa: BLE001 - some networks call .item() while building; the real build reports
        return None
    return sum(p.numel() for p in net.parameters())


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation network: MONAI architecture, spatial dims, channels and constructor arguments.

    Attributes:
        architecture: One of :data:`ARCHITECTURES` (``"UNet"``, ``"BasicUNet"``, ``"DynUNet"``,
            ``"SegResNet"``, ``"SwinUNETR"``...), the canonical ``monai.networks.nets`` class name.
        spatial_dims: 2 for ``(C, H, W)`` tiles, 3 for ``(C, D, H, W)`` tiles.
        in_channels: Image channels (bands) the network reads.
        out_channels: Number of classes it predicts.
        args: Further constructor arguments (plain types); empty means :func:`default_args`.

    """

    architecture: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise ModelError(
                f"model architecture={self.architecture!r} is unknown; choose one of {sorted(ARCHITECTURES)}."
            )
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise ModelError(
                f"model spatial_dims={self.spatial_dims!r} is not supported; choose 2 (H, W tiles) or 3 (D, H, W)."
            )
        for key in ("in_channels", "out_channels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"model {key}={value!r} must be a positive integer.")
        if self.out_channels < 2:
            raise ModelError(
                f"model out_channels={self.out_channels} must be >= 2: tiler segments with a softmax over classes."
            )
        if self.in_channels > MAX_CHANNELS:
            raise ModelError(
                f"model in_channels={self.in_channels} is more than {MAX_CHANNELS}; give the number of image bands."
            )
        if self.out_channels > MAX_CLASSES:
            raise ModelError(
                f"model out_channels={self.out_channels} is more than {MAX_CLASSES} classes (labels are uint16); "
                "give the number of classes the network predicts."
            )
        if not isinstance(self.args, Mapping):
            raise ModelError(f"model args={self.args!r} must be a mapping of constructor arguments.")
        args = _plain(self.args) if self.args else default_args(self.architecture, self.spatial_dims)
        _check_args(args)
        object.__setattr__(self, "args", args)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain Python types (str, int, list, dict)."""
        return {
            "architecture": self.architecture,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "args": _plain(self.args),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "model spec") -> ModelSpec:
        """Build a spec from a mapping, naming unknown or missing keys."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{source} must be a mapping with keys architecture, spatial_dims, ...; got {data!r}.")
        valid = {"architecture", "spatial_dims", "in_channels", "out_channels", "args"}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ModelError(f"{source} has unknown key(s) {unknown}; valid keys are {sorted(valid)}.")
        missing = sorted(valid - {"args"} - set(data))
        if missing:
            raise ModelError(f"{source} misses key(s) {missing}; give all of {sorted(valid - {'args'})}.")
        args = data.get("args") or {}
        if not isinstance(args, Mapping):
            raise ModelError(f"{source} args={args!r} must be a mapping of constructor arguments.")
        try:
            return cls(
                architecture=data["architecture"],
                spatial_dims=data["spatial_dims"],
                in_channels=data["in_channels"],
                out_channels=data["out_channels"],
                args=dict(args),
            )
        except ModelError as err:
            raise ModelError(f"{source}: {err}") from None

    @property
    def size_multiple(self) -> int:
        """Tile sizes should be a multiple of this (the total downsampling of the network)."""
        if self.architecture == "UNet":
            total = 1
            for s in self.args.get("strides", []):
                total *= int(s) if not isinstance(s, list) else max(int(v) for v in s)
            return total
        if self.architecture == "BasicUNet":
            return 16
        if self.architecture == "DynUNet":
            total = 1
            for s in self.args.get("strides", []):
                total *= int(s) if not isinstance(s, list) else max(int(v) for v in s)
            return total
        return 32


def check_size(spec: ModelSpec, *, source: str = "model spec") -> None:
    """Refuse a spec whose network would not fit, before anything is allocated (counted on the meta device).

    Raises:
        ModelError: More than :data:`MAX_PARAMETERS` parameters, or more than the memory this machine and its
            container give (:func:`tiler.model.memory.check_network_size`), naming ``source`` and the argument.

    """
    cls = ARCHITECTURES[spec.architecture]
    params = _parameter_count(cls, spec)
    if params is None:
        return
    if params > MAX_PARAMETERS:
        raise ModelError(
            f"{source}: MONAI {spec.architecture} with in_channels={spec.in_channels}, "
            f"out_channels={spec.out_channels}, args={dict(spec.args)} has {params:,} parameters, more than "
            f"{MAX_PARAMETERS:,} ({MAX_PARAMETERS * 4 / 2**30:.0f} GiB of float32); it was not built. Fix the spec's "
            "channel widths."
        )
    shape = {"in_channels": spec.in_channels, "out_channels": spec.out_channels}
    check_network_size(params, source=source, args={**shape, **dict(spec.args)})


def build_network(spec: ModelSpec, *, source: str = "model spec") -> torch.nn.Module:
    """Instantiate the MONAI network a spec describes (weights freshly initialised).

    Args:
        spec: The network.
        source: Where the spec came from, for messages (``"checkpoint /m/unet.pt spec"``).

    Raises:
        ModelError: When the network would not fit in memory or MONAI refuses the arguments; the message names
            them.

    """
    cls = ARCHITECTURES[spec.architecture]
    kwargs = dict(spec.args)
    downloading = [k for k in _DOWNLOADING_ARGS if kwargs.get(k)]
    if downloading:
        raise ModelError(
            f"{source}: model args {downloading[0]}={kwargs[downloading[0]]!r} would download weights for MONAI "
            f"{spec.architecture}; tiler takes the weights from the model file only. Remove it (or set it false)."
        )
    check_size(spec, source=source)
    try:
        return cls(
            spatial_dims=spec.spatial_dims,
            in_channels=spec.in_channels,
            out_channels=spec.out_channels,
            **kwargs,
        )
    except OptionalImportError as err:
        raise ModelError(
            f"{source}: MONAI {spec.architecture} needs an optional package that is not installed: "
            f"{str(err).splitlines()[0]} "
            f"Install it (e.g. `pip install einops` for SwinUNETR) or choose UNet/BasicUNet/DynUNet."
        ) from err
    except (TypeError, ValueError, AssertionError, NotImplementedError, RuntimeError, AttributeError, KeyError,
            MemoryError) as err:  # fmt: skip
        raise ModelError(
            f"{source}: MONAI {spec.architecture} refused args={kwargs} for spatial_dims={spec.spatial_dims}: {err}. "
            f"Fix the model args (see monai.networks.nets.{spec.architecture})."
        ) from err
