"""``input.region``: a region of interest tiled as if cropped out, everything outside it labelled invalid.

Geometry (hypothesis): a grid over a region is the grid over the cropped region moved to its start, and its crop
interiors partition exactly the region. A 2D job: the scene is 150×130 (``(H, W)``), 3 uint8 bands, no nodata; the
region rows 21..97 and columns 13..110 (76×97: the last tile of each axis moves back, and no border of the region
lies on a 32- or 64-pixel block or chunk border); tiles 32, overlap 8; a second region of 20 rows (shorter than the
tile) is padded past its end as a crop would be. Config: the checks and the identity.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from tests.conftest import ThreadFinisher
from tests.engine.helpers import write_model
from tiler.config import config_hash, parse_config
from tiler.config.identity import _pixels_payload
from tiler.errors import ConfigError, GeometryError, InputError
from tiler.geometry import BlockPartition, StepRule, TileGrid, Window, axis_starts
from tiler.job.plan import build_plan, plan_geometry
from tiler.segment import run_segment

MAX_TILES = 4000  # keeps each example to milliseconds

# ---------------------------------------------------------------------------------------------------
# geometry


@st.composite
def region_grids(
    draw: st.DrawFn, *, limit2d: int = 200, limit3d: int = 48, max_tile: int = 48
) -> tuple[TileGrid, Window]:
    """A grid over a random region inside a random image, with the region drawn (the grid drops a whole-image one)."""
    ndim = draw(st.sampled_from([2, 3]))
    limit = limit2d if ndim == 2 else limit3d
    shape = tuple(draw(st.integers(1, limit)) for _ in range(ndim))
    start = tuple(draw(st.integers(0, n - 1)) for n in shape)
    stop = tuple(draw(st.integers(a + 1, n)) for a, n in zip(start, shape, strict=True))
    tile = tuple(draw(st.integers(1, max_tile)) for _ in range(ndim))
    overlap = tuple(draw(st.integers(0, t - 1)) for t in tile)
    rule = draw(st.sampled_from(list(StepRule)))
    region = Window(start, stop)
    grid = TileGrid(shape, tile, overlap, rule=rule, region=region)
    assume(len(grid) <= MAX_TILES)
    return grid, region


def _moved(window: Window, by: tuple[int, ...]) -> Window:
    return Window.from_shape(window.shape, tuple(a + b for a, b in zip(window.start, by, strict=True)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(region_grids())
def test_a_region_grid_is_the_cropped_regions_grid_moved_to_its_start(drawn: tuple[TileGrid, Window]) -> None:
    grid, region = drawn
    assert grid.extent == region
    for axis, starts in enumerate(grid.starts):
        a, n = region.start[axis], region.shape[axis]
        assert starts == tuple(a + s for s in axis_starts(n, grid.tile[axis], grid.overlap[axis], grid.rule))
        assert all(a <= s < region.stop[axis] for s in starts)
    cropped = TileGrid(region.shape, grid.tile, grid.overlap, rule=grid.rule)
    assert grid.counts == cropped.counts and len(grid) == len(cropped)
    for pos in grid.positions():
        assert grid.window(pos) == _moved(cropped.window(pos), region.start)
        assert grid.interior(pos) == _moved(cropped.interior(pos), region.start)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(region_grids())
def test_crop_interiors_partition_exactly_the_region(drawn: tuple[TileGrid, Window]) -> None:
    grid, region = drawn
    hits = np.zeros(grid.shape, dtype=np.int32)
    for pos in grid.positions():
        inner = grid.interior(pos)
        assert grid.window(pos).contains(inner)
        hits[inner.slices] += 1
    assert (hits[region.slices] == 1).all()
    hits[region.slices] = 0
    assert not hits.any(), "a crop interior reaches out of the region"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(region_grids(limit2d=120, limit3d=30, max_tile=32), st.data())
def test_blocks_outside_the_region_have_no_tiles(drawn: tuple[TileGrid, Window], data: st.DataObject) -> None:
    grid, region = drawn
    # the tiles reach past the region only where it is shorter than the tile (padding, never read from the image)
    reach = Window.from_shape(grid.padded_shape, region.start)
    assert all(reach.contains(w) for w in grid)
    if all(n >= t for n, t in zip(region.shape, grid.tile, strict=True)):
        assert reach == region
    block = tuple(data.draw(st.integers(max(1, n // 8), 64)) for n in grid.shape)
    every = list(grid.positions())
    for window in BlockPartition(grid.shape, block):
        found = grid.positions_intersecting(window)
        assert found == [p for p in every if grid.window(p).intersection(window) is not None]
        if window.intersection(reach) is None:
            assert found == []
        target = window.intersection(region)  # what the engine asks for: the block clipped to the region
        if target is None:
            continue
        assert grid.positions_intersecting(target) == [
            p for p in every if grid.window(p).intersection(target) is not None
        ]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(region_grids())
def test_a_region_equal_to_the_image_is_no_region(drawn: tuple[TileGrid, Window]) -> None:
    grid, _ = drawn
    plain = TileGrid(grid.shape, grid.tile, grid.overlap, rule=grid.rule)
    whole = TileGrid(grid.shape, grid.tile, grid.overlap, rule=grid.rule, region=Window.from_shape(grid.shape))
    assert whole == plain and hash(whole) == hash(plain) and whole.region is None
    assert whole.starts == plain.starts and whole.cuts == plain.cuts


@pytest.mark.parametrize(
    ("region", "match"),
    [
        pytest.param(
            lambda: Window((0, 0), (65, 10)),
            r"region start=\(0, 0\) stop=\(65, 10\) must be a non-empty window inside the image of shape \(64, 64\)",
            id="past-the-end",
        ),
        pytest.param(lambda: Window((-1, 0), (10, 10)), r"region start=\(-1, 0\)", id="before-the-start"),
        pytest.param(lambda: Window((70, 70), (80, 80)), r"region start=\(70, 70\)", id="wholly-outside"),
        pytest.param(lambda: Window((0, 0, 0), (4, 4, 4)), r"region start=\(0, 0, 0\)", id="3-axes-in-2d"),
        pytest.param(lambda: Window((5, 0), (5, 10)), r"empty or inverted", id="empty"),
    ],
)
def test_a_region_outside_the_image_or_empty_is_a_geometry_error(region, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GeometryError, match=match):
        TileGrid((64, 64), (16, 16), (4, 4), region=region())


# ---------------------------------------------------------------------------------------------------
# a 2D job

SHAPE = (150, 130)
REGION = ((21, 97), (13, 110))
INSIDE = tuple(slice(a, b) for a, b in REGION)
CHUNKS = 32


def write_geotiff(path: Path, data: np.ndarray, *, origin: tuple[int, int] = (0, 0)) -> Path:
    """A uint8 GeoTIFF of ``data`` ``(C, H, W)``, no nodata; ``origin`` (row, col) shifts its transform (a crop)."""
    row, col = origin
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000 + 10 * col, 5000000 - 10 * row, 10, 10),
    ) as dst:
        dst.write(data)
    return path


@dataclass(frozen=True)
class Scene:
    pixels: np.ndarray
    image: Path
    model: Path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    root = tmp_path_factory.mktemp("region-scene")
    pixels = np.random.default_rng(1).integers(1, 255, size=(3, *SHAPE), dtype=np.uint8)
    return Scene(pixels, write_geotiff(root / "scene.tif", pixels), write_model(root / "model.pt"))


@pytest.fixture(scope="module")
def thread_finishing() -> Iterator[None]:
    """The module's in-process jobs finish on threads (no finishing processes started per job)."""
    from tiler.engine.executor import LocalExecutor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalExecutor, "finisher", lambda self, workers, preload=(): ThreadFinisher(workers))
        yield


