"""Stitching cost against the bare model forward on the same tiles (issue 2's target: <= 10%).

A 4096x4096, 6-class prediction from a tiny MONAI U-Net, gaussian blending, tile 256, overlap 32,
blocks of 1024. Run: ``python -m bench.bench_stitch [--size 4096]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from monai.networks.nets import UNet

from bench.common import save
from tiler.blend import Blender
from tiler.engine.work import array_reader, blocks_of, infer_block, iter_batches, prepare_block
from tiler.geometry import TileGrid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", default="8,16,32", help="U-Net channels per level (the demo model: 16,32,64,128)")
    args = parser.parse_args()
    torch.manual_seed(0)
    channels = tuple(int(c) for c in args.channels.split(","))
    net = UNet(2, 4, 6, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=1).eval()
    image = np.random.default_rng(0).random((4, args.size, args.size), dtype=np.float32)
    grid = TileGrid((args.size, args.size), (args.tile,) * 2, (args.overlap,) * 2)
    blender = Blender("gaussian")

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()

    # The limit: a bare forward loop over exactly the tiles the pipeline runs, pre-read into memory.
    read = array_reader(image)
    prepared = [prepare_block(b, grid, read=read) for b in blocks_of(grid, (args.block,) * 2)]
    batches = [batch for p in prepared for _, batch in iter_batches(p, grid, args.batch)]
    predict(batches[0])  # warm-up, outside both timings
    t0 = time.perf_counter()
    for batch in batches:
        predict(batch)
    bare = time.perf_counter() - t0
    del batches

    infer = stitch = 0.0
    tiles = 0
    for p in prepared:
        _, stats = infer_block(p, grid, predict=predict, blender=blender, num_classes=6, batch_size=args.batch)
        infer += stats.infer_seconds
        stitch += stats.stitch_seconds
        tiles += stats.tiles_run
    save(
        f"stitch-{'-'.join(map(str, channels))}",
        {
            "size": args.size, "tile": args.tile, "overlap": args.overlap, "block": args.block,
            "unet_channels": list(channels),
            "tiles_run": tiles, "bare_forward_s": bare, "pipeline_forward_s": infer, "stitch_s": stitch,
            "stitch_fraction_of_forward": stitch / bare, "target": "<= 0.10",
        },
        command=f"python -m bench.bench_stitch --size {args.size} --channels {args.channels}",
    )


if __name__ == "__main__":
    main()
