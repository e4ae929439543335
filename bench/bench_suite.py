"""Side by side on the same input and model: the bare-forward limit, this project, and MONAI (issue 8).

Each approach runs in its own process so its peak memory is its own:

- ``limit``: a bare ``model(x)`` loop over exactly the tiles the pipeline runs, pre-read into memory;
- ``project``: the full job (read → tile → infer → stitch → write zarr → labels) on a local Ray
  (peak memory summed over the driver and every Ray process, sampled every 0.2 s);
- ``project-noskip``: the same with nodata/background skipping off (Landsat, slide and 3D cases; 3D: no
  body mask either);
- ``peer``: ``monai.inferers.sliding_window_inference`` with the same model, tile, overlap and gaussian
  blending, input already normalised in memory.

The 3D case (issue 25) is a CT with air around the body, read with ``mask="body"``: tiles wholly outside
the body are skipped and labelled background (0), so labels are compared with MONAI's inside the body too.

Run ``python -m bench.bench_suite --case 2d`` (cases: 2d, 3d, landsat, slide, huge; ``--quick`` for
small sizes). Results: ``bench/results/suite-<case>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import PeakMemory, add_child_options, run_child, save, spawn

CACHE = Path(tempfile.gettempdir()) / "tiler-bench"
CTSCENE_NOISE_HU = 22.0  # tiler.scene_ct.CTScene.noise_sigma: the air around the scene gets the same noise
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES: dict[str, dict[str, Any]] = {
    "2d": {"shape": (8192, 8192), "quick": (2048, 2048), "tile": 256, "overlap": 32, "block": 2048, "chunks": 512},
    # 3D: tile 96 (MONAI's usual roi); slab blocks keep tiles run twice on block borders to one axis.
    # A CT (see _write_ct_in_air) read with its body mask: tiles wholly in the air around the body are skipped.
    "3d": {"shape": (256, 256, 256), "quick": (96, 192, 192), "tile": 96, "overlap": 24, "block": (256, 256, 256),
           "chunks": 64, "cpus_per_actor": 2, "mask": "body"},
    "landsat": {"shape": None, "tile": 64, "overlap": 8, "block": 256, "chunks": 128},
    "slide": {"shape": (8192, 8192), "quick": (4096, 4096), "tile": 256, "overlap": 32, "block": 1024, "chunks": 512},
    "2d-16k": {"shape": (16384, 16384), "quick": (4096, 4096), "tile": 256, "overlap": 32, "block": 2048,
               "chunks": 512},
    "huge": {"shape": (32768, 32768), "quick": (8192, 8192), "tile": 256, "overlap": 32, "block": 2048, "chunks": 512},
}


# ---------------------------------------------------------------------------------------------- inputs


def prepare(case: str, quick: bool) -> dict[str, Any]:
    """Write (once) the case's input and a model checkpoint; returns paths and geometry."""
    import torch

    from tiler.model import Normalization, save_checkpoint
    from tiler.model.spec import ModelSpec, build_network

    spec = CASES[case]
    shape = spec.get("quick") if quick and spec.get("quick") else spec["shape"]
    root = CACHE / f"{case}-{'x'.join(map(str, shape)) if shape else 'landsat'}"
    root.mkdir(parents=True, exist_ok=True)
    if case == "landsat":
        image, bands = DATA / "RGB.byte.tif", 3
    elif case == "3d":
        image, bands = root / "ct-in-air.nii.gz", 1
        if not image.exists():
            _write_ct_in_air(shape, image, root / "truth.nii.gz")
    elif case == "slide":
        image, bands = root / "slide.ome.tif", 3
        if not image.exists():
            from tiler.io.scenes_files import write_slide
            from tiler.scenes import slide_scene

            write_slide(slide_scene(shape, seed=3), image, root / "truth.tif")
    else:
        image, bands = root / "scene.tif", 4
        if not image.exists():
            from tiler.io.scenes_files import write_satellite
            from tiler.scenes import satellite_scene

            write_satellite(satellite_scene(shape, seed=3), image, root / "truth.tif")
    weights = root / "model.pt"
    ndim = 3 if case == "3d" else 2
    if not weights.exists():
        torch.manual_seed(0)
        channels = [16, 32, 64, 128] if ndim == 2 else [8, 16, 32, 64]
        model = ModelSpec("UNet", ndim, bands, 6, args={"channels": channels, "strides": [2, 2, 2], "num_res_units": 1})
        scale = {4: 3000.0, 3: 128.0, 1: 500.0}[bands]
        norm = Normalization(kind="meanstd", mean=(scale,) * bands, std=(scale,) * bands)
        save_checkpoint(weights, build_network(model), spec=model, normalization=norm)
    return {"case": case, "image": str(image), "weights": str(weights), "root": str(root), "ndim": ndim,
            "tile": spec["tile"], "overlap": spec["overlap"], "block": spec["block"], "chunks": spec["chunks"],
            "cpus_per_actor": spec.get("cpus_per_actor", 1), "mask": spec.get("mask")}


