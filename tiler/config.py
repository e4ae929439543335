"""Job configuration: the YAML file a job runs from, validated at load into typed, frozen pydantic models.

A job file has the sections ``input``, ``model``, ``tiling``, ``engine``, ``output`` and ``scoring``
(see ``configs/example.yaml`` for every key with a comment). ``input.path``, ``model.weights`` and
``output.path`` are required; everything else has a default. Unknown keys are errors.

Rules decided here, stated once:

* **Dimensionality and broadcasting.** ``tiling.tile``, ``tiling.overlap``, ``tiling.block`` and
  ``output.chunks`` take one value per spatial axis, (row, col) or (z, y, x); a single int is
  broadcast to every axis. The number of axes is the length of the first of those four given as a
  list; if all are scalars or absent, ``model.spec.spatial_dims``; if there is no spec, 2. Keys left
  out take the defaults for that dimensionality: 2D tile 256, overlap 32, block 2048, chunks 512;
  3D tile 128, overlap 32, block 256, chunks 64 (a 3D block accumulator is block³ float32 per class,
  so 3D blocks are kept small).
* **Relative paths.** ``input.path``, ``model.weights``, ``output.path`` and ``scoring.truth`` written
  in a config *file* are resolved against that file's directory, unless absolute, a GDAL virtual path
  (``/vsicurl/...``, ``/vsis3/...``) or a URL (``s3://...``, ``https://...``). A path given as a
  ``--set`` override is resolved against the current working directory, as a shell user expects.
  :func:`parse_config` on a mapping resolves only when given ``base_dir``.
* **Units.** Tile, overlap, block and chunks are whole pixels (never fractions).
  ``scoring.boundary_width`` below 1 is a fraction of the image diagonal; 1 or more is whole pixels.
* **Identity.** :func:`config_hash` covers what decides the output pixels and the block layout, not
  how the work is scheduled: a job may resume with other actor counts, retries or addresses.

Every failure raises :class:`tiler.errors.ConfigError` with one line per problem naming the file,
the dotted key, the bad value and the fix.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    ValidationError,
    model_validator,
)

from tiler.errors import ConfigError
from tiler.labels import nodata_label_problem
from tiler.paths import is_remote

__all__ = [
    "EngineConfig",
    "GdalConfig",
    "InputConfig",
    "JobConfig",
    "ModelConfig",
    "ModelSpecConfig",
    "NnunetConfig",
    "NormalizationConfig",
    "OnnxConfig",
    "OutputConfig",
    "ScoringConfig",
    "TilingConfig",
    "apply_overrides",
    "check_files",
    "config_hash",
    "dump_config",
    "load_config",
    "missing_files",
    "parse_config",
]

# ---------------------------------------------------------------------------------------------------
# Problems raised by validators carry their key, value and fix so the loader can print them one per line.


class _Problems(ValueError):
    """One or more problems found by a validator: ``(key, value, problem, fix)`` with key relative to it."""

    def __init__(self, problems: list[tuple[str, Any, str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {p}" for k, _, p, _ in problems))
        self.problems = problems


def _raise_if(problems: list[tuple[str, Any, str, str]]) -> None:
    if problems:
        raise _Problems(problems)


_MISSING = object()


def _show(value: Any) -> str:
    """Format a bad value the way the user wrote it (lists, not tuples), cut to a readable length."""
    if value is _MISSING:
        return ""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    from tiler.redact import redact

    text = redact(json.dumps(value, default=str))  # a signed URL or credential never reaches a message
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------------
# Field types: strict scalars so that `true` is not the integer 1 and "256" is not a number.

Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict(), Field(min_length=1)]
Axes = tuple[PosInt, ...]

_DEFAULTS_BY_NDIM: dict[int, dict[str, int]] = {
    2: {"tile": 256, "overlap": 32, "block": 2048, "chunks": 512},
    3: {"tile": 128, "overlap": 32, "block": 256, "chunks": 64},
}


def _is_scalar_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num_threads(value: Any) -> int | str:
    if value == "ALL_CPUS" or (_is_scalar_int(value) and value >= 1):
        return value  # type: ignore[no-any-return]
    raise _Problems([("", value, "must be a positive integer or ALL_CPUS", "write e.g. 4, or ALL_CPUS")])


def _boundary_width(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Problems(
            [("", value, "must be a number", "write e.g. 0.02 (fraction of diagonal) or 3 (pixels)")]
        )
    if value <= 0:
        raise _Problems(
            [("", value, "must be > 0", "write e.g. 0.02 (fraction of the diagonal) or 3 (pixels)")]
        )
    if value >= 1:
        if not float(value).is_integer():
            raise _Problems(
                [
                    (
                        "",
                        value,
                        "is >= 1 so it counts pixels, but is not a whole number",
                        f"write {int(value)} pixels, or a fraction below 1",
                    )
                ]
            )
        return int(value)
    return float(value)


NumThreads = Annotated[int | str, PlainValidator(_num_threads), PlainSerializer(lambda v: v)]
BoundaryWidth = Annotated[float | int, PlainValidator(_boundary_width), PlainSerializer(lambda v: v)]


class _Dumper(yaml.SafeDumper):
    """A safe dumper writing sections as blocks and lists of plain values in flow style ([256, 256])."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flat = all(not isinstance(v, list | dict) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors and values cannot be reassigned."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------------
