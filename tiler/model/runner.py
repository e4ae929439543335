"""The tile runner: one object that turns a batch of raw tiles into softmax class probabilities.

It normalises, batches, runs the network on the chosen device and precision, averages flip
test-time augmentation in probability space, and halves its batch size when the GPU runs out of
memory without ever dropping a tile. No Ray here: an engine wraps it in an actor.

The probabilities can stay on the device (:meth:`TileRunner.predict_tensor`, :meth:`TileRunner.stream`)
for a device accumulator to blend; ``runner(tiles)`` returns numpy for everyone else. On CUDA the input
goes through two reused pinned host buffers and a side stream: batch ``i + 1`` is normalised on the host
and copied while the GPU computes batch ``i``. On CPU the same code runs with plain buffers and no copy.
A caller with threads of its own normalises batches ahead with :meth:`TileRunner.stage` (any thread, a
pinned buffer per batch on CUDA) and hands :meth:`TileRunner.stream` the :class:`HostBatch` it returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tiler.errors import ModelError
from tiler.model.loaded import LoadedModel

__all__ = ["MEMORY_FORMATS", "PRECISIONS", "HostBatch", "TileRunner", "resolve_device"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
_OOM: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError}
)
# cuDNN and cuBLAS report a failed workspace allocation as a plain RuntimeError with one of these in the text
_OOM_TEXT = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


def _is_oom(err: BaseException) -> bool:
    """Whether ``err`` says the device ran out of memory (and a smaller batch may fit)."""
    return isinstance(err, _OOM) or (isinstance(err, RuntimeError) and any(t in str(err) for t in _OOM_TEXT))


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise the named device (checked)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device={device!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'.")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"device={device!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'.")
    return dev


def _flip_sets(tta_flips: Sequence[int | Sequence[int]], spatial_dims: int) -> list[tuple[int, ...]]:
    """Identity plus each configured flip, as tuples of spatial axes."""
    sets: list[tuple[int, ...]] = [()]
    for entry in tta_flips:
        axes = (entry,) if isinstance(entry, int) else tuple(entry)
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < spatial_dims:
                raise ModelError(
                    f"tta_flips entry {entry!r} names spatial axis {a!r}; valid axes are "
                    f"0..{spatial_dims - 1} "
                    f"(0 = {'row' if spatial_dims == 2 else 'z'})."
                )
        key = tuple(sorted(set(axes)))
        if key and key not in sets:
            sets.append(key)
    return sets


@dataclass(frozen=True)
class HostBatch:
    """A batch already normalised on the host by :meth:`TileRunner.stage`, ready to be sent to the device.

    Attributes:
        tensor: float32 ``(N, C, *S)`` in host memory, pinned when the runner's device is CUDA; owned by the batch.
    """

    tensor: torch.Tensor

    def __len__(self) -> int:
        return int(self.tensor.shape[0])


@dataclass
class _Staged:
    """A batch on its way to the device: the device tensor and the event its copy records (CUDA only)."""

    tensor: torch.Tensor
    ready: torch.cuda.Event | None


class _HostStage:
    """Where tiles are normalised before they reach the device: reused buffers (pinned, side-stream copies on CUDA).

    Two slots alternate, so batch ``i + 1`` can be written while batch ``i``'s copy may still be in flight; a slot
    is reused only after the copy out of it has finished (its event).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._done: list[torch.cuda.Event | None] = [None, None]
        self._slot = 0
        self._stream = torch.cuda.Stream(device) if self.cuda else None

    def buffer(self, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        """A float32 host tensor of ``shape`` in the next free slot (pinned on CUDA); write it through ``.numpy()``."""
        slot, self._slot = self._slot, 1 - self._slot
        done = self._done[slot]
        if done is not None:
            done.synchronize()
        buf = self._buffers[slot]
        if buf is None or tuple(buf.shape[1:]) != shape[1:] or buf.shape[0] < shape[0]:
            buf = torch.empty(shape, dtype=torch.float32, pin_memory=self.cuda)
            self._buffers[slot] = buf
        return slot, buf[: shape[0]]

    def send(self, slot: int | None, host: torch.Tensor) -> _Staged:
        """Start the copy of ``host`` to the device; on CPU it is used in place.

        ``host`` is the buffer of ``slot`` (from :meth:`buffer`), or with ``slot=None`` a tensor of its own (a
        :class:`HostBatch`): torch's pinned-memory allocator keeps that memory until the copy has finished.
        """
        if self._stream is None:
            return _Staged(host, None)
        with torch.cuda.stream(self._stream):
            dev = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        if slot is not None:
            self._done[slot] = ready
        return _Staged(dev, ready)

    def receive(self, staged: _Staged) -> torch.Tensor:
        """The staged tensor, usable on the current stream (which waits for its copy, not the host)."""
        if staged.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(staged.ready)
            staged.tensor.record_stream(current)  # allocated on the copy stream, freed after the compute stream
        return staged.tensor


class TileRunner:
    """Run a loaded model over tiles: ``runner(tiles (N, C, *S)) -> probabilities (N, K, *S)``.

    Args:
        model: The loaded model (network, spec, normalisation).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"bf16"``, ``"fp16"`` or ``"fp32"``. Autocast is
            used for bf16/fp16; on CPU only when asked for explicitly.
        batch_size: Tiles per forward pass (before TTA multiplies it); halved on out-of-memory.
        tta_flips: Flip test-time augmentation: each entry is a spatial axis, or a tuple of axes flipped
            together; the un-flipped pass is always included and probabilities are averaged.
        threads: ``torch.set_num_threads`` on CPU when given.
        memory_format: ``"auto"`` (channels-last for 2D on CUDA, else contiguous), ``"contiguous"`` or
            ``"channels_last"`` (``channels_last_3d`` for 3D models). Probabilities come back contiguous.

    Attributes:
        batch_size: The batch size in use (lower than asked after an out-of-memory retry).
        device: The torch device.

    One caller at a time: the host buffers are shared between calls (the engine runs inference under a lock).
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        tta_flips: Sequence[int | Sequence[int]] = (),
        threads: int | None = None,
        memory_format: str = "auto",
    ) -> None:
        self.model = model
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in PRECISIONS:
            raise ModelError(f"precision={precision!r} is unknown; choose one of {['auto', *PRECISIONS]}.")
        self.precision = precision
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ModelError(f"batch_size={batch_size!r} must be a positive integer.")
        self.batch_size = batch_size
        if threads is not None:
            if threads < 1:
                raise ModelError(f"threads={threads} must be >= 1 (or None to keep torch's default).")
            if self.device.type == "cpu":
                torch.set_num_threads(threads)
        self.threads = threads
        if self.device.type == "cpu":
            # Uniform regions (air, nodata, slide background) drive activations into denormal floats, which
            # x86 CPUs compute up to ~3x slower; flushing values below ~1e-38 to zero changes no probability.
            torch.set_flush_denormal(True)
        self._tta = list(tta_flips)
        spatial = model.spatial_dims
        self._flips = _flip_sets(self._tta, spatial) if spatial is not None else None
        self._stage = _HostStage(self.device)
        self.network = model.network.to(self.device).eval()
        self._memory_format = _memory_format(memory_format, self.device, spatial)
        if self._memory_format is not None:
            self.network = self.network.to(memory_format=self._memory_format)  # type: ignore[call-overload]

    # ------------------------------------------------------------------ public
    @property
    def num_classes(self) -> int:
        """Number of output classes K."""
        return self.model.num_classes

    def __call__(self, tiles: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities for tiles, in host memory.

        Args:
            tiles: Raw tiles ``(N, C, *S)`` (any numeric dtype; normalised here).

        Returns:
            float32 softmax probabilities ``(N, K, *S)``.

        """
        x = self._check(tiles)
        n = x.shape[0]
        out: np.ndarray | None = None
        i = 0
        for probs in self.stream(_chunks(x, self)):
            if i == 0 and len(probs) == n:  # one chunk: hand its probabilities over without a copy
                return probs.cpu().numpy()
            if out is None:
                out = np.empty((n, *probs.shape[1:]), dtype=np.float32)
            # numpy allocates big arrays on huge pages; torch's copy_ is parallel
            torch.from_numpy(out[i : i + len(probs)]).copy_(probs)
            i += len(probs)
        if out is None:
            return np.empty((0, self.num_classes, *x.shape[2:]), dtype=np.float32)
        return out

    def predict_tensor(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class probabilities for tiles, left on the runner's device.

        Args:
            tiles: Raw tiles ``(N, C, *S)`` (any numeric dtype; normalised here).

        Returns:
            float32 softmax probabilities ``(N, K, *S)`` on :attr:`device`, contiguous, owned by the caller.
        """
        x = self._check(tiles)
        parts = list(self.stream(_chunks(x, self)))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return torch.empty((0, self.num_classes, *x.shape[2:]), dtype=torch.float32, device=self.device)
        return torch.cat(parts)

    def stage(self, tiles: np.ndarray) -> HostBatch:
        """Normalise raw tiles into a new float32 host tensor (pinned on CUDA), ready for :meth:`stream`.

        Safe from any thread, beside a running :meth:`stream` (no buffer is shared): the engine's reader threads
        assemble the next blocks' batches with it while the inference thread runs the model.

        Args:
            tiles: Raw tiles ``(N, C, *S)`` (any numeric dtype).

        Returns:
            The normalised batch, exactly what :meth:`stream` would compute from ``tiles``.
        """
        x = self._check(tiles)
        host = torch.empty(x.shape, dtype=torch.float32, pin_memory=self.device.type == "cuda")
        self.model.normalization.apply(x, spatial_dims=x.ndim - 2, out=host.numpy())
        return HostBatch(host)

    def stream(self, batches: Iterable[np.ndarray | HostBatch]) -> Iterator[torch.Tensor]:
        """Probabilities on the device for each batch, in order, staging the next batch while this one runs.

        Args:
            batches: Raw tile batches ``(N_i, C, *S)``, or batches :meth:`stage` normalised already; pulled one
                ahead of the batch being computed.

        Yields:
            float32 ``(N_i, K, *S)`` on :attr:`device` per batch, owned by the caller (may be modified). On CUDA
            the kernels may still be running: use them on the current stream, or synchronise.
        """
        it = iter(batches)
        first = next(it, None)
        staged = self._send(first) if first is not None else None
        while staged is not None:
            probs = self._run_staged(staged)  # asynchronous on CUDA: the host goes on to stage the next batch
            following = next(it, None)
            staged = self._send(following) if following is not None else None
            yield probs

    # ------------------------------------------------------------------ internals
    def _check(self, tiles: np.ndarray | torch.Tensor) -> np.ndarray:
        x = tiles.detach().cpu().numpy() if isinstance(tiles, torch.Tensor) else np.asarray(tiles)
        spatial = self.model.spatial_dims or x.ndim - 2
        if x.ndim != spatial + 2:
            raise ModelError(
                f"tiles of shape {tuple(x.shape)} do not have the (N, C, *S) layout with {spatial} spatial axes."
            )
        spec = self.model.spec
        if spec is not None and x.shape[1] != spec.in_channels:
            raise ModelError(
                f"tiles have {x.shape[1]} channels but the model reads {spec.in_channels} (in_channels); "
                f"select the matching bands."
            )
        return x

    def _free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    def _send(self, batch: np.ndarray | HostBatch) -> _Staged:
        """Normalise a batch into a reused host buffer (unless :meth:`stage` did) and start its copy to the device."""
        if isinstance(batch, HostBatch):
            return self._stage.send(None, batch.tensor)
        x = self._check(batch)
        slot, host = self._stage.buffer(tuple(x.shape))
        self.model.normalization.apply(x, spatial_dims=x.ndim - 2, out=host.numpy())
        return self._stage.send(slot, host)

    def _run_staged(self, staged: _Staged) -> torch.Tensor:
        """Forward passes over a staged batch, ``batch_size`` tiles at a time, halving it on out-of-memory."""
        x = self._stage.receive(staged)
        if self._memory_format is not None:
            x = x.contiguous(memory_format=self._memory_format)
        spatial = x.ndim - 2
        flips = self._flips if self._flips is not None else _flip_sets(self._tta, spatial)
        n = x.shape[0]
        out: torch.Tensor | None = None
        i = 0
        while i < n:
            bs = self.batch_size
            try:
                probs = self._run_chunk(x[i : i + bs], flips)
            except Exception as err:
                if not _is_oom(err):
                    raise
                self._free()
                if bs == 1:
                    raise ModelError(
                        f"the model runs out of memory on {self.device} even with batch_size=1 for "
                        "tiles of shape "
                        f"{tuple(x.shape[1:])}; use smaller tiles, precision='bf16', or a device with "
                        "more memory."
                    ) from err
                self.batch_size = max(1, bs // 2)
                continue
            if i == 0 and len(probs) == n:
                return probs
            if out is None:
                out = torch.empty((n, *probs.shape[1:]), dtype=torch.float32, device=probs.device)
            out[i : i + len(probs)].copy_(probs)
            i += len(probs)
        if out is None:
            return torch.empty((0, self.num_classes, *x.shape[2:]), dtype=torch.float32, device=self.device)
        return out

    def _forward(self, t: torch.Tensor) -> torch.Tensor:
        logits = self.network(t)
        if isinstance(logits, list | tuple):
            logits = logits[0]
        return torch.softmax(logits.float(), dim=1)

    def _run_chunk(self, t: torch.Tensor, flips: list[tuple[int, ...]]) -> torch.Tensor:
        # no_grad, not inference_mode: the caller owns the probabilities and may update them in place (the blend)
        with torch.no_grad(), self._autocast():
            if len(flips) == 1:
                probs = self._forward(t)
            else:
                dims = [tuple(2 + a for a in f) for f in flips]
                batch = torch.cat([t.flip(d) if d else t for d in dims], dim=0)
                parts = self._forward(batch).split(t.shape[0], dim=0)
                probs = torch.stack([p.flip(d) if d else p for p, d in zip(parts, dims, strict=True)]).mean(0)
        return probs.contiguous()


def _chunks(x: np.ndarray, runner: TileRunner) -> Iterator[np.ndarray]:
    """``x`` in runner-sized batches, read at each step (the size drops after an out-of-memory retry)."""
    i = 0
    while i < len(x):
        chunk = x[i : i + runner.batch_size]
        i += len(chunk)
        yield chunk


def _memory_format(name: str, device: torch.device, spatial: int | None) -> torch.memory_format | None:
    """The memory format for the network and its input, or None for plain contiguous tensors."""
    if name not in MEMORY_FORMATS:
        raise ModelError(f"memory_format={name!r} is unknown; choose one of {list(MEMORY_FORMATS)}.")
    if name == "auto":
        name = "channels_last" if device.type == "cuda" and spatial == 2 else "contiguous"
    if name == "contiguous":
        return None
    if spatial not in (2, 3):
        raise ModelError(
            f"memory_format='channels_last' needs a 2D or 3D model with a known spatial_dims; got {spatial!r}."
        )
    return torch.channels_last if spatial == 2 else torch.channels_last_3d
