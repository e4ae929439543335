"""The GPU path on a real CUDA device: bf16 vs fp32, device vs CPU accumulator, OOM back-off, pinned streaming.

Every test here is marked ``gpu`` and skipped, with the reason, where ``torch.cuda.is_available()`` is False.
Run them alone with ``python -m pytest tests/gpu -m gpu``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tiler.blend import Blender
from tiler.engine.local import run_in_memory
from tiler.engine.work import infer_block, prepare_block
from tiler.geometry import BlockPartition, TileGrid, Window
from tiler.model.checkpoint import LoadedModel
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import ModelSpec, build_network
from tiler.stitch import BlockAccumulator, TorchBlockAccumulator

NO_CUDA = "needs a CUDA device (torch.cuda.is_available() is False)"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]


def _model(dims: int, *, channels: tuple[int, ...] = (16, 32, 64), in_ch: int = 2, classes: int = 5) -> LoadedModel:
    torch.manual_seed(0)
    spec = ModelSpec(
        "UNet", dims, in_ch, classes,
        {"channels": list(channels), "strides": [2] * (len(channels) - 1), "num_res_units": 1},
    )
    net = build_network(spec).eval()
    norm = Normalization("meanstd", mean=(100.0,) * in_ch, std=(30.0,) * in_ch)
    return LoadedModel(net, spec, norm, tuple(f"c{i}" for i in range(classes)), ((0, 0, 0),) * classes)


def _tiles(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=(n, 2, *shape)).astype(np.uint16)


def _confident(probs: np.ndarray, margin: float) -> np.ndarray:
    """Pixels whose top class beats the runner-up by more than ``margin`` (``probs`` is (N, K, *S))."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > margin


@pytest.mark.parametrize(
    ("dims", "shape"), [pytest.param(2, (128, 128), id="2d"), pytest.param(3, (48, 48, 48), id="3d")]
)
def test_bf16_autocast_agrees_with_fp32(dims: int, shape: tuple[int, ...]) -> None:
    model = _model(dims)
    tiles = _tiles(4, shape)
    auto = TileRunner(model, device="cuda", batch_size=4)
    assert auto.precision == "bf16"
    bf16 = auto(tiles)
    fp32 = TileRunner(model, device="cuda", precision="fp32", batch_size=4)(tiles)
    assert np.isfinite(bf16).all()
    np.testing.assert_allclose(bf16, fp32, atol=0.05)
    sure = _confident(fp32, 0.1)
    assert sure.mean() > 0.05, "the test model is too unsure of itself to compare labels"
    assert np.array_equal(bf16.argmax(1)[sure], fp32.argmax(1)[sure])


def test_channels_last_is_the_2d_default_on_cuda_and_matches_the_cpu() -> None:
    model = _model(2)
    tiles = _tiles(3, (64, 64))
    gpu = TileRunner(model, device="cuda", precision="fp32")
    assert gpu._memory_format is torch.channels_last
    out = gpu.predict_tensor(tiles)
    assert out.device.type == "cuda" and out.is_contiguous()
    cpu = TileRunner(_model(2), device="cpu")(tiles)
    np.testing.assert_allclose(out.cpu().numpy(), cpu, atol=5e-3)  # cuDNN may use TF32 for fp32 convolutions


@pytest.mark.parametrize("kept", ["float32", "float16", "uint8"])
def test_device_accumulator_gives_the_cpu_accumulators_results(kept: str) -> None:
    grid = TileGrid((150, 170), (32, 32), (8, 6))
    blender = Blender("gaussian")
    rng = np.random.default_rng(1)
    for window in list(BlockPartition(grid.shape, (64, 96)))[:3]:
        positions = grid.positions_intersecting(window)
        probs = np.moveaxis(rng.dirichlet(np.ones(4), size=(len(positions), 32, 32)).astype(np.float32), -1, 1)
        ref = BlockAccumulator(window, 4)
        for pos, p in zip(positions, probs, strict=True):
            ref.add(grid.window(pos), p.copy(), blender.weights(grid, pos))
        acc = TorchBlockAccumulator(window, 4, device="cuda")
        acc.add_batch(
            [grid.window(p) for p in positions], torch.from_numpy(probs).cuda(),
            [blender.weights_on(grid, p, "cuda") for p in positions], overwrite=True,
        )
        assert np.array_equal(acc.sums.cpu().numpy(), ref.sums)  # IEEE multiply and add, separate kernels
        assert np.array_equal(acc.weights.cpu().numpy(), ref.weights)
        got = acc.finalize(probabilities=kept)
        expected = ref.finalize(probabilities=kept)
        assert np.array_equal(got.labels, expected.labels) and np.array_equal(got.covered, expected.covered)
        assert got.probabilities is not None and expected.probabilities is not None
        diff = np.abs(got.probabilities.astype(np.float32) - expected.probabilities.astype(np.float32))
        assert diff.max() <= (1 if kept == "uint8" else 1e-3 if kept == "float16" else 1e-7)
        assert (diff > 0).mean() < 1e-3


