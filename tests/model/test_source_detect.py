"""Format detection: which source reads a path, from names and magic bytes only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiler.config import parse_config
from tiler.errors import ConfigError, ModelError, ReadError
from tiler.model.checkpoint import save_torchscript
from tiler.model.sources.detect import detect_source, resolve_source


def make(root: Path, kind: str) -> Path:
    """A minimal path of ``kind`` (contents only as deep as detection looks)."""
    if kind == "bundle":
        (root / "b" / "configs").mkdir(parents=True)
        (root / "b" / "configs" / "inference.json").write_text("{}")
        return root / "b"
    if kind == "smp":
        (root / "s").mkdir()
        (root / "s" / "config.json").write_text("{}")
        (root / "s" / "model.safetensors").write_bytes(b"")
        return root / "s"
    if kind == "both":
        folder = make(root, "bundle")
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")
        return folder
    if kind == "empty-folder":
        (root / "e").mkdir()
        return root / "e"
    if kind == "torchscript":
        return save_torchscript(root / "m.pt", torch.nn.Conv2d(1, 2, 1), example=torch.zeros(1, 1, 4, 4))
    if kind == "pickle":
        torch.save({"w": torch.zeros(1)}, root / "m.pth")
        return root / "m.pth"
    path = root / f"m.{kind}"
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        pytest.param("bundle", "monai", id="bundle-folder"),
        pytest.param("smp", "smp", id="smp-folder"),
        pytest.param("onnx", "onnx", id="onnx-file"),
        pytest.param("safetensors", "state_dict", id="safetensors-file"),
        pytest.param("torchscript", "torchscript", id="torchscript-zip"),
        pytest.param("pickle", "checkpoint", id="torch-save"),
    ],
)
def test_detect_source(tmp_path: Path, kind: str, expected: str) -> None:
    assert detect_source(make(tmp_path, kind)) == expected


@pytest.mark.parametrize(
    ("kind", "format", "error", "match"),
    [
        pytest.param("both", "auto", ModelError, r"is both a MONAI bundle .* set model.format", id="ambiguous"),
        pytest.param("empty-folder", "auto", ModelError, r"neither a MONAI bundle .* nor an smp", id="neither"),
        pytest.param("smp", "monai", ModelError, r"format='monai' but .* is not a MONAI bundle", id="monai-not-bundle"),
        pytest.param("pickle", "smp", ModelError, r"format='smp' but .* is not a folder with config", id="smp-file"),
        pytest.param("bundle", "onnx", ModelError, r"format='onnx' but .* is a folder", id="onnx-folder"),
        pytest.param("bundle", "state_dict", ReadError, r"is a folder; model.format='state_dict' reads one file",
                     id="file-format-folder"),  # fmt: skip
    ],
)
def test_formats_that_do_not_fit_the_path_are_refused(
    tmp_path: Path, kind: str, format: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        resolve_source(make(tmp_path, kind), format)


def test_both_kinds_load_when_the_format_is_named(tmp_path: Path) -> None:
    folder = make(tmp_path, "both")
    assert resolve_source(folder, "monai") == "monai" and resolve_source(folder, "smp") == "smp"
    with pytest.raises(ReadError, match=r"does not exist"):
        resolve_source(tmp_path / "nothing", "auto")


@pytest.mark.parametrize("kind", ["bundle", "smp", "onnx", "safetensors", "torchscript", "pickle"])
def test_the_detector_the_loader_and_the_config_use_one_vocabulary(tmp_path: Path, kind: str) -> None:
    from typing import get_args

    from tiler.config.schema import ModelConfig
    from tiler.model.load import FORMATS, SOURCES

    assert FORMATS == get_args(ModelConfig.model_fields["format"].annotation)
    path = make(tmp_path, kind)
    assert detect_source(path) in SOURCES and resolve_source(path, "auto") == detect_source(path)


def test_a_monai_state_dict_file_is_read_by_the_state_dict_source(tmp_path: Path) -> None:
    assert resolve_source(make(tmp_path, "pickle"), "monai") == "state_dict"


BASE = {"input": {"path": "a.tif"}, "output": {"path": "o.zarr"}}


@pytest.mark.parametrize(
    ("model", "match"),
    [
        pytest.param({"format": "smp", "onnx": {"class_axis": -1}}, r"model\.onnx.*does not apply to format 'smp'",
                     id="onnx-keys-on-smp"),  # fmt: skip
        pytest.param(
            {"format": "onnx",
             "spec": {"architecture": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}},  # fmt: skip
            r"model\.spec.*does not apply to format 'onnx'",
            id="spec-on-onnx",
        ),
        pytest.param({"class_names": ["a", "b"], "class_colors": [[0, 0, 0]]}, r"model\.class_colors.*1 colours for 2",
                     id="colours"),  # fmt: skip
        pytest.param({"class_colors": [[0, 0, 256]]}, r"model\.class_colors", id="colour-range"),
        pytest.param({"onnx": {"input_layout": "nhwc"}}, r"model\.onnx\.input_layout", id="layout-name"),
    ],
)
def test_model_config_keys_of_the_sources_are_checked(model: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({**BASE, "model": {"weights": "m", **model}})


def test_model_config_accepts_each_source() -> None:
    for fmt in ("monai", "smp", "onnx"):
        assert parse_config({**BASE, "model": {"weights": "m", "format": fmt}}).model.format == fmt
    cfg = parse_config({**BASE, "model": {"weights": "m.onnx", "onnx": {"input_layout": "channels_last"}}})
    assert cfg.model.onnx is not None and cfg.model.onnx.class_axis is None
