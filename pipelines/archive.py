"""Archive pipeline entry point: segment every input of a glob or manifest, skipping those already done.

Usage::

    python -m pipelines.archive configs/archive.yaml [--set key=value ...] [--engine ray|local]
    python pipelines/archive.py configs/archive.yaml   # a plain script, as ``ray submit`` runs it

Exit code: 0 when no input failed, 1 when some input failed (every input is still attempted), 2 when the
archive cannot start (bad config). See :mod:`tiler.archive` for the config, ledger and report.
"""

from __future__ import annotations

from tiler.archive import main

if __name__ == "__main__":
    from tiler.cli import exit_process

    exit_process(main())
