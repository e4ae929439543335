"""Stitching cost against the bare model forward on the same tiles (issue 2's target: <= 10%; issue 12's too).

A 4096x4096, 6-class prediction from a tiny MONAI U-Net, gaussian blending, tile 256, overlap 32,
blocks of 1024. Run: ``python -m bench.bench_stitch [--size 4096] [--channels 8,16,32] [--repeats 3]``.

Measured, interleaved in rotating order ``--repeats`` times (medians reported, every run kept):

- ``bare``: the forward loop alone over exactly the tiles the pipeline runs, pre-read into memory;
- ``torch``: :func:`tiler.engine.work.infer_block` with the same numpy predict function, blending in the
  torch accumulator (what the engine does for a plain function);
- ``runner``: ``infer_block`` with a :class:`tiler.model.TileRunner` (normalisation "none"): the engine's
  path for a model, probabilities handed over on the device without a copy;
- ``numpy``: the previous path, the numpy reference accumulator fed tile by tile.

``stitch_fraction_of_forward`` is the torch path's (the engine's) stitch time over the bare forward time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.networks.nets import UNet

from bench.common import save
from tiler.blend import Blender
from tiler.engine.work import PreparedBlock, array_reader, blocks_of, infer_block, iter_batches, prepare_block
from tiler.geometry import TileGrid
from tiler.model.checkpoint import LoadedModel
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import ModelSpec
from tiler.stitch import BlockAccumulator


def numpy_path(prepared: list[PreparedBlock], grid: TileGrid, predict: Callable[[np.ndarray], np.ndarray],
               blender: Blender, batch: int) -> tuple[float, float]:
    """The numpy reference accumulator, fed as the engine fed it before issue 12: (forward s, stitch s)."""
    infer = stitch = 0.0
    for p in prepared:
        acc = BlockAccumulator(p.block, 6)
        for chunk, tiles in iter_batches(p, grid, batch):
            t0 = time.perf_counter()
            probs = predict(tiles)
            t1 = time.perf_counter()
            for pos, prob in zip(chunk, probs, strict=True):
                acc.add(grid.window(pos), prob, blender.weights(grid, pos), overwrite=True)
            infer += t1 - t0
            stitch += time.perf_counter() - t1
        t0 = time.perf_counter()
        acc.finalize(nodata_label=255)
        stitch += time.perf_counter() - t0
    return infer, stitch


def engine_path(prepared: list[PreparedBlock], grid: TileGrid, predict: Any, blender: Blender,
                batch: int) -> tuple[float, float]:
    """``infer_block`` as the engine calls it: (forward s, stitch s)."""
    infer = stitch = 0.0
    for p in prepared:
        _, stats = infer_block(p, grid, predict=predict, blender=blender, num_classes=6, batch_size=batch)
        infer += stats.infer_seconds
        stitch += stats.stitch_seconds
        stats.infer_seconds = stats.stitch_seconds = 0.0  # the prepared block is reused next round
    return infer, stitch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--channels", default="8,16,32", help="U-Net channels per level (the demo model: 16,32,64,128)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as the runner does on CPU, for every path alike
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    channels = tuple(int(c) for c in args.channels.split(","))
    net = UNet(2, 4, 6, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=1).eval()
    image = np.random.default_rng(0).random((4, args.size, args.size), dtype=np.float32)
    grid = TileGrid((args.size, args.size), (args.tile,) * 2, (args.overlap,) * 2)
    blender = Blender("gaussian")

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()

    class Logits(torch.nn.Module):  # the runner applies the softmax itself
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return net(x)

    spec = ModelSpec("UNet", 2, 4, 6)
    runner = TileRunner(LoadedModel(Logits(), spec, Normalization("none"), tuple("abcdef"), ((0, 0, 0),) * 6),
                        device="cpu", batch_size=args.batch)

    # The limit: a bare forward loop over exactly the tiles the pipeline runs, pre-read into memory.
    read = array_reader(image)
    prepared = [prepare_block(b, grid, read=read) for b in blocks_of(grid, (args.block,) * 2)]
    batches = [batch for p in prepared for _, batch in iter_batches(p, grid, args.batch)]
    tiles = sum(len(b) for b in batches)
    predict(batches[0])  # warm-up, outside every timing

    def bare() -> tuple[float, float]:
        t0 = time.perf_counter()
        for b in batches:
            predict(b)
        return time.perf_counter() - t0, 0.0

    paths: dict[str, Callable[[], tuple[float, float]]] = {
        "bare": bare,
        "torch": lambda: engine_path(prepared, grid, predict, blender, args.batch),
        "runner": lambda: engine_path(prepared, grid, runner, blender, args.batch),
        "numpy": lambda: numpy_path(prepared, grid, predict, blender, args.batch),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    order = list(paths)
    load = [os.getloadavg()[0]]
    for i in range(args.repeats):  # rotating order: background load falls on every path alike
        for name in order[i % len(order):] + order[: i % len(order)]:
            runs[name].append(paths[name]())
            load.append(os.getloadavg()[0])
            print(f"round {i} {name}: forward {runs[name][-1][0]:.2f} s, stitch {runs[name][-1][1]:.3f} s, "
                  f"load {load[-1]:.2f}", flush=True)
    bare_s = statistics.median(f for f, _ in runs["bare"])
    result: dict[str, Any] = {
        "size": args.size, "tile": args.tile, "overlap": args.overlap, "block": args.block, "batch": args.batch,
        "unet_channels": list(channels), "tiles_run": tiles, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(), "load_average_1min": [round(x, 2) for x in load],
        "bare_forward_s": bare_s,
    }
    for name in ("torch", "runner", "numpy"):
        result[f"{name}_forward_s"] = statistics.median(f for f, _ in runs[name])
        result[f"{name}_stitch_s"] = statistics.median(s for _, s in runs[name])
        result[f"{name}_stitch_fraction_of_forward"] = result[f"{name}_stitch_s"] / bare_s
    result.update({
        "pipeline_forward_s": result["torch_forward_s"], "stitch_s": result["torch_stitch_s"],
        "stitch_fraction_of_forward": result["torch_stitch_fraction_of_forward"], "target": "<= 0.10",
        "runs_s": {k: [[round(f, 3), round(s, 4)] for f, s in v] for k, v in runs.items()},
    })
    save(
        f"stitch-{'-'.join(map(str, channels))}" + (f"-threads{args.threads}" if args.threads is not None else ""),
        result,
        command=f"python -m bench.bench_stitch --size {args.size} --channels {args.channels} --repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads is not None else ""),
    )


if __name__ == "__main__":
    main()
