"""The synthetic scene interface (:mod:`tiler.scenes`): :class:`SceneSpec` and the :class:`Scene` base class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiler.errors import ConfigError, GeometryError
from tiler.geometry import Window

__all__ = ["Scene", "SceneSpec"]


@dataclass(frozen=True)
class SceneSpec:
    """What a synthetic scene is: its kind, global shape, seed and kind-specific parameters.

    Attributes:
        kind: ``"satellite"``, ``"ct"`` or ``"slide"``.
        shape: Spatial shape ``(H, W)`` or ``(D, H, W)``.
        seed: Seed of every random choice.
        params: Extra parameters (``bands`` for satellite, ``spacing`` for CT, ``mpp`` for slide).

    """

    kind: str
    shape: tuple[int, ...]
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)


class Scene:
    """A synthetic image with ground truth, readable through any window of its spatial extent.

    Attributes:
        spec: The spec the scene was made from.
        shape: Spatial shape ``(H, W)`` or ``(D, H, W)``.
        channels: Number of image channels (bands).
        dtype: Image dtype.
        num_classes: Number of truth classes (labels ``0 .. num_classes - 1``).
        class_names: One name per class.
        class_colors: One RGB colour per class.
        nodata_label: Truth value of nodata pixels.
        image_nodata: Image value marking nodata pixels (in every band), or None when there are none.

    """

    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()
    nodata_label: int = 255
    image_nodata: float | None = None
    channels: int = 1
    dtype: np.dtype = np.dtype(np.uint8)

    def __init__(self, spec: SceneSpec, ndim: int) -> None:
        shape = tuple(int(s) for s in spec.shape)
        if len(shape) != ndim or any(s < 1 for s in shape):
            raise ConfigError(
                f"scene shape={shape} is not valid for a {spec.kind} scene: give {ndim} positive sizes "
                f"({'(H, W)' if ndim == 2 else '(D, H, W)'})."
            )
        self.spec = spec
        self.shape: tuple[int, ...] = shape
        self.seed = int(spec.seed)
        if self.seed < 0:
            raise ConfigError(f"scene seed={self.seed} must be >= 0.")

    @property
    def num_classes(self) -> int:
        """Number of truth classes."""
        return len(self.class_names)

    @property
    def window(self) -> Window:
        """The whole scene as a window."""
        return Window.from_shape(self.shape)

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Generate the image and the truth inside ``window``.

        Args:
            window: Spatial window inside the scene (default: the whole scene).

        Returns:
            image ``(C, *window.shape)`` of :attr:`dtype`, labels ``window.shape`` uint8 (``nodata_label``
            where the image is nodata).

        """
        window = self.window if window is None else window
        if window.ndim != len(self.shape) or not self.window.contains(window):
            raise GeometryError(
                f"window {window} does not lie inside the scene of shape {self.shape}; read windows with "
                f"0 <= start < stop <= shape on each of the {len(self.shape)} axes."
            )
        image, labels = self._render(window)
        return image, labels

    def _render(self, window: Window) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _coords(self, window: Window) -> list[np.ndarray]:
        return [np.arange(a, b, dtype=np.float64) for a, b in zip(window.start, window.stop, strict=True)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, seed={self.seed}, channels={self.channels})"
