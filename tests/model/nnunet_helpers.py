"""nnU-Net v2 results folders written as nnU-Net writes them, CT-like volumes, and nnU-Net's own predictor.

A folder holds ``dataset.json`` (nnU-Net's ``generate_dataset_json``), ``plans.json`` (nnU-Net v2's layout:
``configurations`` with ``architecture`` entries, transposes, foreground intensities; checked by
nnU-Net's ``PlansManager`` when its predictor loads it) and per fold ``checkpoint_final.pth``: the dict
``nnUNetTrainer.save_checkpoint`` pickles, with the ``network_weights`` of a ``PlainConvUNet`` built by
nnU-Net's ``get_network_from_plans`` and the numpy scalars its logger records. Networks are tiny
(features 4-8-16) so that every comparison runs in seconds on a CPU.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import yaml
from scipy.ndimage import gaussian_filter

TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__{configuration}"
LABELS = {"background": 0, "organ": 1, "lesion": 2}
CT_PROPERTIES = {
    "max": 400.0, "mean": 95.0, "median": 90.0, "min": -160.0, "percentile_00_5": -60.0, "percentile_99_5": 260.0,
    "std": 55.0,
}  # fmt: skip
FEATURES = [8, 16, 32]


def _architecture(dim: int, features: Sequence[int]) -> dict[str, Any]:
    conv, norm = f"torch.nn.modules.conv.Conv{dim}d", f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": len(features), "features_per_stage": list(features), "conv_op": conv,
            "kernel_sizes": [[3] * dim] * len(features), "strides": [[1] * dim] + [[2] * dim] * (len(features) - 1),
            "n_conv_per_stage": [2] * len(features), "n_conv_per_stage_decoder": [2] * (len(features) - 1),
            "conv_bias": True, "norm_op": norm, "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }  # fmt: skip


def _configuration(
    name: str, patch: Sequence[int], spacing: Sequence[float], schemes: Sequence[str], features: Sequence[int]
) -> dict[str, Any]:
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 12 if len(patch) == 2 else 2, "patch_size": list(patch),
        "median_image_size_in_voxels": [48] * len(patch), "spacing": list(spacing),
        "normalization_schemes": list(schemes), "use_mask_for_norm": [False] * len(schemes),
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling, "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": _architecture(len(patch), features), "batch_dice": len(patch) == 3,
    }  # fmt: skip


def make_plans(
    *,
    spacing: Sequence[float],
    transpose_forward: Sequence[int] = (0, 1, 2),
    patch3d: Sequence[int] = (16, 32, 32),
    patch2d: Sequence[int] = (32, 32),
    schemes: Sequence[str] = ("CTNormalization",),
    features: Sequence[int] = FEATURES,
) -> dict[str, Any]:
    """nnU-Net v2 plans: ``spacing`` in the image's (z, y, x) order; patches and spacings stored transposed."""
    tf = list(transpose_forward)
    tb = [tf.index(i) for i in range(3)]
    spacing_t = [float(spacing[i]) for i in tf]
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing_t, "original_median_shape_after_transp": [32, 48, 48],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": tf, "transpose_backward": tb,
        "configurations": {
            "2d": _configuration("2d", patch2d, spacing_t[1:], schemes, features),
            "3d_fullres": _configuration("3d_fullres", patch3d, spacing_t, schemes, features),
        },
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): dict(CT_PROPERTIES) for c in range(len(schemes))},
    }  # fmt: skip


def _logging() -> dict[str, list[Any]]:
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    logger = LocalLogger()
    dice = [np.float64(0.5), np.float64(0.25)]
    for key, value in (("mean_fg_dice", np.nanmean(dice)), ("ema_fg_dice", np.float64(0.375)),
                       ("dice_per_class_or_region", dice), ("train_losses", np.mean(np.float32([0.9, 0.7]))),
                       ("val_losses", np.float32(0.8)), ("lrs", 0.01), ("epoch_start_timestamps", 1.0),
                       ("epoch_end_timestamps", 2.0)):  # fmt: skip
        logger.log(key, value, 0)
    return logger.get_checkpoint()


def fit_head(network: torch.nn.Module, dim: int, channels: int = 1) -> None:
    """Fit the last 1×1 layer to :func:`ct_labels` by least squares on the body's features (a "trained" head).

    A random network's classes change every few voxels, so a large share of voxels nearly tie and nnU-Net's
    float16 sums decide them; a head fitted to the anatomy gives smooth regions, as trained models do.
    """
    volume = ct_volume()
    x = torch.from_numpy(((np.clip(volume, -60, 260) - 95) / 55).astype(np.float32))
    x = x[None, None] if dim == 3 else x[:, None]
    x = x.expand(x.shape[0], channels, *x.shape[2:])
    head = network.decoder.seg_layers[-1]
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))
    with torch.no_grad():
        network.eval()(x)
    hook.remove()
    feats = seen[-1].movedim(1, -1).reshape(-1, seen[-1].shape[1]).double()
    design = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)
    labels = torch.from_numpy(ct_labels()).reshape(-1)
    target = torch.nn.functional.one_hot(labels, 3).double() * 8 - 4
    rows = (1.0 / torch.bincount(labels, minlength=3).double())[labels].sqrt()[:, None]  # classes weigh the same
    solution = torch.linalg.lstsq(design * rows, target * rows).solution  # (F + 1, K)
    with torch.no_grad():
        head.weight.copy_(solution[:-1].T.reshape(head.weight.shape).float())
        head.bias.copy_(solution[-1].float())


