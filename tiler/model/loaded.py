"""A loaded model: the network with its spec, normalisation, class names and colours, and the checks on those labels.

Two records live here, one on each side of :func:`tiler.model.load.load_model`:

* :class:`Opened` — what a source (:mod:`tiler.model.sources`) read from a file or package, before the caller's
  overrides: the network (built when asked), what the package stores, and how its labels are checked;
* :class:`LoadedModel` — the model ready for the runner, after the overrides.

This module imports neither torch nor MONAI at run time: the labels' checks are plain Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tiler.errors import ModelError
from tiler.palette import default_colors

if TYPE_CHECKING:
    import torch

    from tiler.model.normalize import Normalization
    from tiler.model.spec import ModelSpec

__all__ = ["Labels", "LoadedModel", "Opened", "Opener", "check_names_colors", "class_labels", "names_colors"]

Labels = tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]
"""One name and one RGB colour per class."""


@dataclass
class LoadedModel:
    """A network ready for inference plus everything needed to feed it and name its outputs.

    Attributes:
        network: The module, in eval mode, on the CPU.
        spec: Its spec (None only for a TorchScript file saved without metadata and no spec given).
        normalization: How raw pixels are normalised before the network.
        class_names: One name per output channel.
        class_colors: One RGB colour per class.
        path: The file (or package folder) it came from.
        format: The source that read it, by its ``model.format`` name (:data:`tiler.model.load.SOURCES`):
            ``"checkpoint"``, ``"state_dict"``, ``"torchscript"``, ``"monai"`` (a bundle), ``"smp"``, ``"onnx"``
            or ``"nnunet"``.

    """

    network: torch.nn.Module
    spec: ModelSpec | None
    normalization: Normalization
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    path: Path | None = None
    format: str = "checkpoint"

    @property
    def spatial_dims(self) -> int | None:
        """2 or 3, when known from the spec."""
        return self.spec.spatial_dims if self.spec is not None else None

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        if self.spec is not None:
            return self.spec.out_channels
        return len(self.class_names)


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Opened:
    """A model file or package as a source opened it: its network and what it stores, before any override.

    What the package stores is read only when asked: :func:`tiler.model.load.load_model` asks for the stored
    normalisation and class names only where the caller gives none (so a bundle's preprocessing that tiler cannot
    read is no error once ``model.normalization`` is given), and for the network after them (so a package fails on
    its configs before its weights are read).

    Attributes:
        format: The source's name (:data:`tiler.model.load.SOURCES`); ``"state_dict"`` where a file read as
            ``auto`` or ``checkpoint`` turned out to hold a plain state dict.
        spec: The network's spec (None for a network the package builds itself).
        network: Builds (or returns) the network, in eval mode, on the CPU.
        labels: Checks a name and colour list against the network (``None``: not given) and completes it: the
            package's own rule and messages (:func:`names_colors` or :func:`class_labels`).
        normalization: The stored normalisation (None: the package stores none).
        class_names: The stored class names (None: none stored).
        class_colors: The stored class colours (None: none stored).

    """

    format: str
    spec: ModelSpec | None
    network: Callable[[], torch.nn.Module]
    labels: Callable[[Sequence[str] | None, Sequence[Sequence[int]] | None], Labels]
    normalization: Callable[[], Normalization | None] = _nothing
    class_names: Callable[[], Sequence[str] | None] = _nothing
    class_colors: Sequence[Sequence[int]] | None = None


class Opener(Protocol):
    """How a source opens a path (the values of :data:`tiler.model.load.SOURCES`).

    Args:
        path: The model file or package folder (it exists).
        spec: The caller's network spec (a source whose package carries its own network refuses one).
        settings: The source's own settings (``model.onnx``, ``model.nnunet``), None for the others.
        asked: The ``model.format`` asked for (``"auto"`` when the source was detected).
    """

    def __call__(
        self, path: Path, /, *, spec: ModelSpec | None, settings: Mapping[str, Any] | None, asked: str
    ) -> Opened:
        """Open ``path``: read its configs, check them, and return what :func:`tiler.model.load.load_model` needs."""
        ...


def _is_colors(colors: Any) -> bool:
    """Whether ``colors`` is a sequence of RGB triples of ints 0..255."""
    if isinstance(colors, str | bytes) or not isinstance(colors, Sequence):
        return False
    return all(
        isinstance(c, Sequence) and not isinstance(c, str | bytes) and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        for c in colors
    )  # fmt: skip


def check_names_colors(names: Any, colors: Any, *, source: str | None = None) -> None:
    """Raise ModelError, naming ``source``, unless ``names`` is a list of strings and ``colors`` of RGB triples.

    Either may be None (not given).
    """
    where = f"{source}: " if source else ""
    if names is not None and (
        isinstance(names, str | bytes)
        or not isinstance(names, Sequence)
        or not all(isinstance(s, str | int) and not isinstance(s, bool) for s in names)
    ):
        raise ModelError(
            f"{where}class_names={names!r} must be a list of strings, one per class; fix the stored names."
        )
    if colors is not None and not _is_colors(colors):
        raise ModelError(
            f"{where}class_colors={colors!r} must be a list of [r, g, b] triples of whole numbers 0..255, one per "
            "class."
        )


def names_colors(
    spec: ModelSpec | None,
    names: Sequence[str] | None,
    colors: Sequence[Sequence[int]] | None,
    *,
    source: str | None = None,
) -> Labels:
    """One name and one colour per output channel of ``spec``: the given ones (checked), else defaults.

    Without a spec the names give the count (none given: no classes). ``source`` prefixes the messages.

    >>> names_colors(None, ["sea", "land"], None)
    (('sea', 'land'), ((0, 0, 0), (230, 25, 75)))
    """
    check_names_colors(names, colors, source=source)
    where = f"{source}: " if source else ""
    n = spec.out_channels if spec is not None else (len(names) if names else 0)
    out_names = tuple(str(s) for s in names) if names else tuple(f"class_{i}" for i in range(n))
    if spec is not None and len(out_names) != spec.out_channels:
        raise ModelError(
            f"{where}class_names={list(out_names)} has {len(out_names)} names but the model predicts "
            f"{spec.out_channels} classes; give one name per output channel."
        )
    out_colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors) if colors else default_colors(len(out_names))
    if len(out_colors) != len(out_names):
        raise ModelError(
            f"{where}class_colors has {len(out_colors)} colours for {len(out_names)} classes; give one each."
        )
    return out_names, out_colors


def class_labels(
    classes: int,
    names: Sequence[str] | None,
    colors: Sequence[Sequence[int]] | None,
    *,
    model: str,
) -> Labels:
    """One name and one RGB colour per class of a network with no spec (``model`` names it in messages).

    The given ones (checked), else ``class_i`` and the default palette.

    >>> class_labels(2, None, None, model="smp Unet")
    (('class_0', 'class_1'), ((0, 0, 0), (230, 25, 75)))
    """
    check_names_colors(names, colors, source=model)
    out_names = tuple(str(n) for n in names) if names else tuple(f"class_{i}" for i in range(classes))
    if len(out_names) != classes:
        raise ModelError(
            f"class_names={list(out_names)} has {len(out_names)} names but {model} predicts {classes} classes; "
            "give one name per class."
        )
    out_colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors) if colors else default_colors(classes)
    if len(out_colors) != classes:
        raise ModelError(f"class_colors has {len(out_colors)} colours for {classes} classes; give one each.")
    return out_names, out_colors
