"""Checkpoints: saving and safely loading a model with its spec, normalisation and class names.

:func:`load_model` is the one entry point for every model source; the package formats (MONAI
bundles, smp folders, ONNX files) are read by their own modules in :mod:`tiler.model.sources`.
Three file formats are read here:

* ``project``: one ``torch.save`` file ``{"format": "tiler-checkpoint", "version": 1, "spec": ...,
  "normalization": ..., "class_names": [...], "class_colors": [...], "state_dict": ...}`` holding only
  plain types and tensors;
* ``state_dict``: a plain state dict (or ``{"state_dict": ...}``) whose spec the caller gives;
* ``torchscript``: a ``torch.jit.save`` archive (metadata in its ``tiler.json`` extra file when saved
  by :func:`save_torchscript`). A TorchScript file is a serialized program: loading it runs the code
  it was compiled from, so give only TorchScript files you trust.

Pickles are always loaded with ``weights_only=True``: a checkpoint never runs code when loaded. A file
that is not a ``torch.save`` file at all (an image, a text, a config) is named for what it is before
``torch.load`` sees it (:func:`tiler.model.sources.detect.check_weights_file`).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tiler.errors import ModelError, ReadError
from tiler.model.normalize import Normalization
from tiler.model.spec import ModelSpec, build_network
from tiler.palette import default_colors

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "FORMATS",
    "LoadedModel",
    "load_model",
    "save_checkpoint",
    "save_torchscript",
]

CHECKPOINT_FORMAT = "tiler-checkpoint"
CHECKPOINT_VERSION = 1
FORMATS = ("auto", "project", "state_dict", "monai", "torchscript", "smp", "onnx", "nnunet")
_TS_META = "tiler.json"


@dataclass
class LoadedModel:
    """A network ready for inference plus everything needed to feed it and name its outputs.

    Attributes:
        network: The module, in eval mode, on the CPU.
        spec: Its spec (None only for a TorchScript file saved without metadata and no spec given).
        normalization: How raw pixels are normalised before the network.
        class_names: One name per output channel.
        class_colors: One RGB colour per class.
        path: The file (or package folder) it came from.
        format: ``"project"``, ``"state_dict"``, ``"torchscript"``, ``"bundle"``, ``"smp"``, ``"onnx"`` or ``"nnunet"``.

    """

    network: torch.nn.Module
    spec: ModelSpec | None
    normalization: Normalization
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    path: Path | None = None
    format: str = "project"

    @property
    def spatial_dims(self) -> int | None:
        """2 or 3, when known from the spec."""
        return self.spec.spatial_dims if self.spec is not None else None

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        if self.spec is not None:
            return self.spec.out_channels
        return len(self.class_names)


def _is_colors(colors: Any) -> bool:
    """Whether ``colors`` is a sequence of RGB triples of ints 0..255."""
    if isinstance(colors, str | bytes) or not isinstance(colors, Sequence):
        return False
    return all(
        isinstance(c, Sequence) and not isinstance(c, str | bytes) and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        for c in colors
    )  # fmt: skip


def check_names_colors(names: Any, colors: Any, *, source: str | None = None) -> None:
    """Raise ModelError, naming ``source``, unless ``names`` is a list of strings and ``colors`` of RGB triples.

    Either may be None (not given).
    """
    where = f"{source}: " if source else ""
    if names is not None and (
        isinstance(names, str | bytes)
        or not isinstance(names, Sequence)
        or not all(isinstance(s, str | int) and not isinstance(s, bool) for s in names)
    ):
        raise ModelError(
            f"{where}class_names={names!r} must be a list of strings, one per class; fix the stored names."
        )
    if colors is not None and not _is_colors(colors):
        raise ModelError(
            f"{where}class_colors={colors!r} must be a list of [r, g, b] triples of whole numbers 0..255, one per "
            "class."
        )


def _names_colors(
    spec: ModelSpec | None,
    names: Sequence[str] | None,
    colors: Sequence[Sequence[int]] | None,
    *,
    source: str | None = None,
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    check_names_colors(names, colors, source=source)
    where = f"{source}: " if source else ""
    n = spec.out_channels if spec is not None else (len(names) if names else 0)
    out_names = tuple(str(s) for s in names) if names else tuple(f"class_{i}" for i in range(n))
    if spec is not None and len(out_names) != spec.out_channels:
        raise ModelError(
            f"{where}class_names={list(out_names)} has {len(out_names)} names but the model predicts "
            f"{spec.out_channels} classes; give one name per output channel."
        )
    out_colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors) if colors else default_colors(len(out_names))
    if len(out_colors) != len(out_names):
        raise ModelError(
            f"{where}class_colors has {len(out_colors)} colours for {len(out_names)} classes; give one each."
        )
    return out_names, out_colors


# ---------------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | os.PathLike[str],
    network: torch.nn.Module,
    *,
    spec: ModelSpec,
    normalization: Normalization | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write a project checkpoint (plain types and tensors only).

    Returns:
        The path written.

    """
    names, colors = _names_colors(spec, class_names, class_colors)
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
    names, colors = _names_colors(spec, class_names, class_colors)
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
    extra = {_TS_META: json.dumps(_meta(spec, normalization, class_names, class_colors))}
    torch.jit.save(module, str(out), _extra_files=extra)
    return out


