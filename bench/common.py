"""Shared helpers for benchmarks: machine description, peak memory, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its waited-for children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024.0


def save(name: str, payload: dict[str, Any], command: str) -> Path:
    """Write ``bench/results/<name>.json`` with the machine, the date and the command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    record = {"date": dt.date.today().isoformat(), "command": command, "machine": machine(), **payload}
    out.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(json.dumps(record, indent=2, default=float))
    return out


def spawn(module: str, approach: str, info: dict[str, Any]) -> dict[str, Any]:
    """Run ``python -m MODULE --child APPROACH --info JSON`` in a fresh process; return its ``RESULT`` JSON."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", module, "--child", approach, "--info", json.dumps(info)]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    return {"error": (run.stderr or run.stdout)[-2000:]}


class PeakMemory:
    """Summed RSS of this process and every Ray process, sampled in the background."""

    def __init__(self) -> None:
        self.peak = 0
        self.breakdown: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, dict[str, float]]:
        me = psutil.Process().pid
        parts: dict[str, float] = {}
        for proc in psutil.process_iter(["pid", "name", "cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["pid"] == me or "ray::" in cmd or "/ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd:
                rss = proc.info["memory_info"].rss if proc.info["memory_info"] else 0
                name = "driver" if proc.info["pid"] == me else (cmd.split()[0].split("/")[-1] or proc.info["name"])
                parts[name] = parts.get(name, 0.0) + rss / 2**20
        return int(sum(parts.values()) * 2**20), parts

    def _run(self) -> None:
        while not self._stop.is_set():
            total, parts = self._sample()
            if total > self.peak:
                self.peak, self.breakdown = total, {k: round(v) for k, v in sorted(parts.items())}
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
