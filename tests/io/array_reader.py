"""A reader over a numpy array, for exports that read the input (OME-Zarr image, quicklook overlay)."""

from __future__ import annotations

import numpy as np

from tiler.geometry import Window
from tiler.io.base import Georef, Reader


class ArrayReader(Reader):
    """(C, *shape) pixels in memory behind the Reader contract."""

    format = "array"

    def __init__(self, pixels: np.ndarray, *, georef: Georef | None = None, **extra: object) -> None:
        self.path = "<array>"
        self.pixels = pixels
        self.shape = tuple(pixels.shape[1:])
        self.channels = pixels.shape[0]
        self.dtype = pixels.dtype
        self.georef = georef or Georef()
        self.nodata = None
        for key, value in extra.items():
            setattr(self, key, value)

    def _open(self) -> object:
        return self.pixels

    def _read_inside(self, window: Window) -> np.ndarray:
        return self.pixels[(slice(None), *window.slices)].copy()
