"""The files a job names: relative paths resolved against the config file, and the files it reads checked to exist.

``input.path``, ``model.weights``, ``output.path`` and ``scoring.truth`` written in a config file are
resolved against that file's directory, unless absolute, a GDAL virtual path or a URL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tiler.config.schema import JobConfig
from tiler.errors import ConfigError
from tiler.paths import is_remote

PATH_KEYS = (("input", "path"), ("model", "weights"), ("output", "path"), ("scoring", "truth"))
"""The ``(section, key)`` pairs that hold a path, resolved when read from a file or an override."""


def resolve(path: Any, base: Path) -> Any:
    """``path`` made absolute against ``base`` unless absolute, a GDAL virtual path or a URL."""
    if not isinstance(path, str) or not path or is_remote(path):
        return path
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return expanded
    return os.path.normpath(os.path.join(base, expanded))


_READ_KEYS = (("input", "path"), ("model", "weights"), ("scoring", "truth"))
"""The path keys a job reads (they must exist before it starts); output.path is written."""


def missing_files(cfg: JobConfig) -> list[tuple[str, str]]:
    """``(dotted key, path)`` of every local file the job reads that does not exist (remote paths not checked)."""
    out: list[tuple[str, str]] = []
    for section, key in _READ_KEYS:
        path = getattr(getattr(cfg, section), key)
        if isinstance(path, str) and not is_remote(path) and not os.path.exists(path):
            out.append((f"{section}.{key}", path))
    return out


def check_files(cfg: JobConfig, *, source: str | None = None) -> None:
    """Raise one ConfigError listing every missing file the job reads, with its key and the fix.

    Args:
        cfg: The job.
        source: The config file, named in the message when given.

    Raises:
        ConfigError: At least one of input.path, model.weights, scoring.truth is a local path that does not exist.
    """
    missing = missing_files(cfg)
    if not missing:
        return
    where = f" named in {source}" if source else " the job reads"
    lines = [f"{len(missing)} file{'s' if len(missing) != 1 else ''}{where} do{'es' if len(missing) == 1 else ''} "
             "not exist:"]
    lines += [f"  {key}: {path}" for key, path in missing]
    sets = " ".join(f"--set {key}=..." for key, _ in missing)
    unscored = " (or --set scoring.truth=null to run without a score)" if "scoring.truth" in dict(missing) else ""
    lines.append(
        f"fix: point each key at your file, e.g. `tiler run {source or 'CONFIG'} {sets}`{unscored}; or run "
        "`make demo` first: it writes a scene, its truth and the demo models under demo-output/, which "
        "configs/demo-*.yaml and configs/archive.yaml read"
    )
    from tiler.redact import redact

    raise ConfigError(redact("\n".join(lines)))


def resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Resolve every path key of a raw config mapping against ``base``, in place."""
    for section, key in PATH_KEYS:
        part = data.get(section)
        if isinstance(part, dict) and key in part:
            part[key] = resolve(part[key], base)

