"""The model worker's pipeline: readers, the model and writers overlap, and the output never changes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.engine.helpers import make_plan, read_store, write_model, write_raster
from tiler.engine.executor import LocalExecutor, Stages
from tiler.engine.job import run_job
from tiler.engine.local import run_in_memory
from tiler.engine.plan import BlockRecord, Plan, block_key
from tiler.engine.worker import ReaderCopies
from tiler.errors import EngineError, InputError, OutputError, ReadError
from tiler.geometry import Window
from tiler.io import open_reader

CHUNKS = (32, 32)
TIMINGS = ("read_seconds", "assemble_seconds", "infer_seconds", "stitch_seconds", "write_seconds", "idle_seconds",
           "wait_seconds")  # fmt: skip


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    return write_raster(root / "image.tif", shape=(160, 136)), write_model(root / "model.pt")


@pytest.fixture(scope="module")
def reference(scene: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities stitched in memory, block by block, without the pipeline or a store."""
    image, weights = scene
    plan = make_plan(image, weights, tmp_path_factory.mktemp("ref") / "unused.zarr")
    reader = open_reader(str(image))
    pixels, valid = reader.read_masked(Window((0, 0), plan.grid.shape))
    assert valid is not None
    labels, probs = run_in_memory(
        pixels, plan.model(), grid=plan.grid, block=plan.partition.block, blender=plan.blender, num_classes=4,
        batch_size=plan.batch_size, probabilities="float32", mask=lambda w: valid[w.slices],
    )
    assert probs is not None
    return labels, probs


