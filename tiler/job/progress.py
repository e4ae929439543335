"""The run's progress on stderr: one bar over every block, inputs done and failed, tiles/s, the model's idle share."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from tiler.engine.plan import BlockRecord
from tiler.engine.stream import Work

__all__ = ["Progress"]


class Progress:
    """One bar over every block of the run on stderr, with inputs done / failed and tiles/s (silent when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.tiles = 0
        self.pixels = 0
        self.idle = 0.0  # seconds the model workers' inference stage sat idle, and busy (infer + stitch)
        self.busy = 0.0
        self.done = 0
        self.failed = 0
        self.t0 = time.perf_counter()

    def opened(self, job: Any, work: Work) -> None:
        """Add an opened input's pending blocks to the bar."""
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit="block", file=sys.stderr, desc="blocks", dynamic_ncols=True)
        self.bar.total += len(work.pending)
        self.bar.refresh()
        self.announce(job, work)

    def announce(self, job: Any, work: Work) -> None:
        """Say what an opened input asks (its size, blocks, memory) and whether it resumes or is finished again."""
        describe = getattr(job, "describe", None)
        if describe is not None:
            self.write(describe(work))
        if getattr(getattr(job, "store_job", None), "refinishing", False):
            self.write(f"{job.name}: the store holds these pixels, finished with other exports or scoring: "
                       f"finishing it again ({len(work.pending)} of {work.total} blocks to run)")
        elif len(work.pending) < work.total:
            self.write(f"{job.name}: resuming, {work.total - len(work.pending)} of {work.total} blocks already done")

    def record(self, job: Any, record: BlockRecord) -> None:
        """Advance by one finished block; the postfix says inputs done, tiles/s, Mpx/s and the model's idle share."""
        self.tiles += record.tiles_run
        self.pixels += math.prod(b - a for a, b in zip(record.start, record.stop, strict=True))
        self.idle += record.idle_seconds
        self.busy += record.infer_seconds + record.stitch_seconds
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.t0, 1e-9)
            idle = self.idle / (self.idle + self.busy) if self.idle + self.busy > 0 else 0.0
            self.bar.set_postfix_str(f"inputs {self.done} done, {self.failed} failed · {self.tiles / elapsed:.1f} "
                                     f"tiles/s · {self.pixels / 1e6 / elapsed:.2f} Mpx/s · model idle {idle:.0%}")
            self.bar.update(1)

    def ended(self, ok: bool) -> None:
        """Count a finished or failed input."""
        if ok:
            self.done += 1
        else:
            self.failed += 1

    def write(self, line: str) -> None:
        """A line above the bar (or plain stderr when there is no bar yet)."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
