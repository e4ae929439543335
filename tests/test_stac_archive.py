"""STAC in and out: an archive over a STAC catalog of per-band COG items, and the Collection of the Items it wrote."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.shutil
import yaml
from jsonschema import Draft7Validator
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.engine.helpers import local_finishing_on, write_model
from tests.test_stac_export import SCHEMAS, schema_errors
from tiler.archive import load_archive, run_archive
from tiler.archive.report import ArchiveReport
from tiler.config import parse_config
from tiler.engine.finishing import ProcessFinisher
from tiler.errors import ConfigError, InputError
from tiler.geometry import Window
from tiler.io import detect_format, open_reader
from tiler.io.stac_item import StacItemReader, item_input_path
from tiler.job.finish import FINISH_MODULES
from tiler.segment import run_segment

BANDS = ("B02", "B03", "B04", "B08")
SHAPE = (64, 80)
COLLECTION_SCHEMA = "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json"


@dataclass(frozen=True)
class Scene:
    """One item: its id, grid (CRS, transform), time and pixels (4, H, W) with a nodata corner in every band."""

    id: str
    crs: str
    transform: Any
    when: dt.datetime
    seed: int

    def pixels(self) -> np.ndarray:
        data = np.random.default_rng(self.seed).integers(1, 255, size=(len(BANDS), *SHAPE), dtype=np.uint8)
        data[:, :16, :20] = 0  # nodata in every band at once: the AND of the masks is the stacked file's mask
        return data


SCENES = (
    Scene("s2-a", "EPSG:32633", from_origin(500000, 5000000, 10, 10), dt.datetime(2021, 3, 1, tzinfo=dt.UTC), 1),
    Scene("s2-b", "EPSG:32633", from_origin(500000, 5000000, 10, 10), dt.datetime(2021, 6, 15, 10, tzinfo=dt.UTC), 2),
    Scene("s2-c", "EPSG:32632", from_origin(700000, 5100000, 20, 20), dt.datetime(2022, 1, 10, tzinfo=dt.UTC), 3),
)
MIXED = Scene("s2-mixed", "EPSG:32633", from_origin(600000, 5000000, 10, 10), dt.datetime(2021, 8, 1, tzinfo=dt.UTC), 4)


def write_cog(path: Path, data: np.ndarray, scene: Scene, *, transform: Any = None) -> Path:
    """``data`` (C, H, W) as a COG on the scene's grid (nodata 0): a tiled GeoTIFF copied by GDAL's COG driver."""
    tmp = path.with_name(path.name + ".tmp.tif")
    with rasterio.open(
        tmp, "w", driver="GTiff", width=SHAPE[1], height=SHAPE[0], count=data.shape[0], dtype="uint8",
        crs=scene.crs, transform=transform or scene.transform, nodata=0,
    ) as dst:
        dst.write(data)
    rasterio.shutil.copy(tmp, path, driver="COG")
    tmp.unlink()
    return path


def make_item(scene: Scene, folder: Path, *, shift_last: bool = False) -> pystac.Item:
    """The scene as a STAC Item with one single-band COG asset per band (the last shifted off the grid if asked)."""
    folder.mkdir(parents=True)
    bounds = rasterio.transform.array_bounds(*SHAPE, scene.transform)
    west, south, east, north = transform_bounds(scene.crs, "EPSG:4326", *bounds)
    geometry = {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                     [west, south]]]}  # fmt: skip
    item = pystac.Item(scene.id, geometry, [west, south, east, north], scene.when, {"platform": "sentinel-2a"})
    for band, (key, data) in enumerate(zip(BANDS, scene.pixels(), strict=True)):
        moved = scene.transform @ rasterio.Affine.translation(3, 0) if shift_last and band == len(BANDS) - 1 else None
        cog = write_cog(folder / f"{key}.tif", data[None], scene, transform=moved)
        item.add_asset(key, pystac.Asset(cog.name, media_type=pystac.MediaType.COG, roles=["data"]))
    return item


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog (three items and one whose B08 is off its grid), 4-band references, truths and the model."""
    folder = tmp_path_factory.mktemp("stac-template")
    write_model(folder / "model.pt", in_channels=len(BANDS))
    collection = pystac.Collection(
        "scenes", "Four-band test scenes", pystac.Extent(pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                                                        pystac.TemporalExtent([[SCENES[0].when, None]])),  # fmt: skip
    )
    stacked = folder / "stacked"
    stacked.mkdir()
    for scene in (*SCENES, MIXED):
        item = make_item(scene, folder / "catalog" / scene.id, shift_last=scene is MIXED)
        collection.add_item(item)
        truth = np.random.default_rng(scene.seed).integers(0, 4, size=SHAPE, dtype=np.uint8)
        write_cog(folder / "catalog" / scene.id / f"{scene.id}_truth.tif", truth[None], scene)
        if scene is not MIXED:
            write_cog(stacked / f"{scene.id}.tif", scene.pixels(), scene)
    collection.normalize_hrefs(str(folder / "catalog"))
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    return folder


