"""The plan of a job: everything a worker needs to process any block, small and picklable.

The driver builds one plan and hands it to every worker; workers open the input, the model and
the output store themselves, so pixels never pass through the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tiler.blend import Blender
from tiler.engine.work import Predict
from tiler.geometry import BlockPartition, Shape, TileGrid, Window


@dataclass(frozen=True)
class ReaderRef:
    """How to open an input: a path and the options of :func:`tiler.io.open_reader`."""

    path: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def open(self) -> Any:
        """Open the reader (in the calling process)."""
        from tiler.io import open_reader

        return open_reader(self.path, **dict(self.options))


@dataclass(frozen=True)
class ModelRef:
    """How to build the tile runner: a weights file and the runner's options.

    Attributes:
        weights: Project checkpoint, plain state dict or TorchScript file.
        load: Keyword arguments of :func:`tiler.model.load_model` (spec, normalization, format...).
        runner: Keyword arguments of :class:`tiler.model.TileRunner` (device, precision, batch_size...).
    """

    weights: str
    load: Mapping[str, Any] = field(default_factory=dict)
    runner: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, threads: int | None = None) -> Predict:
        """Load the model and return the runner (called once per worker)."""
        from tiler.model import TileRunner, load_model

        options = dict(self.runner)
        if threads is not None and options.get("threads") is None:
            options["threads"] = threads
        return TileRunner(load_model(self.weights, **dict(self.load)), **options)


@dataclass(frozen=True)
class Plan:
    """One tiled-inference job.

    Attributes:
        input: The input image.
        model: Builds the predict function in each worker.
        grid: Global tile grid over the input.
        partition: Output blocks (units of work), aligned to the store's chunks.
        blender: Blend weights.
        num_classes: Output classes ``C``.
        store_path: The zarr output store.
        batch_size: Tiles per model call.
        nodata_label: Label of uncovered and invalid pixels.
        probabilities: Dtype of stored probabilities, or None.
        skip_empty: Skip tiles with no valid input.
        mask_labels: Give invalid-input pixels the nodata label (or ``background_label``).
        background_label: Label of pixels outside the valid mask instead of ``nodata_label`` (slides: 0).
        truth: Ground-truth labels, to score each block as it is written; or None.
        ignore_index: Truth value excluded from scoring.
    """

    input: ReaderRef
    model: ModelRef
    grid: TileGrid
    partition: BlockPartition
    blender: Blender
    num_classes: int
    store_path: str
    batch_size: int = 8
    nodata_label: int = 255
    probabilities: str | None = None
    skip_empty: bool = True
    mask_labels: bool = True
    background_label: int | None = None
    truth: ReaderRef | None = None
    ignore_index: int = 255

    def positions(self) -> list[Shape]:
        """Every block position, in C order."""
        return list(self.partition.positions())

    def window(self, position: Shape) -> Window:
        """The block at ``position``."""
        return self.partition.window(position)


def block_key(position: Shape) -> str:
    """The store's record key of a block: its per-axis position joined by ``_``."""
    return "_".join(str(p) for p in position)
