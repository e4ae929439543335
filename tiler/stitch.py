"""The per-block accumulator: blends tile predictions into one output block.

Holds float32 Σ w·p per class, shape ``(K, *block)``, and one float32 Σ w per pixel, shape ``(*block)``.
Tiles must be added in global grid order: then every pixel sees the same sequence of float32
operations whoever computes its block, which makes the output independent of the partition.

Two implementations with the same arithmetic: :class:`TorchBlockAccumulator` keeps the sums as torch
tensors on the device the model runs on (CUDA or CPU), so tile probabilities never leave the device and
only the finalised labels (and requested probabilities) are copied back, once per block;
:class:`BlockAccumulator` is the numpy original, kept as the reference the torch one is tested against.
Each pixel gets ``p · w`` rounded to float32, then ``Σ + p · w`` rounded to float32, as two separate
operations (never a fused multiply-add), so both give the same bits on every device.

Example: two 1 x 4 tiles of a 1 x 6 image overlap on two pixels; the first predicts class 0, the second
class 1; with constant weights the overlap gets the average (ties go to the lower class):

>>> import numpy as np
>>> from tiler.geometry import TileGrid
>>> grid = TileGrid((1, 6), tile=(1, 4), overlap=(0, 2))
>>> acc = BlockAccumulator(Window((0, 0), (1, 6)), num_classes=2)
>>> for position, cls in zip(grid.positions(), (0, 1)):
...     probs = np.zeros((2, 1, 4), np.float32)
...     probs[cls] = 1.0
...     acc.add(grid.window(position), probs, np.ones((1, 4), np.float32))
>>> result = acc.finalize(probabilities="float32")
>>> result.probabilities[1].tolist(), result.labels.tolist()
([[0.0, 0.0, 0.5, 0.5, 1.0, 1.0]], [[0, 0, 0, 0, 1, 1]])
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tiler.errors import GeometryError, ModelError
from tiler.geometry import Window
from tiler.label_rules import labels_dtype


class ProbabilityDType(str, enum.Enum):
    """How finalised probabilities are stored."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    UINT8 = "uint8"


def quantize(probabilities: np.ndarray, dtype: ProbabilityDType | str) -> np.ndarray:
    """Store float32 probabilities as float32, float16, or uint8 (``round(p · 255)``)."""
    dtype = ProbabilityDType(dtype)
    if dtype is ProbabilityDType.UINT8:
        return np.rint(probabilities * np.float32(255.0)).astype(np.uint8)
    return probabilities.astype(dtype.value, copy=False)


@dataclass
class BlockResult:
    """A finalised block.

    Attributes:
        window: The block in image coordinates.
        labels: Argmax labels ``(*block)``; the nodata label where no tile counted.
        probabilities: ``(K, *block)`` in the requested dtype, 0 where no tile counted; None if not kept.
        covered: Pixels that some tile counted, bool ``(*block)``.
    """

    window: Window
    labels: np.ndarray
    probabilities: np.ndarray | None
    covered: np.ndarray


class BlockAccumulator:
    """Blends the tiles that touch one output block.

    Args:
        block: The output block in image coordinates.
        num_classes: Number of classes ``K`` (probability channels).
    """

    def __init__(self, block: Window, num_classes: int) -> None:
        self.block = block
        self.num_classes = num_classes
        self.sums = np.zeros((num_classes, *block.shape), dtype=np.float32)
        self.weights = np.zeros(block.shape, dtype=np.float32)

    def add(self, tile: Window, probabilities: np.ndarray, weights: np.ndarray, *, overwrite: bool = False) -> None:
        """Add one tile's weighted prediction where it overlaps the block.

        Args:
            tile: The tile's window (image coordinates, may reach into padding).
            probabilities: ``(K, *tile.shape)`` float32.
            weights: ``(*tile.shape)`` float32.
            overwrite: The caller gives up ``probabilities``: multiply in place, saving a temporary.
        """
        if probabilities.shape != (self.num_classes, *tile.shape):
            raise GeometryError(
                f"tile prediction has shape {probabilities.shape}, expected {(self.num_classes, *tile.shape)} "
                f"(K, *tile); check the model's number of classes and the tile size."
            )
        inter = tile.intersection(self.block)
        if inter is None:
            return
        src = inter.relative_to(tile).slices
        dst = inter.relative_to(self.block).slices
        w = weights[src]
        part = probabilities[(slice(None), *src)]
        weighted = np.multiply(part, w, out=part if overwrite else None)
        view = self.sums[(slice(None), *dst)]
        np.add(view, weighted, out=view)
        self.weights[dst] += w

    def finalize(
        self, *, nodata_label: int = 255, probabilities: ProbabilityDType | str | None = None
    ) -> BlockResult:
        """Normalise to probabilities and argmax labels.

        Args:
            nodata_label: Label of pixels that no tile counted.
            probabilities: Dtype of the probabilities to keep, or None to keep none.

        Returns:
            The finalised block; labels are uint8 (uint16 when the labels need it).
        """
        covered = self.weights > 0
        kept = None
        if probabilities is None:
            labels = _argmax_channels(self.sums, labels_dtype(self.num_classes, nodata_label))
        else:
            probs = np.zeros_like(self.sums)
            np.divide(self.sums, self.weights, out=probs, where=covered)
            labels = _argmax_channels(probs, labels_dtype(self.num_classes, nodata_label))
            kept = quantize(probs, probabilities)
        labels[~covered] = nodata_label
        return BlockResult(self.block, labels, kept, covered)


