"""Where a command's fixed cost goes: the CPU seconds of importing torch and MONAI and of starting Ray.

Each part runs in a fresh process (median of ``--repeats``), and its CPU is summed over that process and
every process it starts (Ray's gcs, raylet, dashboard, agents, monitors), sampled with psutil until it ends:

- ``torch``: ``import torch``;
- ``torch+monai``: ``import torch, monai`` (what every model actor pays for a MONAI network);
- ``monai_own_s``: from ``python -X importtime -c "import monai"``, the self time of MONAI's own modules; the
  rest of MONAI's import is the optional packages its package import loads eagerly;
- ``ray``: ``ray.init`` of an embedded local Ray, one trivial actor, ``ray.shutdown`` (no torch).

Run ``python -m bench.bench_startup``. Results: ``bench/results/startup.json``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil

from bench.common import save

RAY_SNIPPET = """
import ray
ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
@ray.remote
class A:
    def ping(self):
        return 1
ray.get(A.remote().ping.remote())
ray.shutdown()
"""

PARTS = {"torch": "import torch", "torch+monai": "import torch, monai", "ray": RAY_SNIPPET}


def tree_cpu(code: str) -> dict[str, float]:
    """Wall seconds and CPU seconds of ``python -c code`` and every process it started."""
    t0 = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, float] = {}
    while proc.poll() is None:
        try:
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            break
        for p in family:
            try:
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{code.strip().splitlines()[0]!r} exited with {proc.returncode}")
    return {"wall_s": wall, "cpu_s": sum(seen.values()), "processes": len(seen)}


def monai_own_seconds() -> dict[str, float]:
    """Self time of MONAI's own modules against the whole ``import monai`` (after torch), from -X importtime."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch, monai"],
                         capture_output=True, text=True, check=True).stderr
    own = total = 0.0
    inside = False
    for line in out.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        name, top = m[4], len(m[3]) <= 1  # one space after the bar: a top-level import
        if name == "torch" and top:
            inside = True  # everything after torch's own top-level line belongs to monai's import
            continue
        if inside:
            own += int(m[1]) / 1e6 if name.split(".")[0] == "monai" else 0.0
            if name == "monai" and top:
                total = int(m[2]) / 1e6
    return {"monai_import_s": total, "monai_own_s": own}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name, code in PARTS.items():
        runs = [tree_cpu(code) for _ in range(args.repeats)]
        results[name] = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "cpu_s", "processes")}
        results[name]["runs_cpu_s"] = [r["cpu_s"] for r in runs]
    results["monai"] = monai_own_seconds()
    save("startup", {"results": results}, command="python -m bench.bench_startup")
    for name, r in results.items():
        print(name, {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
