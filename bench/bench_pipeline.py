"""The free-model ceiling (issue 23): how close the whole pipeline gets to bare I/O when the model costs nothing.

The model is a 1×1 convolution exported to ONNX (identity over the 4 bands in 2D, ``[x, -x]`` in 3D), so
inference is almost free and what is left is reading, batch assembly, blending, writing and the fixed costs.
Its labels are therefore the argmax of the input itself, which the floor computes without a model: labels of
every approach are compared with the floor's.

- 2D: an S² 4-band uint16 deflate-compressed tiled GeoTIFF (S = ``--size``, default 8192; the same scene as
  ``bench_suite --case 2d``), tile 256, overlap 32, block 2048, chunks 512, every tile run (``mask: none``,
  ``skip_empty: false``), no exports;
- 3D: a V³ float32 uncompressed NIfTI volume (V = ``--volume``, default 256), 3D 1×1×1 convolution, tile 64,
  overlap 16, block (V/2, V, V) (one slab per actor), chunks 64.

Approaches, each a whole command in its own process, run side by side (interleaved repeats, median of
``--repeats``):

- ``floor``: the I/O floor: two worker processes reading the same block windows, with the same halo tiler
  reads (the region of the tiles intersecting the block), with rasterio (nibabel in 3D), argmax over the bands
  (trivial compute) and writing uint8 labels into a zarr v3 array of the same chunks and codecs;
- ``tiler-local``: ``tiler run CONFIG --engine local`` (staged pipeline in the driver, finishing in a forked
  process pool);
- ``tiler-ray``: ``tiler run CONFIG`` on an embedded Ray (one actor per CPU);
- ``monai``: the whole image read into memory, normalised, MONAI ``sliding_window_inference`` with the ONNX
  session as predictor (same roi, overlap, gaussian blend, batch), argmax, labels written to zarr.

Reported: wall seconds of the whole command, Mpx/s, its time ÷ the floor's; tiler's steady state from its
report (``blocks_seconds``, the block ``stages``, ``model_idle_share``, ``finish_seconds``).

Run ``python -m bench.bench_pipeline`` (``--size 4096`` or ``--size 2048 --volume 128`` for a quick run,
``--cases 2d`` or ``--cases 3d`` for one case). Results: ``bench/results/pipeline-<size>.json``
(``pipeline-3d-<volume>.json`` for ``--cases 3d`` alone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_child_options, cpu_model, run_child, save, spawn

CACHE = Path(tempfile.gettempdir()) / "tiler-bench"
APPROACHES = ("floor", "tiler-local", "tiler-ray", "monai")
FLOOR_WORKERS = 2
MEAN, STD = 3000.0, 3000.0  # the 2D normalisation (equal for every band: argmax unchanged)


# ---------------------------------------------------------------------------------------------- inputs


def _case(case: str, size: int, volume: int) -> dict[str, Any]:
    if case == "2d":
        block = min(2048, size)
        return {"case": "2d", "ndim": 2, "shape": [size, size], "channels": 4, "classes": 4, "tile": 256,
                "overlap": 32, "block": [block, block], "chunks": [512, 512], "batch": 16}
    if volume % 128:
        raise SystemExit(f"--volume {volume}: give a multiple of 128 (blocks are half the volume, chunks 64)")
    return {"case": "3d", "ndim": 3, "shape": [volume] * 3, "channels": 1, "classes": 2, "tile": 64, "overlap": 16,
            "block": [volume // 2, volume, volume], "chunks": [64, 64, 64], "batch": 4}


def _write_onnx(path: Path, info: dict[str, Any]) -> None:
    """A 1×1 convolution as ONNX (dynamic batch), its normalisation and class names in the file's metadata."""
    import onnx
    import torch

    from tiler.model.normalize import Normalization
    from tiler.model.sources.onnx import META_KEY, metadata_entry

    nd, c, k = info["ndim"], info["channels"], info["classes"]
    conv = (torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)(c, k, 1)
    with torch.no_grad():
        weight = torch.eye(k, c) if nd == 2 else torch.tensor([[1.0], [-1.0]])  # 3D: logits [x, -x]
        conv.weight.copy_(weight.reshape(conv.weight.shape))
        assert conv.bias is not None
        conv.bias.zero_()
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(conv.eval(), (torch.zeros(1, c, *[info["tile"]] * nd),), str(tmp), dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    graph = onnx.load(str(tmp))
    norm = Normalization(kind="meanstd", mean=(MEAN,) * c, std=(STD,) * c) if nd == 2 else None
    onnx.helper.set_model_props(graph, {META_KEY: metadata_entry(
        normalization=norm, class_names=[f"class{i}" for i in range(k)])})
    onnx.save(graph, str(path))
    tmp.unlink()


def prepare(case: str, size: int, volume: int) -> dict[str, Any]:
    """Write (once) the case's input and its free ONNX model; return paths and geometry."""
    info = _case(case, size, volume)
    if case == "2d":
        root = CACHE / f"2d-{size}x{size}"  # the scene of bench_suite --case 2d (same generator and seed)
        image = root / "scene.tif"
        root.mkdir(parents=True, exist_ok=True)
        if not image.exists():
            from tiler.io.scenes_files import write_satellite
            from tiler.scenes import satellite_scene

            write_satellite(satellite_scene((size, size), seed=3), image, root / "truth.tif")
    else:
        root = CACHE / f"pipeline-3d-{volume}"
        image = root / "volume.nii"
        root.mkdir(parents=True, exist_ok=True)
        if not image.exists():
            import nibabel as nib
            import numpy as np
            from scipy.ndimage import gaussian_filter

            rng = np.random.default_rng(3)
            data = gaussian_filter(rng.normal(size=(volume,) * 3).astype(np.float32), 2) * 10
            tmp = root / "volume.tmp.nii"
            nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(tmp))
            os.replace(tmp, image)
    model = root / f"free-{case}.onnx"
    if not model.exists():
        _write_onnx(model, info)
    info.update(root=str(root), image=str(image), model=str(model))
    return info


