"""Model sources: one small module per format, each opening a file or package as a :class:`~tiler.model.loaded.Opened`.

:data:`tiler.model.load.SOURCES` names each source's opener by its ``model.format``; :func:`tiler.model.load.load_model`
applies the caller's normalisation, class names and colours over what the source read.

* :mod:`.detect` — which source reads a path (file and folder names only, nothing loaded);
* :mod:`.tiler` — tiler's own checkpoint, a plain state dict, and TorchScript;
* :mod:`.bundle` — a MONAI bundle folder (``configs/inference.json`` + ``models/model.pt``);
* :mod:`.smp` — a segmentation_models_pytorch ``save_pretrained`` folder (``config.json`` + ``model.safetensors``);
* :mod:`.onnx` — an ONNX file run by onnxruntime behind a torch module;
* :mod:`.nnunet` — an nnU-Net v2 results folder;
* :mod:`.files` — configs and weight tensors read without running anything from them;
* :mod:`.outputs` — a network's output as the logits the runner softmaxes;
* :mod:`.manifest` — the files a model reads (what a job's identity hashes; nothing loaded).

No source runs code from the package: configs are parsed as JSON (or safe YAML) and checked, class
names are looked up in explicit allow-lists, weights come from safetensors or
``torch.load(weights_only=True)``. The optional packages (smp, onnxruntime) are imported only when
their format is loaded.
"""

from tiler.model.sources.detect import detect_source

__all__ = ["detect_source"]
