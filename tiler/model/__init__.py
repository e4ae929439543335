"""The model layer: specs, normalisation, checkpoints and the tile runner (torch and MONAI only)."""

from tiler.model.checkpoint import LoadedModel, load_model, save_checkpoint, save_torchscript
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import ARCHITECTURES, ModelSpec, build_network

__all__ = [
    "ARCHITECTURES",
    "LoadedModel",
    "ModelSpec",
    "Normalization",
    "TileRunner",
    "build_network",
    "load_model",
    "save_checkpoint",
    "save_torchscript",
]
