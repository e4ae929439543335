"""Fixtures for the io tests: a tiny stand-in scene and small files written in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest

from tests.shared_data import SHARED_DATA
from tiler.geometry import Window

DATA = str(SHARED_DATA)


class StandInScene:
    """A tiny deterministic scene with the tiler.scenes API (content independent of the window)."""

    nodata_label = 255
    class_names = ("a", "b", "c")
    class_colors = ((255, 0, 0), (0, 255, 0), (0, 0, 255))

    def __init__(
        self, shape, *, channels=3, dtype=np.uint8, image_nodata=None, spacing=None, mpp=None, seed=0
    ):
        self.shape = tuple(shape)
        self.channels = channels
        self.dtype = np.dtype(dtype)
        self.image_nodata = image_nodata
        self.num_classes = 3
        if spacing is not None:
            self.spacing = tuple(spacing)
        if mpp is not None:
            self.mpp = mpp
        rng = np.random.default_rng(seed)
        hi = 250 if self.dtype == np.uint8 else 3000
        self._image = rng.integers(1, hi, (channels, *self.shape)).astype(self.dtype)
        self._labels = rng.integers(0, 3, self.shape).astype(np.uint8)
        if image_nodata is not None:  # a nodata corner
            corner = tuple(slice(0, n // 4) for n in self.shape)
            self._image[(slice(None), *corner)] = image_nodata
            self._labels[corner] = 255

    def read(self, window: Window):
        if not Window.from_shape(self.shape).contains(window):
            raise ValueError(f"{window} outside {self.shape}")
        return self._image[(slice(None), *window.slices)].copy(), self._labels[window.slices].copy()


@pytest.fixture
def stand_in():
    return StandInScene
