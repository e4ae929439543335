"""Tiny scenes, job configs and the MONAI oracle shared by the model-source tests.

Each format test runs ``tiler run`` (local engine) on a generated scene with only the weights path
given, and compares the labels with MONAI's ``sliding_window_inference`` of the package's own model on
the same grid: tile T, overlap O pixels ⇔ MONAI overlap fraction O / T (its step ``int(T · (1 - O/T))``
is then T - O), gaussian blend with σ = 0.125 T on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import rasterio
import torch
import yaml
import zarr
from monai.inferers import sliding_window_inference
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter

from tiler.cli import main as cli_main
from tiler.geometry import Window
from tiler.io import open_reader

MIN_AGREEMENT = 0.9999
TILE, OVERLAP = 32, 8  # the 2D scene grid of the format tests


def write_geotiff(path: Path, shape: tuple[int, int] = (88, 120), bands: int = 3, seed: int = 0) -> Path:
    """A float32 GeoTIFF of smooth random structure (no nodata: every pixel is predicted)."""
    rng = np.random.default_rng(seed)
    data = np.stack([gaussian_filter(rng.normal(size=shape), 3) for _ in range(bands)]).astype(np.float32) * 10
    with rasterio.open(
        path, "w", driver="GTiff", width=shape[1], height=shape[0], count=bands, dtype="float32",
        crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


def write_nifti(path: Path, shape: tuple[int, int, int] = (36, 40, 44), seed: int = 0) -> Path:
    """A float32 CT-like NIfTI volume in Hounsfield-ish units (-400..400, smooth)."""
    rng = np.random.default_rng(seed)
    data = (gaussian_filter(rng.normal(size=shape), 2) * 2000).clip(-400, 400).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def write_job(
    root: Path,
    weights: Path,
    image: Path,
    *,
    tile: Sequence[int],
    overlap: Sequence[int],
    block: Sequence[int],
    model: Mapping[str, Any] | None = None,
) -> Path:
    """A job YAML: only the weights path (plus ``model`` extras), local engine, no masks, no skipped tiles."""
    data = {
        "input": {"path": str(image), "mask": "none"},
        "model": {"weights": str(weights), "device": "cpu", "batch_size": 4, "threads": 1, **(model or {})},
        "tiling": {"tile": list(tile), "overlap": list(overlap), "block": list(block), "blend": "gaussian"},
        "engine": {"actors": 1, "skip_empty": False},
        "output": {"path": str(root / "out.zarr"), "chunks": [b // 2 for b in block]},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_tiler(config: Path) -> np.ndarray:
    """``tiler run config --engine local``; returns the labels of the output store."""
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    assert code == 0, f"tiler run exited {code}"
    out = yaml.safe_load(config.read_text())["output"]["path"]
    group = zarr.open_group(out, mode="r")
    assert group.attrs["complete"] is True
    return np.asarray(group["labels"][...])


def read_image(path: Path) -> np.ndarray:
    """The whole image ``(C, *S)`` as tiler's reader gives it to the model."""
    reader = open_reader(path, mask="none")
    try:
        return reader.read(Window((0,) * len(reader.shape), reader.shape))
    finally:
        reader.close()


def monai_labels(
    image: np.ndarray, predictor: Callable[[torch.Tensor], torch.Tensor], *, tile: Sequence[int], overlap: int
) -> np.ndarray:
    """Labels of MONAI's sliding-window inference of ``predictor`` (logits) with softmax-probability blending."""
    fractions = {o / t for t, o in zip(tile, [overlap] * len(tile), strict=True)}
    assert len(fractions) == 1, "one overlap fraction for every axis"
    fraction = fractions.pop()
    assert all(int(t * (1 - fraction)) == t - overlap for t in tile), "MONAI's step must equal tiler's"
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    with torch.inference_mode():
        probs = sliding_window_inference(
            x, list(tile), 4, lambda t: torch.softmax(predictor(t).float(), 1), overlap=fraction, mode="gaussian",
            sigma_scale=0.125,
        )  # fmt: skip
    return probs[0].argmax(0).numpy()


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal labels (same shape required)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a == b).mean())


def perturb(net: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Add ``scale`` · N(0, 1) noise to every parameter of ``net`` (off its init, so a wrong load would show)."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    return net


def assert_runs_like_monai(
    root: Path,
    weights: Path,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    *,
    model: Mapping[str, Any] | None = None,
) -> None:
    """``tiler run`` of ``weights`` on a generated GeoTIFF agrees with MONAI's sliding window of ``predictor``.

    The scene is written under ``root``, tiled ``TILE`` × ``TILE`` with ``OVERLAP`` pixels overlap in 64 × 64 blocks;
    ``model`` adds ``model`` config keys. The expected labels must not be one class (that would test nothing).
    """
    image = write_geotiff(root / "scene.tif")
    job = write_job(root, weights, image, tile=(TILE, TILE), overlap=(OVERLAP, OVERLAP), block=(64, 64), model=model)
    labels = run_tiler(job)
    expected = monai_labels(read_image(image), predictor, tile=(TILE, TILE), overlap=OVERLAP)
    assert np.bincount(expected.ravel()).max() < 0.9 * expected.size, "a one-class prediction would test nothing"
    score = agreement(labels, expected)
    assert score >= MIN_AGREEMENT, f"tiler and MONAI labels agree on {score:.6f} < {MIN_AGREEMENT} of the pixels"
