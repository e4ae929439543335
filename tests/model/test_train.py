from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from pipelines.train import main as train_main
from tiler.errors import ConfigError
from tiler.model.checkpoint import load_model
from tiler.model.train import TrainConfig, demo_config, evaluate_fwiou, make_scene, predict_scene, train


def _tiny(domain: str, out, **kw) -> TrainConfig:
    if domain in ("satellite", "slide"):
        base = dict(
            scene_shape=(160, 160),
            crop=(32, 32),
            steps=12,
            batch_size=4,
            lr=1e-2,
            channels=(8, 16),
            strides=(2,),
        )
    else:
        base = dict(
            scene_shape=(16, 48, 48),
            crop=(8, 16, 16),
            steps=10,
            batch_size=2,
            lr=1e-2,
            channels=(4, 8),
            strides=(2,),
        )
    base.update(kw)
    return demo_config(domain, out=str(out), threads=2, num_res_units=0, **base)


@pytest.mark.parametrize("domain", ["satellite", "ct", "slide"])
def test_tiny_training_lowers_the_loss_and_writes_a_loadable_checkpoint(domain, tmp_path):
    cfg = _tiny(domain, tmp_path / f"{domain}.pt")
    result = train(cfg)
    assert len(result.losses) == cfg.steps
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3])
    model = load_model(result.checkpoint_path)
    scene = make_scene(cfg, 0)
    assert model.class_names == scene.class_names
    assert model.spec is not None and model.spec.spatial_dims == len(cfg.scene_shape)
    expected_kind = "window" if domain == "ct" else "meanstd"
    assert model.normalization.kind == expected_kind and len(model.normalization.mean) == scene.channels
    held_out = make_scene(cfg, 9)
    score = evaluate_fwiou(model, held_out, roi=cfg.crop)
    image, truth = held_out.read()
    pred, keep = predict_scene(model, image, roi=cfg.crop).ravel(), truth.ravel() != held_out.nodata_label
    assert score == pytest.approx(jaccard_score(truth.ravel()[keep], pred[keep], average="weighted"), abs=1e-12)


def test_training_is_deterministic_for_a_seed(tmp_path):
    a = train(_tiny("satellite", tmp_path / "a.pt", steps=3))
    b = train(_tiny("satellite", tmp_path / "b.pt", steps=3))
    assert a.losses == b.losses
    sa = torch.load(a.checkpoint_path, weights_only=True)["state_dict"]
    sb = torch.load(b.checkpoint_path, weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_statistics_come_from_valid_pixels(tmp_path):
    cfg = _tiny("satellite", tmp_path / "m.pt", steps=1, train_seeds=(1, 2))
    model = load_model(train(cfg).checkpoint_path)
    reads = [make_scene(cfg, seed).read() for seed in cfg.train_seeds]
    for c in range(4):
        valid = np.concatenate([img[c][lab != 255] for img, lab in reads])
        assert model.normalization.mean[c] == pytest.approx(valid.mean(), rel=1e-6)
        assert model.normalization.std[c] == pytest.approx(valid.std(), rel=1e-6)


def test_cli_trains_from_yaml(tmp_path, capsys):
    out = tmp_path / "cli.pt"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "domain: satellite\nscene_shape: [96, 96]\ncrop: [32, 32]\nsteps: 2\nbatch_size: 2\n"
        "channels: [4, 8]\nstrides: [2]\nnum_res_units: 0\n"
    )
    assert train_main([str(cfg), "--out", str(out), "--log-every", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoint"] == str(out) and summary["steps"] == 2
    assert load_model(out).spec.in_channels == 4


def test_cli_names_unknown_yaml_keys(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("domain: ct\nepochs: 3\n")
    assert train_main([str(cfg)]) == 2
    assert "unknown key(s) ['epochs']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"domain": "xray"}, r"domain='xray' is unknown", id="domain"),
        pytest.param({"domain": "satellite", "crop": (30, 30)}, r"multiple of the U-Net's total stride 8", id="crop"),
        pytest.param(
            {"domain": "ct", "scene_shape": (16, 64, 64), "crop": (64, 64)},
            r"crop=\(64, 64\) must hold 3 positive sizes",
            id="ct-2d-crop",
        ),
        pytest.param({"domain": "satellite", "steps": 0}, r"steps=0 must be >= 1", id="steps"),
    ],
)
def test_bad_train_configs_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)
