"""TileRunner overhead: tiles/s of the runner against a bare ``model(x)`` loop on the same tiles.

Run: ``.venv/bin/python -m bench.bench_runner [--tiles N] [--tile T] [--threads K]``. The runner's
work includes normalisation from raw uint16, softmax and the copy back to numpy (``runner_stream``: the
engine's path, probabilities left on the device); the bare loop gets pre-normalised float32 tensors and
returns logits. Target on CPU: runner >= 0.95x bare. On CUDA it
also compares bf16 autocast with fp32. Writes ``bench/results/runner.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from tiler.model.checkpoint import LoadedModel
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import ModelSpec, build_network

RESULTS_DIR = Path(__file__).parent / "results"


def bare_loop(net: torch.nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out = net(x[i : i + batch].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    del out
    return time.perf_counter() - t0


def runner_loop(runner: TileRunner, tiles: np.ndarray) -> float:
    """All tiles in one call: the runner batches them and assembles one (N, K, *S) array."""
    t0 = time.perf_counter()
    runner(tiles)
    return time.perf_counter() - t0


def runner_per_batch(runner: TileRunner, tiles: np.ndarray) -> float:
    """One call per batch, returning numpy: no assembly copy."""
    t0 = time.perf_counter()
    for i in range(0, len(tiles), runner.batch_size):
        runner(tiles[i : i + runner.batch_size])
    return time.perf_counter() - t0


def runner_stream(runner: TileRunner, tiles: np.ndarray) -> float:
    """``runner.stream`` as the engine feeds it: probabilities left on the device, next batch staged ahead."""
    t0 = time.perf_counter()
    for _ in runner.stream(tiles[i : i + runner.batch_size] for i in range(0, len(tiles), runner.batch_size)):
        pass
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", type=int, default=32)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--res-units", type=int, default=0, help="UNet num_res_units (0: the demo model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = ModelSpec(
        "UNet", 2, 4, 6, {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": args.res_units}
    )
    net = build_network(spec).eval()
    norm = Normalization("meanstd", mean=(900.0, 1000.0, 1100.0, 2500.0), std=(400.0, 400.0, 450.0, 900.0))
    model = LoadedModel(net, spec, norm, tuple("abcdef"), ((0, 0, 0),) * 6)
    tiles = np.random.default_rng(0).integers(1, 4000, size=(args.tiles, 4, args.tile, args.tile)).astype(np.uint16)
    x = torch.from_numpy(norm.apply(tiles, spatial_dims=2))
    rows: dict[str, object] = {}
    cpu = torch.device("cpu")
    runner = TileRunner(model, device="cpu", batch_size=args.batch)
    bare_loop(net, x[: args.batch], args.batch, cpu)  # warm-up
    times: dict[str, list[float]] = {"bare": [], "runner_one_call": [], "runner_per_batch": [], "runner_stream": []}
    runner_loop(runner, tiles[: args.batch])
    order = [
        ("bare", lambda: bare_loop(net, x, args.batch, cpu)),
        ("runner_one_call", lambda: runner_loop(runner, tiles)),
        ("runner_per_batch", lambda: runner_per_batch(runner, tiles)),
        ("runner_stream", lambda: runner_stream(runner, tiles)),
    ]
    for i in range(args.repeats):  # interleaved, rotating order, so background load hits all alike
        for name, fn in order[i % len(order) :] + order[: i % len(order)]:
            times[name].append(fn())
    tps = {k: args.tiles / min(v) for k, v in times.items()}
    rows["cpu"] = {
        **{f"{k}_tiles_per_s": round(v, 2) for k, v in tps.items()},
        "ratio_one_call": round(tps["runner_one_call"] / tps["bare"], 3),
        "ratio_per_batch": round(tps["runner_per_batch"] / tps["bare"], 3),
        "ratio_stream": round(tps["runner_stream"] / tps["bare"], 3),
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }
    cpu_row = rows["cpu"]
    print(
        f"cpu: bare {tps['bare']:.2f} tiles/s; runner one call {tps['runner_one_call']:.2f} "
        f"(x{cpu_row['ratio_one_call']}), per batch {tps['runner_per_batch']:.2f} (x{cpu_row['ratio_per_batch']}), "
        f"stream {tps['runner_stream']:.2f} (x{cpu_row['ratio_stream']})"
    )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for precision in ("fp32", "bf16"):
            r = TileRunner(model, device="cuda", precision=precision, batch_size=args.batch)
            runner_loop(r, tiles[: args.batch])
            t = min(runner_loop(r, tiles) for _ in range(args.repeats))
            ts = min(runner_stream(r, tiles) for _ in range(args.repeats))
            rows[f"cuda_{precision}"] = {"runner_tiles_per_s": round(args.tiles / t, 2),
                                         "runner_stream_tiles_per_s": round(args.tiles / ts, 2)}
            print(f"cuda {precision}: runner {args.tiles / t:.2f} tiles/s, stream {args.tiles / ts:.2f} tiles/s")
        net_gpu = build_network(spec).eval().to(gpu)
        net_gpu.load_state_dict(net.state_dict())
        bare_loop(net_gpu, x[: args.batch], args.batch, gpu)
        t = min(bare_loop(net_gpu, x, args.batch, gpu) for _ in range(args.repeats))
        rows["cuda_bare_fp32"] = {"bare_tiles_per_s": round(args.tiles / t, 2)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "runner.json" if args.res_units == 0 else f"runner-res{args.res_units}.json"
    (RESULTS_DIR / name).write_text(
        json.dumps(
            {
                "command": "python -m bench.bench_runner "
                + f"--tiles {args.tiles} --tile {args.tile} --batch {args.batch} --threads {args.threads} "
                + f"--repeats {args.repeats} --res-units {args.res_units}",
                "machine": f"{platform.machine()} {platform.node()} {torch.get_num_threads()} threads, "
                f"torch {torch.__version__}, cuda {torch.cuda.is_available()}",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "model": spec.to_dict(),
                "tile_shape": [4, args.tile, args.tile],
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
