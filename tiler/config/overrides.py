"""Overrides: ``key.path=value`` strings (the CLI's ``--set``) applied to a raw config mapping, keys checked.

Values are YAML (``[512,512]``, ``2``, ``null``, ``true``); a path given as an override is resolved
against the current working directory, as a shell user expects.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tiler.config.files import PATH_KEYS, resolve
from tiler.config.schema import JobConfig, is_free_mapping, model_of
from tiler.errors import ConfigError


def apply_overrides(
    data: Mapping[str, Any],
    overrides: Sequence[str],
    *,
    base_dir: str | Path | None = None,
    source: str = "--set",
) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``key.path=value`` overrides applied.

    Values are parsed with ``yaml.safe_load`` (``[512,512]``, ``2``, ``null``, ``true``). Path keys
    (``input.path``, ``model.weights``, ``output.path``, ``scoring.truth``) are resolved against
    ``base_dir`` (default: the current working directory).

    Args:
        data: The raw configuration mapping.
        overrides: Strings such as ``tiling.tile=[512,512]`` or ``engine.actors=2``.
        base_dir: Directory that relative path values are resolved against.
        source: Where the overrides came from, for messages.

    Raises:
        ConfigError: An override without ``=``, an unknown key path, or a value YAML cannot parse.

    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"{source}: override {item!r} is not key.path=value; "
                "fix: write e.g. tiling.tile=[512,512] or engine.actors=2"
            )
        parts = key.split(".")
        _check_key_path(parts, source)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{source}: override {key}: value {text!r} is not valid YAML ({exc}); "
                "fix: quote strings, write lists as [a, b]"
            ) from None
        if (parts[0], parts[-1]) in PATH_KEYS and len(parts) == 2:
            value = resolve(value, base)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _check_key_path(parts: Sequence[str], source: str) -> None:
    """Raise ConfigError unless ``parts`` names a key of the config schema (or lies in a free mapping)."""
    model: type[BaseModel] | None = JobConfig
    for i, part in enumerate(parts):
        if model is None:
            return
        where = ".".join(parts[:i]) or "the top level"
        if part not in model.model_fields:
            valid = sorted(model.model_fields)
            close = difflib.get_close_matches(part, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key {'.'.join(parts)!r}{hint}; "
                f"fix: valid keys under {where}: {', '.join(valid)}"
            )
        annotation = model.model_fields[part].annotation
        model = model_of(annotation)
        if model is None and i < len(parts) - 1 and not is_free_mapping(annotation):
            raise ConfigError(
                f"{source}: key {'.'.join(parts[: i + 1])!r} is a value, not a section, "
                f"so {'.'.join(parts)!r} cannot be set; fix: set {'.'.join(parts[: i + 1])}=... instead"
            )