@pytest.fixture(scope="module")
def digests(scene: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The block records' labels digests of a serial in-process run (one block at a time)."""
    image, weights = scene
    store = tmp_path_factory.mktemp("serial") / "out.zarr"
    run_job(make_plan(image, weights, store), executor=LocalExecutor(depth=1), chunks=CHUNKS, pixels_hash="h")
    return read_store(store)[2]


def check_identical(store: Path, reference: tuple[np.ndarray, np.ndarray], digests: dict[str, str]) -> None:
    labels, probs, got = read_store(store)
    assert np.array_equal(labels, reference[0])
    assert probs is not None and probs.tobytes() == reference[1].tobytes()  # bit for bit, not merely close
    assert got == digests


@pytest.mark.parametrize("writers", [pytest.param(1, id="1-writer"), pytest.param(2, id="2-writers")])
@pytest.mark.parametrize("readers", [pytest.param(n, id=f"{n}-readers") for n in (1, 2, 4)])
def test_in_process_output_is_bit_identical_for_any_readers_and_writers(
    scene: tuple[Path, Path], reference: tuple[np.ndarray, np.ndarray], digests: dict[str, str], tmp_path: Path,
    readers: int, writers: int,
) -> None:
    image, weights = scene
    plan = make_plan(image, weights, tmp_path / "out.zarr")
    executor = LocalExecutor(readers=readers, writers=writers)
    assert executor.depth == readers + 1 + writers
    result = run_job(plan, executor=executor, chunks=CHUNKS, pixels_hash="h")
    assert result.blocks_run == len(plan.partition)
    check_identical(tmp_path / "out.zarr", reference, digests)


@pytest.mark.parametrize(
    ("readers", "writers"),
    [pytest.param(1, 1, id="1-reader-1-writer"), pytest.param(2, 2, id="2-readers-2-writers"),
     pytest.param(4, 1, id="4-readers-1-writer")],
)  # fmt: skip
def test_ray_output_is_bit_identical_for_any_readers_and_writers(
    ray_session: Any, scene: tuple[Path, Path], reference: tuple[np.ndarray, np.ndarray], digests: dict[str, str],
    tmp_path: Path, readers: int, writers: int,
) -> None:
    from tiler.engine.ray import RayExecutor, RayOptions

    image, weights = scene
    options = RayOptions(actors=1, readers=readers, writers=writers)
    assert options.depth == readers + 1 + writers
    run_job(make_plan(image, weights, tmp_path / "out.zarr"), executor=RayExecutor(options), chunks=CHUNKS,
            pixels_hash="h")  # fmt: skip
    check_identical(tmp_path / "out.zarr", reference, digests)


def test_pipeline_depth_follows_the_stages_and_one_in_flight_runs_serially() -> None:
    from tiler.engine.ray import RayOptions

    assert Stages.sized(None, None, cpus=1.0) == Stages(1, 1)
    assert Stages.sized(None, None, cpus=64.0) == Stages(4, 1)  # capped
    assert RayOptions(cpus_per_actor=2.0, writers=2).depth == 2 + 1 + 2
    assert RayOptions(max_in_flight=9).depth == 9  # a deeper queue asked for is kept
    assert RayOptions(max_in_flight=1, readers=4).depth == 1  # prefetch off: one block at a time
    assert LocalExecutor(depth=1, readers=4).slots() == 1
    with pytest.raises(EngineError, match=r"engine\.writers=0 must be a whole number >= 1"):
        Stages(1, 0)


def _intervals(calls: list[tuple[str, float, float]], kind: str) -> list[tuple[float, float]]:
    return [(a, b) for k, a, b in calls if k == kind]


def test_blocks_are_written_while_the_next_block_infers(
    scene: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiler.engine.worker import BlockWorker
    from tiler.io.store import OutputStore

    calls: list[tuple[str, float, float]] = []
    infer, write = BlockWorker.infer, OutputStore.write_block

    def timed_infer(self: BlockWorker, prepared: Any) -> Any:
        t0 = time.perf_counter()
        out = infer(self, prepared)
        calls.append(("infer", t0, time.perf_counter()))
        return out

    def slow_write(self: OutputStore, *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        time.sleep(0.2)  # an encoder slower than the model: the model must not wait for it
        write(self, *args, **kwargs)
        calls.append(("write", t0, time.perf_counter()))

    monkeypatch.setattr(BlockWorker, "infer", timed_infer)
    monkeypatch.setattr(OutputStore, "write_block", slow_write)
    image, weights = scene
    plan = make_plan(image, weights, tmp_path / "out.zarr", block=64)
    result = run_job(plan, executor=LocalExecutor(readers=1, writers=1), chunks=CHUNKS, pixels_hash="h")
    infers, writes = _intervals(calls, "infer"), _intervals(calls, "write")
    assert len(infers) == len(writes) == len(plan.partition) == 9
    # an inference began while a block was being written (serially, every inference would wait for the write)
    overlapping = [a for a, _ in infers if any(w0 < a < w1 for w0, w1 in writes)]
    assert len(overlapping) >= 3
    # one writer: the writes never overlap one another
    writes.sort()
    assert all(b[0] >= a[1] for a, b in zip(writes, writes[1:], strict=False))
    assert sum(r.write_seconds for r in result.records.values()) >= 9 * 0.2


def test_the_model_runs_one_block_at_a_time_and_reads_overlap(
    scene: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiler.engine.worker import BlockWorker

    running = {"infer": 0, "read": 0}
    most = {"infer": 0, "read": 0}
    lock = threading.Lock()
    infer, read = BlockWorker.infer, BlockWorker.read

    def counted(kind: str, fn: Any) -> Any:
        def call(self: BlockWorker, arg: Any) -> Any:
            with lock:
                running[kind] += 1
                most[kind] = max(most[kind], running[kind])
            try:
                time.sleep(0.05 if kind == "read" else 0.0)  # a slow decoder: the readers overlap
                return fn(self, arg)
            finally:
                with lock:
                    running[kind] -= 1

        return call

    monkeypatch.setattr(BlockWorker, "infer", counted("infer", infer))
    monkeypatch.setattr(BlockWorker, "read", counted("read", read))
    image, weights = scene
    run_job(make_plan(image, weights, tmp_path / "out.zarr", block=32), executor=LocalExecutor(readers=3, writers=1),
            chunks=CHUNKS, pixels_hash="h")  # fmt: skip
    assert most["infer"] == 1
    assert 2 <= most["read"] <= 3


def _run_blocks(executor: LocalExecutor, plan: Plan) -> dict[str, Any]:
    """Every block of ``plan`` through ``executor``; each block's record or error by key."""
    executor.start(plan.model)
    pending, out = list(plan.positions()), {}
    try:
        while pending or executor.in_flight():
            while pending and executor.slots() > 0:
                position = pending.pop(0)
                executor.submit(block_key(position), plan, position)
            for done in executor.wait(timeout=60):
                out[done.token] = done.error if done.error is not None else done.record
    finally:
        executor.close()
    return out


def test_a_read_failure_and_a_write_failure_fail_only_their_blocks(
    scene: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiler.io.raster import RasterReader
    from tiler.io.store import OutputStore

    image, weights = scene
    plan = make_plan(image, weights, tmp_path / "out.zarr")
    run_job(plan, chunks=CHUNKS, pixels_hash="h")  # the store the blocks write into again
    read_inside, write = RasterReader._read_inside, OutputStore.write_block

    def broken_read(self: RasterReader, window: Window) -> np.ndarray:
        if window.start[0] <= 100 < window.stop[0] and window.start[1] <= 100 < window.stop[1]:  # only block 1_1's
            raise ReadError(f"{self.path}: TIFFReadEncodedTile() failed at window {window}")
        return read_inside(self, window)

    def broken_write(self: OutputStore, window: Window, *args: Any, **kwargs: Any) -> None:
        if window.start == (0, 64):
            raise OutputError(f"{self.path}: no space left on device")
        write(self, window, *args, **kwargs)

    monkeypatch.setattr(RasterReader, "_read_inside", broken_read)
    monkeypatch.setattr(OutputStore, "write_block", broken_write)
    done = _run_blocks(LocalExecutor(readers=2, writers=2), plan)
    assert set(done) == {block_key(p) for p in plan.positions()}
    failed = {key for key, d in done.items() if not isinstance(d, BlockRecord)}
    assert failed == {"1_1", "0_1"}
    where = r"\(window .*\) of \S+image\.tif → \S+out\.zarr failed: "
    with pytest.raises(EngineError, match=rf"^block 1_1 {where}.*TIFFReadEncodedTile\(\) failed"):
        raise done["1_1"]
    with pytest.raises(EngineError, match=rf"^block 0_1 {where}.*no space left on device"):
        raise done["0_1"]
    assert not isinstance(done["0_1"], InputError)


def test_block_records_carry_stage_timings_and_old_records_read_as_zero(
    scene: tuple[Path, Path], tmp_path: Path
) -> None:
    image, weights = scene
    plan = make_plan(image, weights, tmp_path / "out.zarr", block=32)
    result = run_job(plan, executor=LocalExecutor(readers=2, writers=1), chunks=CHUNKS, pixels_hash="h")
    records = list(result.records.values())
    assert len(records) == len(plan.partition)
    for record in records:
        on_disk = record.to_json()
        assert all(isinstance(on_disk[k], float) and on_disk[k] >= 0 for k in TIMINGS), on_disk
        assert BlockRecord.from_json(on_disk) == record
    assert sum(r.assemble_seconds for r in records) > 0 and sum(r.infer_seconds for r in records) > 0
    # the first block a fresh worker infers: the time before it (loading, its read) is not idle time
    assert min(r.idle_seconds for r in records) == 0.0
    new = ("assemble_seconds", "idle_seconds", "wait_seconds")
    old = {k: v for k, v in records[0].to_json().items() if k not in new}
    back = BlockRecord.from_json(old)
    assert (back.assemble_seconds, back.idle_seconds, back.wait_seconds) == (0.0, 0.0, 0.0)
    assert back.read_seconds == records[0].read_seconds


def test_reader_copies_give_each_thread_its_own_reader(scene: tuple[Path, Path]) -> None:
    image, _ = scene
    first = open_reader(str(image))
    first.read(Window((0, 0), (8, 8)))  # opened: a copy must not share its handle
    copies = ReaderCopies(first)
    barrier = threading.Barrier(3)
    seen: list[Any] = []

    def borrow() -> None:
        with copies.borrow() as reader:
            barrier.wait(timeout=10)  # all three hold one at once
            seen.append(reader)
            assert reader.read(Window((40, 40), (72, 72))).shape == (3, 32, 32)

    threads = [threading.Thread(target=borrow) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in seen}) == 3 == len(copies)
    assert len({id(r.handle) for r in seen}) == 3
    with copies.borrow() as again:  # an idle copy is reused, no fourth one is made
        assert again in seen
    assert len(copies) == 3
    copies.close()


def test_staged_batches_give_the_same_probabilities_as_raw_ones(scene: tuple[Path, Path]) -> None:
    from tiler.model import TileRunner, load_model

    _, weights = scene
    runner = TileRunner(load_model(str(weights)), device="cpu", threads=1)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 255, size=(n, 3, 32, 32), dtype=np.uint8) for n in (3, 1, 4)]
    raw = list(runner.stream(batches))
    staged = [runner.stage(b) for b in batches]
    assert all(s.tensor.dtype == torch.float32 and len(s) == len(b) for s, b in zip(staged, batches, strict=True))
    for a, b in zip(raw, runner.stream(staged), strict=True):
        assert torch.equal(a, b)
