"""Where the real sample files are: ``shared/data`` beside the checkout (as in CI), else this workplace's copy."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [
    Path(os.environ["TILER_SHARED_DATA"]) if os.environ.get("TILER_SHARED_DATA") else None,
    _REPO.parent / "shared" / "data",
    Path("/work/shared/data"),
]
SHARED_DATA = next((p for p in _CANDIDATES if p is not None and (p / "RGB.byte.tif").exists()), _CANDIDATES[1])
"""The folder holding RGB.byte.tif, corrupt.tif, all-nodata.tif, float_raster_with_nodata.tif, anatomical.nii."""
