"""Shared helpers for benchmarks: machine description, peak memory, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
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


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_DRIVER_WRAPPER = """
import atexit, json, resource, runpy, sys
_stats_path, _module = sys.argv[1], sys.argv[2]
sys.argv = [_module, *sys.argv[3:]]
def _driver_stats():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    io = {}
    with open("/proc/self/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            io[key.strip()] = int(value)
    with open(_stats_path, "w") as f:
        json.dump({"cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
                   "write_bytes": io.get("write_bytes"), "wchar": io.get("wchar"),
                   "max_rss_mb": usage.ru_maxrss / 1024}, f)
atexit.register(_driver_stats)  # registered first, so it runs last: after Ray's own shutdown
runpy.run_module(_module, run_name="__main__", alter_sys=True)
"""


def driver_command(module: str, args: list[str], stats_path: str | os.PathLike[str]) -> list[str]:
    """``python -m MODULE ARGS`` that writes, at exit, the driver process's own resource use to ``stats_path``.

    The JSON holds ``cpu_s`` (user + system CPU seconds of the driver process itself, its threads included,
    its children — Ray daemons, workers, forked finishers — excluded), ``write_bytes`` (bytes it caused to be
    written to storage, ``/proc/self/io``), ``wchar`` (bytes passed to ``write`` calls: files, pipes and
    sockets) and ``max_rss_mb``.
    """
    import sys

    return [sys.executable, "-c", _DRIVER_WRAPPER, str(stats_path), module, *args]


def driver_stats(stats_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON :func:`driver_command` wrote (``{}`` when the driver died before writing it)."""
    try:
        return dict(json.loads(Path(stats_path).read_text()))
    except (OSError, ValueError):
        return {}


def add_child_options(parser: Any) -> None:
    """The options a bench script passes to itself when it runs one approach in a child process."""
    parser.add_argument("--child", help=argparse_suppress())
    parser.add_argument("--info", help=argparse_suppress())


def argparse_suppress() -> str:
    """Hide an option from ``--help`` (it is for the script's own child processes)."""
    import argparse

    return argparse.SUPPRESS


def run_child(args: Any, child: Callable[[str, dict[str, Any]], Any]) -> bool:
    """Run the approach ``args.child`` with ``args.info`` (JSON) when this process is a child; whether it was."""
    if not args.child:
        return False
    child(args.child, json.loads(args.info))
    return True
