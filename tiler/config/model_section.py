"""The ``model`` section of a job file: the weights, their spec and normalisation, ONNX and nnU-Net settings, TTA.

Every validator reports through :class:`~tiler.config.problems.Problems` (key, value, problem, fix), which
:mod:`tiler.config.messages` turns into one line each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, model_validator

from tiler.config.fields import Bool, Float, Int, NonNegInt, PosInt, Str
from tiler.config.problems import Problem, Problems, raise_if
from tiler.config.sections import _Section
from tiler.paths import is_object_url, is_remote

__all__ = [
    "ModelConfig",
    "ModelSpecConfig",
    "MonaiArchitecture",
    "NnunetConfig",
    "NormalizationConfig",
    "OnnxConfig",
]


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
        if is_remote(self.weights) and not is_object_url(self.weights):
            problems.append(
                (
                    "weights",
                    self.weights,
                    "is a URL or GDAL path tiler does not load models from (object storage is read: s3://, gs://, az://)",
                    "copy the model to a local path or a bucket first (or bake it into the image)",
                )
            )
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
