"""Helpers of the archive tests: a folder of scenes with truths, a corrupt file, a tiny model and the archive file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.transform import from_origin

from tests.engine.helpers import write_model, write_raster
from tests.shared_data import SHARED_DATA
from tiler.archive import Ledger, input_stem

CORRUPT = SHARED_DATA / "corrupt.tif"
SHAPE = (96, 80)


def write_truth(path: Path, shape: tuple[int, int] = SHAPE, seed: int = 0) -> Path:
    """Labels 0..3 on the same grid as write_raster."""
    labels = np.random.default_rng(seed).integers(0, 4, size=shape, dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", width=shape[1], height=shape[0], count=1, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10),
    ) as dst:
        dst.write(labels, 1)
    return path


def write_config(folder: Path, **archive: object) -> Path:
    config = {
        "archive": {"root": "out", **archive},
        "input": {"path": "scenes/*.tif"},
        "model": {"weights": "model.pt", "device": "cpu", "batch_size": 4, "threads": 1},
        "tiling": {"tile": 32, "overlap": 8, "block": 64},
        "output": {"chunks": 64},
        "scoring": {"truth": "{stem}_truth.tif"},
    }
    path = folder / "archive.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_archive_dir(folder: Path) -> Path:
    """scenes/a.tif and b.tif (with truth) and the corrupt c.tif, a tiny model and the archive file."""
    scenes = folder / "scenes"
    scenes.mkdir()
    for seed, stem in enumerate(("a", "b")):
        write_raster(scenes / f"{stem}.tif", SHAPE, 3, seed)
        write_truth(scenes / f"{stem}_truth.tif", seed=seed)
    shutil.copy(CORRUPT, scenes / "c.tif")
    write_model(folder / "model.pt")
    write_config(folder, missing_truth="unscored")
    return folder


def rows(root: Path) -> dict[str, dict[str, object]]:
    """Ledger rows by (input stem, config hash)."""
    with Ledger(root / "ledger.sqlite") as ledger:
        return {f"{input_stem(r.input_path)}/{r.config_hash}": r.__dict__ for r in ledger.rows()}


def by_stem(table: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    return {key.split("/")[0]: row for key, row in table.items()}
