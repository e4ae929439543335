"""What an archive run did with each input, as JSON and Markdown reports in the archive root."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from tiler.errors import OutputError
from tiler.io.atomic import write_bytes_atomic
from tiler.io.objects import AnyPath
from tiler.jsonsafe import json_safe

Status = Literal["done", "skipped", "failed", "interrupted"]
"""An input's outcome in one run: computed now, skipped, failed (its job raised an error), or interrupted (the
run was stopped while it ran or before it started: it is neither done nor at fault, and the next run does it)."""

STATUSES: tuple[Status, ...] = ("done", "skipped", "failed", "interrupted")


@dataclass
class ArchiveItem:
    """What a run did with one input: ``done`` (computed now), ``skipped``, ``failed`` or ``interrupted``.

    ``reason`` says why an input was skipped or interrupted; ``error`` why it failed.
    """

    input: str
    stem: str
    status: Status
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
        """Inputs per outcome, and the total: done, skipped, failed, then interrupted only when the run was stopped.

        >>> r = ArchiveReport("a.yaml", "out", "local", "2024-01-01T00:00:00+00:00")
        >>> r.items = [ArchiveItem("a.tif", "a", "done"), ArchiveItem("b.tif", "b", "interrupted")]
        >>> r.counts
        {'done': 1, 'skipped': 0, 'failed': 0, 'interrupted': 1, 'total': 2}
        """
        out: dict[str, int] = {s: sum(1 for i in self.items if i.status == s) for s in STATUSES}
        if not out["interrupted"]:
            del out["interrupted"]  # a run that was not stopped reports the three outcomes it always had
        return {**out, "total": len(self.items)}

    @property
    def exit_code(self) -> int:
        """0 when every input was done or skipped; 1 when one failed or was interrupted (the run is not whole)."""
        c = self.counts
        return 1 if c["failed"] or c.get("interrupted") else 0

    def summary(self) -> str:
        """One line: the count of each outcome (interrupted only when the run was stopped) of all inputs.

        >>> r = ArchiveReport("a.yaml", "out", "local", "2024-01-01T00:00:00+00:00")
        >>> r.items = [ArchiveItem("a.tif", "a", "done"), ArchiveItem("b.tif", "b", "interrupted")]
        >>> r.summary()
        '1 done, 0 skipped, 0 failed, 1 interrupted of 2 inputs'
        """
        return f"{self._outcomes()} of {self.counts['total']} inputs"

    def _outcomes(self) -> str:
        c = self.counts
        return ", ".join(f"{c[s]} {s}" for s in STATUSES if s in c)

    def failure_lines(self) -> list[str]:
        """One line per failed input, naming it and its error (what ``--quiet`` still prints)."""
        lines = []
        for item in self.items:
            if item.status != "failed":
                continue
            text = " ".join(part.strip() for part in (item.error or "failed").splitlines() if part.strip())
            lines.append(text if item.input in text else f"{item.input}: {text}")
        return lines

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
            f"**{self._outcomes()}** of {c['total']} inputs.",
        ]
        t = run_timings(self.items, self.seconds)
        if t["stages"]:
            lines += ["", f"Computed {t['megapixels']} Mpx at {t['mpx_per_second']} Mpx/s over the run; model idle "
                      f"share {t['model_idle_share']}; finishing {t['finish_seconds']} s in workers. Block stages "
                      "(seconds, summed over workers): " + ", ".join(f"{k} {v}" for k, v in t["stages"].items()) + "."]
        sections = (
            ("failed", "Failed", ("input", "attempts", "error")),
            ("interrupted", "Interrupted", ("input", "reason")),
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

    def write(self, root: AnyPath) -> list[str]:
        """Write ``report-<time>.json/.md`` and ``latest.json/.md`` into ``root``; return the paths.

        Raises:
            OutputError: A report file cannot be written (one line naming it and the fix).
        """
        stamp = datetime.fromisoformat(self.started_at).strftime("%Y%m%dT%H%M%S.%fZ")
        texts = {"json": json.dumps(self.to_dict(), indent=2) + "\n", "md": self.to_markdown()}
        files: list[str] = []
        for ext, text in texts.items():
            for name in (f"report-{stamp}.{ext}", f"latest.{ext}"):
                path = root / name
                try:
                    write_bytes_atomic(path, text.encode("utf-8"))
                except OutputError as exc:
                    raise OutputError(
                        f"{path}: the archive report cannot be written ({exc}); fix: make archive.root {root} a "
                        "writable folder or bucket prefix"
                    ) from None
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
