"""MONAI bundles: a real bundle through ``tiler run`` against MONAI's own reading of it, and refused bundles."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from tests.model.sources_helpers import (
    MIN_AGREEMENT,
    agreement,
    monai_labels,
    read_image,
    run_tiler,
    write_job,
    write_nifti,
)
from tiler.cli import main as cli_main
from tiler.errors import ModelError
from tiler.model import load_model
from tiler.model.normalize import Normalization

NETWORK_DEF = {
    "_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16],
    "strides": [2, 2], "num_res_units": 1, "norm": "batch",
}  # fmt: skip
SCALE = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0,
         "clip": True}  # fmt: skip


def inference_config(network_def: Any = None, **extra: Any) -> dict[str, Any]:
    """An inference.json as MONAI's model zoo writes them: imports, devices and expressions around network_def."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": NETWORK_DEF if network_def is None else network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                SCALE,
            ],
        },  # fmt: skip
        **extra,
    }


def write_bundle(root: Path, config: dict[str, Any], *, state: Any = None, seed: int = 0) -> Path:
    """A bundle folder: configs/inference.json, configs/metadata.json, models/model.pt."""
    bundle = root / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    channels = {"0": "background", "1": "liver", "2": "tumour"}
    meta = {"network_data_format": {"outputs": {"pred": {"type": "image", "num_channels": 3, "channel_def": channels}}}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    if state is None:
        torch.manual_seed(seed)
        net = ConfigParser({"network_def": NETWORK_DEF}).get_parsed_content("network_def")
        with torch.no_grad():  # move weights and batch-norm statistics off their init so a wrong load would show
            for p in net.parameters():
                p.add_(0.2 * torch.randn_like(p))
            for name, b in net.named_buffers():
                if "running_mean" in name:
                    b.add_(0.1 * torch.randn_like(b))
        state = net.state_dict()
    torch.save(state, bundle / "models" / "model.pt")
    return bundle


def monai_reads(bundle: Path) -> tuple[torch.nn.Module, Any]:
    """The network and the intensity transform as MONAI itself builds them from the bundle (trusted here)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return net.eval(), parser.get_parsed_content("preprocessing#transforms#2")


def test_bundle_runs_through_tiler_like_monai_sliding_window(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, inference_config())
    volume = write_nifti(tmp_path / "ct.nii.gz")
    config = write_job(tmp_path, bundle, volume, tile=(16, 16, 16), overlap=(4, 4, 4), block=(24, 24, 24))
    labels = run_tiler(config)

    net, scale = monai_reads(bundle)
    image = scale({"image": torch.from_numpy(read_image(volume))})["image"]
    expected = monai_labels(np.asarray(image), net, tile=(16, 16, 16), overlap=4)
    assert np.bincount(expected.ravel()).max() < 0.9 * expected.size, "a one-class prediction would test nothing"
    assert agreement(labels, expected) >= MIN_AGREEMENT


def test_bundle_inferer_supplies_the_tiling_a_job_leaves_out(tmp_path: Path) -> None:
    from tiler.config import load_config

    inferer = {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 4, "overlap": 0.25,
               "mode": "gaussian"}  # fmt: skip
    bundle = write_bundle(tmp_path, inference_config(roi=[16, 16, 16], inferer=inferer))
    volume = write_nifti(tmp_path / "ct.nii.gz")
    job = {"input": {"path": str(volume), "mask": "none"}, "engine": {"skip_empty": False},
           "model": {"weights": str(bundle), "device": "cpu", "threads": 1},
           "tiling": {"block": [24, 24, 24]}, "output": {"path": str(tmp_path / "out.zarr"), "chunks": 12}}  # fmt: skip
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    cfg = load_config(config)
    assert (cfg.tiling.tile, cfg.tiling.overlap, cfg.tiling.blend) == ((16, 16, 16), (4, 4, 4), "gaussian")
    labels = run_tiler(config)

    net, scale = monai_reads(bundle)
    image = scale({"image": torch.from_numpy(read_image(volume))})["image"]
    expected = monai_labels(np.asarray(image), net, tile=(16, 16, 16), overlap=4)
    assert agreement(labels, expected) >= MIN_AGREEMENT


def test_bundle_package_metadata_and_overrides(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, inference_config())
    loaded = load_model(bundle)
    assert loaded.format == "monai" and loaded.spec is not None and loaded.spec.architecture == "UNet"
    assert loaded.class_names == ("background", "liver", "tumour")
    # ScaleIntensityRanged(a_min=-200, a_max=300, 0..1, clip) as tiler's fixed window
    assert loaded.normalization == Normalization("window", mean=(-200.0,), std=(500.0,), window=(-200.0, 300.0))
    given = Normalization("meanstd", mean=(0.0,), std=(100.0,))
    over = load_model(bundle, normalization=given, class_names=["a", "b", "c"], class_colors=[[1, 2, 3]] * 3)
    assert over.normalization == given and over.class_names == ("a", "b", "c") and over.class_colors[0] == (1, 2, 3)


def test_bundle_with_monai_aliases_and_full_target_path(tmp_path: Path) -> None:
    net_def = {**NETWORK_DEF, "_target_": "monai.networks.nets.unet.Unet"}
    bundle = write_bundle(tmp_path, inference_config(net_def))
    assert load_model(bundle).spec.architecture == "UNet"  # type: ignore[union-attr]


class _Pickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.marker,))


def _expr(marker: Path) -> str:
    return f"$__import__('os').mkdir({str(marker)!r}) or [4, 8, 16]"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(
            lambda m: inference_config({**NETWORK_DEF, "channels": _expr(m)}),
            r"network_def\.channels is .*refused: a '\$' string is a Python expression",
            id="dollar-expression",
        ),
        pytest.param(
            lambda m: inference_config({**NETWORK_DEF, "channels": "@evil"}, evil=_expr(m)),
            r"network_def\.channels is '@evil', refused: an '@' string is a reference",
            id="at-reference",
        ),
        pytest.param(
            lambda m: inference_config({"_target_": "os.system", "command": f"mkdir {m}"}),
            r"network_def\._target_ is 'os\.system', refused: tiler instantiates only these monai\.networks\.nets",
            id="foreign-target",
        ),
        pytest.param(
            lambda m: inference_config({**NETWORK_DEF, "act": {"_target_": "os.mkdir", "path": str(m)}}),
            r"network_def\.act has its own _target_ 'os\.mkdir', refused",
            id="nested-target",
        ),
        pytest.param(
            lambda m: inference_config(_expr(m)),
            r"network_def is .*refused: a '\$' string is a Python expression",
            id="whole-network-def-expression",
        ),
    ],
)
def test_malicious_bundle_config_is_refused_and_its_payload_never_runs(
    tmp_path: Path, make: Callable[[Path], dict[str, Any]], match: str
) -> None:
    marker = tmp_path / "payload-ran"
    bundle = write_bundle(tmp_path, make(marker))
    with pytest.raises(ModelError, match=match):
        load_model(bundle)
    volume = write_nifti(tmp_path / "ct.nii.gz")
    job = write_job(tmp_path, bundle, volume, tile=(16,) * 3, overlap=(4,) * 3, block=(24,) * 3)
    assert cli_main(["--quiet", "run", str(job), "--engine", "local"]) == 2  # a model refused: bad input
    assert not marker.exists()
    # Control: MONAI's own parser runs the payload, so the assertion above could have failed.
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    with contextlib.suppress(Exception):  # some payloads fail after running; only their side effect matters
        parser.get_parsed_content("network_def")
    assert marker.exists()


def test_pickle_payload_in_bundle_weights_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    bundle = write_bundle(tmp_path, inference_config(), state={"weights": _Pickled(str(marker))})
    with pytest.raises(ModelError, match=r"model\.pt was refused because it is not weights-only"):
        load_model(bundle)
    assert not marker.exists()
    torch.load(bundle / "models" / "model.pt", weights_only=False)  # control: a plain load runs it
    assert marker.exists()


@pytest.mark.parametrize(
    ("net_def", "match"),
    [
        pytest.param({**NETWORK_DEF, "_requires_": "@x"}, r"network_def\._requires_ is refused", id="requires"),
        pytest.param({k: v for k, v in NETWORK_DEF.items() if k != "out_channels"},
                     r"network_def misses \['out_channels'\]", id="missing-shape"),  # fmt: skip
        pytest.param({**NETWORK_DEF, "_target_": "DenseNet121"}, r"'DenseNet121', refused", id="classifier"),
        pytest.param(
            {**NETWORK_DEF, "channels": [4, 8]}, r"model\.pt: tensor .* does not exist in .*UNet", id="weights-mismatch"
        ),
    ],
)
def test_bad_bundle_network_def_names_the_key(tmp_path: Path, net_def: dict[str, Any], match: str) -> None:
    state = None
    if net_def.get("channels") == [4, 8]:
        state = ConfigParser({"network_def": NETWORK_DEF}).get_parsed_content("network_def").state_dict()
    bundle = write_bundle(tmp_path, inference_config(net_def), state=state)
    with pytest.raises(ModelError, match=match):
        load_model(bundle)


def test_untranslatable_preprocessing_is_refused_unless_normalization_is_given(tmp_path: Path) -> None:
    config = inference_config()
    config["preprocessing"]["transforms"][2] = {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}
    bundle = write_bundle(tmp_path, config)
    with pytest.raises(ModelError, match=r"preprocessing applies \['NormalizeIntensityd'\].*set model\.normalization"):
        load_model(bundle)
    assert load_model(bundle, normalization=Normalization("meanstd", mean=(0.0,), std=(1.0,))).format == "monai"
