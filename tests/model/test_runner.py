from __future__ import annotations

import numpy as np
import pytest
import torch

from tiler.errors import ModelError
from tiler.model.checkpoint import LoadedModel
from tiler.model.normalize import Normalization
from tiler.model.runner import TileRunner
from tiler.model.spec import ModelSpec, build_network

NORM = Normalization("meanstd", mean=(100.0, 50.0), std=(20.0, 10.0))


def _loaded(network: torch.nn.Module, *, dims: int = 2, classes: int = 3, norm: Normalization = NORM) -> LoadedModel:
    spec = ModelSpec("UNet", dims, 2, classes)
    names = tuple(f"c{i}" for i in range(classes))
    return LoadedModel(network.eval(), spec, norm, names, ((0, 0, 0),) * classes)


def _pointwise(dims: int = 2, classes: int = 3) -> torch.nn.Module:
    """A 1x1 conv net: every flip commutes with it (flip-equivariant)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(2, 8, 1), torch.nn.Tanh(), conv(8, classes, 1))


def _tiles(n: int, shape=(16, 16), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, size=(n, 2, *shape)).astype(np.uint16)


def test_runner_equals_softmax_of_bare_model_on_normalised_tiles():
    net = _pointwise()
    tiles = _tiles(5)
    out = TileRunner(_loaded(net), device="cpu", batch_size=2)(tiles)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(NORM.apply(tiles, spatial_dims=2))), 1).numpy()
    assert out.dtype == np.float32 and out.shape == (5, 3, 16, 16)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)


def test_runner_accepts_torch_tensors():
    runner = TileRunner(_loaded(_pointwise()), device="cpu")
    tiles = _tiles(3)
    np.testing.assert_array_equal(runner(torch.from_numpy(tiles.astype(np.float32))), runner(tiles))


@pytest.mark.parametrize(
    ("dims", "flips"),
    [
        pytest.param(2, (0, 1), id="2d-rows-cols"),
        pytest.param(2, ((0, 1),), id="2d-both-at-once"),
        pytest.param(3, (0, 1, 2), id="3d-each-axis"),
    ],
)
def test_tta_with_flip_equivariant_model_equals_no_tta(dims, flips):
    model = _loaded(_pointwise(dims), dims=dims)
    shape = (8, 8) if dims == 2 else (4, 8, 8)
    tiles = _tiles(3, shape)
    plain = TileRunner(model, device="cpu")(tiles)
    tta = TileRunner(model, device="cpu", tta_flips=flips)(tiles)
    np.testing.assert_allclose(tta, plain, atol=1e-6)


def test_tta_averages_unflipped_probabilities_of_a_position_dependent_model():
    spec_net = build_network(ModelSpec("UNet", 2, 2, 3, {"channels": [4, 8], "strides": [2], "num_res_units": 0}))
    model = _loaded(spec_net)
    tiles = _tiles(2)
    runner = TileRunner(model, device="cpu", tta_flips=(1,))
    plain = TileRunner(model, device="cpu")(tiles)
    flipped = TileRunner(model, device="cpu")(tiles[..., ::-1].copy())[..., ::-1]
    np.testing.assert_allclose(runner(tiles), (plain + flipped) / 2, atol=1e-5)
    assert not np.allclose(plain, flipped, atol=1e-4)


class _OOMAbove(torch.nn.Module):
    """Raises ``error`` (torch.OutOfMemoryError by default) for batches larger than ``limit``; counts calls."""

    def __init__(self, inner: torch.nn.Module, limit: int, error=None) -> None:
        super().__init__()
        self.inner, self.limit, self.batches = inner, limit, []
        self.error = error or (lambda n: torch.OutOfMemoryError(f"CUDA out of memory (fake, batch {n})"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise self.error(x.shape[0])
        return self.inner(x)


def test_out_of_memory_halves_batch_and_keeps_every_tile():
    inner = _pointwise()
    wrapped = _OOMAbove(inner, limit=3)
    tiles = _tiles(11)
    runner = TileRunner(_loaded(wrapped), device="cpu", batch_size=8)
    out = runner(tiles)
    expected = TileRunner(_loaded(inner), device="cpu", batch_size=11)(tiles)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert runner.batch_size == 2
    assert wrapped.batches[:3] == [8, 4, 2]
    assert sum(b for b in wrapped.batches if b <= 3) == 11


def test_out_of_memory_at_batch_one_is_a_model_error():
    runner = TileRunner(_loaded(_OOMAbove(_pointwise(), limit=0)), device="cpu", batch_size=4)
    with pytest.raises(ModelError, match=r"runs out of memory on cpu even with batch_size=1"):
        runner(_tiles(2))


def test_explicit_bf16_on_cpu_is_close_to_fp32():
    model = _loaded(_pointwise())
    tiles = _tiles(2)
    fp32 = TileRunner(model, device="cpu")(tiles)
    bf16 = TileRunner(model, device="cpu", precision="bf16")(tiles)
    assert TileRunner(model, device="cpu").precision == "fp32"
    np.testing.assert_allclose(bf16, fp32, atol=0.03)


def test_threads_are_set_on_cpu():
    before = torch.get_num_threads()
    try:
        TileRunner(_loaded(_pointwise()), device="cpu", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"precision": "int8"}, r"precision='int8' is unknown", id="precision"),
        pytest.param({"batch_size": 0}, r"batch_size=0 must be a positive integer", id="batch"),
        pytest.param({"tta_flips": (2,)}, r"names spatial axis 2; valid axes are 0..1", id="tta-axis"),
        pytest.param({"device": "tpu"}, r"device='tpu' is not", id="device"),
        pytest.param({"threads": 0}, r"threads=0 must be >= 1", id="threads"),
    ],
)
def test_bad_runner_settings_are_refused(kwargs, match):
    with pytest.raises(ModelError, match=match):
        TileRunner(_loaded(_pointwise()), **kwargs)


def test_tiles_with_wrong_band_count_are_refused():
    runner = TileRunner(_loaded(_pointwise()), device="cpu")
    with pytest.raises(ModelError, match=r"tiles have 3 channels but the model reads 2"):
        runner(np.zeros((1, 3, 8, 8), dtype=np.float32))


# ------------------------------------------------------------------ probabilities left on the device


def test_predict_tensor_is_the_numpy_call_left_on_the_device():
    runner = TileRunner(_loaded(_pointwise()), device="cpu", batch_size=2)
    tiles = _tiles(5)
    out = runner.predict_tensor(tiles)
    assert isinstance(out, torch.Tensor) and out.device == runner.device and out.dtype == torch.float32
    assert out.shape == (5, 3, 16, 16) and out.is_contiguous()
    np.testing.assert_array_equal(out.numpy(), runner(tiles))
    assert runner.predict_tensor(_tiles(0)).shape == (0, 3, 16, 16)


def test_stream_reads_one_batch_ahead_and_reuses_its_host_buffers():
    runner = TileRunner(_loaded(_pointwise()), device="cpu", batch_size=4)
    batches = [_tiles(4, seed=s) for s in range(4)]
    pulled: list[int] = []

    def source():
        for i, b in enumerate(batches):
            pulled.append(i)
            yield b

    buffers = set()
    outputs = []
    for i, probs in enumerate(runner.stream(source())):
        assert pulled[-1] == min(i + 1, len(batches) - 1)  # the next batch is staged before this one is used
        buffers |= {b.data_ptr() for b in runner._stage._buffers if b is not None}
        outputs.append(probs.clone())
        probs.zero_()  # the caller owns its outputs: scribbling on them must not touch later batches
    assert len(buffers) == 2  # two host slots, allocated once
    for b, out in zip(batches, outputs, strict=True):
        np.testing.assert_array_equal(out.numpy(), runner(b))


@pytest.mark.parametrize("dims", [pytest.param(2, id="2d"), pytest.param(3, id="3d")])
def test_channels_last_gives_the_same_contiguous_probabilities(dims):
    net = build_network(
        ModelSpec("UNet", dims, 2, 3, {"channels": [4, 8], "strides": [2], "num_res_units": 1})
    ).eval()
    model = _loaded(net, dims=dims)
    tiles = _tiles(3, (16, 16) if dims == 2 else (8, 16, 16))
    plain = TileRunner(model, device="cpu", memory_format="contiguous").predict_tensor(tiles)
    last = TileRunner(model, device="cpu", memory_format="channels_last").predict_tensor(tiles)
    assert last.is_contiguous()
    np.testing.assert_allclose(last.numpy(), plain.numpy(), atol=1e-5)


def test_unknown_memory_format_is_refused():
    with pytest.raises(ModelError, match=r"memory_format='nhwc' is unknown"):
        TileRunner(_loaded(_pointwise()), device="cpu", memory_format="nhwc")


def test_out_of_memory_in_a_stream_halves_the_batch_for_the_rest_of_the_stream():
    inner = _pointwise()
    wrapped = _OOMAbove(inner, limit=3)
    runner = TileRunner(_loaded(wrapped), device="cpu", batch_size=8)
    batches = [_tiles(8, seed=s) for s in range(3)]
    outputs = list(runner.stream(batches))
    expected = TileRunner(_loaded(inner), device="cpu", batch_size=8)
    for b, out in zip(batches, outputs, strict=True):
        np.testing.assert_allclose(out.numpy(), expected(b), atol=1e-6)
    assert runner.batch_size == 2
    assert wrapped.batches == [8, 4] + [2] * 12  # after the first back-off no batch is tried too big again


def test_cudnn_workspace_allocation_failure_counts_as_out_of_memory():
    def alloc_failed(n):
        return RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")

    wrapped = _OOMAbove(_pointwise(), limit=2, error=alloc_failed)
    runner = TileRunner(_loaded(wrapped), device="cpu", batch_size=8)
    assert runner(_tiles(5)).shape == (5, 3, 16, 16) and runner.batch_size == 2


def test_other_runtime_errors_are_not_retried():
    wrapped = _OOMAbove(_pointwise(), limit=2, error=lambda n: RuntimeError("shape mismatch in layer 3"))
    runner = TileRunner(_loaded(wrapped), device="cpu", batch_size=8)
    with pytest.raises(RuntimeError, match="shape mismatch in layer 3"):
        runner(_tiles(5))
    assert runner.batch_size == 8 and wrapped.batches == [5]