def _blocks(info: dict[str, Any]) -> list[tuple[list[int], list[int], list[int], list[int]]]:
    """(block start, block stop, read region start, read region stop) per block, as tiler reads them."""
    from tiler.geometry import BlockPartition, TileGrid

    nd = info["ndim"]
    grid = TileGrid(tuple(info["shape"]), (info["tile"],) * nd, (info["overlap"],) * nd)
    out = []
    for block in BlockPartition(tuple(info["shape"]), tuple(info["block"])):
        region = grid.region_of(grid.positions_intersecting(block)).clip(grid.shape)
        assert region is not None
        out.append((list(block.start), list(block.stop), list(region.start), list(region.stop)))
    return out


def _labels_array(path: Path, info: dict[str, Any]) -> Any:
    """An empty uint8 zarr v3 labels array with tiler's chunks and codecs (zstd level 0, crc32c)."""
    import zarr
    import zarr.codecs

    shutil.rmtree(path, ignore_errors=True)
    return zarr.create_array(
        str(path), shape=tuple(info["shape"]), chunks=tuple(info["chunks"]), dtype="uint8", fill_value=255,
        compressors=(zarr.codecs.ZstdCodec(level=0), zarr.codecs.Crc32cCodec()), zarr_format=3,
        config={"write_empty_chunks": True},
    )


# ---------------------------------------------------------------------------------------------- approaches


def _floor_worker(args: tuple[dict[str, Any], str, list[Any]]) -> int:
    """Read each block's region, argmax over the bands, write the block's labels; returns pixels written."""
    import numpy as np
    import zarr

    info, out, jobs = args
    arr = zarr.open_array(out, mode="r+")
    done = 0
    if info["ndim"] == 2:
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(info["image"]) as src:
            for (b0, b1, r0, r1) in jobs:
                data = src.read(window=Window(r0[1], r0[0], r1[1] - r0[1], r1[0] - r0[0]))
                inner = data[:, b0[0] - r0[0]:b1[0] - r0[0], b0[1] - r0[1]:b1[1] - r0[1]]
                arr[b0[0]:b1[0], b0[1]:b1[1]] = inner.argmax(0).astype(np.uint8)
                done += inner[0].size
    else:
        import nibabel as nib

        img: Any = nib.load(info["image"])
        for (b0, b1, r0, r1) in jobs:  # tiler's axes (D, H, W) are the file's (k, j, i)
            data = np.asarray(img.dataobj[r0[2]:r1[2], r0[1]:r1[1], r0[0]:r1[0]]).T
            inner = data[b0[0] - r0[0]:b1[0] - r0[0], b0[1] - r0[1]:b1[1] - r0[1], b0[2] - r0[2]:b1[2] - r0[2]]
            arr[b0[0]:b1[0], b0[1]:b1[1], b0[2]:b1[2]] = (inner < 0).astype(np.uint8)
            done += inner.size
    return done


