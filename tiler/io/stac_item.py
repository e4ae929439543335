"""A STAC Item as one input image: its raster assets, opened as rasters and stacked as bands in a chosen order.

An item is named as an input path in one way, stated once (:func:`split_item_path`, :func:`item_input_path`):

* ``<item.json>``: a STAC Item file (a local path or a URL), the file's one item;
* ``<href>#<item id>``: the item of that id in the JSON file ``href``, a STAC Item (the id must match) or an
  ItemCollection (a GeoJSON FeatureCollection of items). A local file is written as a ``file://`` URI
  (``file:///data/s2/items.json#S2A_T33UVP_20210601``): a standard URI whose fragment names the item, which the
  config layer, like every URL, leaves to the reader to find. ``tiler archive`` with ``archive.stac`` names every
  item this way, so the output stem is always the item id, whatever its file is called; the same string works
  as ``input.path`` of ``tiler run``.

A URL's fragment starts at its first ``#`` (after any query: a signed URL's), a plain path's at its first ``.json#``
(a ``file://`` URI writes a ``#`` of the path as ``%23``); the id after it is taken verbatim. A plain local path with
``#<item id>`` opens too (:func:`tiler.io.open_reader`), but a job checks that a local ``input.path`` exists before
it starts (:func:`tiler.config.check_files`), so in a config the fragment goes on the ``file://`` URI.

:class:`StacItemReader` opens each asset of ``input.assets`` with :class:`~tiler.io.raster.RasterReader` (GDAL
options, nodata and masks, windowed and remote reads all as for a raster) and reads them as one image: the shape,
georeferencing and nodata of the first asset, the channels of every asset in ``assets`` order, a pixel valid where
every asset says it is (the AND of their masks). Assets on different grids (shape, CRS or transform) are refused,
naming the item, both assets and what differs. A single multi-band asset is read whole (``input.bands`` picks its
bands). Its ``format`` is ``raster``: it reads GDAL rasters, so every rule for rasters (masks, the exports drawn
for rasters) holds for it; ``stac-item`` is the name :func:`tiler.io.open_reader` opens it by.
"""

from __future__ import annotations

import copy
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiler.errors import InputError, ReadError
from tiler.geometry import Window
from tiler.io.base import Reader, one_line
from tiler.paths import is_object_url, is_remote
from tiler.redact import redact

if TYPE_CHECKING:
    import pystac

    from tiler.io.raster import RasterReader

__all__ = [
    "STAC_SUFFIXES", "StacItemReader", "asset_hrefs", "geoparquet_items", "is_geoparquet", "is_item_path",
    "item_input_path", "load_item", "local_href", "read_stac_bytes", "split_item_path", "stac_io",
]


def split_item_path(path: str) -> tuple[str, str | None]:
    """The JSON file and the item id an input path names (``None``: the file's only item).

    >>> split_item_path("/cat/items.json#S2A_20210601"), split_item_path("/cat/a/a.json")
    (('/cat/items.json', 'S2A_20210601'), ('/cat/a/a.json', None))
    >>> split_item_path("/data/a#b.tif"), split_item_path("file:///cat/items.json#id#2")
    (('/data/a#b.tif', None), ('file:///cat/items.json', 'id#2'))
    >>> split_item_path("https://host/items.json?sig=x#S2A")
    ('https://host/items.json?sig=x', 'S2A')
    """
    if is_remote(path):  # a URL's fragment starts at its first '#', after any query (a signed URL's)
        base, sep, fragment = path.partition("#")
        if sep and fragment and _json_file(base):
            return base, fragment
        return path, None
    lower = path.lower()
    for suffix in STAC_SUFFIXES:
        cut = lower.find(suffix + "#")
        if cut >= 0 and len(path) > cut + len(suffix) + 1:
            return path[: cut + len(suffix)], path[cut + len(suffix) + 1 :]
    return path, None


STAC_SUFFIXES = (".json", ".parquet", ".geoparquet")
"""The files that hold STAC items: JSON (an Item, an ItemCollection), and stac-geoparquet (one item per row)."""


