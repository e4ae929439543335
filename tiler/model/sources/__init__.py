"""Model sources: one small module per package format, each reading the package and returning a LoadedModel.

* :mod:`.detect` — which source reads a path (names and magic bytes only, nothing loaded);
* :mod:`.bundle` — a MONAI bundle folder (``configs/inference.json`` + ``models/model.pt``);
* :mod:`.smp` — a segmentation_models_pytorch ``save_pretrained`` folder (``config.json`` + ``model.safetensors``);
* :mod:`.onnx` — an ONNX file run by onnxruntime behind a torch module;
* :mod:`.nnunet` — an nnU-Net v2 results folder;
* :mod:`.manifest` — the files a model reads (what a job's identity hashes; nothing loaded).

No source runs code from the package: configs are parsed as JSON (or safe YAML) and checked, class
names are looked up in explicit allow-lists, weights come from safetensors or
``torch.load(weights_only=True)``. The optional packages (smp, onnxruntime) are imported only when
their format is loaded.
"""

from tiler.model.sources.detect import detect_source

__all__ = ["detect_source"]
