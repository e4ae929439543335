"""STAC Items: one STAC 1.1 Item per output, placing its labels on the Earth and listing the files beside it.

The Item (``X.stac.json`` beside ``X.zarr``) is what a STAC catalog, stackstac, odc-stac or QGIS reads:

* ``id``: the output's stem; ``datetime``: the input's acquisition time when the raster records one
  (``TIFFTAG_DATETIME``, or GDAL's ``IMAGERY`` ``ACQUISITIONDATETIME``; a time without a zone is taken as UTC), else
  the time the Item was made; ``tiler:datetime_from`` says which. ``created`` and ``processing:datetime`` are always
  the time the Item was made.
* ``geometry``/``bbox``: the raster's bounds in EPSG:4326, each edge densified (:data:`EDGE_POINTS`) before it is
  transformed, so a UTM footprint keeps its curved edges, then thinned to the points that matter
  (:data:`SIMPLIFY_DEGREES`); the bbox is the densified outline's. A raster without a CRS gets ``geometry: null``
  and no ``bbox``, as STAC asks of data that is not geolocated.
* projection extension (v2.0.0) in the properties: ``proj:code`` (``EPSG:32633``; null with ``proj:wkt2`` for a
  CRS without an authority code), ``proj:shape`` (rows, cols), ``proj:transform`` (``a b c d e f``) and
  ``proj:bbox`` (left, bottom, right, top in the raster's CRS): the grid of the label COG and of the store.
* assets, hrefs relative to the Item: the zarr store always (``application/vnd+zarr``, role ``data``), and the files
  of the exports the job writes (:data:`ASSETS`: the label COG as ``labels``, the quicklook as ``thumbnail``, the
  polygons, the reports as ``metadata``). Both label assets carry the classification extension (v2.0.0): one class
  per label value with its machine-readable ``name``, the store's class name as ``title`` and its colour as
  ``color_hint``, and the nodata label as a class with ``nodata: true``.
* provenance: the processing extension (v1.2.0; pystac has no class for it, so the fields are written here as its
  schema gives them): ``processing:software`` ``{"tiler": version}`` (the version that made the labels),
  ``processing:lineage`` (one sentence), ``processing:datetime``; and tiler's own ``tiler:`` fields: the model as the
  store records it (weights path redacted), the pixels hash (the labels' identity: it covers the weights' content,
  the tiling and the input) and, when the caller knows it, the config hash.

The Item names its assets by path only, no size or checksum: the other exports are drawn beside it at the same
time, and the store's export records keep their digests. Every file it names is in place before the store is marked
complete (the job writes the exports, then the reports, then ``complete``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
import rasterio
import shapely
import shapely.geometry
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.utils import datetime_to_str
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform_geom
from shapely.geometry.polygon import orient

from tiler.io.atomic import BeforeMove, write_bytes_atomic
from tiler.io.base import Georef, Reader
from tiler.io.export_common import _check_writable
from tiler.io.objects import AnyPath, PathArg, as_path, relpath
from tiler.io.store import OutputStore
from tiler.version import __version__

__all__ = [
    "ASSETS", "AssetKind", "EDGE_POINTS", "PROCESSING_SCHEMA", "SIMPLIFY_DEGREES", "STORE_ASSET", "acquisition_time",
    "build_item", "class_name", "color_hint", "footprint", "parse_datetime", "write_stac_item",
]  # fmt: skip

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
"""The processing extension the Item declares (written by hand: pystac has no class for it)."""

EDGE_POINTS = 257
"""Points per edge of the raster's bounds before they go to EPSG:4326 (a UTM edge is a curve in longitude/latitude):
on a 110 km UTM tile the chords between them stray less than 1e-7 degrees from the true edge."""

SIMPLIFY_DEGREES = 1e-5
"""How far (in degrees, about 1 m) the footprint may stray from the densified outline when its points are thinned."""

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
ZARR_TYPE = "application/vnd+zarr"


@dataclass(frozen=True)
class AssetKind:
    """How one file beside the store appears among the Item's assets.

    Attributes:
        key: The asset's key in the Item.
        media_type: Its ``type``.
        roles: Its ``roles``.
        title: Its ``title``.
        labels: Whether it holds the label map itself (it gets the classification extension).
    """

    key: str
    media_type: str
    roles: tuple[str, ...]
    title: str
    labels: bool = False


ASSETS: dict[str, AssetKind] = {
    "cog": AssetKind("labels", COG_TYPE, ("data",), "Class labels (Cloud-Optimized GeoTIFF)", labels=True),
    "cog_aux": AssetKind("labels-aux", "application/xml", ("metadata",), "Class names and colours of the labels "
                         "(GDAL .aux.xml)"),
    "quicklook": AssetKind("thumbnail", "image/png", ("thumbnail",), "Quicklook: the labels over the input"),
    "geojson": AssetKind("polygons-geojson", "application/geo+json", ("data",), "Polygons per class (GeoJSON, in the "
                         "raster's CRS)"),
    "geoparquet": AssetKind("polygons-geoparquet", "application/vnd.apache.parquet", ("data",), "Polygons per class "
                            "(GeoParquet)"),
    "qupath": AssetKind("qupath", "application/json", ("data",), "QuPath annotations (pixel coordinates)"),
    "ome-zarr": AssetKind("ome-zarr", ZARR_TYPE, ("data",), "The input image with the labels (OME-Zarr)"),
    "report_json": AssetKind("report", "application/json", ("metadata",), "Run report (JSON)"),
    "report_md": AssetKind("report-markdown", "text/markdown", ("metadata",), "Run report (Markdown)"),
    "scores_json": AssetKind("scores", "application/json", ("metadata",), "Scores against the truth (JSON)"),
}  # fmt: skip
"""File role (the name the store records a file under) → its asset; a role not listed gets its role as key only."""

STORE_ASSET = AssetKind("store", ZARR_TYPE, ("data",), "Class labels (and probabilities when kept) as a zarr v3 store",
                        labels=True)  # fmt: skip
"""The output store itself: always an asset (the labels' own home, and their only one when no COG is exported)."""

_NAME = re.compile(r"[^0-9A-Za-z_-]+")


def class_name(name: str, value: int) -> str:
    """A class's machine-readable name for the classification extension (``^[0-9A-Za-z-_]+$``).

    >>> class_name("dense forest", 1), class_name("water", 0), class_name("¿?", 3)
    ('dense-forest', 'water', 'class_3')
    """
    return _NAME.sub("-", name).strip("-") or f"class_{value}"


def color_hint(rgb: Sequence[int]) -> str:
    """A colour as the classification extension's ``color_hint``: six hex digits, no ``#``.

    >>> color_hint((230, 25, 75))
    'E6194B'
    """
    return "".join(f"{int(c):02X}" for c in rgb[:3])


def parse_datetime(text: str) -> dt.datetime | None:
    """A raster's date-time tag as an aware UTC time; None when it is empty, unset or not a date.

    TIFF writes ``YYYY:MM:DD HH:MM:SS`` with no zone: it is taken as UTC.

    >>> parse_datetime("2021:06:30 10:15:00").isoformat(), parse_datetime("0000:00:00 00:00:00")
    ('2021-06-30T10:15:00+00:00', None)
    >>> parse_datetime("2021-06-30T12:15:00+02:00").isoformat()
    '2021-06-30T10:15:00+00:00'
    """
    text = text.strip()
    parsed: dt.datetime | None = None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = dt.datetime.strptime(text, "%Y:%m:%d %H:%M:%S")
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def acquisition_time(reader: Reader | None) -> dt.datetime | None:
    """When the input was acquired, as it says.

    A STAC item's ``datetime`` (or ``start_datetime``), else what a GDAL raster records (``TIFFTAG_DATETIME``, else
    ``ACQUISITIONDATETIME``). None for another kind of input, a raster that records no time, or one that cannot be
    opened now.
    """
    acquired = getattr(reader, "acquired", None)  # a STAC item's own time (tiler.io.stac_item.StacItemReader)
    if isinstance(acquired, dt.datetime):
        return acquired if acquired.tzinfo is not None else acquired.replace(tzinfo=dt.UTC)
    path = getattr(reader, "path", None)
    if reader is None or reader.format != "raster" or not path:
        return None
    from tiler.io.raster import gdal_env

    try:
        with gdal_env(getattr(reader, "gdal_options", {})), rasterio.open(path) as src:
            tags = [src.tags().get("TIFFTAG_DATETIME"), src.tags(ns="IMAGERY").get("ACQUISITIONDATETIME")]
    except (RasterioError, OSError):
        return None
    return next((t for t in (parse_datetime(str(v)) for v in tags if v) if t is not None), None)


def _bounds_ring(transform: Sequence[float], shape: Sequence[int]) -> list[tuple[float, float]]:
    """The raster's outline in its CRS, :data:`EDGE_POINTS` per edge, closed (top-left, down, right, up, left)."""
    a, b, c, d, e, f = transform[:6]
    rows, cols = int(shape[0]), int(shape[1])
    steps = EDGE_POINTS - 1
    pixels = (
        [(0.0, rows * i / steps) for i in range(steps)]
        + [(cols * i / steps, float(rows)) for i in range(steps)]
        + [(float(cols), rows * (steps - i) / steps) for i in range(steps)]
        + [(cols * (steps - i) / steps, 0.0) for i in range(steps + 1)]
    )
    return [(a * x + b * y + c, d * x + e * y + f) for x, y in pixels]


def _lonlat_bbox(geometry: Mapping[str, Any]) -> list[float]:
    """West, south, east, north of a Polygon or MultiPolygon (one cut at the antimeridian spans every longitude)."""
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    points = [p for polygon in polygons for ring in polygon for p in ring]
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    return [min(lons), min(lats), max(lons), max(lats)]


def footprint(georef: Georef, shape: Sequence[int]) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The raster's bounds as a GeoJSON geometry in EPSG:4326 and its bbox; ``(None, None)`` without a CRS.

    The outline is densified in the raster's CRS before it is transformed, so its curved edges stay accurate, then
    the points that lie within :data:`SIMPLIFY_DEGREES` of a straight line are dropped (the bbox is the unsimplified
    outline's). GDAL cuts a footprint that crosses the antimeridian into a MultiPolygon.
    """
    if not georef.crs_wkt or georef.transform is None:
        return None, None
    ring = _bounds_ring(georef.transform, shape)
    polygon = {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
    geometry = transform_geom(CRS.from_wkt(georef.crs_wkt), "EPSG:4326", polygon, antimeridian_cutting=True)
    plain = json.loads(json.dumps(geometry))  # rasterio's geometry object → GeoJSON lists
    shape_ = shapely.geometry.shape(plain).simplify(SIMPLIFY_DEGREES)
    parts = shape_.geoms if isinstance(shape_, shapely.MultiPolygon) else [shape_]
    ccw = [orient(p, sign=1.0) for p in parts]  # RFC 7946: exterior rings counterclockwise, whichever way y runs
    simple = shapely.MultiPolygon(ccw) if len(ccw) > 1 else ccw[0]
    return json.loads(json.dumps(shapely.geometry.mapping(simple))), _lonlat_bbox(plain)


def _projection(georef: Georef, shape: Sequence[int]) -> dict[str, Any]:
    """The projection extension's fields of the label grid (``proj:code`` or ``proj:wkt2``, shape, transform, bbox)."""
    fields: dict[str, Any] = {"shape": [int(n) for n in shape]}
    if georef.transform is not None:
        a, b, c, d, e, f = georef.transform[:6]
        fields["transform"] = [a, b, c, d, e, f]
        xs = [a * x + b * y + c for x in (0, shape[1]) for y in (0, shape[0])]
        ys = [d * x + e * y + f for x in (0, shape[1]) for y in (0, shape[0])]
        fields["bbox"] = [min(xs), min(ys), max(xs), max(ys)]
    fields["code"] = None
    if georef.crs_wkt:
        crs = CRS.from_wkt(georef.crs_wkt)
        authority = crs.to_authority()
        if authority is not None:
            fields["code"] = f"{authority[0]}:{authority[1]}"
        else:
            fields["wkt2"] = crs.to_wkt("WKT2_2019")
    return fields


def _classes(store: OutputStore) -> list[Classification]:
    """One class per label value (name, the store's name as title, colour as hex), then the nodata label."""
    classes = [
        Classification.create(value=k, name=class_name(name, k), title=name, color_hint=color_hint(rgb))
        for k, (name, rgb) in enumerate(zip(store.class_names, store.class_colors, strict=True))
    ]
    nodata = store.nodata_label
    return [*classes, Classification.create(value=nodata, name="nodata", title="no prediction", nodata=True)]


def _asset(kind: AssetKind, href: str, store: OutputStore) -> pystac.Asset:
    extra: dict[str, Any] = {}
    if kind.labels:  # STAC 1.1's data values: the label map's nodata and type
        extra = {"nodata": store.nodata_label, "data_type": str(store.labels.dtype)}
    return pystac.Asset(href, title=kind.title, media_type=kind.media_type or None, roles=list(kind.roles) or None,
                        extra_fields=extra)


def _relative(path: PathArg, folder: PathArg) -> str:
    return relpath(path, folder)


def _lineage(store: OutputStore) -> str:
    """One sentence on how the labels were made, from the config the store records (the keys its pixels hash covers)."""
    config = store.attrs.get("config") or {}
    weights = str((config.get("model") or {}).get("weights") or "a model")
    tiling = config.get("tiling") or {}
    source = str((store.attrs.get("input") or {}).get("path") or (config.get("input") or {}).get("path") or "the input")
    tile = "×".join(str(n) for n in tiling.get("tile") or []) or "?"
    overlap = "×".join(str(n) for n in tiling.get("overlap") or []) or "?"
    return (
        f"Class labels predicted by the segmentation model {Path(weights.rstrip('/')).name} on {tile}-pixel tiles of "
        f"{Path(source.rstrip('/')).name} overlapping by {overlap} pixels, blended ({tiling.get('blend', '?')}) and "
        "stitched into one label map by tiler."
    )


def build_item(
    store: OutputStore,
    item_path: PathArg,
    *,
    item_id: str,
    files: Mapping[str, PathArg],
    made: dt.datetime,
    acquired: dt.datetime | None = None,
    config_hash: str | None = None,
) -> pystac.Item:
    """The STAC Item of a 2D output store (see the module docstring for its layout).

    Args:
        store: The finished store (its labels, class names and colours, georeferencing, recorded config).
        item_path: Where the Item will be written (asset hrefs are relative to its folder).
        item_id: The Item's id (the output's stem).
        files: File role → path of every file the job writes beside the store (:data:`ASSETS` describes each).
        made: When the Item is made (aware).
        acquired: When the input was acquired (aware), if known.
        config_hash: The config hash of the finishing, recorded as ``tiler:config_hash`` when given.
    """
    folder = as_path(item_path).parent
    geometry, bbox = footprint(store.georef, store.shape)
    version = store.attrs.get("tiler_version") or __version__
    config = store.attrs.get("config") or {}
    model = {k: v for k, v in (config.get("model") or {}).items() if k in ("weights", "format", "spec") and v}
    properties: dict[str, Any] = {
        "created": datetime_to_str(made),
        "processing:software": {"tiler": str(version)},
        "processing:lineage": _lineage(store),
        "processing:datetime": datetime_to_str(made),
        "tiler:datetime_from": "input" if acquired is not None else "export",
        "tiler:model": model,
        "tiler:pixels_hash": store.pixels_hash,
        **({"tiler:config_hash": config_hash} if config_hash else {}),
    }
    item = pystac.Item(item_id, geometry, bbox, acquired or made, properties, stac_extensions=[PROCESSING_SCHEMA])
    listed = [(STORE_ASSET, store.path)] + [
        (ASSETS.get(role, AssetKind(role, "", (), role)), path) for role, path in files.items()
    ]  # a role tiler does not describe (yet) is listed by name, with no type or roles
    for kind, path in listed:
        asset = _asset(kind, _relative(path, folder), store)
        item.add_asset(kind.key, asset)
        if kind.labels:
            ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=_classes(store))
    ProjectionExtension.ext(item, add_if_missing=True).apply(**_projection(store.georef, store.shape))
    return item


def write_stac_item(
    store: OutputStore,
    path: PathArg,
    *,
    item_id: str,
    files: Mapping[str, PathArg],
    reader: Reader | None = None,
    config_hash: str | None = None,
    before_move: BeforeMove | None = None,
) -> AnyPath:
    """Write the STAC Item of ``store`` to ``path`` atomically (:func:`build_item`); its time is now.

    ``reader``: the job's input, for its acquisition time (:func:`acquisition_time`). ``before_move(tmp, final)``:
    called once the file is complete, before it takes its name.
    """
    path = as_path(path)
    _check_writable(path)
    made = dt.datetime.now(dt.UTC).replace(microsecond=0)
    item = build_item(store, path, item_id=item_id, files=files, made=made, acquired=acquisition_time(reader),
                      config_hash=config_hash)  # fmt: skip
    text = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode(), before_move=before_move)
    return path
