"""Archives stream through one pool: same pixels as single runs, faults isolated, driver death resumed."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr

from tests.engine.helpers import KeepOpen, write_model, write_raster
from tests.shared_data import SHARED_DATA
from tiler.archive import Ledger, input_stem, load_archive, run_archive
from tiler.config import parse_config
from tiler.engine.plan import BlockRecord
from tiler.engine.ray import RayExecutor, RayOptions
from tiler.job.progress import Progress
from tiler.job.refs import model_ref
from tiler.segment import SegmentJob, run_many, run_segment

SHAPES = {"a": (96, 80), "b": (128, 64), "c": (64, 160)}
REPO = Path(__file__).resolve().parents[1]


def write_scenes(folder: Path) -> Path:
    """Three scenes of different shapes and a tiny model."""
    scenes = folder / "scenes"
    scenes.mkdir(exist_ok=True)
    for seed, (stem, shape) in enumerate(SHAPES.items()):
        write_raster(scenes / f"{stem}.tif", shape, 3, seed)
    write_model(folder / "model.pt")
    return folder


def write_archive(
    folder: Path, *, block: int = 32, engine: dict[str, Any] | None = None, weights: str = "model.pt",
    scenes: bool = True,
) -> Path:
    """Three scenes of different shapes, a tiny model and an archive file with small blocks (many per scene).

    ``scenes=False``: only the archive file (the folder holds the scenes and model already); ``weights``: the model
    the archive file names (relative to the folder, or absolute).
    """
    if scenes:
        write_scenes(folder)
    config = {
        "archive": {"root": "out"},
        "input": {"path": "scenes/*.tif"},
        "model": {"weights": weights, "device": "cpu", "batch_size": 2, "threads": 1},
        "tiling": {"tile": 32, "overlap": 8, "block": block},
        "output": {"chunks": 32, "probabilities": "float32", "exports": []},
        "engine": engine or {"actors": 2, "max_in_flight": 2},
    }
    path = folder / "archive.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def arrays(store: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["complete"] is True, f"{store} is not complete"
    return group["labels"][...], group["probabilities"][...]


def single_runs(folder: Path, block: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each scene alone through `tiler run`'s code path (in-process, same config), into its own store."""
    out = {}
    for stem in SHAPES:
        cfg = parse_config(
            {
                "input": {"path": str(folder / "scenes" / f"{stem}.tif")},
                "model": {"weights": str(folder / "model.pt"), "device": "cpu", "batch_size": 2, "threads": 1},
                "tiling": {"tile": 32, "overlap": 8, "block": block},
                "output": {"path": str(folder / "single" / f"{stem}.zarr"), "chunks": 32, "probabilities": "float32",
                           "exports": []},
            }
        )
        run_segment(cfg, quiet=True, engine="local")
        out[stem] = arrays(folder / "single" / f"{stem}.zarr")
    return out