# ---------------------------------------------------------------------------------- loading


def _refusal_reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if "unsupported" in ln.lower() or "global" in ln.lower():
            return ln
    return lines[0] if lines else "unsafe pickle"


MAX_UNCOMPRESSED = 8 * 2**30
"""Most bytes a checkpoint archive may inflate to."""
MAX_RATIO = 100
"""Most a checkpoint may inflate relative to its file size once it inflates past :data:`RATIO_FLOOR`."""
RATIO_FLOOR = 256 * 2**20


def check_archive_size(path: Path) -> None:
    """Refuse a zip checkpoint (``torch.save``, ``torch.jit.save``) that would inflate too far when loaded.

    Reads only the zip's directory: the sum of its members' uncompressed sizes must stay under
    :data:`MAX_UNCOMPRESSED`, and under :data:`MAX_RATIO` times the file size once past :data:`RATIO_FLOOR`
    (``torch.save`` stores members uncompressed, so a real checkpoint inflates by about 1x).

    Raises:
        ModelError: A zip bomb, naming the file and both sizes.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError) as err:
        raise ReadError(f"checkpoint {path} is a damaged zip archive ({err}); re-save it.") from err
    size = max(path.stat().st_size, 1)
    if total > MAX_UNCOMPRESSED or (total > RATIO_FLOOR and total > MAX_RATIO * size):
        raise ModelError(
            f"checkpoint {path} would inflate from {size / 2**20:.1f} MiB to {total / 2**30:.2f} GiB when loaded "
            f"(caps: {MAX_UNCOMPRESSED / 2**30:.0f} GiB, or {MAX_RATIO}x the file size); it was not loaded. "
            "Re-save the weights with torch.save (uncompressed) from a trusted source."
        )


def _safe_load(path: Path) -> Any:
    from tiler.model.sources.detect import check_weights_file

    check_weights_file(path)
    check_archive_size(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise ReadError(
                f"checkpoint {path} could not be read ({err}); the file is corrupt or not a PyTorch "
                "checkpoint. "
                f"Give a file written by torch.save or torch.jit.save."
            ) from err
        raise ModelError(
            f"checkpoint {path} was refused because it is not weights-only: loading it would run code "
            f"({_refusal_reason(err)}). Re-save it as a plain state dict "
            f"or a tiler checkpoint (tiler.model.checkpoint.save_checkpoint) from a trusted environment."
        ) from err
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways inside the unpickler
        raise ReadError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {err}); the file is corrupt or "
            "not a "
            f"PyTorch checkpoint. Give a file written by torch.save or torch.jit.save."
        ) from err


def check_state(
    state: Mapping[str, Any], network: torch.nn.Module, *, path: Path, built: str, fix: str
) -> None:
    """Raise ModelError naming the first entry of ``state`` that is not a tensor of ``network`` with its shape.

    Args:
        state: Tensor name → tensor, read from ``path``.
        network: The freshly built network the weights are meant for.
        path: The weights file, for messages.
        built: What the network was built from (``"UNet with args={...}"``), for messages.
        fix: What to do when the weights do not fit.
    """
    expected = network.state_dict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"weights {path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        if key not in expected:
            raise ModelError(
                f"weights {path}: tensor {key!r} (shape {tuple(value.shape)}) does not exist in the {built}; "
                f"the weights belong to another architecture or configuration: {fix}."
            )
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"weights {path}: tensor {key!r} has shape {tuple(value.shape)} in the file but "
                f"{tuple(expected[key].shape)} in the {built}; {fix}."
            )
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(
            f"weights {path}: {len(missing)} tensor(s) of the {built} are missing from the file, first "
            f"{missing[0]!r}; {fix}."
        )
def _strip_prefix(state: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a wrapper prefix (``module.`` from DataParallel, ...) when the names only fit without it."""
    keys = list(state)
    if all(k in expected for k in keys):
        return dict(state)
    for prefix in ("module.", "model.", "network.", "net."):
        if keys and all(k.startswith(prefix) and k[len(prefix) :] in expected for k in keys):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _network_from_state(
    state: Mapping[str, Any], spec: ModelSpec, path: Path, *, source: str | None = None
) -> torch.nn.Module:
    """The network of ``spec`` with the weights ``state`` read from ``path`` (``source``: where the spec came from)."""
    if not isinstance(state, Mapping):
        raise ModelError(
            f"checkpoint {path}: state_dict is a {type(state).__name__}, not a mapping of tensor names to "
            "tensors; save model.state_dict()."
        )
    network = build_network(spec, source=source or f"checkpoint {path} spec")
    state = _strip_prefix(state, network.state_dict())
    check_state(
        state, network, path=path, built=f"model built from the spec {spec.architecture} with args={spec.args}",
        fix=f"give the spec the weights were trained with (now {spec.to_dict()})",
    )
    network.load_state_dict(state, strict=True)
    return network.eval()


