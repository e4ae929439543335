"""The trainer: fits a small MONAI U-Net on generated scenes and writes a project checkpoint.

Satellite models are 2D U-Nets trained on :func:`tiler.scenes.satellite_scene`; CT models are 3D
U-Nets trained on :func:`tiler.scenes.ct_scene`. Scenes are generated in memory; random crops are
augmented with flips, rot90 (in the (H, W) plane) and intensity jitter; the loss is MONAI's
``DiceCELoss`` under a one-cycle learning-rate schedule. Normalisation statistics are measured on the
training scenes and stored in the checkpoint. Also here: a small sliding-window evaluator giving
frequency-weighted IoU on a held-out scene (scored by :mod:`tiler.metrics`, imported when it runs).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

from tiler.errors import ConfigError, TilerError
from tiler.model.checkpoint import LoadedModel, load_model, save_checkpoint
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import ModelSpec, build_network
from tiler.scenes import Scene, ct_scene, satellite_scene, slide_scene

__all__ = [
    "DOMAINS", "TrainConfig", "TrainResult", "checkpoint_mismatch", "demo_config", "evaluate_fwiou", "predict_scene",
    "train",
]  # fmt: skip

DOMAINS = ("satellite", "ct", "slide")
PLANAR = ("satellite", "slide")
CT_WINDOW = (-200.0, 400.0)
NORMS = ("batch", "instance")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        domain: ``"satellite"`` (2D), ``"slide"`` (2D RGB) or ``"ct"`` (3D).
        out: Checkpoint path to write.
        scene_shape: Spatial shape of each generated training scene, ``(H, W)`` or ``(D, H, W)``.
        train_seeds: Seeds of the training scenes (evaluate on another seed).
        crop: Training crop size per spatial axis.
        steps: Optimiser steps.
        batch_size: Crops per step.
        lr: Peak learning rate of the one-cycle schedule.
        channels: U-Net channels per level.
        strides: U-Net strides between levels.
        num_res_units: Residual units per U-Net block.
        norm: The U-Net's normalisation layers: ``"batch"`` (running statistics at inference, so a pixel's
            label does not depend on the rest of its tile) or ``"instance"`` (MONAI's default: each tile is
            normalised on its own statistics, so a uniform region crossing tiles can change label per tile).
        seed: Seed of the weights, crops and augmentation.
        threads: ``torch.set_num_threads`` during training (None keeps torch's default).
        bands: Satellite bands (4 to 6).
        foreground_fraction: Share of crops centred on a non-background voxel (CT).

    """

    domain: str
    out: str = "model.pt"
    scene_shape: tuple[int, ...] = (1024, 1024)
    train_seeds: tuple[int, ...] = (1,)
    crop: tuple[int, ...] = (128, 128)
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "batch"
    seed: int = 0
    threads: int | None = 2
    bands: int = 4
    foreground_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ConfigError(f"train domain={self.domain!r} is unknown; choose one of {list(DOMAINS)}.")
        for name in ("scene_shape", "train_seeds", "crop", "channels", "strides"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,)
            object.__setattr__(self, name, tuple(int(v) for v in value))
        ndim = 2 if self.domain in PLANAR else 3
        for name in ("scene_shape", "crop"):
            value = getattr(self, name)
            if len(value) != ndim or any(v < 1 for v in value):
                raise ConfigError(f"train {name}={value} must hold {ndim} positive sizes for domain={self.domain!r}.")
        if any(c > s for c, s in zip(self.crop, self.scene_shape, strict=True)):
            raise ConfigError(f"train crop={self.crop} is larger than scene_shape={self.scene_shape}; lower the crop.")
        multiple = int(np.prod(self.strides))
        if any(c % multiple for c in self.crop):
            raise ConfigError(
                f"train crop={self.crop} must be a multiple of the U-Net's total stride {multiple} on every axis."
            )
        if len(self.channels) != len(self.strides) + 1:
            raise ConfigError(
                f"train channels={self.channels} needs exactly one more entry than strides={self.strides}."
            )
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train {name}={getattr(self, name)} must be >= 1.")
        if not self.lr > 0:
            raise ConfigError(f"train lr={self.lr} must be > 0.")
        if not self.train_seeds:
            raise ConfigError("train train_seeds is empty; give at least one scene seed.")
        if self.norm not in NORMS:
            raise ConfigError(
                f"train norm={self.norm!r} is unknown; choose one of {list(NORMS)} (batch keeps tiles consistent)."
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "train config") -> TrainConfig:
        """Build from a mapping (e.g. YAML), naming unknown keys; missing keys take the demo preset."""
        if not isinstance(data, Mapping) or "domain" not in data:
            raise ConfigError(f"{source} must be a mapping with at least the key 'domain' ({list(DOMAINS)}).")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"{source} has unknown key(s) {unknown}; valid keys are {sorted(valid)}.")
        base = demo_config(str(data["domain"]))
        return dataclasses.replace(base, **{k: v for k, v in data.items() if k != "domain"})


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        checkpoint_path: The project checkpoint written.
        losses: Loss per step.
        seconds: Wall time of the run (scene generation included).
        config: The config trained.

    """

    checkpoint_path: Path
    losses: list[float]
    seconds: float
    config: TrainConfig | None = field(default=None, repr=False)


def demo_config(domain: str, **overrides: Any) -> TrainConfig:
    """Return the preset of a domain: small, fast on 2 CPU cores, accurate on held-out scenes.

    Every preset uses batch norm: at inference it applies the running statistics of training, so a tile's
    labels never depend on what else that tile holds (instance norm would normalise each tile on its own).
    """
    if domain == "satellite":
        cfg = TrainConfig(
            domain="satellite", out="models/satellite.pt", scene_shape=(1024, 1024), train_seeds=(1, 2),
            crop=(128, 128), steps=150, batch_size=8, lr=3e-3, channels=(8, 16, 32, 64), strides=(2, 2, 2),
            num_res_units=0, norm="batch",
        )  # fmt: skip
    elif domain == "ct":
        cfg = TrainConfig(
            domain="ct", out="models/ct.pt", scene_shape=(48, 160, 160), train_seeds=(1, 2),
            crop=(32, 64, 64), steps=200, batch_size=4, lr=3e-3, channels=(8, 16, 32, 64), strides=(2, 2, 2),
            num_res_units=0, norm="batch",
        )  # fmt: skip
    elif domain == "slide":
        cfg = TrainConfig(
            domain="slide", out="models/slide.pt", scene_shape=(1024, 1024), train_seeds=(1, 2),
            crop=(128, 128), steps=150, batch_size=8, lr=3e-3, channels=(8, 16, 32, 64), strides=(2, 2, 2),
            num_res_units=0, norm="batch",
        )  # fmt: skip
    else:
        raise ConfigError(f"train domain={domain!r} is unknown; choose one of {list(DOMAINS)}.")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


# ---------------------------------------------------------------------------------- data


def make_scene(cfg: TrainConfig, seed: int) -> Scene:
    """Return the generated scene of ``cfg``'s domain and shape with ``seed``."""
    if cfg.domain == "satellite":
        return satellite_scene(cfg.scene_shape, seed=seed, bands=cfg.bands)
    if cfg.domain == "slide":
        return slide_scene(cfg.scene_shape, seed=seed)
    return ct_scene(cfg.scene_shape, seed=seed)


