"""MONAI bundles: the network of ``configs/inference.json`` built from literal ``network_def``, weights from models..

A bundle config is a program for MONAI's config parser: ``$`` strings are Python expressions, ``@``
strings reference (and run) other entries, ``%`` strings pull in other files, and every ``_target_`` is
instantiated. tiler runs none of it: it reads ``network_def`` as data, accepts it only when its
``_target_`` names an allowed ``monai.networks.nets`` class and every argument is a literal, and
ignores the rest of the config (``network``, ``device``, ``inferer``... are never evaluated).

From the package it also takes, when present:

* class names from ``configs/metadata.json`` (``network_data_format.outputs.<key>.channel_def``);
* the intensity window of a ``ScaleIntensityRange(d)`` transform with literal arguments in
  ``preprocessing``; any other intensity transform there is refused unless the config gives
  ``model.normalization``, since tiler would silently skip it.

A YAML config is read by the job files' loader (:func:`tiler.yamlsafe.load_yaml`: unique keys,
aliases bounded, self-referencing anchors refused), and any config nesting deeper than
:data:`tiler.model.sources.files.MAX_DEPTH` is refused; the network's size is checked before its
weights are read (:func:`tiler.model.spec.check_size`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from tiler.errors import ConfigError, ModelError, ReadError
from tiler.model.loaded import Opened, names_colors
from tiler.model.normalize import Normalization
from tiler.model.sources.detect import BUNDLE_CONFIGS, BUNDLE_WEIGHTS, bundle_config
from tiler.model.sources.files import check_depth, read_json, read_state, state_of
from tiler.model.spec import ARCHITECTURES, ModelSpec, check_size, resolve_architecture
from tiler.model.weights import network_from_state
from tiler.yamlsafe import load_yaml

if TYPE_CHECKING:
    import torch

__all__ = ["WEIGHTS", "class_names", "network_spec", "normalization", "open_bundle", "read_config"]

WEIGHTS = BUNDLE_WEIGHTS
_MARKS = {
    "$": "a '$' string is a Python expression that MONAI evaluates",
    "@": "an '@' string is a reference that MONAI's config parser resolves (and may run)",
    "%": "a '%' string is a macro that pulls in another config file",
}
_SPECIAL = {
    "_requires_": "makes MONAI build other components first",
    "_mode_": "makes MONAI call the target instead of instantiating it",
    "_disabled_": "can make MONAI skip the component",
}
_SHAPE_KEYS = ("spatial_dims", "in_channels", "out_channels")
_SCALE_RANGE = ("ScaleIntensityRange", "ScaleIntensityRanged")
_INTENSITY = re.compile(r"Intensity|Normaliz|HistogramNorm")


def read_config(path: Path) -> Mapping[str, Any]:
    """The bundle config as plain data: JSON, or YAML through the job files' loader (unique keys, bounded aliases).

    Raises:
        ReadError: The file cannot be read or parsed.
        ModelError: A YAML alias bomb or self-referencing anchor, or a document that is not a mapping.

    """
    if path.suffix == ".json":
        data = read_json(path, what="bundle config")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ReadError(f"bundle config {path} could not be read ({err}); give the bundle folder.") from err
        try:
            data = load_yaml(text, f"bundle config {path}")
        except ConfigError as err:
            raise ModelError(str(err)) from None
        check_depth(data, path, what="bundle config")
    if not isinstance(data, Mapping):
        raise ModelError(f"bundle config {path} holds a {type(data).__name__}, not a mapping of entries.")
    return data


def _check_literal(value: Any, key: str, source: str) -> None:
    """Raise naming ``key`` unless ``value`` is plain data MONAI would use as it is."""
    if isinstance(value, str):
        reason = _MARKS.get(value[:1])
        if reason is not None:
            raise ModelError(
                f"{source}: {key} is {value!r}, refused: {reason}, and tiler loads bundles without running "
                f"code from them. Write the literal value in network_def (numbers, strings, lists)."
            )
    elif isinstance(value, Mapping):
        if "_target_" in value:
            raise ModelError(
                f"{source}: {key} has its own _target_ {value['_target_']!r}, refused: MONAI would instantiate "
                "it, and tiler instantiates only the network itself. Write its arguments as literals."
            )
        for k, v in value.items():
            _check_literal(v, f"{key}.{k}", source)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_literal(v, f"{key}[{i}]", source)
    elif value is not None and not isinstance(value, bool | int | float):
        raise ModelError(f"{source}: {key} is a {type(value).__name__} ({value!r}); give a JSON literal.")


def _constructor_defaults(architecture: str) -> dict[str, Any]:
    """The class's own plain default arguments (so that a spec with no extra args is not given tiler's defaults)."""
    out: dict[str, Any] = {}
    for p in inspect.signature(ARCHITECTURES[architecture].__init__).parameters.values():
        if p.name in (*_SHAPE_KEYS, "self") or p.default is inspect.Parameter.empty:
            continue
        try:
            _check_literal(p.default, p.name, "")
        except ModelError:
            continue
        out[p.name] = p.default
    return out


def network_spec(config: Mapping[str, Any], *, source: str) -> ModelSpec:
    """The spec of a bundle's ``network_def``, refusing anything but a literal allowed MONAI network.

    Raises:
        ModelError: ``network_def`` is missing, is an expression or reference, names a class outside the
            allowed ``monai.networks.nets`` classes, uses a special key, or holds a non-literal argument.

    """
    net = config.get("network_def")
    if net is None:
        raise ModelError(f"{source} has no network_def entry; tiler builds the network from it. Add it.")
    if not isinstance(net, Mapping):
        _check_literal(net, "network_def", source)
        raise ModelError(f"{source}: network_def is {net!r}, not a component with a _target_.")
    target = net.get("_target_")
    if not isinstance(target, str):
        raise ModelError(f"{source}: network_def._target_ is {target!r}; name a monai.networks.nets class.")
    _check_literal(target, "network_def._target_", source)
    architecture = resolve_architecture(target)
    if architecture is None:
        raise ModelError(
            f"{source}: network_def._target_ is {target!r}, refused: tiler instantiates only these "
            f"monai.networks.nets classes: {sorted(ARCHITECTURES)}. Nothing else named in a bundle is built."
        )
    for key in net:
        if key.startswith("_") and key not in ("_target_", "_desc_"):
            why = _SPECIAL.get(key, "is a MONAI special key")
            raise ModelError(f"{source}: network_def.{key} is refused: it {why}. Remove it from network_def.")
    args = {k: v for k, v in net.items() if not k.startswith("_")}
    for key, value in args.items():
        _check_literal(value, f"network_def.{key}", source)
    missing = [k for k in _SHAPE_KEYS if k not in args]
    if missing:
        raise ModelError(f"{source}: network_def misses {missing}; give them as literal integers.")
    shape = {k: args.pop(k) for k in _SHAPE_KEYS}
    return ModelSpec.from_dict(
        {"architecture": architecture, **shape, "args": args or _constructor_defaults(architecture)},
        source=f"{source} network_def",
    )


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def normalization(config: Mapping[str, Any], *, source: str) -> Normalization | None:
    """The fixed normalisation the bundle's ``preprocessing`` applies, when tiler can read it as data.

    ``ScaleIntensityRange(d)(a_min, a_max, b_min, b_max, clip)`` maps ``[a_min, a_max]`` linearly onto
    ``[b_min, b_max]`` (``[0, 1]`` without b): that is ``(x - mean) / std`` with
    ``std = (a_max - a_min) / (b_max - b_min)`` and ``mean = a_min - b_min · std``, clipped to the window
    ``(a_min, a_max)`` when ``clip`` is true.

    Returns:
        The normalisation, or None when the preprocessing holds no intensity transform.

    Raises:
        ModelError: The preprocessing holds an intensity transform tiler cannot express as fixed
            statistics (per-image normalisation, several ranges, non-literal arguments).

    """
    found: list[Mapping[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            target = value.get("_target_")
            if isinstance(target, str) and _INTENSITY.search(target.rsplit(".", 1)[-1]):
                found.append(value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(config.get("preprocessing"))
    if not found:
        return None
    fix = "set model.normalization to the fixed statistics it applies"
    if len(found) > 1 or str(found[0]["_target_"]).rsplit(".", 1)[-1] not in _SCALE_RANGE:
        names = [str(t["_target_"]) for t in found]
        raise ModelError(
            f"{source}: preprocessing applies {names}; tiler reads only one ScaleIntensityRange(d) with literal "
            f"arguments as a fixed normalisation; {fix}."
        )
    t = found[0]
    a_min, a_max, b_min, b_max = (t.get(k) for k in ("a_min", "a_max", "b_min", "b_max"))
    if b_min is None and b_max is None:
        b_min, b_max = 0.0, 1.0
    numbers = [float(v) for v in (a_min, a_max, b_min, b_max) if _number(v)]
    if len(numbers) != 4 or numbers[1] <= numbers[0] or numbers[3] <= numbers[2]:
        raise ModelError(
            f"{source}: preprocessing {t['_target_']} has a_min={a_min!r}, a_max={a_max!r}, b_min={b_min!r}, "
            f"b_max={b_max!r}; tiler needs literal numbers with a_min < a_max and b_min < b_max, or {fix}."
        )
    lo, hi, b_lo, b_hi = numbers
    std = (hi - lo) / (b_hi - b_lo)
    mean = lo - b_lo * std
    if t.get("clip") is True:
        return Normalization("window", mean=(mean,), std=(std,), window=(lo, hi))
    return Normalization("meanstd", mean=(mean,), std=(std,))


def class_names(folder: Path, out_channels: int) -> tuple[str, ...] | None:
    """Class names from ``configs/metadata.json`` ``network_data_format.outputs.*.channel_def``, when complete."""
    path = folder / "configs" / "metadata.json"
    if not path.is_file():
        return None
    meta = read_json(path, what="bundle metadata")
    if not isinstance(meta, Mapping):
        raise ModelError(f"bundle metadata {path} holds a {type(meta).__name__}, not a mapping; fix or remove it.")
    found: Any = meta
    for key in ("network_data_format", "outputs"):
        found = found.get(key, {})
        if not isinstance(found, Mapping):
            raise ModelError(
                f"bundle metadata {path}: {key} is {found!r}, not a mapping; MONAI writes "
                '"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", ...}}}}. Fix or '
                "remove it (or give model.class_names)."
            )
    for name, output in found.items():
        channels = output.get("channel_def") if isinstance(output, Mapping) else None
        if not isinstance(channels, Mapping):
            continue
        for k, v in channels.items():
            if isinstance(v, bool) or not isinstance(v, str | int):
                raise ModelError(
                    f"bundle metadata {path}: network_data_format.outputs.{name}.channel_def[{k!r}] is {v!r}, not a "
                    "class name; give each channel's name as a string (or give model.class_names)."
                )
        by_index = {str(k): str(v) for k, v in channels.items()}
        if set(by_index) == {str(i) for i in range(out_channels)}:
            return tuple(by_index[str(i)] for i in range(out_channels))
    return None


def _weights(folder: Path) -> Path:
    for name in WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ReadError(f"MONAI bundle {folder} has no weights ({' or '.join(WEIGHTS)}); add the trained state dict.")


def open_bundle(
    folder: Path, *, spec: ModelSpec | None, settings: Mapping[str, Any] | None = None, asked: str = "monai"
) -> Opened:
    """Open a bundle: the network of its literal ``network_def`` (or ``spec``), its weights read when it is built.

    Its preprocessing (:func:`normalization`) and ``metadata.json`` class names (:func:`class_names`) are read
    only when the caller gives none, before the weights (``models/model.pt`` weights-only, or safetensors).

    Args:
        folder: The bundle folder (holding ``configs/inference.json``).
        spec: Build this network instead of ``network_def`` (which is then not read).
        settings: Unused (a bundle has no settings of its own).
        asked: The ``model.format`` asked for.

    Returns:
        The opened bundle, format ``"monai"``.

    """
    config_path = bundle_config(folder)
    if config_path is None:
        raise ReadError(f"{folder} is not a MONAI bundle: none of {list(BUNDLE_CONFIGS)} exists in it.")
    config = read_config(config_path)
    source = f"bundle config {config_path}"
    use_spec = spec if spec is not None else network_spec(config, source=source)
    built_from = f"{source} network_def" if spec is None else "model.spec"
    check_size(use_spec, source=built_from)  # before the weights are read or anything allocated

    def network() -> torch.nn.Module:
        weights = _weights(folder)
        return network_from_state(state_of(read_state(weights), weights), use_spec, weights, source=built_from)

    return Opened(
        "monai", use_spec, network, partial(names_colors, use_spec, source=f"MONAI bundle {folder}"),
        normalization=lambda: normalization(config, source=source),
        class_names=lambda: class_names(folder, use_spec.out_channels),
    )  # fmt: skip
