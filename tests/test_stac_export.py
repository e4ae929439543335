"""The stac export: a STAC Item per output, valid against the STAC schemas (bundled, never fetched), read by pystac."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from jsonschema import Draft7Validator
from rasterio.warp import transform as warp_points
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from tests.engine.helpers import write_model, write_raster
from tests.jobs import Scene, write_config
from tiler.config import load_config, parse_config
from tiler.errors import ConfigError
from tiler.segment import SegmentResult, run_segment

SCHEMAS = Path(__file__).resolve().parent / "data" / "stac-schemas"
ITEM_SCHEMA = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
EXTENSIONS = {
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
ACQUIRED = "2021:06:30 10:15:00"  # TIFFTAG_DATETIME of the scene: no zone, read as UTC


def schema_errors(item: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Every error of ``item`` against the core Item schema and each extension it declares, and what was fetched.

    The schemas come from ``tests/data/stac-schemas`` (``sources.json``: URL → file); a schema not bundled is not
    fetched but recorded (and the validation that needed it fails).
    """
    fetched: list[str] = []

    def retrieve(uri: str) -> Resource[Any]:
        fetched.append(uri)
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]

    sources = json.loads((SCHEMAS / "sources.json").read_text())["schemas"]
    resources = [
        (url, Resource.from_contents(json.loads((SCHEMAS / s["file"]).read_text()), default_specification=DRAFT7))
        for url, s in sources.items()
    ]
    registry: Registry[Any] = Registry(retrieve=retrieve).with_resources(resources)  # type: ignore[call-arg]
    errors: list[str] = []
    for url in [ITEM_SCHEMA, *item.get("stac_extensions", [])]:
        validator = Draft7Validator({"$ref": url}, registry=registry, format_checker=Draft7Validator.FORMAT_CHECKER)
        errors += [f"{url}: {e.json_path}: {e.message}" for e in validator.iter_errors(item)]
    return errors, fetched


@dataclass(frozen=True)
class Finished:
    root: Path
    image: Path
    model: Path
    result: SegmentResult

    @property
    def item_path(self) -> Path:
        return self.root / "out.stac.json"

    def item(self) -> dict[str, Any]:
        return dict(json.loads(self.item_path.read_text()))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """A georeferenced scene (EPSG:32633, acquisition time tagged) run with exports cog, quicklook, geojson, stac."""
    inputs = tmp_path_factory.mktemp("inputs")
    image = write_raster(inputs / "image.tif")
    with rasterio.open(image, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME=ACQUIRED)
    model = write_model(inputs / "model.pt")
    root = tmp_path_factory.mktemp("finished")
    exports = ["cog", "quicklook", "geojson", "stac"]
    cfg = load_config(write_config(root, inputs=Scene(image, model, None), exports=exports))
    return Finished(root, image, model, run_segment(cfg, engine="local", quiet=True))


def test_the_item_validates_against_the_stac_schemas_without_fetching_any(finished: Finished) -> None:
    item = finished.item()
    assert finished.result.outputs["stac"] == str(finished.item_path)
    assert item["stac_version"] == "1.1.0" and set(item["stac_extensions"]) == EXTENSIONS
    errors, fetched = schema_errors(item)
    assert errors == [] and fetched == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(item: dict[str, Any]) -> None:
        *head, last = path.split("/")
        target: Any = item
        for key in head:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value

    return change


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_set("bbox", [1.0, 2.0, 3.0]), id="bbox-of-3"),
        pytest.param(_set("stac_version", "1.0.0"), id="other-stac-version"),
        pytest.param(_set("properties/datetime", "30 June 2021"), id="datetime-not-rfc3339"),
        pytest.param(_set("properties/proj:code", 32633), id="proj-code-a-number"),
        pytest.param(_set("properties/proj:shape", [200]), id="proj-shape-1d"),
        pytest.param(_set("properties/processing:software", {"tiler": 1}), id="software-version-a-number"),
        pytest.param(_set("properties/processing:datetime", "2021-06-30T10:15:00+02:00"), id="processing-not-utc"),
        pytest.param(_set("assets/labels/classification:classes/1/color_hint", "#E6194B"), id="color-hint-with-#"),
        pytest.param(_set("assets/labels/classification:classes/1/name", "dense forest"), id="class-name-with-space"),
    ],
)
def test_the_schemas_refuse_an_item_broken_in_one_field(finished: Finished, change: Callable[..., None]) -> None:
    item = copy.deepcopy(finished.item())
    change(item)
    errors, fetched = schema_errors(item)
    assert errors and fetched == []


