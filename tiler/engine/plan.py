"""The plan of a job: everything a worker needs to process any block, small and picklable.

The driver builds one plan and hands it to every worker; workers open the input, the model and
the output store themselves, so pixels never pass through the driver.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tiler.blend import Blender
from tiler.geometry import BlockPartition, Shape, TileGrid, Window
from tiler.resample import Resampling

if TYPE_CHECKING:  # the driver plans without torch; workers import it with the model
    from tiler.engine.work import Predict


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
class ModelFacts:
    """What the driver needs to know of a model to plan with it (the network itself stays in the workers).

    A worker that holds the model reports them (:meth:`of`), so a driver that plans never loads it.
    """

    spatial_dims: int | None
    in_channels: int | None
    num_classes: int
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    parameters: int

    @classmethod
    def of(cls, loaded: Any) -> ModelFacts:
        """The facts of a :class:`tiler.model.LoadedModel`."""
        spec = loaded.spec
        return cls(
            spatial_dims=spec.spatial_dims if spec is not None else None,
            in_channels=spec.in_channels if spec is not None else None,
            num_classes=loaded.num_classes,
            class_names=tuple(loaded.class_names),
            class_colors=tuple(tuple(int(v) for v in c) for c in loaded.class_colors),  # type: ignore[misc]
            parameters=sum(int(p.numel()) for p in loaded.network.parameters()),
        )


@dataclass(frozen=True)
class GridMap:
    """The input's grid and the model's: the crop, and nnU-Net's resampling each way.

    Attributes:
        crop: The region of the input resampled (image coordinates): nnU-Net's crop, or the whole image.
        forward: Crop shape → model shape, as nnU-Net resamples images (order 3, its separate-axis rule).
        back: Model shape → crop shape, as nnU-Net resamples its logits / probabilities (order 1).
        value_range: ``(2, C, K)`` raw minima and maxima of the crop (per channel, per slice across the forward
            resampling's separate axis) that its clip needs, normalised in the worker; None when not needed.
            Nested tuples: a plan is compared and hashed like a value.
        spacing: The input's spacing (z, y, x) and the model's, for reports.
    """

    crop: Window
    forward: Resampling
    back: Resampling
    value_range: tuple[tuple[tuple[float, ...], ...], ...] | None = None
    spacing: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def model_shape(self) -> tuple[int, ...]:
        """The model grid's shape: the crop at the configuration's spacing."""
        return tuple(self.forward.target_shape)

    def describe(self) -> dict[str, Any]:
        """What was resampled, for the store's plan attributes and the report."""
        out: dict[str, Any] = {
            "crop": [list(self.crop.start), list(self.crop.stop)], "model_shape": list(self.model_shape),
            "separate_axis": self.forward.separate_axis, "order": self.forward.order, "order_z": self.forward.order_z,
            "back_order": self.back.order, "back_separate_axis": self.back.separate_axis,
        }  # fmt: skip
        if self.spacing is not None:
            out["spacing"], out["target_spacing"] = (list(s) for s in self.spacing)
        return out


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
        score_classes: ``K`` of the scores (``scoring.num_classes``, at least ``num_classes``); None: ``num_classes``.
        grid_map: The model grid, when the model runs on a resampled crop of the input (``grid`` lies on it;
            ``partition`` and the store on the input's grid); None: the grid is the input's.
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
    score_classes: int | None = None
    grid_map: GridMap | None = None

    def positions(self) -> list[Shape]:
        """Every block position, in C order."""
        return list(self.partition.positions())

    def window(self, position: Shape) -> Window:
        """The block at ``position``."""
        return self.partition.window(position)

    @property
    def scoring_key(self) -> str | None:
        """What a block's confusion matrix is counted against (truth path, ignore index, K), or None unscored.

        Blocks keep it beside their matrix, so matrices counted against another truth (a store finished
        again with a new truth, its blocks reused) are never summed into this job's score.
        """
        if self.truth is None:
            return None
        what = [self.truth.path, self.ignore_index, self.score_classes or self.num_classes, self.nodata_label]
        return hashlib.sha256(json.dumps(what).encode("utf-8")).hexdigest()[:16]


def block_key(position: Shape) -> str:
    """The store's record key of a block: its per-axis position joined by ``_``."""
    return "_".join(str(p) for p in position)


@dataclass(frozen=True)
class BlockRecord:
    """What a worker records of a finished block: the typed form of its JSON file in the store.

    ``to_json`` gives the record's keys exactly as the store has always written them (the store adds
    ``key``, ``chunks`` and ``labels_digest`` beside them); ``from_json`` reads such a record back and
    ignores the store's own keys.

    Attributes:
        block: The block's key (:func:`block_key`).
        start: First pixel of the block per axis.
        stop: One past the last pixel per axis.
        tiles_run: Tiles the model ran on for this block.
        tiles_skipped: Tiles skipped as empty.
        started_at: Unix time the block's read began.
        finished_at: Unix time its record was made.
        read_seconds: Seconds reading the input (a reader thread).
        infer_seconds: Seconds in the model (the inference thread).
        stitch_seconds: Seconds blending and finalising (the inference thread).
        write_seconds: Seconds writing the chunks (a writer thread).
        assemble_seconds: Seconds cutting the tiles into model batches (a reader thread).
        idle_seconds: Seconds the worker's inference stage sat idle (free, no block ready) just before this
            block's inference began: since the previous inference on the worker ended; 0 for its first block.
        wait_seconds: Seconds this block, read and assembled, waited for the inference stage.
        pid: Process that computed the block.
        class_counts: Pixels per class 0..K-1 in the block (nodata not counted), or None.
        confusion: The block's confusion matrix ``n[truth, pred]`` when truth was configured, else None.
        scored_against: The plan's :attr:`Plan.scoring_key` the matrix was counted under, else None.

    >>> r = BlockRecord("0_1", (0, 64), (64, 128), tiles_run=9, tiles_skipped=0)
    >>> BlockRecord.from_json({"key": "0_1", "chunks": [], **r.to_json()}) == r
    True
    """

    block: str
    start: Shape
    stop: Shape
    tiles_run: int
    tiles_skipped: int
    started_at: float = 0.0
    finished_at: float = 0.0
    read_seconds: float = 0.0
    infer_seconds: float = 0.0
    stitch_seconds: float = 0.0
    write_seconds: float = 0.0
    assemble_seconds: float = 0.0
    idle_seconds: float = 0.0
    wait_seconds: float = 0.0
    pid: int = 0
    class_counts: tuple[int, ...] | None = None
    confusion: tuple[tuple[int, ...], ...] | None = None
    scored_against: str | None = None

    @property
    def window(self) -> Window:
        """The block in image coordinates."""
        return Window(self.start, self.stop)

    def to_json(self) -> dict[str, Any]:
        """The record as the store writes it (``confusion`` and ``scored_against`` only when there is one)."""
        out: dict[str, Any] = {
            "block": self.block, "started_at": self.started_at, "finished_at": self.finished_at,
            "start": list(self.start), "stop": list(self.stop), "tiles_run": self.tiles_run,
            "tiles_skipped": self.tiles_skipped, "read_seconds": self.read_seconds,
            "infer_seconds": self.infer_seconds, "stitch_seconds": self.stitch_seconds,
            "write_seconds": self.write_seconds, "assemble_seconds": self.assemble_seconds,
            "idle_seconds": self.idle_seconds, "wait_seconds": self.wait_seconds, "pid": self.pid,
        }  # fmt: skip
        if self.class_counts is not None:
            out["class_counts"] = list(self.class_counts)
        if self.confusion is not None:
            out["confusion"] = [list(row) for row in self.confusion]
        if self.scored_against is not None:
            out["scored_against"] = self.scored_against
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BlockRecord:
        """Read a record written by :meth:`to_json` (the store's ``key``, ``chunks`` and digests ignored).

        Raises:
            KeyError, TypeError, ValueError: The record lacks a window or tile counts, or holds non-numbers.
        """
        confusion = data.get("confusion")
        counts = data.get("class_counts")
        scored = data.get("scored_against")
        return cls(
            block=str(data.get("block", data.get("key", ""))),
            start=tuple(int(v) for v in data["start"]),
            stop=tuple(int(v) for v in data["stop"]),
            tiles_run=int(data["tiles_run"]),
            tiles_skipped=int(data["tiles_skipped"]),
            started_at=float(data.get("started_at", 0.0)),
            finished_at=float(data.get("finished_at", 0.0)),
            read_seconds=float(data.get("read_seconds", 0.0)),
            infer_seconds=float(data.get("infer_seconds", 0.0)),
            stitch_seconds=float(data.get("stitch_seconds", 0.0)),
            write_seconds=float(data.get("write_seconds", 0.0)),
            assemble_seconds=float(data.get("assemble_seconds", 0.0)),
            idle_seconds=float(data.get("idle_seconds", 0.0)),
            wait_seconds=float(data.get("wait_seconds", 0.0)),
            pid=int(data.get("pid", 0)),
            class_counts=tuple(int(v) for v in counts) if counts is not None else None,
            confusion=tuple(tuple(int(v) for v in row) for row in confusion) if confusion is not None else None,
            scored_against=str(scored) if scored is not None else None,
        )
