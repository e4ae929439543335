"""``tiler archive``: load an archive file, run it, report, exit code (``python -m pipelines.archive`` runs it too).

Like every subcommand module: ``NAME``, ``HELP``, ``DESCRIPTION``, :func:`configure` and :func:`run`;
:mod:`tiler.cli` registers it (this module never imports the CLI).
"""

from __future__ import annotations

import argparse
import json
import sys

from tiler.archive.config import load_archive
from tiler.archive.run import run_archive


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


def run_from_args(args: argparse.Namespace) -> int:
    """Run an archive from parsed arguments; return 0 (nothing failed) or 1 (some input failed).

    With ``--quiet`` nothing is printed but the failures: one line per failed input on stderr, naming it and its
    error (without it, each was printed as it ended, above the progress bar). Errors that stop the whole archive
    are raised (:func:`tiler.cli.main` turns them into exit codes: 2 for a bad config, 1 for a run that failed).
    """
    quiet = bool(getattr(args, "quiet", False))
    archive = load_archive(args.config, args.overrides)
    report = run_archive(archive, engine=args.engine, quiet=quiet)
    if quiet:
        for line in report.failure_lines():
            print(f"tiler archive: failed: {line}", file=sys.stderr)
    if getattr(args, "json_logs", False):
        print(json.dumps({"event": "done", **report.counts, "report": f"{report.root}/latest.json"}))
    elif not quiet:
        print(f"{report.summary()}; report: {report.root}/latest.md")
    return report.exit_code


NAME = "archive"
HELP = "segment every input of an archive, skipping those already done (SQLite ledger)"
DESCRIPTION = (
    "Apply one job template to every input of a glob or manifest; reruns process only new, changed or failed "
    "inputs. Exit code: 0 nothing failed, 1 some input failed, 2 bad config."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``tiler archive``'s arguments to its parser (:mod:`tiler.cli` adds the common options and registers it)."""
    _add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Handle ``tiler archive`` (see :func:`run_from_args`)."""
    return run_from_args(args)
