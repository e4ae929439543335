"""The archive's STAC side: the items a STAC catalog lists as inputs, and the Collection of the Items it wrote.

In: ``archive.stac`` names a STAC Catalog, Collection (items found recursively through their links) or
ItemCollection (or a single Item); each item kept by the filters is one input, named ``<item file>#<item id>``
(:func:`tiler.io.stac_item.item_input_path`), in the order the catalog lists them. The filters, all optional, all
of which must hold:

* ``archive.bbox`` ``[minx, miny, maxx, maxy]`` in EPSG:4326: the item's bbox intersects it (touching counts; an
  item without a bbox is left out);
* ``archive.datetime`` ``"start/end"`` (RFC 3339 date-times or dates; ``..`` or empty for an open end; a single
  time for an instant): the item's time (its ``datetime``, or ``start_datetime``/``end_datetime``) meets the
  interval, ends included; a date alone as the end means the end of that day (UTC);
* ``archive.properties`` ``{name: value}``: each property of the item equals the value.

Out: ``<archive.root>/collection.json``, a STAC 1.1 Collection linking (relative hrefs) the ``X.stac.json`` Item of
every input the ledger has done whose Item file is there, with the spatial and temporal extent of those Items;
rewritten atomically at the end of every run from the ledger, so inputs finished by earlier runs stay linked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tiler.errors import ConfigError, TilerError
from tiler.io.objects import AnyPath, ObjectPath, as_path, relpath
from tiler.io.stac_item import geoparquet_items, is_geoparquet, item_input_path, stac_io
from tiler.paths import is_remote
from tiler.redact import redact

COLLECTION_NAME = "collection.json"
"""The Collection's file name in the archive root."""

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Interval = tuple[dt.datetime | None, dt.datetime | None]


