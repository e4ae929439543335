"""Archive pipeline entry point: segment every input of a glob or manifest, skipping those already done.

Usage::

    python -m pipelines.archive configs/archive.yaml [--set key=value ...] [--engine ray|local]
    python pipelines/archive.py configs/archive.yaml   # a plain script, as ``ray submit`` runs it

Exit code: 0 when no input failed, 1 when some input failed (every input is still attempted), 2 when the
archive cannot start (bad config). See :mod:`tiler.archive` for the config, ledger and report.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``tiler archive`` with these arguments (``--quiet`` and ``--json-logs`` may come anywhere)."""
    from tiler.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    front = [a for a in args if a in ("--quiet", "--json-logs")]
    return cli_main([*front, "archive", *(a for a in args if a not in front)])


if __name__ == "__main__":
    from tiler.cli import exit_process

    exit_process(main())
