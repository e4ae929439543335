from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

import tiler.model.train as train_module
from pipelines.train import main as train_main
from tiler.blend import Blender, BlendMode
from tiler.demo import prepare_demo
from tiler.engine.local import run_in_memory
from tiler.errors import ConfigError
from tiler.geometry import TileGrid
from tiler.model.checkpoint import LoadedModel, load_model
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import build_network
from tiler.model.train import (
    DOMAINS,
    TrainConfig,
    TrainResult,
    checkpoint_mismatch,
    demo_config,
    evaluate_fwiou,
    make_scene,
    model_spec,
    predict_scene,
    train,
)


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
    assert model.spec.args["norm"] == "batch"  # the checkpoint's spec rebuilds the demo's normalisation
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.network.modules())
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
        pytest.param({"domain": "slide", "norm": "group"}, r"norm='group' is unknown; choose one of", id="norm"),
    ],
)
def test_bad_train_configs_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


# ------------------------------------------------------------------ the demo networks are tile-invariant

# (spatial size, tile, overlap, uniform region [a, b) on every axis). The demo U-Nets (3-wide kernels, strides
# 2, 2, 2) see at most 22 pixels from an output pixel, and crop blending keeps only the middle of each tile,
# overlap / 2 = 32 (24 for CT) pixels from its edges: no kept pixel sees a tile edge's zero padding, so what
# is left to differ between tiles and one forward pass over the whole image is the normalisation.
INVARIANCE_CASES = {"satellite": (448, 128, 64, (64, 384)), "slide": (448, 128, 64, (64, 384)),
                    "ct": (96, 64, 48, (16, 80))}  # fmt: skip


def _demo_network(domain: str, norm: str | None) -> tuple[TileRunner, int, int]:
    """The demo spec of ``domain`` (with ``norm``, if given), random weights (seed 0), eval mode, as a tile runner."""
    cfg = demo_config(domain) if norm is None else demo_config(domain, norm=norm)
    scene = make_scene(cfg, 0)
    spec = model_spec(cfg, scene.num_classes, scene.channels)
    torch.manual_seed(0)
    net = build_network(spec).eval()
    model = LoadedModel(net, spec, Normalization("none"), scene.class_names, scene.class_colors)
    return TileRunner(model, device="cpu", batch_size=4), scene.channels, scene.num_classes


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize(
    ("norm", "invariant"),
    [
        pytest.param(None, True, id="demo-preset"),
        # the control: MONAI's default normalises each tile on its own statistics, so tiles disagree
        pytest.param("instance", False, id="instance-norm(MONAI-default)"),
    ],
)
def test_demo_networks_label_a_uniform_region_as_one_pass_over_the_image(
    domain: str, norm: str | None, invariant: bool, torch_threads: None
) -> None:
    size, tile, overlap, (a, b) = INVARIANCE_CASES[domain]
    runner, channels, classes = _demo_network(domain, norm)
    ndim = 3 if domain == "ct" else 2
    image = np.random.default_rng(0).standard_normal((channels,) + (size,) * ndim, dtype=np.float32)
    region = (slice(a, b),) * ndim  # several tiles wide, crossing tile borders on every axis
    image[(slice(None), *region)] = 0.5
    grid = TileGrid((size,) * ndim, (tile,) * ndim, (overlap,) * ndim)
    labels, probs = run_in_memory(
        image, runner, grid=grid, block=(size,) * ndim, blender=Blender(BlendMode.CROP), num_classes=classes,
        batch_size=4,
    )  # fmt: skip
    whole = runner(image[None])[0]  # one forward pass over the whole image: no tiles at all
    same = np.array_equal(labels[region], whole.argmax(0)[region])
    assert same is invariant, f"{norm or 'preset'} norm: tiled labels {'differ' if invariant else 'equal'} one pass's"
    if invariant:
        assert probs is not None
        np.testing.assert_allclose(probs, whole, rtol=0, atol=1e-5)


def test_demo_presets_use_batch_norm() -> None:
    for domain in DOMAINS:
        cfg = demo_config(domain)
        scene = make_scene(cfg, 0)
        net = build_network(model_spec(cfg, scene.num_classes, scene.channels))
        kinds = [type(m).__name__ for m in net.modules() if "Norm" in type(m).__name__]
        assert kinds and all(k.startswith("BatchNorm") for k in kinds), (domain, sorted(set(kinds)))


def test_the_demo_retrains_a_checkpoint_of_another_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo-output"
    weights = out / "models" / "satellite-demo.pt"
    small: dict[str, Any] = {"steps": 1, "batch_size": 2, "train_seeds": (1,), "scene_shape": (96, 96),
                             "crop": (64, 64)}  # fmt: skip
    train(demo_config("satellite", out=str(weights), norm="instance", **small))  # as trained before batch norm
    why = checkpoint_mismatch(demo_config("satellite"), weights)
    assert why == "its network differs from this preset's (args.norm: 'instance' → 'batch')"
    trained: list[TrainConfig] = []
    real_train = train_module.train

    def quick_train(cfg: TrainConfig, **kwargs: object) -> TrainResult:
        trained.append(cfg)
        return real_train(dataclasses.replace(cfg, **small))

    monkeypatch.setattr(train_module, "train", quick_train)
    files = prepare_demo("satellite", out=out, size=64, quiet=True)
    assert [c.out for c in trained] == [str(weights)] and files.weights == weights
    assert checkpoint_mismatch(demo_config("satellite"), weights) is None
    prepare_demo("satellite", out=out, size=64, quiet=True)  # now the preset's network: reused, not retrained
    assert len(trained) == 1
    assert "cannot be loaded" in (checkpoint_mismatch(demo_config("satellite"), tmp_path / "missing.pt") or "")
