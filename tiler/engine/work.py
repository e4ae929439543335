"""One block of work: read the region its tiles cover, skip empty tiles, predict in batches, blend.

No Ray here: the in-process engine and the Ray actors both call these functions, so the two
cannot drift. Reading (:func:`prepare_block`) and cutting the tiles into model batches
(:func:`assemble_block`) are split from inference (:func:`infer_block`) so a worker's reader threads
prepare the next blocks while the model runs on the current one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from tiler.blend import Blender
from tiler.errors import EngineError
from tiler.geometry import BlockPartition, PadMode, Shape, TileGrid, Window
from tiler.stitch import BlockResult, ProbabilityDType, TorchBlockAccumulator

Predict = Callable[[np.ndarray], np.ndarray]
"""A batch of tiles ``(N, C_in, *tile)`` → class probabilities ``(N, K, *tile)`` float32."""


@runtime_checkable
class DevicePredict(Protocol):
    """A model whose probabilities stay on its device (:class:`tiler.model.TileRunner` is one).

    Attributes:
        device: Where :meth:`stream` leaves its outputs.
    """

    device: torch.device

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """Probabilities ``(N_i, K, *tile)`` float32 on :attr:`device` per batch, in order, owned by the caller."""
        ...


@runtime_checkable
class StagingPredict(DevicePredict, Protocol):
    """A device model that normalises batches ahead, on any thread (:class:`tiler.model.TileRunner` is one)."""

    def stage(self, tiles: np.ndarray) -> Any:
        """Raw tiles ``(N, C_in, *tile)`` → a batch :meth:`stream` takes as it is (pinned host memory on CUDA)."""
        ...


ReadFn = Callable[[Window], np.ndarray]
"""Pixels of a window inside the image → ``(C_in, *window.shape)``."""
MaskFn = Callable[[Window], "np.ndarray | None"]
"""Valid-data mask of a window inside the image → bool ``(*window.shape)``, or None (all valid)."""
ReadMaskedFn = Callable[[Window], "tuple[np.ndarray, np.ndarray | None]"]
"""Pixels and valid mask of a window together (one decode where the format allows it)."""


@dataclass
class BlockStats:
    """What one block cost; small enough to send back to the driver."""

    tiles_run: int = 0
    tiles_skipped: int = 0
    read_seconds: float = 0.0
    assemble_seconds: float = 0.0
    infer_seconds: float = 0.0
    stitch_seconds: float = 0.0


@dataclass
class PreparedBlock:
    """A block's input, read and padded, with the tiles to run.

    Attributes:
        block: The output block (image coordinates).
        region: The padded-coordinate window ``pixels`` covers.
        pixels: Input ``(C_in, *region.shape)``.
        valid: Valid-data mask ``(*block.shape)`` of the block itself, or None when all valid.
        positions: Tile positions to run, in global grid order.
        stats: Counts and read time so far.
        started_at: Wall-clock time (``time.time()``) the block's read began.
        batches: The model's batches ``(tile positions, batch (N, C_in, *tile))`` in global order, once
            :func:`assemble_block` cut them (``pixels`` is dropped then); None: :func:`infer_block` cuts them.
        normalized: ``pixels`` are normalised already (a resampled block, :mod:`tiler.engine.resampled`): the
            batches reach the model as :class:`~tiler.model.runner.HostBatch`, which it does not normalise again.
        destination: Where a resampled block's results go (:class:`tiler.engine.resampled.Resampled`), or None.
    """

    block: Window
    region: Window | None
    pixels: np.ndarray | None
    valid: np.ndarray | None
    positions: list[Shape]
    stats: BlockStats
    started_at: float = field(default_factory=time.time)
    batches: list[tuple[list[Shape], Any]] | None = None
    normalized: bool = False
    destination: Any = None


def pad_to_region(pixels: np.ndarray, inside: Window, region: Window, mode: PadMode) -> np.ndarray:
    """Pad ``pixels`` (covering ``inside``) at the end of each axis up to ``region``."""
    after = [r - i for r, i in zip(region.stop, inside.stop, strict=True)]
    if not any(after):
        return pixels
    widths = [(0, 0)] + [(0, a) for a in after]
    if mode is PadMode.REFLECT:
        return np.pad(pixels, widths, mode="reflect")
    return np.pad(pixels, widths, mode="constant")


def prepare_block(
    block: Window,
    grid: TileGrid,
    *,
    read: ReadFn,
    mask: MaskFn | None = None,
    skip_empty: bool = True,
    read_masked: ReadMaskedFn | None = None,
) -> PreparedBlock:
    """Read everything one block needs and decide which of its tiles to run.

    A tile is skipped when ``skip_empty`` and the valid-data mask is False on every pixel of it
    that lies inside the image. The decision depends only on the tile, never on the block.
    With ``read_masked`` the whole region is read once, pixels and mask together; otherwise the mask
    is read first and the pixels only for the tiles kept. Pixels outside the grid's region of interest
    (:attr:`~tiler.geometry.TileGrid.region`) are invalid: no tile reads them and their label is the
    invalid one; a block wholly outside it reads nothing.
    """
    t0, started_at = time.perf_counter(), time.time()
    extent = grid.extent
    target = block.intersection(extent)
    if target is None:
        return PreparedBlock(block, None, None, np.zeros(block.shape, dtype=bool), [], BlockStats(), started_at)
    positions = grid.positions_intersecting(target)
    region = grid.region_of(positions)
    inside = region.intersection(extent)
    assert inside is not None  # a region always overlaps the extent it tiles
    pixels_inside = None
    if read_masked is not None:
        pixels_inside, valid_region = read_masked(inside)
    else:
        valid_region = mask(inside) if mask is not None else None
    stats = BlockStats()
    if valid_region is not None and skip_empty:
        running = []
        for pos in positions:
            part = grid.window(pos).intersection(extent)
            assert part is not None
            if valid_region[part.relative_to(inside).slices].any():
                running.append(pos)
        stats.tiles_skipped = len(positions) - len(running)
        positions = running
    valid_block = None
    if valid_region is not None:
        valid_block = valid_region[target.relative_to(inside).slices]
    if target != block:  # the block reaches out of the region of interest
        outside = np.zeros(block.shape, dtype=bool)
        outside[target.relative_to(block).slices] = True if valid_block is None else valid_block
        valid_block = outside
    pixels = None
    if positions:
        kept = grid.region_of(positions)
        kept_inside = kept.intersection(extent)
        assert kept_inside is not None
        if pixels_inside is not None:
            source = pixels_inside[(slice(None), *kept_inside.relative_to(inside).slices)]
        else:
            source = read(kept_inside)
        pixels = pad_to_region(source, kept_inside, kept, grid.pad_mode)
        region = kept
    stats.read_seconds = time.perf_counter() - t0
    return PreparedBlock(block, region if positions else None, pixels, valid_block, positions, stats, started_at)


def iter_batches(prepared: PreparedBlock, grid: TileGrid, batch_size: int) -> Iterator[tuple[list[Shape], np.ndarray]]:
    """Tiles of a prepared block as batches ``(batch_size, C_in, *tile)``, in global order: ``(positions, batch)``.

    Every batch has exactly ``batch_size`` rows: a block's last batch is padded with copies of its last tile
    (their outputs are dropped). A network's arithmetic depends on the batch size it runs at (another kernel
    blocking, another rounding), never on the other tiles in the batch, so a tile's probabilities are the same
    bits in whatever block, pool or engine it lands: the output is partition invariant for a given
    ``model.batch_size`` (another batch size may round probabilities differently, about 1e-6).
    """
    assert prepared.pixels is not None and prepared.region is not None
    channels = prepared.pixels.shape[0]
    for i in range(0, len(prepared.positions), batch_size):
        chunk = prepared.positions[i : i + batch_size]
        batch = np.empty((batch_size, channels, *grid.tile), dtype=prepared.pixels.dtype)
        for j, pos in enumerate(chunk):
            batch[j] = prepared.pixels[(slice(None), *grid.window(pos).relative_to(prepared.region).slices)]
        batch[len(chunk):] = batch[len(chunk) - 1]
        yield chunk, batch


def assemble_block(
    prepared: PreparedBlock, grid: TileGrid, *, batch_size: int, predict: Predict | DevicePredict
) -> PreparedBlock:
    """Cut a prepared block's tiles into the model's batches ahead of inference (on a reader thread).

    The batches are those :func:`iter_batches` yields, in the same global order, so the block's sums do not
    change. A :class:`StagingPredict` (the tile runner) normalises each batch here too, into pinned host
    memory on CUDA, so the inference thread only sends it to the device and runs the model.

    Args:
        prepared: From :func:`prepare_block`.
        grid: The global tile grid.
        batch_size: Tiles per batch.
        predict: The model the batches are for.

    Returns:
        ``prepared`` with :attr:`PreparedBlock.batches` set and its pixels released.
    """
    if prepared.batches is not None or not prepared.positions:
        return prepared
    t0 = time.perf_counter()
    stage: Callable[[np.ndarray], Any] | None = predict.stage if isinstance(predict, StagingPredict) else None
    if prepared.normalized:
        if not isinstance(predict, DevicePredict):
            raise EngineError("a resampled block's tiles are normalised already: its model must be a tile runner")
        stage = _normalized_batch
    batches = [(chunk, stage(batch) if stage is not None else batch)
               for chunk, batch in iter_batches(prepared, grid, batch_size)]  # fmt: skip
    prepared.stats.assemble_seconds += time.perf_counter() - t0
    return dataclasses.replace(prepared, pixels=None, batches=batches)


def _normalized_batch(batch: np.ndarray) -> Any:
    """A batch of normalised tiles ``(N, C_in, *tile)`` as the tile runner's already-staged host batch."""
    from tiler.model.runner import HostBatch

    return HostBatch(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))