class _PlacedVolume:
    """A rendered volume, image ``(1, D, H, W)`` and truth ``(D, H, W)``, that the scene writers can read."""

    channels, nodata_label, image_nodata = 1, 255, None

    def __init__(self, image: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> None:
        self.image, self.truth, self.spacing = image, truth, spacing
        self.shape, self.dtype = truth.shape, image.dtype

    def read(self, window: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.image[(slice(None), *window.slices)], self.truth[window.slices]


def _write_ct_in_air(shape: tuple[int, int, int], image: Path, truth: Path) -> None:
    """Write a CT (int16 HU, NIfTI) whose field of view holds a patient on the couch with air around them.

    ``tiler.scenes.ct_scene`` fills its own field of view with the body (an ellipse over 68 % × 88 % of it in
    every slice), so no 96³ tile of a 256³ volume lies wholly in air. Here the scene is rendered in a
    ``(D, 0.69·H, 0.75·W)`` box inside a ``shape`` field of view of air (-1000 HU, the scene's noise): an adult
    abdomen in a 500 mm reconstruction (body 47 % × 66 % of it, 1.95 mm pixels) lying on the couch, its centre
    about 6 cm below the isocentre, with the couch (a carbon shell around foam) a separate object under it.
    The body spans every slice, as in a real CT. Off centre on purpose: the grid's four 96-voxel tiles per
    256-voxel axis all reach within 32 voxels of the centre, so a centred body this size touches every tile;
    lying low, it leaves the top row of tiles (the air in front of the patient) wholly in air.
    Deterministic (fixed seeds).
    """
    from tiler.geometry import Window
    from tiler.io.scenes_files import write_ct
    from tiler.scenes import ct_scene

    d, h, w = shape
    spacing = (2.5, 500.0 / w, 500.0 / w)
    box = (d, round(0.69 * h), round(0.75 * w))
    top, left = h - box[1] - round(0.03 * h), (w - box[2]) // 2  # the body's back ~7 % of the view above the couch
    pixels, labels = ct_scene(box, seed=3, spacing=spacing).read(Window.from_shape(box))
    hu = -1000.0 + CTSCENE_NOISE_HU * np.random.default_rng(3).standard_normal(shape, dtype=np.float32)
    hu[:, top:top + box[1], left:left + box[2]] = pixels[0]
    rows, cols = slice(h - round(0.07 * h), h - round(0.02 * h)), slice(round(0.1 * w), w - round(0.1 * w))
    hu[:, rows, cols] = -950.0  # the couch's foam core, in its carbon shell (two rows at 150 HU each side)
    hu[:, rows.start:rows.start + 2, cols] = hu[:, rows.stop - 2:rows.stop, cols] = 150.0
    volume = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    truth_full = np.zeros(shape, dtype=np.uint8)
    truth_full[:, top:top + box[1], left:left + box[2]] = labels
    write_ct(_PlacedVolume(volume[None], truth_full, spacing), image, truth)


def _axes(value: int | list[int] | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (int(value),) * ndim


def _plan(info: dict[str, Any], *, skip: bool, store: Path, probabilities: str | None = None) -> Any:
    from tiler.blend import Blender
    from tiler.engine.plan import ModelRef, Plan, ReaderRef
    from tiler.geometry import BlockPartition, TileGrid
    from tiler.io import open_reader

    # each format's own mask (nodata for rasters, tissue for slides), and a CT's body mask when skipping
    options: dict[str, Any] = {"mask": info["mask"]} if skip and info.get("mask") else {}
    reader = open_reader(info["image"], **options)
    nd = info["ndim"]
    grid = TileGrid(reader.shape, (info["tile"],) * nd, (info["overlap"],) * nd)
    return Plan(
        input=ReaderRef(info["image"], options),
        model=ModelRef(info["weights"], runner={"device": "auto", "batch_size": 8 if nd == 2 else 2}),
        grid=grid, partition=BlockPartition(reader.shape, _axes(info["block"], nd)), blender=Blender("gaussian"),
        num_classes=6, store_path=str(store), batch_size=8 if nd == 2 else 2, skip_empty=skip,
        probabilities=probabilities, background_label=0 if options.get("mask") == "body" else None,
    ), reader


# ---------------------------------------------------------------------------------------------- approaches


def run_limit(info: dict[str, Any]) -> dict[str, Any]:
    """Bare forward over the pipeline's tiles (same skip rule, same per-block duplicates), pre-read."""
    import torch

    from tiler.engine.work import iter_batches, prepare_block
    from tiler.model import load_model

    plan, reader = _plan(info, skip=True, store=Path(info["root"]) / "unused.zarr")
    loaded = load_model(info["weights"])
    batches = []
    for window in plan.partition:
        prepared = prepare_block(window, plan.grid, read=reader.read, mask=reader.valid_mask)
        if prepared.positions:
            for _, b in iter_batches(prepared, plan.grid, plan.batch_size):
                batches.append(torch.from_numpy(loaded.normalization.apply(b, spatial_dims=info["ndim"])))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = loaded.network.to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            torch.softmax(net(b.to(device)), dim=1).cpu()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tiles": sum(len(b) for b in batches)}


def run_project(info: dict[str, Any], *, skip: bool) -> dict[str, Any]:
    """The whole job on a local Ray."""
    import zarr

    from tiler.engine.job import run_job
    from tiler.engine.ray import RayExecutor, RayOptions, connect

    store = Path(info["root"]) / f"project-{'skip' if skip else 'noskip'}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    plan, _ = _plan(info, skip=skip, store=store)
    connect(None)  # start Ray outside the timed part, like a cluster that is already up
    with PeakMemory() as memory:
        t0, wall0 = time.perf_counter(), time.time()
        options = RayOptions(cpus_per_actor=info.get("cpus_per_actor", 1))
        result = run_job(plan, executor=RayExecutor(options), chunks=(info["chunks"],) * info["ndim"],
                         pixels_hash="bench", overwrite=True)
        seconds = time.perf_counter() - t0
    labels = zarr.open_group(str(store), mode="r")["labels"]
    if math.prod(labels.shape) <= 2**28:
        np.save(Path(info["root"]) / f"labels-project-{'skip' if skip else 'noskip'}.npy", labels[...])
    first = min(r.started_at for r in result.records.values())
    last = max(r.finished_at for r in result.records.values())
    stages = {s: sum(getattr(r, f"{s}_seconds") for r in result.records.values())
              for s in ("read", "assemble", "wait", "idle", "infer", "stitch", "write")}
    return {"seconds": seconds, "tiles": result.tiles_run, "tiles_skipped": result.tiles_skipped,
            "actor_startup_s": first - wall0, "steady_state_s": last - first, "stages_s": stages,
            "peak_memory_mb": memory.peak / 2**20, "peak_breakdown_mb": memory.breakdown}


def run_peer(info: dict[str, Any]) -> dict[str, Any]:
    """MONAI's sliding_window_inference with the same model and grid, input normalised in memory."""
    import torch
    from monai.inferers import sliding_window_inference

    from tiler.geometry import Window
    from tiler.io import open_reader
    from tiler.model import load_model

    reader = open_reader(info["image"])
    pixels = math.prod(reader.shape)
    need = pixels * (reader.channels + 6 + 1) * 4  # normalised input, float32 output, float32 count map
    available = psutil.virtual_memory().available
    if need > 0.9 * available:
        return {"could_not_run": f"needs about {need / 2**30:.1f} GiB for the in-memory input, float32 "
                                 f"probabilities and count map; {available / 2**30:.1f} GiB available"}
    loaded = load_model(info["weights"])
    pixels_in = reader.read(Window.from_shape(reader.shape))
    image = torch.from_numpy(loaded.normalization.apply(pixels_in, spatial_dims=info["ndim"]))[None]
    del pixels_in
    nd, tile, overlap = info["ndim"], info["tile"], info["overlap"]
    fraction = overlap / tile  # MONAI steps int(tile * (1 - fraction)) = tile - overlap pixels
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = loaded.network.to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = sliding_window_inference(
            image, (tile,) * nd, 8 if nd == 2 else 2, lambda x: torch.softmax(net(x), dim=1), overlap=fraction,
            mode="gaussian", sigma_scale=0.125, sw_device=device, device="cpu",
        )
        labels = out[0].argmax(0).to(torch.uint8).numpy()
    seconds = time.perf_counter() - t0
    np.save(Path(info["root"]) / "labels-peer.npy", labels)
    return {"seconds": seconds}


# ---------------------------------------------------------------------------------------------- driver


def _agreement(info: dict[str, Any]) -> dict[str, float]:
    """Label agreement of ``project`` (and ``project-noskip``) with ``peer``; with a body mask, inside it too.

    Outside the body ``project`` labels background without running a tile there, so only the agreement
    inside the body (the reader's own mask over the whole volume) compares the two pipelines' blending.
    """
    from tiler.geometry import Window
    from tiler.io import open_reader

    root = Path(info["root"])
    peer, out = root / "labels-peer.npy", dict[str, float]()
    if not peer.exists():
        return out
    theirs = np.load(peer)
    for name, suffix in (("label_agreement_with_peer", "skip"), ("label_agreement_noskip_with_peer", "noskip")):
        if (root / f"labels-project-{suffix}.npy").exists():
            ours = np.load(root / f"labels-project-{suffix}.npy")
            valid = ours != 255
            out[name] = float((ours[valid] == theirs[valid]).mean())
    if info.get("mask") and (root / "labels-project-skip.npy").exists():
        reader = open_reader(info["image"], mask=info["mask"])
        mask = reader.valid_mask(Window.from_shape(reader.shape))
        inside = np.ones(reader.shape, dtype=bool) if mask is None else mask
        ours = np.load(root / "labels-project-skip.npy")
        same = ours[inside] == theirs[inside]
        out["label_agreement_with_peer_inside_body"] = float(same.mean())
        out["label_differences_inside_body"] = int(same.size - same.sum())
        out["body_fraction"] = float(inside.mean())
    peer.unlink()
    return out


def child(approach: str, info: dict[str, Any]) -> None:
    """Run one approach in this process and print its JSON (with this process tree's peak RSS).

    Every approach flushes denormal floats to zero, as tiler's runner does on CPU, so the comparison
    measures the pipelines, not the CPU's slow path for denormals (up to 3x on uniform regions).
    """
    import torch

    torch.set_flush_denormal(True)
    if approach == "limit":
        out = run_limit(info)
    elif approach == "peer":
        out = run_peer(info)
    else:
        out = run_project(info, skip=approach == "project")
    out.setdefault("peak_memory_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=list(CASES), default="2d")
    parser.add_argument("--quick", action="store_true")
    add_child_options(parser)
    args = parser.parse_args()
    if run_child(args, child):
        return
    info = prepare(args.case, args.quick)
    approaches = ["limit", "project", "peer"]
    if args.case in ("landsat", "slide", "3d"):
        approaches.insert(2, "project-noskip")
    if args.case in ("2d-16k", "huge"):
        approaches = ["project", "peer"]
    results = {a: spawn("bench.bench_suite", a, info) for a in approaches}
    from tiler.io import open_reader

    pixels = math.prod(open_reader(info["image"]).shape)
    for r in results.values():
        if "seconds" in r:
            r["mpix_per_s"] = pixels / 1e6 / r["seconds"]
    ratios: dict[str, Any] = {}
    p = results.get("project", {})
    if "seconds" in p:
        for other in ("limit", "peer", "project-noskip"):
            if "seconds" in results.get(other, {}):
                ratios[f"project_vs_{other}_throughput"] = results[other]["seconds"] / p["seconds"]
        if "steady_state_s" in results.get("project-noskip", {}):  # skipping, without actor start-up
            ratios["steady_time_skip_vs_noskip"] = p["steady_state_s"] / results["project-noskip"]["steady_state_s"]
        if "peak_memory_mb" in results.get("peer", {}) and "seconds" in results["peer"]:
            ratios["project_vs_peer_memory"] = p["peak_memory_mb"] / results["peer"]["peak_memory_mb"]
    ratios.update(_agreement(info))
    save(f"suite-{args.case}{'-quick' if args.quick else ''}",
         {"case": args.case, "input": info["image"], "pixels": pixels, "tile": info["tile"],
          "overlap": info["overlap"], "block": info["block"], "results": results, "ratios": ratios},
         command=f"python -m bench.bench_suite --case {args.case}{' --quick' if args.quick else ''}")


if __name__ == "__main__":
    main()
