"""JSON-safe values: the one sanitiser every JSON file tiler writes (scores, reports, ledger rows) goes through."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any) -> Any:
    """Return ``value`` as plain JSON types: NaN and ±inf as None, numpy scalars and arrays as Python values.

    Mappings get string keys, tuples become lists, anything else JSON cannot hold becomes its ``str``.

    >>> import numpy as np
    >>> json_safe({"iou": (np.float32(0.5), float("nan")), 3: np.arange(2)})
    {'iou': [0.5, None], '3': [0, 1]}
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
