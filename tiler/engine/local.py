"""The in-process engine: runs every block of a plan in this process, one after another.

It is the reference the Ray engine must match bit for bit, and the engine for tests and
single machines without Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tiler.blend import Blender
from tiler.engine.work import DevicePredict, MaskFn, Predict, array_reader, blocks_of, infer_block, prepare_block
from tiler.errors import GeometryError
from tiler.geometry import TileGrid, Window
from tiler.stitch import ProbabilityDType, labels_dtype


def run_in_memory(
    image: np.ndarray,
    predict: Predict | DevicePredict,
    *,
    grid: TileGrid,
    block: Sequence[int],
    blender: Blender,
    num_classes: int,
    batch_size: int = 8,
    nodata_label: int = 255,
    probabilities: ProbabilityDType | str | None = ProbabilityDType.FLOAT32,
    mask: MaskFn | None = None,
    skip_empty: bool = True,
    order: Sequence[Window] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Tile, predict and stitch an in-memory image block by block.

    Args:
        image: Input ``(C_in, *spatial)``; ``spatial`` must equal ``grid.shape``.
        predict: Batch ``(N, C_in, *tile)`` → probabilities ``(N, K, *tile)``: a numpy function, or a
            :class:`tiler.model.TileRunner` (any :class:`~tiler.engine.work.DevicePredict`), whose probabilities
            are blended on its device.
        grid: The tile grid over ``image``.
        block: Block shape (the unit of work) per axis.
        blender: Blend weights.
        num_classes: ``K``.
        batch_size: Tiles per model call.
        nodata_label: Label of uncovered or invalid pixels.
        probabilities: Dtype of returned probabilities, or None for labels only.
        mask: Valid-data mask function, or None (all valid).
        skip_empty: Skip tiles with no valid pixel.
        order: Process blocks in this order instead of C order (the result must not change).

    Returns:
        Labels ``(*spatial)`` and probabilities ``(K, *spatial)`` (or None).
    """
    if tuple(image.shape[1:]) != grid.shape:
        raise GeometryError(
            f"image of spatial shape {tuple(image.shape[1:])} does not match the grid's {grid.shape}; "
            f"build the TileGrid from the image shape (channels first: (C, *spatial))."
        )
    labels = np.empty(grid.shape, dtype=labels_dtype(num_classes, nodata_label))
    probs = None
    if probabilities is not None:
        probs = np.empty((num_classes, *grid.shape), dtype=ProbabilityDType(probabilities).value)
    read = array_reader(image)
    for window in order if order is not None else blocks_of(grid, block):
        prepared = prepare_block(window, grid, read=read, mask=mask, skip_empty=skip_empty)
        result, _ = infer_block(
            prepared, grid, predict=predict, blender=blender, num_classes=num_classes,
            batch_size=batch_size, nodata_label=nodata_label, probabilities=probabilities,
        )
        labels[window.slices] = result.labels
        if probs is not None and result.probabilities is not None:
            probs[(slice(None), *window.slices)] = result.probabilities
    return labels, probs