def _numpy_stream(predict: Predict, batches: Iterable[np.ndarray]) -> Iterator[tuple[torch.Tensor, bool]]:
    """A numpy predict function's outputs as CPU tensors sharing their memory, and whether they may be modified."""
    for batch in batches:
        probs = np.asarray(predict(batch))
        if probs.dtype != np.float32:
            probs = probs.astype(np.float32)
        writeable = probs.flags.writeable
        if not writeable:  # torch refuses to wrap read-only memory; this copy is ours to modify
            probs, writeable = probs.copy(), True
        yield torch.from_numpy(probs), writeable


def _device_stream(predict: DevicePredict, batches: Iterable[Any]) -> Iterator[tuple[torch.Tensor, bool]]:
    for probs in predict.stream(batches):
        yield probs, True


def infer_block(
    prepared: PreparedBlock,
    grid: TileGrid,
    *,
    predict: Predict | DevicePredict,
    blender: Blender,
    num_classes: int,
    batch_size: int = 8,
    nodata_label: int = 255,
    probabilities: ProbabilityDType | str | None = None,
    mask_labels: bool = True,
    background_label: int | None = None,
) -> tuple[BlockResult, BlockStats]:
    """Run the model over a prepared block's tiles and blend them into the block, on the model's device.

    A :class:`DevicePredict` (the tile runner) hands its probabilities over on its device, where the block's
    sums live (:class:`~tiler.stitch.TorchBlockAccumulator`); a plain numpy function's outputs are wrapped as
    CPU tensors without a copy. Either way only the finalised labels (and the requested probabilities) are
    copied back to the host, once per block. On CUDA the kernels run asynchronously, so ``infer_seconds`` and
    ``stitch_seconds`` split the block's time only roughly (the final copy waits for the last kernels).

    Args:
        prepared: From :func:`prepare_block`, its batches cut ahead by :func:`assemble_block` or not.
        grid: The global tile grid.
        predict: The model, batch in, probabilities out.
        blender: Blend weights.
        num_classes: Number of output classes ``K``.
        batch_size: Tiles per model call.
        nodata_label: Label for pixels no tile counted (and, with ``mask_labels``, invalid input).
        probabilities: Keep probabilities in this dtype, or None.
        mask_labels: Give invalid-input pixels the nodata label even where a tile covered them.
        background_label: Label of invalid-input pixels instead of ``nodata_label`` (tissue/body masks: the
            background class). Pixels no tile covered lie outside the mask too, so they get it as well.

    Returns:
        The finalised block and its stats.
    """
    if prepared.normalized and prepared.batches is None:
        prepared = assemble_block(prepared, grid, batch_size=batch_size, predict=predict)
    stats = prepared.stats
    device = predict.device if isinstance(predict, DevicePredict) else torch.device("cpu")
    acc = TorchBlockAccumulator(prepared.block, num_classes, device=device)
    if prepared.positions:
        chunks: list[list[Shape]] = []  # the stream reads one batch ahead: positions queue here in order

        def inputs() -> Iterator[Any]:
            assembled = prepared.batches if prepared.batches is not None else iter_batches(prepared, grid, batch_size)
            for chunk, batch in assembled:
                chunks.append(chunk)
                yield batch

        if isinstance(predict, DevicePredict):
            outputs = _device_stream(predict, inputs())
        else:
            outputs = _numpy_stream(predict, inputs())
        waiting = time.perf_counter()
        for done, (probs, owned) in enumerate(outputs):
            got = time.perf_counter()
            stats.infer_seconds += got - waiting
            chunk = chunks[done]
            probs = probs[: len(chunk)]  # the rows padding the block's last batch are dropped
            windows = [grid.window(pos) for pos in chunk]
            weights = [blender.weights_on(grid, pos, device) for pos in chunk]
            acc.add_batch(windows, probs, weights, overwrite=owned)
            waiting = time.perf_counter()
            stats.stitch_seconds += waiting - got
        stats.infer_seconds += time.perf_counter() - waiting
    stats.tiles_run = len(prepared.positions)
    t0 = time.perf_counter()
    invalid = nodata_label if background_label is None else background_label
    result = acc.finalize(
        nodata_label=nodata_label, probabilities=probabilities, valid=prepared.valid if mask_labels else None,
        invalid_label=invalid, release=True,
    )
    inside = prepared.block.intersection(grid.extent)
    if inside != prepared.block:  # outside the region of interest nothing was predicted, whatever tiles reach there
        outside = np.ones(prepared.block.shape, dtype=bool)
        if inside is not None:
            outside[inside.relative_to(prepared.block).slices] = False
        result.covered[outside] = False
        if result.probabilities is not None:
            result.probabilities[:, outside] = 0
    stats.stitch_seconds += time.perf_counter() - t0
    return result, stats


def array_reader(image: np.ndarray) -> ReadFn:
    """A :data:`ReadFn` over an in-memory ``(C, *spatial)`` array."""
    return lambda window: image[(slice(None), *window.slices)]


def blocks_of(grid: TileGrid, block: Sequence[int]) -> list[Window]:
    """Every output block of ``grid``'s image for block shape ``block``, in C order."""
    return list(BlockPartition(grid.shape, tuple(block)))
