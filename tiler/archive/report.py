"""What an archive run did with each input, as JSON and Markdown reports in the archive root."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from tiler.jsonsafe import json_safe


@dataclass
class ArchiveItem:
    """What a run did with one input: ``done`` (computed now), ``skipped`` or ``failed``."""

    input: str
    stem: str
    status: Literal["done", "skipped", "failed"]
    store: str | None = None
    reason: str | None = None
    error: str | None = None
    scores: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None
    attempts: int = 0
    fingerprint: str | None = None
    config_hash: str | None = None
    seconds: float | None = None
    timings: dict[str, Any] | None = None


TIMING_KEYS = ("blocks_seconds", "finish_seconds", "stages", "model_idle_share", "mpx_per_second", "finishing")
"""What an archive item keeps of its job summary's timings (:mod:`tiler.job.timings`)."""


def timings_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The timing keys of a job summary (absent ones left out)."""
    return {key: summary[key] for key in TIMING_KEYS if key in summary}


def run_timings(items: list[ArchiveItem], seconds: float) -> dict[str, Any]:
    """Where a run's time went, over the inputs it computed: stage and finishing seconds, idle share, Mpx/s.

    >>> a = ArchiveItem("a.tif", "a", "done", timings={"stages": {"read": 1.0, "infer": 3.0}, "blocks_seconds": 4.0,
    ...                 "finish_seconds": 1.0, "model_idle_share": 0.5, "mpx_per_second": 2.0})
    >>> run_timings([a], 5.0)["stages"], run_timings([a], 5.0)["megapixels"]
    ({'read': 1.0, 'infer': 3.0}, 8.0)
    """
    timed = [i.timings for i in items if i.timings]
    stages: dict[str, float] = {}
    for t in timed:
        for stage, value in (t.get("stages") or {}).items():
            stages[stage] = round(stages.get(stage, 0.0) + value, 3)
    megapixels = sum((t.get("mpx_per_second") or 0) * (t.get("blocks_seconds") or 0) for t in timed)
    idle = [t["model_idle_share"] for t in timed if t.get("model_idle_share") is not None]
    return {
        "stages": stages,
        "finish_seconds": round(sum(t.get("finish_seconds") or 0 for t in timed), 3),
        "megapixels": round(megapixels, 3),
        "mpx_per_second": round(megapixels / seconds, 3) if seconds > 0 else None,
        "model_idle_share": round(sum(idle) / len(idle), 3) if idle else None,
    }


@dataclass
class ArchiveReport:
    """One archive run: every input's outcome and where the report files were written."""

    config: str
    root: str
    engine: str
    started_at: str
    finished_at: str = ""
    seconds: float = 0.0
    items: list[ArchiveItem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Inputs per outcome, and the total."""
        out = {s: sum(1 for i in self.items if i.status == s) for s in ("done", "skipped", "failed")}
        return {**out, "total": len(self.items)}

    @property
    def exit_code(self) -> int:
        """0 when no input failed, 1 otherwise."""
        return 1 if self.counts["failed"] else 0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report as a mapping."""
        return json_safe(
            {
                "config": self.config, "root": self.root, "engine": self.engine,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "seconds": round(self.seconds, 3), "counts": self.counts,
                "exit_code": self.exit_code, "timings": run_timings(self.items, self.seconds),
                "items": [asdict(i) for i in self.items],
            }
        )

    def to_markdown(self) -> str:
        """Return the human-readable Markdown report."""
        c = self.counts
        lines = [
            f"# Archive run {self.started_at}",
            "",
            f"- config: `{self.config}`",
            f"- root: `{self.root}`",
            f"- engine: {self.engine}, {self.seconds:.1f} s",
            "",
            f"**{c['done']} done, {c['skipped']} skipped, {c['failed']} failed** of {c['total']} inputs.",
        ]
        t = run_timings(self.items, self.seconds)
        if t["stages"]:
            lines += ["", f"Computed {t['megapixels']} Mpx at {t['mpx_per_second']} Mpx/s over the run; model idle "
                      f"share {t['model_idle_share']}; finishing {t['finish_seconds']} s in workers. Block stages "
                      "(seconds, summed over workers): " + ", ".join(f"{k} {v}" for k, v in t["stages"].items()) + "."]
        sections = (
            ("failed", "Failed", ("input", "attempts", "error")),
            ("done", "Done", ("input", "fwiou", "miou", "seconds", "store")),
            ("skipped", "Skipped", ("input", "fwiou", "miou", "reason")),
        )
        for status, title, columns in sections:
            items = [i for i in self.items if i.status == status]
            if not items:
                continue
            lines += ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(i, col) for col in columns) + " |" for i in items]
        return "\n".join(lines) + "\n"

    def write(self, root: Path) -> list[str]:
        """Write ``report-<time>.json/.md`` and ``latest.json/.md`` into ``root``; return the paths."""
        stamp = datetime.fromisoformat(self.started_at).strftime("%Y%m%dT%H%M%S.%fZ")
        texts = {"json": json.dumps(self.to_dict(), indent=2) + "\n", "md": self.to_markdown()}
        files: list[str] = []
        for ext, text in texts.items():
            for name in (f"report-{stamp}.{ext}", f"latest.{ext}"):
                path = root / name
                tmp = root / f".{name}.{os.getpid()}.tmp"
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, path)
                files.append(str(path))
        self.files = files
        return files


def _cell(item: ArchiveItem, column: str) -> str:
    if column in ("fwiou", "miou"):
        value = (item.scores or {}).get(column)
        return f"{value:.4f}" if isinstance(value, int | float) else "-"
    if column == "seconds":
        return f"{item.seconds:.1f}" if item.seconds is not None else "-"
    if column == "input":
        return f"`{item.input}`"
    value = getattr(item, column)
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