def job(
    image: Path, model: Path, out: Path, *, region: Any = REGION, block: Any = 64, tiling: dict[str, Any] | None = None,
    **output: Any,
) -> dict[str, Any]:
    """The job's mapping: tiles 32, overlap 8, blocks of ``block`` (chunks 32), ``tiling`` keys on top."""
    blocks = [block, block] if isinstance(block, int) else list(block)
    return {
        "input": {"path": str(image), "region": [list(r) for r in region] if isinstance(region, tuple) else region},
        "model": {"weights": str(model), "batch_size": 4, "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": blocks, **(tiling or {})},
        "output": {"path": str(out), "chunks": [CHUNKS, CHUNKS], "exports": [], **output},
    }


@dataclass(frozen=True)
class Ran:
    labels: np.ndarray
    records: dict[tuple[int, ...], dict[str, Any]]  # by block start


def run(data: dict[str, Any]) -> Ran:
    result = run_segment(parse_config(data), engine="local", quiet=True)
    store = Path(result.store)
    records = [json.loads(f.read_text()) for f in (store / ".tiler" / "blocks").glob("*.json")]
    group: Any = zarr.open_group(str(store), mode="r")
    labels = np.asarray(group["labels"][...])
    return Ran(labels, {tuple(r["start"]): r for r in records})


@pytest.fixture(scope="module")
def region_job(tmp_path_factory: pytest.TempPathFactory, scene: Scene, thread_finishing: None) -> Ran:
    return run(job(scene.image, scene.model, tmp_path_factory.mktemp("region-job") / "out.zarr"))


