"""Model outputs: a network's output as the ``(N, K, *S)`` logits the runner softmaxes.

The class names and colours of a network without a spec are :func:`tiler.model.loaded.class_labels`.
"""

from __future__ import annotations

import torch

__all__ = ["TwoClassLogits", "as_logits"]


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