def _fit_normalization(cfg: TrainConfig, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Normalization:
    if cfg.domain in PLANAR:
        return Normalization.fit(images, "meanstd", masks=[lab != 255 for lab in labels])
    return Normalization.fit(images, "window", window=CT_WINDOW)


def _sample_crop(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One crop ``(C, *crop)``, ``crop`` avoiding nodata (satellite) or centred on foreground (CT)."""
    shape, crop = labels.shape, cfg.crop
    best: tuple[int, tuple[slice, ...]] | None = None
    for _ in range(50):
        if cfg.domain == "ct" and rng.random() < cfg.foreground_fraction:
            fg = np.flatnonzero(labels.ravel() > 0)
            if fg.size:
                centre = np.unravel_index(int(fg[rng.integers(fg.size)]), shape)
                start = [int(np.clip(c - k // 2, 0, n - k)) for c, k, n in zip(centre, crop, shape, strict=True)]
            else:
                start = [int(rng.integers(0, n - k + 1)) for n, k in zip(shape, crop, strict=True)]
        else:
            start = [int(rng.integers(0, n - k + 1)) for n, k in zip(shape, crop, strict=True)]
        sl = tuple(slice(a, a + k) for a, k in zip(start, crop, strict=True))
        bad = int((labels[sl] == 255).sum())
        if best is None or bad < best[0]:
            best = (bad, sl)
        if bad == 0:
            break
    sl = best[1] if best is not None else tuple(slice(0, k) for k in crop)
    lab = labels[sl].copy()
    lab[lab == 255] = 0  # only when no clean crop was found in 50 tries
    return image[(slice(None), *sl)], lab


def _augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flips on every spatial axis, rot90 in the (H, W) plane and intensity jitter; ``x`` normalised."""
    nd = y.ndim
    for axis in range(nd):
        if rng.random() < 0.5:
            x = np.flip(x, axis + 1)
            y = np.flip(y, axis)
    k = int(rng.integers(4))
    if k:
        x = np.rot90(x, k, axes=(nd - 1, nd))
        y = np.rot90(y, k, axes=(nd - 2, nd - 1))
    x = x * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.1, 0.1))
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


# ---------------------------------------------------------------------------------- training


