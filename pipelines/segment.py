"""Segment one input: tiled inference on Ray → output store → exports → score → report.

Runs as ``python -m pipelines.segment CONFIG``, as the script of
``ray submit deploy/cluster.yaml pipelines/segment.py -- CONFIG`` (only this file is copied to the
head; the ``tiler`` package is installed there by the cluster's setup commands), and as the entry
point of ``ray job submit --working-dir . -- python -m pipelines.segment CONFIG``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``CONFIG [--set key=value ...] [--overwrite] [--quiet] [--engine ray|local]`` and run."""
    from tiler.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    front = [a for a in args if a in ("--quiet", "--json-logs")]  # global flags may come anywhere here
    return cli_main([*front, "run", *(a for a in args if a not in front)])


if __name__ == "__main__":
    from tiler.cli import exit_process

    exit_process(main())
