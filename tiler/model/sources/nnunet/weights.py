"""nnU-Net checkpoints read with ``torch.load(weights_only=True)``: tensors and plain data, never code.

``nnUNetTrainer.save_checkpoint`` pickles one dict::

    network_weights                   state dict (tensors)            used
    inference_allowed_mirroring_axes  tuple of ints, or None           used (mirroring TTA)
    init_args                         plans, configuration, fold,      ``configuration`` checked against the
                                      dataset_json, torch.device       chosen one
    trainer_name                      str                              reported
    optimizer_state, grad_scaler_state, logging, current_epoch, _best_ema     read, not used

``logging`` and ``_best_ema`` hold numpy scalars (``np.mean`` of losses, Dice values), which PyTorch's
weights-only unpickler refuses by default (nnU-Net itself loads with ``weights_only=False``, nnUNet#2681).
tiler allow-lists exactly what rebuilding a numpy scalar takes, :data:`NUMPY_SCALARS`: the
``numpy._core.multiarray.scalar`` constructor (also under numpy 1's name ``numpy.core.multiarray.scalar``),
``numpy.dtype`` and the dtype classes of booleans, integers and floats. Each builds a number from a dtype
and raw bytes; none runs code. Any other global in the file is refused, naming the top-level key that holds
it (found by a second, inert pass over the pickle that imports and calls nothing): the file is refused as a
whole rather than loaded with that key skipped, since a checkpoint carrying foreign objects is not one
nnU-Net wrote.
"""

from __future__ import annotations

import pickle
import re
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiler.errors import ModelError, ReadError
from tiler.model.weights import check_archive_size, check_weights_file

__all__ = ["NUMPY_SCALARS", "Checkpoint", "read_checkpoint"]

_DTYPES = (
    np.dtypes.BoolDType, np.dtypes.Int8DType, np.dtypes.Int16DType, np.dtypes.Int32DType, np.dtypes.Int64DType,
    np.dtypes.UInt8DType, np.dtypes.UInt16DType, np.dtypes.UInt32DType, np.dtypes.UInt64DType,
    np.dtypes.Float16DType, np.dtypes.Float32DType, np.dtypes.Float64DType,
)  # fmt: skip
_SCALAR = np._core.multiarray.scalar  # type: ignore[attr-defined]
NUMPY_SCALARS: tuple[Any, ...] = (_SCALAR, (_SCALAR, "numpy.core.multiarray.scalar"), np.dtype, *_DTYPES)
"""What ``weights_only`` needs beyond its defaults to read an nnU-Net checkpoint: numpy scalars, nothing else."""


_LOADING = threading.Lock()


class Checkpoint:
    """The parts of one nnU-Net checkpoint tiler uses.

    Attributes:
        path: The ``.pth`` file.
        weights: ``network_weights``, a state dict.
        mirror_axes: ``inference_allowed_mirroring_axes`` (network axes), or None when mirroring is not allowed.
        configuration: ``init_args["configuration"]``, or None when the checkpoint does not record it.
        trainer: ``trainer_name``, or None.

    """

    def __init__(self, path: Path, data: Mapping[str, Any]) -> None:
        self.path = path
        weights = data.get("network_weights")
        if not isinstance(weights, Mapping) or not weights:
            raise ModelError(f"nnU-Net checkpoint {path} has no 'network_weights' state dict; it is not nnU-Net's.")
        bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ModelError(f"nnU-Net checkpoint {path}: network_weights[{bad[0]!r}] is not a tensor.")
        self.weights: dict[str, torch.Tensor] = {
            (k[len("module.") :] if k.startswith("module.") else k): v for k, v in weights.items()
        }  # nnU-Net's own loader drops a DataParallel prefix the same way
        axes = data.get("inference_allowed_mirroring_axes")
        if axes is not None and not (
            isinstance(axes, list | tuple) and all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
        ):
            raise ModelError(f"nnU-Net checkpoint {path}: inference_allowed_mirroring_axes={axes!r} is not axes.")
        self.mirror_axes: tuple[int, ...] | None = tuple(axes) if axes is not None else None
        init = data.get("init_args")
        configuration = init.get("configuration") if isinstance(init, Mapping) else None
        self.configuration: str | None = configuration if isinstance(configuration, str) else None
        trainer = data.get("trainer_name")
        self.trainer: str | None = trainer if isinstance(trainer, str) else None