def write_archive(folder: Path, name: str, **archive: Any) -> Path:
    """An archive file over the catalog (or, with ``input``, over another input), exports COG and STAC."""
    given = archive.pop("input", None)
    catalog = {"stac": "catalog/collection.json", "assets": list(BANDS)} if given is None else {}
    section = {"root": f"out-{name}", **catalog, **archive}
    config = {
        "archive": section,
        "input": given or {},
        "model": {"weights": "model.pt", "device": "cpu", "batch_size": 4, "threads": 1},
        "tiling": {"tile": 32, "overlap": 8, "block": 64},
        "output": {"chunks": 64, "exports": ["cog", "stac"]},
    }
    if given is None:
        config["scoring"] = {"truth": "{stem}_truth.tif"}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if v != {}}))
    return path


def run(config: Path) -> ArchiveReport:
    return run_archive(load_archive(config), engine="local", quiet=True)


@dataclass(frozen=True)
class Runs:
    """The catalog archive run twice, then once more after one asset changed; the stacked references run once."""

    folder: Path
    first: ArchiveReport
    second: ArchiveReport
    third: ArchiveReport
    reference: ArchiveReport
    collection_after_first: dict[str, Any]


@pytest.fixture(scope="module")
def finisher() -> Iterator[ProcessFinisher]:
    pool = ProcessFinisher(2, FINISH_MODULES)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def runs(prepared: Path, finisher: ProcessFinisher, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    folder = tmp_path_factory.mktemp("stac-runs")
    shutil.copytree(prepared, folder, dirs_exist_ok=True)
    config = write_archive(folder, "catalog")
    reference_config = write_archive(folder, "stacked", input={"path": "stacked/*.tif"})
    with local_finishing_on(finisher):
        first = run(config)
        collection = json.loads((folder / "out-catalog" / "collection.json").read_text())
        second = run(config)
        b03 = folder / "catalog" / "s2-b" / "B03.tif"
        changed = SCENES[1].pixels()[1]
        changed[40:, 40:] = 7
        write_cog(b03, changed[None], SCENES[1])
        third = run(config)
        reference = run(reference_config)
    return Runs(folder, first, second, third, reference, collection)


def statuses(report: ArchiveReport) -> dict[str, str]:
    return {item.stem: item.status for item in report.items}


def labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


# ---------------------------------------------------------------------------------------------------
# the archive end to end


def test_every_good_item_is_done_and_the_mixed_grid_item_fails_alone_in_one_line(runs: Runs) -> None:
    assert statuses(runs.first) == {"s2-a": "done", "s2-b": "done", "s2-c": "done", "s2-mixed": "failed"}
    error = next(item.error for item in runs.first.items if item.stem == "s2-mixed")
    assert error is not None and "\n" not in error
    assert "'B02'" in error and "'B08'" in error and "different grids" in error and "transform" in error
    assert "s2-mixed" in error


def test_the_items_validate_and_pystac_reads_them(runs: Runs) -> None:
    for scene in SCENES:
        path = runs.folder / "out-catalog" / scene.id / f"{scene.id}.stac.json"
        data = json.loads(path.read_text())
        errors, fetched = schema_errors(data)
        assert errors == [] and fetched == []
        item = pystac.Item.from_file(str(path))
        assert item.id == scene.id
        assert Path(item.assets["labels"].get_absolute_href() or "").is_file()
        assert item.datetime == scene.when and data["properties"]["tiler:datetime_from"] == "input"  # the source's


def test_labels_equal_runs_on_the_same_bands_stacked_into_one_geotiff(runs: Runs) -> None:
    assert statuses(runs.reference) == {s.id: "done" for s in SCENES}
    for scene in SCENES:
        ours = labels(runs.folder / "out-catalog" / scene.id / f"{scene.id}.cog.tif")
        theirs = labels(runs.folder / "out-stacked" / scene.id / f"{scene.id}.cog.tif")
        if scene.id != "s2-b":
            assert np.array_equal(ours, theirs), scene.id
        else:  # rerun on its changed B03 (the reference has the bands as first written): the change is seen
            assert not np.array_equal(ours, theirs)
            assert np.array_equal(ours[:24, :24], theirs[:24, :24])  # only the tile at (0, 0) covers these: 32² < 40²
        assert len(np.unique(ours[16:, 20:])) > 1, scene.id  # a real label map, not one value
        assert (ours[:16, :20] == 255).all()  # the nodata corner (every band 0): the nodata label


def test_truth_patterns_take_the_item_id_as_stem(runs: Runs) -> None:
    for item in runs.first.items:
        if item.status == "done":
            assert isinstance((item.scores or {}).get("fwiou"), float), item.stem


def collection_errors(data: dict[str, Any]) -> list[str]:
    sources = json.loads((SCHEMAS / "sources.json").read_text())["schemas"]
    registry: Registry[Any] = Registry().with_resources(
        (url, Resource.from_contents(json.loads((SCHEMAS / s["file"]).read_text()), default_specification=DRAFT7))
        for url, s in sources.items()
    )
    validator = Draft7Validator({"$ref": COLLECTION_SCHEMA}, registry=registry)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)]


