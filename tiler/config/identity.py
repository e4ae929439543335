"""The identity of a job's configuration, in two parts: what the store holds, and what the job finishes with.

* :func:`pixels_hash` identifies the *stored arrays*: the labels and probabilities, the block layout, the
  store's class names and colours. An output store records it when it is created; a store holding
  another pixels hash is refused (or replaced with ``--overwrite``), and blocks are resumed from their
  records only under the same one.
* :func:`config_hash` is the *job's* identity: the pixels hash plus what the *finishing* writes from the
  store (the exports, the polygon settings, the scores). The archive ledger keys its rows by it (an input
  is skipped when its fingerprint is done with the same config hash), the report carries it, and a store
  records the config hash of its last finishing beside ``complete``.

So a job that changes only the finishing (an added export, a new truth, other polygon settings) reuses
every block of an existing store: it clears ``complete``, writes the exports now asked for, rescores,
rewrites the reports and marks the store complete again, without running the model.

Covered by the pixels hash:

* ``input``: the path and every reading option (bands, level/mpp, mask, threshold, ...).
* ``model``: the weights' *content* (sha256 of a local file, else its path; for a package folder and for
  an ONNX graph's external data, the sha256 of every file the model reads: see below), spec, normalisation,
  precision, test-time flips, nnU-Net and ONNX settings, class names and class colours (the store keeps
  the names and colours in its attributes, which every export reads).
* ``tiling``: all of it (the block too: resume records are per block).
* ``engine.skip_empty`` (skipped tiles become nodata).
* ``output``: chunks, probability dtype, nodata and background labels.

Covered by the config hash besides:

* ``output.exports`` (in any order), and the polygon settings (``min_polygon_pixels``,
  ``polygon_classes``) when a polygon export is asked for.
* ``scoring``: truth, ignore_index, boundary_width and num_classes, when a truth is given.

Excluded from both, and why:

* ``engine`` scheduling (address, actors, GPUs/CPUs per actor, in-flight, restarts, retries,
  prefetch), ``model.device``, ``model.batch_size`` and ``model.threads``: where and how fast the
  work runs, never which pixels it writes (partition invariance), so a job may resume with another
  actor count or on other hardware.
* ``input.gdal``: cache size, threads and options are I/O tuning, and the options may carry
  credentials that rotate; none of them change the pixels read.
* ``model.format``: how the weights file is opened; a file loads one way only, so an explicit format
  and ``auto`` build the same network.
* ``output.path``: where the store is, not what it holds (the store carries its own hash).
* The scoring keys when there is no truth (nothing is scored), and the polygon settings when no
  polygon export is asked for (nothing is drawn).
* Command-line and runtime settings that are not config keys (``--quiet``, progress, ``--engine``).
* The truth file's content (like the input's, only its path): hashing a truth as large as the scene on
  every run would cost more than the run; the archive fingerprints inputs, not truths.

Keys covered since the hash first existed (``tiling.rule``, and later ``model.onnx``,
``model.class_names``, ``model.class_colors``, the exports, polygon settings and scoring) enter the
hashed payload only when set away from their defaults, so a config that leaves them out keeps the
hash it always had and its stores and ledger rows stay valid. For such a config (no exports, no truth)
the two hashes are equal: the config hash is the pixels hash's payload with the finishing keys added to
it, never a second hash over the first.

The weights' content, stated once (:func:`weights_identity`): a single model file is ``{"sha256": ...}``, as
it always was; an ONNX graph with external data adds ``"files": {location: sha256}``; a package folder is
``{"files": {relative path: sha256}}`` over the files its source reads (a MONAI bundle's config, metadata
and weights; an smp folder's ``config.json`` and ``model.safetensors``; an nnU-Net folder's plans, dataset
and chosen folds' checkpoints: :func:`tiler.model.sources.manifest.model_files`), so a folder retrained in
place, or an external data file rewritten, changes the pixels hash. A remote model, or a folder of no known
kind, is identified by its path. Every sha256 is cached by (path, size, mtime).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tiler.config.schema import JobConfig, ModelConfig
from tiler.exports import REGISTRY as EXPORTS
from tiler.paths import is_object_url, is_remote

__all__ = ["config_hash", "export_settings", "pixels_hash", "weights_identity"]


def _file_sha256(path: str) -> str | None:
    """Return the sha256 of a local file; None for a remote or missing file.

    Cached by (path, size, mtime), so an archive run hashes its checkpoint once, not once per input.
    """
    if is_remote(path) or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return _sha256_cached(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def pixels_hash(cfg: JobConfig) -> str:
    """Return a 16-hex-digit identity of what the output store holds: pixels, block layout, class names and colours.

    An existing store is resumed (or finished again) only under the same pixels hash. See the module
    docstring for what is covered and what is left out, and why.
    """
    return _digest(_pixels_payload(cfg))


def config_hash(cfg: JobConfig) -> str:
    """Return a 16-hex-digit identity of everything the job writes: the pixels hash's keys, exports and scores.

    The archive ledger, the report and the store's record of its last finishing carry it. Equal to
    :func:`pixels_hash` when the job has no exports and no truth.
    """
    payload = _pixels_payload(cfg)
    out = cfg.output
    if out.exports:
        payload["output"]["exports"] = sorted(out.exports)
    drawn_with: dict[str, Any] = {}
    for name in out.exports:
        drawn_with.update(export_settings(cfg, name))
    if drawn_with:  # under the key it always had (only polygon exports have settings), so hashes stay the same
        payload["output"]["polygons"] = drawn_with
    if cfg.scoring.truth is not None:
        payload["scoring"] = cfg.scoring.model_dump(mode="json")
    return _digest(payload)


def export_settings(cfg: JobConfig, export: str) -> dict[str, Any]:
    """The settings an export's file depends on besides the store: its registry entry's ``output`` keys.

    Only the polygon exports have any (``min_polygon_pixels``, ``polygon_classes``); a COG, NIfTI, OME-Zarr or
    quicklook is drawn from the store and the input alone. An export made from a store with the same pixels
    hash and the same settings may be kept when the job is finished again.
    """
    include: dict[str, Any] = {}
    for key in EXPORTS[export].settings:  # "dicom.segmentation_type" names a key of a nested section
        head, _, tail = key.partition(".")
        include[head] = {**include.get(head, {}), tail: True} if tail else True
    return cfg.output.model_dump(mode="json", include=include)


def _pixels_payload(cfg: JobConfig) -> dict[str, Any]:
    """The hashed payload of :func:`pixels_hash` (the base of :func:`config_hash`'s)."""
    out = cfg.output
    # left out unset, so older hashes still match
    unset = {k for k in ("series", "region", "assets") if getattr(cfg.input, k) is None}
    return {
        "version": 1,
        "input": cfg.input.model_dump(mode="json", exclude={"gdal"} | unset),
        "model": _model_part(cfg),
        # the default step rule is left out so that hashes from before the rule existed still match
        "tiling": cfg.tiling.model_dump(mode="json", exclude={"rule"} if cfg.tiling.rule == "overlap" else None),
        "engine": {"skip_empty": cfg.engine.skip_empty},
        "output": out.model_dump(mode="json", include={"chunks", "probabilities", "nodata_label", "background_label"}),
    }


def weights_identity(model: ModelConfig) -> dict[str, Any]:
    """The identity of the weights' content: ``{"sha256": ...}``, ``{"files": {...}}`` or ``{"path": ...}``.

    See the module docstring. A single file without external data keeps the identity it always had.
    """
    if is_object_url(model.weights):  # the cached copy's content, as for the same file on disk
        from tiler.model.fetch import local_weights

        model = model.model_copy(update={"weights": local_weights(model.weights)})
    if is_remote(model.weights):
        return {"path": model.weights}
    from tiler.model.sources.manifest import model_files

    nnunet = model.nnunet
    files = model_files(
        model.weights, format=model.format,
        nnunet_folds=[str(f) for f in nnunet.folds] if nnunet is not None and nnunet.folds is not None else None,
        nnunet_checkpoint=nnunet.checkpoint if nnunet is not None else "checkpoint_final.pth",
    )  # fmt: skip
    digests = {f: _file_sha256(str(f)) for f in files or ()}
    root = Path(model.weights)
    if not files or any(d is None for d in digests.values()):
        return {"path": model.weights}
    if root.is_file():
        part: dict[str, Any] = {"sha256": digests[files[0]]}
        if len(files) > 1:  # an ONNX graph's external data, by the location the graph gives
            part["files"] = {Path(os.path.relpath(f, root.parent)).as_posix(): digests[f] for f in files[1:]}
        return part
    return {"files": {f.relative_to(root).as_posix(): digests[f] for f in files}}


def _model_part(cfg: JobConfig) -> dict[str, Any]:
    """The model keys of the identity; onnx settings, class names and colours only when given."""
    model = cfg.model
    part = {
        **model.model_dump(mode="json", include={"spec", "normalization", "precision", "tta_flips"}),
        **({"nnunet": model.nnunet.model_dump(mode="json")} if model.nnunet is not None else {}),
        "weights": weights_identity(model),
    }
    onnx = model.onnx.model_dump(mode="json", exclude_none=True) if model.onnx is not None else {}
    if onnx:  # an empty section means the file's own metadata, as no section does
        part["onnx"] = onnx
    if model.class_names is not None:
        part["class_names"] = list(model.class_names)
    if model.class_colors is not None:
        part["class_colors"] = [list(c) for c in model.class_colors]
    return part
