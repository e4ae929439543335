"""ONNX models: an ONNX file run by onnxruntime behind a torch module, so the runner treats it like any network.

An ONNX file is a graph of standard operators, run by onnxruntime; nothing in it is Python. What the
graph does not say is declared in :class:`OnnxOptions` (``model.onnx`` in the config, or a ``tiler``
JSON entry of the file's metadata, the config winning):

* ``input_layout``: ``channels_first`` (``(N, C, *S)``, PyTorch's) or ``channels_last`` (``(N, *S, C)``);
* ``class_axis``: the output axis that holds the classes (``1``, or ``-1`` for channels-last outputs);
* ``output``: ``logits`` or ``probabilities`` (softmax or sigmoid already applied);
* ``input_name`` / ``output_name``: which input and output, when the graph has several.

The session runs on the device of the tiles it is given: onnxruntime's CUDA provider for CUDA
tensors when installed (``onnxruntime-gpu``), else the CPU provider with torch's thread count.
A static batch size in the graph (``1`` is common) is honoured by running the tiles in chunks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tiler.errors import ModelError, ReadError
from tiler.model.loaded import Labels, Opened, class_labels
from tiler.model.normalize import Normalization
from tiler.model.sources.outputs import as_logits

if TYPE_CHECKING:
    from tiler.model.spec import ModelSpec

__all__ = ["LAYOUTS", "OUTPUTS", "OnnxNetwork", "OnnxOptions", "metadata_entry", "open_onnx"]

LAYOUTS = ("channels_first", "channels_last")
OUTPUTS = ("logits", "probabilities")
META_KEY = "tiler"
_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
}  # fmt: skip


@dataclass(frozen=True)
class OnnxOptions:
    """What the ONNX graph does not say about its input and output.

    Attributes:
        input_layout: ``"channels_first"`` ``(N, C, *S)`` or ``"channels_last"`` ``(N, *S, C)``.
        class_axis: The output axis holding the classes (negative counts from the end).
        output: ``"logits"`` or ``"probabilities"``.
        input_name: The graph input to feed (default: the only one).
        output_name: The graph output to read (default: the first).

    """

    input_layout: str = "channels_first"
    class_axis: int = 1
    output: str = "logits"
    input_name: str | None = None
    output_name: str | None = None

    def __post_init__(self) -> None:
        if self.input_layout not in LAYOUTS:
            raise ModelError(f"onnx input_layout={self.input_layout!r} is unknown; choose one of {list(LAYOUTS)}.")
        if self.output not in OUTPUTS:
            raise ModelError(f"onnx output={self.output!r} is unknown; choose one of {list(OUTPUTS)}.")
        if isinstance(self.class_axis, bool) or not isinstance(self.class_axis, int):
            raise ModelError(f"onnx class_axis={self.class_axis!r} must be an integer axis (1, or -1).")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str) -> OnnxOptions:
        """Options from a mapping, naming unknown keys."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ModelError(f"{source} has unknown onnx key(s) {unknown}; valid keys are {sorted(valid)}.")
        for key in ("input_name", "output_name"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ModelError(f"{source}: onnx {key}={value!r} is not a name; give the graph's {key[:-5]} name.")
        try:
            return cls(**dict(data))
        except ModelError as err:
            raise ModelError(f"{source}: {err}") from None


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ModelError(f"an ONNX model needs onnxruntime ({err}); install tiler[models].") from err
    return onnxruntime


class OnnxNetwork(torch.nn.Module):
    """An onnxruntime session as a torch module: ``forward(tiles (N, C, *S)) -> logits (N, K, *S)``.

    Args:
        path: The ``.onnx`` file.
        options: Its layout and output kind.
        input_name: The graph input fed.
        input_shape: That input's shape (ints where static, None where dynamic).
        input_dtype: The numpy dtype it takes.
        output_name: The graph output read.

    """

    def __init__(
        self,
        path: Path,
        options: OnnxOptions,
        *,
        input_name: str,
        input_shape: Sequence[int | None],
        input_dtype: type[np.generic],
        output_name: str,
    ) -> None:
        super().__init__()
        self.path, self.options = path, options
        self.input_name, self.output_name = input_name, output_name
        self.input_shape, self.input_dtype = tuple(input_shape), input_dtype
        self._sessions: dict[tuple[str, int], Any] = {}

    def session(self, device: torch.device) -> Any:
        """The onnxruntime session for ``device`` (made once per device and thread count)."""
        ort = _ort()
        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        threads = 0 if cuda else torch.get_num_threads()
        key = (str(device) if cuda else "cpu", threads)
        if key not in self._sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            providers: list[Any] = ["CPUExecutionProvider"]
            if cuda:
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            self._sessions[key] = open_session(self.path, opts, providers)
        return self._sessions[key]

    def _check(self, shape: Sequence[int]) -> None:
        """Raise naming the fix when tiles of ``shape`` (``(N, C, *S)``) do not fit the graph's input."""
        static = self.input_shape
        if len(shape) != len(static):
            raise ModelError(
                f"ONNX model {self.path} takes {len(static) - 2}D tiles ({self.input_name} has shape {list(static)}) "
                f"but got tiles of shape {tuple(shape)}; use a {len(static) - 2}D input and tiling.tile."
            )
        nhwc = self.options.input_layout == "channels_last"
        want_c = static[-1] if nhwc else static[1]
        if isinstance(want_c, int) and want_c != shape[1]:
            raise ModelError(
                f"ONNX model {self.path} reads {want_c} channels but the tiles have {shape[1]}; select its bands "
                "with input.bands (or check model.onnx.input_layout)."
            )
        want_s = static[1:-1] if nhwc else static[2:]
        if any(isinstance(w, int) and w != s for w, s in zip(want_s, shape[2:], strict=True)):
            raise ModelError(
                f"ONNX model {self.path} takes tiles of spatial shape {list(want_s)} but got {list(shape[2:])}; "
                f"set tiling.tile to {list(want_s)} (or export the model with dynamic spatial axes)."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K, *S)`` (two classes for a one-channel model) for tiles ``(N, C, *S)``."""
        self._check(tuple(x.shape))
        if self.options.input_layout == "channels_last":
            x = x.movedim(1, -1)
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy(), dtype=self.input_dtype)
        session = self.session(x.device)
        batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else len(arr)
        parts = []
        for i in range(0, len(arr), max(batch, 1)):
            chunk = arr[i : i + batch]
            pad = batch - len(chunk)
            if pad:  # a graph with a static batch size: fill the last chunk, drop the filler afterwards
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), dtype=chunk.dtype)])
            out = session.run([self.output_name], {self.input_name: chunk})[0]
            parts.append(out[: len(out) - pad])
        y = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0]))
        y = y.movedim(self.options.class_axis, 1).to(x.device)
        return as_logits(y, probabilities=self.options.output == "probabilities")


def open_session(path: Path, options: Any, providers: Sequence[Any]) -> Any:
    """An onnxruntime session, with a ReadError naming the file when the graph cannot be loaded."""
    ort = _ort()
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ReadError(f"ONNX model {path} could not be loaded by onnxruntime ({err}).") from err


def _metadata(session: Any, path: Path) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ModelError(f"ONNX model {path}: metadata {META_KEY!r} is not JSON ({err}).") from err
    if not isinstance(meta, dict):
        raise ModelError(f"ONNX model {path}: metadata {META_KEY!r} is a {type(meta).__name__}, not a mapping.")
    return meta


def _pick(items: Sequence[Any], name: str | None, what: str, path: Path) -> Any:
    if name is None:
        if what == "input" and len(items) != 1:
            raise ModelError(
                f"ONNX model {path} has inputs {[i.name for i in items]}; set model.onnx.input_name to the image's."
            )
        return items[0]
    for item in items:
        if item.name == name:
            return item
    raise ModelError(f"ONNX model {path} has no {what} {name!r}; its {what}s are {[i.name for i in items]}.")


def open_onnx(
    path: Path, *, spec: ModelSpec | None, settings: Mapping[str, Any] | None = None, asked: str = "onnx"
) -> Opened:
    """Open an ONNX model and wrap it as a network, with the ``tiler`` entry of its metadata as what it stores.

    Args:
        path: The ``.onnx`` file.
        spec: Must be None: the graph is the network.
        settings: :class:`OnnxOptions` fields (the config's ``model.onnx``); they override the file's
            ``tiler`` metadata entry.
        asked: The ``model.format`` asked for.

    Returns:
        The opened model, format ``"onnx"`` (no MONAI spec). Its class count comes from the output's class axis,
        else from the class names (the caller's, else the metadata's).

    """
    if spec is not None:
        raise ModelError(f"model {path} is onnx: it carries its own network, so a model spec does not apply.")
    ort = _ort()
    probe = ort.SessionOptions()
    probe.intra_op_num_threads = 1
    session = open_session(path, probe, ["CPUExecutionProvider"])
    meta = _metadata(session, path)
    layout: dict[str, Any] = {k: meta[k] for k in (f.name for f in fields(OnnxOptions)) if k in meta}
    opts = OnnxOptions.from_dict({**layout, **dict(settings or {})}, source=f"ONNX model {path}")
    inp = _pick(session.get_inputs(), opts.input_name, "input", path)
    out = _pick(session.get_outputs(), opts.output_name, "output", path)
    if inp.type not in _DTYPES:
        raise ModelError(f"ONNX model {path}: input {inp.name!r} is {inp.type}; tiler feeds float tensors.")
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    if len(shape) not in (4, 5):
        raise ModelError(f"ONNX model {path}: input {inp.name!r} has shape {inp.shape}; give a 2D or 3D image model.")
    axis_dim = out.shape[opts.class_axis] if -len(out.shape) <= opts.class_axis < len(out.shape) else "missing"

    def labels(names: Any, colors: Any) -> Labels:
        if isinstance(axis_dim, int):
            classes = 2 if axis_dim == 1 else axis_dim
        elif names:
            classes = len(names)
        else:
            raise ModelError(
                f"ONNX model {path}: output {out.name!r} has shape {out.shape}, so class_axis={opts.class_axis} does "
                "not give the number of classes; set model.class_names (one per class) or model.onnx.class_axis."
            )
        return class_labels(classes, names, colors, model=f"ONNX model {path}")

    def normalization() -> Normalization | None:
        if not meta.get("normalization"):
            return None
        return Normalization.from_dict(meta["normalization"], source=f"ONNX model {path} metadata")

    network = OnnxNetwork(
        path, opts, input_name=inp.name, input_shape=shape, input_dtype=_DTYPES[inp.type], output_name=out.name
    ).eval()
    return Opened(
        "onnx", None, lambda: network, labels, normalization=normalization,
        class_names=lambda: meta.get("class_names"), class_colors=meta.get("class_colors"),
    )  # fmt: skip


def metadata_entry(
    *,
    normalization: Normalization | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    options: OnnxOptions | None = None,
) -> str:
    """The JSON text to store under the ``tiler`` key of an ONNX file's metadata (``onnx.helper.set_model_props``)."""
    entry: dict[str, Any] = asdict(options) if options is not None else {}
    entry = {k: v for k, v in entry.items() if v is not None}
    if normalization is not None:
        entry["normalization"] = normalization.to_dict()
    if class_names is not None:
        entry["class_names"] = list(class_names)
    if class_colors is not None:
        entry["class_colors"] = [list(c) for c in class_colors]
    return json.dumps(entry)