def test_the_collection_links_every_done_item_and_validates(runs: Runs) -> None:
    root = runs.folder / "out-catalog"
    data = json.loads((root / "collection.json").read_text())
    assert collection_errors(data) == []
    assert collection_errors({**data, "extent": {"spatial": {}}}) != []  # the schema is really applied
    links = sorted(link["href"] for link in data["links"] if link["rel"] == "item")
    assert links == [f"./{s.id}/{s.id}.stac.json" for s in SCENES]
    collection = pystac.Collection.from_file(str(root / "collection.json"))
    assert sorted(i.id for i in collection.get_items()) == [s.id for s in SCENES]
    items = [json.loads((root / s.id / f"{s.id}.stac.json").read_text()) for s in SCENES]
    west = min(i["bbox"][0] for i in items)
    north = max(i["bbox"][3] for i in items)
    box = data["extent"]["spatial"]["bbox"][0]
    assert box[0] == pytest.approx(west) and box[3] == pytest.approx(north)
    times = sorted(i["properties"]["datetime"] for i in items)
    start, end = data["extent"]["temporal"]["interval"][0]
    assert pystac.utils.str_to_datetime(start) == pystac.utils.str_to_datetime(times[0])
    assert pystac.utils.str_to_datetime(end) == pystac.utils.str_to_datetime(times[-1])


def test_a_second_run_reruns_nothing_and_a_changed_asset_reruns_only_its_item(runs: Runs) -> None:
    assert statuses(runs.second) == {"s2-a": "skipped", "s2-b": "skipped", "s2-c": "skipped", "s2-mixed": "failed"}
    assert statuses(runs.third) == {"s2-a": "skipped", "s2-b": "done", "s2-c": "skipped", "s2-mixed": "failed"}
    data = json.loads((runs.folder / "out-catalog" / "collection.json").read_text())
    linked = sorted(link["href"] for link in data["links"] if link["rel"] == "item")
    assert linked == sorted(link["href"] for link in runs.collection_after_first["links"] if link["rel"] == "item")


