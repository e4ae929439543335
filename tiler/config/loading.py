"""Loading a job: a YAML file or a mapping → paths resolved, overrides applied → a validated :class:`JobConfig`."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tiler.config.completion import complete
from tiler.config.files import resolve_paths
from tiler.config.messages import show, validation_error
from tiler.config.overrides import apply_overrides
from tiler.config.schema import JobConfig
from tiler.errors import ConfigError
from tiler.yamlsafe import load_yaml


def parse_config(
    data: Mapping[str, Any] | None, *, source: str = "<config>", base_dir: str | Path | None = None
) -> JobConfig:
    """Validate a configuration mapping into a :class:`JobConfig`.

    Args:
        data: The configuration, as read from YAML.
        source: Name of where it came from (a file path), used in every message.
        base_dir: If given, relative paths are resolved against this directory; if None they are
            kept as written.

    Raises:
        ConfigError: One line per problem, naming ``source``, the dotted key, the value and the fix.

    """
    if data is None:
        raise ConfigError(
            f"{source}: the configuration is empty; fix: write the input, model and output sections "
            "(see configs/example.yaml)"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections, got {show(data)}; "
            "fix: write `input:`, `model:`, `output:` ... at the top level"
        )
    raw = copy.deepcopy(dict(data))
    if base_dir is not None:
        resolve_paths(raw, Path(base_dir))
    try:
        return JobConfig.model_validate(complete(raw))
    except ValidationError as exc:
        raise validation_error(exc, source) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read, resolve and validate a job configuration file.

    Relative paths written in the file are resolved against the file's directory; paths given in
    ``overrides`` against the current working directory.

    Args:
        path: The YAML file.
        overrides: ``key.path=value`` strings applied after reading (the CLI's ``--set``).

    Raises:
        ConfigError: The file is missing or unreadable, is not valid YAML, or holds invalid values.

    """
    file = Path(path)
    if not file.is_file():
        what = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise ConfigError(f"{file}: config file {what}; fix: check the path (relative to {Path.cwd()})")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{file}: config file cannot be read ({exc}); fix: check its permissions and encoding"
        ) from None
    data = load_yaml(text, str(file))
    if isinstance(data, dict):
        resolve_paths(data, file.resolve().parent)
        data = apply_overrides(data, overrides, source=f"{file} --set")
    elif overrides and data is None:
        data = apply_overrides({}, overrides, source=f"{file} --set")
    return parse_config(data, source=str(file))


def dump_config(cfg: JobConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML to ``path`` (all paths already absolute) and return the path."""
    out = Path(path)
    out.write_text(cfg.to_yaml(), encoding="utf-8")
    return out

