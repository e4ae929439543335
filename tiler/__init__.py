"""tiler: tiled inference for images too big for memory, on Ray.

Arrays are indexed (row, col) in 2D and (z, y, x) in 3D everywhere; channel-first
arrays are (C, H, W) / (C, D, H, W). Geographic bounds are (left, bottom, right, top).

The public API, imported lazily (``import tiler`` loads neither torch, Ray nor GDAL)::

    import tiler

    cfg = tiler.load_config("configs/satellite.yaml", ["output.path=out/scene.zarr"])
    result = tiler.run(cfg, engine="local")              # one input → store, exports, scores
    scores, details = tiler.score(result.store, "truth.tif")

Jobs: :func:`load_config`, :func:`run` (one input), :func:`run_many` (many inputs through one pool),
:func:`load_archive` and :func:`run_archive`, :func:`score`. Pieces: :class:`TileGrid`, :class:`Window`,
:class:`BlockPartition`, :class:`Blender`, :class:`BlockAccumulator`, :func:`open_reader`,
:class:`OutputStore`, :func:`load_model`, :class:`TileRunner`. Errors: :class:`TilerError` and its family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiler.errors import (
    ConfigError,
    EngineError,
    GeometryError,
    InputError,
    ModelError,
    OutputError,
    ReadError,
    ScoreError,
    TilerError,
)
from tiler.lazy import lazy_names
from tiler.version import __version__

_LAZY: dict[str, str] = {
    "load_config": "tiler.config.loading",
    "run": "tiler.segment:run_segment",
    "run_many": "tiler.segment",
    "SegmentJob": "tiler.segment",
    "load_archive": "tiler.archive.config",
    "run_archive": "tiler.archive.run",
    "score": "tiler.metrics.files:score_paths",
    "Window": "tiler.geometry",
    "TileGrid": "tiler.geometry",
    "BlockPartition": "tiler.geometry",
    "Blender": "tiler.blend",
    "BlendMode": "tiler.blend",
    "BlockAccumulator": "tiler.stitch",
    "open_reader": "tiler.io",
    "open_labels": "tiler.io.labels",
    "OutputStore": "tiler.io.store",
    "load_model": "tiler.model.checkpoint",
    "TileRunner": "tiler.model.runner",
    "Normalization": "tiler.model.normalize",
    "JobConfig": "tiler.config.schema",
    "SegmentResult": "tiler.job.finish",
    "Scores": "tiler.metrics.scores",
    "run_in_memory": "tiler.engine.local",
}

__all__ = [
    "BlendMode",
    "Blender",
    "BlockAccumulator",
    "BlockPartition",
    "ConfigError",
    "EngineError",
    "GeometryError",
    "InputError",
    "JobConfig",
    "ModelError",
    "Normalization",
    "OutputError",
    "OutputStore",
    "ReadError",
    "ScoreError",
    "Scores",
    "SegmentJob",
    "SegmentResult",
    "TileGrid",
    "TileRunner",
    "TilerError",
    "Window",
    "__version__",
    "load_archive",
    "load_config",
    "load_model",
    "open_labels",
    "open_reader",
    "run",
    "run_archive",
    "run_in_memory",
    "run_many",
    "score",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from tiler.archive.config import load_archive
    from tiler.archive.run import run_archive
    from tiler.blend import Blender, BlendMode
    from tiler.config.loading import load_config
    from tiler.config.schema import JobConfig
    from tiler.engine.local import run_in_memory
    from tiler.geometry import BlockPartition, TileGrid, Window
    from tiler.io import open_reader
    from tiler.io.labels import open_labels
    from tiler.io.store import OutputStore
    from tiler.job.finish import SegmentResult
    from tiler.metrics.files import score_paths as score
    from tiler.metrics.scores import Scores
    from tiler.model.checkpoint import load_model
    from tiler.model.normalize import Normalization
    from tiler.model.runner import TileRunner
    from tiler.segment import SegmentJob, run_many
    from tiler.segment import run_segment as run
    from tiler.stitch import BlockAccumulator