# input


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
    format: Literal["auto", "geotiff", "nifti", "zarr", "slide"] = "auto"
    bands: tuple[PosInt, ...] | None = None
    channels_from_4d: Bool = False
    level: NonNegInt | None = None
    mpp: Annotated[float, Strict(), Field(gt=0)] | None = None
    mask: Literal["auto", "none", "nodata", "tissue", "threshold"] = "auto"
    threshold: Float | None = None
    gdal: GdalConfig = Field(default_factory=GdalConfig)

    @model_validator(mode="after")
    def _check(self) -> InputConfig:
        problems: list[tuple[str, Any, str, str]] = []
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
        if self.bands is not None:
            if not self.bands:
                problems.append(
                    ("bands", [], "is empty", "list the 1-based bands to read, or write null for all")
                )
            elif len(set(self.bands)) != len(self.bands):
                problems.append(("bands", list(self.bands), "repeats a band", "list each band once"))
        _raise_if(problems)
        return self

    @property
    def is_remote(self) -> bool:
        """Whether the path is a GDAL virtual path or a URL rather than a local file."""
        return is_remote(self.path)


# ---------------------------------------------------------------------------------------------------
# model


# The monai.networks.nets classes tiler builds (tiler.model.spec.ARCHITECTURES; a test keeps the two equal).
MonaiArchitecture = Literal[
    "AHNet", "AttentionUnet", "BasicUNet", "BasicUNetPlusPlus", "DynUNet", "FlexibleUNet", "HighResNet", "MedNeXt",
    "SegResNet", "SegResNetDS", "SwinUNETR", "UNETR", "UNet", "VNet",
]  # fmt: skip
Channel = Annotated[int, Strict(), Field(ge=0, le=255)]


class ModelSpecConfig(_Section):
    """The network to build when the weights file does not carry its own spec."""

    architecture: MonaiArchitecture
    spatial_dims: Literal[2, 3]
    in_channels: PosInt
    out_channels: PosInt
    args: dict[str, Any] = Field(default_factory=dict)


