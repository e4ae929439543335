"""Where a job's time went: stage seconds summed from its block records, the model's idle share, throughput.

Each block record carries the seconds its worker spent reading, assembling batches, in the model,
stitching and writing, and how long the inference stage sat idle before it (waiting for a block to be
read). Summed over the blocks an input ran, they say which stage sets the speed; the finishing steps
add their own seconds (:mod:`tiler.job.finish`).

>>> from tiler.engine.plan import BlockRecord
>>> r = BlockRecord("0_0", (0, 0), (1000, 1000), 4, 0, read_seconds=0.5, infer_seconds=1.0, stitch_seconds=0.5)
>>> t = block_timings([r], 2.0)
>>> t["stages"]["infer"], t["model_idle_share"], t["mpx_per_second"]
(1.0, 0.0, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from tiler.engine.plan import BlockRecord

STAGES = ("read", "assemble", "infer", "stitch", "write")
"""The block stages, in the order a block goes through them (``<stage>_seconds`` in a block record)."""


def block_timings(records: Iterable[BlockRecord], seconds: float) -> dict[str, Any]:
    """Stage seconds of ``records`` (the blocks one run computed), the model's idle share and Mpx/s.

    Args:
        records: The block records of the blocks this run computed (resumed ones cost nothing now).
        seconds: Wall time of the block phase.

    Returns:
        ``{"stages": {stage: seconds}, "model_idle_share": idle / (idle + infer + stitch) or None,
        "mpx_per_second": megapixels (voxels) of the blocks run per second of the block phase, or None}``.
    """
    records = list(records)
    stages = {s: round(sum(float(getattr(r, f"{s}_seconds", 0.0)) for r in records), 3) for s in STAGES}
    idle = sum(float(getattr(r, "idle_seconds", 0.0)) for r in records)
    busy = stages["infer"] + stages["stitch"]
    pixels = sum(math.prod(b - a for a, b in zip(r.start, r.stop, strict=True)) for r in records)
    return {
        "stages": stages,
        "model_idle_share": round(idle / (idle + busy), 3) if idle + busy > 0 else None,
        "mpx_per_second": round(pixels / 1e6 / seconds, 3) if seconds > 0 and records else None,
    }


def timing_lines(summary: Mapping[str, Any]) -> list[str]:
    """Markdown lines of a job summary's timings: blocks and finishing, the stages, each finishing step."""
    stages = summary.get("stages") or {}
    lines = [
        f"- total {summary.get('seconds')} s: blocks {summary.get('blocks_seconds', summary.get('seconds'))} s, "
        f"finishing {summary.get('finish_seconds', 0)} s",
        f"- throughput: {summary.get('mpx_per_second')} Mpx/s; model idle share: {summary.get('model_idle_share')}",
    ]
    if stages:
        lines += ["", "| " + " | ".join(stages) + " |", "|" + "---|" * len(stages),
                  "| " + " | ".join(f"{v}" for v in stages.values()) + " |"]
    finishing = summary.get("finishing") or {}
    if finishing:
        lines += ["", "| finishing step | seconds | kept from before | worker |", "|---|---|---|---|"]
        lines += [f"| {name} | {s['seconds']} | {'yes' if s.get('reused') else 'no'} | {s.get('worker', '')} |"
                  for name, s in finishing.items()]
    return lines
