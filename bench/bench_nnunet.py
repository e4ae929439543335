"""nnU-Net's own predictor against ``tiler run`` on one nnU-Net results folder and one large CT-like volume.

nnU-Net's ``nnUNetPredictor`` holds the whole volume's logits (``classes × voxels`` float16, plus the input
as float32) before it takes the argmax; tiler holds one block's accumulator at a time. Both run the same
``3d_fullres`` network (a ``PlainConvUNet``, small so that a CPU finishes the volume) on the same NIfTI
with nnU-Net's tiling (patch, step 0.5, gaussian), each in its own process so that each peak is its own:

* ``nnunet``: ``nnUNetPredictor(perform_everything_on_device=False)`` on the CPU: read with SimpleITK,
  ``predict_single_npy_array``, write the labels as NIfTI (what ``nnUNetv2_predict`` does per case, in
  one process);
* ``tiler``: ``tiler run --engine local`` (one process) with the folder as ``model.weights`` and a NIfTI export.

Reported per side: wall seconds, peak resident memory (``ru_maxrss`` of that process), and the labels'
agreement. Run::

    python -m bench.bench_nnunet                           # 600×512×512, 14 classes (the issue's size)
    python -m bench.bench_nnunet --shape 240 384 384       # a size that runs in minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import save

CLASSES = 14
SPACING = (1.5, 0.8, 0.8)


def _write_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """An int16 CT-like volume (air, body, 13 organ blobs, noise), written slab by slab."""
    from tiler.io.volume import affine_from_spacing, write_nifti_slabs

    rng = np.random.default_rng(0)
    centres = rng.uniform(-0.6, 0.6, size=(CLASSES - 1, 3))
    radii = rng.uniform(0.12, 0.3, size=(CLASSES - 1, 3))
    ys = np.linspace(-1, 1, shape[1])[:, None]
    xs = np.linspace(-1, 1, shape[2])[None, :]

    def slabs() -> Any:
        for z0 in range(0, shape[0], 16):
            zs = np.linspace(-1, 1, shape[0])[z0 : z0 + 16][:, None, None]
            ct = np.where((ys / 0.9) ** 2 + (xs / 0.8) ** 2 < 1, 40.0, -1000.0) * np.ones_like(zs)
            for i, ((cz, cy, cx), (rz, ry, rx)) in enumerate(zip(centres, radii, strict=True)):
                inside = ((zs - cz) / rz) ** 2 + ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1
                ct[inside] = -100.0 + 25.0 * i
            yield (ct + rng.normal(0, 5, size=ct.shape)).astype(np.int16)

    write_nifti_slabs(path, shape, dtype=np.int16, affine=affine_from_spacing(SPACING), slabs=slabs())


def _build(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    from tests.model.nnunet_helpers import make_plans, write_results

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    plans = make_plans(spacing=SPACING, patch3d=args.patch, features=args.features)
    labels = {"background": 0, **{f"organ_{i}": i for i in range(1, CLASSES)}}
    folder = write_results(work, "3d_fullres", folds=(0,), plans=plans, labels=labels, fit=False)
    image = work / "ct.nii"
    _write_volume(image, tuple(args.shape))
    return folder, image


def _run_nnunet(folder: Path, image: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as tiler's runner does on CPU: same arithmetic cost on both sides
    t0 = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=args.mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    io = SimpleITKIO()
    data, properties = io.read_images([str(image)])
    seg = predictor.predict_single_npy_array(data, properties, None, None, False)
    io.write_seg(seg, str(out), properties)
    return {"seconds": time.perf_counter() - t0}


def _run_tiler(folder: Path, image: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from tiler.cli import main as cli_main
    from tiler.model.sources.nnunet import ResultsFolder, expected_tiling

    tiling = expected_tiling(ResultsFolder(folder), 3)
    job = {
        "input": {"path": str(image), "mask": "none"},
        "model": {"weights": str(folder), "device": "cpu", "batch_size": args.batch_size, "threads": args.threads,
                  "nnunet": {"mirroring": args.mirroring}},
        "tiling": {**{k: tiling[k] for k in ("tile", "overlap", "rule", "blend")}, "pad_mode": "constant",
                   "block": args.block},
        "engine": {"skip_empty": False},
        "output": {"path": str(out), "chunks": args.chunks, "exports": ["nifti"]},
    }  # fmt: skip
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(job))
    t0 = time.perf_counter()
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    if code != 0:
        raise SystemExit(f"tiler run exited {code}")
    return {"seconds": time.perf_counter() - t0}


def _child(role: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = work / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    image = work / "ct.nii"
    if role == "nnunet":
        result = _run_nnunet(folder, image, work / "nnunet.nii.gz", args)
    else:
        result = _run_tiler(folder, image, work / "tiler.zarr", args)
    result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _agreement(work: Path, shape: tuple[int, ...]) -> float:
    """Share of equal labels, compared slab by slab (nnU-Net's NIfTI is (x, y, z), tiler's store (z, y, x))."""
    import nibabel as nib
    import zarr

    theirs = nib.load(str(work / "nnunet.nii.gz")).dataobj
    ours = zarr.open_group(str(work / "tiler.zarr"), mode="r")["labels"]
    equal = 0
    for z0 in range(0, shape[0], 32):
        z1 = min(z0 + 32, shape[0])
        a = np.asarray(theirs[:, :, z0:z1]).transpose(2, 1, 0)
        equal += int((a == np.asarray(ours[z0:z1])).sum())
    return equal / float(np.prod(shape))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[600, 512, 512], help="volume (z, y, x)")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 128, 128], help="the configuration's patch size")
    parser.add_argument("--features", type=int, nargs="+", default=[4, 8, 16], help="U-Net features per stage")
    parser.add_argument("--block", type=int, nargs=3, default=[128, 512, 512], help="tiler block (whole y, x planes)")
    parser.add_argument("--chunks", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--mirroring", action="store_true", help="mirror TTA on both sides (8x the compute)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tiler-bench/nnunet"))
    parser.add_argument("--role", choices=["nnunet", "tiler"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        print(json.dumps(_child(args.role, args.work, args)))
        return 0
    shape = tuple(args.shape)
    _build(args.work, args)
    results: dict[str, Any] = {}
    # nnU-Net sizes its torch threads for export by nnUNet_def_n_proc (default 8): give it the same threads as tiler
    env = {**os.environ, "nnUNet_def_n_proc": str(args.threads)}
    for role in ("nnunet", "tiler"):
        proc = subprocess.run([sys.executable, "-m", "bench.bench_nnunet", *sys.argv[1:], "--role", role],
                              capture_output=True, text=True, env=env)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"{role} failed:\n{proc.stderr[-4000:]}")
        results[role] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(role, results[role], flush=True)
    voxels = int(np.prod(shape))
    payload = {
        "shape": list(shape), "classes": CLASSES, "patch": args.patch, "features": args.features,
        "mirroring": args.mirroring, "threads": args.threads, "block": args.block,
        "nnunet_logits_gb": round(CLASSES * voxels * 2 / 2**30, 2),
        "input_float32_gb": round(voxels * 4 / 2**30, 2),
        "results": results,
        "ratios": {
            "tiler_vs_nnunet_memory": results["tiler"]["peak_memory_mb"] / results["nnunet"]["peak_memory_mb"],
            "tiler_vs_nnunet_time": results["tiler"]["seconds"] / results["nnunet"]["seconds"],
            "label_agreement": _agreement(args.work, shape),
        },
    }  # fmt: skip
    save("nnunet", payload, "python -m bench.bench_nnunet " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