class NormalizationConfig(_Section):
    """Per-channel intensity normalisation applied to each tile before the model sees it.

    Every value is a fixed constant in pixel units (measured on the training data), so a pixel's input
    never depends on the tile or the image it is read through. ``percentile`` takes the clip values
    themselves as ``clip_low``/``clip_high``; the config never takes percentiles (0-100), which only
    :meth:`tiler.model.Normalization.fit` measures. :meth:`build` makes the model's
    :class:`~tiler.model.Normalization`: the one place the config's keys become the model's.
    """

    kind: Literal["none", "meanstd", "percentile", "window"] = "none"
    mean: tuple[Float, ...] | None = None
    std: tuple[Annotated[float, Strict(), Field(gt=0)], ...] | None = None
    clip_low: tuple[Float, ...] | None = None
    clip_high: tuple[Float, ...] | None = None
    window: tuple[Float, Float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        given = [key for key in ("low", "high", "percentiles") if key in data]
        if given:
            raise _Problems(
                [
                    (
                        key,
                        data[key],
                        "is not a key: the config takes no percentiles (a percentile of what would depend on the "
                        "image), and low/high were read as pixel clip values",
                        "give the per-band clip values in pixel units measured on the training data as clip_low "
                        "and clip_high (Normalization.fit(images, 'percentile', percentiles=(2, 98)) measures "
                        "them), or leave model.normalization out to use the checkpoint's",
                    )
                    for key in given
                ]
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> NormalizationConfig:
        problems: list[tuple[str, Any, str, str]] = []
        needs = {
            "none": (), "meanstd": ("mean", "std"), "percentile": ("clip_low", "clip_high"), "window": ("window",),
        }  # fmt: skip
        for key in ("mean", "std", "clip_low", "clip_high", "window"):
            value = getattr(self, key)
            if key in needs[self.kind] and value is None:
                problems.append(
                    (
                        key,
                        None,
                        f"is required when kind is {self.kind!r}",
                        f"set normalization.{key}, or choose another kind",
                    )
                )
            elif key not in needs[self.kind] and value is not None:
                problems.append(
                    (
                        key,
                        value,
                        f"does not apply to kind {self.kind!r}",
                        f"remove it, or set kind to the one that uses {key}",
                    )
                )
        for first, second in (("mean", "std"), ("clip_low", "clip_high")):
            a, b = getattr(self, first), getattr(self, second)
            if a is not None and b is not None and len(a) != len(b):
                problems.append(
                    (
                        second,
                        list(b),
                        f"has {len(b)} values but {first} has {len(a)}",
                        f"give one {first} and one {second} per input channel",
                    )
                )
        if self.clip_low is not None and self.clip_high is not None and len(self.clip_low) == len(self.clip_high):
            if any(h <= lo for lo, h in zip(self.clip_low, self.clip_high, strict=True)):
                problems.append(
                    (
                        "clip_high",
                        list(self.clip_high),
                        f"is not above clip_low={list(self.clip_low)} for every band",
                        "give pixel values with clip_low < clip_high per band, e.g. clip_low: [120], "
                        "clip_high: [3400]",
                    )
                )
        if self.window is not None and self.window[0] >= self.window[1]:
            problems.append(
                ("window", list(self.window), "is not [low, high] with low < high", "write e.g. [-1000, 400]")
            )
        _raise_if(problems)
        return self

    def build(self) -> Any:
        """Return the model's :class:`tiler.model.Normalization` for these settings (clip values as ``low/high``)."""
        from tiler.model.normalize import Normalization

        return Normalization(
            self.kind, mean=self.mean or (), std=self.std or (), low=self.clip_low or (),
            high=self.clip_high or (), window=self.window,
        )


class OnnxConfig(_Section):
    """What an ONNX graph does not say about its tensors; unset keys come from the file's metadata, else defaults."""

    input_layout: Literal["channels_first", "channels_last"] | None = None
    class_axis: Int | None = None
    output: Literal["logits", "probabilities"] | None = None
    input_name: Str | None = None
    output_name: Str | None = None


class NnunetConfig(_Section):
    """Which part of an nnU-Net results folder to run, and how its folds and mirrors are averaged."""

    configuration: Str | None = None
    folds: tuple[NonNegInt | Literal["all"], ...] | None = None
    checkpoint: Str = "checkpoint_final.pth"
    mirroring: Bool = True
    average: Literal["logits", "probabilities"] = "logits"

    @model_validator(mode="after")
    def _check(self) -> NnunetConfig:
        if self.folds is not None and (not self.folds or len(set(self.folds)) != len(self.folds)):
            raise _Problems(
                [("folds", list(self.folds), "is empty or repeats a fold", "list each fold once, or remove the key")]
            )
        return self


class ModelConfig(_Section):
    """The weights, how to run them, and test-time augmentation."""

    weights: Str
    format: Literal["auto", "checkpoint", "state_dict", "monai", "torchscript", "smp", "onnx", "nnunet"] = "auto"
    spec: ModelSpecConfig | None = None
    normalization: NormalizationConfig | None = None
    class_names: tuple[Str, ...] | None = None
    class_colors: tuple[tuple[Channel, Channel, Channel], ...] | None = None
    onnx: OnnxConfig | None = None
    nnunet: NnunetConfig | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    batch_size: PosInt = 8
    tta_flips: tuple[tuple[NonNegInt, ...], ...] = ()
    threads: PosInt | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        problems: list[tuple[str, Any, str, str]] = []
        if self.format in ("state_dict", "torchscript") and self.spec is None:
            problems.append(
                (
                    "spec",
                    None,
                    f"is required when format is {self.format!r}",
                    "add model.spec {architecture, spatial_dims, in_channels, out_channels}",
                )
            )
        if self.onnx is not None and self.format not in ("auto", "onnx"):
            problems.append(
                (
                    "onnx",
                    self.onnx.model_dump(mode="json", exclude_none=True),
                    f"does not apply to format {self.format!r}",
                    "remove it, or set format: onnx",
                )
            )
        if self.nnunet is not None and self.format not in ("auto", "nnunet"):
            problems.append(
                (
                    "nnunet",
                    self.nnunet.model_dump(mode="json", exclude_defaults=True),
                    f"does not apply to format {self.format!r}",
                    "remove it, or set format: nnunet",
                )
            )
        if self.format == "nnunet" and self.tta_flips:
            problems.append(
                (
                    "tta_flips",
                    [list(f) for f in self.tta_flips],
                    "does not apply to nnU-Net models: they mirror over their checkpoint's allowed axes",
                    "remove it (model.nnunet.mirroring: false turns mirroring off)",
                )
            )
        if self.spec is not None and self.format in ("smp", "onnx", "nnunet"):
            problems.append(
                (
                    "spec",
                    self.spec.architecture,
                    f"does not apply to format {self.format!r}",
                    "remove it: the model file carries its own network",
                )
            )
        if (
            self.class_colors is not None
            and self.class_names is not None
            and len(self.class_colors) != len(self.class_names)
        ):
            problems.append(
                (
                    "class_colors",
                    [list(c) for c in self.class_colors],
                    f"has {len(self.class_colors)} colours for {len(self.class_names)} class_names",
                    "give one [r, g, b] per class",
                )
            )
        spec, norm = self.spec, self.normalization
        if spec is not None and self.class_names is not None and len(self.class_names) != spec.out_channels:
            problems.append(
                (
                    "class_names",
                    list(self.class_names),
                    f"has {len(self.class_names)} names but spec.out_channels is {spec.out_channels}",
                    "give one name per output class",
                )
            )
        if (
            spec is not None
            and norm is not None
            and norm.mean is not None
            and len(norm.mean) not in (1, spec.in_channels)
        ):
            problems.append(
                (
                    "normalization.mean",
                    list(norm.mean),
                    f"has {len(norm.mean)} values but spec.in_channels is {spec.in_channels}",
                    "give one value per input channel (or a single value for all)",
                )
            )
        for i, flip in enumerate(self.tta_flips):
            if not flip or len(set(flip)) != len(flip):
                problems.append(
                    (
                        f"tta_flips[{i}]",
                        list(flip),
                        "is empty or repeats an axis",
                        "list each spatial axis to flip once, e.g. [[0], [1], [0, 1]]",
                    )
                )
        _raise_if(problems)
        return self


# ---------------------------------------------------------------------------------------------------
# tiling, engine, output, scoring


def _broadcast(value: Any, ndim: int) -> Any:
    return (value,) * ndim if _is_scalar_int(value) else value


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
            out[key] = _broadcast(out.get(key, _DEFAULTS_BY_NDIM.get(ndim, _DEFAULTS_BY_NDIM[2])[key]), ndim)
        return out

    @model_validator(mode="after")
    def _check(self) -> TilingConfig:
        problems: list[tuple[str, Any, str, str]] = []
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
        _raise_if(problems)
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

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        problems: list[tuple[str, Any, str, str]] = []
        if self.gpus_per_actor > 1 and not float(self.gpus_per_actor).is_integer():
            problems.append(
                (
                    "gpus_per_actor",
                    self.gpus_per_actor,
                    "is a fraction above 1, which Ray refuses",
                    "use a fraction <= 1 (0.5 = two actors per GPU) or a whole number of GPUs",
                )
            )
        _raise_if(problems)
        return self


class OutputConfig(_Section):
    """The zarr v3 output store, its chunk grid and what is written besides labels."""

    path: Str
    chunks: Axes = (512, 512)
    probabilities: Literal["float16", "uint8", "float32"] | None = None
    nodata_label: Annotated[int, Strict(), Field(ge=0, le=65535)] = 255
    # label of pixels outside the input's valid mask: null keeps nodata_label (rasters' nodata collar);
    # 0 suits slides and volumes, where outside the tissue / body mask is the background class
    background_label: Annotated[int, Strict(), Field(ge=0, le=65535)] | None = None
    exports: tuple[
        Literal["cog", "nifti", "ome-zarr", "geojson", "geoparquet", "qupath", "quicklook"], ...
    ] = ()  # the report is always written
    # polygon exports (geojson, geoparquet, qupath): regions smaller than this many pixels are left out
    min_polygon_pixels: NonNegInt = 0
    # class names to turn into polygons; null = every class but one named "background"
    polygon_classes: tuple[Str, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        ndim = _infer_ndim([data.get("chunks")], None)
        out = dict(data)
        out["chunks"] = _broadcast(
            out.get("chunks", _DEFAULTS_BY_NDIM.get(ndim, _DEFAULTS_BY_NDIM[2])["chunks"]), ndim
        )
        return out

    @model_validator(mode="after")
    def _check(self) -> OutputConfig:
        if len(set(self.exports)) != len(self.exports):
            raise _Problems([("exports", list(self.exports), "repeats an export", "list each export once")])
        return self


class ScoringConfig(_Section):
    """Ground truth and the options of the score (frequency-weighted IoU and the rest)."""

    truth: Str | None = None
    ignore_index: Int | None = 255
    # 3 pixels: the band where blurred edges and tile seams show; a fraction of a large image's diagonal is
    # so wide that boundary IoU becomes plain IoU
    boundary_width: BoundaryWidth = 3
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


# ---------------------------------------------------------------------------------------------------
# the job


def _infer_ndim(candidates: Sequence[Any], spec: Any) -> int:
    """Return the number of axes: the first candidate given as a list, else spec.spatial_dims, else 2."""
    for value in candidates:
        if isinstance(value, list | tuple):
            return len(value)
    if isinstance(spec, Mapping) and spec.get("spatial_dims") in (2, 3):
        return int(spec["spatial_dims"])
    if isinstance(spec, ModelSpecConfig):
        return spec.spatial_dims
    return 2


class JobConfig(_Section):
    """One job: what to read, which model, how to tile, where to run, where to write and how to score."""

    input: InputConfig
    model: ModelConfig
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    output: OutputConfig
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @model_validator(mode="before")
    @classmethod
    def _broadcast_axes(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        tiling = out.get("tiling") if out.get("tiling") is not None else {}
        output = out.get("output") if out.get("output") is not None else {}
        model = out.get("model")
        spec = model.get("spec") if isinstance(model, Mapping) else None
        if not isinstance(tiling, Mapping) or not isinstance(output, Mapping):
            return out
        ndim = _infer_ndim(
            [tiling.get("tile"), tiling.get("overlap"), tiling.get("block"), output.get("chunks")], spec
        )
        defaults = _DEFAULTS_BY_NDIM.get(ndim, _DEFAULTS_BY_NDIM[2])
        tiling = {
            **tiling,
            **{k: _broadcast(tiling.get(k, defaults[k]), ndim) for k in ("tile", "overlap", "block")},
        }
        out["tiling"] = tiling
        if "output" in out:
            out["output"] = {**output, "chunks": _broadcast(output.get("chunks", defaults["chunks"]), ndim)}
        return out

    @model_validator(mode="after")
    def _check(self) -> JobConfig:
        problems: list[tuple[str, Any, str, str]] = []
        tiling, chunks, spec = self.tiling, self.output.chunks, self.model.spec
        ndim = tiling.ndim
        if spec is not None and spec.spatial_dims != ndim:
            problems.append(
                (
                    "tiling.tile",
                    list(tiling.tile),
                    f"has {ndim} axes but model.spec.spatial_dims is {spec.spatial_dims}",
                    f"give {spec.spatial_dims} tile values for a {spec.spatial_dims}D model",
                )
            )
        if len(chunks) != ndim:
            problems.append(
                (
                    "output.chunks",
                    list(chunks),
                    f"has {len(chunks)} axes but tiling.tile has {ndim}",
                    f"give {ndim} values, one per axis of tile, or a single int",
                )
            )
        elif any(b % c for b, c in zip(tiling.block, chunks, strict=True)):
            problems.append(
                (
                    "tiling.block",
                    list(tiling.block),
                    f"is not a multiple of output.chunks={list(chunks)} on every axis",
                    "make each block value a whole multiple of the chunk (one writer per chunk)",
                )
            )
        for i, flip in enumerate(self.model.tta_flips):
            if any(axis >= ndim for axis in flip):
                problems.append(
                    (
                        f"model.tta_flips[{i}]",
                        list(flip),
                        f"names an axis >= {ndim}",
                        f"use spatial axes 0..{ndim - 1} (0 = first spatial axis)",
                    )
                )
        label_problem = nodata_label_problem(spec.out_channels, self.output.nodata_label) if spec else None
        if label_problem is not None:
            fix = "use a label no class can take, e.g. 255"
            problems.append(("output.nodata_label", self.output.nodata_label, label_problem, fix))
        for name, dims, fix in (("cog", 2, "a COG holds a 2D raster: use nifti or ome-zarr for a volume"),
                                ("nifti", 3, "a NIfTI export is for volumes: use cog or ome-zarr for a 2D image"),
                                ("geojson", 2, "polygons are drawn on 2D label maps: use nifti or ome-zarr"),
                                ("geoparquet", 2, "polygons are drawn on 2D label maps: use nifti or ome-zarr"),
                                ("qupath", 2, "QuPath annotations are 2D: use nifti or ome-zarr for a volume")):
            if name in self.output.exports and ndim != dims:
                problems.append(
                    ("output.exports", list(self.output.exports), f"asks for {name} on a {ndim}D job", fix)
                )
        if spec is not None and self.input.bands is not None and len(self.input.bands) != spec.in_channels:
            problems.append(
                (
                    "input.bands",
                    list(self.input.bands),
                    f"reads {len(self.input.bands)} bands but model.spec.in_channels is {spec.in_channels}",
                    "list one band per input channel of the model",
                )
            )
        _raise_if(problems)
        return self

    @property
    def ndim(self) -> int:
        """The number of spatial axes: 2 for (row, col), 3 for (z, y, x)."""
        return self.tiling.ndim

    def to_yaml(self) -> str:
        """Return this configuration as YAML that :func:`parse_config` reads back to an equal config."""
        return yaml.dump(self.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False)


# ---------------------------------------------------------------------------------------------------
# errors: pydantic's ValidationError → one line per problem


_TYPE_HINTS: dict[str, tuple[str, str]] = {
    "int_type": ("must be a whole number", "write an integer, e.g. 256"),
    "int_parsing": ("must be a whole number", "write an integer, e.g. 256"),
    "int_from_float": ("must be a whole number", "write an integer, e.g. 256"),
    "float_type": ("must be a number", "write a number, e.g. 0.5"),
    "float_parsing": ("must be a number", "write a number, e.g. 0.5"),
    "bool_type": ("must be true or false", "write true or false"),
    "bool_parsing": ("must be true or false", "write true or false"),
    "string_type": ("must be a string", "write a string (quote it if YAML reads it as something else)"),
    "string_too_short": ("must not be empty", "write a non-empty string"),
    "tuple_type": ("must be a list", "write a YAML list, e.g. [256, 256]"),
    "list_type": ("must be a list", "write a YAML list, e.g. [256, 256]"),
    "dict_type": ("must be a mapping", "write a section of `key: value` lines"),
    "model_type": ("must be a section", "write a section of `key: value` lines"),
    "model_attributes_type": ("must be a section", "write a section of `key: value` lines"),
}


def _dotted(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _section_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """Return the config model class found by following the field names of ``loc`` from JobConfig."""
    model: type[BaseModel] | None = JobConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _model_of(model.model_fields[part].annotation)
    return model


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """Return the BaseModel class inside an annotation in ``X`` or ``X | None``; None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _is_free_mapping(annotation: Any) -> bool:
    """Whether a field holds free-form keys (``dict[...]``), which overrides may extend."""
    return get_origin(annotation) is dict or annotation is dict


def _lines(exc: ValidationError, source: str) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), err["type"]
        error = err.get("ctx", {}).get("error")
        if isinstance(error, _Problems):
            for key, value, problem, fix in error.problems:
                dotted = _dotted(loc)
                full = key if not loc else (f"{dotted}.{key}" if key else dotted)
                got = f" (got {_show(value)})" if value is not None else ""
                lines.append(f"{source}: {full}: {problem}{got}; fix: {fix}")
            continue
        key, value = _dotted(loc), err.get("input", _MISSING)
        if kind == "missing":
            parent = _dotted(loc[:-1])
            lines.append(
                f"{source}: {key}: required key is missing; fix: add `{loc[-1]}: <value>` under {parent}"
            )
            continue
        if kind == "extra_forbidden":
            section = _section_at(loc[:-1])
            valid = sorted(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(
                f"{source}: {key}: unknown key{hint} (got {_show(value)}); "
                f"fix: remove it, or use one of: {', '.join(valid)}"
            )
            continue
        ctx = err.get("ctx", {})
        if kind == "literal_error":
            problem, fix = f"must be one of {ctx.get('expected')}", f"use one of {ctx.get('expected')}"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
                kind
            ]
            bound = next(iter(ctx.values()))
            problem, fix = f"must be {op} {bound}", f"use a value {op} {bound}"
        else:
            problem, fix = _TYPE_HINTS.get(
                kind, (err["msg"], "see configs/example.yaml for the allowed values")
            )
        lines.append(f"{source}: {key}: {problem} (got {_show(value)}); fix: {fix}")
    return lines


# ---------------------------------------------------------------------------------------------------
# paths


_PATH_KEYS = (("input", "path"), ("model", "weights"), ("output", "path"), ("scoring", "truth"))


def _resolve(path: Any, base: Path) -> Any:
    """``path`` made absolute against ``base`` unless absolute, a GDAL virtual path or a URL."""
    if not isinstance(path, str) or not path or is_remote(path):
        return path
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return expanded
    return os.path.normpath(os.path.join(base, expanded))


_READ_KEYS = (("input", "path"), ("model", "weights"), ("scoring", "truth"))
"""The path keys a job reads (they must exist before it starts); output.path is written."""


def missing_files(cfg: JobConfig) -> list[tuple[str, str]]:
    """``(dotted key, path)`` of every local file the job reads that does not exist (remote paths not checked)."""
    out: list[tuple[str, str]] = []
    for section, key in _READ_KEYS:
        path = getattr(getattr(cfg, section), key)
        if isinstance(path, str) and not is_remote(path) and not os.path.exists(path):
            out.append((f"{section}.{key}", path))
    return out


def check_files(cfg: JobConfig, *, source: str | None = None) -> None:
    """Raise one ConfigError listing every missing file the job reads, with its key and the fix.

    Args:
        cfg: The job.
        source: The config file, named in the message when given.

    Raises:
        ConfigError: At least one of input.path, model.weights, scoring.truth is a local path that does not exist.
    """
    missing = missing_files(cfg)
    if not missing:
        return
    where = f" named in {source}" if source else " the job reads"
    lines = [f"{len(missing)} file{'s' if len(missing) != 1 else ''}{where} do{'es' if len(missing) == 1 else ''} "
             "not exist:"]
    lines += [f"  {key}: {path}" for key, path in missing]
    sets = " ".join(f"--set {key}=..." for key, _ in missing)
    unscored = " (or --set scoring.truth=null to run without a score)" if "scoring.truth" in dict(missing) else ""
    lines.append(
        f"fix: point each key at your file, e.g. `tiler run {source or 'CONFIG'} {sets}`{unscored}; or run "
        "`make demo` first: it writes a scene, its truth and the demo models under demo-output/, which "
        "configs/demo-*.yaml and configs/archive.yaml read"
    )
    from tiler.redact import redact

    raise ConfigError(redact("\n".join(lines)))


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for section, key in _PATH_KEYS:
        part = data.get(section)
        if isinstance(part, dict) and key in part:
            part[key] = _resolve(part[key], base)


# ---------------------------------------------------------------------------------------------------
# loading


MAX_YAML_NODES = 100_000
"""Most nodes a config document may expand to, every alias counted at its full size (a job file has ~100)."""


class _TooLarge(yaml.YAMLError):
    """A document whose aliases expand past :data:`MAX_YAML_NODES` nodes, or refer to themselves."""


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of ``root`` with every alias expanded, without expanding anything (memoised per node).

    Raises:
        _TooLarge: Past :data:`MAX_YAML_NODES`, or on an alias inside its own anchor (a recursive structure).
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise _TooLarge(f"it expands to more than {MAX_YAML_NODES} values through its aliases (*name)")
            continue
        if key in open_nodes:
            raise _TooLarge("an alias (*name) refers to the anchor that contains it (a recursive structure)")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise _TooLarge("an alias (*name) refers to the anchor that contains it (a recursive structure)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses repeated keys and alias bombs.

    A key written twice in one mapping is refused (YAML would keep the last silently), and so is a
    document whose aliases expand it past :data:`MAX_YAML_NODES` nodes ("billion laughs").
    """

    def compose_document(self) -> yaml.Node | None:  # type: ignore[override]
        node: yaml.Node | None = super().compose_document()  # type: ignore[no-untyped-call]
        if node is not None:
            _expanded_size(node)
        return node


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML safely: unique keys, bounded alias expansion; errors are ConfigErrors naming ``source``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooLarge as exc:
        raise ConfigError(
            f"{source}: refused: {exc}; fix: write the values out instead of nesting aliases "
            "(a job file needs few, if any, anchors)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{source}: YAML syntax error{where}: {problem}; fix: correct the YAML there "
            "(indentation, a missing ':' or space after it, an unclosed bracket or quote, a repeated key)"
        ) from None


def apply_overrides(
    data: Mapping[str, Any],
    overrides: Sequence[str],
    *,
    base_dir: str | Path | None = None,
    source: str = "--set",
) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``key.path=value`` overrides applied.

    Values are parsed with ``yaml.safe_load`` (``[512,512]``, ``2``, ``null``, ``true``). Path keys
    (``input.path``, ``model.weights``, ``output.path``, ``scoring.truth``) are resolved against
    ``base_dir`` (default: the current working directory).

    Args:
        data: The raw configuration mapping.
        overrides: Strings such as ``tiling.tile=[512,512]`` or ``engine.actors=2``.
        base_dir: Directory that relative path values are resolved against.
        source: Where the overrides came from, for messages.

    Raises:
        ConfigError: An override without ``=``, an unknown key path, or a value YAML cannot parse.

    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"{source}: override {item!r} is not key.path=value; "
                "fix: write e.g. tiling.tile=[512,512] or engine.actors=2"
            )
        parts = key.split(".")
        _check_key_path(parts, source)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{source}: override {key}: value {text!r} is not valid YAML ({exc}); "
                "fix: quote strings, write lists as [a, b]"
            ) from None
        if (parts[0], parts[-1]) in _PATH_KEYS and len(parts) == 2:
            value = _resolve(value, base)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _check_key_path(parts: Sequence[str], source: str) -> None:
    """Raise ConfigError unless ``parts`` names a key of the config schema (or lies in a free mapping)."""
    model: type[BaseModel] | None = JobConfig
    for i, part in enumerate(parts):
        if model is None:
            return
        where = ".".join(parts[:i]) or "the top level"
        if part not in model.model_fields:
            valid = sorted(model.model_fields)
            close = difflib.get_close_matches(part, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key {'.'.join(parts)!r}{hint}; "
                f"fix: valid keys under {where}: {', '.join(valid)}"
            )
        annotation = model.model_fields[part].annotation
        model = _model_of(annotation)
        if model is None and i < len(parts) - 1 and not _is_free_mapping(annotation):
            raise ConfigError(
                f"{source}: key {'.'.join(parts[: i + 1])!r} is a value, not a section, "
                f"so {'.'.join(parts)!r} cannot be set; fix: set {'.'.join(parts[: i + 1])}=... instead"
            )


def parse_config(
    data: Mapping[str, Any] | None, *, source: str = "<config>", base_dir: str | Path | None = None
) -> JobConfig:
    """Validate a configuration mapping into a :class:`JobConfig`.

    Args:
        data: The configuration, as read from YAML.
        source: Name of where it came from (a file path), used in every message.
        base_dir: If given, relative paths are resolved against this directory; if None they are
            kept as written.

    Raises:
        ConfigError: One line per problem, naming ``source``, the dotted key, the value and the fix.

    """
    if data is None:
        raise ConfigError(
            f"{source}: the configuration is empty; fix: write the input, model and output sections "
            "(see configs/example.yaml)"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections, got {_show(data)}; "
            "fix: write `input:`, `model:`, `output:` ... at the top level"
        )
    raw = copy.deepcopy(dict(data))
    if base_dir is not None:
        _resolve_paths(raw, Path(base_dir))
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        lines = _lines(exc, source)
        head = f"{len(lines)} problem{'s' if len(lines) != 1 else ''} in the configuration:\n"
        raise ConfigError(head + "\n".join(lines)) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read, resolve and validate a job configuration file.

    Relative paths written in the file are resolved against the file's directory; paths given in
    ``overrides`` against the current working directory.

    Args:
        path: The YAML file.
        overrides: ``key.path=value`` strings applied after reading (the CLI's ``--set``).

    Raises:
        ConfigError: The file is missing or unreadable, is not valid YAML, or holds invalid values.

    """
    file = Path(path)
    if not file.is_file():
        what = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise ConfigError(f"{file}: config file {what}; fix: check the path (relative to {Path.cwd()})")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{file}: config file cannot be read ({exc}); fix: check its permissions and encoding"
        ) from None
    data = load_yaml(text, str(file))
    if isinstance(data, dict):
        _resolve_paths(data, file.resolve().parent)
        data = apply_overrides(data, overrides, source=f"{file} --set")
    elif overrides and data is None:
        data = apply_overrides({}, overrides, source=f"{file} --set")
    return parse_config(data, source=str(file))


def dump_config(cfg: JobConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML to ``path`` (all paths already absolute) and return the path."""
    out = Path(path)
    out.write_text(cfg.to_yaml(), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------------
# identity


def _file_sha256(path: str) -> str | None:
    """Return the sha256 of a local file; None for a remote or missing file.

    Cached by (path, size, mtime), so an archive run hashes its checkpoint once, not once per input.
    """
    if is_remote(path) or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return _sha256_cached(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(cfg: JobConfig) -> str:
    """Return a 16-hex-digit identity of what decides the output pixels and the block layout.

    Covered: the input path and reading options (not GDAL cache settings); the weights *content*
    (sha256 of the file when it is local, else its path), model spec, normalisation, precision,
    test-time flips and nnU-Net settings; all of tiling (block included: resume records are per block);
    the output chunks, probability dtype and nodata label; and ``engine.skip_empty`` (skipped tiles become nodata).
    Not covered: the engine's scheduling (address, actors, GPUs/CPUs per actor, in-flight, retries,
    prefetch), the device and batch size, the output path, exports and scoring, so a job may resume
    with another actor count or on other hardware.
    """
    model = cfg.model
    sha = _file_sha256(model.weights)
    payload = {
        "version": 1,
        "input": cfg.input.model_dump(mode="json", exclude={"gdal"}),
        "model": {
            **model.model_dump(mode="json", include={"spec", "normalization", "precision", "tta_flips"}),
            **({"nnunet": model.nnunet.model_dump(mode="json")} if model.nnunet is not None else {}),
            "weights": {"sha256": sha} if sha is not None else {"path": model.weights},
        },
        # the default step rule is left out so that hashes from before the rule existed still match
        "tiling": cfg.tiling.model_dump(mode="json", exclude={"rule"} if cfg.tiling.rule == "overlap" else None),
        "engine": {"skip_empty": cfg.engine.skip_empty},
        "output": cfg.output.model_dump(
            mode="json", include={"chunks", "probabilities", "nodata_label", "background_label"}
        ),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
