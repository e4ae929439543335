"""The archive's progress bar: one step per input, its total every input of the run from the start."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from tiler.engine.plan import BlockRecord
from tiler.engine.stream import Work
from tiler.job.progress import Progress


class ArchiveProgress(Progress):
    """A :class:`~tiler.job.progress.Progress` whose bar counts inputs, not blocks.

    The total is the number of inputs the archive lists, set before the first one is planned (the archive knows
    it; the blocks of inputs not planned yet are unknown, so a bar over blocks would read ``9/9 100%`` with 2 of
    20 inputs done). Every input moves it one step when it ends, however it ends (done, skipped, failed);
    the blocks run so far, tiles/s, Mpx/s and the model's idle share go in its postfix.

    Args:
        total: Inputs of the run.
        quiet: No bar and no lines.
    """

    def __init__(self, total: int, *, quiet: bool) -> None:
        super().__init__(quiet)
        self.total = total
        self.outcomes: Counter[str] = Counter()
        self.blocks_run = 0
        self.blocks_planned = 0
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="input", file=sys.stderr, desc="inputs", dynamic_ncols=True)

    def opened(self, job: Any, work: Work) -> None:
        """Count an opened input's blocks (the postfix; the total stays) and say what it asks, as Progress does.

        Not :meth:`Progress.opened`, which grows the bar's total by the input's blocks and draws it.
        """
        self.blocks_planned += len(work.pending)
        self._postfix()
        self.announce(job, work)

    def record(self, job: Any, record: BlockRecord) -> None:
        """Count a finished block (tiles, pixels, idle time) in the postfix; the bar moves per input, not here."""
        bar, self.bar = self.bar, None  # Progress.record would step the bar once per block
        try:
            super().record(job, record)
        finally:
            self.bar = bar
        self.blocks_run += 1
        self._postfix()

    def item_ended(self, status: str) -> None:
        """One input ended (done, skipped or failed): one step of the bar."""
        self.outcomes[status] += 1
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)

    def _postfix(self) -> None:
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        idle = self.idle / (self.idle + self.busy) if self.idle + self.busy > 0 else 0.0
        outcomes = ", ".join(f"{n} {status}" for status, n in self.outcomes.items() if n)
        self.bar.set_postfix_str(
            f"{outcomes or 'none ended'} · blocks {self.blocks_run}/{self.blocks_planned} planned · "
            f"{self.tiles / elapsed:.1f} tiles/s · {self.pixels / 1e6 / elapsed:.2f} Mpx/s · model idle {idle:.0%}"
        )
