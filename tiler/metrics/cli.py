"""The ``tiler score PRED TRUTH`` subcommand: score a prediction file against its truth, out of core."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from tiler.errors import ScoreError

if TYPE_CHECKING:  # scoring (dask, scipy, matplotlib) is imported when `tiler score` runs, not to build the parser
    from tiler.metrics.boundary import BoundaryWidth


def _incomplete_store(path: str) -> str | None:
    """The tiler output store ``path`` is (or holds, for ``store.zarr/labels``), when it is not complete."""
    from tiler.io.store import OutputStore

    for candidate in (path.rstrip("/"), os.path.dirname(path.rstrip("/"))):
        if candidate and OutputStore.is_tiler_store(candidate):
            return None if OutputStore.open(candidate, mode="r").complete else candidate
    return None


def _boundary_arg(text: str) -> BoundaryWidth | None:
    from tiler.metrics.boundary import BoundaryWidth

    if text.strip() in ("0", "0px", "none", "off"):
        return None
    return BoundaryWidth.parse(text)


def run_score(args: argparse.Namespace) -> int:
    """Handle ``tiler score``: print the table, write the JSON and charts; exit code 0 (errors are raised)."""
    from tiler.metrics.files import score_paths
    from tiler.metrics.report import chart_paths, format_table, plot_confusion, plot_per_class, write_json

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
    if not getattr(args, "quiet", False):
        print(f"prediction: {details['prediction']}\ntruth:      {details['truth']}")
        for note in details["notes"]:
            print(f"note: {note}")
        print(format_table(scores))
        if args.json:
            print(f"wrote {args.json} and its charts beside it")
    return 0


NAME = "score"
HELP = "score a prediction against its truth (FWIoU, IoU, Dice, boundary IoU/F1)"
DESCRIPTION = (
    "Score a label map against its truth, chunk by chunk (never loading either whole). PRED and "
    "TRUTH may be GeoTIFF, NIfTI, a zarr array or the engine's output store, on the same grid."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``tiler score``'s arguments to its parser (:mod:`tiler.cli` adds the common options and registers it)."""
    from tiler.metrics.boundary import DEFAULT_WIDTH_PIXELS

    parser.add_argument("pred", metavar="PRED", help="predicted labels")
    parser.add_argument("truth", metavar="TRUTH", help="ground-truth labels")
    parser.add_argument("--num-classes", type=int, default=None, metavar="N",
                        help="number of classes K (default: the store's, else 1 + the largest label)")
    parser.add_argument("--ignore-index", type=int, default=255, metavar="V",
                        help="truth label never scored (default 255)")
    # one default for every score of a store: the job's own (scoring.boundary_width), so `tiler score` and the
    # job's report give the same boundary IoU
    default = f"{DEFAULT_WIDTH_PIXELS}px"
    parser.add_argument("--boundary-width", default=default, metavar="D",
                        help=f"boundary band: pixels ('5px') or below 1 a fraction of the image diagonal ('0.02'); "
                        f"default {default}, as a job's scoring.boundary_width; 0 skips the boundary scores")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the scores here, and <stem>.confusion.png, <stem>.per_class.png by it")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="score a tiler store that is not complete (missing blocks count as unscored nodata)")


def run(args: argparse.Namespace) -> int:
    """Handle ``tiler score`` (see :func:`run_score`)."""
    return run_score(args)
