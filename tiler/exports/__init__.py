"""The export registry: every format a job can write beside its store, by name, one module per format.

>>> from tiler.exports import NAMES, get
>>> NAMES
('cog', 'nifti', 'dicom-seg', 'ome-zarr', 'geojson', 'geoparquet', 'qupath', 'quicklook', 'stac')
>>> sorted(get("nifti").files), sorted(get("nifti").dims)
(['nifti', 'nifti_ctbl', 'nifti_itksnap'], [3])

Importing it loads no file library: each writer imports :mod:`tiler.io` when it runs.
"""

from __future__ import annotations

from tiler.errors import ConfigError
from tiler.exports import cog, dicom_seg, geojson, geoparquet, nifti, ome_zarr, quicklook, qupath, stac
from tiler.exports.base import BeforeMove, DeliverContext, ExportFormat, WriteContext

__all__ = ["NAMES", "REGISTRY", "BeforeMove", "DeliverContext", "ExportFormat", "WriteContext", "get"]

REGISTRY: dict[str, ExportFormat] = {
    f.name: f
    for f in (cog.FORMAT, nifti.FORMAT, dicom_seg.FORMAT, ome_zarr.FORMAT, geojson.FORMAT, geoparquet.FORMAT,
              qupath.FORMAT, quicklook.FORMAT, stac.FORMAT)
}  # fmt: skip
"""Every export format, in the order a job writes them."""

NAMES: tuple[str, ...] = tuple(REGISTRY)
"""The values ``output.exports`` accepts."""


def get(name: str) -> ExportFormat:
    """The format called ``name``.

    Raises:
        ConfigError: No export has that name (naming the ones that exist).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"output.exports: {name!r} is not an export; fix: use one of {', '.join(NAMES)}") from None
