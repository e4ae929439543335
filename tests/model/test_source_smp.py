"""smp: a ``save_pretrained`` U-Net through ``tiler run`` against MONAI's sliding window over smp's own loading.

The end-to-end tests need segmentation_models_pytorch importable (it needs a torchvision built for the
installed torch); the refusals are checked before smp is imported and run everywhere.
"""

from __future__ import annotations

import json
import pydoc
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from tests.model.sources_helpers import OVERLAP, TILE, assert_runs_like_monai, perturb, write_geotiff, write_job
from tiler.cli import main as cli_main
from tiler.errors import ModelError
from tiler.model import TileRunner, load_model


def import_smp() -> ModuleType:
    from tiler.model.sources.smp import import_smp as tiler_import_smp

    return tiler_import_smp()


def save_unet(folder: Path, *, classes: int = 3, seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    """A small smp U-Net (resnet18 encoder, depth 3, no pretrained weights), perturbed, saved with save_pretrained."""
    smp = import_smp()
    torch.manual_seed(seed)
    net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=3,
                   classes=classes, **kwargs)  # fmt: skip
    perturb(net, 0.1)
    with torch.no_grad():  # batch-norm statistics off their init too, so a wrong load would show
        for name, b in net.named_buffers():
            if "running_var" in name:
                b.mul_(0.5)
    net.eval().save_pretrained(folder)
    return net


def test_smp_folder_runs_through_tiler_like_monai_sliding_window(tmp_path: Path) -> None:
    folder = tmp_path / "smp-unet"
    save_unet(folder)
    own = import_smp().from_pretrained(str(folder)).eval()  # smp's own loader (trusted here)
    assert_runs_like_monai(tmp_path, folder, own)


def test_one_class_smp_model_becomes_background_and_foreground(tmp_path: Path) -> None:
    net = save_unet(tmp_path / "binary", classes=1, activation="sigmoid")
    loaded = load_model(tmp_path / "binary")
    assert loaded.format == "smp" and loaded.num_classes == 2
    x = np.random.default_rng(0).random((2, 3, TILE, TILE), dtype=np.float32)
    with torch.inference_mode():
        p = net(torch.from_numpy(x)).numpy()  # sigmoid applied by smp's activation
    probs = TileRunner(loaded, device="cpu")(x)
    np.testing.assert_allclose(probs[:, 1:], p, atol=1e-5)
    np.testing.assert_allclose(probs[:, :1], 1 - p, atol=1e-5)


def test_smp_encoder_weights_are_never_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imagenet-trained"
    save_unet(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "encoder_weights": "imagenet"}))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a download was attempted")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert load_model(folder).format == "smp"


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")  # never read: the config is refused first
    return folder


def test_smp_config_naming_a_class_outside_smp_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    config = {"_model_class": "os.mkdir", "path": str(marker)}
    folder = write_config(tmp_path / "evil", config)
    with pytest.raises(ModelError, match=r"_model_class is 'os\.mkdir', refused: tiler builds only smp's own"):
        load_model(folder)
    job = write_job(tmp_path, folder, write_geotiff(tmp_path / "scene.tif"), tile=(TILE, TILE),
                    overlap=(OVERLAP, OVERLAP), block=(64, 64))  # fmt: skip
    assert cli_main(["--quiet", "run", str(job), "--engine", "local"]) == 2  # a model refused: bad input
    assert not marker.exists()
    # Control: a loader that locates the class by name runs the payload, so the assertion above could fail.
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    pydoc.locate(config["_model_class"])(**kwargs)  # type: ignore[misc, operator]
    assert marker.exists()


@pytest.mark.parametrize(
    ("config", "match"),
    [
        pytest.param({"_model_class": "from_pretrained"}, r"'from_pretrained', refused", id="smp-function"),
        pytest.param({"_model_class": "create_model"}, r"'create_model', refused", id="smp-factory"),
        pytest.param({"encoder_name": "resnet18"}, r"_model_class is None; save_pretrained writes", id="missing"),
        pytest.param([1, 2], r"holds a list, not a mapping", id="not-a-mapping"),
    ],
)
def test_bad_smp_config_is_refused(tmp_path: Path, config: Any, match: str) -> None:
    folder = write_config(tmp_path / "m", config)
    with pytest.raises(ModelError, match=match):
        load_model(folder)
