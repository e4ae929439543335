"""Training entry point: ``python -m pipelines.train satellite|ct|slide|CONFIG.yaml [--out PATH] [--steps N]``.

A thin wrapper of ``tiler train`` (:mod:`tiler.model.cli`): the same options and exit codes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tiler train`` with these arguments; returns its exit code."""
    from tiler.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    front = [a for a in args if a in ("--quiet", "--json-logs")]  # global flags may come anywhere here
    return cli_main([*front, "train", *(a for a in args if a not in front)])


if __name__ == "__main__":
    from tiler.cli import exit_process

    exit_process(main())
