"""The tile runner: one object that turns a batch of raw tiles into softmax class probabilities.

It normalises, batches, runs the network on the chosen device and precision, averages flip
test-time augmentation in probability space, and halves its batch size when the GPU runs out of
memory without ever dropping a tile. No Ray here: an engine wraps it in an actor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from tiler.errors import ModelError
from tiler.model.checkpoint import LoadedModel

__all__ = ["PRECISIONS", "TileRunner", "resolve_device"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_OOM: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError}
)


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

    Attributes:
        batch_size: The batch size in use (lower than asked after an out-of-memory retry).
        device: The torch device.

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
        self._buffer: np.ndarray | None = None
        self.network = model.network.to(self.device).eval()
        self._channels_last = self.device.type == "cuda" and spatial == 2
        if self._channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    # ------------------------------------------------------------------ public
    @property
    def num_classes(self) -> int:
        """Number of output classes K."""
        return self.model.num_classes

    def __call__(self, tiles: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities for tiles.

        Args:
            tiles: Raw tiles ``(N, C, *S)`` (any numeric dtype; normalised here).

        Returns:
            float32 softmax probabilities ``(N, K, *S)``.

        """
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
        flips = self._flips if self._flips is not None else _flip_sets(self._tta, spatial)
        n = x.shape[0]
        out: torch.Tensor | None = None
        i = 0
        while i < n:
            bs = self.batch_size
            chunk = x[i : i + bs]
            try:
                probs = self._run_chunk(chunk, spatial, flips)
            except _OOM as err:
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
            if i == 0 and len(chunk) == n:  # one chunk: hand its probabilities over without a copy
                return probs.numpy()
            if out is None:  # numpy allocates big arrays on huge pages; torch's copy_ is parallel
                out = torch.from_numpy(np.empty((n, *probs.shape[1:]), dtype=np.float32))
            out[i : i + len(chunk)].copy_(probs)
            i += len(chunk)
        if out is None:
            return np.empty((0, self.num_classes, *x.shape[2:]), dtype=np.float32)
        return out.numpy()

    # ------------------------------------------------------------------ internals
    def _free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    def _to_device(self, chunk: np.ndarray, spatial: int) -> torch.Tensor:
        # A reused input buffer: fresh multi-megabyte arrays per batch cost page faults the bare loop never pays.
        if self._buffer is None or self._buffer.shape[1:] != chunk.shape[1:] or len(self._buffer) < len(chunk):
            self._buffer = np.empty((max(len(chunk), self.batch_size), *chunk.shape[1:]), dtype=np.float32)
        norm = self.model.normalization.apply(chunk, spatial_dims=spatial, out=self._buffer[: len(chunk)])
        t = torch.from_numpy(norm)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
            if self._channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _forward(self, t: torch.Tensor) -> torch.Tensor:
        logits = self.network(t)
        if isinstance(logits, list | tuple):
            logits = logits[0]
        return torch.softmax(logits.float(), dim=1)

    def _run_chunk(self, chunk: np.ndarray, spatial: int, flips: list[tuple[int, ...]]) -> torch.Tensor:
        t = self._to_device(chunk, spatial)
        with torch.inference_mode(), self._autocast():
            if len(flips) == 1:
                probs = self._forward(t)
            else:
                dims = [tuple(2 + a for a in f) for f in flips]
                batch = torch.cat([t.flip(d) if d else t for d in dims], dim=0)
                parts = self._forward(batch).split(t.shape[0], dim=0)
                probs = torch.stack([p.flip(d) if d else p for p, d in zip(parts, dims, strict=True)]).mean(0)
        return probs.cpu()
