"""The identity of a job's configuration: :func:`config_hash`, which output stores and the archive ledger record.

A store holding another hash is refused (or replaced with ``--overwrite``), and an archive input is
done when the ledger holds its fingerprint with the same hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

from tiler.config.schema import JobConfig
from tiler.paths import is_remote

__all__ = ["config_hash"]


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


def config_hash(cfg: JobConfig) -> str:
    """Return a 16-hex-digit identity of what decides the output pixels and the block layout.

    Covered: the input path and reading options (not GDAL cache settings); the weights *content*
    (sha256 of the file when it is local, else its path), model spec, normalisation, precision,
    test-time flips and nnU-Net settings; all of tiling (block included: resume records are per block);
    the output chunks, probability dtype and nodata label; and ``engine.skip_empty`` (skipped tiles become nodata).
    Not covered: the engine's scheduling (address, actors, GPUs/CPUs per actor, in-flight, retries,
    prefetch), the device and batch size, the output path, exports and scoring, so a job may resume
    with another actor count or on other hardware.
    """
    model = cfg.model
    sha = _file_sha256(model.weights)
    payload = {
        "version": 1,
        "input": cfg.input.model_dump(mode="json", exclude={"gdal"}),
        "model": {
            **model.model_dump(mode="json", include={"spec", "normalization", "precision", "tta_flips"}),
            **({"nnunet": model.nnunet.model_dump(mode="json")} if model.nnunet is not None else {}),
            "weights": {"sha256": sha} if sha is not None else {"path": model.weights},
        },
        # the default step rule is left out so that hashes from before the rule existed still match
        "tiling": cfg.tiling.model_dump(mode="json", exclude={"rule"} if cfg.tiling.rule == "overlap" else None),
        "engine": {"skip_empty": cfg.engine.skip_empty},
        "output": cfg.output.model_dump(
            mode="json", include={"chunks", "probabilities", "nodata_label", "background_label"}
        ),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
