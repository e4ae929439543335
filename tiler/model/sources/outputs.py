"""Model outputs: a network's output as the ``(N, K, *S)`` logits the runner softmaxes, and the class labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tiler.errors import ModelError
from tiler.model.checkpoint import check_names_colors
from tiler.palette import default_colors as _default_colors

__all__ = ["TwoClassLogits", "as_logits", "class_labels"]


def class_labels(
    classes: int,
    names: Sequence[str] | None,
    colors: Sequence[Sequence[int]] | None,
    *,
    model: str,
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """One name and one RGB colour per class: the given ones (checked), else ``class_i`` and the default palette."""
    check_names_colors(names, colors, source=model)
    out_names = tuple(str(n) for n in names) if names else tuple(f"class_{i}" for i in range(classes))
    if len(out_names) != classes:
        raise ModelError(
            f"class_names={list(out_names)} has {len(out_names)} names but {model} predicts {classes} classes; "
            "give one name per class."
        )
    out_colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors) if colors else _default_colors(classes)
    if len(out_colors) != classes:
        raise ModelError(f"class_colors has {len(out_colors)} colours for {classes} classes; give one each.")
    return out_names, out_colors


def as_logits(y: torch.Tensor, *, probabilities: bool) -> torch.Tensor:
    """``(N, K, *S)`` logits whose softmax is the model's class probabilities.

    A single channel is a binary model (sigmoid): logit ``z`` becomes ``[0, z]`` (softmax gives
    ``[1 - σ(z), σ(z)]``), probability ``p`` becomes ``[log(1 - p), log p]``. Several channels of
    probabilities become their logarithm (softmax returns them, renormalised).

    >>> as_logits(torch.tensor([[[0.0]]]), probabilities=False).softmax(1).flatten().tolist()
    [0.5, 0.5]
    """
    y = y.float()
    if y.shape[1] == 1:
        if probabilities:
            p = y.clamp(1e-12, 1 - 1e-7)
            return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)
        return torch.cat([torch.zeros_like(y), y], dim=1)
    return torch.log(y.clamp_min(1e-30)) if probabilities else y


class TwoClassLogits(torch.nn.Module):
    """Wrap a one-channel (sigmoid) network so that it returns two-class logits ``[0, z]``."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two-class logits ``(N, 2, *S)`` from the wrapped network's ``(N, 1, *S)``."""
        y = self.network(x)
        if isinstance(y, list | tuple):
            y = y[0]
        return as_logits(y, probabilities=False)