# ---------------------------------------------------------------------------------------------------
# listing and filters (no run)


@pytest.mark.parametrize(
    ("archive", "expected"),
    [
        pytest.param({}, ["s2-a", "s2-b", "s2-c", "s2-mixed"], id="all"),
        pytest.param({"datetime": "2021-01-01/2021-06-30"}, ["s2-a", "s2-b"], id="datetime"),
        pytest.param({"datetime": "2021-07-01/.."}, ["s2-c", "s2-mixed"], id="datetime-open-start-end"),
        pytest.param({"datetime": "../2021-06-15"}, ["s2-a", "s2-b"], id="datetime-end-date-inclusive"),
        pytest.param({"bbox": [14.5, 40.0, 17.0, 60.0]}, ["s2-a", "s2-b", "s2-mixed"], id="bbox-utm33"),
        pytest.param({"bbox": [10.0, 40.0, 13.0, 60.0]}, ["s2-c"], id="bbox-utm32"),
        pytest.param({"properties": {"platform": "sentinel-2b"}}, [], id="properties"),
    ],
)
def test_filters_select_items(prepared: Path, tmp_path: Path, archive: dict[str, Any], expected: list[str]) -> None:
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    cfg = load_archive(write_archive(tmp_path, "f", **archive))
    if not expected:
        with pytest.raises(ConfigError, match="archive.stac .* lists no inputs"):
            cfg.inputs()
        return
    from tiler.archive import input_stem

    assert [input_stem(p) for p in cfg.inputs()] == expected


@pytest.mark.parametrize(
    ("archive", "match"),
    [
        pytest.param({"input": {"path": "stacked/*.tif"}, "stac": "catalog/collection.json", "assets": ["B02"]},
                     r"archive\.stac / input\.path: both list the inputs.*fix: remove input\.path", id="stac+glob"),
        pytest.param({"assets": None}, "archive.assets: is required with archive.stac", id="no-assets"),
        pytest.param({"datetime": "2021-13-01/.."}, r"archive\.datetime: .*not a date-time interval", id="bad-date"),
        pytest.param({"bbox": [10, 50, 9, 51]}, r"archive\.bbox: .*min <= max", id="bad-bbox"),
        pytest.param({"assets": ["B02", "B02"]}, r"archive\.assets: .*each once", id="repeated-asset"),
    ],
)  # fmt: skip
def test_bad_stac_archives_are_refused_in_one_line(
    prepared: Path, tmp_path: Path, archive: dict[str, Any], match: str
) -> None:
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    path = write_archive(tmp_path, "bad", **archive)
    with pytest.raises(ConfigError, match=match):
        load_archive(path)


def test_a_stac_filter_without_a_catalog_is_refused(prepared: Path, tmp_path: Path) -> None:
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    path = write_archive(tmp_path, "glob", input={"path": "stacked/*.tif"}, bbox=[0, 0, 1, 1])
    with pytest.raises(ConfigError, match=r"archive\.bbox: is set but archive\.stac is not"):
        load_archive(path)


@pytest.mark.parametrize("item_id", ["../evil", "a/b", "..", "."])
def test_an_item_id_that_is_not_a_plain_name_never_writes_outside_the_root(prepared: Path, item_id: str) -> None:
    cfg = load_archive(write_archive(prepared, "ids"))
    with pytest.raises(ConfigError, match="STAC item id .* is not a plain file name"):
        cfg.store_path(item_input_path(f"{prepared}/catalog/items.json", item_id))


# ---------------------------------------------------------------------------------------------------
# the reader, and one item as a plain job