def test_pystac_reads_the_item_and_every_asset_is_a_file_beside_it(finished: Finished) -> None:
    item = pystac.Item.from_file(str(finished.item_path))
    assert item.id == "out"
    root = finished.root
    expected = {
        "store": root / "out.zarr", "labels": root / "out.cog.tif", "labels-aux": root / "out.cog.tif.aux.xml",
        "thumbnail": root / "out.quicklook.png", "polygons-geojson": root / "out.geojson",
        "report": root / "out.report.json", "report-markdown": root / "out.report.md",
    }  # fmt: skip
    assert {k: Path(a.get_absolute_href() or "") for k, a in item.assets.items()} == expected
    assert all(path.exists() for path in expected.values())
    assert all(not a.href.startswith("/") for a in item.assets.values())  # relative: the folder can move
    labels = item.assets["labels"]
    assert labels.media_type == "image/tiff; application=geotiff; profile=cloud-optimized" and labels.roles == ["data"]
    assert item.assets["thumbnail"].roles == ["thumbnail"] and item.assets["report"].roles == ["metadata"]
    assert item.assets["polygons-geojson"].media_type == "application/geo+json"
    assert item.assets["store"].media_type == "application/vnd+zarr"


def test_the_classes_are_the_stores_names_and_colours(finished: Finished) -> None:
    from pystac.extensions.classification import ClassificationExtension

    from tiler.io.store import OutputStore

    store = OutputStore.open(finished.root / "out.zarr", mode="r")
    item = pystac.Item.from_file(str(finished.item_path))
    for key in ("labels", "store"):
        classes = ClassificationExtension.ext(item.assets[key]).classes or []
        kept = [(c.value, c.title, c.color_hint) for c in classes if not c.nodata]
        assert kept == [(k, n, "{:02X}{:02X}{:02X}".format(*rgb))
                        for k, (n, rgb) in enumerate(zip(store.class_names, store.class_colors, strict=True))]
        assert [c.name for c in classes if not c.nodata] == store.class_names  # class_0.. are machine-readable
        assert [(c.value, c.nodata) for c in classes if c.nodata] == [(store.nodata_label, True)]


def test_the_projection_is_the_cogs_grid(finished: Finished) -> None:
    props = finished.item()["properties"]
    with rasterio.open(finished.root / "out.cog.tif") as cog:
        assert props["proj:transform"] == list(cog.transform)[:6]
        assert props["proj:shape"] == [cog.height, cog.width]
        assert props["proj:code"] == f"EPSG:{cog.crs.to_epsg()}" == "EPSG:32633"
        assert props["proj:bbox"] == list(cog.bounds)


def test_the_footprint_holds_the_rasters_corners_and_no_more(finished: Finished) -> None:
    item = finished.item()
    with rasterio.open(finished.image) as src:
        left, bottom, right, top = src.bounds
        lons, lats = warp_points(src.crs, "EPSG:4326", [left, right, right, left], [top, top, bottom, bottom])
    west, south, east, north = item["bbox"]
    assert all(west <= x <= east for x in lons) and all(south <= y <= north for y in lats)
    assert (west, south, east, north) == pytest.approx((min(lons), min(lats), max(lons), max(lats)), abs=1e-9)
    footprint = shapely.geometry.shape(item["geometry"])
    assert all(footprint.distance(shapely.Point(x, y)) < 1e-12 for x, y in zip(lons, lats, strict=True))
    assert footprint.exterior.is_ccw  # RFC 7946's winding


