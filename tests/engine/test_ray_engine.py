"""The Ray engine: identical output however the work is split, survives actor and driver death, resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from tests.engine.helpers import KeepOpen, make_plan, write_model, write_raster
from tests.shared_data import SHARED_DATA
from tiler.engine.job import run_job
from tiler.engine.plan import BlockRecord, Plan, block_key
from tiler.engine.ray import RayExecutor, RayOptions
from tiler.errors import EngineError, InputError, OutputError

CHUNKS = (32, 32)
DATA = SHARED_DATA


def outputs(store: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["complete"] is True
    return group["labels"][...], group["probabilities"][...]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scene")
    return write_raster(root / "image.tif"), write_model(root / "model.pt")


SHARED = RayOptions(actors=2, max_in_flight=2)
"""The options of the module's shared pool (:func:`shared_pool`)."""


@pytest.fixture(scope="module")
def shared_pool(ray_session) -> Iterator[RayExecutor]:  # type: ignore[no-untyped-def]
    """One actor pool for the module's tests that only need a working pool of :data:`SHARED` for the scene's model.

    It holds both of the session's CPUs while it runs: a test that starts its own pool (or a driver that does)
    takes :func:`own_pools` first, which stops it; the next test that needs it starts it again.
    """
    pool = RayExecutor(SHARED)
    yield pool
    pool.close()


@pytest.fixture
def pool(shared_pool: RayExecutor, scene: tuple[Path, Path], tmp_path: Path) -> KeepOpen:
    """The shared pool, started (whole: never sized down to one job's blocks) for the scene's model; not closable."""
    shared_pool.start(make_plan(*scene, tmp_path / "unused.zarr").model)
    return KeepOpen(shared_pool)


@pytest.fixture
def own_pools(shared_pool: RayExecutor) -> None:
    """The test starts its own actor pools: the shared pool gives its CPUs back first."""
    shared_pool.close()


