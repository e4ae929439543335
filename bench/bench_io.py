"""I/O layer costs: peak memory of writing a generated satellite scene; bytes touched by one COG window read.

Each case runs in a fresh child process that reports its own peak RSS (``ru_maxrss``), so cases do not mix:

- ``baseline``: a child that only imports ``tiler.io`` and ``tiler.scenes`` (the floor of every other case);
- ``write``: ``write_satellite`` of a SIZE x SIZE, 4-band uint16 scene (image + truth, 1024^2 windows);
- ``cog``: GDAL's COG driver copying that image (``rasterio.shutil.copy``, deflate, 512 blocks, overviews);
- ``read``: a 2048^2 window read through ``open_reader`` from the COG: bytes read by the process
  (``/proc/self/io`` rchar) against the compressed size of the tiles that intersect the window (from the
  TIFF's TileByteCounts) and against the whole file.

Run: ``python -m bench.bench_io [--sizes 16384 32768]``; writes ``bench/results/io.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHILD = "--child"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def child_baseline(_: dict[str, Any]) -> dict[str, Any]:
    import tiler.io.scenes_files  # noqa: F401
    import tiler.scenes  # noqa: F401

    return {}


def child_write(args: dict[str, Any]) -> dict[str, Any]:
    from tiler.io.scenes_files import write_satellite
    from tiler.scenes import satellite_scene

    size = args["size"]
    scene = satellite_scene((size, size), seed=0, bands=4)
    t0 = time.perf_counter()
    write_satellite(scene, args["image"], args["truth"], block=1024)
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 1),
        "mpix_per_s": round(size * size / seconds / 1e6, 2),
        "image_mb": round(os.path.getsize(args["image"]) / 2**20, 1),
        "truth_mb": round(os.path.getsize(args["truth"]) / 2**20, 1),
        "raw_image_mb": round(size * size * 4 * 2 / 2**20, 1),
    }


def child_cog(args: dict[str, Any]) -> dict[str, Any]:
    import rasterio
    import rasterio.shutil

    t0 = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=256, GDAL_NUM_THREADS=2):
        rasterio.shutil.copy(
            args["image"],
            args["cog"],
            driver="COG",
            compress="deflate",
            blocksize=512,
            overview_resampling="nearest",
            BIGTIFF="IF_SAFER",
        )
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "cog_mb": round(os.path.getsize(args["cog"]) / 2**20, 1),
    }


def _tiles_needed(path: str, row0: int, col0: int, n: int) -> tuple[int, int, int]:
    """(tiles intersecting the window, their compressed bytes, tiles in the full-resolution image)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        across = math.ceil(page.imagewidth / page.tilewidth)
        down = math.ceil(page.imagelength / page.tilelength)
        rows = range(row0 // page.tilelength, min(down, (row0 + n - 1) // page.tilelength + 1))
        cols = range(col0 // page.tilewidth, min(across, (col0 + n - 1) // page.tilewidth + 1))
        counts = page.databytecounts
        needed = [r * across + c for r in rows for c in cols]
        return len(needed), int(sum(counts[i] for i in needed)), across * down


def child_read(args: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from tiler.geometry import Window
    from tiler.io import open_reader

    n, row0, col0 = 2048, args["row0"], args["col0"]
    reader = open_reader(args["cog"], gdal_options={"GDAL_CACHEMAX": 64})
    reader.handle  # noqa: B018 - open the file (header and tile index) before counting
    before = _rchar()
    t0 = time.perf_counter()
    data = reader.read(Window((row0, col0), (row0 + n, col0 + n)))
    seconds = time.perf_counter() - t0
    read_bytes = _rchar() - before
    tiles, tile_bytes, total_tiles = _tiles_needed(args["cog"], row0, col0, n)
    return {
        "window": [row0, col0, n, n],
        "seconds": round(seconds, 3),
        "bytes_read": read_bytes,
        "tiles_intersecting": tiles,
        "tiles_total": total_tiles,
        "intersecting_tiles_bytes": tile_bytes,
        "file_bytes": os.path.getsize(args["cog"]),
        "fraction_of_file_read": round(read_bytes / os.path.getsize(args["cog"]), 4),
        "array_mb": round(data.nbytes / 2**20, 1),
        "checksum": int(data.sum(dtype=np.uint64)),
    }


CASES = {"baseline": child_baseline, "write": child_write, "cog": child_cog, "read": child_read}


def run_child(case: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh interpreter; returns its result and its own peak RSS."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_io", CHILD, case, json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench case {case} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(case, args.get("size", ""), result, flush=True)
    return result


def bench_size(size: int, folder: Path, *, read: bool) -> dict[str, Any]:
    image, truth, cog = (str(folder / f"{name}-{size}.tif") for name in ("image", "truth", "cog"))
    out: dict[str, Any] = {
        "size": size,
        "write": run_child("write", {"size": size, "image": image, "truth": truth}),
    }
    if read:
        out["cog"] = run_child("cog", {"image": image, "cog": cog})
        mid = (size // 2 // 512) * 512
        out["read_aligned"] = run_child("read", {"cog": cog, "row0": mid, "col0": mid})
        out["read_unaligned"] = run_child("read", {"cog": cog, "row0": mid + 100, "col0": mid + 300})
    for path in (image, truth, cog):
        Path(path).unlink(missing_ok=True)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        case, args = sys.argv[2], json.loads(sys.argv[3])
        result = CASES[case](args)
        result["peak_rss_mb"] = round(_rss_mb(), 1)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16384])
    parser.add_argument("--read-size", type=int, default=16384, help="the size whose COG is read")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a temp dir)")
    opts = parser.parse_args()

    from bench.common import save

    with tempfile.TemporaryDirectory(dir=opts.tmp, prefix="bench-io-") as tmp:
        baseline = run_child("baseline", {})
        runs = [bench_size(s, Path(tmp), read=s == opts.read_size) for s in opts.sizes]
    payload = {
        "what": "tiler.io: scene write peak memory (child ru_maxrss); bytes read for one 2048^2 COG window",
        "baseline_import_rss_mb": baseline["peak_rss_mb"],
        "runs": runs,
    }
    save("io", payload, "python -m bench.bench_io " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