def model_spec(cfg: TrainConfig, num_classes: int, in_channels: int) -> ModelSpec:
    """Return the U-Net spec a config trains."""
    return ModelSpec(
        "UNet",
        2 if cfg.domain in PLANAR else 3,
        in_channels,
        num_classes,
        {"channels": list(cfg.channels), "strides": list(cfg.strides), "num_res_units": cfg.num_res_units,
         "norm": cfg.norm},
    )  # fmt: skip


def _flat_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec dict with its constructor arguments as ``args.<name>`` keys beside the other keys."""
    flat = {k: v for k, v in spec.items() if k != "args"}
    flat.update({f"args.{k}": v for k, v in (spec.get("args") or {}).items()})
    return flat


def checkpoint_mismatch(cfg: TrainConfig, path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` is not the network ``cfg`` trains, or None when it is.

    The spec stored in the checkpoint (architecture, dimensions, channels, classes and every constructor
    argument, ``norm`` included) must equal :func:`model_spec` of ``cfg``.
    """
    try:
        stored = load_model(path).spec
    except TilerError as err:
        return f"it cannot be loaded ({str(err).splitlines()[0]})"
    scene = make_scene(cfg, cfg.train_seeds[0])
    wanted = model_spec(cfg, scene.num_classes, scene.channels).to_dict()
    found = stored.to_dict() if stored is not None else {}
    if found == wanted:
        return None
    have, want = _flat_spec(found), _flat_spec(wanted)
    diffs = [f"{k}: {have.get(k)!r} → {want.get(k)!r}" for k in sorted({*have, *want}) if have.get(k) != want.get(k)]
    return "its network differs from this preset's (" + "; ".join(diffs) + ")"


def train(cfg: TrainConfig, *, log_every: int = 0) -> TrainResult:
    """Train a U-Net on generated scenes and write a project checkpoint to ``cfg.out``.

    Args:
        cfg: The run's config.
        log_every: Print the mean loss every this many steps (0: silent).

    Returns:
        The checkpoint path, the loss per step and the wall time.

    """
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        scenes = [make_scene(cfg, s) for s in cfg.train_seeds]
        data = [sc.read() for sc in scenes]
        images = [d[0] for d in data]
        labels = [d[1] for d in data]
        norm = _fit_normalization(cfg, images, labels)
        spatial = len(cfg.scene_shape)
        normed = [norm.apply(img, spatial_dims=spatial) for img in images]
        scene = scenes[0]
        spec = model_spec(cfg, scene.num_classes, scene.channels)
        net = build_network(spec)
        net.train()
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.2)
        losses: list[float] = []
        for step in range(cfg.steps):
            xs, ys = [], []
            for _ in range(cfg.batch_size):
                i = int(rng.integers(len(normed)))
                x, y = _sample_crop(rng, normed[i], labels[i], cfg)
                x, y = _augment(rng, x, y)
                xs.append(x)
                ys.append(y)
            xb = torch.from_numpy(np.stack(xs))
            yb = torch.from_numpy(np.stack(ys).astype(np.int64))[:, None]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if log_every and (step + 1) % log_every == 0:
                recent = float(np.mean(losses[-log_every:]))
                print(
                    f"step {step + 1}/{cfg.steps} loss {recent:.4f} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
        net.eval()
        path = save_checkpoint(
            cfg.out,
            net,
            spec=spec,
            normalization=norm,
            class_names=scene.class_names,
            class_colors=scene.class_colors,
        )
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
    return TrainResult(path, losses, time.perf_counter() - t0, cfg)


# ---------------------------------------------------------------------------------- evaluation


def predict_scene(model: LoadedModel, image: np.ndarray, *, roi: Sequence[int], overlap: float = 0.25,
                  batch_size: int = 8) -> np.ndarray:  # fmt: skip
    """Class labels of a whole in-memory image ``(C, *S)`` by gaussian-blended sliding windows."""
    runner = TileRunner(model, device="cpu", batch_size=batch_size)

    def predictor(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(runner(t.numpy()))

    x = torch.from_numpy(image.astype(np.float32))[None]
    with torch.inference_mode():
        probs = sliding_window_inference(
            x, tuple(roi), batch_size, predictor, overlap=overlap, mode="gaussian", padding_mode="reflect"
        )
    return probs[0].argmax(0).numpy().astype(np.uint8)  # type: ignore[index]


def evaluate_fwiou(model: LoadedModel, scene: Scene, *, roi: Sequence[int], overlap: float = 0.25) -> float:
    """FWIoU of ``model`` on a generated ``scene`` (nodata excluded), scored by :mod:`tiler.metrics`."""
    from tiler.metrics import confusion_matrix, scores_from_confusion

    image, truth = scene.read()
    pred = predict_scene(model, image, roi=roi, overlap=overlap)
    counts = confusion_matrix(truth, pred, num_classes=scene.num_classes, ignore_index=scene.nodata_label)
    return scores_from_confusion(counts).fwiou
