"""The model layer: specs, normalisation, model sources, checkpoints and the tile runner (torch and MONAI only).

Imports go down: the leaves (:mod:`.loaded`, :mod:`.weights`, :mod:`.spec`, :mod:`.normalize`, :mod:`.memory`),
then :mod:`.sources` (one module per format), then :mod:`.load` (``load_model`` and its ``SOURCES`` table) and
:mod:`.checkpoint` (saving); :mod:`.runner` needs only :mod:`.loaded`.

The names are imported lazily (PEP 562): ``import tiler.model.sources.detect`` or
``tiler.model.normalize`` does not pay for torch and MONAI, which a driver that only plans never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiler.lazy import lazy_names

_LAZY: dict[str, str] = {
    "ARCHITECTURES": "tiler.model.spec",
    "ModelSpec": "tiler.model.spec",
    "build_network": "tiler.model.spec",
    "LoadedModel": "tiler.model.loaded",
    "SOURCES": "tiler.model.load",
    "load_model": "tiler.model.load",
    "save_checkpoint": "tiler.model.checkpoint",
    "save_torchscript": "tiler.model.checkpoint",
    "Normalization": "tiler.model.normalize",
    "TileRunner": "tiler.model.runner",
}

__all__ = [
    "ARCHITECTURES",
    "LoadedModel",
    "ModelSpec",
    "Normalization",
    "SOURCES",
    "TileRunner",
    "build_network",
    "load_model",
    "save_checkpoint",
    "save_torchscript",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


if TYPE_CHECKING:
    from tiler.model.checkpoint import save_checkpoint, save_torchscript
    from tiler.model.load import SOURCES, load_model
    from tiler.model.loaded import LoadedModel
    from tiler.model.normalize import Normalization
    from tiler.model.runner import TileRunner
    from tiler.model.spec import ARCHITECTURES, ModelSpec, build_network
