"""Headlines that do not hide a failing class: foreground means and the worst class beside FWIoU."""

from __future__ import annotations

import numpy as np
import pytest

from tiler.metrics.report import area_lines, format_table, score_lines
from tiler.metrics.scores import scores_from_confusion

CT = ("background", "liver", "lesion")
# n[truth, pred]: background and liver well found, the lesion never predicted
CT_MATRIX = np.array([[9000, 50, 0], [40, 900, 0], [0, 30, 0]], dtype=np.int64)


def test_a_missed_lesion_is_named_although_fwiou_is_high():
    s = scores_from_confusion(CT_MATRIX, class_names=CT)
    assert s.fwiou > 0.97 and s.foreground_miou < 0.5
    assert s.per_class_iou[2] == 0.0
    assert s.foreground == (1, 2)
    liver_iou = 900 / (940 + 980 - 900)
    assert s.foreground_miou == pytest.approx((liver_iou + 0.0) / 2)
    assert s.foreground_dice == pytest.approx((2 * 900 / (940 + 980) + 0.0) / 2)
    assert s.worst_class == 2 and s.worst_class_name == "lesion"
    d = s.to_dict()
    assert (d["worst_class_name"], d["worst_class_iou"], d["foreground_classes"]) == ("lesion", 0.0, [1, 2])


@pytest.mark.parametrize(
    ("names", "background", "foreground"),
    [
        pytest.param(("water", "forest", "urban"), None, (0, 1, 2), id="no-background-class"),
        pytest.param(("Background", "a", "b"), None, (1, 2), id="named-background"),
        pytest.param(("water", "forest", "urban"), [1], (0, 2), id="explicit"),
    ],
)
def test_foreground_classes(names, background, foreground):
    assert scores_from_confusion(CT_MATRIX, class_names=names, background=background).foreground == foreground


def test_classes_absent_from_truth_and_prediction_are_not_the_worst():
    cm = np.array([[50, 5, 0], [0, 40, 0], [0, 0, 0]], dtype=np.int64)
    s = scores_from_confusion(cm, class_names=("background", "a", "b"))
    assert s.absent_classes == (2,) and 2 not in s.foreground  # absent: not averaged, not named
    assert s.foreground_miou == pytest.approx(40 / 45) and s.worst_class == 1


def test_report_text_names_the_worst_class():
    s = scores_from_confusion(CT_MATRIX, class_names=CT)
    table = format_table(s)
    assert "worst class: lesion (IoU 0.0000)" in table and "foreground (2 classes): mean IoU" in table
    md = "\n".join(score_lines(s.to_dict()))
    assert "worst class: **lesion**" in md and "FWIoU" in md and "| lesion | 0.0000 |" in md


def test_area_lines_give_every_class_in_its_units():
    areas = {
        "unit": "m2", "note": "pixel 10 m on a side", "units": ["m2", "ha"], "nodata_pixels": 10,
        "total_pixels": 110,
        "classes": [{"class": 0, "name": "water", "pixels": 60, "m2": 6000.0, "ha": 0.6},
                    {"class": 1, "name": "forest", "pixels": 40, "m2": 4000.0, "ha": 0.4}],
    }
    lines = area_lines(areas)
    assert "| class | pixels | share | m² | ha |" in lines
    assert "| water | 60 | 60.00% | 6,000 | 0.6 |" in lines
    assert any("10 of 110" in line for line in lines)