def tiles_per_block(grid: TileGrid, region: Window, partition: BlockPartition) -> dict[tuple[int, ...], int]:
    """The tiles each block runs, counted pair by pair: a tile straddling two blocks runs once in each."""
    windows = list(grid)
    counts = {}
    for block in partition:
        target = block.intersection(region)
        counts[block.start] = 0 if target is None else sum(w.intersection(target) is not None for w in windows)
    return counts


@pytest.mark.parametrize(
    "block", [pytest.param((64, 64), id="blocks-64"), pytest.param((32, 96), id="blocks-32x96")]
)
def test_a_region_job_runs_exactly_the_tiles_of_a_grid_over_the_region(
    tmp_path: Path, scene: Scene, region_job: Ran, thread_finishing: None, block: tuple[int, int]
) -> None:
    ran = region_job if block == (64, 64) else run(job(scene.image, scene.model, tmp_path / "out.zarr", block=block))
    region = Window(*zip(*REGION, strict=True))
    grid = TileGrid(SHAPE, (32, 32), (8, 8), region=region)
    assert grid.counts == (3, 4)  # rows 21+(0, 24, 44), columns 13+(0, 24, 48, 65)
    expected = tiles_per_block(grid, region, BlockPartition(SHAPE, block))
    assert {start: r["tiles_run"] for start, r in ran.records.items()} == expected
    assert sum(expected.values()) > len(grid) and 0 in expected.values()  # straddling tiles, blocks outside
    assert all(r["tiles_skipped"] == 0 for r in ran.records.values())


def test_labels_outside_the_region_are_nodata_and_inside_never(region_job: Ran) -> None:
    labels = region_job.labels
    assert labels.shape == SHAPE
    inside = np.zeros(SHAPE, dtype=bool)
    inside[INSIDE] = True
    assert (labels[~inside] == 255).all()
    assert (labels[inside] != 255).all() and len(np.unique(labels[inside])) > 1


def test_background_label_0_labels_the_outside_0(
    tmp_path: Path, scene: Scene, region_job: Ran, thread_finishing: None
) -> None:
    labels = run(job(scene.image, scene.model, tmp_path / "out.zarr", background_label=0)).labels
    outside = np.ones(SHAPE, dtype=bool)
    outside[INSIDE] = False
    assert (labels[outside] == 0).all()
    assert np.array_equal(labels[INSIDE], region_job.labels[INSIDE])


def test_probabilities_outside_a_short_region_are_0_and_do_not_depend_on_the_blocks(
    tmp_path: Path, scene: Scene, thread_finishing: None
) -> None:
    short = ((10, 30), (5, 90))  # 20 rows: the tiles reach 12 rows past the region, over real pixels
    stored = []
    for block in (32, 64):
        out = tmp_path / f"blocks-{block}.zarr"
        run(job(scene.image, scene.model, out, region=short, block=block, probabilities="float32"))
        stored.append(np.asarray(zarr.open_group(str(out), mode="r")["probabilities"][...]))
    inside = np.zeros(SHAPE, dtype=bool)
    inside[tuple(slice(a, b) for a, b in short)] = True
    assert (stored[0][:, ~inside] == 0).all() and (stored[0][:, inside].sum(axis=0) > 0.99).all()
    np.testing.assert_array_equal(stored[0], stored[1])


@pytest.mark.parametrize(
    "block", [pytest.param((32, 32), id="blocks-32"), pytest.param((96, 64), id="blocks-96x64")]
)
def test_region_labels_do_not_depend_on_the_blocks(
    tmp_path: Path, scene: Scene, region_job: Ran, thread_finishing: None, block: tuple[int, int]
) -> None:
    labels = run(job(scene.image, scene.model, tmp_path / "out.zarr", block=block)).labels
    assert np.array_equal(labels, region_job.labels)


@pytest.mark.parametrize(
    ("region", "tiling"),
    [
        pytest.param(REGION, {}, id="overlap-rule"),
        pytest.param(REGION, {"rule": "nnunet"}, id="nnunet-rule"),
        # 20 rows, shorter than the tile: padded past the region's end as past the crop's, never read from the image
        pytest.param(((40, 60), (13, 110)), {"pad_mode": "reflect"}, id="short-region-reflect"),
        pytest.param(((40, 60), (13, 110)), {"pad_mode": "constant"}, id="short-region-constant"),
    ],
)
def test_labels_inside_the_region_equal_the_region_cropped_out_as_its_own_image(
    tmp_path: Path, scene: Scene, region_job: Ran, thread_finishing: None, region: Any, tiling: dict[str, Any]
) -> None:
    inside = tuple(slice(a, b) for a, b in region)
    pixels = scene.pixels[(slice(None), *inside)]
    crop = write_geotiff(tmp_path / "crop.tif", pixels, origin=(region[0][0], region[1][0]))
    cropped = run(job(crop, scene.model, tmp_path / "crop.zarr", region=None, tiling=tiling)).labels
    if region == REGION and not tiling:
        whole = region_job
    else:
        whole = run(job(scene.image, scene.model, tmp_path / "out.zarr", region=region, tiling=tiling))
    assert cropped.shape == tuple(b - a for a, b in region)
    assert np.array_equal(whole.labels[inside], cropped)
    outside = np.ones(SHAPE, dtype=bool)
    outside[inside] = False
    assert (whole.labels[outside] == 255).all()


