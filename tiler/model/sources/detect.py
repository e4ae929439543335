"""Format detection: which model source reads a path, decided from file and folder names (nothing is loaded).

Both functions answer with a source's name, the ``model.format`` that reads the path (the keys of
:data:`tiler.model.load.SOURCES`): ``checkpoint``, ``state_dict``, ``monai``, ``torchscript``, ``smp``, ``onnx``,
``nnunet``. Whether a file is a model file at all is :func:`tiler.model.weights.check_weights_file`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

from tiler.errors import ModelError, ReadError

__all__ = ["BUNDLE_CONFIGS", "BUNDLE_WEIGHTS", "FOLDER_SOURCES", "NNUNET_FILES", "SMP_FILES", "detect_source",
           "fold_checkpoints", "fold_dirs", "is_nnunet_folder", "resolve_source"]

BUNDLE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
BUNDLE_WEIGHTS = ("models/model.safetensors", "models/model.pt")
SMP_FILES = ("config.json", "model.safetensors")
NNUNET_FILES = ("plans.json", "dataset.json", "fold_<k>/*.pth")
FOLDER_SOURCES = ("monai", "smp", "nnunet")
"""The sources that read a folder (a MONAI bundle, an smp ``save_pretrained`` folder, an nnU-Net results folder)."""


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``constants.pkl`` or compiled ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def bundle_config(folder: Path) -> Path | None:
    """The inference config of a MONAI bundle folder, or None."""
    for name in BUNDLE_CONFIGS:
        if (folder / name).is_file():
            return folder / name
    return None


def is_smp_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a ``save_pretrained`` pair ``config.json`` + ``model.safetensors``."""
    return all((folder / name).is_file() for name in SMP_FILES)


def fold_dirs(folder: Path) -> list[Path]:
    """The ``fold_<k>`` folders of an nnU-Net results folder in fold order, then ``fold_all``."""
    found = [p for p in folder.glob("fold_*") if p.is_dir()]
    numbered = sorted((p for p in found if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    return numbered + [p for p in found if p.name == "fold_all"]


def fold_checkpoints(folder: Path, folds: Sequence[str] | None, checkpoint: str) -> list[Path]:
    """The checkpoints an nnU-Net folder's model reads: the named folds', else every numbered fold holding one.

    With ``folds`` None: each ``fold_<k>/<checkpoint>`` that exists, in fold order, else ``fold_all``'s when it
    exists (as nnU-Net's predictor picks them); with ``folds`` given: ``fold_<f>/<checkpoint>`` for each, whether
    or not it exists (the loader names a missing one).
    """
    if folds is not None:
        return [folder / f"fold_{f}" / checkpoint for f in folds]
    found = [f / checkpoint for f in fold_dirs(folder) if f.name != "fold_all" and (f / checkpoint).is_file()]
    if not found and (folder / "fold_all" / checkpoint).is_file():
        found = [folder / "fold_all" / checkpoint]
    return found


def is_nnunet_folder(folder: Path) -> bool:
    """Whether ``folder`` is an nnU-Net results folder: ``plans.json``, ``dataset.json`` and a fold with a ``.pth``."""
    if not all((folder / name).is_file() for name in NNUNET_FILES[:2]):
        return False
    return any(any(f.glob("*.pth")) for f in fold_dirs(folder))


def detect_source(path: Path) -> str:
    """Name the source that reads ``path`` under ``model.format: auto``.

    Returns:
        ``"monai"`` (a MONAI bundle: a folder with ``configs/inference.json``), ``"smp"`` (a folder with
        ``config.json`` and ``model.safetensors``), ``"nnunet"`` (a folder with ``plans.json``, ``dataset.json`` and
        ``fold_<k>/*.pth``), ``"onnx"`` (``*.onnx``), ``"torchscript"`` (a TorchScript archive), ``"state_dict"``
        (``*.safetensors``) or ``"checkpoint"`` (any other file: a ``torch.save`` file, a tiler checkpoint or a
        plain state dict, which the checkpoint source tells apart when it reads it).

    Raises:
        ReadError: Nothing exists at ``path``.
        ModelError: A folder that is neither kind, or several.

    """
    if path.is_dir():
        kinds = {
            "monai": (bundle_config(path) is not None, f"a MONAI bundle ({BUNDLE_CONFIGS[0]})"),
            "smp": (is_smp_folder(path), f"an smp folder ({' + '.join(SMP_FILES)})"),
            "nnunet": (is_nnunet_folder(path), f"an nnU-Net results folder ({' + '.join(NNUNET_FILES)})"),
        }
        found = [k for k, (hit, _) in kinds.items() if hit]
        if len(found) > 1:
            raise ModelError(
                f"model folder {path} is both {' and '.join(kinds[k][1] for k in found)}; set model.format to one of "
                f"{found}."
            )
        if found:
            return found[0]
        raise ModelError(
            f"model folder {path} is neither a MONAI bundle (no {BUNDLE_CONFIGS[0]}) nor an smp save_pretrained folder "
            f"(no {' + '.join(SMP_FILES)}) nor an nnU-Net results folder (no {' + '.join(NNUNET_FILES)}); give one of "
            "those, or a model file (.pt, .onnx, .safetensors)."
        )
    if not path.is_file():
        raise ReadError(
            f"checkpoint {path} does not exist (or is not a file); give the path of a model file or folder."
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".safetensors":
        return "state_dict"
    if is_torchscript(path):
        return "torchscript"
    return "checkpoint"


def resolve_source(path: Path, format: str) -> str:
    """The source that reads ``path`` under ``model.format``: detected for ``auto``, checked otherwise.

    A named format is its own source, except ``monai`` for a file: a MONAI network's plain state dict, read by
    ``state_dict``.

    Returns:
        ``"checkpoint"``, ``"state_dict"``, ``"monai"``, ``"torchscript"``, ``"smp"``, ``"onnx"`` or ``"nnunet"``.

    Raises:
        ReadError: Nothing exists at ``path``, or a file format needs a file and got a folder.
        ModelError: The path is not of the named format.

    """
    if not (path.is_dir() or path.is_file()):
        raise ReadError(
            f"checkpoint {path} does not exist (or is not a file); give the path of a model file or folder."
        )
    if format == "auto":
        return detect_source(path)
    if format == "monai" and path.is_dir():
        if bundle_config(path) is None:
            raise ModelError(f"model.format='monai' but {path} is not a MONAI bundle (no {BUNDLE_CONFIGS[0]}).")
        return "monai"
    if format == "smp" and not (path.is_dir() and is_smp_folder(path)):
        raise ModelError(
            f"model.format='smp' but {path} is not a folder with {' + '.join(SMP_FILES)}; give the folder "
            "model.save_pretrained wrote, or set model.format: auto."
        )
    if format == "nnunet" and not (path.is_dir() and is_nnunet_folder(path)):
        raise ModelError(
            f"model.format='nnunet' but {path} is not an nnU-Net results folder ({' + '.join(NNUNET_FILES)}); give "
            "the <Trainer>__<Plans>__<configuration> folder nnUNetv2_train wrote."
        )
    if format == "onnx" and not path.is_file():
        raise ModelError(f"model.format='onnx' but {path} is a folder; give the ONNX file.")
    if format in ("smp", "onnx", "nnunet"):
        return format
    if not path.is_file():
        raise ReadError(
            f"checkpoint {path} is a folder; model.format={format!r} reads one file. Give the file, or use "
            "model.format: auto for a MONAI bundle, smp or nnU-Net folder."
        )
    return "state_dict" if format == "monai" else format
