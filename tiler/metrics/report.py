"""The run report's content: the score table, class areas, the JSON file and two charts (confusion, per class).

Headlines never hide a failing class: beside FWIoU (which the large classes carry) every summary gives the
mean IoU and mean Dice over the foreground classes and names the worst class with its IoU.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tiler.errors import OutputError
from tiler.io.objects import AnyPath, PathArg, as_path
from tiler.jsonsafe import json_safe
from tiler.metrics.scores import Scores


def _fmt(value: float | None) -> str:
    return "     -" if value is None else f"{value:6.4f}"


def format_table(scores: Scores) -> str:
    """Render a plain-text table: per class IoU, Dice, accuracy, boundary IoU/F1, counts; then headlines."""
    width = max(5, *(len(n) for n in scores.class_names))
    cells = "  ".join(f"{h:>6}" for h in ("IoU", "Dice", "Acc", "bIoU", "bF1"))
    head = f"{'class':<{width}}  {cells}  {'truth px':>12}  {'pred px':>12}"
    lines = [head, "-" * len(head)]
    b_iou = scores.boundary_iou or (None,) * scores.num_classes
    b_f1 = scores.boundary_f1 or (None,) * scores.num_classes
    for i, name in enumerate(scores.class_names):
        absent = "  (absent)" if i in scores.absent_classes else ""
        lines.append(
            f"{name:<{width}}  {_fmt(scores.per_class_iou[i])}  {_fmt(scores.per_class_dice[i])}  "
            f"{_fmt(scores.per_class_accuracy[i])}  {_fmt(b_iou[i])}  {_fmt(b_f1[i])}  "
            f"{scores.truth_pixels[i]:>12,}  {scores.pred_pixels[i]:>12,}{absent}"
        )
    lines.append("-" * len(head))
    lines.append(f"FWIoU (frequency-weighted IoU): {scores.fwiou:.4f}")
    lines.append(f"mean IoU: {scores.miou:.4f}    mean Dice: {scores.dice:.4f}")
    if scores.foreground_miou is not None:
        lines.append(
            f"foreground ({len(scores.foreground)} classes): mean IoU {scores.foreground_miou:.4f}    "
            f"mean Dice {_fmt(scores.foreground_dice).strip()}"
        )
    if scores.worst_class is not None:
        lines.append(
            f"worst class: {scores.worst_class_name} (IoU {_fmt(scores.per_class_iou[scores.worst_class]).strip()})"
        )
    lines.append(
        f"pixel accuracy: {scores.pixel_accuracy:.4f}    "
        f"mean class accuracy: {scores.mean_class_accuracy:.4f}"
    )
    if scores.boundary_width is not None:
        lines.append(
            f"boundary (d = {scores.boundary_width} px): mean boundary IoU "
            f"{_fmt(scores.mean_boundary_iou).strip()}    "
            f"mean boundary F1 {_fmt(scores.mean_boundary_f1).strip()}"
        )
    lines.append(
        f"scored pixels: {scores.scored_pixels:,}    ignored pixels: {scores.ignored_pixels:,}    "
        f"no prediction: {scores.no_prediction_pixels:,}"
    )
    if scores.absent_classes:
        lines.append(f"absent from truth and prediction (not in the means): {list(scores.absent_classes)}")
    return "\n".join(lines)


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def score_lines(scores: dict[str, Any]) -> list[str]:
    """Markdown of a scores dict (:meth:`Scores.to_dict`): the headline, the worst class, a per-class table."""
    headline = (
        f"**FWIoU {scores['fwiou']:.4f}** · mIoU {scores['miou']:.4f} · mean Dice {scores['dice']:.4f} · "
        f"pixel accuracy {scores['pixel_accuracy']:.4f}"
    )
    lines = [headline, ""]
    if scores.get("foreground_miou") is not None:
        lines.append(
            f"- foreground classes ({len(scores['foreground_classes'])}): mean IoU "
            f"**{scores['foreground_miou']:.4f}**, mean Dice **{_num(scores.get('foreground_dice'))}**"
        )
    if scores.get("worst_class") is not None:
        lines.append(
            f"- worst class: **{scores['worst_class_name']}** (IoU {_num(scores.get('worst_class_iou'))})"
        )
    if scores.get("boundary_width") is not None:
        lines.append(
            f"- boundary band {scores['boundary_width']} px: mean boundary IoU "
            f"{_num(scores.get('mean_boundary_iou'))}, mean boundary F1 {_num(scores.get('mean_boundary_f1'))}"
        )
    lines += ["", "| class | IoU | Dice | truth px | predicted px |", "|---|---|---|---|---|"]
    rows = zip(
        scores["class_names"], scores["per_class_iou"], scores["per_class_dice"], scores["truth_pixels"],
        scores["pred_pixels"], strict=False,
    )
    for name, iou, dice, t, p in rows:
        lines.append(f"| {name} | {_num(iou)} | {_num(dice)} | {t:,} | {p:,} |")
    return lines


_UNIT_LABELS = {"m2": "m²", "ha": "ha", "mm2": "mm²", "mm3": "mm³", "ml": "ml"}


def area_lines(areas: dict[str, Any]) -> list[str]:
    """Markdown of :func:`tiler.io.classes.class_areas`: pixels, share and area per class in real units."""
    units = list(areas["units"])
    labelled = areas["total_pixels"] - areas["nodata_pixels"]
    head = ["class", "pixels", "share", *(_UNIT_LABELS.get(u, u) for u in units)]
    lines = [f"Pixel size: {areas['note']}.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in areas["classes"]:
        share = row["pixels"] / labelled if labelled else 0.0
        cells = [row["name"], f"{row['pixels']:,}", f"{share:.2%}", *(f"{row[u]:,.6g}" for u in units)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Nodata (no prediction): {areas['nodata_pixels']:,} of {areas['total_pixels']:,} pixels."]
    return lines


def write_json(payload: dict[str, Any], path: PathArg, *, before_move: Any = None) -> None:
    """Write ``payload`` (e.g. ``Scores.to_dict()`` plus file names) as indented JSON.

    ``before_move(tmp, final)``: called once the file is complete, before it takes its name (an intent record).
    """
    from tiler.io.atomic import write_bytes_atomic

    try:
        as_path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the score JSON {path}: {exc}; give a writable --json path.") from exc
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode(), before_move=before_move)


def _save(fig: Any, path: PathArg, before_move: Any = None) -> None:
    """Save a figure as PNG atomically (a temporary name beside it, then renamed; ``before_move`` just before)."""
    from tiler.io.atomic import atomic_path

    with atomic_path(path, what="draw the chart", before_move=before_move) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def chart_paths(json_path: PathArg) -> tuple[AnyPath, AnyPath]:
    """Where the charts go beside the JSON: ``<stem>.confusion.png`` and ``<stem>.per_class.png``."""
    p = as_path(json_path)
    return p.with_name(f"{p.stem}.confusion.png"), p.with_name(f"{p.stem}.per_class.png")


def plot_confusion(scores: Scores, path: PathArg, *, before_move: Any = None) -> None:
    """Draw the confusion matrix as a heatmap, each truth row normalised to 1 (counts in cells when few)."""
    from matplotlib.figure import Figure  # no pyplot: its global state is not thread-safe (jobs finish on threads)

    cm = scores.confusion_matrix
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    k = scores.num_classes
    cols = list(scores.class_names) + (["no pred"] if cm.shape[1] > k else [])
    size = max(4.0, 0.5 * len(cols) + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(k), scores.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(f"confusion (row-normalised), FWIoU {scores.fwiou:.3f}")
    if k <= 12:
        for (i, j), v in np.ndenumerate(cm):
            color = "w" if norm[i, j] < 0.5 else "k"
            ax.text(j, i, f"{v:,}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path, before_move)


def plot_per_class(scores: Scores, path: PathArg, *, before_move: Any = None) -> None:
    """Draw grouped bars per class: IoU, Dice and (when computed) boundary IoU and boundary F1."""
    from matplotlib.figure import Figure  # no pyplot: its global state is not thread-safe (jobs finish on threads)

    series = {"IoU": scores.per_class_iou, "Dice": scores.per_class_dice}
    if scores.boundary_iou is not None and scores.boundary_f1 is not None:
        series["boundary IoU"] = scores.boundary_iou
        series["boundary F1"] = scores.boundary_f1
    k = scores.num_classes
    x = np.arange(k)
    bar = 0.8 / len(series)
    fig = Figure(figsize=(max(5.0, 0.6 * k + 2), 4))
    ax = fig.subplots()
    for n, (label, values) in enumerate(series.items()):
        ax.bar(x + n * bar - 0.4 + bar / 2, [0.0 if v is None else v for v in values], bar, label=label)
    ax.set_xticks(x, scores.class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title(f"per class  (FWIoU {scores.fwiou:.3f}, mIoU {scores.miou:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, before_move)
