"""The config schema: one frozen pydantic model per section of a job file, and :class:`JobConfig` joining them.

Every validator reports through :class:`~tiler.config.problems.Problems` (key, value, problem, fix), which
:mod:`tiler.config.messages` turns into one line each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

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
from tiler.exports import REGISTRY as EXPORTS
from tiler.labels import nodata_label_problem
from tiler.metrics.boundary import DEFAULT_WIDTH_PIXELS
from tiler.paths import is_remote
from tiler.yamlsafe import dump_yaml

__all__ = [
    "DicomOutputConfig",
    "EngineConfig",
    "GdalConfig",
    "InputConfig",
    "JobConfig",
    "ModelConfig",
    "ModelSpecConfig",
    "MonaiArchitecture",
    "NnunetConfig",
    "NormalizationConfig",
    "OnnxConfig",
    "OutputConfig",
    "ScoringConfig",
    "TilingConfig",
]


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
    format: Literal["auto", "geotiff", "nifti", "zarr", "slide", "dicom"] = "auto"
    # DICOM: the SeriesInstanceUID to read when the folder holds several series
    series: Str | None = None
    bands: tuple[PosInt, ...] | None = None
    channels_from_4d: Bool = False
    level: NonNegInt | None = None
    mpp: Annotated[float, Strict(), Field(gt=0)] | None = None
    mask: Literal["auto", "none", "nodata", "tissue", "threshold"] = "auto"
    threshold: Float | None = None
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
            raise Problems(
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
        problems: list[Problem] = []
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
        raise_if(problems)
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
            raise Problems(
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
        problems: list[Problem] = []
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
        raise_if(problems)
        return self


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
        defaults = DEFAULTS_BY_NDIM.get(ndim, DEFAULTS_BY_NDIM[2])
        tiling = {
            **tiling,
            **{k: broadcast(tiling.get(k, defaults[k]), ndim) for k in ("tile", "overlap", "block")},
        }
        out["tiling"] = tiling
        if "output" in out:
            out["output"] = {**output, "chunks": broadcast(output.get("chunks", defaults["chunks"]), ndim)}
        return out

    @model_validator(mode="after")
    def _check(self) -> JobConfig:
        problems: list[Problem] = []
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
        for name in self.output.exports:
            export = EXPORTS[name]
            if ndim not in export.dims:
                problems.append(
                    ("output.exports", list(self.output.exports), f"asks for {name} on a {ndim}D job", export.why_not)
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
        raise_if(problems)
        return self

    @property
    def ndim(self) -> int:
        """The number of spatial axes: 2 for (row, col), 3 for (z, y, x)."""
        return self.tiling.ndim

    def to_yaml(self) -> str:
        """Return this configuration as YAML that :func:`parse_config` reads back to an equal config."""
        return dump_yaml(self.model_dump(mode="json"))



# ---------------------------------------------------------------------------------------------------
# walking the schema by key


def section_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """Return the config model class found by following the field names of ``loc`` from JobConfig."""
    model: type[BaseModel] | None = JobConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = model_of(model.model_fields[part].annotation)
    return model


def model_of(annotation: Any) -> type[BaseModel] | None:
    """Return the BaseModel class inside an annotation in ``X`` or ``X | None``; None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = model_of(arg)
        if found is not None:
            return found
    return None


def is_free_mapping(annotation: Any) -> bool:
    """Whether a field holds free-form keys (``dict[...]``), which overrides may extend."""
    return get_origin(annotation) is dict or annotation is dict
