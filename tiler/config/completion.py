"""What a job leaves out, taken from its input and its model: the number of axes and the tiling.

A job that names only ``input.path``, ``model.weights`` and ``output.path`` should run as the model's own tool
would run it. Before a configuration is validated (:func:`tiler.config.loading.parse_config`):

* **The tiling the model records.** Every ``tiling`` key among tile, overlap, rule, blend and sigma_scale that
  the job does not give is taken from the model package when it records one (an nnU-Net results folder's plans,
  a MONAI bundle's sliding-window inferer: :func:`tiler.model.sources.tiling.recorded_tiling`). What the job
  gives is kept, and an nnU-Net tiling that differs is refused when the job is planned, naming the values.
* **The number of axes from the input.** When no key gives a list of per-axis values (tile, overlap, block,
  chunks, the region's pairs) and the model has no ``spec``, the input decides: a NIfTI, zarr or DICOM volume is
  a 3D job (its defaults are the 3D ones), a raster or slide a 2D one. Single values are repeated once per axis.

Nothing here raises: an input or model that cannot be read leaves the mapping as it is, and planning names the
problem with the same message it always gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tiler.config.fields import DEFAULTS_BY_NDIM, broadcast
from tiler.config.sections import READER_FORMATS
from tiler.errors import TilerError
from tiler.paths import is_remote

__all__ = ["TILING_KEYS", "complete", "input_ndim"]

TILING_KEYS = ("tile", "overlap", "rule", "blend", "sigma_scale")
"""The ``tiling`` keys a model package may supply (``block`` and ``pad_mode`` are the job's own)."""
_AXES_KEYS = ("tile", "overlap", "block")
_VOLUME_SUFFIXES = (".nii", ".nii.gz")


def complete(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a job mapping, paths already resolved) with the tiling and axes its input and model supply.

    Returns a new mapping when something was filled in, else ``raw`` itself; never raises.
    """
    sections: dict[str, Any] = {k: raw.get(k) or {} for k in ("input", "model", "output", "tiling")}
    if not all(isinstance(m, Mapping) for m in sections.values()):
        return raw
    inp: Mapping[str, Any] = sections["input"]
    model: Mapping[str, Any] = sections["model"]
    output: Mapping[str, Any] = sections["output"]
    tiling: Mapping[str, Any] = sections["tiling"]
    missing = [k for k in TILING_KEYS if k not in tiling]
    lists = [tiling.get(k) for k in _AXES_KEYS] + [output.get("chunks")]
    spec = model.get("spec")
    spec_dims = spec.get("spatial_dims") if isinstance(spec, Mapping) else None
    given = next((len(v) for v in lists if isinstance(v, list | tuple)), None)
    region = inp.get("region")
    pairs = len(region) if isinstance(region, list | tuple) and len(region) in (2, 3) else None
    ndim = given or (spec_dims if spec_dims in (2, 3) else None) or pairs or input_ndim(inp)
    filled = dict(tiling)
    if missing and isinstance(model.get("weights"), str):
        recorded = _recorded(model, ndim)
        if recorded is not None:
            filled.update({k: v for k, v in recorded.items() if k in missing})
            ndim = ndim or len(recorded["tile"])
    if ndim not in (2, 3) or given is not None:  # the lists given decide the axes (JobConfig broadcasts)
        return raw if filled == tiling else {**raw, "tiling": filled}
    defaults = DEFAULTS_BY_NDIM[ndim]
    for key in _AXES_KEYS:
        filled[key] = broadcast(filled.get(key, defaults[key]), ndim)
    out = {**raw, "tiling": filled}
    if "output" in raw:
        out["output"] = {**output, "chunks": broadcast(output.get("chunks", defaults["chunks"]), ndim)}
    return out


def _recorded(model: Mapping[str, Any], ndim: int | None) -> dict[str, Any] | None:
    from tiler.model.fetch import local_weights
    from tiler.model.sources.tiling import recorded_tiling

    nnunet = model.get("nnunet")
    try:
        return recorded_tiling(
            local_weights(model["weights"]), format=str(model.get("format", "auto")), ndim=ndim,
            nnunet=nnunet if isinstance(nnunet, Mapping) else None,
        )
    except (TilerError, OSError, ValueError, TypeError):
        return None  # planning loads the model and names what is wrong with it


def input_ndim(inp: Mapping[str, Any]) -> int | None:
    """Spatial axes of the job's input: 3 for a volume, 2 for a raster or slide, None when it cannot be told.

    Rasters and slides are told by their format alone; a NIfTI or zarr input's header is opened (it may hold a
    2D image), a DICOM series is a volume.
    """
    path, fmt = inp.get("path"), READER_FORMATS.get(str(inp.get("format", "auto")), "auto")
    if not isinstance(path, str) or not path:
        return None
    if is_remote(path):
        return 3 if fmt == "nifti" or path.lower().endswith(_VOLUME_SUFFIXES) else None
    from tiler.io import detect_format, open_reader

    try:
        if fmt == "auto":
            fmt = detect_format(path)
        if fmt == "dicom":
            return 3
        if fmt not in ("nifti", "zarr"):
            return 2
        reader = open_reader(path, format=fmt, channels_from_4d=bool(inp.get("channels_from_4d", False)))
        try:
            return len(reader.shape)
        finally:
            reader.close()
    except (TilerError, OSError, ValueError):
        return None