# ---------------------------------------------------------------------------------------------------
# config


def minimal(**input_keys: Any) -> dict[str, Any]:
    return {
        "input": {"path": "/nonexistent/scene.tif", **input_keys},
        "model": {"weights": "/nonexistent/model.pt"},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "output": {"path": "/nonexistent/out.zarr", "chunks": [32, 32]},
    }


@pytest.mark.parametrize(
    ("region", "match"),
    [
        pytest.param(
            [[10, 10], [0, 5]], r"input\.region: is not one \[start, stop\] pair .*start < stop", id="start=stop"
        ),
        pytest.param([[0, 5], [12, 3]], r"input\.region: is not one .*\[\[0, 5\], \[12, 3\]\]", id="start>stop"),
        pytest.param([], r"input\.region: is not one", id="no-axes"),
        pytest.param([[0, 10]], r"input\.region: has 1 axes but the job has 2", id="1-axis-in-2d"),
        pytest.param([[0, 1], [0, 1], [0, 1]], r"input\.region: has 3 axes but the job has 2", id="3-axes-in-2d"),
        pytest.param([[-1, 3], [0, 4]], r"input\.region.*must be >= 0", id="negative"),
    ],
)
def test_a_bad_region_is_a_config_error_naming_input_region(region: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(minimal(region=region))


def test_region_auto_with_a_model_that_defines_none_is_a_config_error_at_planning(scene: Scene, tmp_path: Path) -> None:
    cfg = parse_config(job(scene.image, scene.model, tmp_path / "out.zarr", region="auto"))
    assert cfg.input.region == "auto"  # accepted by the schema: only the model can tell
    with pytest.raises(ConfigError, match=r"input\.region: auto, but the model .*model\.pt defines no region"):
        build_plan(cfg)


@pytest.mark.parametrize(
    "region",
    [
        pytest.param(((0, 151), (0, 130)), id="past-the-last-row"),
        pytest.param(((140, 160), (10, 20)), id="straddling-the-end"),
        pytest.param(((0, 10), (130, 131)), id="past-the-last-column"),
    ],
)
def test_a_region_outside_the_image_is_an_input_error_naming_the_file_and_shape(
    scene: Scene, tmp_path: Path, region: tuple[tuple[int, int], ...]
) -> None:
    cfg = parse_config(job(scene.image, scene.model, tmp_path / "out.zarr", region=region))
    with pytest.raises(InputError, match=r"does not lie inside .*scene\.tif of shape \[150, 130\]") as info:
        build_plan(cfg)
    assert str([list(r) for r in region]) in str(info.value)
    assert not (tmp_path / "out.zarr").exists()


def test_the_planned_grid_is_the_region_grid(scene: Scene, tmp_path: Path) -> None:
    plan, attrs = build_plan(parse_config(job(scene.image, scene.model, tmp_path / "out.zarr")))
    region = Window(*zip(*REGION, strict=True))
    assert plan.grid == TileGrid(SHAPE, (32, 32), (8, 8), region=region)
    assert plan.background_label is None and attrs["plan"]["region"] == [[21, 13], [97, 110]]
    whole = parse_config(job(scene.image, scene.model, tmp_path / "out.zarr", region=((0, 150), (0, 130))))
    assert build_plan(whole)[0].grid == plan_geometry(whole, SHAPE)[0] == TileGrid(SHAPE, (32, 32), (8, 8))


BEFORE_REGIONS = "d2cfa78ab766fb1a"
"""``config_hash(parse_config(minimal()))`` computed at commit ac76804, before ``input.region`` existed."""


def test_the_region_enters_the_hash_only_when_set() -> None:
    unset, null = parse_config(minimal()), parse_config(minimal(region=None))
    assert config_hash(unset) == config_hash(null) == BEFORE_REGIONS
    assert "region" not in _pixels_payload(unset)["input"]
    one, other = parse_config(minimal(region=[[0, 64], [0, 64]])), parse_config(minimal(region=[[0, 64], [1, 64]]))
    assert _pixels_payload(one)["input"]["region"] == [[0, 64], [0, 64]]
    auto = parse_config(minimal(region="auto"))
    assert len({config_hash(one), config_hash(other), config_hash(unset), config_hash(auto)}) == 4
