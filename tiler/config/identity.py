"""The identity of a job's configuration, in two parts.

* :func:`pixels_hash` — what the output store holds (pixels, block layout, class names and colours).
  A store holding another one is refused (or replaced with ``--overwrite``): its blocks would not be
  this job's.
* :func:`config_hash` — the pixels plus what the finishing writes (exports, polygon settings, scores).
  An archive input is skipped when the ledger holds its fingerprint with this hash, its recorded scores
  and outputs reported as they are; a finished store records the one its exports and reports were made
  with. A job whose store matches on pixels but not on this hash runs no block: it clears ``complete``,
  writes the exports now asked for, scores with the new settings, rewrites the reports and marks the
  store complete again. Exports no longer asked for stay on disk but are not listed as the job's outputs.

Covered:

* ``input``: the path and every reading option (bands, level/mpp, mask, threshold, ...).
* ``model``: the weights' *content* (sha256 of a local file, else its path), spec, normalisation,
  precision, test-time flips, nnU-Net and ONNX settings, class names and class colours.
* ``tiling``: all of it (the block too: resume records are per block).
* ``engine.skip_empty`` (skipped tiles become nodata).
* ``output``: chunks, probability dtype, nodata and background labels; for :func:`config_hash` only, the
  exports and the polygon settings (``min_polygon_pixels``, ``polygon_classes``) when a polygon export
  is asked for.
* ``scoring`` (:func:`config_hash` only): truth, ignore_index, boundary_width and num_classes, when a
  truth is given.

Excluded, and why:

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
hash it always had and its stores and ledger rows stay valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

from tiler.config.schema import JobConfig
from tiler.paths import is_remote

__all__ = ["config_hash", "pixels_hash"]


def _file_sha256(path: str) -> str | None:
    """Return the sha256 of a local file; None for a remote or missing file.

    Cached by (path, size, mtime), so an archive run hashes its checkpoint once, not once per input.
    """
    if is_remote(path) or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return _sha256_cached(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_POLYGON_EXPORTS = frozenset({"geojson", "geoparquet", "qupath"})


def pixels_hash(cfg: JobConfig) -> str:
    """Return a 16-hex-digit identity of what the output *store* holds: pixels, block layout, classes.

    The store records it and refuses a job with another one (unless ``--overwrite``). It leaves out what
    only the finishing writes (exports, polygon settings, scores), so adding an export or a truth to a
    finished job re-finishes it without recomputing a block.
    """
    return _digest(_payload(cfg, finishing=False))


def config_hash(cfg: JobConfig) -> str:
    """Return a 16-hex-digit identity of everything the job writes: pixels, layout, exports and scores.

    The archive ledger keys inputs by it, and a finished store records the one its files were made with.
    See the module docstring for what is covered and what is left out, and why.
    """
    return _digest(_payload(cfg, finishing=True))


def _digest(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _payload(cfg: JobConfig, *, finishing: bool) -> dict[str, Any]:
    payload = {
        "version": 1,
        "input": cfg.input.model_dump(mode="json", exclude={"gdal"}),
        "model": _model_part(cfg),
        # the default step rule is left out so that hashes from before the rule existed still match
        "tiling": cfg.tiling.model_dump(mode="json", exclude={"rule"} if cfg.tiling.rule == "overlap" else None),
        "engine": {"skip_empty": cfg.engine.skip_empty},
        "output": _output_part(cfg, finishing=finishing),
    }
    if finishing and cfg.scoring.truth is not None:
        payload["scoring"] = cfg.scoring.model_dump(mode="json")
    return payload


def _model_part(cfg: JobConfig) -> dict[str, Any]:
    """The model keys of the identity; onnx settings, class names and colours only when given."""
    model = cfg.model
    sha = _file_sha256(model.weights)
    part = {
        **model.model_dump(mode="json", include={"spec", "normalization", "precision", "tta_flips"}),
        **({"nnunet": model.nnunet.model_dump(mode="json")} if model.nnunet is not None else {}),
        "weights": {"sha256": sha} if sha is not None else {"path": model.weights},
    }
    onnx = model.onnx.model_dump(mode="json", exclude_none=True) if model.onnx is not None else {}
    if onnx:  # an empty section means the file's own metadata, as no section does
        part["onnx"] = onnx
    if model.class_names is not None:
        part["class_names"] = list(model.class_names)
    if model.class_colors is not None:
        part["class_colors"] = [list(c) for c in model.class_colors]
    return part


def _output_part(cfg: JobConfig, *, finishing: bool) -> dict[str, Any]:
    """The output keys of the identity; exports (in any order) and polygon settings only when they apply."""
    out = cfg.output
    part = out.model_dump(mode="json", include={"chunks", "probabilities", "nodata_label", "background_label"})
    if not finishing:
        return part
    if out.exports:
        part["exports"] = sorted(out.exports)
    if _POLYGON_EXPORTS.intersection(out.exports):
        part["polygons"] = out.model_dump(mode="json", include={"min_polygon_pixels", "polygon_classes"})
    return part
