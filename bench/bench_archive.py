"""Archives side by side: the whole ``tiler archive`` command against a plain MONAI loop and the bare forward.

N generated 4-band satellite scenes, the bench U-Net [16, 32, 64, 128] (6 classes), tile 256, overlap 32,
gaussian blend, COG export. Each approach runs in its own process, wall clock of the whole thing:

- ``tiler``: ``python -m pipelines.archive`` on an embedded local Ray (start-up, ledger, every scene's
  blocks streamed through one actor pool, COG + quicklook + report per scene, finished on threads);
- ``tiler-local``: the same command with ``--engine local`` (in-process: no Ray to start, one block at a
  time, finishing on threads), the single-machine choice when no cluster is at hand;
- ``tiler-1``: the same command over the first scene only (the fixed cost of a run: with ``tiler``,
  ``start-up + N × per-input`` is solved for both);
- ``monai-loop``: for each file, read it with rasterio, normalise, ``sliding_window_inference`` with the
  same model, tile, overlap and blend, argmax, write a GeoTIFF — the loop a user would write; timed as a
  whole command (``process_s``: Python start, imports, model load, loop) and as the loop alone (``seconds``);
- ``limit``: a bare ``softmax(model(x))`` loop over exactly the tiles tiler runs, pre-read in memory.

Run ``python -m bench.bench_archive --scenes 12 --size 1024`` (and ``--scenes 4 --size 4096``; ``--repeats 3``
reports the median of three interleaved runs of each approach: a shared machine varies by ±20 %); with
``--join`` the tiler commands join a Ray started beforehand (``RAY_ADDRESS``), as a job submitted to a
running cluster does, so Ray's own start-up is not in their time.
Each tiler command also reports its driver process's own CPU seconds (user + system, children excluded) and
the bytes it wrote (``/proc/self/io`` ``write_bytes``; ``wchar`` counts pipes and sockets too), read at its exit
(:func:`bench.common.driver_command`): ``driver_cpu_s`` and ``driver_write_bytes`` per run. ``--ray-set KEY=VALUE``
passes ``--set`` overrides to the Ray commands only.
Results: ``bench/results/archive-<N>x<size>[-joined].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_child_options, driver_command, driver_stats, run_child, save, spawn

CACHE = Path(tempfile.gettempdir()) / "tiler-bench"
TILE, OVERLAP, BATCH = 256, 32, 8


def prepare(scenes: int, size: int) -> dict[str, Any]:
    """Write (once) the scenes and the model; return their paths."""
    import torch

    from tiler.io.scenes_files import write_satellite
    from tiler.model import Normalization, save_checkpoint
    from tiler.model.spec import ModelSpec, build_network
    from tiler.scenes import satellite_scene

    root = CACHE / f"archive-{scenes}x{size}"
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    images = []
    for n in range(scenes):
        image = root / "scenes" / f"scene{n:03d}.tif"
        if not image.exists():
            write_satellite(satellite_scene((size, size), seed=100 + n), image, root / f"truth{n:03d}.tif")
        images.append(str(image))
    weights = root / "model.pt"
    if not weights.exists():
        torch.manual_seed(0)
        spec = ModelSpec("UNet", 2, 4, 6, args={"channels": [16, 32, 64, 128], "strides": [2, 2, 2],
                                                "num_res_units": 1})
        norm = Normalization(kind="meanstd", mean=(3000.0,) * 4, std=(3000.0,) * 4)
        save_checkpoint(weights, build_network(spec), spec=spec, normalization=norm)
    return {"root": str(root), "images": images, "weights": str(weights), "size": size}


def _config(info: dict[str, Any], images: list[str], name: str) -> Path:
    root = Path(info["root"])
    (root / f"{name}.txt").write_text("\n".join(images) + "\n")
    out = root / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    block = min(info["size"], 2048)
    config = {
        "archive": {"root": str(out), "manifest": str(root / f"{name}.txt")},
        "model": {"weights": info["weights"], "batch_size": BATCH},
        "tiling": {"tile": TILE, "overlap": OVERLAP, "blend": "gaussian", "block": block},
        "output": {"chunks": min(512, block), "exports": ["cog"]},
    }
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(config))
    return path


def run_tiler(info: dict[str, Any], images: list[str], name: str, *extra: str) -> dict[str, Any]:
    """The whole archive command, in a fresh process; steady state from the block records."""
    config = _config(info, images, name)
    if "--engine" not in extra:  # the Ray commands only: --ray-set overrides
        extra = (*extra, *(a for kv in info.get("ray_set", []) for a in ("--set", kv)))
    stats = Path(info["root"]) / f"driver-{name}.json"
    stats.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(driver_command("pipelines.archive", [str(config), "--quiet", *extra], stats),
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    driver = driver_stats(stats)  # the driver process itself: its CPU and the bytes it wrote, children excluded
    records = [
        json.loads(p.read_text())
        for p in Path(info["root"], f"out-{name}").glob("*/*.zarr/.tiler/blocks/*.json")
    ]
    first = min(r["started_at"] for r in records)
    last = max(r["finished_at"] for r in records)
    tiles = sum(r["tiles_run"] for r in records)
    return {"seconds": seconds, "tiles": tiles, "steady_state_s": last - first,
            "pids": len({r["pid"] for r in records}), "inputs": len(images),
            "driver_cpu_s": driver.get("cpu_s"), "driver_write_bytes": driver.get("write_bytes"),
            "driver_wchar": driver.get("wchar"), "driver_max_rss_mb": driver.get("max_rss_mb")}


def run_monai_loop(info: dict[str, Any]) -> dict[str, Any]:
    """For each file: rasterio read, normalise, sliding_window_inference, argmax, GeoTIFF write."""
    import rasterio
    import torch
    from monai.inferers import sliding_window_inference

    from tiler.model import load_model

    loaded = load_model(info["weights"])
    net = loaded.network
    out = Path(info["root"]) / "out-monai"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    t0 = time.perf_counter()
    for image in info["images"]:
        with rasterio.open(image) as src:
            pixels, profile = src.read(), src.profile
        x = torch.from_numpy(loaded.normalization.apply(pixels, spatial_dims=2))[None]
        with torch.inference_mode():
            probs = sliding_window_inference(
                x, (TILE, TILE), BATCH, lambda t: torch.softmax(net(t), dim=1), overlap=OVERLAP / TILE,
                mode="gaussian", sigma_scale=0.125,
            )
        labels = probs[0].argmax(0).to(torch.uint8).numpy()
        profile.update(count=1, dtype="uint8", nodata=255, compress="deflate", tiled=True)
        with rasterio.open(out / Path(image).name, "w", **profile) as dst:
            dst.write(labels, 1)
    return {"seconds": time.perf_counter() - t0}


def run_limit(info: dict[str, Any]) -> dict[str, Any]:
    """Bare forward over the tiles tiler runs (same grid, blocks and skip rule), pre-read in memory."""
    import torch

    from tiler.engine.work import iter_batches, prepare_block
    from tiler.geometry import BlockPartition, TileGrid
    from tiler.io import open_reader
    from tiler.model import load_model

    loaded = load_model(info["weights"])
    batches = []
    block = min(info["size"], 2048)
    for image in info["images"]:
        reader = open_reader(image)
        grid = TileGrid(reader.shape, (TILE, TILE), (OVERLAP, OVERLAP))
        for window in BlockPartition(reader.shape, (block, block)):
            prepared = prepare_block(window, grid, read=reader.read, read_masked=reader.read_masked)
            if prepared.positions:
                for _, b in iter_batches(prepared, grid, BATCH):
                    batches.append(torch.from_numpy(loaded.normalization.apply(b, spatial_dims=2)))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            torch.softmax(loaded.network(batch), dim=1)
    return {"seconds": time.perf_counter() - t0, "tiles": sum(len(batch) for batch in batches)}


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (the lower middle for an even count), with every run's ``key``."""
    timed = [r for r in runs if key in r]
    if not timed:
        return runs[0]
    chosen = dict(sorted(timed, key=lambda r: r[key])[(len(timed) - 1) // 2])
    if len(runs) > 1:
        chosen["runs_" + key] = [r.get(key) for r in runs]
    return chosen


def child(approach: str, info: dict[str, Any]) -> None:
    """Run one approach in this process and print its JSON."""
    import torch

    torch.set_flush_denormal(True)  # as tiler's runner does on CPU: compare pipelines, not denormal slow paths
    if approach == "limit":
        out = run_limit(info)
    elif approach == "monai-loop":
        out = run_monai_loop(info)
    elif approach == "tiler-local":
        out = run_tiler(info, info["images"], "local", "--engine", "local")
    elif approach == "tiler-1":
        out = run_tiler(info, info["images"][:1], "one")
    else:
        out = run_tiler(info, info["images"], "all")
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--join", action="store_true",
                        help="run tiler on a Ray started beforehand (as `ray job submit` does on a cluster), "
                             "not on the embedded one it starts itself")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every approach this many times (interleaved) and report the median run")
    parser.add_argument("--ray-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a --set override for the Ray tiler commands only (e.g. engine.cpus_per_actor=0.5)")
    add_child_options(parser)
    args = parser.parse_args()
    if run_child(args, child):
        return
    info = prepare(args.scenes, args.size)
    if args.ray_set:
        info["ray_set"] = args.ray_set
    joined = None
    if args.join:  # a running Ray the tiler commands join through RAY_ADDRESS, as a submitted job's driver does
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        joined = ray.get_runtime_context().gcs_address
        os.environ["RAY_ADDRESS"] = joined
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits every approach alike
        for approach in ("limit", "monai-loop", "tiler-1", "tiler", "tiler-local"):
            t0 = time.perf_counter()
            run = spawn("bench.bench_archive", approach, info)
            run["process_s"] = time.perf_counter() - t0  # python start, imports, model load included
            runs.setdefault(approach, []).append(run)
    results = {approach: _median_run(done, "process_s" if approach == "monai-loop" else "seconds")
               for approach, done in runs.items()}
    pixels = args.scenes * args.size**2
    for name, r in results.items():
        if "seconds" in r:
            r["mpix_per_s"] = (args.size**2 if name == "tiler-1" else pixels) / 1e6 / r["seconds"]
    figures: dict[str, Any] = {}
    t, one, loop, limit = (results[k] for k in ("tiler", "tiler-1", "monai-loop", "limit"))
    if all("seconds" in r for r in (t, one, loop, limit)):
        per_input = (t["seconds"] - one["seconds"]) / max(1, args.scenes - 1)
        figures = {
            # whole command against whole command: the loop's script also starts Python, imports torch,
            # MONAI and rasterio and loads the model before its first file
            "tiler_vs_monai_loop_time": t["seconds"] / loop["process_s"],
            "tiler_vs_monai_loop_throughput": loop["process_s"] / t["seconds"],
            "tiler_vs_monai_loop_only_time": t["seconds"] / loop["seconds"],
            "tiler_local_vs_monai_loop_time": results["tiler-local"].get("seconds", float("nan")) / loop["process_s"],
            "steady_state_vs_monai_loop_only_throughput": loop["seconds"] / t["steady_state_s"],
            "tiler_vs_limit_throughput": limit["seconds"] / t["seconds"],
            "steady_state_vs_limit_throughput": limit["seconds"] / t["steady_state_s"],
            "startup_s": one["seconds"] - per_input,
            "per_input_s": per_input,
            "limit_per_input_s": limit["seconds"] / args.scenes,
            "per_input_overhead_s": per_input - limit["seconds"] / args.scenes,
        }
    for name in ("tiler", "tiler-local"):  # the driver process alone (children excluded): CPU s and bytes written
        r = results[name]
        if r.get("driver_cpu_s") is not None:
            figures[f"{name.replace('-', '_')}_driver_cpu_s"] = r["driver_cpu_s"]
            figures[f"{name.replace('-', '_')}_driver_write_mb"] = (r.get("driver_write_bytes") or 0) / 1e6
    suffix = "-joined" if joined else ""
    save(f"archive-{args.scenes}x{args.size}{suffix}",
         {"scenes": args.scenes, "size": args.size, "tile": TILE, "overlap": OVERLAP, "ray": "joined" if joined
          else "embedded", "ray_overrides": args.ray_set, "results": results, "figures": figures},
         command=f"python -m bench.bench_archive --scenes {args.scenes} --size {args.size}{suffix and ' --join'}"
                 + (f" --repeats {args.repeats}" if args.repeats > 1 else "")
                 + "".join(f" --ray-set {kv}" for kv in args.ray_set))


if __name__ == "__main__":
    main()
