"""``tiler archive`` and ``python -m pipelines.archive``: load an archive file, run it, report, exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from tiler.archive.config import load_archive
from tiler.archive.run import run_archive
from tiler.errors import TilerError


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="archive YAML file (an archive section plus a job template)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key, e.g. --set tiling.overlap=16 or --set archive.root=/data/out (repeatable)",
    )
    parser.add_argument(
        "--engine", choices=("ray", "local"), default="ray",
        help="ray (default: RAY_ADDRESS or an embedded local Ray) or local (in-process)",
    )
    parser.add_argument(  # SUPPRESS: keeps `tiler --quiet archive ...` from being reset by this default
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress lines"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run an archive from parsed arguments; return 0 (nothing failed), 1 (some failed) or 2 (bad setup)."""
    from tiler.cli import stopped_code

    try:
        archive = load_archive(args.config, args.overrides)
        report = run_archive(archive, engine=args.engine, quiet=bool(getattr(args, "quiet", False)))
    except TilerError as exc:
        print(f"tiler archive: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return stopped_code("archive", exc)
    c = report.counts
    print(
        f"{c['done']} done, {c['skipped']} skipped, {c['failed']} failed of {c['total']} inputs; "
        f"report: {report.root}/latest.md"
    )
    return report.exit_code


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tiler archive CONFIG`` on argparse subparsers (its ``func`` returns the exit code)."""
    parser = subparsers.add_parser(
        "archive",
        help="segment every input of an archive, skipping those already done (SQLite ledger)",
        description="Apply one job template to every input of a glob or manifest; reruns process only new, "
        "changed or failed inputs. Exit code: 0 nothing failed, 1 some input failed, 2 bad config.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pipelines.archive``."""
    from tiler.cli import handle_sigterm

    handle_sigterm()
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.archive",
        description="Segment every input of an archive, skipping those already done (SQLite ledger).",
    )
    _add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
