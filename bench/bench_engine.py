"""End-to-end Ray pipeline against the bare model-forward limit on the same tiles (issues 5 and 8).

Writes a generated satellite scene (GeoTIFF), trains nothing: a random MONAI U-Net of the demo's
size, saved as a project checkpoint. Then, in one process run:
1. limit: a bare ``model(x)`` loop over exactly the tiles the pipeline runs, pre-read into memory;
2. project: the full job (read → tile → infer → stitch → write zarr → labels) on a local Ray;
and reports Mpixel/s, the ratio, and the peak memory of all processes (sampled every 0.2 s).

Run: ``python -m bench.bench_engine --size 8192``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from bench.common import save
from tiler.blend import Blender
from tiler.engine.job import run_job
from tiler.engine.plan import ModelRef, Plan, ReaderRef
from tiler.engine.ray import RayOptions, make_runner
from tiler.engine.work import iter_batches, prepare_block
from tiler.geometry import BlockPartition, TileGrid
from tiler.io import open_reader
from tiler.io.scenes_files import write_satellite
from tiler.model import load_model, save_checkpoint
from tiler.model.spec import ModelSpec, build_network
from tiler.scenes import satellite_scene


class PeakMemory:
    """Samples the summed RSS of this process tree and every Ray process."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        total = 0
        for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid == psutil.Process().pid or "ray" in cmd or "raylet" in (proc.info["name"] or ""):
                mem = proc.info["memory_info"]
                total += mem.rss if mem else 0
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    image, truth = root / "scene.tif", root / "truth.tif"
    write_satellite(satellite_scene((args.size, args.size), seed=3), image, truth)
    torch.manual_seed(0)
    spec = ModelSpec("UNet", 2, 4, 6, args={"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1})
    weights = save_checkpoint(root / "model.pt", build_network(spec), spec=spec)
    reader = open_reader(str(image))
    grid = TileGrid(reader.shape, (args.tile,) * 2, (args.overlap,) * 2)
    part = BlockPartition(reader.shape, (args.block,) * 2)
    plan = Plan(
        input=ReaderRef(str(image)), model=ModelRef(str(weights), runner={"device": "cpu", "batch_size": args.batch}),
        grid=grid, partition=part, blender=Blender("gaussian"), num_classes=6, store_path=str(root / "out.zarr"),
        batch_size=args.batch,
    )

    # 1. the limit: bare forward over the same tiles (pre-read; the pipeline's skip rule applied)
    torch.set_num_threads(psutil.cpu_count() or 1)
    net = load_model(weights).network
    batches = []
    for window in part:
        prepared = prepare_block(window, grid, read=reader.read, mask=reader.valid_mask)
        if prepared.positions:
            batches += [torch.from_numpy(b.astype(np.float32)) for _, b in iter_batches(prepared, grid, args.batch)]
    tiles = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            net(b)
    bare = time.perf_counter() - t0
    del batches

    # 2. the project: the whole job on a local Ray
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        result = run_job(plan, run_blocks=make_runner(RayOptions()), chunks=(512, 512), config_hash="bench")
        project = time.perf_counter() - t0
    mpix = args.size * args.size / 1e6
    save(
        f"engine-{args.size}",
        {
            "size": args.size, "tile": args.tile, "overlap": args.overlap, "block": args.block,
            "tiles_bare": tiles, "tiles_pipeline": result.tiles_run, "tiles_skipped": result.tiles_skipped,
            "bare_forward_s": bare, "pipeline_s": project,
            "bare_mpix_per_s": mpix / bare, "pipeline_mpix_per_s": mpix / project,
            "ratio_pipeline_to_bare": bare / project, "target_ratio": ">= 0.85",
            "peak_memory_all_processes_mb": memory.peak / 2**20, "target_memory_mb": "< 3072, flat 8192² → 16384²",
        },
        command=f"python -m bench.bench_engine --size {args.size}",
    )


if __name__ == "__main__":
    main()
