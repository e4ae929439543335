"""Careless and hostile checkpoints (issue 17): zip bombs, absurd sizes, malformed fields, bad sidecars."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from tiler.errors import ModelError
from tiler.label_rules import check_nodata_label
from tiler.model import spec as spec_module
from tiler.model.checkpoint import load_model, save_checkpoint
from tiler.model.normalize import Normalization
from tiler.model.spec import ModelSpec, build_network

SPEC = ModelSpec("UNet", 2, 3, 4, {"channels": [4, 8], "strides": [2], "num_res_units": 0})


def _project(path: Path, **change: Any) -> Path:
    """A valid tiler checkpoint of SPEC with top-level fields replaced by ``change``."""
    torch.manual_seed(0)
    save_checkpoint(path, build_network(SPEC), spec=SPEC, normalization=Normalization("meanstd", mean=1.0, std=2.0))
    data = torch.load(path, weights_only=True)
    for key, value in change.items():
        if "." in key:
            section, field = key.split(".")
            data[section][field] = value
        else:
            data[key] = value
    torch.save(data, path)
    return path


# ------------------------------------------------------------------------------- zip bomb


def test_zip_bomb_checkpoint_is_refused_before_it_inflates(tmp_path: Path) -> None:
    plain = _project(tmp_path / "plain.pt")
    bomb = tmp_path / "bomb.pt"
    chunk = bytes(2**20)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        prefix = src.infolist()[0].filename.split("/")[0]
        with dst.open(f"{prefix}/data/999", "w", force_zip64=True) as member:  # 300 MiB of zeros
            for _ in range(300):
                member.write(chunk)
    assert bomb.stat().st_size < 3 * 2**20
    with pytest.raises(ModelError, match=r"checkpoint .*bomb\.pt would inflate from .* MiB to 0\.29 GiB"):
        load_model(bomb)


# ------------------------------------------------------------------------------- spec sizes


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        pytest.param({"in_channels": 10**6}, r"in_channels=1000000 is more than 4096", id="in_channels 1e6"),
        pytest.param({"out_channels": 10**6}, r"out_channels=1000000 is more than 65535", id="classes 1e6"),
        pytest.param({"args": {"channels": [8192, 8], "strides": [2]}}, r"args\.channels=\[8192, 8\]", id="width"),
        pytest.param({"args": {"channels": [4, 8], "strides": [0]}}, r"args\.strides=\[0\]", id="stride 0"),
    ],
)
def test_absurd_spec_sizes_are_refused_before_building(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        build_network(ModelSpec.from_dict({**SPEC.to_dict(), **fields}))


def test_network_over_the_parameter_cap_is_refused_unbuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_module, "MAX_PARAMETERS", 100)
    with pytest.raises(ModelError, match=r"MONAI UNet .* has [\d,]+ parameters, more than 100 .*not built"):
        build_network(SPEC)


# ------------------------------------------------------------------------------- malformed fields


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param({"normalization.mean": "abc"}, r"normalization mean='abc' must be a finite number",
                     id="mean is a string"),
        pytest.param({"normalization.std": [float("nan")]}, r"normalization std=\[nan\]", id="std is NaN"),
        pytest.param({"normalization.window": 3}, r"normalization window=3", id="window is an int"),
        pytest.param({"class_names": 5}, r"class_names=5 must be a list of strings", id="class names an int"),
        pytest.param({"class_names": "abcd"}, r"class_names='abcd' must be a list", id="class names a string"),
        pytest.param({"class_colors": "red"}, r"class_colors='red' must be a list of \[r, g, b\]", id="colors"),
        pytest.param({"spec.args": {"channels": [4, 8], "strides": [2], "kernel_size": 0}},
                     r"args\.kernel_size=0 must be a whole number", id="kernel size 0"),
        pytest.param({"spec.args": "UNet"}, r"spec args='UNet' must be a mapping", id="args a string"),
        pytest.param({"spec.architecture": ["UNet"]}, r"architecture=\['UNet'\] is unknown", id="architecture list"),
        pytest.param({"state_dict": [1, 2]}, r"state_dict is a list, not a mapping", id="state_dict a list"),
    ],
)
def test_malformed_checkpoint_field_gives_model_error_naming_it(tmp_path: Path, change: dict[str, Any],
                                                                match: str) -> None:
    path = _project(tmp_path / "bad.pt", **change)
    with pytest.raises(ModelError, match=match):
        load_model(path)


# ------------------------------------------------------------------------------- classes vs nodata


def test_checkpoint_class_count_is_checked_against_the_nodata_label(tmp_path: Path) -> None:
    spec = ModelSpec("UNet", 2, 3, 300, {"channels": [4, 8], "strides": [2], "num_res_units": 0})
    path = save_checkpoint(tmp_path / "many.pt", build_network(spec), spec=spec)
    loaded = load_model(path)
    with pytest.raises(ModelError, match=r"output\.nodata_label=255 is a class index .*many\.pt.*0\.\.299.*65535"):
        check_nodata_label(loaded.num_classes, 255, source=str(path))
    check_nodata_label(loaded.num_classes, 65535, source=str(path))


# ------------------------------------------------------------------------------- TorchScript sidecar


@pytest.mark.parametrize(
    ("sidecar", "match"),
    [
        pytest.param("{not json", r"tiler\.json is not JSON", id="not JSON"),
        pytest.param(json.dumps([1, 2]), r"tiler\.json holds a list, not an object", id="a list"),
        pytest.param(json.dumps("spec"), r"tiler\.json holds a str, not an object", id="a string"),
    ],
)
def test_torchscript_sidecar_that_is_not_a_json_object_gives_model_error(tmp_path: Path, sidecar: str,
                                                                         match: str) -> None:
    module = torch.jit.script(build_network(SPEC).eval())
    torch.jit.save(module, str(tmp_path / "ts.pt"), _extra_files={"tiler.json": sidecar})
    with pytest.raises(ModelError, match=rf"TorchScript file .*ts\.pt: its {match}"):
        load_model(tmp_path / "ts.pt")
