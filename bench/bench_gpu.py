"""The GPU path measured in one command (issue 12): bare bf16 forward, tiler, and MONAI, 2D and 3D side by side.

Run on a CUDA machine: ``python -m bench.bench_gpu`` (``--quick`` for small inputs, ``--cases 2d`` for one case,
``--no-ray`` to leave Ray out, ``--model free`` for a 1x1 convolution: the ceiling the job's own stages set).
It installs nothing and reaches no network: the inputs and random-weight
checkpoints are written locally by :func:`bench.bench_suite.prepare` (the same cases as ``bench_suite``: a
8192² 4-band GeoTIFF with a U-Net 16-32-64-128, tile 256, overlap 32; a 256³ NIfTI volume with a 3D U-Net
8-16-32-64, tile 96, overlap 24). Without CUDA it prints ``no CUDA device: nothing measured`` and exits 0.

Per case, each approach on the same model, tile grid, batch size and gaussian blend, timed ``--repeats``
times after one warm-up (median reported, every run kept), tiles/s counted over the grid's tiles:

- ``bare_bf16``: the limit. The whole input normalised on the GPU; a loop cutting tiles there and running
  ``softmax(net(x))`` under bf16 autocast (channels-last in 2D), nothing else;
- ``tiler_in_memory``: :func:`tiler.engine.local.run_in_memory` on the input in host memory with a
  :class:`tiler.model.TileRunner` (bf16, pinned buffers, device blend, labels back): the device path without I/O;
- ``tiler_in_process``: the whole job in this process (read the file, infer, blend, write zarr, complete flag);
  block records split read / infer / stitch time, which says whether reading keeps up with the GPU;
- ``tiler_ray``: the same job on a local Ray with one GPU actor (actor start-up excluded as ``steady_state_s``);
  both tiler jobs report their block stages (read, assemble, infer, stitch, write seconds summed over blocks)
  and the model's idle share (the inference thread waiting for a block), from the block records;
- ``monai``: ``sliding_window_inference`` with ``sw_device`` and ``device`` on the GPU, the input normalised on
  the GPU, the same predictor under bf16 autocast, labels argmaxed on the GPU and copied back.

GPU utilisation is sampled every 0.1 s during each timed run (``torch.cuda.utilization()`` where pynvml is
installed, else ``nvidia-smi``). Writes ``bench/results/gpu.json`` (``gpu-quick.json`` with ``--quick``).
Targets (issue 12): tiler >= 0.8 x bare bf16 and >= 1.0 x MONAI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import save

BATCH = {"2d": 32, "3d": 4}
DEVICE = "cuda"  # --device cpu: a smoke test of this script on a machine without CUDA (figures meaningless)
PRECISION = "bf16"  # fp32 in the CPU smoke test (bf16 autocast on a CPU without AMX is slow)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if DEVICE == "cuda" else None


# ---------------------------------------------------------------------------------------------- utilisation


def _nvidia_smi_utilization() -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i",
             str(torch.cuda.current_device())],
            capture_output=True, text=True, timeout=5,
        )
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def utilization_source() -> tuple[str, Callable[[], float | None]]:
    """How GPU utilisation is read here: torch (pynvml) if it works, else nvidia-smi, else nothing."""
    try:
        torch.cuda.utilization()
        return "torch.cuda.utilization (pynvml)", lambda: float(torch.cuda.utilization())
    except Exception:  # pynvml missing or NVML unusable
        pass
    if _nvidia_smi_utilization() is not None:
        return "nvidia-smi", _nvidia_smi_utilization
    return "unavailable", lambda: None


class Sampler:
    """Mean GPU utilisation (percent) while the ``with`` body runs."""

    def __init__(self, read: Callable[[], float | None]) -> None:
        self.read, self.samples = read, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        """Mean of the samples, or None when none could be read."""
        return round(statistics.fmean(self.samples), 1) if self.samples else None


# ---------------------------------------------------------------------------------------------- approaches


@contextlib.contextmanager
def _bf16() -> Iterator[None]:
    with torch.inference_mode(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
        yield


def _tile_slices(grid: Any) -> list[tuple[slice, ...]]:
    return [grid.window(p).slices for p in grid.positions()]


def bare_bf16(net: torch.nn.Module, image_gpu: torch.Tensor, grid: Any, batch: int, dims: int) -> Callable[[], Any]:
    slices = _tile_slices(grid)
    fmt = torch.channels_last if dims == 2 else torch.contiguous_format

    def run() -> None:
        with _bf16():
            for i in range(0, len(slices), batch):
                x = torch.stack([image_gpu[(slice(None), *s)] for s in slices[i : i + batch]])
                torch.softmax(net(x.contiguous(memory_format=fmt)).float(), dim=1)
        sync()

    return run


def monai(net: torch.nn.Module, image_gpu: torch.Tensor, info: dict[str, Any], batch: int) -> Callable[[], Any]:
    from monai.inferers import sliding_window_inference

    dims, tile, overlap = info["ndim"], info["tile"], info["overlap"]

    def run() -> None:
        with _bf16():
            out = sliding_window_inference(
                image_gpu[None], (tile,) * dims, batch, lambda x: torch.softmax(net(x).float(), dim=1),
                overlap=overlap / tile, mode="gaussian", sigma_scale=0.125, sw_device=DEVICE, device=DEVICE,
            )
            out[0].argmax(0).to(torch.uint8).cpu()

    return run


def tiler_in_memory(runner: Any, image: np.ndarray, plan: Any) -> Callable[[], Any]:
    from tiler.engine.local import run_in_memory

    def run() -> None:
        run_in_memory(
            image, runner, grid=plan.grid, block=plan.partition.block, blender=plan.blender,
            num_classes=plan.num_classes, batch_size=plan.batch_size, probabilities=None,
        )

    return run


def tiler_job(plan: Any, info: dict[str, Any], executor: Callable[[], Any]) -> Callable[[], dict[str, Any]]:
    """The whole job on a fresh ``executor()``: its start-up, its steady state and where the block time went."""
    from tiler.engine.job import run_job
    from tiler.job.timings import block_timings

    def run() -> dict[str, Any]:
        shutil.rmtree(plan.store_path, ignore_errors=True)
        wall0 = time.time()
        result = run_job(plan, executor=executor(), chunks=(info["chunks"],) * info["ndim"],
                         pixels_hash="bench-gpu", overwrite=True)
        records = list(result.records.values())
        first = min(r.started_at for r in records)
        last = max(r.finished_at for r in records)
        timings = block_timings(records, last - first)
        return {"start_up_s": first - wall0, "steady_state_s": last - first, "tiles_run": result.tiles_run,
                "stages_s": timings["stages"], "model_idle_share": timings["model_idle_share"],
                "mpx_per_s_steady": timings["mpx_per_second"]}

    return run


def free_model(info: dict[str, Any]) -> str:
    """A TorchScript 1x1 convolution with the case's bands, normalisation and 6 classes (the free model).

    It costs next to nothing, so the job's own stages (read, assemble, stitch, write) set the speed.
    """
    from tiler.model import Normalization, load_model, save_torchscript

    path = Path(info["root"]) / "free.pt"
    if not path.exists():
        loaded = load_model(info["weights"])
        bands = loaded.spec.in_channels if loaded.spec is not None else 1
        conv = torch.nn.Conv2d(bands, 6, 1) if info["ndim"] == 2 else torch.nn.Conv3d(bands, 6, 1)
        norm = loaded.normalization if isinstance(loaded.normalization, Normalization) else None
        save_torchscript(path, conv, normalization=norm, class_names=[f"class_{k}" for k in range(6)])
    return str(path)


def measure(run: Callable[[], Any], repeats: int, util: Callable[[], float | None]) -> dict[str, Any]:
    """One warm-up, then ``repeats`` timed runs: median seconds, GPU utilisation, peak GPU memory."""
    run()
    sync()
    reset_peak()
    seconds, utils, extras = [], [], []
    for _ in range(repeats):
        with Sampler(util) as sampler:
            t0 = time.perf_counter()
            extra = run()
            sync()
            seconds.append(time.perf_counter() - t0)
        utils.append(sampler.mean)
        extras.append(extra)
    out: dict[str, Any] = {"seconds": statistics.median(seconds), "runs_s": [round(s, 4) for s in seconds],
                           "gpu_utilization_pct": [u for u in utils],
                           "peak_gpu_memory_mb": peak_mb()}
    if isinstance(extras[-1], dict):
        out.update(extras[seconds.index(sorted(seconds)[len(seconds) // 2])])
    return out


# ---------------------------------------------------------------------------------------------- driver


def run_case(case: str, args: argparse.Namespace, util: Callable[[], float | None]) -> dict[str, Any]:
    from bench.bench_suite import _plan, prepare
    from tiler.engine.executor import LocalExecutor
    from tiler.engine.plan import ModelRef
    from tiler.geometry import Window
    from tiler.model import TileRunner, load_model

    info = prepare(case, args.quick)
    if args.model == "free":
        info = {**info, "weights": free_model(info)}
    batch = args.batch2d if case == "2d" else args.batch3d
    plan, reader = _plan(info, skip=True, store=Path(info["root"]) / "gpu.zarr")
    plan = dataclasses.replace(
        plan, batch_size=batch,
        model=ModelRef(info["weights"], runner={"device": DEVICE, "batch_size": batch, "precision": PRECISION}),
    )
    dims = info["ndim"]
    image = reader.read(Window.from_shape(reader.shape))
    loaded = load_model(info["weights"])
    net = loaded.network.to(DEVICE).eval()
    image_gpu = torch.from_numpy(loaded.normalization.apply(image, spatial_dims=dims)).to(DEVICE)
    tiles = len(plan.grid)
    print(f"{case}: input {tuple(image.shape)}, {tiles} tiles of {info['tile']}, batch {batch}", flush=True)
    rows: dict[str, Any] = {}

    def record(name: str, run: Callable[[], Any]) -> None:
        try:
            rows[name] = measure(run, args.repeats, util)
            rows[name]["tiles_per_s"] = round(tiles / rows[name]["seconds"], 2)
        except Exception as err:  # one approach failing must not lose the others' figures
            rows[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
        print(f"  {name}: {rows[name]}", flush=True)

    net_2d = net.to(memory_format=torch.channels_last) if dims == 2 else net  # type: ignore[call-overload]
    record("bare_bf16", bare_bf16(net_2d, image_gpu, plan.grid, batch, dims))
    net = load_model(info["weights"]).network.to(DEVICE).eval()  # MONAI's usual contiguous layout
    record("monai", monai(net, image_gpu, info, batch))
    del image_gpu, net, net_2d
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    runner = TileRunner(load_model(info["weights"]), device=DEVICE, batch_size=batch, precision=PRECISION)
    record("tiler_in_memory", tiler_in_memory(runner, image, plan))
    del runner
    record("tiler_in_process", tiler_job(plan, info, LocalExecutor))
    if not args.no_ray:
        try:
            import ray

            from tiler.engine.ray import RayExecutor, RayOptions

            if not ray.is_initialized():  # a fresh local Ray (never another process's), started outside the timings
                ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
            cpus = max(1, min(8, (os.cpu_count() or 2) - 1))
            options = RayOptions(gpus_per_actor=1.0 if DEVICE == "cuda" else 0.0, cpus_per_actor=cpus, actors=1)
            record("tiler_ray", tiler_job(plan, info, lambda: RayExecutor(options)))
        except ImportError as err:
            rows["tiler_ray"] = {"skipped": f"ray is not importable: {err}"}
    for name in ("tiler_in_memory", "tiler_in_process", "tiler_ray"):
        row = rows.get(name, {})
        if "seconds" in row:
            for other in ("bare_bf16", "monai"):
                if "seconds" in rows.get(other, {}):
                    row[f"vs_{other}"] = round(rows[other]["seconds"] / row["seconds"], 3)
            if "steady_state_s" in row and "seconds" in rows.get("monai", {}):
                row["steady_vs_monai"] = round(rows["monai"]["seconds"] / row["steady_state_s"], 3)
    return {"input": info["image"], "shape": list(reader.shape), "tile": info["tile"], "overlap": info["overlap"],
            "block": info["block"], "batch": batch, "tiles": tiles, "results": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="2d,3d")
    parser.add_argument("--quick", action="store_true", help="small inputs (2048², 96x192x192)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch2d", type=int, default=BATCH["2d"])
    parser.add_argument("--batch3d", type=int, default=BATCH["3d"])
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--model", choices=["unet", "free"], default="unet",
                        help="free: a 1x1 convolution, so the job's own stages set the speed (the I/O ceiling)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: only a smoke test of this script where there is no GPU; writes nothing")
    args = parser.parse_args()
    global DEVICE, PRECISION
    DEVICE = args.device
    PRECISION = "bf16" if DEVICE == "cuda" else "fp32"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (bench.bench_gpu needs torch.cuda.is_available())")
        return 0
    torch.backends.cudnn.benchmark = True
    source, util = utilization_source() if DEVICE == "cuda" else ("none (cpu smoke test)", lambda: None)
    cases = {case: run_case(case, args, util) for case in args.cases.split(",")}
    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()
    if DEVICE != "cuda":
        print(json.dumps(cases, indent=2, default=float))
        return 0
    save(
        ("gpu-quick" if args.quick else "gpu") + ("-free" if args.model == "free" else ""),
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
         "utilization_source": source, "targets": "tiler >= 0.8 x bare_bf16 and >= 1.0 x monai", "cases": cases},
        command="python -m bench.bench_gpu " + " ".join(sys.argv[1:]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
