"""The default class palette: one RGB colour per class label wherever a model or a store names no colours.

Class 0 is black (the background of most label maps); the others are distinct, saturated colours that
stay apart in a quicklook. Labels past the palette cycle through it again.
"""

from __future__ import annotations

__all__ = ["PALETTE", "default_colors"]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
)  # fmt: skip


def default_colors(n: int) -> tuple[tuple[int, int, int], ...]:
    """The colours of classes ``0 .. n-1``.

    >>> default_colors(3)
    ((0, 0, 0), (230, 25, 75), (60, 180, 75))
    >>> default_colors(12)[10] == default_colors(12)[0]
    True
    """
    return tuple(PALETTE[i % len(PALETTE)] for i in range(n))