def records(store: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((store / ".tiler" / "blocks").glob("*.json"))]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenes and the model of :func:`write_scenes`, written once for the module (tests copy them)."""
    return write_scenes(tmp_path_factory.mktemp("scenes-template"))


@pytest.fixture
def folder(prepared: Path, tmp_path: Path) -> Path:
    """A fresh copy of the prepared scenes and model (new files: nothing has run on them), the test's own."""
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture(scope="module")
def expected(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`single_runs` of the prepared scenes and model, run once: every test's scenes and model are copies."""
    ref = tmp_path_factory.mktemp("single-runs")
    shutil.copytree(prepared, ref, dirs_exist_ok=True)
    return single_runs(ref)


@pytest.fixture(scope="module")
def shared_pool(ray_session) -> Iterator[RayExecutor]:  # type: ignore[no-untyped-def]
    """One actor pool (2 actors, 2 in flight, as write_archive's engine) for the module's archives on Ray that only
    need a working pool of the prepared model.

    It holds both of the session's CPUs while it runs: a test that starts its own pool (or a driver that does)
    takes :func:`own_pools` first, which stops it; the next test that needs it starts it again.
    """
    pool = RayExecutor(RayOptions(actors=2, max_in_flight=2))
    yield pool
    pool.close()


@pytest.fixture
def shared_archive(
    folder: Path, prepared: Path, shared_pool: RayExecutor, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The test's archive file (:func:`write_archive`'s), whose runs stream through the shared pool.

    It names the prepared model itself (the copy's is the same bytes): the pool runs one model, this very file. The
    pool is started whole for it here (never sized down to the blocks of the run that happens to start it).
    """
    config = write_archive(folder, weights=str(prepared / "model.pt"), scenes=False)
    archive = load_archive(config)
    shared_pool.start(model_ref(archive.job_for(archive.inputs()[0])))
    monkeypatch.setattr("tiler.archive.run.run_many", functools.partial(run_many, executor=KeepOpen(shared_pool)))
    return config


@pytest.fixture
def own_pools(shared_pool: RayExecutor) -> None:
    """The test starts its own actor pool (or its driver does): the shared pool gives its CPUs back first."""
    shared_pool.close()


def test_interleaved_archive_on_one_pool_equals_single_input_runs_bit_for_bit(
    shared_archive: Path, folder: Path, expected: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    config = shared_archive
    report = run_archive(load_archive(config), engine="ray", quiet=True)
    assert report.counts == {"done": 3, "skipped": 0, "failed": 0, "total": 3}
    pids_per_input = {}
    for stem in SHAPES:
        store = folder / "out" / stem / f"{stem}.zarr"
        labels, probs = arrays(store)
        assert np.array_equal(labels, expected[stem][0]), stem
        assert np.array_equal(probs, expected[stem][1]), stem  # bit for bit, not within a tolerance
        pids_per_input[stem] = {r["pid"] for r in records(store)}
    every = set().union(*pids_per_input.values())
    assert len(every) == 2, f"the pool was started more than once: {len(every)} actor processes for 2 actors"
    inputs_per_actor = {pid: {s for s, p in pids_per_input.items() if pid in p} for pid in every}
    assert max(len(s) for s in inputs_per_actor.values()) >= 2, "no actor went on from one input to the next"


def test_a_bad_file_among_good_ones_fails_alone_on_the_shared_pool(shared_archive: Path, folder: Path) -> None:
    config = shared_archive
    (folder / "scenes" / "bad.tif").write_bytes((SHARED_DATA / "corrupt.tif").read_bytes())
    report = run_archive(load_archive(config, ["tiling.tile=64", "tiling.overlap=16", "tiling.block=64"]),
                         engine="ray", quiet=True)
    status = {item.stem: item for item in report.items}
    assert {s: i.status for s, i in status.items()} == {"a": "done", "b": "done", "bad": "failed", "c": "done"}
    assert "bad.tif" in str(status["bad"].error) and "block" in str(status["bad"].error)
    bad_store = folder / "out" / "bad" / "bad.zarr"
    assert not json.loads((bad_store / "zarr.json").read_text())["attributes"].get("complete")


class KillFirstActor(Progress):
    """A silent progress bar that SIGKILLs the actor of the first block record it sees."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.killed: list[int] = []
        self.seen: list[tuple[str, str]] = []

    def record(self, job: Any, record: BlockRecord) -> None:
        super().record(job, record)
        self.seen.append((job.name, record.block))
        if not self.killed:
            self.killed.append(record.pid)
            os.kill(record.pid, signal.SIGKILL)


def test_an_actor_killed_mid_archive_is_replaced_and_every_input_is_still_identical(
    ray_session, own_pools, folder: Path, expected: dict[str, tuple[np.ndarray, np.ndarray]]  # type: ignore[no-untyped-def]
) -> None:
    config = write_archive(folder, engine={"actors": 2, "max_in_flight": 2, "max_restarts": 2,
                                             "max_task_retries": 3}, scenes=False)
    archive = load_archive(config)
    jobs = [SegmentJob(archive.job_for(p)) for p in archive.inputs()]
    progress = KillFirstActor()
    outcomes = list(run_many(jobs, engine="ray", progress=progress))
    assert progress.killed
    assert [o.error for o in outcomes] == [None, None, None]
    assert len(progress.seen) == len(set(progress.seen)), "a block was reported twice"
    pids = set()
    for stem in SHAPES:
        store = folder / "out" / stem / f"{stem}.zarr"
        labels, probs = arrays(store)
        assert np.array_equal(labels, expected[stem][0]) and np.array_equal(probs, expected[stem][1])
        pids |= {r["pid"] for r in records(store)}
    assert len(pids) >= 3, "no block ran in a replacement actor"


DRIVER = textwrap.dedent(
    """
    import sys
    from tiler.archive import load_archive, run_archive
    run_archive(load_archive(sys.argv[1], ["model.batch_size=1"]), engine="local", quiet=True)
    """
)


def test_a_driver_killed_mid_archive_resumes_every_input_without_recomputing_a_finished_block(
    folder: Path, expected: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    config = write_archive(folder, block=32, scenes=False)
    stores = [folder / "out" / stem / f"{stem}.zarr" for stem in SHAPES]
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(config)], cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = sum(len(list((s / ".tiler" / "blocks").glob("*.json"))) for s in stores if s.exists())
        if done >= 11:  # a has 9 blocks: b has started
            break
        assert proc.poll() is None, "the archive finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {
        str(f): f.read_bytes() for s in stores if s.exists() for f in (s / ".tiler" / "blocks").glob("*.json")
    }
    assert 11 <= len(before) < 9 + 8 + 10

    report = run_archive(load_archive(config, ["model.batch_size=1"]), engine="local", quiet=True)
    assert report.counts["failed"] == 0 and report.counts["done"] >= 2  # a may have finished before the kill
    for name, content in before.items():
        assert Path(name).read_bytes() == content, f"{name} was recomputed"
    for stem, store in zip(SHAPES, stores, strict=True):
        assert np.array_equal(arrays(store)[0], expected[stem][0])
    with Ledger(folder / "out" / "ledger.sqlite") as ledger:
        assert {input_stem(r.input_path): r.status for r in ledger.rows()} == dict.fromkeys(SHAPES, "done")


def test_two_archive_runs_on_one_root_never_compute_one_input_twice(folder: Path) -> None:
    config = write_archive(folder, scenes=False)
    for stem in ("d", "e", "f"):
        write_raster(folder / "scenes" / f"{stem}.tif", (64, 64), 3, 7)
    command = [sys.executable, "-m", "pipelines.archive", str(config), "--engine", "local", "--quiet", "--json-logs"]
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done = [json.loads(out.strip().splitlines()[-1])["done"] for out in outs]
    assert sum(done) == 6, outs  # every input computed by exactly one of the two runs
    for stem in ("a", "b", "c", "d", "e", "f"):
        store = folder / "out" / stem / f"{stem}.zarr"
        assert len({r["pid"] for r in records(store)}) == 1, f"{stem} was computed by both runs"
    with Ledger(folder / "out" / "ledger.sqlite") as ledger:
        assert all(r.status == "done" and r.attempts == 1 for r in ledger.rows())


PLAN_ONLY_DRIVER = textwrap.dedent(
    """
    import sys
    from tiler.archive import load_archive, run_archive
    report = run_archive(load_archive(sys.argv[1]), quiet=True)
    print("COUNTS", report.counts)
    print("DRIVER_IMPORTED", sorted(m for m in ("torch", "monai") if m in sys.modules))
    """
)


def test_the_driver_of_a_ray_archive_never_loads_the_model(ray_session, own_pools, folder: Path) -> None:  # type: ignore[no-untyped-def]
    """The pool's actors load the model and report what planning needs: the driver imports neither torch nor MONAI."""
    config = write_archive(folder, scenes=False)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-c", PLAN_ONLY_DRIVER, str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'done': 3" in proc.stdout and "DRIVER_IMPORTED []" in proc.stdout, proc.stdout
    for stem in SHAPES:
        store = folder / "out" / stem / f"{stem}.zarr"
        assert zarr.open_group(str(store), mode="r").attrs["complete"] is True


def test_an_export_added_to_an_archive_refinishes_every_input_without_recomputing_a_block(folder: Path) -> None:
    config = write_archive(folder, scenes=False)
    first = run_archive(load_archive(config), engine="local", quiet=True)
    assert first.counts["done"] == 3
    stores = {stem: folder / "out" / stem / f"{stem}.zarr" for stem in SHAPES}
    before = {stem: [(p.name, p.read_bytes(), p.stat().st_mtime_ns) for p in
                     sorted((s / ".tiler" / "blocks").glob("*.json"))] for stem, s in stores.items()}

    data = yaml.safe_load(config.read_text())
    data["output"]["exports"] = ["cog"]
    config.write_text(yaml.safe_dump(data))
    second = run_archive(load_archive(config), engine="local", quiet=True)
    assert second.counts["done"] == 3, second.to_dict()
    for stem, store in stores.items():
        after = [(p.name, p.read_bytes(), p.stat().st_mtime_ns) for p in
                 sorted((store / ".tiler" / "blocks").glob("*.json"))]
        assert after == before[stem], f"{stem}: a block was recomputed"
        assert (store.parent / f"{stem}.cog.tif").is_file()
        assert zarr.open_group(str(store), mode="r").attrs["complete"] is True
