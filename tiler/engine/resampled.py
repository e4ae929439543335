"""Blocks of a job whose model runs on another grid: nnU-Net's crop resampled to its spacing, and back.

The store, the block partition and the labels stay on the input's own grid and affine; the tile grid lies on the
*model grid*: the crop (the region of interest) resampled to the configuration's spacing (:class:`GridMap`).
One output block ``B`` is computed out of core, as nnU-Net computes the whole image:

1. ``B``'s part inside the crop, in crop coordinates (``local``), needs the model grid's blended values on the
   window its back resampling reads (``need`` = ``back.source_window(local)``);
2. the tiles are the model grid's tiles meeting ``need`` (global grid order, as always);
3. their region's pixels are the input's voxels around it (the forward resampling's halo), read, normalised
   by the model's own normalisation and resampled forward (nnU-Net normalises before it resamples), then
   padded like any tile region; the batches go to the model already normalised;
4. the blended values (probabilities, or nnU-Net's embedded logits) on ``need`` are resampled back onto
   ``local`` with nnU-Net's probability resampling, then argmaxed; voxels outside the crop get the background.

A model-grid voxel's blended value depends only on the global tile grid, and the back resampling reads only
those, so the labels do not depend on the block partition (:mod:`tiler.resample` is exact block by block).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tiler.engine.plan import GridMap
from tiler.engine.work import BlockStats, PreparedBlock, ReadFn, pad_to_region
from tiler.errors import EngineError
from tiler.geometry import TileGrid, Window
from tiler.label_rules import labels_dtype
from tiler.stitch import BlockResult, argmax_channels_tensor, quantize

__all__ = ["Normalize", "Resampled", "finish_resampled", "prepare_resampled"]

Normalize = Callable[[np.ndarray], np.ndarray]
"""Raw pixels ``(C, *S)`` → the model's normalised float32 ``(C, *S)``."""


@dataclass(frozen=True)
class Resampled:
    """Where a prepared block's results go: the output block and its part inside the crop (crop coordinates)."""

    output: Window
    local: Window | None


def _moved(window: Window, by: Sequence[int]) -> Window:
    """``window`` (crop coordinates) in image coordinates: moved by the crop's start ``by``."""
    return Window(
        tuple(a + o for a, o in zip(window.start, by, strict=True)),
        tuple(b + o for b, o in zip(window.stop, by, strict=True)),
    )


def prepare_resampled(
    block: Window, grid: TileGrid, gmap: GridMap, *, read: ReadFn, normalize: Normalize,
    value_range: np.ndarray | None,
) -> PreparedBlock:
    """Read and resample everything output ``block`` needs (steps 1-3 of the module docstring).

    Args:
        block: The output block (input image coordinates).
        grid: The tile grid over the model grid (:attr:`GridMap.model_shape`).
        gmap: The grids' map.
        read: Raw input pixels of a window of the image ``(C, *window.shape)``.
        normalize: The model's normalisation.
        value_range: :attr:`GridMap.value_range` normalised (what the forward clip needs), or None.

    Returns:
        The prepared block, whose ``block`` is the model-grid window to blend (``pixels`` normalised, ``batches``
        to be wrapped as normalised by :func:`tiler.engine.work.assemble_block`) and whose ``destination`` is
        where its results go (:class:`Resampled`).
    """
    t0, started_at = time.perf_counter(), time.time()
    target = block.intersection(gmap.crop)
    if target is None:  # wholly outside the crop: background, nothing read
        return PreparedBlock(
            block, None, None, np.zeros(block.shape, dtype=bool), [], BlockStats(), started_at,
            destination=Resampled(block, None),
        )
    local = target.relative_to(gmap.crop)
    need = gmap.back.source_window(local)
    positions = grid.positions_intersecting(need)
    region = grid.region_of(positions)
    inside = region.clip(grid.shape)
    assert inside is not None
    source = gmap.forward.source_window(inside)
    raw = read(_moved(source, gmap.crop.start))
    pixels = gmap.forward.apply(normalize(raw), source, inside, value_range=value_range)
    pixels = pad_to_region(pixels, inside, region, grid.pad_mode)
    stats = BlockStats(read_seconds=time.perf_counter() - t0)
    return PreparedBlock(
        need, region, pixels, None, positions, stats, started_at, normalized=True, destination=Resampled(block, local)
    )


def finish_resampled(
    result: BlockResult, where: Resampled, gmap: GridMap, *, num_classes: int, nodata_label: int,
    background_label: int, probabilities: str | None,
) -> BlockResult:
    """Resample a block's blended values back onto the input's grid and argmax them (step 4).

    Args:
        result: The model-grid block from :func:`tiler.engine.work.infer_block`, kept as float32 probabilities.
        where: From :func:`prepare_resampled`.
        gmap: The grids' map.
        num_classes: ``K``.
        nodata_label: The store's nodata label (sets the labels' dtype).
        background_label: Label of voxels outside the crop.
        probabilities: Dtype of the probabilities to keep (resampled too), or None.

    Returns:
        The output block's labels ``(*output.shape)`` (and probabilities ``(K, *output.shape)``, 0 outside the crop).
    """
    out = where.output
    labels = np.full(out.shape, background_label, dtype=labels_dtype(num_classes, nodata_label))
    kept = np.zeros((num_classes, *out.shape), dtype=np.float32) if probabilities is not None else None
    covered = np.zeros(out.shape, dtype=bool)
    if where.local is not None:
        if result.probabilities is None or not bool(result.covered.all()):
            raise EngineError(f"block {out}: the model grid window {result.window} was not wholly covered by tiles")
        values = gmap.back.apply(result.probabilities, result.window, where.local)
        inside = _moved(where.local, gmap.crop.start).relative_to(out).slices
        as_labels = torch.uint8 if labels.dtype == np.uint8 else torch.int32
        labels[inside] = argmax_channels_tensor(torch.from_numpy(np.ascontiguousarray(values)), as_labels).numpy()
        covered[inside] = True
        if kept is not None:
            kept[(slice(None), *inside)] = values
    stored = quantize(kept, probabilities) if kept is not None and probabilities is not None else None
    return dataclasses.replace(result, window=out, labels=labels, probabilities=stored, covered=covered)
