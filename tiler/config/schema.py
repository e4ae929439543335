"""The config schema: :class:`JobConfig` joining one frozen pydantic model per section of a job file.

The sections live in :mod:`tiler.config.sections` (input, tiling, engine, output, scoring) and
:mod:`tiler.config.model_section` (model); this module re-exports them. Every validator reports through
:class:`~tiler.config.problems.Problems` (key, value, problem, fix), which :mod:`tiler.config.messages` turns into
one line each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin

from pydantic import BaseModel, Field, model_validator

from tiler.config.fields import DEFAULTS_BY_NDIM, broadcast
from tiler.config.model_section import (
    ModelConfig,
    ModelSpecConfig,
    MonaiArchitecture,
    NnunetConfig,
    NormalizationConfig,
    OnnxConfig,
)
from tiler.config.problems import Problem, raise_if
from tiler.config.sections import (
    DicomOutputConfig,
    EngineConfig,
    GdalConfig,
    InputConfig,
    OutputConfig,
    ScoringConfig,
    TilingConfig,
    _infer_ndim,
    _Section,
)
from tiler.exports import REGISTRY as EXPORTS
from tiler.label_rules import nodata_label_problem
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


# ---------------------------------------------------------------------------------------------------
# the job


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
        region = self.input.region
        if isinstance(region, tuple) and len(region) != ndim:
            problems.append(
                (
                    "input.region",
                    [list(r) for r in region],
                    f"has {len(region)} axes but the job has {ndim}",
                    f"give {ndim} [start, stop] pairs, one per axis of the input",
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
