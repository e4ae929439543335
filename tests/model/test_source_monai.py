"""MONAI networks by name: any allowed monai.networks.nets class + keyword arguments + a plain state dict."""

from __future__ import annotations

import os
import typing
from pathlib import Path

import pytest
import torch
from monai.networks import nets
from safetensors.torch import save_file

from tests.model.sources_helpers import OVERLAP, TILE, assert_runs_like_monai, perturb, write_geotiff, write_job
from tiler.cli import main as cli_main
from tiler.config import MonaiArchitecture
from tiler.errors import ModelError
from tiler.model import load_model
from tiler.model.spec import ARCHITECTURES, ModelSpec, build_network, resolve_architecture

SPEC = {"architecture": "SegResNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 3,
        "args": {"init_filters": 8, "blocks_down": [1, 2], "blocks_up": [1]}}  # fmt: skip


def segresnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = nets.SegResNet(
        spatial_dims=2, in_channels=3, out_channels=3, init_filters=8, blocks_down=(1, 2), blocks_up=(1,)
    )
    return perturb(net, 0.2).eval()


@pytest.mark.parametrize(
    "suffix", [pytest.param(".pt", id="torch-save"), pytest.param(".safetensors", id="safetensors")]
)
def test_monai_class_by_name_with_state_dict_runs_like_monai_sliding_window(tmp_path: Path, suffix: str) -> None:
    net = segresnet()
    weights = tmp_path / f"segresnet{suffix}"
    if suffix == ".pt":
        torch.save(net.state_dict(), weights)
    else:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    assert_runs_like_monai(tmp_path, weights, net, model={"spec": SPEC})


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.marker,))


def test_pickle_payload_in_a_pth_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "model.pth"
    torch.save({"state_dict": segresnet().state_dict(), "callback": _Payload(str(marker))}, weights)
    image = write_geotiff(tmp_path / "scene.tif")
    job = write_job(tmp_path, weights, image, tile=(TILE, TILE), overlap=(OVERLAP, OVERLAP), block=(64, 64),
                    model={"spec": SPEC})  # fmt: skip
    assert cli_main(["--quiet", "run", str(job), "--engine", "local"]) == 2  # a model refused: bad input
    with pytest.raises(ModelError, match=r"model\.pth was refused because it is not weights-only"):
        load_model(weights, spec=SPEC)
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # control: an ordinary load runs the payload
    assert marker.exists()


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        pytest.param("SegResNet", "SegResNet", id="canonical"),
        pytest.param("Unet", "UNet", id="alias"),
        pytest.param("monai.networks.nets.BasicUnet", "BasicUNet", id="package-path"),
        pytest.param("monai.networks.nets.unet.UNet", "UNet", id="module-path"),
        pytest.param("monai.networks.nets.basic_unet.UNet", None, id="wrong-module"),
        pytest.param("DenseNet121", None, id="classifier"),
        pytest.param("os.system", None, id="foreign"),
        pytest.param("monai.bundle.ConfigParser", None, id="monai-not-a-net"),
    ],
)
def test_architecture_names_resolve_only_inside_the_allow_list(name: str, canonical: str | None) -> None:
    assert resolve_architecture(name) == canonical


def test_config_literal_lists_exactly_the_allowed_architectures() -> None:
    assert set(typing.get_args(MonaiArchitecture)) == set(ARCHITECTURES)


@pytest.mark.parametrize(
    ("architecture", "args"),
    [
        pytest.param("AttentionUnet", {"channels": [4, 8], "strides": [2]}, id="attention-unet"),
        pytest.param("SegResNetDS", {"init_filters": 4, "blocks_down": [1, 1]}, id="segresnet-ds"),
        pytest.param("VNet", {}, id="vnet-defaults"),
        pytest.param("HighResNet", {}, id="highresnet-defaults"),
    ],
)
def test_allowed_architectures_predict_one_channel_per_class(architecture: str, args: dict) -> None:
    dims = 3 if architecture == "VNet" else 2
    net = build_network(ModelSpec(architecture, dims, 1, 3, args)).eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 1, *(16,) * dims))
    out = out[0] if isinstance(out, list | tuple) else out
    assert tuple(out.shape) == (1, 3, *(16,) * dims)


def test_downloading_arguments_are_refused() -> None:
    with pytest.raises(ModelError, match=r"pretrained=True would download weights for MONAI FlexibleUNet"):
        build_network(ModelSpec("FlexibleUNet", 2, 3, 2, {"backbone": "efficientnet-b0", "pretrained": True}))
