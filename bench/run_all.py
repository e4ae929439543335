"""``make bench``: every benchmark in turn, each writing ``bench/results/<name>.json``.

Sizes default to the issues' figures; pass ``--quick`` for a smoke run on small inputs.
"""

from __future__ import annotations

import subprocess
import sys

FULL = [
    ["bench.bench_stitch", "--size", "4096"],
    ["bench.bench_runner"],
    ["bench.bench_score"],
    ["bench.bench_io"],
    ["bench.bench_suite", "--case", "2d"],
    ["bench.bench_suite", "--case", "2d-16k"],
    ["bench.bench_suite", "--case", "3d"],
    ["bench.bench_suite", "--case", "landsat"],
    ["bench.bench_suite", "--case", "slide"],
    ["bench.bench_suite", "--case", "huge"],
    ["bench.bench_startup"],
    ["bench.bench_archive", "--scenes", "12", "--size", "1024", "--repeats", "3"],
    ["bench.bench_archive", "--scenes", "12", "--size", "1024", "--join", "--repeats", "3"],
    ["bench.bench_archive", "--scenes", "4", "--size", "4096", "--repeats", "3"],
    ["bench.bench_pipeline", "--size", "8192"],  # 2D 8192² and 3D 256³, one run of each approach (about 1.5 min)
    ["bench.bench_cluster"],  # 6 × 1024² on 1, 2, 3 simulated nodes and one full pool (about 1.5 min)
]
QUICK = [
    ["bench.bench_stitch", "--size", "1024"],
    ["bench.bench_suite", "--case", "2d", "--quick"],
    ["bench.bench_suite", "--case", "3d", "--quick"],
    ["bench.bench_pipeline", "--size", "2048", "--volume", "128"],
    ["bench.bench_cluster", "--scenes", "2", "--size", "512", "--nodes", "1", "2"],
]


def main() -> int:
    suite = QUICK if "--quick" in sys.argv else FULL
    failed = 0
    for module, *args in suite:
        print(f"== {module} {' '.join(args)}", flush=True)
        failed += subprocess.call([sys.executable, "-m", module, *args]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