def item_collection(prepared: Path, folder: Path) -> Path:
    """An ItemCollection file holding the catalog's items (relative asset hrefs, resolved against the file)."""
    items = []
    for scene in SCENES:
        item = pystac.Item.from_file(str(prepared / "catalog" / scene.id / f"{scene.id}.json"))
        for asset in item.assets.values():
            asset.href = os.path.relpath(asset.get_absolute_href() or "", folder)
        item.clear_links()
        items.append(item)
    path = folder / "items.json"
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))
    return path


def test_the_reader_stacks_the_assets_like_the_stacked_geotiff_and_pickles(prepared: Path, tmp_path: Path) -> None:
    scene = SCENES[0]
    collection = item_collection(prepared, tmp_path)
    for path in (f"{prepared}/catalog/{scene.id}/{scene.id}.json", item_input_path(str(collection), scene.id)):
        assert detect_format(path) == "stac-item"
        reader = open_reader(path, assets=list(BANDS))
        stacked = open_reader(prepared / "stacked" / f"{scene.id}.tif")
        assert isinstance(reader, StacItemReader) and reader.channels == 4 and reader.shape == SHAPE
        assert reader.georef == stacked.georef
        window = Window((-8, 10), (40, 90))  # boundless: past the top and the right edge
        for copied in (reader, pickle.loads(pickle.dumps(reader)), copy.copy(reader)):
            assert np.array_equal(copied.read(window), stacked.read(window))
            mask, expected = copied.valid_mask(window), stacked.valid_mask(window)
            assert mask is not None and expected is not None and np.array_equal(mask, expected)
        duplicate = copy.copy(reader)
        assert all(a is not b for a, b in zip(reader.parts, duplicate.parts, strict=True))
    reordered = open_reader(f"{collection}#{scene.id}", assets=["B08", "B02"])  # a plain local path works here too
    assert np.array_equal(reordered.read(Window((0, 0), SHAPE)), scene.pixels()[[3, 0]])
    with pytest.raises(InputError, match="has no asset 'B05'"):
        open_reader(f"{collection}#{scene.id}", assets=["B02", "B05"])
    with pytest.raises(InputError, match="no item of id 'nope'"):
        open_reader(f"{collection}#nope", assets=["B02"])


def test_an_item_collection_lists_its_items_as_uris_with_the_id_as_fragment(prepared: Path, tmp_path: Path) -> None:
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    collection = item_collection(prepared, tmp_path)
    config = write_archive(tmp_path, "ic", stac=str(collection), datetime="2021-06-15T00:00:00Z/..",
                           missing_truth="unscored")  # fmt: skip
    cfg = load_archive(config)
    inputs = cfg.inputs()
    assert inputs == [f"{collection.as_uri()}#{s.id}" for s in SCENES[1:]]
    assert cfg.truth_path(inputs[0]) == str(tmp_path / "s2-b_truth.tif")  # {stem}: the id, beside the file
    job = cfg.job_for(inputs[0])
    assert job.input.assets == BANDS and job.output.path == str(tmp_path / "out-ic" / "s2-b" / "s2-b.zarr")


def test_a_pixel_is_valid_only_where_every_asset_has_data(tmp_path: Path) -> None:
    scene = SCENES[0]
    item = make_item(scene, tmp_path / "item")
    holes = scene.pixels()
    holes[2, 40:50, 50:60] = 0  # B04 alone has no data here
    write_cog(tmp_path / "item" / "B04.tif", holes[2][None], scene)
    item.set_self_href(str(tmp_path / "item" / "item.json"))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False)
    reader = open_reader(tmp_path / "item" / "item.json", assets=list(BANDS))
    valid = reader.valid_mask(Window((0, 0), SHAPE))
    assert valid is not None
    expected = np.ones(SHAPE, dtype=bool)
    expected[:16, :20] = False
    expected[40:50, 50:60] = False
    assert np.array_equal(valid, expected)
    pixels, masked = reader.read_masked(Window((0, 0), SHAPE))
    assert masked is not None and np.array_equal(masked, expected) and np.array_equal(pixels[2], holes[2])


