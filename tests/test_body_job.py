"""``input.mask: body`` end to end: a CT's air is skipped and labelled 0, the body labelled as without the mask.

The scene, stated once: a CT-like NIfTI of 48×96×96 (``(D, H, W)``), air at -1000 HU; a body (an ellipsoid of
soft tissue, about 30 HU, centre (24, 42, 48), radii (20, 13, 13)) holding a lung (-850 HU). With its one-voxel
margin the body mask spans rows 28..56 and columns 34..62, so in tiles of 32 overlapping by 8 (starts 0, 24, 48,
64 in-plane, 0 and 16 in depth) 12 of the 32 tiles touch it: the first row of tiles only by a sliver (rows 28..31,
about 2% of the tile), and 20 are pure air. Blocks of 48×32×32: the tiles starting at row 48 and column 24 straddle
a block border with the body on one side only (whether a tile runs is the tile's, never the block's, decision).
A small random 3D U-Net with 3 classes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
import yaml
import zarr
from rasterio.transform import from_origin

from tests.conftest import ThreadFinisher
from tests.engine.helpers import write_model as write_2d_model
from tiler.cli import main as cli_main
from tiler.config import parse_config
from tiler.geometry import BlockPartition, TileGrid, Window
from tiler.io import open_reader
from tiler.model import ModelSpec, Normalization, build_network, save_checkpoint
from tiler.segment import run_segment

SHAPE = (48, 96, 96)
TILE, OVERLAP, BLOCK = (32, 32, 32), (8, 8, 8), (48, 32, 32)
AIR, TISSUE, LUNG = -1000.0, 30.0, -850.0


def ct_scene() -> tuple[np.ndarray, np.ndarray]:
    """The CT ``(D, H, W)`` int16 in HU and its body (lung included), bool ``(D, H, W)``."""
    z, y, x = np.indices(SHAPE)
    body = ((z - 24) / 20.0) ** 2 + ((y - 42) / 13.0) ** 2 + ((x - 48) / 13.0) ** 2 <= 1.0
    lung = ((z - 24) / 8.0) ** 2 + ((y - 42) / 5.0) ** 2 + ((x - 44) / 5.0) ** 2 <= 1.0
    ct = np.full(SHAPE, AIR)
    ct[body] = TISSUE + np.random.default_rng(0).normal(0, 15, int(body.sum()))
    ct[lung] = LUNG
    return ct.astype(np.int16), body


def write_ct_model(path: Path) -> Path:
    torch.manual_seed(3)
    spec = ModelSpec("UNet", 3, 1, 3, args={"channels": [4, 8], "strides": [2], "num_res_units": 0})
    normalization = Normalization(kind="meanstd", mean=(0.0,), std=(500.0,))
    return save_checkpoint(path, build_network(spec), spec=spec, normalization=normalization)


@dataclass(frozen=True)
class Ran:
    labels: np.ndarray
    records: dict[tuple[int, ...], dict[str, Any]]  # by block start


@dataclass(frozen=True)
class Jobs:
    ct: Path
    body: np.ndarray  # the drawn body
    mask: np.ndarray  # the reader's body mask at full resolution
    masked: Ran  # input.mask: body
    unmasked: Ran  # input.mask: none


def run(ct: Path, model: Path, out: Path, mask: str) -> Ran:
    cfg = parse_config({
        "input": {"path": str(ct), "mask": mask},
        "model": {"weights": str(model), "batch_size": 4, "threads": 1},
        "tiling": {"tile": list(TILE), "overlap": list(OVERLAP), "block": list(BLOCK)},
        "output": {"path": str(out), "chunks": list(BLOCK), "exports": []},
    })  # fmt: skip
    assert cfg.engine.skip_empty  # the default: tiles wholly in the air are skipped
    store = Path(run_segment(cfg, engine="local", quiet=True).store)
    records = [json.loads(f.read_text()) for f in (store / ".tiler" / "blocks").glob("*.json")]
    group: Any = zarr.open_group(str(store), mode="r")
    labels = np.asarray(group["labels"][...])
    return Ran(labels, {tuple(r["start"]): r for r in records})


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobs]:
    from tiler.engine.executor import LocalExecutor

    root = tmp_path_factory.mktemp("body-job")
    ct, body = ct_scene()
    path = root / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct.transpose(2, 1, 0), np.diag([0.8, 0.8, 2.5, 1.0])), path)  # NIfTI is (x, y, z)
    model = write_ct_model(root / "ct.pt")
    mask = open_reader(str(path), mask="body").valid_mask(Window.from_shape(SHAPE))
    assert mask is not None
    with pytest.MonkeyPatch.context() as patch:  # finish on threads: no finishing processes per job
        patch.setattr(LocalExecutor, "finisher", lambda self, workers, preload=(): ThreadFinisher(workers))
        masked = run(path, model, root / "body.zarr", "body")
        unmasked = run(path, model, root / "none.zarr", "none")
    yield Jobs(path, body, mask, masked, unmasked)


def test_the_scenes_body_mask_holds_the_body_and_little_air(jobs: Jobs) -> None:
    assert jobs.mask[jobs.body].all()
    rows, cols = np.nonzero(jobs.mask.any(axis=(0, 2)))[0], np.nonzero(jobs.mask.any(axis=(0, 1)))[0]
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (28, 56, 34, 62)
    assert jobs.mask.mean() < 0.06


def test_tiles_wholly_in_the_air_are_skipped_block_by_block(jobs: Jobs) -> None:
    grid = TileGrid(SHAPE, TILE, OVERLAP)
    windows = list(grid)
    touches = [bool(jobs.mask[w.clip(SHAPE).slices].any()) for w in windows]  # type: ignore[union-attr]
    assert sum(touches) == 2 * 3 * 2 and len(windows) == 2 * 4 * 4  # a tile touched by a sliver runs too
    expected = {}
    for block in BlockPartition(SHAPE, BLOCK):
        mine = [t for w, t in zip(windows, touches, strict=True) if w.intersection(block) is not None]
        expected[block.start] = {"tiles_run": sum(mine), "tiles_skipped": len(mine) - sum(mine)}
    got = {start: {k: r[k] for k in ("tiles_run", "tiles_skipped")} for start, r in jobs.masked.records.items()}
    assert got == expected
    assert sum(r["tiles_skipped"] for r in jobs.masked.records.values()) > 0
    assert all(r["tiles_skipped"] == 0 for r in jobs.unmasked.records.values())


def test_labels_outside_the_body_are_0(jobs: Jobs) -> None:
    assert (jobs.masked.labels[~jobs.mask] == 0).all()
    # without the mask the model labels the air too: the 0s above are the mask's doing
    assert (jobs.unmasked.labels[~jobs.mask] != 0).mean() > 0.5


def test_labels_inside_the_body_equal_those_of_the_job_without_mask(jobs: Jobs) -> None:
    inside = jobs.masked.labels[jobs.mask]
    assert np.array_equal(inside, jobs.unmasked.labels[jobs.mask])
    assert len(np.unique(inside)) > 1 and (inside != 255).all()


def test_mask_body_on_a_geotiff_fails_with_one_line_naming_the_file(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "scene.tif"
    with rasterio.open(
        image, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 10, 10),
    ) as dst:
        dst.write(np.random.default_rng(0).integers(1, 255, size=(3, 64, 64), dtype=np.uint8))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(image), "mask": "body"},
        "model": {"weights": str(write_2d_model(tmp_path / "model.pt")), "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "output": {"path": str(tmp_path / "out.zarr"), "chunks": [32, 32]},
    }))  # fmt: skip
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert str(image) in err and "mask='body'" in err and "raster" in err
    assert not (tmp_path / "out.zarr").exists()


def test_a_ct_with_no_body_fails_with_one_line_naming_the_threshold(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    air = tmp_path / "air.nii.gz"
    nib.save(nib.Nifti1Image(np.full((32, 48, 48), -1000, np.int16), np.diag([0.8, 0.8, 2.5, 1.0])), air)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(air), "mask": "body"},
        "model": {"weights": str(write_ct_model(tmp_path / "ct.pt")), "threads": 1},
        "tiling": {"tile": list(TILE), "overlap": list(OVERLAP), "block": list(BLOCK)},
        "output": {"path": str(tmp_path / "out.zarr"), "chunks": list(BLOCK)},
    }))  # fmt: skip
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert str(air) in err and "found no body: no voxel is above -500" in err and "fix:" in err
    assert not (tmp_path / "out.zarr").exists()
