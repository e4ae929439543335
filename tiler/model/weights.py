"""Weights files: telling one from other files, unpickling it safely within size caps, and fitting it to a network.

Pickles are always loaded with ``weights_only=True``: a checkpoint never runs code when loaded. A file that is
not a ``torch.save`` file at all (an image, a text, a config) is named for what it is before ``torch.load`` sees
it (:func:`check_weights_file`), and a zip archive that would inflate too far is refused from its directory
alone (:func:`check_archive_size`). A state dict is checked tensor by tensor against the network it is meant for
(:func:`check_state`) before it is loaded strictly.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tiler.errors import ModelError, ReadError
from tiler.model.spec import ModelSpec, build_network

__all__ = [
    "MAX_RATIO",
    "MAX_UNCOMPRESSED",
    "RATIO_FLOOR",
    "check_archive_size",
    "check_state",
    "check_weights_file",
    "network_from_state",
    "not_weights",
    "safe_load",
]

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


MAX_UNCOMPRESSED = 8 * 2**30
"""Most bytes a checkpoint archive may inflate to."""
MAX_RATIO = 100
"""Most a checkpoint may inflate relative to its file size once it inflates past :data:`RATIO_FLOOR`."""
RATIO_FLOOR = 256 * 2**20


def check_archive_size(path: Path) -> None:
    """Refuse a zip checkpoint (``torch.save``, ``torch.jit.save``) that would inflate too far when loaded.

    Reads only the zip's directory: the sum of its members' uncompressed sizes must stay under
    :data:`MAX_UNCOMPRESSED`, and under :data:`MAX_RATIO` times the file size once past :data:`RATIO_FLOOR`
    (``torch.save`` stores members uncompressed, so a real checkpoint inflates by about 1x).

    Raises:
        ModelError: A zip bomb, naming the file and both sizes.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError) as err:
        raise ReadError(f"checkpoint {path} is a damaged zip archive ({err}); re-save it.") from err
    size = max(path.stat().st_size, 1)
    if total > MAX_UNCOMPRESSED or (total > RATIO_FLOOR and total > MAX_RATIO * size):
        raise ModelError(
            f"checkpoint {path} would inflate from {size / 2**20:.1f} MiB to {total / 2**30:.2f} GiB when loaded "
            f"(caps: {MAX_UNCOMPRESSED / 2**30:.0f} GiB, or {MAX_RATIO}x the file size); it was not loaded. "
            "Re-save the weights with torch.save (uncompressed) from a trusted source."
        )


def _refusal_reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if "unsupported" in ln.lower() or "global" in ln.lower():
            return ln
    return lines[0] if lines else "unsafe pickle"


def safe_load(path: Path) -> Any:
    """The contents of a ``torch.save`` file, unpickled weights-only onto the CPU (plain types and tensors).

    Raises:
        ReadError: The file is not a ``torch.save`` file (named for what it is), or is damaged.
        ModelError: It would inflate too far, or loading it would run code.

    """
    check_weights_file(path)
    check_archive_size(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise ReadError(
                f"checkpoint {path} could not be read ({err}); the file is corrupt or not a PyTorch "
                "checkpoint. "
                f"Give a file written by torch.save or torch.jit.save."
            ) from err
        raise ModelError(
            f"checkpoint {path} was refused because it is not weights-only: loading it would run code "
            f"({_refusal_reason(err)}). Re-save it as a plain state dict "
            f"or a tiler checkpoint (tiler.model.checkpoint.save_checkpoint) from a trusted environment."
        ) from err
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways inside the unpickler
        raise ReadError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {err}); the file is corrupt or "
            "not a "
            f"PyTorch checkpoint. Give a file written by torch.save or torch.jit.save."
        ) from err


def check_state(
    state: Mapping[str, Any], network: torch.nn.Module, *, path: Path, built: str, fix: str
) -> None:
    """Raise ModelError naming the first entry of ``state`` that is not a tensor of ``network`` with its shape.

    Args:
        state: Tensor name → tensor, read from ``path``.
        network: The freshly built network the weights are meant for.
        path: The weights file, for messages.
        built: What the network was built from (``"UNet with args={...}"``), for messages.
        fix: What to do when the weights do not fit.
    """
    expected = network.state_dict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"weights {path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        if key not in expected:
            raise ModelError(
                f"weights {path}: tensor {key!r} (shape {tuple(value.shape)}) does not exist in the {built}; "
                f"the weights belong to another architecture or configuration: {fix}."
            )
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"weights {path}: tensor {key!r} has shape {tuple(value.shape)} in the file but "
                f"{tuple(expected[key].shape)} in the {built}; {fix}."
            )
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(
            f"weights {path}: {len(missing)} tensor(s) of the {built} are missing from the file, first "
            f"{missing[0]!r}; {fix}."
        )


def _strip_prefix(state: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a wrapper prefix (``module.`` from DataParallel, ...) when the names only fit without it."""
    keys = list(state)
    if all(k in expected for k in keys):
        return dict(state)
    for prefix in ("module.", "model.", "network.", "net."):
        if keys and all(k.startswith(prefix) and k[len(prefix) :] in expected for k in keys):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def network_from_state(
    state: Mapping[str, Any], spec: ModelSpec, path: Path, *, source: str | None = None
) -> torch.nn.Module:
    """The network of ``spec`` with the weights ``state`` read from ``path`` (``source``: where the spec came from).

    A wrapper prefix on every name (``module.``, ``model.``, ``network.``, ``net.``) is dropped when the names
    fit only without it; then every tensor must fit by name and shape, and the weights load strictly.

    Returns:
        The network in eval mode.

    """
    if not isinstance(state, Mapping):
        raise ModelError(
            f"checkpoint {path}: state_dict is a {type(state).__name__}, not a mapping of tensor names to "
            "tensors; save model.state_dict()."
        )
    network = build_network(spec, source=source or f"checkpoint {path} spec")
    state = _strip_prefix(state, network.state_dict())
    check_state(
        state, network, path=path, built=f"model built from the spec {spec.architecture} with args={spec.args}",
        fix=f"give the spec the weights were trained with (now {spec.to_dict()})",
    )
    network.load_state_dict(state, strict=True)
    return network.eval()