def _load_project(path: Path, data: Mapping[str, Any]) -> LoadedModel:
    version = data.get("version")
    if version != CHECKPOINT_VERSION:
        raise ModelError(
            f"checkpoint {path} has version={version!r}; this tiler reads version {CHECKPOINT_VERSION}. "
            f"Re-save it with this version of tiler."
        )
    for key in ("spec", "state_dict"):
        if key not in data:
            raise ModelError(f"checkpoint {path} misses key {key!r}; it is not a complete tiler checkpoint.")
    spec = ModelSpec.from_dict(data["spec"], source=f"checkpoint {path} spec")
    norm = Normalization.from_dict(
        data.get("normalization") or {"kind": "none"}, source=f"checkpoint {path} normalization"
    )
    names, colors = _names_colors(spec, data.get("class_names"), data.get("class_colors"), source=f"checkpoint {path}")
    network = _network_from_state(data["state_dict"], spec, path)
    return LoadedModel(network, spec, norm, names, colors, path, "project")


def _load_torchscript(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    check_archive_size(path)
    extra = {_TS_META: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as err:
        raise ReadError(f"TorchScript file {path} could not be loaded: {err}") from err
    return module.eval(), _torchscript_meta(path, extra[_TS_META])


def _torchscript_meta(path: Path, text: str | bytes) -> dict[str, Any]:
    """The ``tiler.json`` extra file of a TorchScript archive as a dict ({} when absent)."""
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelError(
            f"TorchScript file {path}: its {_TS_META} is not JSON ({err}); re-save it with "
            "tiler.model.checkpoint.save_torchscript, or give model.spec in the config."
        ) from None
    if not isinstance(meta, dict):
        raise ModelError(
            f"TorchScript file {path}: its {_TS_META} holds a {type(meta).__name__}, not an object with keys spec, "
            "normalization, class_names, class_colors; re-save it with tiler.model.checkpoint.save_torchscript."
        )
    return meta


def load_model(
    path: str | os.PathLike[str],
    *,
    spec: ModelSpec | Mapping[str, Any] | None = None,
    normalization: Normalization | Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    format: str = "auto",
    onnx: Mapping[str, Any] | None = None,
    nnunet: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a model from a project checkpoint, a plain state dict, a TorchScript file or a model package.

    Args:
        path: The checkpoint file, ONNX file, MONAI bundle folder, smp ``save_pretrained`` folder or nnU-Net
            results folder.
        spec: The network spec; required for a plain state dict, overrides the file's otherwise.
        normalization: Overrides the stored normalisation (default: stored, or ``none``).
        class_names: Overrides the stored class names.
        class_colors: Overrides the stored class colours.
        format: ``"auto"`` (detect), ``"project"``, ``"state_dict"`` / ``"monai"`` (a state dict of a
            ``monai.networks.nets`` class, or with a folder a MONAI bundle), ``"torchscript"``, ``"smp"``,
            ``"onnx"`` or ``"nnunet"``.
        onnx: Layout of an ONNX model (:class:`tiler.model.sources.onnx.OnnxOptions` fields).
        nnunet: nnU-Net settings (:class:`tiler.model.sources.nnunet.NnunetSettings` fields, plus ``image_stats``).

    Returns:
        The network (eval mode, CPU) with its spec, normalisation and class names.

    Raises:
        ReadError: The file is missing or not a readable checkpoint.
        ModelError: The file would run code when loaded, its tensors do not fit the spec, or the spec is
            missing or invalid.

    """
    if format not in FORMATS:
        raise ModelError(f"checkpoint format={format!r} is unknown; choose one of {list(FORMATS)}.")
    from tiler.model.sources.detect import resolve_source

    p = Path(path)
    source = resolve_source(p, format)
    if isinstance(spec, Mapping):
        spec = ModelSpec.from_dict(spec)
    if isinstance(normalization, Mapping):
        normalization = Normalization.from_dict(normalization)
    if source == "nnunet":
        if spec is not None:
            raise ModelError(f"model {p} is an nnU-Net folder: its plans give the network, so a spec does not apply.")
        from tiler.model.sources.nnunet import load_nnunet

        return load_nnunet(p, options=nnunet, normalization=normalization, class_names=class_names,
                           class_colors=class_colors)  # fmt: skip
    if source in ("bundle", "smp", "onnx"):
        return _load_package(source, p, spec, normalization, class_names, class_colors, onnx)

    if source == "torchscript":
        module, meta = _load_torchscript(p)
        file_spec = ModelSpec.from_dict(meta["spec"], source=f"{p} {_TS_META}") if meta.get("spec") else None
        use_spec = spec or file_spec
        norm = normalization or Normalization.from_dict(
            meta.get("normalization") or {"kind": "none"}, source=f"{p} {_TS_META} normalization"
        )
        check_names_colors(meta.get("class_names"), meta.get("class_colors"), source=f"{p} {_TS_META}")
        names, colors = _names_colors(
            use_spec, class_names or meta.get("class_names"), class_colors or meta.get("class_colors"),
            source=f"TorchScript file {p}",
        )
        return LoadedModel(module, use_spec, norm, names, colors, p, "torchscript")

    from tiler.model.sources.files import read_state

    data = read_state(p)
    if not isinstance(data, Mapping):
        raise ModelError(
            f"checkpoint {p} holds a {type(data).__name__}, not a state dict or tiler checkpoint; "
            f"save model.state_dict() or use tiler.model.checkpoint.save_checkpoint."
        )
    if data.get("format") == CHECKPOINT_FORMAT and format in ("auto", "project"):
        loaded = _load_project(p, data)
        if spec is not None and spec != loaded.spec:
            loaded.network = _network_from_state(data["state_dict"], spec, p)
            loaded.spec = spec
        if normalization is not None:
            loaded.normalization = normalization
        if class_names is not None or class_colors is not None:
            loaded.class_names, loaded.class_colors = _names_colors(
                loaded.spec, class_names or loaded.class_names, class_colors, source=f"checkpoint {p}"
            )
        return loaded
    if format == "project":
        raise ModelError(f"checkpoint {p} is not a tiler checkpoint (no format={CHECKPOINT_FORMAT!r} key).")
    state = data.get("state_dict", data) if isinstance(data.get("state_dict"), Mapping) else data
    if spec is None:
        raise ModelError(
            f"checkpoint {p} is a plain state dict with no spec; pass spec=ModelSpec(architecture=..., "
            "spatial_dims=..., in_channels=..., out_channels=..., args=...) (the model section of the "
            "config)."
        )
    network = _network_from_state(state, spec, p)
    names, colors = _names_colors(spec, class_names, class_colors, source=f"checkpoint {p}")
    return LoadedModel(network, spec, normalization or Normalization(), names, colors, p, "state_dict")


def _load_package(
    source: str,
    path: Path,
    spec: ModelSpec | None,
    normalization: Normalization | None,
    class_names: Sequence[str] | None,
    class_colors: Sequence[Sequence[int]] | None,
    onnx: Mapping[str, Any] | None,
) -> LoadedModel:
    """Dispatch a package folder or ONNX file to its source module (imported only when used)."""
    if source == "bundle":
        from tiler.model.sources.bundle import load_bundle

        return load_bundle(
            path, spec=spec, normalization_override=normalization, class_names_override=class_names,
            class_colors=class_colors,
        )  # fmt: skip
    if spec is not None:
        raise ModelError(f"model {path} is {source}: it carries its own network, so a model spec does not apply.")
    if source == "smp":
        from tiler.model.sources.smp import load_smp

        return load_smp(path, normalization=normalization, class_names=class_names, class_colors=class_colors)
    from tiler.model.sources.onnx import load_onnx

    return load_onnx(
        path, options=onnx, normalization=normalization, class_names=class_names, class_colors=class_colors
    )