@pytest.fixture(scope="module")
def reference(scene: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """The in-process (no Ray) result."""
    image, weights = scene
    store = tmp_path_factory.mktemp("ref") / "out.zarr"
    run_job(make_plan(image, weights, store), chunks=CHUNKS, pixels_hash="h")
    return outputs(store)


@pytest.mark.parametrize(
    ("actors", "block", "in_flight"),
    [
        pytest.param(1, 64, 1, id="1-actor"),
        pytest.param(2, 32, 3, id="small-blocks-deep-queue"),
        pytest.param(2, 128, 1, id="big-blocks"),
        pytest.param(2, 64, 2, id="2-actors"),  # last: the tests after it use the shared pool it runs on
    ],
)
def test_output_is_identical_however_the_work_is_split(
    ray_session, scene, reference, tmp_path: Path, actors: int, block: int, in_flight: int,  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest,
) -> None:
    image, weights = scene
    store = tmp_path / "out.zarr"
    plan = make_plan(image, weights, store, block=block)
    options = RayOptions(actors=actors, max_in_flight=in_flight)
    if options == SHARED:  # the module's shared pool is a pool of these options
        executor = request.getfixturevalue("pool")
    else:
        request.getfixturevalue("own_pools")
        executor = RayExecutor(options)
    result = run_job(plan, executor=executor, chunks=CHUNKS, pixels_hash="h")
    labels, probs = outputs(store)
    assert result.blocks_run == len(plan.partition)
    assert np.array_equal(labels, reference[0])
    np.testing.assert_allclose(probs, reference[1], rtol=0, atol=1e-6)
    assert len({r.pid for r in result.records.values()}) == actors


def test_tiles_over_landsat_nodata_are_skipped_and_labelled_nodata(pool, scene, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tiler.geometry import TileGrid

    image = DATA / "RGB.byte.tif"
    _, weights = scene  # the tiny model, as the shared pool runs it
    plan = make_plan(image, weights, tmp_path / "out.zarr", block=128, tile=64, overlap=16, probabilities=None)
    with rasterio.open(image) as src:
        valid = src.dataset_mask() > 0
    grid = TileGrid(valid.shape, (64, 64), (16, 16))
    empty = sum(1 for w in grid if not valid[w.clip(grid.shape).slices].any())  # type: ignore[union-attr]
    result = run_job(plan, executor=pool, chunks=CHUNKS, pixels_hash="h")
    # tiles straddling block borders are counted once per block they touch; count unique tiles per block
    per_block_expected = 0
    for pos in plan.positions():
        for t in grid.positions_intersecting(plan.window(pos)):
            if not valid[grid.window(t).clip(grid.shape).slices].any():  # type: ignore[union-attr]
                per_block_expected += 1
    assert empty > 0.15 * len(grid)
    assert result.tiles_skipped == per_block_expected
    labels = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["labels"][...]
    assert (labels[~valid] == 255).all()
    assert (labels[valid] < 4).all()


def test_a_corrupt_input_fails_the_job_naming_the_block_and_leaves_nothing_complete(
    pool, scene, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    _, weights = scene  # the tiny model, as the shared pool runs it
    plan = make_plan(DATA / "corrupt.tif", weights, tmp_path / "out.zarr", block=256, tile=64, probabilities=None)
    with pytest.raises(EngineError, match=r"block \d+_\d+ .*corrupt\.tif"):
        run_job(plan, executor=pool, chunks=CHUNKS, pixels_hash="h")
    assert not zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs.get("complete", False)


def test_truth_labels_out_of_range_fail_the_job_as_an_input_error_on_ray(
    pool, scene, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    image, weights = scene
    with rasterio.open(image) as src:
        profile = src.profile | {"count": 1, "nodata": None}
        truth = np.full((src.height, src.width), 9, np.uint8)  # 9 is neither a class (K=4) nor ignored
    with rasterio.open(tmp_path / "truth.tif", "w", **profile) as dst:
        dst.write(truth, 1)
    plan = make_plan(image, weights, tmp_path / "out.zarr", block=256, truth=tmp_path / "truth.tif")
    with pytest.raises(InputError, match=r"block \d+_\d+ .*scoring\.truth \S*truth\.tif holds label value\(s\) \[9\]"):
        run_job(plan, executor=pool, chunks=CHUNKS, pixels_hash="h")


def test_sigkill_of_an_actor_mid_job_still_completes_identically(
    ray_session, own_pools, scene, reference, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    image, weights = scene
    plan = make_plan(image, weights, tmp_path / "out.zarr", block=32)
    seen: list[str] = []
    killed: list[int] = []

    def on_record(record: BlockRecord) -> None:
        seen.append(record.block)
        if not killed:
            killed.append(record.pid)
            os.kill(record.pid, signal.SIGKILL)

    result = run_job(
        plan, executor=RayExecutor(RayOptions(actors=2, max_in_flight=2, max_restarts=2, max_task_retries=3)),
        chunks=CHUNKS, pixels_hash="h", on_record=on_record,
    )
    labels, probs = outputs(tmp_path / "out.zarr")
    assert killed
    assert sorted(seen) == sorted(block_key(p) for p in plan.positions())  # every block once, none missing
    assert len(seen) == len(set(seen))
    assert np.array_equal(labels, reference[0])
    np.testing.assert_allclose(probs, reference[1], rtol=0, atol=1e-6)
    # the killed actor was replaced: some later block ran in a new process
    assert len({r.pid for r in result.records.values()}) >= 3


DRIVER = textwrap.dedent(
    """
    import sys, pickle, ray
    from tiler.engine.job import run_job
    from tiler.engine.ray import RayExecutor, RayOptions
    plan = pickle.load(open(sys.argv[1], "rb"))
    ray.init(address=sys.argv[2], log_to_driver=False)
    run_job(plan, executor=RayExecutor(RayOptions(actors=1, max_in_flight=1)), chunks=(32, 32), pixels_hash="h")
    """
)


def _wait_until_no_actor_runs(timeout: float = 120) -> None:
    """Wait until no model actor of this process's Ray (its processes are below this one) is alive."""
    import psutil

    def actors() -> list[int]:
        out = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.name().startswith("ray::ModelActor"):
                    out.append(proc.pid)
            except psutil.Error:
                pass  # ended meanwhile
        return out

    deadline = time.time() + timeout
    while (alive := actors()) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive, f"the killed driver's actor {alive} still runs after {timeout} s"


def _slow_plan(scene: tuple[Path, Path], store: Path) -> Plan:
    image, weights = scene
    return make_plan(image, weights, store, block=32, batch_size=1)


def test_driver_killed_then_rerun_skips_finished_blocks(
    ray_session, own_pools, scene, reference, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    import pickle

    store = tmp_path / "out.zarr"
    plan = _slow_plan(scene, store)
    (tmp_path / "plan.pkl").write_bytes(pickle.dumps(plan))
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "plan.pkl"), address])
    blocks = store / ".tiler" / "blocks"
    deadline = time.time() + 120
    while time.time() < deadline and (not blocks.exists() or len(list(blocks.glob("*.json"))) < 5):
        time.sleep(0.05)
        assert proc.poll() is None, "the driver finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_until_no_actor_runs()  # Ray reaps the dead driver's actor, which writes blocks until then
    before = {f.name: f.read_bytes() for f in blocks.glob("*.json")}
    total = len(plan.partition)
    assert 5 <= len(before) < total
    assert not zarr.open_group(str(store), mode="r").attrs.get("complete", False)

    result = run_job(plan, executor=RayExecutor(RayOptions(actors=2)), chunks=CHUNKS, pixels_hash="h")
    assert result.blocks_run == total - len(before)
    for name, content in before.items():
        assert (blocks / name).read_bytes() == content, f"{name} was recomputed"
    labels, probs = outputs(store)
    assert np.array_equal(labels, reference[0])
    np.testing.assert_allclose(probs, reference[1], rtol=0, atol=1e-6)


def test_a_second_job_on_the_same_output_is_refused(scene, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tiler.io.store import OutputStore

    plan = make_plan(*scene, tmp_path / "out.zarr")
    store = OutputStore.create(
        plan.store_path, shape=plan.grid.shape, num_classes=4, chunks=CHUNKS, probabilities="float32", pixels_hash="h"
    )
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"owner": "other job", "pid": proc.pid, "host": os.uname().nodename, "time": time.time()}
        store.lock_path.parent.mkdir(parents=True, exist_ok=True)
        store.lock_path.write_text(json.dumps(lock))
        with pytest.raises(OutputError, match="other job"):
            run_job(plan, chunks=CHUNKS, pixels_hash="h")
    finally:
        proc.kill()


def test_a_different_config_on_existing_output_is_refused_unless_overwrite(scene, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(*scene, tmp_path / "out.zarr", block=128)
    run_job(plan, chunks=CHUNKS, pixels_hash="first")
    with pytest.raises(OutputError, match="overwrite"):
        run_job(plan, chunks=CHUNKS, pixels_hash="second")
    result = run_job(plan, chunks=CHUNKS, pixels_hash="second", overwrite=True)
    assert result.blocks_run == len(plan.partition)


def test_background_label_replaces_nodata_outside_the_mask(scene, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    image, weights = scene
    with rasterio.open(image) as src:
        valid = src.dataset_mask() > 0
    plan = dataclasses.replace(make_plan(image, weights, tmp_path / "out.zarr"), background_label=0)
    result = run_job(plan, chunks=CHUNKS, pixels_hash="h")
    labels, _ = outputs(tmp_path / "out.zarr")
    assert result.tiles_skipped > 0
    assert (labels[~valid] == 0).all() and (labels != 255).all()


def test_the_pool_reports_the_model_facts_and_a_model_that_cannot_load_fails_once_with_its_own_error(
    ray_session, own_pools, scene, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from tiler.engine.plan import ModelFacts, ModelRef
    from tiler.errors import ReadError
    from tiler.model import load_model

    _, weights = scene
    pool = RayExecutor(RayOptions(actors=1))
    try:
        assert pool.facts(ModelRef(str(weights))) == ModelFacts.of(load_model(str(weights)))
    finally:
        pool.close()

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all" * 10)  # text: refused as "not a model file" before torch.load
    with pytest.raises(ReadError) as local:
        load_model(str(bad))
    pool = RayExecutor(RayOptions(actors=1, max_restarts=3))
    try:
        with pytest.raises(ReadError) as remote:
            pool.facts(ModelRef(str(bad)))
        assert str(remote.value) == str(local.value)
        (pid,) = pool.pids()  # alive: the load error is kept, not a crash to restart
        with pytest.raises(ReadError):
            pool.facts(ModelRef(str(bad)))
        assert pool.pids() == [pid]
    finally:
        pool.close()


def test_a_pool_whose_first_actor_died_answers_the_next_facts_call_from_a_new_actor(
    ray_session, own_pools, scene  # type: ignore[no-untyped-def]
) -> None:
    from tiler.engine.plan import ModelRef

    _, weights = scene
    model = ModelRef(str(weights))
    pool = RayExecutor(RayOptions(actors=1, max_restarts=0, max_task_retries=0))
    try:
        pool.start(model)
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        with pytest.raises(EngineError, match="died while loading"):
            pool.facts(model)
        facts = pool.facts(model)
        assert facts is not None and facts.num_classes == 4
        assert pool.pids() != [pid]
    finally:
        pool.close()


def test_a_late_failure_of_a_dead_actor_never_kills_its_replacement(
    ray_session, own_pools, scene, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    image, weights = scene
    plan = make_plan(image, weights, tmp_path / "out.zarr")
    run_job(plan, chunks=CHUNKS, pixels_hash="h")  # the store the blocks write into
    positions = list(plan.partition.positions())[:2]
    pool = RayExecutor(RayOptions(actors=1, max_in_flight=2, max_restarts=0, max_task_retries=0))
    try:
        pool.start(plan.model)
        (pid,) = pool.pids()
        dead = pool._actors[0]
        for n, position in enumerate(positions):
            pool.submit(n, plan, position)
        os.kill(pid, signal.SIGKILL)
        done: list = []
        while len(done) < len(positions):
            done += pool.wait(timeout=60)
        assert all(d.error is not None for d in done)
        (new_pid,) = pool.pids()
        replacement = pool._actors[0]
        assert new_pid != pid and replacement is not dead

        pool._replace(0, dead)  # one more call of the dead actor failing, seen after its replacement started
        assert pool._actors[0] is replacement and pool.pids() == [new_pid]
        pool.submit("again", plan, positions[0])
        (again,) = pool.wait(timeout=60)
        assert again.error is None and again.record is not None
    finally:
        pool.close()


def test_an_input_that_kills_its_actor_fails_alone_and_the_input_sharing_its_actor_completes(
    ray_session, own_pools, scene, reference, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    import dataclasses

    from tests.engine.poison import PoisonRef
    from tiler.engine.job import StoreJob, _PlanJob
    from tiler.engine.stream import run_stream

    image, weights = scene
    good = make_plan(image, weights, tmp_path / "good.zarr", block=64)
    # one block: it goes out first, beside the good input's first blocks on the same actors
    poison = dataclasses.replace(make_plan(image, weights, tmp_path / "poison.zarr", block=224),
                                 input=PoisonRef(str(image)))
    jobs = [_PlanJob(StoreJob(plan, chunks=CHUNKS, pixels_hash="h")) for plan in (poison, good)]
    pool = RayExecutor(RayOptions(actors=2, max_in_flight=2, max_restarts=1, max_task_retries=1))
    try:
        outcomes = {o.job.name: o for o in run_stream(jobs, pool)}
    finally:
        pool.close()
    failed = outcomes[str(tmp_path / "poison.zarr")]
    assert failed.error is not None and "killed its model worker" in str(failed.error)
    assert outcomes[str(tmp_path / "good.zarr")].error is None  # its blocks shared the dying actors, and went on
    labels, probs = outputs(tmp_path / "good.zarr")
    assert np.array_equal(labels, reference[0])