def _file_name(href: str) -> str:
    """``href``'s path in lower case (a URL's without its query), for telling file types by suffix."""
    return (urllib.parse.urlsplit(href).path if is_remote(href) else href).rstrip("/").lower()


def _json_file(href: str) -> bool:
    """Whether ``href`` names a file of STAC items, JSON or stac-geoparquet (a URL by its path, without its query)."""
    return _file_name(href).endswith(STAC_SUFFIXES)


def is_geoparquet(href: str) -> bool:
    """Whether ``href`` names a stac-geoparquet file (``.parquet``, ``.geoparquet``).

    >>> is_geoparquet("s3://b/cat/items.parquet"), is_geoparquet("/cat/items.json")
    (True, False)
    """
    return _file_name(href).endswith((".parquet", ".geoparquet"))


def read_stac_bytes(href: str) -> bytes:
    """The bytes of a STAC file: local, in a bucket (``s3://``, ``gs://``, ``az://``), or at an http(s) URL."""
    if is_object_url(href):
        from tiler.io.objects import ObjectPath

        return ObjectPath(href).read_bytes()
    if is_remote(href):
        with urllib.request.urlopen(href, timeout=60) as answer:  # noqa: S310 - a catalog the user named
            return bytes(answer.read())
    with open(local_href(href), "rb") as f:
        return f.read()


def geoparquet_items(href: str, item_id: str | None = None) -> list[dict[str, Any]]:
    """The items of a stac-geoparquet file as STAC Item dicts (only the one of ``item_id`` when given).

    Rows are read with pyarrow (filtered on ``id`` when one is asked for) and turned back into items by
    stac-geoparquet, the format's own library.
    """
    import io

    import pyarrow.parquet as pq
    from stac_geoparquet.arrow import stac_table_to_items

    source = io.BytesIO(read_stac_bytes(href))
    table = pq.read_table(source, filters=[("id", "=", item_id)] if item_id is not None else None)
    return list(stac_table_to_items(table))


def stac_io() -> Any:
    """A pystac ``StacIO`` that also reads from buckets (``s3://``, ``gs://``, ``az://``), for catalogs' links."""
    from pystac.stac_io import DefaultStacIO

    class _BucketStacIO(DefaultStacIO):  # type: ignore[misc]
        def read_text_from_href(self, href: str) -> str:
            if is_object_url(href):
                return read_stac_bytes(href).decode("utf-8")
            return str(super().read_text_from_href(href))

    return _BucketStacIO()


def item_input_path(href: str, item_id: str) -> str:
    """The input path of the item ``item_id`` of the JSON file ``href``: a local file as a ``file://`` URI.

    >>> item_input_path("/cat/a b/items.json", "a"), item_input_path("https://h/x.json", "b")
    ('file:///cat/a%20b/items.json#a', 'https://h/x.json#b')
    """
    uri = href if is_remote(href) else Path(os.path.abspath(href)).as_uri()
    return f"{uri}#{item_id}"


def local_href(href: str) -> str:
    """A ``file://`` URI as the local path it names; any other href unchanged.

    >>> local_href("file:///cat/a%20b/items.json"), local_href("/cat/x.json")
    ('/cat/a b/items.json', '/cat/x.json')
    """
    if href.lower().startswith("file://"):
        return urllib.request.url2pathname(urllib.parse.urlparse(href).path)
    return href


def is_item_path(path: str) -> bool:
    """Whether ``path`` names a STAC item: a ``.json`` file, with or without ``#<item id>``.

    >>> is_item_path("/cat/items.json#x"), is_item_path("https://host/a.JSON?sig=1"), is_item_path("/a.tif")
    (True, True, False)
    """
    return _json_file(split_item_path(path)[0])