def _parse_time(text: str, *, end: bool) -> dt.datetime:
    """A date-time (or a date: its start, or its last microsecond when ``end``) as an aware UTC time."""
    from pystac.utils import str_to_datetime

    text = text.strip()
    parsed = str_to_datetime(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    if end and _DATE_ONLY.match(text):
        parsed = parsed + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    return parsed.astimezone(dt.UTC)


def parse_interval(text: str) -> Interval:
    """``archive.datetime`` as ``(start, end)``, ``None`` for an open end.

    >>> [t and t.isoformat() for t in parse_interval("2021-01-01/..")]
    ['2021-01-01T00:00:00+00:00', None]
    >>> parse_interval("2021-06-01/2021-06-30")[1].isoformat()
    '2021-06-30T23:59:59.999999+00:00'

    Raises:
        ValueError: Not an interval or instant, both ends open, or the start after the end.
    """
    parts = text.split("/")
    if len(parts) > 2:
        raise ValueError(f"{text!r} has more than one '/'")
    if len(parts) == 1:
        start = end = parts[0]
    else:
        start, end = parts
    try:
        lo = None if start.strip() in ("", "..") else _parse_time(start, end=False)
        hi = None if end.strip() in ("", "..") else _parse_time(end, end=True)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{text!r} is not a date-time interval ({exc})") from None
    if lo is None and hi is None:
        raise ValueError(f"{text!r} has both ends open")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{text!r} starts after it ends")
    return lo, hi


def _item_times(props: Mapping[str, Any]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """An item's time as ``(start, end)`` from its properties (``start``/``end_datetime``, else ``datetime``)."""
    start = props.get("start_datetime") or props.get("datetime")
    end = props.get("end_datetime") or props.get("datetime")
    return (
        _parse_time(start, end=False) if start else None,
        _parse_time(end, end=False) if end else None,
    )


def _lonlat_box(box: Any) -> tuple[float, float, float, float] | None:
    """West, south, east, north of a STAC bbox (2D or 3D), or None when it has none."""
    if not isinstance(box, list | tuple) or len(box) not in (4, 6):
        return None
    return (box[0], box[1], box[3], box[4]) if len(box) == 6 else (box[0], box[1], box[2], box[3])


def item_matches(
    item: Any, *, bbox: Sequence[float] | None, interval: Interval | None, properties: Mapping[str, Any] | None
) -> bool:
    """Whether a pystac Item passes the archive's filters (see the module docstring)."""
    if bbox is not None:
        box = _lonlat_box(item.bbox)
        if box is None:
            return False
        west, south, east, north = box
        if west > bbox[2] or east < bbox[0] or south > bbox[3] or north < bbox[1]:
            return False
    if interval is not None:
        start, end = _item_times(item.properties)
        if start is None or end is None:
            return False
        lo, hi = interval
        if (hi is not None and start > hi) or (lo is not None and end < lo):
            return False
    return all(item.properties.get(key) == value for key, value in (properties or {}).items())


def _catalog_items(href: str) -> Iterator[tuple[str, Any]]:
    """``(file holding it, item)`` for every item ``href`` lists (a Catalog or Collection recursively)."""
    import pystac

    if is_geoparquet(href):  # stac-geoparquet: one item per row
        for row in geoparquet_items(href):
            yield href, pystac.Item.from_dict(row, migrate=True)
        return
    reader = stac_io()  # links are followed into buckets too
    data = reader.read_json(href)
    kind = data.get("type") if isinstance(data, Mapping) else None
    if kind == "FeatureCollection":
        for item in pystac.ItemCollection.from_dict(data, preserve_dict=False):
            yield href, item
        return
    obj = pystac.read_dict(data, href=href, stac_io=reader)
    if isinstance(obj, pystac.Item):
        yield href, obj
        return
    if not isinstance(obj, pystac.Catalog):
        raise ConfigError(f"archive.stac: {redact(href)} is a {kind or type(obj).__name__}, not a catalog")
    for item in obj.get_items(recursive=True):
        yield item.get_self_href() or href, item


def stac_inputs(
    href: str,
    *,
    bbox: Sequence[float] | None = None,
    interval: Interval | None = None,
    properties: Mapping[str, Any] | None = None,
) -> list[str]:
    """The input path of every item of the STAC file ``href`` that the filters keep, in catalog order, each once.

    Raises:
        ConfigError: The file cannot be read or is not a STAC Catalog, Collection, ItemCollection or Item.
    """
    href = href if is_remote(href) else os.path.abspath(href)
    found: list[str] = []
    try:
        for file, item in _catalog_items(href):
            if item_matches(item, bbox=bbox, interval=interval, properties=properties):
                found.append(item_input_path(file, item.id))
    except ConfigError:
        raise
    except (TilerError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            redact(
                f"archive.stac: {href} cannot be read as a STAC catalog ({type(exc).__name__}: {exc}); fix: "
                "point it at a STAC Catalog, Collection or ItemCollection JSON file"
            )
        ) from None
    except Exception as exc:  # noqa: BLE001 - pystac/urllib errors: one line naming the file
        raise ConfigError(redact(f"archive.stac: {href} cannot be read ({type(exc).__name__}: {exc})")) from None
    return list(dict.fromkeys(found))


def _linked_items(root: AnyPath, item_files: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(href relative to the root, Item as a dict)`` of each Item file that exists, each once, in a stable order."""
    out: dict[str, dict[str, Any]] = {}
    for file in item_files:
        path = as_path(file)
        if isinstance(path, Path) and not path.is_absolute():
            continue
        below = relpath(path, root)  # an Item elsewhere (another bucket) keeps its URL: not linked
        rel = "./" + below
        if rel in out or rel.startswith("./../") or is_remote(below):
            continue
        try:
            out[rel] = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # a damaged Item is not linked; its input's next run writes it again
    return sorted(out.items())


def build_collection(
    root: AnyPath, item_files: Iterable[str], *, collection_id: str, source: str
) -> dict[str, Any] | None:
    """The Collection (as a dict) linking the Items ``item_files`` from ``root``; None when none exists.

    Its extent is the union of the Items' bboxes and their times (``datetime`` or ``start``/``end_datetime``).
    """
    import pystac

    items = _linked_items(root, item_files)
    if not items:
        return None
    boxes = [b for b in (_lonlat_box(d.get("bbox")) for _, d in items) if b is not None]
    spatial = (
        [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
        if boxes
        else [-180.0, -90.0, 180.0, 90.0]
    )
    times = [t for _, d in items for t in _item_times(d.get("properties") or {}) if t is not None]
    temporal: list[dt.datetime | None] = [min(times), max(times)] if times else [None, None]
    collection = pystac.Collection(
        collection_id,
        f"Class labels tiler wrote for the archive {Path(source).name}: one Item per input it finished.",
        pystac.Extent(pystac.SpatialExtent([spatial]), pystac.TemporalExtent([temporal])),
        title=f"tiler archive {collection_id}",
        license="other",
    )
    for rel, data in items:
        collection.add_link(
            pystac.Link("item", rel, media_type=pystac.MediaType.GEOJSON, title=str(data.get("id") or rel))
        )
    collection.add_link(pystac.Link("root", "./" + COLLECTION_NAME, media_type=pystac.MediaType.JSON))
    return collection.to_dict(include_self_link=False, transform_hrefs=False)


def collection_id(root: AnyPath) -> str:
    """The Collection's id: the archive root's folder name, as a plain name.

    >>> collection_id(Path("/out/nightly s2"))
    'nightly-s2'
    """
    return re.sub(r"[^0-9A-Za-z_.-]+", "-", root.name).strip("-") or "tiler-archive"


def write_collection(root: AnyPath, item_files: Iterable[str], *, source: str) -> AnyPath | None:
    """Write ``<root>/collection.json`` atomically (:func:`build_collection`); None, writing nothing, without Items."""
    from tiler.io.atomic import write_bytes_atomic

    where = as_path(root)
    root = where if isinstance(where, ObjectPath) else Path(os.path.abspath(where))
    payload = build_collection(root, item_files, collection_id=collection_id(root), source=source)
    if payload is None:
        return None
    path = root / COLLECTION_NAME
    write_bytes_atomic(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())
    return path


def check_stac_section(source: str, archive: Any, given: Any, data: Mapping[str, Any]) -> None:
    """``archive.stac`` lists the inputs alone, and its items' assets are said in ``archive.assets``.

    Args:
        source: The archive file, for messages.
        archive: The ``archive`` section (``stac``, ``manifest``, ``assets``).
        given: The job's ``input.path`` (None when not given).
        data: The job sections as read.

    Raises:
        ConfigError: Another list of inputs beside it, no assets, ``input.assets`` set by hand, or no such file.
    """
    if given is not None or archive.manifest is not None:
        other = f"input.path={json.dumps(given)}" if given is not None else f"archive.manifest={archive.manifest}"
        raise ConfigError(
            f"{source}: archive.stac / {other.split('=')[0]}: both list the inputs (archive.stac={archive.stac}, "
            f"{other}); fix: remove {other.split('=')[0]} (each item of archive.stac is one input)"
        )
    if archive.assets is None:
        raise ConfigError(
            f"{source}: archive.assets: is required with archive.stac; fix: list the item asset keys to stack as "
            "bands in model channel order, e.g. assets: [B02, B03, B04, B08]"
        )
    inp = data.get("input")
    if isinstance(inp, Mapping) and inp.get("assets") is not None:
        raise ConfigError(
            f"{source}: input.assets: is set by the archive from archive.assets (got {json.dumps(inp['assets'])}); "
            "fix: remove input.assets and list the assets in archive.assets"
        )
    stac = str(archive.stac)
    if not is_remote(stac) and not os.path.isfile(stac):
        raise ConfigError(
            f"{source}: archive.stac: {archive.stac} is not a file; fix: point it at a STAC Catalog, Collection or "
            "ItemCollection JSON file (catalog.json, collection.json)"
        )