def test_one_item_runs_as_a_plain_job(prepared: Path, tmp_path: Path) -> None:
    scene = SCENES[2]
    collection = item_collection(prepared, tmp_path)
    common: dict[str, Any] = {
        "model": {"weights": str(prepared / "model.pt"), "device": "cpu", "batch_size": 4, "threads": 1},
        "tiling": {"tile": 32, "overlap": 8, "block": 64}, "output": {"chunks": 64, "exports": ["cog"]},
    }  # fmt: skip
    for name, inp in (
        ("item", {"path": item_input_path(str(collection), scene.id), "assets": list(BANDS)}),
        ("stacked", {"path": str(prepared / "stacked" / f"{scene.id}.tif")}),
    ):
        output = {**common["output"], "path": str(tmp_path / f"{name}.zarr")}
        cfg = parse_config({**common, "input": inp, "output": output})
        run_segment(cfg, engine="local", quiet=True)
    assert np.array_equal(labels(tmp_path / "item.cog.tif"), labels(tmp_path / "stacked.cog.tif"))


# ---------------------------------------------------------------------------------------------------
# stac-geoparquet, and a catalog in a bucket


def test_a_stac_geoparquet_file_lists_its_items_and_each_reads_as_the_stacked_geotiff(
    prepared: Path, tmp_path: Path
) -> None:
    import stac_geoparquet.arrow

    items = []
    for scene in SCENES:
        item = pystac.Item.from_file(str(prepared / "catalog" / scene.id / f"{scene.id}.json"))
        item.make_asset_hrefs_absolute()
        item.clear_links()
        items.append(item.to_dict())
    parquet = tmp_path / "items.parquet"
    stac_geoparquet.arrow.to_parquet(stac_geoparquet.arrow.parse_stac_items_to_arrow(items), parquet)
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    cfg = load_archive(write_archive(tmp_path, "gp", stac=str(parquet), datetime="2021-06-15T00:00:00Z/..",
                                     missing_truth="unscored"))  # fmt: skip
    inputs = cfg.inputs()
    assert inputs == [f"{parquet.as_uri()}#{s.id}" for s in SCENES[1:]]
    for scene, path in zip(SCENES[1:], inputs, strict=True):
        reader = open_reader(path, assets=list(BANDS))
        stacked = open_reader(prepared / "stacked" / f"{scene.id}.tif")
        assert reader.georef == stacked.georef
        assert np.array_equal(reader.read(Window((0, 0), SHAPE)), stacked.read(Window((0, 0), SHAPE)))
    with pytest.raises(InputError, match="no item of id 'nope'"):
        open_reader(f"{parquet.as_uri()}#nope", assets=["B02"])


def test_a_catalog_in_a_bucket_lists_its_items_there_and_they_read_as_the_stacked_geotiff(
    prepared: Path, tmp_path: Path, s3_bucket: Any
) -> None:
    for file in sorted((prepared / "catalog").rglob("*")):
        if file.is_file():
            s3_bucket.upload(file, "cat/" + file.relative_to(prepared / "catalog").as_posix())
    url = s3_bucket.url("cat/collection.json")
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    cfg = load_archive(write_archive(tmp_path, "bucket", stac=url, missing_truth="unscored"))
    inputs = cfg.inputs()
    assert sorted(cfg.job_for(p).output.path.rsplit("/", 1)[-1] for p in inputs) == sorted(
        f"{s.id}.zarr" for s in (*SCENES, MIXED)
    )
    assert all(p.startswith(f"s3://{s3_bucket.name}/cat/") for p in inputs), inputs
    scene = SCENES[0]
    path = next(p for p in inputs if p.endswith(f"{scene.id}.json") or p.endswith(f"#{scene.id}"))
    reader = open_reader(path, assets=list(BANDS))
    stacked = open_reader(prepared / "stacked" / f"{scene.id}.tif")
    assert np.array_equal(reader.read(Window((0, 0), SHAPE)), stacked.read(Window((0, 0), SHAPE)))