def run_floor(info: dict[str, Any]) -> dict[str, Any]:
    """The I/O floor: FLOOR_WORKERS processes, blocks dealt round robin."""
    import multiprocessing

    out = Path(info["root"]) / "out-floor.zarr"
    t0 = time.perf_counter()
    _labels_array(out, info)
    blocks = _blocks(info)
    jobs = [(info, str(out), blocks[i::FLOOR_WORKERS]) for i in range(FLOOR_WORKERS)]
    # spawn, not fork: zarr's event-loop thread does not survive a fork
    with multiprocessing.get_context("spawn").Pool(FLOOR_WORKERS) as pool:
        pixels = sum(pool.map(_floor_worker, jobs))
    return {"seconds": time.perf_counter() - t0, "pixels": pixels, "blocks": len(blocks)}


def run_monai(info: dict[str, Any]) -> dict[str, Any]:
    """Whole image in memory, MONAI sliding_window_inference with the ONNX session, argmax, labels to zarr."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from monai.inferers import sliding_window_inference

    t0 = time.perf_counter()
    if info["ndim"] == 2:
        import rasterio

        with rasterio.open(info["image"]) as src:
            x = (src.read().astype(np.float32) - MEAN) / STD
    else:
        import nibabel as nib

        img: Any = nib.load(info["image"])
        x = np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32).T)[None]
    read_s = time.perf_counter() - t0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
    session = ort.InferenceSession(info["model"], sess_options=opts, providers=["CPUExecutionProvider"])

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        logits = session.run(None, {"image": np.ascontiguousarray(tiles.numpy())})[0]
        return torch.softmax(torch.from_numpy(logits), dim=1)

    nd, tile = info["ndim"], info["tile"]
    with torch.inference_mode():
        probs = sliding_window_inference(
            torch.from_numpy(x)[None], (tile,) * nd, info["batch"], predict, overlap=info["overlap"] / tile,
            mode="gaussian", sigma_scale=0.125,
        )
        labels = probs[0].argmax(0).to(torch.uint8).numpy()
    del probs
    infer_s = time.perf_counter() - t0 - read_s
    _labels_array(Path(info["root"]) / "out-monai.zarr", info)[...] = labels
    return {"seconds": time.perf_counter() - t0, "read_s": read_s, "infer_s": infer_s}


def _config(info: dict[str, Any], name: str) -> tuple[Path, Path]:
    """The job file of ``name`` (the store deleted first) and its store path."""
    import yaml

    root = Path(info["root"])
    store = root / f"out-{name}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    for stale in root.glob(f"out-{name}.*"):
        if stale.is_file():
            stale.unlink()
    (root / f".out-{name}.zarr.lock").unlink(missing_ok=True)
    config = {
        "input": {"path": info["image"], "mask": "none"},
        "model": {"weights": info["model"], "device": "cpu", "batch_size": info["batch"]},
        "tiling": {"tile": [info["tile"]] * info["ndim"], "overlap": [info["overlap"]] * info["ndim"],
                   "blend": "gaussian", "block": info["block"]},
        "engine": {"skip_empty": False},
        "output": {"path": str(store), "chunks": info["chunks"], "exports": []},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, store


def run_command(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[float, int | None, str]:
    """Run ``cmd`` in its own session; (wall seconds, exit code or None when it timed out, stderr's tail).

    A command still running after ``timeout`` seconds is killed with its whole process group (an embedded
    Ray's daemons included; its workers end with their raylet).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return time.perf_counter() - t0, None, (err or out)[-2000:]
    return time.perf_counter() - t0, proc.returncode, (err or out)[-2000:]


def run_tiler(info: dict[str, Any], engine: str) -> dict[str, Any]:
    """``tiler run`` as a whole command; the steady state from its report."""
    name = f"tiler-{engine}"
    config, store = _config(info, name)
    cmd = [sys.executable, "-m", "tiler.cli", "--quiet", "run", str(config)]
    if engine == "local":
        cmd += ["--engine", "local"]
    else:
        cmd += [a for kv in info.get("ray_set", []) for a in ("--set", kv)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # tiler-ray: the embedded Ray
    wall, code, tail = run_command(cmd, info["timeout"], env)
    if code is None:
        return {"error": f"timed out after {wall:.0f} s: {tail}"}
    if code != 0:
        return {"error": tail}
    summary = json.loads(store.with_name(f"out-{name}.report.json").read_text())["summary"]
    keep = ("seconds", "blocks_seconds", "finish_seconds", "stages", "model_idle_share", "mpx_per_second",
            "tiles_run", "finishing")
    return {"process_s": wall, **{k: summary.get(k) for k in keep}}


def child(approach: str, info: dict[str, Any]) -> None:
    """Run one approach in this process and print its JSON."""
    out = run_floor(info) if approach == "floor" else run_monai(info)
    print("RESULT " + json.dumps(out))


def run(approach: str, info: dict[str, Any]) -> dict[str, Any]:
    """One approach as a whole command: its wall time is ``process_s``."""
    if approach.startswith("tiler-"):
        return run_tiler(info, approach.removeprefix("tiler-"))
    t0 = time.perf_counter()
    result = spawn("bench.bench_pipeline", approach, info)
    result["process_s"] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------- figures


def _agreement(info: dict[str, Any], approaches: list[str]) -> dict[str, float]:
    """Share of pixels whose label equals the floor's, per approach (of its last run)."""
    import numpy as np
    import zarr

    root = Path(info["root"])
    floor = zarr.open_array(str(root / "out-floor.zarr"), mode="r")[...]
    out = {}
    for name in approaches:
        if name == "floor":
            continue
        path = root / f"out-{name}.zarr"
        arr: Any = zarr.open_group(str(path), mode="r")["labels"] if name.startswith("tiler") else zarr.open_array(
            str(path), mode="r")
        out[name] = float(np.mean(arr[...] == floor))
    return out


def figures(info: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median run per approach, with Mpx/s and time ÷ the floor's."""
    mpx = math.prod(info["shape"]) / 1e6
    results: dict[str, Any] = {}
    for name, done in runs.items():
        timed = [r for r in done if "process_s" in r and "error" not in r]
        if not timed:
            results[name] = done[-1]
            continue
        chosen = dict(sorted(timed, key=lambda r: r["process_s"])[(len(timed) - 1) // 2])
        if len(done) > 1:
            chosen["runs_process_s"] = [round(r.get("process_s", float("nan")), 2) for r in done]
        chosen["mpx_per_s_whole"] = mpx / chosen["process_s"]
        results[name] = chosen
    floor = results.get("floor", {}).get("process_s")
    floor_inner = results.get("floor", {}).get("seconds")
    for name, r in results.items():
        if floor and "process_s" in r:
            r["time_vs_floor"] = r["process_s"] / floor
        if name.startswith("tiler") and r.get("blocks_seconds"):
            r["blocks_mpx_per_s"] = mpx / r["blocks_seconds"]
            r["startup_and_teardown_s"] = r["process_s"] - r["seconds"]
            if floor_inner:
                r["blocks_vs_floor_inner_time"] = r["blocks_seconds"] / floor_inner
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="2D side in pixels (4096 or 2048 for a quick run)")
    parser.add_argument("--volume", type=int, default=256, help="3D side in voxels (a multiple of 128)")
    parser.add_argument("--cases", nargs="+", choices=["2d", "3d"], default=["2d", "3d"])
    parser.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(APPROACHES))
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every approach this many times (interleaved) and report the median run")
    parser.add_argument("--ray-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a --set override for the tiler-ray command only (e.g. engine.cpus_per_actor=0.5)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a tiler command is killed")
    add_child_options(parser)
    args = parser.parse_args()
    if run_child(args, child):
        return
    infos = {case: prepare(case, args.size, args.volume) for case in args.cases}
    for info in infos.values():
        info.update(ray_set=args.ray_set, timeout=args.timeout)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {case: {} for case in args.cases}
    for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits every approach alike
        for case, info in infos.items():
            for approach in args.approaches:
                result = run(approach, info)
                print(case, approach, json.dumps({k: v for k, v in result.items() if k != "finishing"}), flush=True)
                runs[case].setdefault(approach, []).append(result)
    payload: dict[str, Any] = {"device": cpu_model(), "gpu": None, "floor_workers": FLOOR_WORKERS,
                               "tiler_ray_overrides": args.ray_set, "cases": {}}
    for case, info in infos.items():
        results = figures(info, runs[case])
        ok = [a for a in args.approaches if "error" not in results.get(a, {"error": 1})]
        agreement = _agreement(info, ok) if "floor" in ok else {}
        payload["cases"][case] = {
            **{k: info[k] for k in ("shape", "tile", "overlap", "block", "chunks", "batch")},
            "input": Path(info["image"]).name, "megapixels": math.prod(info["shape"]) / 1e6,
            "results": results, "labels_equal_to_floor": agreement,
            "median_of": args.repeats,
        }
    import torch

    if torch.cuda.is_available():
        payload["gpu"] = torch.cuda.get_device_name(0)
    name = f"pipeline-{args.size}" if "2d" in args.cases else f"pipeline-3d-{args.volume}"
    command = "python -m bench.bench_pipeline " + " ".join(sys.argv[1:])
    save(name, payload, command=command.strip())
    for case, body in payload["cases"].items():
        for approach, r in body["results"].items():
            if "process_s" in r:
                print(f"{case} {approach:12s} {r['process_s']:7.1f} s  {r['mpx_per_s_whole']:6.2f} Mpx/s  "
                      f"x floor {r.get('time_vs_floor', float('nan')):.2f}")


if __name__ == "__main__":
    main()
