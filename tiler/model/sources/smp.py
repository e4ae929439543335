"""segmentation_models_pytorch (smp): a ``save_pretrained`` folder built from its config, weights from safetensors.

``model.save_pretrained(folder)`` writes ``config.json`` (the constructor's keyword arguments plus
``"_model_class": "Unet"``) and ``model.safetensors``. tiler reads the config as JSON, builds the class
only when ``_model_class`` is one of smp's own architectures (checked against :data:`ARCHITECTURES`
before smp is imported, and against ``smp.__all__`` after) and every name-valued argument is a string,
forces ``encoder_weights`` to None so that nothing is downloaded and ``activation`` to None so that the
network returns logits, counts its parameters on the ``meta`` device and refuses a network that would not
fit in memory (:mod:`tiler.model.memory`), then builds it and loads the safetensors weights strictly. A
one-class (sigmoid) model becomes two classes, background and foreground. smp's config records no
normalisation or class names: give them in the tiler config.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from tiler.errors import ModelError, ReadError
from tiler.model.loaded import Opened, class_labels
from tiler.model.memory import check_network_size
from tiler.model.sources.detect import SMP_FILES
from tiler.model.sources.files import load_state, read_json, read_state
from tiler.model.sources.outputs import TwoClassLogits

if TYPE_CHECKING:
    from tiler.model.spec import ModelSpec

__all__ = ["ARCHITECTURES", "open_smp", "read_config"]

ARCHITECTURES = (
    "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "PAN", "UPerNet",
    "Segformer", "DPT",
)  # fmt: skip
"""smp's segmentation architectures (``segmentation_models_pytorch.__all__`` minus its functions and modules)."""

# Arguments tiler sets itself: weights come from the folder, probabilities from the runner's softmax.
_FORCED: dict[str, Any] = {"encoder_weights": None, "activation": None}
# Arguments smp looks a class or layer up by (a name, or null), with an example each.
_NAMES: dict[str, str] = {
    "encoder_name": "resnet34", "decoder_attention_type": "scse", "decoder_interpolation": "nearest",
    "decoder_merge_policy": "add", "decoder_readout": "cat",
}  # fmt: skip


def read_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """The architecture name and constructor arguments of an smp ``config.json``.

    Raises:
        ModelError: ``_model_class`` is missing or is not one of smp's architectures.

    """
    path = folder / SMP_FILES[0]
    data = read_json(path, what="smp config")
    if not isinstance(data, Mapping):
        raise ModelError(f"smp config {path} holds a {type(data).__name__}, not a mapping of arguments.")
    name = data.get("_model_class")
    if not isinstance(name, str):
        raise ModelError(
            f"smp config {path}: _model_class is {name!r}; save_pretrained writes the architecture there "
            f"(one of {list(ARCHITECTURES)}). Re-save the model with model.save_pretrained(folder)."
        )
    if name not in ARCHITECTURES:
        raise ModelError(
            f"smp config {path}: _model_class is {name!r}, refused: tiler builds only smp's own architectures "
            f"{list(ARCHITECTURES)}. Nothing else named in a config is built."
        )
    for key in _NAMES:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ModelError(
                f"smp config {path}: {key} is {value!r}, a {type(value).__name__} where smp expects a name (e.g. "
                f"{_NAMES[key]!r}); re-save the model with model.save_pretrained(folder)."
            )
    return name, {k: v for k, v in data.items() if not k.startswith("_")}


