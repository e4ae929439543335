"""Tiny real inputs and models for engine tests: a GeoTIFF with a nodata corner and a MONAI U-Net checkpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from tiler.blend import Blender
from tiler.engine.plan import ModelRef, Plan, ReaderRef
from tiler.geometry import BlockPartition, TileGrid
from tiler.model.checkpoint import save_checkpoint
from tiler.model.spec import ModelSpec, build_network


def write_raster(path: Path, shape: tuple[int, int] = (200, 168), bands: int = 3, seed: int = 0) -> Path:
    """A uint8 GeoTIFF (EPSG:32633) whose top-left corner is nodata (0)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 255, size=(bands, *shape), dtype=np.uint8)
    data[:, : shape[0] // 3, : shape[1] // 3] = 0
    with rasterio.open(
        path, "w", driver="GTiff", width=shape[1], height=shape[0], count=bands, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10), nodata=0, tiled=True,
        blockxsize=64, blockysize=64,
    ) as dst:
        dst.write(data)
    return path


def write_model(path: Path, in_channels: int = 3, classes: int = 4, seed: int = 0) -> Path:
    """A project checkpoint of a small random MONAI U-Net."""
    torch.manual_seed(seed)
    spec = ModelSpec("UNet", 2, in_channels, classes, args={"channels": [4, 8], "strides": [2], "num_res_units": 0})
    return save_checkpoint(path, build_network(spec), spec=spec)


def make_plan(
    image: Path, weights: Path, store: Path, *, block: int = 64, tile: int = 32, overlap: int = 8,
    probabilities: str | None = "float32", batch_size: int = 4, truth: Path | None = None,
) -> Plan:
    """A plan over ``image`` with the tiny model."""
    with rasterio.open(image) as src:
        shape = (src.height, src.width)
    return Plan(
        input=ReaderRef(str(image)),
        model=ModelRef(str(weights), runner={"device": "cpu", "batch_size": batch_size, "threads": 1}),
        grid=TileGrid(shape, (tile, tile), (overlap, overlap)),
        partition=BlockPartition(shape, (block, block)),
        blender=Blender("gaussian"),
        num_classes=4,
        store_path=str(store),
        batch_size=batch_size,
        probabilities=probabilities,
        truth=ReaderRef(str(truth)) if truth is not None else None,
    )


def read_store(store: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, str]]:
    """A complete store's labels, probabilities (or None) and each block record's labels digest, by block key."""
    import json

    import zarr

    group: Any = zarr.open_group(str(store), mode="r")
    assert group.attrs["complete"] is True
    probabilities = group["probabilities"][...] if "probabilities" in group else None
    digests = {
        f.stem: json.loads(f.read_text())["labels_digest"] for f in (store / ".tiler" / "blocks").glob("*.json")
    }
    return group["labels"][...], probabilities, digests


def write_job(root: Path, *, shape: tuple[int, int] = (64, 64), block: int = 64, **extra: object) -> Path:
    """A tiny 2D job YAML in ``root`` (a scene of ``shape``, the tiny model, tile 32, overlap 8, COG export)."""
    import yaml

    image = write_raster(root / "image.tif", shape)
    data = {
        "input": {"path": str(image)},
        "model": {"weights": str(write_model(root / "model.pt")), "batch_size": 4, "threads": 1},
        "tiling": {"tile": 32, "overlap": 8, "block": block},
        "output": {"path": str(root / "out.zarr"), "chunks": 32, "exports": ["cog"]},
        **extra,
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class KeepOpen:
    """An executor or finisher shared by a module's tests, handed to code that closes what it is given.

    Every attribute and call goes to the shared one, except :meth:`close`, which only waits for the blocks still in
    flight (so the next test finds the pool idle): the module's fixture closes the shared one at its end. For
    ``run_job(..., executor=...)``, which closes its executor, and for a run's finisher, which the run closes.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def close(self) -> None:
        in_flight = getattr(self.inner, "in_flight", None)
        while in_flight is not None and in_flight():
            self.inner.wait(timeout=60)


@contextlib.contextmanager
def local_finishing_on(finisher: Any) -> Iterator[None]:
    """In-process (``engine="local"``) runs inside finish their inputs on ``finisher``, kept open between runs.

    The same worker processes the engine's own finisher (:class:`tiler.engine.finishing.ProcessFinisher`) starts
    for each run, started once for a module's runs instead: a run's finishing steps are the same, without paying
    for a new pool (and its imports) each run.
    """
    import pytest

    from tiler.engine.executor import LocalExecutor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalExecutor, "finisher", lambda self, workers, preload=(): KeepOpen(finisher))
        yield
