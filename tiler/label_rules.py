"""The label rules: a model's classes are labels 0..K-1, the nodata label is none of them, and the dtype holds both.

One rule for every place that knows both numbers: the config (``model.spec.out_channels`` against
``output.nodata_label``) and the job, once the checkpoint has said how many classes it predicts.
"""

from __future__ import annotations

import numpy as np

from tiler.errors import GeometryError, ModelError

__all__ = ["check_nodata_label", "labels_dtype", "nodata_label_problem"]


def labels_dtype(num_classes: int, nodata_label: int) -> np.dtype:
    """uint8 when every class and the nodata label fit in a byte, else uint16."""
    if num_classes < 1:
        raise GeometryError(f"num_classes={num_classes} must be at least 1.")
    top = max(num_classes - 1, nodata_label)
    if top > np.iinfo(np.uint16).max or nodata_label < 0:
        raise GeometryError(f"nodata_label={nodata_label} must lie in 0..65535.")
    return np.dtype(np.uint8) if top <= 255 else np.dtype(np.uint16)


def nodata_label_problem(num_classes: int, nodata_label: int) -> str | None:
    """What is wrong with ``nodata_label`` for a model of ``num_classes`` classes, or None when it is fine.

    >>> nodata_label_problem(255, 255) is None, nodata_label_problem(300, 255)
    (True, 'is a class index of the model (out_channels=300)')
    """
    if num_classes > nodata_label:
        return f"is a class index of the model (out_channels={num_classes})"
    return None


def check_nodata_label(num_classes: int, nodata_label: int, *, source: str) -> None:
    """Raise ModelError when the model at ``source`` predicts ``nodata_label`` as a class.

    Args:
        num_classes: Classes the loaded model predicts (labels ``0..num_classes-1``).
        nodata_label: The job's ``output.nodata_label``.
        source: The weights file, for the message.

    """
    problem = nodata_label_problem(num_classes, nodata_label)
    if problem is not None:
        fix = 65535 if num_classes > 255 else 255
        raise ModelError(
            f"output.nodata_label={nodata_label} {problem} of {source}, whose labels are 0..{num_classes - 1}: "
            f"nodata and a class would be one value. Fix: set output.nodata_label to a label no class can take, "
            f"e.g. {fix}."
        )
