"""Out-of-core scoring speed and memory (issue 6's target: >= 100 Mpixel/s, < 1 GB, confusion-matrix metrics).

Writes a SIZE x SIZE uint8 truth and prediction (6 classes, blocky regions, an ignored corner, 2% noise) as
zarr (1024^2 chunks) and as tiled deflate GeoTIFFs (512^2 tiles) in a temp dir, strip by strip, then scores
each pair in a fresh child process with ``tiler.metrics.cli.score_paths`` (boundary scores off) and reports
Mpixel/s and the child's peak RSS; the zarr pair is also counted with ``da.bincount`` of an int64 index for
comparison. Run: ``python -m bench.bench_score [--size 16384] [--boundary-size 4096]``.

History on this 2-core machine (shared, load average 5-10 from other jobs), confusion metrics, 16384^2:
one bincount per 2048^2 chunk: zarr 142, GeoTIFF 81 Mpixel/s at 749 MB (GDAL block cache);
64 MB GDAL cache and no GDAL threads: GeoTIFF 220-260 MB, 165 Mpixel per CPU-second;
counting in 2^18-pixel slices: zarr 160-173, GeoTIFF 121-180 Mpixel/s, 190-200 Mpixel per CPU-second,
140-180 MB; ``da.bincount`` of an int64 index on the same zarr pair: 50 Mpixel/s (73 per CPU-second), 430 MB.
Boundary IoU/F1 (not in the target) at 16384^2, d = 0.02 of the diagonal = 463 px, 6 classes: 114 s, 523 MB
(``python -m bench.bench_score --child PRED.zarr TRUTH.zarr --boundary 0.02``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tiler.geometry import BlockPartition

CLASSES = 6
CELL = 64  # region size in pixels
STRIP = 512


def strip_pair(size: int, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``r0:r1`` of the synthetic truth and prediction (deterministic, independent of the strip)."""
    grid = (size // CELL + 2, size // CELL + 2)
    cells = np.random.default_rng(0).integers(0, CLASSES, grid, dtype=np.uint8)
    rows = np.arange(r0, r1)
    cols = np.arange(size)
    truth = cells[np.ix_(rows // CELL, cols // CELL)]
    pred = cells[np.ix_((rows + 5) // CELL, (cols + 3) // CELL)].copy()
    noise = np.random.default_rng(r0).random((r1 - r0, size), dtype=np.float32) < 0.02
    pred[noise] = (pred[noise] + 1) % CLASSES
    truth = truth.copy()
    if r0 < size // 8:
        truth[: max(0, min(r1, size // 8) - r0), : size // 8] = 255
    return truth, pred


def write_zarr(folder: Path, size: int) -> tuple[Path, Path]:
    import zarr

    arrays = {}
    for name in ("pred", "truth"):
        arrays[name] = zarr.create_array(
            str(folder / f"{name}.zarr"), shape=(size, size), chunks=(1024, 1024), dtype="uint8", fill_value=0
        )
    for strip in BlockPartition((size, size), (STRIP, size)):
        r0 = strip.start[0]
        truth, pred = strip_pair(size, r0, strip.stop[0])
        arrays["truth"][r0 : r0 + len(truth)] = truth
        arrays["pred"][r0 : r0 + len(pred)] = pred
    return folder / "pred.zarr", folder / "truth.zarr"


def write_tiff(folder: Path, size: int) -> tuple[Path, Path]:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 1, "dtype": "uint8", "crs": "EPSG:32618",
        "transform": from_origin(500000.0, 4200000.0, 1.0, 1.0), "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate", "num_threads": "all_cpus",
    }
    paths = folder / "pred.tif", folder / "truth.tif"
    with rasterio.open(paths[0], "w", **profile) as p, rasterio.open(paths[1], "w", **profile) as t:
        for strip in BlockPartition((size, size), (STRIP, size)):
            r0 = strip.start[0]
            truth, pred = strip_pair(size, r0, strip.stop[0])
            window = Window(0, r0, size, len(truth))
            t.write(truth, 1, window=window)
            p.write(pred, 1, window=window)
    return paths


def own_peak_rss_mb(usage: object) -> float:
    """Return the peak RSS of this process: VmHWM (reset by exec; ru_maxrss is inherited from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return usage.ru_maxrss / 1024.0  # type: ignore[attr-defined]


def da_bincount_confusion(pred: str, truth: str) -> dict:
    """The alternative the issue names: ``da.bincount`` of an int64 index, ignored pixels in an extra bin."""
    import dask.array as da

    from tiler.io.labels import open_labels
    from tiler.metrics._sources import as_dask

    t, p = as_dask(open_labels(truth), open_labels(pred))
    start = time.perf_counter()
    t, p = t.ravel(), p.ravel()
    index = da.where(t != 255, t.astype(np.int64) * CLASSES + p.astype(np.int64), CLASSES * CLASSES)
    counts = da.bincount(index, minlength=CLASSES * CLASSES + 1).compute()
    seconds = time.perf_counter() - start
    cm = counts[:-1].reshape(CLASSES, CLASSES)
    return {"seconds_confusion": seconds, "shape": [int(t.size)], "cm": cm}


def child(pred: str, truth: str, boundary: str | None, variant: str) -> None:
    """Score one pair and print a JSON line (runs in a fresh process so its peak RSS is its own)."""
    import resource

    from tiler.metrics.boundary import BoundaryWidth
    from tiler.metrics.files import score_paths
    from tiler.metrics.scores import scores_from_confusion

    width = BoundaryWidth.parse(boundary) if boundary else None
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if variant == "da-bincount":
        details = da_bincount_confusion(pred, truth)
        details.update(seconds_boundary=0.0)
        details["mpixel_per_s_confusion"] = details["shape"][0] / details["seconds_confusion"] / 1e6
        scores = scores_from_confusion(details.pop("cm"))
    else:
        scores, details = score_paths(pred, truth, num_classes=CLASSES, boundary_width=width)
    total = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    pixels = int(np.prod(details["shape"]))
    print(json.dumps({
        "pixels": pixels,
        "seconds_total": round(total, 3),
        "seconds_confusion": round(details["seconds_confusion"], 3),
        "seconds_boundary": round(details["seconds_boundary"], 3),
        "mpixel_per_s_confusion": round(details["mpixel_per_s_confusion"], 1),
        "mpixel_per_s_total": round(pixels / total / 1e6, 1),
        "peak_rss_mb": round(own_peak_rss_mb(usage), 1),
        "cpu_seconds": round(cpu, 3),
        "mpixel_per_cpu_second": round(pixels / cpu / 1e6, 1),
        "fwiou": scores.fwiou,
        "boundary_width_px": scores.boundary_width,
    }))


def run_child(pred: Path, truth: Path, boundary: str | None = None, variant: str = "tiler") -> dict:
    cmd = [sys.executable, "-m", "bench.bench_score", "--child", str(pred), str(truth), "--variant", variant]
    if boundary:
        cmd += ["--boundary", boundary]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--boundary-size", type=int, default=4096, help="boundary-metric run size (0: skip)")
    parser.add_argument("--child", nargs=2, metavar=("PRED", "TRUTH"), help=argparse.SUPPRESS)
    parser.add_argument("--boundary", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="tiler", choices=("tiler", "da-bincount"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.boundary, args.variant)
        return

    from bench.common import peak_rss_mb, save

    results: dict = {"size": args.size, "classes": CLASSES, "target_mpixel_per_s": 100, "target_rss_mb": 1024}
    results["load_average_before"] = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        folder = Path(tmp)
        for fmt, writer in (("zarr", write_zarr), ("geotiff", write_tiff)):
            start = time.perf_counter()
            pred, truth = writer(folder, args.size)
            results[f"{fmt}_write_seconds"] = round(time.perf_counter() - start, 1)
            results[fmt] = run_child(pred, truth)
            print(fmt, results[fmt], flush=True)
            if fmt == "zarr":
                results["zarr_da_bincount"] = run_child(pred, truth, variant="da-bincount")
                print("zarr_da_bincount", results["zarr_da_bincount"], flush=True)
        if args.boundary_size:
            sub = folder / "boundary"
            sub.mkdir()
            pred, truth = write_zarr(sub, args.boundary_size)
            results["boundary"] = {"size": args.boundary_size, **run_child(pred, truth, "0.02")}
            print("boundary", results["boundary"], flush=True)
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    results["peak_rss_mb_self_and_children"] = round(peak_rss_mb(), 1)
    save("score", results, "python -m bench.bench_score " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
