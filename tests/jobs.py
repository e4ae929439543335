"""The whole-job tests' shared inputs and finished job: a small scene with its model and truth, its config, a run.

:func:`write_scene` writes a 200×168 raster with a nodata corner, the tiny model's checkpoint and a truth;
:func:`write_config` the job reading them (its outputs beside the YAML); :func:`finish` runs that job to the end
on the in-process engine. Test modules wrap them in module-scoped fixtures so a module writes its inputs and runs
its read-only job once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import yaml

from tests.engine.helpers import write_model, write_raster
from tiler.config import JobConfig, load_config
from tiler.segment import SegmentResult, run_segment


def write_truth(image: Path, path: Path) -> Path:
    """A label GeoTIFF on the image's grid: classes by brightness, 255 over the image's nodata."""
    with rasterio.open(image) as src:
        data = src.read(1)
        profile = src.profile | {"count": 1, "nodata": 255}
    truth = np.minimum(data // 64, 3).astype(np.uint8)
    truth[data == 0] = 255
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(truth, 1)
    return path


@dataclass(frozen=True)
class Scene:
    """A job's input files: the scene (200×168, a nodata corner), the tiny model's checkpoint, the scene's truth
    (None: an unscored job)."""

    image: Path
    model: Path
    truth: Path | None


def write_scene(root: Path) -> Scene:
    """Write the scene, the model and the truth into ``root``."""
    image = write_raster(root / "image.tif")
    return Scene(image, write_model(root / "model.pt"), write_truth(image, root / "truth.tif"))


def write_config(
    root: Path, *, inputs: Scene | None = None, exports: Sequence[str] = ("cog", "quicklook"), **extra: object
) -> Path:
    """The job's YAML in ``root`` (its outputs beside it), reading ``inputs``, else a scene written into ``root``;
    scored against the scene's truth when it has one. ``extra`` replaces whole sections."""
    inputs = inputs if inputs is not None else write_scene(root)
    data = {
        "input": {"path": str(inputs.image)},
        "model": {"weights": str(inputs.model), "batch_size": 4, "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "engine": {"actors": 1},
        "output": {"path": str(root / "out.zarr"), "chunks": [32, 32], "exports": list(exports)},
        **({"scoring": {"truth": str(inputs.truth), "boundary_width": 2}} if inputs.truth is not None else {}),
        **extra,
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass(frozen=True)
class Finished:
    """The job (:func:`write_config` on a shared scene, with overrides) run to the end in ``root``."""

    root: Path
    cfg: JobConfig
    result: SegmentResult


def finish(root: Path, scene: Scene, overrides: Sequence[str] = ()) -> Finished:
    """Run the job of :func:`write_config` in ``root`` on ``scene`` (``--set`` ``overrides``) on the local engine."""
    cfg = load_config(write_config(root, inputs=scene), list(overrides))
    return Finished(root, cfg, run_segment(cfg, engine="local", quiet=True))
