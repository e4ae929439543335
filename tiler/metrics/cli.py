"""The ``tiler score PRED TRUTH`` subcommand: score a prediction file against its truth, out of core."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import dask.array as da
import numpy as np

from tiler.errors import ScoreError, TilerError
from tiler.metrics._sources import LabelSource, as_dask, check_compatible, open_labels
from tiler.metrics.boundary import BoundaryWidth, boundary_counts_chunked
from tiler.metrics.confusion import count_pixels_chunked
from tiler.metrics.report import chart_paths, format_table, plot_confusion, plot_per_class, write_json
from tiler.metrics.scores import Scores, scores_from_confusion

DEFAULT_BOUNDARY_WIDTH = "0.02"
DEFAULT_WIDTH = BoundaryWidth(0.02)


def _max_label(array: da.Array, skip: list[float | None]) -> int:
    kept = array.astype(np.int64)
    for value in skip:
        if value is not None:
            kept = da.where(array == value, -1, kept)
    return int(kept.max().compute())


def infer_num_classes(truth: da.Array, pred: da.Array, *, ignore_index: float | None,
                      truth_nodata: float | None, pred_nodata: float | None) -> int:
    """``K`` = 1 + the largest label in either map, skipping the ignore index and both nodata values."""
    top = max(_max_label(truth, [ignore_index, truth_nodata]), _max_label(pred, [pred_nodata, ignore_index]))
    if top < 0:
        raise ScoreError("no label values left after ignore_index/nodata; pass --num-classes N explicitly.")
    return top + 1


def score_paths(
    pred_path: str,
    truth_path: str,
    *,
    num_classes: int | None = None,
    ignore_index: float | None = 255,
    boundary_width: BoundaryWidth | None = DEFAULT_WIDTH,
) -> tuple[Scores, dict[str, Any]]:
    """Score the label map at ``pred_path`` against ``truth_path`` without loading either whole.

    Args:
        pred_path: Prediction: GeoTIFF, NIfTI, zarr array or the engine's output store.
        truth_path: Truth, any of the same formats, on the same grid.
        num_classes: ``K``; None = the engine store's ``num_classes``, else 1 + the largest label seen.
        ignore_index: Truth value never scored.
        boundary_width: Band width for the boundary scores; None skips them.

    Returns:
        ``(scores, details)``: details holds file names, nodata values, notes and timings for the report.

    Raises:
        ScoreError: Shapes or georeferencing differ, labels are out of range, or nothing is left to score.

    """
    pred, truth = open_labels(pred_path), open_labels(truth_path)
    notes = check_compatible(pred, truth)
    t, p = as_dask(truth, pred)
    started = time.perf_counter()
    if num_classes is None:
        num_classes = _stored_num_classes(pred) or infer_num_classes(
            t, p, ignore_index=ignore_index, truth_nodata=truth.nodata, pred_nodata=pred.nodata
        )
    rules: dict[str, Any] = {"num_classes": num_classes, "ignore_index": ignore_index,
                             "truth_nodata": truth.nodata, "pred_nodata": pred.nodata}
    try:
        counts = count_pixels_chunked(t, p, **rules)
    except ScoreError as exc:
        raise ScoreError(f"scoring {pred.path} against {truth.path}: {exc}") from exc
    counted = time.perf_counter()
    boundary = width = None
    if boundary_width is not None and counts.scored > 0:
        width = boundary_width.pixels(truth.shape)
        boundary = boundary_counts_chunked(t, p, width=width, **rules)
    names = pred.class_names if pred.class_names and len(pred.class_names) == num_classes else None
    scores = scores_from_confusion(
        counts.confusion, class_names=names, ignored_pixels=counts.ignored, boundary=boundary,
        boundary_width=width,
    )
    pixels = int(np.prod(truth.shape))
    details = {
        "prediction": pred.path,
        "truth": truth.path,
        "shape": list(truth.shape),
        "ignore_index": ignore_index,
        "truth_nodata": truth.nodata,
        "prediction_nodata": pred.nodata,
        "notes": notes,
        "seconds_confusion": counted - started,
        "seconds_boundary": time.perf_counter() - counted,
        "mpixel_per_s_confusion": pixels / max(counted - started, 1e-9) / 1e6,
    }
    return scores, details


def _stored_num_classes(source: LabelSource) -> int | None:
    if source.kind != "store":
        return None
    return source.num_classes or (len(source.class_names) if source.class_names else None)


def _incomplete_store(path: str) -> str | None:
    """The tiler output store ``path`` is (or holds, for ``store.zarr/labels``), when it is not complete."""
    from tiler.io.store import OutputStore

    for candidate in (path.rstrip("/"), os.path.dirname(path.rstrip("/"))):
        if candidate and OutputStore.is_tiler_store(candidate):
            return None if OutputStore.open(candidate, mode="r").complete else candidate
    return None


def _boundary_arg(text: str) -> BoundaryWidth | None:
    if text.strip() in ("0", "0px", "none", "off"):
        return None
    return BoundaryWidth.parse(text)


def run_score(args: argparse.Namespace) -> int:
    """Handle ``tiler score``: print the table, write the JSON and charts; exit code 0, or 2 on an error."""
    try:
        incomplete = _incomplete_store(args.pred)
        if incomplete and not getattr(args, "allow_incomplete", False):
            raise ScoreError(
                f"{incomplete} is not complete (a job is running on it, failed or was stopped): its missing blocks "
                "would be scored as nodata; fix: rerun the job to finish it, or pass --allow-incomplete to score "
                "what is there (the output then says so)"
            )
        scores, details = score_paths(
            args.pred,
            args.truth,
            num_classes=args.num_classes,
            ignore_index=args.ignore_index,
            boundary_width=_boundary_arg(args.boundary_width),
        )
        if incomplete:
            note = f"INCOMPLETE store {incomplete}: blocks still missing are not scored"
            details["notes"] = [*details["notes"], note]
            details["incomplete"] = True
        if args.json:
            write_json({**scores.to_dict(), **details}, args.json)
            confusion_png, per_class_png = chart_paths(args.json)
            plot_confusion(scores, confusion_png)
            plot_per_class(scores, per_class_png)
    except TilerError as exc:
        print(f"tiler score: error: {exc}", file=sys.stderr)
        return 2
    if not getattr(args, "quiet", False):
        print(f"prediction: {details['prediction']}\ntruth:      {details['truth']}")
        for note in details["notes"]:
            print(f"note: {note}")
        print(format_table(scores))
        if args.json:
            print(f"wrote {args.json} and its charts beside it")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``tiler score PRED TRUTH ...`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "score",
        help="score a prediction against its truth (FWIoU, IoU, Dice, boundary IoU/F1)",
        description=(
            "Score a label map against its truth, chunk by chunk (never loading either whole). PRED and "
            "TRUTH may be GeoTIFF, NIfTI, a zarr array or the engine's output store, on the same grid."
        ),
    )
    parser.add_argument("pred", metavar="PRED", help="predicted labels")
    parser.add_argument("truth", metavar="TRUTH", help="ground-truth labels")
    parser.add_argument("--num-classes", type=int, default=None, metavar="N",
                        help="number of classes K (default: the store's, else 1 + the largest label)")
    parser.add_argument("--ignore-index", type=int, default=255, metavar="V",
                        help="truth label never scored (default 255)")
    parser.add_argument("--boundary-width", default=DEFAULT_BOUNDARY_WIDTH, metavar="D",
                        help="boundary band: a fraction of the image diagonal (0.02, the default) or pixels "
                        "('5px'); 0 skips the boundary scores")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the scores here, and <stem>.confusion.png, <stem>.per_class.png by it")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="score a tiler store that is not complete (missing blocks count as unscored nodata)")
    parser.add_argument(  # SUPPRESS: keeps `tiler --quiet score ...` from being reset by this default
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="print nothing on success"
    )
    parser.set_defaults(func=run_score)
