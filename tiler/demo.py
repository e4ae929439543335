"""``tiler demo`` (what ``make demo`` runs): generate a scene, train or reuse the demo model, segment it, score.

The job itself is ``configs/demo-<domain>.yaml``; the demo only points its paths at the output folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tiler.errors import ConfigError
from tiler.segment import SegmentResult

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZES = {"satellite": (3072, 3072), "ct": (64, 192, 192), "slide": (4096, 4096)}
HELD_OUT_SEED = 7
OPEN_WITH = {
    "satellite": ("cog", "in QGIS over the input scene"),
    "ct": ("nifti", "in 3D Slicer or ITK-SNAP as a segmentation of the input volume"),
    "slide": ("ome-zarr", "in napari (napari-ome-zarr) beside the input slide"),
}


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr)


def _scene(domain: str, root: Path, shape: tuple[int, ...], quiet: bool) -> tuple[Path, Path]:
    """Write the held-out scene and its truth (once)."""
    from tiler.io.scenes_files import write_ct, write_satellite, write_slide
    from tiler.scenes import ct_scene, satellite_scene, slide_scene

    suffix = {"satellite": ".tif", "ct": ".nii.gz", "slide": ".ome.tif"}[domain]
    image = root / f"scene{suffix}"
    truth = root / ("truth.nii.gz" if domain == "ct" else "truth.tif")
    if image.exists() and truth.exists():
        _say(quiet, f"reusing scene {image}")
        return image, truth
    _say(quiet, f"generating a {'x'.join(map(str, shape))} {domain} scene (seed {HELD_OUT_SEED}) in {root}")
    if domain == "satellite":
        write_satellite(satellite_scene(shape, seed=HELD_OUT_SEED), image, truth)
    elif domain == "ct":
        write_ct(ct_scene(shape, seed=HELD_OUT_SEED), image, truth)
    else:
        write_slide(slide_scene(shape, seed=HELD_OUT_SEED), image, truth)
    return image, truth


def _model(domain: str, models: Path, quiet: bool) -> Path:
    """Train the demo model of ``domain`` (once; later runs reuse it while it is the preset's network)."""
    from tiler.model.train import checkpoint_mismatch, demo_config, train

    path = models / f"{domain}-demo.pt"
    cfg = demo_config(domain, out=str(path))
    if path.exists():
        why = checkpoint_mismatch(cfg, path)
        if why is None:
            _say(quiet, f"reusing model {path}")
            return path
        _say(quiet, f"retraining {path}: {why}")
    _say(quiet, f"training the {domain} demo model ({cfg.steps} steps: a minute or two on 2 CPU cores) → {path}")
    result = train(cfg, log_every=0 if quiet else 50)
    _say(quiet, f"trained in {result.seconds:.0f} s, final loss {result.losses[-1]:.3f}")
    return path


@dataclass(frozen=True)
class DemoFiles:
    """The files of one domain's demo under its output folder (what ``configs/demo-<domain>.yaml`` reads).

    Attributes:
        image: The generated scene (``<out>/<domain>/scene.tif``, ``scene.nii.gz`` or ``scene.ome.tif``).
        truth: Its truth labels (``truth.tif`` or ``truth.nii.gz`` beside it).
        weights: The demo model (``<out>/models/<domain>-demo.pt``).
        store: The output store the demo writes (``<out>/<domain>/labels.zarr``).

    """

    image: Path
    truth: Path
    weights: Path
    store: Path


def prepare_demo(
    domain: str = "satellite", *, out: str | Path = "demo-output", size: int | None = None, quiet: bool = False
) -> DemoFiles:
    """Write the scene and its truth and train the model, each only when missing (or of another network)."""
    if domain not in SIZES:
        raise ConfigError(f"demo --domain={domain!r} is unknown; choose one of {list(SIZES)}.")
    out = Path(out).resolve()
    root = out / domain
    root.mkdir(parents=True, exist_ok=True)
    shape = SIZES[domain] if size is None else (size,) * len(SIZES[domain])
    image, truth = _scene(domain, root, shape, quiet)
    weights = _model(domain, out / "models", quiet)
    return DemoFiles(image, truth, weights, root / "labels.zarr")


def run_demo(
    domain: str = "satellite", *, out: str | Path = "demo-output", size: int | None = None, quiet: bool = False,
    engine: str = "ray",
) -> SegmentResult:
    """Generate, train or reuse, segment on the embedded local Ray, score; returns the job result."""
    from tiler.config.loading import load_config
    from tiler.segment import run_segment

    files = prepare_demo(domain, out=out, size=size, quiet=quiet)
    cfg = load_config(
        CONFIGS / f"demo-{domain}.yaml",
        [f"input.path={files.image}", f"model.weights={files.weights}", f"output.path={files.store}",
         f"scoring.truth={files.truth}"],
    )
    result = run_segment(cfg, overwrite=True, quiet=quiet, engine=engine)
    if not quiet:
        export, viewer = OPEN_WITH[domain]
        print(f"\nDemo done. Open {result.outputs.get(export, result.store)} {viewer} (input: {files.image}); "
              f"report: {result.outputs['report_md']}")
    return result