def _read_json(href: str) -> Any:
    try:
        return stac_io().read_json(href)
    except (OSError, ValueError) as exc:
        raise ReadError(one_line(f"cannot read the STAC file {href}: {exc}; fix: check the path")) from exc
    except Exception as exc:  # noqa: BLE001 - urllib/HTTP errors and the like: one line naming the file
        raise ReadError(one_line(f"cannot read the STAC file {href}: {type(exc).__name__}: {exc}")) from exc


def load_item(path: str) -> pystac.Item:
    """The STAC Item an input path names, with absolute asset hrefs.

    Raises:
        ReadError: The file cannot be read.
        InputError: It is not a STAC Item or ItemCollection, or holds no item of the id asked for.
    """
    import pystac
    from pystac.utils import make_absolute_href

    href, item_id = split_item_path(path)
    href = local_href(href)
    href = href if is_remote(href) else os.path.abspath(href)
    if is_geoparquet(href):
        try:
            data: Any = {"type": "FeatureCollection", "features": geoparquet_items(href, item_id)}
        except OSError as exc:
            raise ReadError(one_line(f"cannot read the STAC file {href}: {exc}; fix: check the path")) from exc
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors: one line naming the file
            raise InputError(one_line(f"{href} is not a stac-geoparquet file ({type(exc).__name__}: {exc})")) from exc
    else:
        data = _read_json(href)
    kind = data.get("type") if isinstance(data, Mapping) else None
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(data, migrate=True)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        else:
            raise InputError(
                redact(
                    f"{href} is not a STAC Item or ItemCollection (its type is {kind!r}); fix: give an item's JSON "
                    "file, or <itemcollection.json>#<item id>"
                )
            )
    except (KeyError, TypeError, pystac.STACError) as exc:
        raise InputError(one_line(f"{href} is not a valid STAC item file ({exc}); fix: check the file")) from exc
    if item_id is None and len(items) == 1:
        chosen = items[0]
    else:
        found = [i for i in items if i.id == item_id]
        if not found:
            ids = ", ".join(i.id for i in items[:10]) + (" ..." if len(items) > 10 else "")
            what = f"no item of id {item_id!r}" if item_id is not None else f"{len(items)} items"
            raise InputError(redact(f"{href} holds {what} (ids: {ids}); fix: name one item as {href}#<item id>"))
        chosen = found[0]
    for asset in chosen.assets.values():  # relative hrefs are relative to the file that holds the item
        asset.href = make_absolute_href(asset.href, href)
    return chosen


