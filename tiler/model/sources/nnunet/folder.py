"""An nnU-Net v2 results folder read as data: plans, dataset labels, the chosen configuration and folds.

A results folder is what ``nnUNetv2_train`` writes, ``<Trainer>__<Plans>__<configuration>/`` holding
``plans.json``, ``dataset.json`` and ``fold_<k>/checkpoint_final.pth`` (``fold_all/`` when trained on every
case). Everything here is parsed JSON; nothing is imported by a name the folder gives.

Axes, stated once: nnU-Net transposes the image by the plans' ``transpose_forward`` before anything else,
so the configuration's ``patch_size`` and ``spacing`` are in that *transposed* order. tiler keeps the
input's own order (``(z, y, x)``: a NIfTI ``(i, j, k)`` reversed, as SimpleITK gives it to nnU-Net) and
maps the patch and spacing back: original axis ``transpose_forward[i]`` is transposed axis ``i``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiler.errors import ModelError, ReadError
from tiler.model.sources.detect import fold_checkpoints, fold_dirs, is_nnunet_folder
from tiler.model.sources.files import read_json

__all__ = ["AVERAGES", "CHECKPOINT", "NnunetSettings", "ResultsFolder", "fold_dirs", "is_nnunet_folder"]

CHECKPOINT = "checkpoint_final.pth"
AVERAGES = ("logits", "probabilities")
# nnU-Net readers whose arrays are the input file's voxel order reversed, as tiler's NIfTI reader gives it
_SAME_ORDER_READERS = ("SimpleITKIO", "NibabelIO", "Tiff3DIO", "NaturalImage2DIO")


@dataclass(frozen=True)
class NnunetSettings:
    """What to take from a results folder (the ``model.nnunet`` config section).

    Attributes:
        configuration: ``3d_fullres``, ``2d``, ``3d_lowres``...; None: from the folder name
            ``<Trainer>__<Plans>__<configuration>`` (or the plans' only configuration).
        folds: Fold names (``0``, ``1``..., ``all``); None: every numbered fold holding the checkpoint (as
            nnU-Net's predictor does), else ``all``.
        checkpoint: File name inside each fold folder.
        mirroring: Mirror test-time augmentation over the checkpoint's ``inference_allowed_mirroring_axes``.
        average: How folds, mirrors and overlapping tiles are averaged: ``logits`` (nnU-Net's predictor: its
            labels, no class probabilities to store) or ``probabilities`` (mean of softmaxes, as tiler blends and
            ``nnUNetv2_ensemble`` averages; labels differ from nnU-Net's where classes nearly tie).

    """

    configuration: str | None = None
    folds: tuple[str, ...] | None = None
    checkpoint: str = CHECKPOINT
    mirroring: bool = True
    average: str = "logits"

    def __post_init__(self) -> None:
        if self.folds is not None:
            object.__setattr__(self, "folds", tuple(str(f) for f in self.folds))
        if self.average not in AVERAGES:
            raise ModelError(f"nnunet average={self.average!r} is unknown; choose one of {list(AVERAGES)}.")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> NnunetSettings:
        """Settings from the config's ``model.nnunet`` mapping (unknown keys named)."""
        data = dict(data or {})
        valid = {"configuration", "folds", "checkpoint", "mirroring", "average"}
        unknown = sorted(set(data) - valid - {"image_stats", "crop", "resample"})
        if unknown:
            raise ModelError(f"model.nnunet has unknown key(s) {unknown}; valid keys are {sorted(valid)}.")
        return cls(**{k: v for k, v in data.items() if k in valid})

    def to_dict(self) -> dict[str, Any]:
        """Plain types (for a model reference)."""
        return {
            "configuration": self.configuration,
            "folds": list(self.folds) if self.folds is not None else None,
            "checkpoint": self.checkpoint,
            "mirroring": self.mirroring,
            "average": self.average,
        }


def _resolve(configurations: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    """A configuration with its ``inherits_from`` chain merged in (child keys win), cycles refused."""
    seen: list[str] = []
    chain: list[Mapping[str, Any]] = []
    current: str | None = name
    while current is not None:
        if current in seen:
            raise ModelError(f"{source}: configuration {name!r} inherits in a circle {seen + [current]}.")
        entry = configurations.get(current)
        if not isinstance(entry, Mapping):
            raise ModelError(
                f"{source}: configuration {current!r} does not exist; the plans hold {sorted(configurations)}."
            )
        seen.append(current)
        chain.append(entry)
        parent = entry.get("inherits_from")
        current = str(parent) if parent is not None else None
    merged: dict[str, Any] = {}
    for entry in reversed(chain):
        merged.update(copy.deepcopy(dict(entry)))
    return merged


def _permutation(value: Any, key: str, source: str) -> tuple[int, ...]:
    if not (isinstance(value, list) and sorted(value) == list(range(len(value))) and len(value) in (2, 3)):
        raise ModelError(f"{source}: {key}={value!r} is not a permutation of the image axes.")
    return tuple(int(v) for v in value)


class ResultsFolder:
    """One configuration of an nnU-Net results folder, checked and in tiler's terms.

    Args:
        folder: The results folder (``<Trainer>__<Plans>__<configuration>``).
        settings: Which configuration, folds and checkpoint to use.

    Raises:
        ReadError: ``plans.json`` or ``dataset.json`` is missing or not JSON.
        ModelError: The configuration, folds, labels or plans cannot be used (the message names the key).

    """

    def __init__(self, folder: Path, settings: NnunetSettings | None = None) -> None:
        self.folder = Path(folder)
        self.settings = settings or NnunetSettings()
        self.plans_path = self.folder / "plans.json"
        self.dataset_path = self.folder / "dataset.json"
        plans = read_json(self.plans_path, what="nnU-Net plans")
        dataset = read_json(self.dataset_path, what="nnU-Net dataset")
        for path, data in ((self.plans_path, plans), (self.dataset_path, dataset)):
            if not isinstance(data, Mapping):
                raise ModelError(f"{path} holds a {type(data).__name__}, not a mapping.")
        self.plans: Mapping[str, Any] = plans
        self.dataset: Mapping[str, Any] = dataset
        self.name = self._configuration_name()
        source = f"{self.plans_path} configuration {self.name!r}"
        configurations = plans.get("configurations")
        if not isinstance(configurations, Mapping):
            raise ModelError(f"{self.plans_path} has no 'configurations' mapping; it is not an nnU-Net v2 plans file.")
        self.configuration = _resolve(configurations, self.name, str(self.plans_path))
        self.source = source
        self._check_configuration()
        self.transpose_forward = _permutation(plans.get("transpose_forward"), "transpose_forward", str(self.plans_path))
        self.transpose_backward = _permutation(
            plans.get("transpose_backward"), "transpose_backward", str(self.plans_path)
        )
        undone = tuple(self.transpose_forward[i] for i in self.transpose_backward)
        if undone != tuple(range(len(self.transpose_forward))):
            raise ModelError(f"{self.plans_path}: transpose_backward does not undo transpose_forward.")
        reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
        self.reorients = reader == "NibabelIOWithReorient"
        if reader not in (*_SAME_ORDER_READERS, "NibabelIOWithReorient"):
            raise ModelError(
                f"{self.plans_path}: image_reader_writer={reader!r}; tiler reads inputs in the voxel order of "
                f"{list(_SAME_ORDER_READERS)} (and of NibabelIOWithReorient for inputs already in RAS); another reader "
                "may order axes differently. Refused."
            )
        self.folds = self._folds()

    # ------------------------------------------------------------------ configuration
    def _configuration_name(self) -> str:
        configurations = self.plans.get("configurations")
        names = sorted(configurations) if isinstance(configurations, Mapping) else []
        if self.settings.configuration is not None:
            return self.settings.configuration
        parts = self.folder.resolve().name.split("__")
        if len(parts) == 3 and parts[2] in names:
            return parts[2]
        if len(names) == 1:
            return names[0]
        raise ModelError(
            f"nnU-Net folder {self.folder}: its name is not <Trainer>__<Plans>__<configuration>, so the configuration "
            f"is not known; set model.nnunet.configuration to one of {names}."
        )

    def _check_configuration(self) -> None:
        conf = self.configuration
        if conf.get("previous_stage") is not None:
            raise ModelError(
                f"{self.source} is a cascade stage (previous_stage={conf['previous_stage']!r}): it reads the previous "
                "stage's segmentation as extra input channels, which tiler does not produce. Use 3d_fullres, 3d_lowres "
                "or 2d."
            )
        if "architecture" not in conf:
            raise ModelError(
                f"{self.source} has no 'architecture' entry (plans of nnU-Net before v2.2); tiler rebuilds the network "
                "from it. Re-run nnUNetv2_plan_experiment, or copy the entry from current plans."
            )
        for key in ("patch_size", "spacing", "normalization_schemes"):
            if not isinstance(conf.get(key), list) or not conf[key]:
                raise ModelError(f"{self.source} has no list {key!r}; the plans are incomplete.")
        if len(conf["patch_size"]) not in (2, 3) or len(conf["spacing"]) != len(conf["patch_size"]):
            raise ModelError(
                f"{self.source}: patch_size={conf['patch_size']} and spacing={conf['spacing']} must both have 2 or 3 "
                "entries."
            )
        manager = self.plans.get("label_manager", "LabelManager")
        if manager != "LabelManager":
            raise ModelError(f"{self.plans_path}: label_manager={manager!r}; tiler knows nnU-Net's LabelManager only.")

    @property
    def patch_size(self) -> tuple[int, ...]:
        """The configuration's patch (tile) size, in transposed order."""
        return tuple(int(v) for v in self.configuration["patch_size"])

    @property
    def spacing(self) -> tuple[float, ...]:
        """The configuration's voxel spacing, in transposed order (2 entries for a 2D configuration)."""
        return tuple(float(v) for v in self.configuration["spacing"])

    @property
    def is_2d(self) -> bool:
        """Whether the network is 2D (a 3D input is then predicted slice by slice along transposed axis 0)."""
        return len(self.patch_size) == 2

    @property
    def architecture(self) -> Mapping[str, Any]:
        """The configuration's ``architecture`` entry (class name, keyword arguments, imports)."""
        arch = self.configuration["architecture"]
        if not isinstance(arch, Mapping):
            raise ModelError(f"{self.source}: architecture is a {type(arch).__name__}, not a mapping.")
        return arch

    # ------------------------------------------------------------------ dataset
    @property
    def channel_names(self) -> tuple[str, ...]:
        """Input channel names, in channel order (``channel_names``, or v1's ``modality``)."""
        names = self.dataset.get("channel_names", self.dataset.get("modality"))
        if not isinstance(names, Mapping) or not names:
            raise ModelError(f"{self.dataset_path} has no 'channel_names' mapping; the dataset.json is incomplete.")
        try:
            order = sorted(names, key=int)
        except ValueError as err:
            raise ModelError(f"{self.dataset_path}: channel_names keys {list(names)} are not channel numbers.") from err
        if [int(k) for k in order] != list(range(len(order))):
            raise ModelError(f"{self.dataset_path}: channel_names keys {order} are not 0..{len(order) - 1}.")
        return tuple(str(names[k]) for k in order)

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names by label value ``0..K-1`` (the ``ignore`` label left out: the network does not predict it).

        Raises:
            ModelError: Region-based labels, or values that are not ``0..K-1``.

        """
        labels = self.dataset.get("labels")
        if not isinstance(labels, Mapping) or "background" not in labels:
            raise ModelError(f"{self.dataset_path} has no 'labels' mapping with 'background'; it is not nnU-Net v2's.")
        by_value: dict[int, str] = {}
        for name, value in labels.items():
            if name == "ignore":
                continue
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, list) or self.dataset.get("regions_class_order") is not None:
                raise ModelError(
                    f"{self.dataset_path}: label {name!r} is the region {value!r}; region-based models predict "
                    "overlapping sigmoid channels that regions_class_order paints in order, not one class per voxel. "
                    "tiler segments with a softmax over classes, so region-based nnU-Net models are refused."
                )
            if isinstance(value, bool) or not isinstance(value, int) or value in by_value:
                raise ModelError(f"{self.dataset_path}: label {name!r} has value {value!r}; give distinct integers.")
            by_value[value] = str(name)
        if sorted(by_value) != list(range(len(by_value))):
            raise ModelError(
                f"{self.dataset_path}: label values {sorted(by_value)} are not 0..{len(by_value) - 1}; nnU-Net needs "
                "consecutive labels and so does tiler (a class index is its label value)."
            )
        return tuple(by_value[i] for i in range(len(by_value)))

    # ------------------------------------------------------------------ folds
    def _folds(self) -> tuple[Path, ...]:
        name = self.settings.checkpoint
        if self.settings.folds is None:
            found = fold_checkpoints(self.folder, None, name)
            if not found:
                raise ModelError(
                    f"nnU-Net folder {self.folder} has no fold_<k>/{name}; train a fold, or set "
                    "model.nnunet.checkpoint (e.g. checkpoint_best.pth)."
                )
            return tuple(found)
        paths = []
        for fold, path in zip(self.settings.folds, fold_checkpoints(self.folder, self.settings.folds, name),
                              strict=True):  # fmt: skip
            if not path.is_file():
                present = [f.name[5:] for f in fold_dirs(self.folder) if (f / name).is_file()]
                raise ReadError(
                    f"nnU-Net folder {self.folder}: fold {fold!r} has no {path.name} (folds with one: {present}); "
                    "fix model.nnunet.folds."
                )
            paths.append(path)
        if not paths:
            raise ModelError("model.nnunet.folds is empty; list at least one fold, or leave it out for all.")
        return tuple(paths)

    # ------------------------------------------------------------------ original axis order
    def to_original(self, values: Sequence[Any], ndim: int) -> tuple[Any, ...]:
        """Per-axis values given in transposed order, in the input's order (``ndim`` 3, or 2 for a 2D image).

        A 2D configuration's values cover transposed axes 1 and 2; for a 3D input, the slicing axis (transposed
        axis 0) gets None. A 2D image is nnU-Net's ``(1, y, x)``: its axes are transposed axes 1 and 2.
        """
        full = list(values) if len(values) == 3 else [None, *values]
        out: list[Any] = [None] * 3
        for i, axis in enumerate(self.transpose_forward):
            out[axis] = full[i]
        return tuple(out) if ndim == 3 else tuple(out[1:])
