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
                "exit_code": self.exit_code, "items": [asdict(i) for i in self.items],
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