def asset_hrefs(item: pystac.Item, assets: Sequence[str] | None, *, name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(key, absolute href, asset fields)`` of each asset of ``assets`` in that order.

    Raises:
        InputError: ``assets`` is not given, or names a key the item does not have.
    """
    keys = ", ".join(item.assets) or "none"
    if not assets:
        raise InputError(
            redact(
                f"{name}: which assets to stack as bands is not said (the item has {keys}); fix: set input.assets "
                "(archive.assets in an archive) to the asset keys in model channel order, e.g. [B02, B03, B04]"
            )
        )
    missing = [k for k in assets if k not in item.assets]
    if missing:
        raise InputError(
            redact(
                f"{name}: item {item.id!r} has no asset {missing[0]!r} (it has {keys}); fix: list keys it has in "
                "input.assets (archive.assets)"
            )
        )
    out = []
    for key in assets:
        asset = item.assets[key]
        out.append((key, asset.href, dict(asset.extra_fields)))
    return out


class StacItemReader(Reader):
    """Windowed, boundless reads of a STAC item's raster assets stacked as bands (see the module docstring).

    Args:
        path: The item as an input path (``<item.json>`` or ``<file.json>#<item id>``).
        assets: The asset keys to stack, in channel order (a single key: a multi-band asset, read whole).
        bands: 1-based bands of a single asset (refused with several assets: list the assets instead).
        mask: ``"auto"`` (each asset's nodata/alpha/internal mask) or ``"none"``.
        gdal_options: GDAL configuration for every asset read (as :class:`~tiler.io.raster.RasterReader`).

    Raises:
        ReadError: The item or an asset cannot be read.
        InputError: No or unknown assets, or assets on different grids (naming both and what differs).
    """

    format = "raster"

    def __init__(
        self,
        path: str,
        *,
        assets: Sequence[str] | None,
        bands: Sequence[int] | None = None,
        mask: str = "auto",
        gdal_options: Mapping[str, Any] | None = None,
    ) -> None:
        from tiler.io.raster import RasterReader

        self.path = str(path)
        item = load_item(self.path)
        self.item_id = item.id
        # when the source item says it was acquired: what a STAC Item of the output carries (tiler.io.stac)
        self.acquired = item.datetime or item.common_metadata.start_datetime
        self.assets = tuple(assets or ())
        if bands is not None and len(self.assets) > 1:
            raise InputError(
                redact(
                    f"{self.name}: input.bands {list(bands)} picks bands of one raster, but {len(self.assets)} "
                    "assets are stacked; fix: list the assets you want in input.assets and remove input.bands"
                )
            )
        self.hrefs = [href for _, href, _ in asset_hrefs(item, self.assets, name=self.name)]
        self.parts: list[RasterReader] = [
            RasterReader(href, bands=bands, mask=mask, gdal_options=gdal_options) for href in self.hrefs
        ]
        first = self.parts[0]
        for key, part in zip(self.assets[1:], self.parts[1:], strict=True):
            self._check_grid(key, part)
        self.shape = first.shape
        self.channels = sum(p.channels for p in self.parts)
        self.dtype = np.dtype(np.result_type(*(p.dtype for p in self.parts)))
        nodatas = {p.nodata for p in self.parts}
        self.nodata = first.nodata if len(nodatas) == 1 else None
        self.georef = first.georef
        self.gdal_options = dict(first.gdal_options)

    def _check_grid(self, key: str, part: RasterReader) -> None:
        first, name = self.parts[0], self.assets[0]
        differences = []
        if part.shape != first.shape:
            differences.append(f"shape {list(first.shape)} against {list(part.shape)}")
        plain = {"transform": (first.georef.transform, part.georef.transform)}
        for d in first.georef.grid_differences(part.georef)[0]:
            this, other = (list(v or ()) for v in plain[d.name]) if d.name in plain else (d.this, d.other)
            differences.append(f"{d.name} {this} against {other}")
        if differences:
            raise InputError(
                one_line(
                    f"STAC item {self.item_id!r} ({self.path}): assets {name!r} and {key!r} are on different grids "
                    f"({'; '.join(differences)}); fix: stack assets of one grid (resample them first, e.g. "
                    "`gdalwarp -tr`), or list only those in input.assets (archive.assets)"
                )
            )

    def _open(self) -> Any:
        return self.parts

    def _close_handle(self, handle: Any) -> None:
        for part in handle:
            part.close()

    def __getstate__(self) -> dict[str, Any]:
        """A copy reads through copies of the asset readers (one GDAL handle per thread, never shared)."""
        state = super().__getstate__()
        state["parts"] = [copy.copy(p) for p in self.parts]
        return state

    def _read_inside(self, window: Window) -> np.ndarray:
        return np.concatenate([p._guarded_read(window).astype(self.dtype, copy=False) for p in self.parts], axis=0)

    def _format_mask(self, window: Window, pixels: np.ndarray | None) -> np.ndarray | None:
        """The AND of the assets' masks (each from its own channels of ``pixels`` when given)."""
        valid: np.ndarray | None = None
        start = 0
        for part in self.parts:
            own = None if pixels is None else pixels[start : start + part.channels]
            start += part.channels
            mask = part._format_mask(window, own)
            if mask is not None:
                valid = mask if valid is None else valid & mask
        return valid

    def read_sampled(self, step: int) -> np.ndarray:
        """Every asset sampled every ``step`` pixels (from its overviews when it has them), stacked."""
        return np.concatenate([p.read_sampled(step).astype(self.dtype, copy=False) for p in self.parts], axis=0)