def _argmax_channels(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``argmax`` over the class axis of ``(K, *S)`` (first maximum wins), as contiguous passes.

    Labels are the argmax of Σ w·p, or of the probabilities: dividing every channel of a pixel by its
    one positive Σ w keeps their order.
    """
    best = values[0].copy()
    labels = np.zeros(values.shape[1:], dtype=dtype)
    for c in range(1, values.shape[0]):
        better = values[c] > best
        labels[better] = c
        np.maximum(best, values[c], out=best)
    return labels


def quantize_tensor(probabilities: torch.Tensor, dtype: ProbabilityDType | str) -> torch.Tensor:
    """:func:`quantize` for a float32 tensor, on its device: the same rounding (half to even)."""
    dtype = ProbabilityDType(dtype)
    if dtype is ProbabilityDType.UINT8:
        return torch.round(probabilities * 255.0).to(torch.uint8)
    if dtype is ProbabilityDType.FLOAT16:
        return probabilities.to(torch.float16)
    return probabilities


def argmax_channels_tensor(values: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """``argmax`` over the class axis of ``(K, *S)`` (first maximum wins), as ``dtype`` ``(*S)``.

    In four vectorised passes and no per-class loop: the channel maximum; where each channel equals it; each
    hit ranked ``K - k`` so the first class ranks highest; the best rank. On CPU this is about 3x faster than
    a per-class compare-and-fill loop and several times faster than ``torch.max(dim=0)`` or ``torch.argmax``
    (which track int64 indices through a reduction over the leading axis). A pixel with a NaN sum (a model
    fault) gets the last class.

    >>> argmax_channels_tensor(torch.tensor([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0]])).tolist()
    [1, 0]
    """
    c = values.shape[0]
    small = c <= 255
    rank_dtype = torch.uint8 if small else torch.int32
    rank = torch.arange(c, 0, -1, dtype=rank_dtype, device=values.device).view(c, *([1] * (values.ndim - 1)))
    hits = torch.eq(values, torch.amax(values, dim=0))
    ranked = hits.view(torch.uint8) if small else hits.to(rank_dtype)
    best = torch.amax(ranked.mul_(rank), dim=0)
    return torch.sub(c, best).clamp_(max=c - 1).to(dtype)


class TorchBlockAccumulator:
    """Blends the tiles that touch one output block, in torch, on the model's device.

    Args:
        block: The output block in image coordinates.
        num_classes: Number of classes ``K`` (probability channels).
        device: Where the sums live: the device the tile probabilities come from.

    Attributes:
        sums: float32 Σ w·p ``(K, *block)`` on ``device``.
        weights: float32 Σ w ``(*block)`` on ``device``.
    """

    def __init__(self, block: Window, num_classes: int, *, device: torch.device | str = "cpu") -> None:
        self.block = block
        self.num_classes = num_classes
        self.device = torch.device(device)
        with torch.inference_mode():  # callers may hand over inference tensors: they are updated in place in this mode
            # Σ w·p and Σ w in one array, so each tile is one addition (one kernel, one pass) instead of two
            self._acc = torch.zeros((num_classes + 1, *block.shape), dtype=torch.float32, device=self.device)
        self.sums = self._acc[:num_classes]
        self.weights = self._acc[num_classes]
        self._staging: torch.Tensor | None = None

    def add(self, tile: Window, probabilities: torch.Tensor, weights: torch.Tensor, *, overwrite: bool = False) -> None:
        """Add one tile's weighted prediction where it overlaps the block.

        Args:
            tile: The tile's window (image coordinates, may reach into padding).
            probabilities: ``(K, *tile.shape)`` float32 on the accumulator's device.
            weights: ``(*tile.shape)`` float32 on the same device.
            overwrite: Accepted for symmetry with :class:`BlockAccumulator`; ``probabilities`` is never modified.
        """
        self.add_batch([tile], probabilities[None], [weights], overwrite=overwrite)

    @torch.inference_mode()
    def add_batch(
        self,
        tiles: Sequence[Window],
        probabilities: torch.Tensor,
        weights: Sequence[torch.Tensor],
        *,
        overwrite: bool = False,
    ) -> None:
        """Add a batch of tiles, one after another in the order given (give them in global grid order).

        Each tile's ``p · w`` and ``w`` are staged side by side in a reused ``(N, K + 1, *tile)`` buffer (one
        multiplication for the batch when the tiles share their weights), then added to the block in one
        operation per tile.

        Args:
            tiles: The tiles' windows, ``N`` of them.
            probabilities: ``(N, K, *tile)`` float32 on the accumulator's device; not modified.
            weights: ``N`` float32 tensors ``(*tile)`` on the same device.
            overwrite: Accepted for symmetry with :class:`BlockAccumulator` (nothing is saved by it here).
        """
        n = len(tiles)
        shape = tuple(probabilities.shape)
        if len(shape) < 2 or shape[0] != n or shape[1] != self.num_classes or len(weights) != n:
            raise GeometryError(
                f"a batch of {n} tile(s) with {len(weights)} weight array(s) has predictions of shape {shape}, "
                f"expected ({n}, {self.num_classes}, *tile); check the model's number of classes."
            )
        for tile in tiles:
            if shape[2:] != tile.shape:
                raise GeometryError(
                    f"tile prediction has shape {shape[1:]}, expected {(self.num_classes, *tile.shape)} "
                    f"(K, *tile); check the model's number of classes and the tile size."
                )
        hits = [(i, inter) for i, tile in enumerate(tiles) if (inter := tile.intersection(self.block)) is not None]
        if not hits:
            return
        staged = self._stage(n, shape[2:])
        if all(w is weights[0] for w in weights):
            torch.mul(probabilities, weights[0], out=staged[:, : self.num_classes])
            staged[:, self.num_classes] = weights[0]
        else:
            for i, w in enumerate(weights):
                torch.mul(probabilities[i], w, out=staged[i, : self.num_classes])
                staged[i, self.num_classes] = w
        for i, inter in hits:
            src = inter.relative_to(tiles[i]).slices
            dst = inter.relative_to(self.block).slices
            self._acc[(slice(None), *dst)].add_(staged[i][(slice(None), *src)])

    def _stage(self, n: int, tile: tuple[int, ...]) -> torch.Tensor:
        """The reused ``(n, K + 1, *tile)`` staging buffer (grown when a batch is larger)."""
        buf = self._staging
        if buf is None or tuple(buf.shape[2:]) != tile or buf.shape[0] < n:
            buf = torch.empty((n, self.num_classes + 1, *tile), dtype=torch.float32, device=self.device)
            self._staging = buf
        return buf[:n]

    @torch.inference_mode()
    def finalize(
        self,
        *,
        nodata_label: int = 255,
        probabilities: ProbabilityDType | str | None = None,
        valid: np.ndarray | torch.Tensor | None = None,
        invalid_label: int | None = None,
        release: bool = False,
    ) -> BlockResult:
        """Normalise, argmax and apply the label rules on the device; copy the results back once.

        Args:
            nodata_label: Label of pixels that no tile counted.
            probabilities: Dtype of the probabilities to keep, or None to keep none.
            valid: Valid-input mask ``(*block)``: pixels outside it get ``invalid_label``; None: all valid.
            invalid_label: Label of invalid pixels (None: ``nodata_label``).
            release: The accumulator is not used again: normalise in place instead of into a new array.

        Returns:
            The finalised block as numpy arrays; labels are uint8 (uint16 when the labels need it).
        """
        dtype = labels_dtype(self.num_classes, nodata_label)
        label_dtype = torch.uint8 if dtype == np.uint8 else torch.int32
        self._staging = None
        if not bool(torch.isfinite(self.sums).all()):  # an argmax over NaN or inf is a label that means nothing
            raise ModelError(
                f"the model's outputs are not finite (NaN or inf) in block {self.block}: its labels would mean "
                "nothing; fix: check the input's values there (float values beyond float32's range, about 3.4e38, "
                "or NaN/inf that are not the input's nodata) and model.normalization, or the model itself"
            )
        covered = self.weights > 0
        gaps = not bool(covered.all())  # usually every pixel is covered: skip the fills (one sync on CUDA)
        kept = None
        if probabilities is None:
            labels = argmax_channels_tensor(self.sums, label_dtype)
        else:
            probs = self.sums.div_(self.weights) if release else self.sums / self.weights
            if gaps:
                probs.masked_fill_(~covered, 0.0)  # 0 / 0 where no tile counted
            labels = argmax_channels_tensor(probs, label_dtype)
            kept = quantize_tensor(probs, probabilities)
        if gaps:
            labels.masked_fill_(~covered, nodata_label)
        if valid is not None and not bool(valid.all()):
            mask = torch.as_tensor(valid, device=self.device)
            labels.masked_fill_(~mask, nodata_label if invalid_label is None else invalid_label)
        labels_np = labels.cpu().numpy()
        if labels_np.dtype != dtype:
            labels_np = labels_np.astype(dtype)
        return BlockResult(
            self.block,
            labels_np,
            kept.cpu().numpy() if kept is not None else None,
            covered.cpu().numpy(),
        )