_TORCHVISION_FAKE_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _declare_torchvision_ops() -> None:
    """Declare the two torchvision op schemas its import registers fake kernels for, when its C++ ops did not load.

    PyPI's torchvision wheel is linked against CUDA torch; next to the CPU build of torch its ``_C`` extension
    does not load, and ``import torchvision`` then fails registering fake kernels for ``nms``/``qnms`` ("operator
    torchvision::nms does not exist"). Declaring the schemas lets its pure-Python parts import (smp needs them);
    the detection ops themselves stay unavailable, and smp's segmentation models never call them.
    """
    with _DECLARING:  # the driver's planning thread and the in-process worker may import smp at once
        if _KEEP or (hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms")):
            return
        library = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901 - kept for the process lifetime
        for schema in _TORCHVISION_FAKE_OPS:
            library.define(schema)
        _KEEP.append(library)


_KEEP: list[Any] = []
_DECLARING = threading.Lock()


def import_smp() -> ModuleType:
    """Import segmentation_models_pytorch (working around a torchvision whose C++ ops cannot load here).

    Raises:
        ModelError: smp is not installed or still cannot be imported.
    """
    try:
        import segmentation_models_pytorch as smp
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise ModelError(f"segmentation_models_pytorch could not be imported ({err})") from err
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "timm",
                                                                                     "segmentation_models_pytorch"))]:
            del sys.modules[name]
        _declare_torchvision_ops()
        return import_smp()
    except Exception as err:  # noqa: BLE001 - any other import failure: not installed or broken
        raise ModelError(
            f"segmentation_models_pytorch could not be imported ({type(err).__name__}: {err}); install "
            f"tiler[models] (pip install -c constraints.txt 'tiler[models]')."
        ) from err
    return smp


def _check_size(cls: type[torch.nn.Module], kwargs: Mapping[str, Any], path: Path) -> None:
    """Refuse a config whose network would not fit in memory, counted on the meta device (nothing allocated)."""
    try:
        with torch.device("meta"):
            network = cls(**{**kwargs, **_FORCED})
    except Exception:  # noqa: BLE001 - the real build reports what the arguments got wrong
        return
    params = sum(p.numel() for p in network.parameters())
    check_network_size(params, source=f"smp config {path}", args=kwargs)


def _build(name: str, kwargs: Mapping[str, Any], path: Path) -> torch.nn.Module:
    smp = import_smp()
    cls = getattr(smp, name) if name in getattr(smp, "__all__", ()) else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelError(f"smp config {path}: {name!r} is not an architecture of this smp ({smp.__version__}).")
    _check_size(cls, kwargs, path)
    try:
        return cls(**{**kwargs, **_FORCED})  # type: ignore[no-any-return]
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError, IndexError, RuntimeError,
            MemoryError) as err:  # fmt: skip
        raise ModelError(
            f"smp {name} refused the arguments of {path} ({type(err).__name__}: {err}); the config was written by "
            "another smp version or edited. Re-save it with model.save_pretrained(folder)."
        ) from err


def open_smp(
    folder: Path, *, spec: ModelSpec | None, settings: Mapping[str, Any] | None = None, asked: str = "smp"
) -> Opened:
    """Build an smp model from a ``save_pretrained`` folder and load its safetensors weights.

    Args:
        folder: The folder holding ``config.json`` and ``model.safetensors``.
        spec: Must be None: the config gives the network.
        settings: Unused (smp's config records no normalisation or class names: give them in tiler's config).
        asked: The ``model.format`` asked for.

    Returns:
        The opened model, format ``"smp"`` (no MONAI spec; two classes for a one-channel model).

    """
    if spec is not None:
        raise ModelError(f"model {folder} is smp: it carries its own network, so a model spec does not apply.")
    name, kwargs = read_config(folder)
    weights = folder / SMP_FILES[1]
    if not weights.is_file():
        raise ReadError(f"smp folder {folder} has no {SMP_FILES[1]}; save the model with model.save_pretrained.")
    network = _build(name, kwargs, folder / SMP_FILES[0])  # its size checked before anything is allocated
    state = read_state(weights)
    built = f"smp {name} built from {folder / SMP_FILES[0]}"
    network = load_state(network, state, path=weights, built=built)
    classes = int(kwargs.get("classes", 1))
    if classes == 1:
        network = TwoClassLogits(network).eval()
        classes = 2
    return Opened("smp", None, lambda: network, partial(class_labels, classes, model=built))
