"""The config sections other than the model's: input, tiling, engine, output and scoring, and their shared base.

Every validator reports through :class:`~tiler.config.problems.Problems` (key, value, problem, fix), which
:mod:`tiler.config.messages` turns into one line each. :mod:`tiler.config.model_section` holds the model's section,
:mod:`tiler.config.schema` the :class:`JobConfig` joining them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from tiler.config.fields import (
    DEFAULTS_BY_NDIM,
    Axes,
    Bool,
    BoundaryWidth,
    Float,
    Int,
    NonNegInt,
    NumThreads,
    PosInt,
    Str,
    broadcast,
)
from tiler.config.problems import Problem, Problems, raise_if
from tiler.exports import NAMES as EXPORT_NAMES
from tiler.metrics.boundary import DEFAULT_WIDTH_PIXELS
from tiler.paths import is_object_url, is_remote

__all__ = [
    "READER_FORMATS",
    "DicomOutputConfig",
    "EngineConfig",
    "GdalConfig",
    "InputConfig",
    "OutputConfig",
    "ScoringConfig",
    "TilingConfig",
]


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors and values cannot be reassigned."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _infer_ndim(candidates: Sequence[Any], spec: Any) -> int:
    """Return the number of axes: the first candidate given as a list, else spec.spatial_dims, else 2.

    ``spec`` is the model's spec as a mapping or a ``ModelSpecConfig`` (read by attribute), or None.
    """
    for value in candidates:
        if isinstance(value, list | tuple):
            return len(value)
    dims = spec.get("spatial_dims") if isinstance(spec, Mapping) else getattr(spec, "spatial_dims", None)
    if dims in (2, 3):
        return int(dims)
    return 2

# ---------------------------------------------------------------------------------------------------
# input


READER_FORMATS = {
    "auto": "auto", "geotiff": "raster", "nifti": "nifti", "zarr": "zarr", "slide": "auto", "dicom": "dicom",
}  # fmt: skip
"""``input.format`` → the reader format of :func:`tiler.io.open_reader` (``auto`` detects it from the path)."""


class GdalConfig(_Section):
    """GDAL settings for reading rasters; ``GDAL_CACHEMAX`` is per process, so N actors use N caches."""

    cachemax_mb: PosInt = 256
    num_threads: NumThreads = "ALL_CPUS"
    options: dict[str, str] = Field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """Return the GDAL configuration options as environment variables (cache size in bytes)."""
        return {
            "GDAL_CACHEMAX": str(self.cachemax_mb * 1024 * 1024),
            "GDAL_NUM_THREADS": str(self.num_threads),
            **self.options,
        }


class InputConfig(_Section):
    """The image to segment and how to read it."""

    path: Str
    format: Literal["auto", "geotiff", "nifti", "zarr", "slide", "dicom"] = "auto"
    # DICOM: the SeriesInstanceUID to read when the folder holds several series
    series: Str | None = None
    bands: tuple[PosInt, ...] | None = None
    # a STAC item (path item.json, or file:///data/items.json#<item id>): asset keys stacked as bands, in channel order
    assets: tuple[Str, ...] | None = None
    channels_from_4d: Bool = False
    level: NonNegInt | None = None
    mpp: Annotated[float, Strict(), Field(gt=0)] | None = None
    # body: the body of a CT found at low resolution (HU above input.threshold, default -500, largest component):
    # tiles wholly in the air around it are skipped and labelled background
    mask: Literal["auto", "none", "nodata", "tissue", "threshold", "body"] = "auto"
    threshold: Float | None = None
    # a region of interest: only this box is tiled, everything outside it gets output.background_label (else
    # nodata_label); [[start, stop], ...] per axis in the input's order, or auto (an nnU-Net model's non-zero crop)
    region: Literal["auto"] | tuple[tuple[NonNegInt, NonNegInt], ...] | None = None
    gdal: GdalConfig = Field(default_factory=GdalConfig)

    @model_validator(mode="after")
    def _check(self) -> InputConfig:
        problems: list[Problem] = []
        if self.level is not None and self.mpp is not None:
            problems.append(
                (
                    "mpp",
                    self.mpp,
                    f"is set together with level={self.level}",
                    "choose the slide resolution one way: remove level or mpp",
                )
            )
        if self.mask == "threshold" and self.threshold is None:
            problems.append(
                (
                    "threshold",
                    None,
                    "is required when mask is 'threshold'",
                    "set input.threshold (e.g. -500 for CT in HU), or choose another mask",
                )
            )
        if self.mask in ("none", "nodata", "tissue") and self.threshold is not None:
            problems.append(
                (
                    "threshold",
                    self.threshold,
                    f"is set but mask is {self.mask!r}, which ignores it",
                    "set mask: threshold (or auto), or remove threshold",
                )
            )
        if self.series is not None and self.format not in ("auto", "dicom"):
            problems.append(
                (
                    "series",
                    self.series,
                    f"picks a DICOM series but format is {self.format!r}",
                    "set format: dicom (or auto) for a DICOM folder, or remove series",
                )
            )
        if self.assets is not None:
            if not self.assets:
                problems.append(
                    (
                        "assets",
                        [],
                        "is empty",
                        "list the STAC item's asset keys to stack as bands, e.g. [B02, B03, B04, B08], or write null",
                    )
                )
            elif len(set(self.assets)) != len(self.assets):
                problems.append(("assets", list(self.assets), "repeats an asset", "list each asset once"))
            if self.format != "auto":
                problems.append(
                    (
                        "assets",
                        list(self.assets),
                        f"picks STAC item assets but format is {self.format!r}",
                        "set format: auto for a STAC item (item.json, or <uri>#<item id>), or remove assets",
                    )
                )
        if isinstance(self.region, tuple):
            if not self.region or any(a >= b for a, b in self.region):
                problems.append(
                    (
                        "region",
                        [list(r) for r in self.region],
                        "is not one [start, stop] pair per axis with start < stop",
                        "give [[start, stop], ...] in pixels per axis of the input (e.g. [[0, 64], [10, 90]]), "
                        "auto, or null for the whole image",
                    )
                )
        if self.bands is not None:
            if not self.bands:
                problems.append(
                    ("bands", [], "is empty", "list the 1-based bands to read, or write null for all")
                )
            elif len(set(self.bands)) != len(self.bands):
                problems.append(("bands", list(self.bands), "repeats a band", "list each band once"))
        raise_if(problems)
        return self

    @property
    def is_remote(self) -> bool:
        """Whether the path is a GDAL virtual path or a URL rather than a local file."""
        return is_remote(self.path)


# ---------------------------------------------------------------------------------------------------
# tiling, engine, output, scoring


class TilingConfig(_Section):
    """The global tile grid, the blend of overlapping tiles, and the block that is the unit of work."""

    tile: Axes = (256, 256)
    overlap: tuple[NonNegInt, ...] = (32, 32)
    blend: Literal["gaussian", "hann", "constant", "crop", "nnunet"] = "gaussian"
    sigma_scale: Annotated[float, Strict(), Field(gt=0)] = 0.125
    pad_mode: Literal["reflect", "constant"] = "reflect"
    rule: Literal["overlap", "nnunet"] = "overlap"
    block: Axes = (2048, 2048)

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        ndim = _infer_ndim([data.get("tile"), data.get("overlap"), data.get("block")], None)
        out = dict(data)
        for key in ("tile", "overlap", "block"):
            out[key] = broadcast(out.get(key, DEFAULTS_BY_NDIM.get(ndim, DEFAULTS_BY_NDIM[2])[key]), ndim)
        return out

    @model_validator(mode="after")
    def _check(self) -> TilingConfig:
        problems: list[Problem] = []
        ndim = len(self.tile)
        if ndim not in (2, 3):
            problems.append(
                (
                    "tile",
                    list(self.tile),
                    f"has {ndim} axes",
                    "give 2 values (row, col) for images or 3 (z, y, x) for volumes",
                )
            )
        for key in ("overlap", "block"):
            value = getattr(self, key)
            if len(value) != ndim:
                problems.append(
                    (
                        key,
                        list(value),
                        f"has {len(value)} axes but tile has {ndim}",
                        f"give {ndim} values, one per axis of tile, or a single int",
                    )
                )
        if len(self.overlap) == ndim and any(o >= t for o, t in zip(self.overlap, self.tile, strict=True)):
            problems.append(
                (
                    "overlap",
                    list(self.overlap),
                    f"is not smaller than tile={list(self.tile)} on every axis",
                    "use 0 <= overlap < tile per axis, e.g. tile/8",
                )
            )
        raise_if(problems)
        return self

    @property
    def ndim(self) -> int:
        """The number of spatial axes: 2 for (row, col), 3 for (z, y, x)."""
        return len(self.tile)


class EngineConfig(_Section):
    """How the work is scheduled on Ray; none of it changes the output pixels except ``skip_empty``."""

    address: Str | None = None
    actors: PosInt | None = None
    gpus_per_actor: Annotated[float, Strict(), Field(ge=0)] = 0.0
    cpus_per_actor: Annotated[float, Strict(), Field(gt=0)] = 1.0
    max_in_flight: PosInt = 2
    max_restarts: Annotated[int, Strict(), Field(ge=-1)] = 3
    max_task_retries: Annotated[int, Strict(), Field(ge=-1)] = 3
    skip_empty: Bool = True
    prefetch: Bool = True
    # the pipeline inside each model worker: threads reading and assembling the next blocks (null: one per
    # CPU of the actor, at most 4), and threads writing and recording the last ones while the model runs
    readers: PosInt | None = None
    writers: PosInt = 1
    # names of the driver's environment variables every Ray worker gets (credentials, endpoints); their values are
    # read when the driver joins Ray, never stored
    env_vars: tuple[Annotated[str, Strict(), Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], ...] = ()

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        problems: list[Problem] = []
        if self.gpus_per_actor > 1 and not float(self.gpus_per_actor).is_integer():
            problems.append(
                (
                    "gpus_per_actor",
                    self.gpus_per_actor,
                    "is a fraction above 1, which Ray refuses",
                    "use a fraction <= 1 (0.5 = two actors per GPU) or a whole number of GPUs",
                )
            )
        raise_if(problems)
        return self


if TYPE_CHECKING:
    ExportName = str
else:
    ExportName = Literal[EXPORT_NAMES]  # the registry's names: pydantic lists them when a value is not one


class DicomOutputConfig(_Section):
    """DICOM outputs: how the ``dicom-seg`` export is encoded, and the PACS it is sent to."""

    # binary: one bit-packed frame per segment and slice (every viewer shows it); labelmap: one frame per slice
    segmentation_type: Literal["binary", "labelmap"] = "binary"
    # where to send the SEG once written: a DICOMweb base URL (STOW-RS, e.g. http://pacs:8042/dicom-web) or a
    # DICOM node host:port (C-STORE); null = keep the file only
    send: Str | None = None
    calling_ae: Annotated[str, Strict(), Field(min_length=1, max_length=16)] = "TILER"
    called_ae: Annotated[str, Strict(), Field(min_length=1, max_length=16)] = "ANY-SCP"
    timeout_s: Annotated[float, Strict(), Field(gt=0)] = 60.0


class OutputConfig(_Section):
    """The zarr v3 output store, its chunk grid and what is written besides labels."""

    path: Str
    chunks: Axes = (512, 512)
    probabilities: Literal["float16", "uint8", "float32"] | None = None
    nodata_label: Annotated[int, Strict(), Field(ge=0, le=65535)] = 255
    # label of pixels outside the input's valid mask: null keeps nodata_label (rasters' nodata collar);
    # 0 suits slides and volumes, where outside the tissue / body mask is the background class
    background_label: Annotated[int, Strict(), Field(ge=0, le=65535)] | None = None
    exports: tuple[ExportName, ...] = ()  # names from the export registry (tiler.exports); the report is always written
    # polygon exports (geojson, geoparquet, qupath): regions smaller than this many pixels are left out
    min_polygon_pixels: NonNegInt = 0
    # class names to turn into polygons; null = every class but one named "background"
    polygon_classes: tuple[Str, ...] | None = None
    dicom: DicomOutputConfig = Field(default_factory=DicomOutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        ndim = _infer_ndim([data.get("chunks")], None)
        out = dict(data)
        out["chunks"] = broadcast(
            out.get("chunks", DEFAULTS_BY_NDIM.get(ndim, DEFAULTS_BY_NDIM[2])["chunks"]), ndim
        )
        return out

    @model_validator(mode="after")
    def _check(self) -> OutputConfig:
        if len(set(self.exports)) != len(self.exports):
            raise Problems([("exports", list(self.exports), "repeats an export", "list each export once")])
        if is_remote(self.path) and not is_object_url(self.path):  # Path("https://h/x") is a local folder "https:"
            raise Problems([(
                "path", self.path, "is a URL or GDAL path tiler cannot write to (http(s) and /vsi paths are read-only)",
                "write to a local or shared path, or to object storage as s3://bucket/key.zarr, gs://... or az://...",
            )])  # fmt: skip
        return self


class ScoringConfig(_Section):
    """Ground truth and the options of the score (frequency-weighted IoU and the rest)."""

    truth: Str | None = None
    ignore_index: Int | None = 255
    # 3 pixels (tiler score's default too): a fraction of a large image's diagonal is so wide that boundary IoU
    # becomes plain IoU
    boundary_width: BoundaryWidth = DEFAULT_WIDTH_PIXELS
    num_classes: Annotated[int, Strict(), Field(ge=2)] | None = None

    def boundary(self) -> Any:
        """Return :attr:`boundary_width` as the scorer's ``BoundaryWidth`` (an int is pixels, a float a fraction)."""
        from tiler.metrics.boundary import BoundaryWidth as Width
        from tiler.metrics.boundary import WidthUnit

        if isinstance(self.boundary_width, int):
            return Width(self.boundary_width, WidthUnit.PIXELS)
        return Width(self.boundary_width, WidthUnit.DIAGONAL)

    def boundary_pixels(self, shape: Sequence[int]) -> int:
        """Return the boundary band width in pixels for an image of ``shape`` ((H, W) or (D, H, W))."""
        return int(self.boundary().pixels(shape))
