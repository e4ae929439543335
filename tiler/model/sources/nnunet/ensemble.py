"""nnU-Net's per-tile prediction as one torch module: transpose, 2D slicing, mirroring and folds.

For a batch of tiles in the input's axis order it does what nnU-Net's predictor does to one patch:

1. permute the spatial axes by the plans' ``transpose_forward`` (and drop the one-slice axis for a 2D
   configuration: a 3D input is tiled ``(1, y, x)`` along the slicing axis);
2. for each fold's network, predict the tile and, with mirroring, every non-empty combination of the
   checkpoint's ``inference_allowed_mirroring_axes`` flipped (in ``itertools.combinations`` order, as nnU-Net);
3. average those ``folds × mirrors`` predictions, as logits (nnU-Net's predictor: sum, then divide) or as
   softmax probabilities;
4. permute back by ``transpose_backward``.

tiler's runner softmaxes what a network returns and blends the probabilities of overlapping tiles, while
nnU-Net blends logits. With ``average="logits"`` the module returns ``log q`` for the *affine embedding* of the
averaged logits ``L`` into the simplex, ``q_k = (1 + (L_k - mean(L)) / 2B) / K`` (``B`` =
:data:`LOGIT_BOUND`, ``|L_k - mean(L)|`` clamped to ``B``). The runner's softmax gives back ``q``, and a
weighted sum of ``q`` over tiles is ``Σw / K + Σ w (L - mean L) / 2BK``: its argmax is the argmax of nnU-Net's
weighted sum of logits, exactly (to float32 rounding, ~1e-4 in logit units). The blended ``q`` are then not
class probabilities. With ``average="probabilities"`` it returns ``log p`` of the mean softmax ``p``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from tiler.errors import ModelError

__all__ = ["LOGIT_BOUND", "NnunetEnsemble", "embed_logits", "mirror_combinations"]

LOGIT_BOUND = 200.0
"""``B``: logits further than this from their mean saturate in :func:`embed_logits` (nnU-Net's stay far inside)."""


def embed_logits(logits: torch.Tensor) -> torch.Tensor:
    """``log q`` with ``q_k = (1 + (L_k - mean_k L) / 2B) / K``: blending ``q`` linearly blends the logits ``L``.

    >>> q = embed_logits(torch.tensor([[1.0, 3.0]])).softmax(1)
    >>> bool(q[0, 1] > q[0, 0]), round(float(q.sum()), 6)
    (True, 1.0)
    """
    centred = (logits - logits.mean(1, keepdim=True)).clamp(-LOGIT_BOUND, LOGIT_BOUND)
    return torch.log1p(centred / (2 * LOGIT_BOUND)) - torch.log(torch.tensor(float(logits.shape[1])))


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """nnU-Net's mirrored passes: the identity ``()`` then every non-empty combination of ``axes``, smallest first.

    >>> mirror_combinations((0, 1))
    [(), (0,), (1,), (0, 1)]
    """
    axes = tuple(axes)
    return [(), *(c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1))]


class NnunetEnsemble(nn.Module):
    """Folds × mirrors of one nnU-Net configuration: tiles ``(N, C, *S)`` in → logits ``(N, K, *S)`` out.

    Args:
        networks: One network per fold (eval mode, weights loaded).
        in_channels: Input channels the networks read.
        transpose_forward: The plans' permutation of the three image axes.
        planar: A 2D configuration: the networks are 2D and tiles are one slice thick on transposed axis 0.
        mirror_axes: Network spatial axes to mirror over (empty: no mirroring).
        average: ``"logits"`` (nnU-Net's arithmetic, returned embedded: see the module docstring) or
            ``"probabilities"``.

    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        *,
        in_channels: int,
        transpose_forward: Sequence[int],
        planar: bool,
        mirror_axes: Sequence[int] = (),
        average: str = "logits",
    ) -> None:
        super().__init__()
        if not networks:
            raise ModelError("an nnU-Net ensemble needs at least one fold's network.")
        self.networks = nn.ModuleList(networks)
        self.in_channels = in_channels
        self.forward_axes = tuple(int(a) for a in transpose_forward)
        self.backward_axes = tuple(self.forward_axes.index(i) for i in range(len(self.forward_axes)))
        self.planar = planar
        self.flips = mirror_combinations(mirror_axes)
        if average not in ("probabilities", "logits"):
            raise ModelError(f"average={average!r}; choose 'probabilities' or 'logits'.")
        self.average = average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K, *S)`` for tiles ``(N, C, *S)`` (``S`` 2D for an image, 3D for a volume)."""
        if x.ndim not in (4, 5) or x.shape[1] != self.in_channels:
            raise ModelError(
                f"nnU-Net model reads tiles (N, {self.in_channels}, *S) with 2 or 3 spatial axes; got {tuple(x.shape)}."
            )
        image = x.ndim == 4
        if image:  # a 2D image is nnU-Net's (1, y, x)
            x = x.unsqueeze(2)
        x = x.permute(0, 1, *(2 + a for a in self.forward_axes))
        if self.planar:
            if x.shape[2] != 1:
                raise ModelError(
                    f"a 2D nnU-Net configuration predicts one slice at a time; tiles {tuple(x.shape[2:])} (transposed) "
                    "are not one slice thick on the slicing axis. Set that axis of tiling.tile to 1."
                )
            x = x[:, :, 0]
        y = self._ensemble(x)
        if self.planar:
            y = y.unsqueeze(2)
        y = y.permute(0, 1, *(2 + a for a in self.backward_axes))
        return y[:, :, 0] if image else y

    def _ensemble(self, x: torch.Tensor) -> torch.Tensor:
        dims = [tuple(2 + a for a in flip) for flip in self.flips]
        batch = torch.cat([x.flip(d) if d else x for d in dims], dim=0) if len(dims) > 1 else x
        total: torch.Tensor | None = None
        for network in self.networks:
            out = network(batch)
            if isinstance(out, list | tuple):
                out = out[0]
            parts = [p.flip(d) if d else p for p, d in zip(out.float().split(x.shape[0]), dims, strict=True)]
            if self.average == "probabilities":
                parts = [p.softmax(1) for p in parts]
            fold = parts[0].clone()
            for p in parts[1:]:  # nnU-Net: prediction += flipped prediction, in combination order
                fold += p
            fold /= len(parts)
            total = fold if total is None else total.add_(fold)
        assert total is not None  # at least one network
        if len(self.networks) > 1:
            total /= len(self.networks)
        if self.average == "probabilities":
            return torch.log(total.clamp_min(1e-30))
        return embed_logits(total)