class _Found:
    """A stand-in for any global of a pickle scanned inertly: records its name and its children, runs nothing."""

    global_name = ""
    children: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Found:
        inst = object.__new__(cls)
        inst.children = list(args)
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Found:
        return type(self)(*args)

    def __setstate__(self, state: Any) -> None:
        self.children.append(state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.children += [key, value]

    def append(self, value: Any) -> None:
        """Keep a list item (APPEND on a stand-in)."""
        self.children.append(value)

    def extend(self, values: Any) -> None:
        """Keep list items (APPENDS on a stand-in)."""
        self.children.extend(values)


class _InertUnpickler(pickle.Unpickler):
    """Unpickles the structure only: every global becomes a :class:`_Found` subclass, storages become None."""

    def find_class(self, module: str, name: str) -> Any:
        return type("Found", (_Found,), {"global_name": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> None:
        return None


def _globals_in(value: Any, seen: set[int]) -> set[str]:
    if id(value) in seen:
        return set()
    seen.add(id(value))
    out: set[str] = set()
    if isinstance(value, _Found):
        out.add(type(value).global_name)
        children: list[Any] = value.children
    elif isinstance(value, type) and issubclass(value, _Found):
        return {value.global_name}
    elif isinstance(value, Mapping):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set):
        children = list(value)
    else:
        return out
    for child in children:
        out |= _globals_in(child, seen)
    return out


def _keys_holding(path: Path, name: str) -> list[str]:
    """Top-level keys of the checkpoint whose value pickles the global ``name`` (inert scan)."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = next(n for n in zf.namelist() if n.endswith("data.pkl"))
            with zf.open(member) as fh:
                top = _InertUnpickler(fh).load()
        if not isinstance(top, Mapping):
            return ["<the top-level object>"] if name in _globals_in(top, set()) else []
        return [str(k) for k, v in top.items() if name in _globals_in(v, set())]
    except Exception:  # noqa: BLE001 - the scan only names the key; the refusal stands without it
        return []


def read_checkpoint(path: Path) -> Checkpoint:
    """Read an nnU-Net checkpoint weights-only, numpy scalars allowed (see the module docstring).

    Raises:
        ReadError: The file is missing or not a PyTorch checkpoint.
        ModelError: The file pickles anything else than tensors, plain data and numpy scalars (named with its
            key), or lacks ``network_weights``.

    """
    if path.is_file():
        check_weights_file(path, what="nnU-Net checkpoint")
        check_archive_size(path)
    try:
        # safe_globals is process-wide state: two threads loading at once (the driver plans an input while the
        # in-process worker loads the model) would end each other's allow-list; one load at a time
        with _LOADING, torch.serialization.safe_globals(list(NUMPY_SCALARS)):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise ReadError(f"nnU-Net checkpoint {path} could not be read ({err}); the file is corrupt.") from err
        match = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(r"got <class '([\w.]+)'>", str(err))
        name = match.group(1) if match else "an object"
        keys = _keys_holding(path, name) if match else []
        where = f"key {', '.join(repr(k) for k in keys)} holds" if keys else "it holds"
        raise ModelError(
            f"nnU-Net checkpoint {path} was refused: {where} a pickled {name}, which is neither a tensor, plain data "
            "nor a numpy scalar (all an nnU-Net checkpoint holds); loading it would run code. Nothing from it was "
            "loaded."
        ) from err
    except FileNotFoundError as err:
        raise ReadError(f"nnU-Net checkpoint {path} does not exist.") from err
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways inside the unpickler
        raise ReadError(
            f"nnU-Net checkpoint {path} could not be read ({type(err).__name__}: {err}); the file is corrupt or "
            "not a PyTorch checkpoint."
        ) from err
    if not isinstance(data, Mapping):
        raise ModelError(f"nnU-Net checkpoint {path} holds a {type(data).__name__}, not nnU-Net's checkpoint dict.")
    return Checkpoint(path, data)
