"""Tests for tiler.config: validation messages, overrides, path resolution, round trips and config_hash."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
import yaml

from tiler.config import (
    ScoringConfig,
    apply_overrides,
    config_hash,
    dump_config,
    load_config,
    parse_config,
    pixels_hash,
)
from tiler.errors import ConfigError

MINIMAL: dict[str, Any] = {
    "input": {"path": "/data/scene.tif"},
    "model": {"weights": "/models/unet.pt"},
    "output": {"path": "/out/scene.zarr"},
}


def job(**sections: dict[str, Any]) -> dict[str, Any]:
    """MINIMAL with the given sections merged in (one level deep)."""
    data = copy.deepcopy(MINIMAL)
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


SPEC_2D = {"architecture": "UNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 4}
SPEC_3D = {"architecture": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3}


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# defaults and broadcasting


def test_minimal_config_takes_documented_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.tiling.tile == (256, 256)
    assert cfg.tiling.overlap == (32, 32)
    assert cfg.tiling.block == (2048, 2048)
    assert cfg.output.chunks == (512, 512)
    assert cfg.tiling.blend == "gaussian"
    assert cfg.model.precision == "auto"
    assert cfg.engine.max_in_flight == 2
    assert cfg.scoring.boundary_width == 3
    assert cfg.ndim == 2


@pytest.mark.parametrize(
    ("sections", "tile", "overlap", "block", "chunks"),
    [
        pytest.param(
            {"tiling": {"tile": 512}}, (512, 512), (32, 32), (2048, 2048), (512, 512), id="int-tile-2d"
        ),
        pytest.param(
            {"tiling": {"tile": [64, 64, 64], "overlap": 8, "block": 128}, "output": {"chunks": 64}},
            (64, 64, 64),
            (8, 8, 8),
            (128, 128, 128),
            (64, 64, 64),
            id="list-tile-sets-3d",
        ),
        pytest.param(
            {"model": {"spec": SPEC_3D}},
            (128, 128, 128),
            (32, 32, 32),
            (256, 256, 256),
            (64, 64, 64),
            id="spec-3d-defaults",
        ),
        pytest.param(
            {"model": {"spec": SPEC_3D}, "tiling": {"tile": 96, "overlap": 16}},
            (96, 96, 96),
            (16, 16, 16),
            (256, 256, 256),
            (64, 64, 64),
            id="spec-3d-broadcasts-ints",
        ),
        pytest.param(
            {"tiling": {"overlap": [4, 4, 4], "tile": 32, "block": 64}, "output": {"chunks": 32}},
            (32, 32, 32),
            (4, 4, 4),
            (64, 64, 64),
            (32, 32, 32),
            id="overlap-list-sets-ndim",
        ),
    ],
)
def test_ints_broadcast_to_inferred_dimensionality(
    sections: dict[str, Any],
    tile: tuple[int, ...],
    overlap: tuple[int, ...],
    block: tuple[int, ...],
    chunks: tuple[int, ...],
) -> None:
    cfg = parse_config(job(**sections))
    assert (cfg.tiling.tile, cfg.tiling.overlap, cfg.tiling.block, cfg.output.chunks) == (
        tile,
        overlap,
        block,
        chunks,
    )


def test_models_are_frozen() -> None:
    cfg = parse_config(MINIMAL)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.tiling.tile = (1, 1)  # type: ignore[misc]


def test_gdal_env_gives_cache_in_bytes() -> None:
    cfg = parse_config(
        job(input={"gdal": {"cachemax_mb": 64, "num_threads": 2, "options": {"AWS_REGION": "x"}}})
    )
    assert cfg.input.gdal.env() == {
        "GDAL_CACHEMAX": str(64 * 1024 * 1024),
        "GDAL_NUM_THREADS": "2",
        "AWS_REGION": "x",
    }


@pytest.mark.parametrize(
    ("width", "shape", "pixels"),
    [
        pytest.param(0.02, (300, 400), 10, id="fraction-of-diagonal"),
        pytest.param(3, (300, 400), 3, id="whole-pixels"),
        pytest.param(4.0, (300, 400), 4, id="whole-float-is-pixels"),
        pytest.param(0.0001, (30, 40), 1, id="never-below-one-pixel"),
    ],
)
def test_boundary_width_units(width: float, shape: tuple[int, ...], pixels: int) -> None:
    assert ScoringConfig(boundary_width=width).boundary_pixels(shape) == pixels


# ---------------------------------------------------------------------------------------------------
# bad configs: each must name the key and the value


BAD = [
    pytest.param(
        job(tiling={"tile": [256, 256], "overlap": [256, 16]}),
        "tiling.overlap",
        "[256, 16]",
        id="overlap>=tile",
    ),
    pytest.param(
        job(tiling={"tile": [256, 256], "overlap": [-1, 16]}), r"tiling.overlap\[0\]", "-1", id="overlap<0"
    ),
    pytest.param(
        job(tiling={"tile": [256, 256], "overlap": [16, 16, 16]}),
        "tiling.overlap",
        "3 axes",
        id="overlap-length",
    ),
    pytest.param(job(tiling={"tile": [256, 256, 256, 256]}), "tiling.tile", "4 axes", id="tile-4d"),
    pytest.param(job(tiling={"tile": [0, 256]}), r"tiling.tile\[0\]", "> 0", id="tile-zero"),
    pytest.param(job(tiling={"tile": [256.5, 256]}), r"tiling.tile\[0\]", "256.5", id="tile-fraction"),
    pytest.param(
        job(tiling={"block": [1000, 1000]}),
        "tiling.block",
        r"output.chunks=\[512, 512\].*got \[1000, 1000\]",
        id="block-not-multiple-of-chunks",
    ),
    pytest.param(
        job(tiling={"tile": [64, 64]}, output={"chunks": [32, 32, 32]}),
        "output.chunks",
        "3 axes",
        id="chunks-length",
    ),
    pytest.param(
        job(model={"spec": SPEC_3D}, tiling={"tile": [256, 256]}),
        "tiling.tile",
        "spatial_dims is 3",
        id="2d-tile-for-3d-model",
    ),
    pytest.param(job(input={"level": 1, "mpp": 0.5}), "input.mpp", "level=1", id="level-and-mpp"),
    pytest.param(job(model={"format": "state_dict"}), "model.spec", "state_dict", id="state_dict-needs-spec"),
    pytest.param(
        job(model={"format": "torchscript"}), "model.spec", "torchscript", id="torchscript-needs-spec"
    ),
    pytest.param(job(tiling={"blend": "linear"}), "tiling.blend", 'gaussian.*got "linear"', id="blend"),
    pytest.param(
        job(output={"probabilities": "float64"}), "output.probabilities", "float64", id="probabilities"
    ),
    pytest.param(job(output={"exports": ["cog", "png"]}), r"output.exports\[1\]", "png", id="exports"),
    pytest.param(job(output={"exports": ["cog", "cog"]}), "output.exports", "repeats", id="exports-repeated"),
    pytest.param(
        job(input={"mask": "threshold"}), "input.threshold", "required when mask", id="threshold-needed"
    ),
    pytest.param(
        job(input={"threshold": -500, "mask": "nodata"}),
        "input.threshold",
        "-500",
        id="threshold-with-nodata-mask",
    ),
    pytest.param(
        job(scoring={"boundary_width": 0}), "scoring.boundary_width", "must be > 0", id="boundary-zero"
    ),
    pytest.param(
        job(scoring={"boundary_width": 2.5}), "scoring.boundary_width", "2.5", id="boundary-fraction>1"
    ),
    pytest.param(job(tiling={"tilee": 3}), "tiling.tilee", "did you mean 'tile'", id="unknown-key"),
    pytest.param({**MINIMAL, "engin": {}}, "engin", "engine", id="unknown-section"),
    pytest.param(job(model={"batch_size": True}), "model.batch_size", "true", id="bool-is-not-int"),
    pytest.param(job(engine={"actors": "2"}), "engine.actors", '"2"', id="string-is-not-int"),
    pytest.param(job(engine={"gpus_per_actor": 1.5}), "engine.gpus_per_actor", "1.5", id="gpus-fraction>1"),
    pytest.param(job(model={"precision": "int8"}), "model.precision", "int8", id="precision"),
    pytest.param(
        job(model={"tta_flips": [[0], [2]]}), r"model.tta_flips\[1\]", r"\[2\]", id="tta-axis-out-of-range"
    ),
    pytest.param(
        job(model={"spec": SPEC_2D}, input={"bands": [1, 2]}),
        "input.bands",
        "in_channels is 3",
        id="bands-vs-in_channels",
    ),
    pytest.param(
        job(model={"spec": {**SPEC_2D, "out_channels": 300}}),
        "output.nodata_label",
        "255",
        id="nodata-is-a-class",
    ),
    pytest.param(
        job(model={"spec": {**SPEC_2D, "spatial_dims": 4}}), "model.spec.spatial_dims", "4", id="spatial-dims"
    ),
    pytest.param(
        job(model={"normalization": {"kind": "meanstd", "mean": [0.5]}}),
        "model.normalization.std",
        "required",
        id="meanstd-needs-std",
    ),
    pytest.param(
        job(model={"normalization": {"kind": "window", "window": [400, -1000]}}),
        "model.normalization.window",
        r"\[400.0, -1000.0\]",
        id="window-inverted",
    ),
    pytest.param(
        job(input={"gdal": {"num_threads": "many"}}), "input.gdal.num_threads", "many", id="gdal-threads"
    ),
    pytest.param(
        {"input": {"path": "a.tif"}, "output": {"path": "o.zarr"}}, "model", "required", id="missing-model"
    ),
    pytest.param(job(output={"path": ""}), "output.path", "empty", id="empty-path"),
]


@pytest.mark.parametrize(("data", "key", "fragment"), BAD)
def test_bad_config_names_file_key_and_value(data: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="jobs/bad.yaml")
    lines = str(info.value).splitlines()[1:]
    matching = [line for line in lines if re.match(rf"jobs/bad\.yaml: {key}: ", line)]
    assert matching, f"no line for {key!r} in:\n{info.value}"
    assert any(re.search(fragment, line) for line in matching), f"{fragment!r} not in {matching}"
    assert all("fix: " in line for line in lines)


def test_several_problems_give_one_line_each() -> None:
    data = job(model={"batch_size": 0, "device": "tpu"}, engine={"max_in_flight": 0})
    with pytest.raises(ConfigError, match="3 problems") as info:
        parse_config(data, source="x.yaml")
    keys = sorted(line.split(": ")[1] for line in str(info.value).splitlines()[1:])
    assert keys == ["engine.max_in_flight", "model.batch_size", "model.device"]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(None, "empty", id="empty"),
        pytest.param([1, 2], "top level must be a mapping", id="list"),
    ],
)
def test_non_mapping_config(data: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(data, source="x.yaml")


# ---------------------------------------------------------------------------------------------------
# normalization: the config builds the model's Normalization; clip values are pixels, never percentiles


@pytest.mark.parametrize(
    "given",
    [
        pytest.param({"low": 2, "high": 98}, id="low-high"),
        pytest.param({"percentiles": [2, 98]}, id="percentiles"),
        pytest.param({"low": 2, "high": 98, "clip_low": [2], "clip_high": [98]}, id="both-names"),
    ],
)
def test_percentiles_are_refused_where_clip_values_are_meant(given: dict[str, Any]) -> None:
    data = job(model={"normalization": {"kind": "percentile", **given}})
    with pytest.raises(ConfigError, match=r"model\.normalization\.(low|percentiles): is not a key.*clip_low"):
        parse_config(data)


def test_percentile_clip_values_reach_the_model_as_pixel_values() -> None:
    from tiler.job.refs import model_ref
    from tiler.model.normalize import Normalization

    norm = {"kind": "percentile", "clip_low": [100.0, 0.0], "clip_high": [300.0, 1000.0]}
    load = model_ref(parse_config(job(model={"normalization": norm}))).load
    built = Normalization.from_dict(load["normalization"])
    assert built.low == (100.0, 0.0) and built.high == (300.0, 1000.0) and built.percentiles is None
    pixels = np.array([[[50, 100, 200, 300, 2000]], [[-5, 0, 250, 1000, 2000]]], dtype=np.int32)  # (C, H, W)
    expected = np.array([[[0.0, 0.0, 0.5, 1.0, 1.0]], [[0.0, 0.0, 0.25, 1.0, 1.0]]], dtype=np.float32)
    np.testing.assert_allclose(built.apply(pixels), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("norm", "key", "fragment"),
    [
        pytest.param({"kind": "percentile", "clip_low": [1.0]}, "clip_high", "required", id="needs-high"),
        pytest.param({"kind": "percentile", "clip_low": [5.0, 1.0], "clip_high": [4.0, 9.0]}, "clip_high",
                     "not above", id="inverted"),
        pytest.param({"kind": "percentile", "clip_low": [1.0], "clip_high": [4.0, 9.0]}, "clip_high",
                     "has 2 values", id="lengths"),
        pytest.param({"kind": "meanstd", "mean": [0.0], "std": [1.0], "clip_low": [1.0]}, "clip_low",
                     "does not apply", id="clip-on-meanstd"),
    ],
)
def test_bad_clip_values_name_the_key(norm: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.normalization\.{key}: .*{fragment}"):
        parse_config(job(model={"normalization": norm}))


# ---------------------------------------------------------------------------------------------------
# files: missing, syntax errors, round trip, path resolution


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(missing)) + ".*does not exist"):
        load_config(missing)


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("input:\n  path: a.tif\nmodel:\n  weights: [unclosed\n", 5, id="unclosed-bracket"),
        pytest.param("input:\n  path: a.tif\n bad: indentation\n", 3, id="indentation"),
        pytest.param("input:\n  path: a.tif\n  path: b.tif\n", 3, id="duplicate-key"),
    ],
)
def test_yaml_syntax_error_gives_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"job\.yaml: YAML syntax error at line {line}\b"):
        load_config(path)


def test_full_config_round_trips(tmp_path: Path) -> None:
    data = job(
        input={"bands": [3, 2, 1], "mask": "threshold", "threshold": -500.0, "gdal": {"options": {"A": "b"}}},
        model={
            "spec": {**SPEC_2D, "args": {"channels": [16, 32], "strides": [2]}},
            "format": "state_dict",
            "normalization": {"kind": "meanstd", "mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 2.0]},
            "class_names": ["a", "b", "c", "d"],
            "tta_flips": [[0], [1], [0, 1]],
            "threads": 2,
        },
        tiling={"tile": [128, 128], "overlap": [16, 16], "blend": "hann", "block": [1024, 1024]},
        engine={"address": "ray://head:10001", "actors": 4, "gpus_per_actor": 0.5},
        output={"chunks": [256, 256], "probabilities": "uint8", "exports": ["cog", "quicklook"]},
        scoring={"truth": "/data/truth.tif", "boundary_width": 3, "num_classes": 4},
    )
    cfg = parse_config(data)
    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    written = dump_config(cfg, tmp_path / "dumped.yaml")
    assert load_config(written) == cfg
    assert isinstance(again.scoring.boundary_width, int)


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    data = {
        "input": {"path": "../data/scene.tif"},
        "model": {"weights": "weights/unet.pt"},
        "output": {"path": "/abs/out.zarr"},
        "scoring": {"truth": "/vsis3/bucket/truth.tif"},
    }
    cfg = load_config(write(folder / "job.yaml", data))
    assert cfg.input.path == str(tmp_path / "data" / "scene.tif")
    assert cfg.model.weights == str(folder / "weights" / "unet.pt")
    assert cfg.output.path == "/abs/out.zarr"
    assert cfg.scoring.truth == "/vsis3/bucket/truth.tif"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/vsicurl/https://example.com/scene.tif", id="vsicurl"),
        pytest.param("s3://bucket/scene.tif", id="s3-url"),
        pytest.param("https://example.com/scene.tif", id="https-url"),
    ],
)
def test_remote_paths_are_kept(tmp_path: Path, path: str) -> None:
    cfg = load_config(write(tmp_path / "job.yaml", job(input={"path": path})))
    assert cfg.input.path == path
    assert cfg.input.is_remote


def test_glob_input_path_resolves_against_config_dir(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "archive.yaml", job(input={"path": "tiles/*.tif"})))
    assert cfg.input.path == str(tmp_path / "tiles" / "*.tif")


def test_parse_config_keeps_relative_paths_without_base_dir() -> None:
    assert parse_config(job(input={"path": "a.tif"})).input.path == "a.tif"
    assert parse_config(job(input={"path": "a.tif"}), base_dir="/x").input.path == "/x/a.tif"


# ---------------------------------------------------------------------------------------------------
# overrides


def test_overrides_set_values(tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", job(output={"probabilities": "uint8"}))
    cfg = load_config(
        path,
        [
            "tiling.tile=[512,512]",
            "engine.actors=2",
            "output.probabilities=null",
            "model.spec.architecture=UNet",
            "model.spec.spatial_dims=2",
            "model.spec.in_channels=3",
            "model.spec.out_channels=2",
            "model.spec.args.channels=[8, 16]",
        ],
    )
    assert cfg.tiling.tile == (512, 512)
    assert cfg.engine.actors == 2
    assert cfg.output.probabilities is None
    assert cfg.model.spec is not None and cfg.model.spec.args == {"channels": [8, 16]}


def test_override_paths_resolve_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "job.yaml", MINIMAL)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(path, ["output.path=run1.zarr"])
    assert cfg.output.path == os.path.join(work, "run1.zarr")


def test_override_value_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", MINIMAL)
    with pytest.raises(ConfigError, match=r"job\.yaml: tiling\.overlap: .*\[300, 300\]"):
        load_config(path, ["tiling.overlap=300"])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        pytest.param(
            "tiling.tiles=[1,1]",
            r"unknown key 'tiling.tiles' \(did you mean 'tile'\?\).*under tiling: blend, "
            "block, overlap",
            id="unknown-leaf",
        ),
        pytest.param(
            "engin.actors=2",
            r"unknown key 'engin.actors'.*under the top level: engine, input",
            id="unknown-top",
        ),
        pytest.param("tiling.tile.x=1", r"'tiling.tile' is a value, not a section", id="below-a-value"),
        pytest.param("engine.actors", r"not key.path=value", id="no-equals"),
        pytest.param("tiling.tile=[1,", r"tiling.tile: value '\[1,' is not valid YAML", id="bad-yaml-value"),
    ],
)
def test_bad_override_fails_clearly(tmp_path: Path, override: str, match: str) -> None:
    path = write(tmp_path / "job.yaml", MINIMAL)
    with pytest.raises(ConfigError, match=match):
        load_config(path, [override])


def test_apply_overrides_does_not_touch_its_input() -> None:
    data = job()
    before = copy.deepcopy(data)
    out = apply_overrides(data, ["engine.actors=3"])
    assert data == before
    assert out["engine"] == {"actors": 3}


# ---------------------------------------------------------------------------------------------------
# config_hash


def test_config_hash_is_stable_and_short() -> None:
    a, b = parse_config(MINIMAL), parse_config(copy.deepcopy(MINIMAL))
    assert config_hash(a) == config_hash(b)
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash(a))


@pytest.mark.parametrize(
    "sections",
    [
        pytest.param(
            {"engine": {"actors": 7, "max_in_flight": 5, "max_task_retries": 0, "address": "auto"}},
            id="engine-scheduling",
        ),
        pytest.param(
            {"engine": {"gpus_per_actor": 0.5, "cpus_per_actor": 2.0, "prefetch": False}},
            id="engine-resources",
        ),
        pytest.param({"model": {"device": "cpu", "batch_size": 32, "threads": 2}}, id="device-batch-threads"),
        pytest.param({"output": {"path": "/elsewhere.zarr"}}, id="output-path"),
        pytest.param({"input": {"gdal": {"cachemax_mb": 1024, "options": {"AWS_SECRET_ACCESS_KEY": "x"}}}},
                     id="gdal-cache-and-credentials"),
        pytest.param({"model": {"onnx": {}}}, id="empty-onnx-section"),
        pytest.param({"scoring": {"num_classes": 9, "ignore_index": 0, "boundary_width": 5}},
                     id="scoring-without-truth"),
        pytest.param({"output": {"min_polygon_pixels": 9, "polygon_classes": ["a"]}},
                     id="polygon-settings-without-polygon-export"),
    ],
)
def test_config_hash_ignores_scheduling(sections: dict[str, Any]) -> None:
    assert config_hash(parse_config(job(**sections))) == config_hash(parse_config(MINIMAL))


def test_config_hash_ignores_the_order_of_exports() -> None:
    first = parse_config(job(output={"exports": ["cog", "quicklook"]}))
    assert config_hash(first) == config_hash(parse_config(job(output={"exports": ["quicklook", "cog"]})))


@pytest.mark.parametrize(
    "sections",
    [
        pytest.param({"tiling": {"tile": [512, 512]}}, id="tile"),
        pytest.param({"tiling": {"overlap": [64, 64]}}, id="overlap"),
        pytest.param({"tiling": {"blend": "hann"}}, id="blend"),
        pytest.param({"tiling": {"block": [1024, 1024]}}, id="block"),
        pytest.param({"input": {"path": "/data/other.tif"}}, id="input-path"),
        pytest.param({"model": {"tta_flips": [[0]]}}, id="tta"),
        pytest.param({"model": {"precision": "fp32"}}, id="precision"),
        pytest.param({"output": {"probabilities": "float16"}}, id="probabilities"),
        pytest.param({"output": {"chunks": [256, 256]}}, id="chunks"),
        pytest.param({"engine": {"skip_empty": False}}, id="skip-empty"),
        pytest.param({"model": {"onnx": {"output": "logits"}}}, id="onnx-settings"),
    ],
)
def test_config_hash_changes_with_what_decides_pixels(sections: dict[str, Any]) -> None:
    assert config_hash(parse_config(job(**sections))) != config_hash(parse_config(MINIMAL))


SCORED = {"scoring": {"truth": "/data/truth.tif"}}


@pytest.mark.parametrize(
    ("base", "changed"),
    [
        pytest.param({}, SCORED, id="a-truth"),
        pytest.param(SCORED, {"scoring": {"truth": "/data/other_truth.tif"}}, id="truth-path"),
        pytest.param(SCORED, {"scoring": {"truth": "/data/truth.tif", "num_classes": 6}}, id="num-classes"),
        pytest.param(SCORED, {"scoring": {"truth": "/data/truth.tif", "ignore_index": 0}}, id="ignore-index"),
        pytest.param(SCORED, {"scoring": {"truth": "/data/truth.tif", "boundary_width": 0.02}}, id="boundary"),
        pytest.param({}, {"model": {"class_names": ["bg", "a", "b", "c"]}}, id="class-names"),
        pytest.param({"model": {"class_names": ["bg", "a"]}}, {"model": {"class_names": ["bg", "b"]}},
                     id="renamed-class"),
        pytest.param({}, {"model": {"class_colors": [[0, 0, 0], [255, 0, 0]]}}, id="class-colours"),
        pytest.param({}, {"output": {"exports": ["cog"]}}, id="an-export"),
        pytest.param({"output": {"exports": ["geojson"]}},
                     {"output": {"exports": ["geojson"], "min_polygon_pixels": 9}}, id="min-polygon-pixels"),
        pytest.param({"output": {"exports": ["qupath"]}},
                     {"output": {"exports": ["qupath"], "polygon_classes": ["a"]}}, id="polygon-classes"),
    ],
)
def test_config_hash_changes_with_what_decides_exports_and_scores(
    base: dict[str, Any], changed: dict[str, Any]
) -> None:
    # an archive input is skipped when the ledger holds its hash: a new truth must not report the old scores
    assert config_hash(parse_config(job(**changed))) != config_hash(parse_config(job(**base)))


PINNED = [
    pytest.param({}, "33b1dc3406585895", id="minimal"),
    pytest.param({"tiling": {"tile": [64, 64, 64]}}, "d9a14f009ae0b375", id="3d"),
    pytest.param({"tiling": {"rule": "nnunet"}}, "c01a5544292806f7", id="nnunet-rule"),
    pytest.param({"model": {"format": "state_dict", "spec": SPEC_2D}}, "4078270ab4527d0d", id="spec"),
    pytest.param({"engine": {"actors": 3, "skip_empty": False}}, "72938fe648de54df", id="engine"),
]


@pytest.mark.parametrize(("sections", "expected"), PINNED)
def test_config_hash_of_a_config_without_the_newer_keys_never_changes(
    sections: dict[str, Any], expected: str
) -> None:
    # stores and ledger rows carry these: a config that sets none of the keys covered later keeps its hash
    assert config_hash(parse_config(job(**sections))) == expected


@pytest.mark.parametrize(("sections", "expected"), PINNED)
def test_without_exports_or_truth_the_pixels_hash_is_the_config_hash(sections: dict[str, Any], expected: str) -> None:
    # stores written before the split recorded this one hash: they are resumed under the pixels hash
    assert pixels_hash(parse_config(job(**sections))) == expected


FINISHING = [
    pytest.param({}, SCORED, id="a-truth"),
    pytest.param(SCORED, {"scoring": {"truth": "/data/other_truth.tif"}}, id="truth-path"),
    pytest.param(SCORED, {"scoring": {"truth": "/data/truth.tif", "num_classes": 6}}, id="num-classes"),
    pytest.param(SCORED, {"scoring": {"truth": "/data/truth.tif", "ignore_index": 0}}, id="ignore-index"),
    pytest.param(SCORED, {"scoring": {"truth": "/data/truth.tif", "boundary_width": 0.02}}, id="boundary"),
    pytest.param({}, {"output": {"exports": ["cog"]}}, id="an-export"),
    pytest.param({"output": {"exports": ["cog"]}}, {"output": {"exports": ["cog", "geojson"]}}, id="a-polygon-export"),
    pytest.param({"output": {"exports": ["geojson"]}},
                 {"output": {"exports": ["geojson"], "min_polygon_pixels": 9}}, id="min-polygon-pixels"),
    pytest.param({"output": {"exports": ["qupath"]}},
                 {"output": {"exports": ["qupath"], "polygon_classes": ["a"]}}, id="polygon-classes"),
]


@pytest.mark.parametrize(("base", "changed"), FINISHING)
def test_the_pixels_hash_ignores_what_only_the_finishing_writes(base: dict[str, Any], changed: dict[str, Any]) -> None:
    # a store keeps its blocks when only exports or scores change: it is finished again, not recomputed
    first, second = parse_config(job(**base)), parse_config(job(**changed))
    assert pixels_hash(first) == pixels_hash(second)
    assert config_hash(first) != config_hash(second)


@pytest.mark.parametrize(
    "sections",
    [
        pytest.param({"tiling": {"overlap": [64, 64]}}, id="overlap"),
        pytest.param({"tiling": {"block": [1024, 1024]}}, id="block"),
        pytest.param({"input": {"path": "/data/other.tif"}}, id="input-path"),
        pytest.param({"output": {"chunks": [256, 256]}}, id="chunks"),
        pytest.param({"output": {"probabilities": "float16"}}, id="probabilities"),
        pytest.param({"engine": {"skip_empty": False}}, id="skip-empty"),
        pytest.param({"model": {"onnx": {"output": "logits"}}}, id="onnx-settings"),
        pytest.param({"model": {"class_names": ["bg", "a", "b", "c"]}}, id="class-names"),
        pytest.param({"model": {"class_colors": [[0, 0, 0], [255, 0, 0]]}}, id="class-colours"),
    ],
)
def test_the_pixels_hash_changes_with_what_the_store_holds(sections: dict[str, Any]) -> None:
    # the arrays, the block layout and the store's class names and colours (every export reads them)
    assert pixels_hash(parse_config(job(**sections))) != pixels_hash(parse_config(MINIMAL))


def test_config_hash_follows_weights_content_not_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"weights-v1")
    second.write_bytes(b"weights-v1")
    hash_a = config_hash(parse_config(job(model={"weights": str(first)})))
    hash_b = config_hash(parse_config(job(model={"weights": str(second)})))
    assert hash_a == hash_b
    second.write_bytes(b"weights-v2")
    assert config_hash(parse_config(job(model={"weights": str(second)}))) != hash_a


def test_a_parsed_config_is_frozen_and_round_trips() -> None:
    cfg = parse_config(job(tiling={"tile": [128, 64]}))
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.tiling.tile = (512, 512)  # type: ignore[misc]
    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and again.tiling.tile == (128, 64) and config_hash(again) == config_hash(cfg)


# ---------------------------------------------------------------------------------------------------
# configs/example.yaml documents every key


def leaf_keys(data: Any, prefix: str = "") -> set[str]:
    if not isinstance(data, dict) or not data or prefix.endswith(("args", "options")):
        return {prefix}
    return set().union(*(leaf_keys(v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()))


def test_example_config_loads_and_names_every_key() -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / "example.yaml"
    cfg = load_config(path)
    assert cfg.input.path == str(path.parent.parent / "data" / "scene.tif")
    written = leaf_keys(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert written == leaf_keys(cfg.model_dump(mode="json"))
    lines = path.read_text(encoding="utf-8").splitlines()
    bare = [line for line in lines if ":" in line and "#" not in line and not line.rstrip().endswith(":")]
    assert bare == [], f"keys without a comment: {bare}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("output.path", "/vsis3/bucket/out.zarr"),
        ("output.path", "https://host/out.zarr"),
        ("model.weights", "https://host/model.pt"),
        ("model.weights", "/vsis3/bucket/model.pt"),
    ],
)
def test_a_url_tiler_cannot_write_or_load_from_is_one_line_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    """``Path("s3://b/x.zarr")`` is a local folder named ``s3:``: such a job used to write there and exit 0."""
    monkeypatch.chdir(tmp_path)
    section, name = key.split(".")
    data: dict[str, Any] = {"input": {"path": "scene.tif"}, "model": {"weights": "m.pt"}, "output": {"path": "o.zarr"}}
    data[section][name] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert f"{key}: " in message and value in message and "fix:" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["s3://bucket/out/scene.zarr", "gs://bucket/scene.zarr", "az://container/x.zarr"])
def test_an_output_in_object_storage_is_taken_as_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """An ``s3://``, ``gs://`` or ``az://`` output is kept as given (never resolved against the config's folder)."""
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"input": {"path": "scene.tif"}, "model": {"weights": "m.pt"}, "output": {"path": value}})
    assert cfg.output.path == value
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("root", "match"),
    [
        pytest.param("s3://bucket/nightly", r"archive.ledger: is needed for archive.root s3://bucket/nightly.*fix: set "
                     r"archive.ledger", id="bucket-without-ledger"),
        pytest.param("https://host/nightly", r"archive.root: https://host/nightly is a URL or GDAL path tiler cannot "
                     r"write to.*fix: give", id="https"),
    ],
)
def test_an_archive_root_tiler_cannot_use_is_one_line_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: str, match: str
) -> None:
    from tiler.archive import load_archive

    monkeypatch.chdir(tmp_path)
    (tmp_path / "archive.yaml").write_text(
        f"archive: {{root: '{root}'}}\ninput: {{path: 'scenes/*.tif'}}\nmodel: {{weights: m.pt}}\n"
    )
    with pytest.raises(ConfigError, match=match):
        load_archive(tmp_path / "archive.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.yaml"]