def test_engine_on_cuda_agrees_with_the_engine_on_cpu() -> None:
    image = np.random.default_rng(2).integers(0, 200, size=(2, 300, 260)).astype(np.uint16)
    grid = TileGrid((300, 260), (64, 64), (16, 16))
    kwargs = {"grid": grid, "block": (128, 128), "blender": Blender("gaussian"), "num_classes": 5}
    cpu_labels, cpu_probs = run_in_memory(image, TileRunner(_model(2), device="cpu"), **kwargs)  # type: ignore[arg-type]
    gpu = TileRunner(_model(2), device="cuda", precision="fp32")
    labels, probs = run_in_memory(image, gpu, **kwargs)  # type: ignore[arg-type]
    assert probs is not None and cpu_probs is not None
    np.testing.assert_allclose(probs, cpu_probs, atol=5e-3)
    sure = _confident(cpu_probs[None], 0.05)[0]
    assert np.array_equal(labels[sure], cpu_labels[sure])


def test_streamed_batches_through_pinned_buffers_equal_one_batch_at_a_time() -> None:
    runner = TileRunner(_model(2), device="cuda", batch_size=8)
    batches = [_tiles(8, (96, 96), seed=s) for s in range(6)]

    def source() -> Iterator[np.ndarray]:
        yield from batches

    streamed = [p.cpu().numpy() for p in runner.stream(source())]
    assert all(b is None or b.is_pinned() for b in runner._stage._buffers)
    for batch, out in zip(batches, streamed, strict=True):
        np.testing.assert_array_equal(out, runner.predict_tensor(batch).cpu().numpy())


def test_out_of_memory_back_off_on_a_real_device_keeps_every_tile() -> None:
    model = _model(3, channels=(32, 64, 128))
    grid = TileGrid((96, 96, 160), (48, 48, 48), (8, 8, 8))
    image = np.random.default_rng(3).integers(0, 200, size=(2, 96, 96, 160)).astype(np.uint16)
    window = Window((0, 0, 0), (96, 96, 160))
    tiles = len(grid.positions_intersecting(window))  # 36
    kwargs = {"blender": Blender("gaussian"), "num_classes": 5, "probabilities": "float32"}
    one = TileRunner(model, device="cuda", batch_size=1)
    prepared = prepare_block(window, grid, read=lambda w: image[(slice(None), *w.slices)])
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    reference, _ = infer_block(prepared, grid, predict=one, **kwargs)
    per_tile = torch.cuda.max_memory_allocated() - base  # one tile's forward, plus the block's sums
    runner = TileRunner(model, device="cuda", batch_size=64)
    del one
    torch.cuda.empty_cache()
    # room for about three tiles at a time: a batch of 36 cannot fit, a batch of 1 or 2 can
    limit = torch.cuda.memory_reserved() + 3 * per_tile + 2**26
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / torch.cuda.get_device_properties(0).total_memory))
    try:
        prepared = prepare_block(window, grid, read=lambda w: image[(slice(None), *w.slices)])
        result, stats = infer_block(prepared, grid, predict=runner, batch_size=64, **kwargs)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert runner.batch_size < tiles, "the memory limit did not force a smaller batch"
    assert stats.tiles_run == tiles and result.covered.all()
    assert result.probabilities is not None and reference.probabilities is not None
    np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=0.02)


def test_batches_staged_by_reader_threads_are_pinned_and_give_the_raw_batches_probabilities() -> None:
    import threading

    model = _model(2)
    runner = TileRunner(model, device="cuda", precision="fp32", batch_size=4)
    batches = [_tiles(4, (64, 64), seed=s) for s in range(3)]
    staged: list[object] = [None] * len(batches)

    def stage(i: int) -> None:  # as the engine's reader threads do, beside the inference thread
        staged[i] = runner.stage(batches[i])

    threads = [threading.Thread(target=stage, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(b.tensor.is_pinned() for b in staged)  # type: ignore[attr-defined]
    from_staged = [p.cpu().numpy() for p in runner.stream(staged)]  # type: ignore[arg-type]
    from_raw = [p.cpu().numpy() for p in runner.stream(batches)]
    for a, b in zip(from_staged, from_raw, strict=True):
        np.testing.assert_array_equal(a, b)
