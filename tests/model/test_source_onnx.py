"""ONNX: an exported MONAI U-Net through ``tiler run`` against sliding-window inference of the ONNX session itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from monai.networks.nets import UNet

from tests.model.sources_helpers import TILE, assert_runs_like_monai, perturb
from tiler.errors import ModelError
from tiler.model import TileRunner, load_model
from tiler.model.normalize import Normalization
from tiler.model.sources.onnx import META_KEY, OnnxOptions, metadata_entry


def unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = UNet(2, 3, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm="batch")
    return perturb(net, 0.2).eval()


class ChannelsLast(torch.nn.Module):
    """A deployment-style graph: ``(N, H, W, C)`` in, softmax probabilities ``(N, H, W, K)`` out."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x.permute(0, 3, 1, 2)), 1).permute(0, 2, 3, 1)


def export(net: torch.nn.Module, path: Path, *, channels_last: bool = False, batch: int | None = None) -> Path:
    """``torch.onnx.export`` (TorchScript exporter) with a dynamic batch axis unless ``batch`` fixes it."""
    module = ChannelsLast(net) if channels_last else net
    shape = (batch or 1, TILE, TILE, 3) if channels_last else (batch or 1, 3, TILE, TILE)
    axes = None if batch else {"image": {0: "n"}, "out": {0: "n"}}
    torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False, input_names=["image"],
                      output_names=["out"], dynamic_axes=axes)  # fmt: skip
    return path


def session_predictor(path: Path, *, channels_last: bool = False):  # type: ignore[no-untyped-def]
    """The ONNX session itself as MONAI's predictor (logits NCHW), independent of tiler's wrapper."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def predict(x: torch.Tensor) -> torch.Tensor:
        arr = x.numpy()
        if channels_last:
            probs = session.run(None, {"image": np.ascontiguousarray(arr.transpose(0, 2, 3, 1))})[0]
            return torch.from_numpy(np.log(probs.transpose(0, 3, 1, 2)))
        return torch.from_numpy(session.run(None, {"image": arr})[0])

    return predict


@pytest.mark.parametrize(
    ("channels_last", "onnx_config"),
    [
        pytest.param(False, None, id="nchw-logits"),
        pytest.param(
            True,
            {"input_layout": "channels_last", "class_axis": -1, "output": "probabilities"},
            id="nhwc-probabilities",
        ),
    ],
)
def test_onnx_runs_through_tiler_like_monai_sliding_window(
    tmp_path: Path, channels_last: bool, onnx_config: dict | None
) -> None:
    model = export(unet(), tmp_path / "unet.onnx", channels_last=channels_last)
    extra = {"onnx": onnx_config} if onnx_config else None
    assert_runs_like_monai(tmp_path, model, session_predictor(model, channels_last=channels_last), model=extra)


def test_layout_from_the_file_metadata_and_config_wins(tmp_path: Path) -> None:
    path = export(unet(), tmp_path / "nhwc.onnx", channels_last=True)
    graph = onnx.load(str(path))
    norm = Normalization("meanstd", mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    layout = OnnxOptions(input_layout="channels_last", class_axis=-1, output="probabilities")
    text = metadata_entry(normalization=norm, class_names=["a", "b", "c", "d"], options=layout)
    onnx.helper.set_model_props(graph, {META_KEY: text})
    onnx.save(graph, str(path))

    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.class_names == ("a", "b", "c", "d") and loaded.normalization == norm
    x = np.random.default_rng(0).random((3, 3, TILE, TILE), dtype=np.float32) * 10
    with torch.inference_mode():
        want = torch.softmax(unet()(torch.from_numpy(norm.apply(x, spatial_dims=2))), 1).numpy()
    np.testing.assert_allclose(TileRunner(loaded, device="cpu")(x), want, atol=1e-5)
    # the config overrides the metadata: read as logits, the probabilities give other numbers
    wrong = load_model(path, onnx={"output": "logits"})
    assert not np.allclose(TileRunner(wrong, device="cpu")(x), want, atol=1e-3)


def test_static_batch_graph_runs_any_batch(tmp_path: Path) -> None:
    net = unet()
    loaded = load_model(export(net, tmp_path / "b1.onnx", batch=1))
    x = np.random.default_rng(1).random((5, 3, TILE, TILE), dtype=np.float32)
    with torch.inference_mode():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(TileRunner(loaded, device="cpu", batch_size=3)(x), want, atol=1e-5)


@pytest.mark.parametrize(
    ("tiles", "match"),
    [
        pytest.param(
            (2, 3, 48, 48), r"takes tiles of spatial shape \[32, 32\] but got \[48, 48\]; set tiling.tile", id="tile"
        ),
        pytest.param((2, 4, 32, 32), r"reads 3 channels but the tiles have 4", id="channels"),
        pytest.param((2, 3, 32, 32, 32), r"takes 2D tiles", id="rank"),
    ],
)
def test_tiles_that_do_not_fit_the_graph_are_refused(tmp_path: Path, tiles: tuple[int, ...], match: str) -> None:
    loaded = load_model(export(unet(), tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match=match):
        TileRunner(loaded, device="cpu")(np.zeros(tiles, dtype=np.float32))


def test_unknown_onnx_key_and_damaged_file_are_refused(tmp_path: Path) -> None:
    path = export(unet(), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"unknown onnx key\(s\) \['layout'\]"):
        load_model(path, onnx={"layout": "nhwc"})
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(OSError, match=r"bad\.onnx could not be loaded by onnxruntime"):
        load_model(tmp_path / "bad.onnx")
    assert json.loads(metadata_entry(class_names=["x"])) == {"class_names": ["x"]}