@pytest.mark.parametrize("left", [pytest.param(600_000.0, id="east-of-the-central-meridian"),
                                  pytest.param(199_980.0, id="west-edge-of-the-zone")])  # fmt: skip
def test_a_utm_tiles_footprint_follows_its_curved_edges(left: float) -> None:
    from tiler.io.base import Georef
    from tiler.io.stac import SIMPLIFY_DEGREES, footprint

    shape, size, top = (10980, 10980), 10.0, 5_300_040.0  # a Sentinel-2 tile, 110 km a side
    georef = Georef(kind="raster", crs_wkt=rasterio.crs.CRS.from_epsg(32633).to_wkt(),
                    transform=(size, 0.0, left, 0.0, -size, top))
    geometry, bbox = footprint(georef, shape)
    assert geometry is not None and bbox is not None
    right, bottom = left + shape[1] * size, top - shape[0] * size
    steps = np.linspace(0.0, 1.0, 101)
    xs = [*(left + (right - left) * steps), *(left + (right - left) * steps), *[left] * 101, *[right] * 101]
    ys = [*[top] * 101, *[bottom] * 101, *(bottom + (top - bottom) * steps), *(bottom + (top - bottom) * steps)]
    lons, lats = warp_points("EPSG:32633", "EPSG:4326", xs, ys)
    edge = [shapely.Point(x, y) for x, y in zip(lons, lats, strict=True)]
    drawn = shapely.geometry.shape(geometry)
    assert max(drawn.exterior.distance(p) for p in edge) <= 1.1 * SIMPLIFY_DEGREES
    corners = shapely.Polygon([edge[0], edge[100], edge[201], edge[101]])  # what the bounds alone would give
    assert max(corners.exterior.distance(p) for p in edge) > 20 * SIMPLIFY_DEGREES  # so the edges do curve
    assert len(drawn.exterior.coords) < 100  # thinned: not every densified point is kept
    assert bbox[0] <= min(lons) and bbox[1] <= min(lats) and bbox[2] >= max(lons) and bbox[3] >= max(lats)


def test_a_south_up_rasters_footprint_still_winds_counterclockwise() -> None:
    from tiler.io.base import Georef
    from tiler.io.stac import footprint

    wkt = rasterio.crs.CRS.from_epsg(32633).to_wkt()
    for e, f in ((-10.0, 5_000_000.0), (10.0, 4_998_000.0)):  # north-up, then the same box south-up
        geometry, bbox = footprint(Georef(kind="raster", crs_wkt=wkt, transform=(10.0, 0.0, 500_000.0, 0.0, e, f)),
                                   (200, 168))
        assert geometry is not None and shapely.geometry.shape(geometry).exterior.is_ccw
        assert bbox == pytest.approx([15.0, 45.1354718, 15.0213728, 45.1534772], abs=1e-6)


def test_the_datetime_is_the_inputs_acquisition_and_the_provenance_is_recorded(finished: Finished) -> None:
    item = pystac.Item.from_file(str(finished.item_path))
    props = item.properties
    assert item.datetime is not None and item.datetime.isoformat() == "2021-06-30T10:15:00+00:00"
    assert props["tiler:datetime_from"] == "input"
    assert props["processing:software"] == {"tiler": "0.1.0"} and "tiler" in props["processing:lineage"]
    assert props["processing:datetime"].endswith("Z") and props["created"] == props["processing:datetime"]
    assert props["tiler:model"]["weights"] == str(finished.model)
    store_attrs = json.loads((finished.root / "out.zarr" / "zarr.json").read_text())["attributes"]
    assert props["tiler:pixels_hash"] == store_attrs["pixels_hash"]
    assert props["tiler:config_hash"] == store_attrs["job_hash"]  # the finishing's config hash


