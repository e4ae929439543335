"""Format detection: which model source reads a path, decided from file names and magic bytes (nothing is loaded)."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

from tiler.errors import ModelError, ReadError

__all__ = ["BUNDLE_CONFIGS", "BUNDLE_WEIGHTS", "NNUNET_FILES", "SMP_FILES", "check_weights_file", "detect_source",
           "fold_checkpoints", "fold_dirs", "is_nnunet_folder", "not_weights", "resolve_source"]

BUNDLE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
BUNDLE_WEIGHTS = ("models/model.safetensors", "models/model.pt")
SMP_FILES = ("config.json", "model.safetensors")
NNUNET_FILES = ("plans.json", "dataset.json", "fold_<k>/*.pth")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "a TIFF image (a GeoTIFF, a slide or a scan)"),
    (b"MM\x00*", "a TIFF image (a GeoTIFF, a slide or a scan)"),
    (b"II+\x00", "a BigTIFF image"),
    (b"MM\x00+", "a BigTIFF image"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "a gzip-compressed file (a .nii.gz volume?)"),
    (b"\x93NUMPY", "a NumPy array (.npy)"),
    (b"\x89HDF", "an HDF5 file (a Keras .h5 model is not a PyTorch model)"),
    (b"DICM", "a DICOM file"),
    (b"%PDF", "a PDF document"),
)
"""Leading bytes of files that are often given as a model by mistake, and what they are."""
_FIX = (
    "give model.weights the model itself: a .pt/.pth checkpoint (torch.save), a TorchScript file, a .safetensors "
    "or .onnx file, or a MONAI bundle, smp or nnU-Net folder"
)


def _is_text(head: bytes) -> bool:
    """Whether ``head`` reads as text (UTF-8 without control bytes other than whitespace)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end of the head still counts as text
        if err.start < len(head) - 3:
            return False
        text = head[: err.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def not_weights(path: Path) -> str | None:
    """What ``path`` is when it certainly is not a ``torch.save`` file (read from its first bytes), else None.

    A ``torch.save`` file is a zip archive (holding ``data.pkl``) or, in the legacy format, a pickle that
    starts with the protocol byte ``0x80``; anything else is named from its magic bytes (TIFF, PNG, gzip,
    NumPy, HDF5, DICOM at offset 128, NIfTI at offset 344, safetensors), as JSON or text, or as unknown bytes.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None  # torch.load names the problem
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return None if any(n.endswith("data.pkl") for n in names) else "a zip archive holding no data.pkl"
    if head[:1] == b"\x80":
        return None
    if head[128:132] == b"DICM":
        return "a DICOM file"
    if head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "a NIfTI image"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if len(head) > 9 and head[8:10] in (b'{"', b"{'") and int.from_bytes(head[:8], "little") < 100 * 2**20:
        return "a safetensors file (name it *.safetensors)"
    if _is_text(head):
        stripped = head.lstrip()
        if stripped[:1] in (b"{", b"["):
            return "a JSON text file (a config, not the weights)"
        return "a text file"
    return f"binary data of another kind (it starts with the bytes {head[:8]!r})"


def check_weights_file(path: Path, *, what: str = "checkpoint") -> None:
    """Refuse, before ``torch.load``, a file that is not a ``torch.save`` file, saying what it is instead.

    Raises:
        ReadError: ``"checkpoint scene.tif could not be read: it is not a model file but a TIFF image ...; fix: ..."``.

    """
    found = not_weights(path)
    if found is not None:
        raise ReadError(f"{what} {path} could not be read: it is not a model file but {found}; fix: {_FIX}.")


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
    """Name the source that reads ``path``.

    Returns:
        ``"bundle"`` (a folder with ``configs/inference.json``), ``"smp"`` (a folder with ``config.json``
        and ``model.safetensors``), ``"nnunet"`` (a folder with ``plans.json``, ``dataset.json`` and
        ``fold_<k>/*.pth``), ``"onnx"`` (``*.onnx``), ``"torchscript"`` (a TorchScript archive),
        ``"safetensors"`` (``*.safetensors``: a state dict) or ``"pickle"`` (a ``torch.save`` file: a
        tiler checkpoint or a state dict).

    Raises:
        ReadError: Nothing exists at ``path``.
        ModelError: A folder that is neither kind, or both.

    """
    if path.is_dir():
        kinds = {
            "bundle": (bundle_config(path) is not None, f"a MONAI bundle ({BUNDLE_CONFIGS[0]})", "monai"),
            "smp": (is_smp_folder(path), f"an smp folder ({' + '.join(SMP_FILES)})", "smp"),
            "nnunet": (is_nnunet_folder(path), f"an nnU-Net results folder ({' + '.join(NNUNET_FILES)})", "nnunet"),
        }
        found = [k for k, (hit, _, _) in kinds.items() if hit]
        if len(found) > 1:
            raise ModelError(
                f"model folder {path} is both {' and '.join(kinds[k][1] for k in found)}; set model.format to one of "
                f"{[kinds[k][2] for k in found]}."
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
        return "safetensors"
    if is_torchscript(path):
        return "torchscript"
    return "pickle"


def resolve_source(path: Path, format: str) -> str:
    """The source that reads ``path`` under ``model.format``: detected for ``auto``, checked otherwise.

    Returns:
        ``"bundle"``, ``"smp"``, ``"nnunet"``, ``"onnx"``, ``"torchscript"``, or ``"tensors"`` (a tiler checkpoint or a
        state dict in a ``torch.save`` or safetensors file).

    Raises:
        ReadError: Nothing exists at ``path``, or a file format needs a file and got a folder.
        ModelError: The path is not of the named format.

    """
    if not (path.is_dir() or path.is_file()):
        raise ReadError(
            f"checkpoint {path} does not exist (or is not a file); give the path of a model file or folder."
        )
    if format == "auto":
        found = detect_source(path)
        return "tensors" if found in ("pickle", "safetensors") else found
    if format == "monai" and path.is_dir():
        if bundle_config(path) is None:
            raise ModelError(f"model.format='monai' but {path} is not a MONAI bundle (no {BUNDLE_CONFIGS[0]}).")
        return "bundle"
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
    return "torchscript" if format == "torchscript" else "tensors"
