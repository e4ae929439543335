"""Where a job's outputs go, and the check that none of them would touch an input or a file tiler did not make."""

from __future__ import annotations

import os
from typing import Any

from tiler.config.schema import JobConfig
from tiler.errors import ConfigError
from tiler.exports import REGISTRY as EXPORTS
from tiler.exports.base import REPORT_FILES
from tiler.io.atomic import output_error
from tiler.io.objects import AnyPath, PathArg, as_path, lexists, resolved
from tiler.paths import is_object_url, local_realpath


def output_stem(store: PathArg) -> AnyPath:
    """The store's path without ``.zarr``: every file beside it is named from it.

    >>> output_stem("/out/scene.zarr").name, str(output_stem("s3://bucket/out/scene.zarr"))
    ('scene', 's3://bucket/out/scene')
    """
    path = as_path(store)
    return path.with_name(path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name)


def output_paths(store: PathArg) -> dict[str, AnyPath]:
    """Where each file of ``store``'s finishing goes: every export of the registry (sidecars included), then reports.

    >>> sorted(output_paths("/out/scene.zarr"))[:3]
    ['cog', 'cog_aux', 'dicom_seg']
    """
    base = output_stem(store)
    paths: dict[str, AnyPath] = {}
    for export in EXPORTS.values():
        paths.update(export.paths(base))
    paths.update({role: base.with_name(base.name + suffix) for role, suffix in REPORT_FILES.items()})
    return paths


RAY_WORKING_COPY = f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}"
"""Where Ray unpacks ``ray job submit --working-dir`` for a job (a temporary copy, deleted later)."""

def _zarr_root(path: str) -> str:
    """The outermost zarr hierarchy holding ``path`` (an array inside a store belongs to the whole store)."""
    root, here = path, os.path.dirname(path)
    while here != os.path.dirname(here) and any(
        os.path.exists(os.path.join(here, name)) for name in ("zarr.json", ".zgroup", ".zarray")
    ):
        root, here = here, os.path.dirname(here)
    return root


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_paths(cfg: JobConfig) -> None:
    """Refuse, before anything is written, outputs that would touch an input or a file tiler did not make.

    First, an output another live job is writing (its lock) is refused naming that job. Then the store and
    every file written beside it (exports, quicklook, reports, scores) must not be, contain or lie inside the
    input or the truth; an existing file at one of those paths must be one this store wrote
    (:meth:`~tiler.io.store.OutputStore.wrote`: recorded by an earlier run, or moved into place by a run killed
    before recording it, its content unchanged), never a user's file.

    Raises:
        OutputError: another live job holds the output's lock (naming it).
        ConfigError: naming the key, the path it would overwrite and the fix.
    """
    from tiler.io.lock import check_not_locked
    from tiler.io.store import OutputStore

    if is_object_url(cfg.output.path):
        try:
            as_path(cfg.output.path).parent.is_dir()  # one listing: the bucket exists and these credentials read it
        except OSError as exc:
            raise output_error(as_path(cfg.output.path), exc, what="reach the output") from exc
    check_not_locked(cfg.output.path)  # a live job's files are its own business: name it before any of them
    if RAY_WORKING_COPY in os.path.realpath(cfg.output.path):
        raise ConfigError(
            f"output.path: {cfg.output.path} lies inside Ray's temporary copy of `ray job submit --working-dir`, "
            "which Ray deletes after the job (the outputs would vanish); fix: give the config as an absolute path "
            "on storage the cluster sees (e.g. `python -m pipelines.segment $PWD/configs/x.yaml`) or set an "
            "absolute output.path with --set output.path=/data/out/x.zarr"
        )
    weights = cfg.model.weights
    if RAY_WORKING_COPY in os.path.realpath(weights) and not os.path.exists(weights):
        raise ConfigError(
            f"model.weights: {weights} is not in Ray's copy of --working-dir: `ray job submit` skips files that "
            ".gitignore excludes (models/, demo-output/); fix: give an absolute path the cluster can read"
        )
    sources = (("input.path", cfg.input.path), ("scoring.truth", cfg.scoring.truth))
    protected = {k: (resolved(p) if is_object_url(p) else _zarr_root(os.path.realpath(p)))
                 for k, p in sources if p is not None and (is_object_url(p) or local_realpath(p) is not None)}
    store = cfg.output.path
    paths = output_paths(store)
    targets = {"output.path": store, **{f"output.exports ({name}, beside output.path)": str(path)
                                        for name, path in paths.items()}}
    owner = OutputStore.open(store, mode="r") if OutputStore.is_tiler_store(store) else None
    for key, target in targets.items():
        real = resolved(target)
        for what, source in protected.items():
            if _inside(real, source) or _inside(source, real):
                raise ConfigError(
                    f"{key}: {target} would overwrite {what} {source} (or lie inside it); fix: set output.path to "
                    "another folder or name, e.g. --set output.path=<folder>/<name>.zarr"
                )
        if key != "output.path" and lexists(target) and (owner is None or not owner.wrote(target)):
            raise ConfigError(
                f"{key}: {target} already exists and was not written by the store {store}; tiler never replaces a "
                "file it did not make. Fix: move that file away, or set output.path to another name"
            )


def check_finished_exports(report: Any) -> None:
    """Add to a :class:`~tiler.io.verify.VerifyReport` the exports the store's last finishing asked for and lacks.

    The registry knows every file of every export; each one the recorded config's ``output.exports`` names must
    have a record. A complete store whose finishing asked for ``cog`` but holds no record of ``cog_aux`` gets a
    ``missing-export`` problem naming the file; a rerun of the job writes it.
    """
    from tiler.io.store import OutputStore
    from tiler.io.verify import Problem

    store = OutputStore.open(report.store, mode="r")
    if not store.complete:
        return
    config = store.attrs.get("config") or {}
    asked = (config.get("output") or {}).get("exports") or []
    records = store.export_records()
    for name in asked:
        export = EXPORTS.get(name)
        if export is None:
            continue  # a format of another tiler version: nothing to check it against
        for role, path in export.paths(output_stem(report.store)).items():
            if role not in records:
                report.problems.append(Problem(
                    "missing-export", str(path), None,
                    f"export {name!r} was asked for by the store's last finishing but its file {role} has no record; "
                    "rerun the job to write it",
                ))