def test_the_item_is_recorded_and_tiler_verify_accepts_the_store(
    finished: Finished, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiler.cli import main as cli_main
    from tiler.io.atomic import content_digest
    from tiler.io.store import OutputStore

    store = OutputStore.open(finished.root / "out.zarr", mode="r")
    record = store.export_records()["stac"]
    assert record["digest"] == content_digest(finished.item_path)
    assert record["settings"] == {"exports": ["cog", "quicklook", "geojson", "stac"]}
    assert cli_main(["verify", str(finished.root / "out.zarr")]) == 0
    assert "missing-export" not in capsys.readouterr().out


def test_other_exports_draw_the_item_again_without_running_a_block(
    tmp_path: Path, finished: Finished, copy_finished_job: Callable[[Path, Path], Path]
) -> None:
    copy_finished_job(finished.root, tmp_path)
    blocks = sorted(p.name for p in (tmp_path / "out.zarr" / ".tiler" / "blocks").iterdir())
    unscored = Scene(finished.image, finished.model, None)
    cfg = load_config(write_config(tmp_path, inputs=unscored, exports=["cog", "stac"]))
    result = run_segment(cfg, engine="local", quiet=True)
    assert result.summary["blocks_run"] == 0
    assert sorted(p.name for p in (tmp_path / "out.zarr" / ".tiler" / "blocks").iterdir()) == blocks
    item = json.loads((tmp_path / "out.stac.json").read_text())
    assert set(item["assets"]) == {"store", "labels", "labels-aux", "report", "report-markdown"}
    assert (tmp_path / "out.geojson").exists()  # still on disk from the first finishing, but no asset of this one
    assert schema_errors(item) == ([], [])


def test_a_volume_job_asking_for_stac_is_refused_at_load_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"output\.exports.*stac on a 3D job") as caught:
        parse_config({"input": {"path": "v.nii.gz"}, "model": {"weights": "m.pt"},
                      "tiling": {"tile": [16, 16, 16], "overlap": [4, 4, 4], "block": [32, 32, 32]},
                      "output": {"path": "o.zarr", "chunks": [16, 16, 16], "exports": ["stac"]}})
    lines = str(caught.value).strip().splitlines()
    assert lines[0] == "1 problem in the configuration:" and len(lines) == 2  # the problem is one line
    assert "stac on a 3D job" in lines[1] and "nifti or ome-zarr" in lines[1]


@pytest.mark.parametrize("reader", ["nifti", "zarr", "dicom", "tiff-slide", "openslide"])
def test_stac_is_drawn_for_gdal_rasters_only(reader: str) -> None:
    from tiler.exports import get

    assert get("stac").input_problem("raster") is None
    problem = get("stac").input_problem(reader)
    assert problem is not None and "fix: remove stac from output.exports" in problem


def test_the_reports_the_item_lists_are_the_ones_every_finishing_writes() -> None:
    from tiler.exports.stac import REPORTS
    from tiler.job.outputs import REPORT_FILES

    assert REPORTS.items() <= REPORT_FILES.items()


def test_a_raster_without_a_crs_gets_a_null_geometry_and_still_validates(tmp_path: Path) -> None:
    import datetime as dt

    from tiler.geometry import Window
    from tiler.io.base import Georef
    from tiler.io.stac import build_item
    from tiler.io.store import OutputStore

    store = OutputStore.create(
        tmp_path / "plain.zarr", shape=(64, 48), num_classes=3, chunks=(32, 32), pixels_hash="0" * 16,
        attrs={"georef": Georef(kind="raster", transform=(1, 0, 0, 0, 1, 0)).to_attrs(),
               "class_names": ["background", "dense forest", "¿?"]},
    )  # fmt: skip
    store.write_block(Window.from_shape((64, 48)), np.zeros((64, 48), np.uint8))
    made = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    item = build_item(store, tmp_path / "plain.stac.json", item_id="plain", files={}, made=made)
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    assert data["geometry"] is None and "bbox" not in data
    assert data["properties"]["proj:code"] is None and "proj:wkt2" not in data["properties"]
    assert data["properties"]["datetime"] == "2026-01-02T03:04:05Z" and data["properties"]["tiler:datetime_from"] == (
        "export"
    )
    names = [(c["name"], c.get("title")) for c in data["assets"]["store"]["classification:classes"]]
    assert names[:3] == [("background", "background"), ("dense-forest", "dense forest"), ("class_2", "¿?")]
    assert schema_errors(data) == ([], [])