def write_checkpoint(
    path: Path,
    plans: dict[str, Any],
    dataset: dict[str, Any],
    configuration: str,
    fold: int | str,
    *,
    seed: int,
    fit: bool = True,
) -> torch.nn.Module:
    """``checkpoint_final.pth`` as ``nnUNetTrainer.save_checkpoint`` writes it; returns the network.

    With ``fit`` the last layer is fitted to :func:`ct_labels` (three classes), else the network stays random.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    conf = PlansManager(copy.deepcopy(plans)).get_configuration(configuration)
    torch.manual_seed(seed)
    network = get_network_from_plans(
        conf.network_arch_class_name, conf.network_arch_init_kwargs, conf.network_arch_init_kwargs_req_import,
        len(dataset["channel_names"]), len([k for k in dataset["labels"] if k != "ignore"]), allow_init=True,
        deep_supervision=True,
    )  # fmt: skip
    optimizer = torch.optim.SGD(network.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    out = network(torch.randn(1, len(dataset["channel_names"]), *conf.patch_size))
    (out[0] if isinstance(out, list | tuple) else out).mean().backward()
    optimizer.step()  # momentum buffers in the optimizer state, as after training
    if fit:
        fit_head(network, len(conf.patch_size), len(dataset["channel_names"]))
    checkpoint = {
        "network_weights": network.state_dict(), "optimizer_state": optimizer.state_dict(), "grad_scaler_state": None,
        "logging": _logging(), "_best_ema": np.float64(0.375), "current_epoch": 1000,
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset,
                      "device": torch.device("cuda")},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2) if len(conf.patch_size) == 3
        else (0, 1),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return network


def write_results(
    root: Path,
    configuration: str,
    *,
    folds: Sequence[int | str] = (0,),
    plans: dict[str, Any] | None = None,
    channels: Sequence[str] = ("CT",),
    labels: dict[str, Any] | None = None,
    seed: int = 0,
    fit: bool = True,
) -> Path:
    """A results folder ``<root>/nnUNetTrainer__nnUNetPlans__<configuration>`` with one checkpoint per fold."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = root / TRAINER_FOLDER.format(configuration=configuration)
    folder.mkdir(parents=True, exist_ok=True)
    generate_dataset_json(str(folder), dict(enumerate(channels)), labels or LABELS, 1, ".nii.gz",
                          dataset_name="Dataset999_Tiny")  # fmt: skip
    dataset = json.loads((folder / "dataset.json").read_text())
    plans = plans or make_plans(spacing=(2.5, 0.8, 0.8))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    for i, fold in enumerate(folds):
        write_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", plans, dataset, configuration, fold,
                         seed=seed + i, fit=fit)  # fmt: skip
    return folder


def _regions(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (y / 0.9) ** 2 + (x / 0.8) ** 2 < 1
    organ = ((z - 0.1) / 0.8) ** 2 + ((y + 0.1) / 0.6) ** 2 + ((x - 0.1) / 0.6) ** 2 < 1
    lesion = (z / 0.4) ** 2 + ((y + 0.1) / 0.3) ** 2 + ((x - 0.2) / 0.3) ** 2 < 1
    return body, organ, lesion


def ct_volume(shape: Sequence[int] = (32, 48, 48), seed: int = 0) -> np.ndarray:
    """An int16 CT-like volume ``(z, y, x)`` in HU: air, a body, an organ, a lesion, smooth noise."""
    rng = np.random.default_rng(seed)
    body, organ, lesion = _regions(shape)
    ct = np.where(body, 40.0, -1000.0)
    ct[organ] = 120.0
    ct[lesion] = -10.0
    ct += gaussian_filter(rng.normal(size=shape), 2.0) * 60 + rng.normal(size=shape) * 2
    return ct.round().astype(np.int16)


def ct_labels(shape: Sequence[int] = (32, 48, 48)) -> np.ndarray:
    """The classes :func:`ct_volume` draws: 0 background, 1 organ, 2 lesion."""
    _, organ, lesion = _regions(shape)
    return np.where(lesion, 2, np.where(organ, 1, 0))


def write_nifti(path: Path, volume: np.ndarray, spacing: Sequence[float]) -> Path:
    """``volume`` ``(z, y, x)`` (or ``(C, z, y, x)`` as a 4D file) with spacing (z, y, x) mm, as SimpleITK reads it."""
    sz, sy, sx = (float(s) for s in spacing)
    data = np.transpose(volume) if volume.ndim == 3 else np.transpose(volume, (3, 2, 1, 0))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), np.diag([sx, sy, sz, 1.0])), str(path))
    return path


def nnunet_labels(folder: Path, images: Sequence[Path], *, folds: Sequence[int | str], mirroring: bool) -> np.ndarray:
    """nnU-Net's own predictor on ``images`` (one file per channel): labels ``(z, y, x)``."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds))
    data, properties = SimpleITKIO().read_images([str(p) for p in images])
    threads = torch.get_num_threads()
    try:
        return np.asarray(predictor.predict_single_npy_array(data, properties, None, None, False))
    finally:
        torch.set_num_threads(threads)


def write_job(root: Path, folder: Path, image: Path, *, tiling: dict[str, Any], nnunet: dict[str, Any] | None = None,
              block: Sequence[int] = (32, 32, 32), name: str = "out", channels_from_4d: bool = False) -> Path:
    """A job YAML for ``tiler run``: the results folder, nnU-Net's tiling, local engine, every tile run."""
    data = {
        "input": {"path": str(image), "mask": "none", "channels_from_4d": channels_from_4d},
        "model": {"weights": str(folder), "device": "cpu", "batch_size": 4, "threads": 1,
                  **({"nnunet": nnunet} if nnunet else {})},
        "tiling": {**tiling, "block": list(block), "pad_mode": "constant"},
        "engine": {"actors": 1, "skip_empty": False},
        "output": {"path": str(root / f"{name}.zarr"), "chunks": [b // 2 for b in block]},
    }  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
