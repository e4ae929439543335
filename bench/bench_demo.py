"""The three demos from scratch: training time, total time, and FWIoU through the full pipeline.

Each domain runs in a fresh folder: generate the held-out scene, train the demo model, segment on the
embedded local Ray, score. Run: ``python -m bench.bench_demo`` (writes ``bench/results/demo.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import save


def main() -> int:
    domains = sys.argv[1:] or ["satellite", "ct", "slide"]
    out: dict[str, dict[str, float]] = {}
    for domain in domains:
        root = Path(tempfile.mkdtemp(prefix=f"bench-demo-{domain}-"))
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "tiler.cli", "--quiet", "demo", "--domain", domain, "--out", str(root)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        total = time.perf_counter() - t0
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        report = json.loads((root / domain / "labels.report.json").read_text())
        model = root / "models" / f"{domain}-demo.pt"
        t1 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tiler.cli", "--quiet", "train", domain, "--out", str(model) + ".again"],
                       check=True, capture_output=True)
        out[domain] = {"fwiou": report["scores"]["fwiou"], "miou": report["scores"]["miou"],
                       "total_seconds": total, "train_seconds": time.perf_counter() - t1,
                       "segment_seconds": report["summary"]["seconds"]}
    save("demo", {"domains": out}, command="python -m bench.bench_demo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
