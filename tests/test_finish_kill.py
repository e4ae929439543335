"""Finishing that survives a kill: a job SIGKILLed between moving an export into place and recording it resumes.

The fault is real: a ``sitecustomize.py`` on ``PYTHONPATH`` wraps :meth:`OutputStore.record_export` in every
Python process the job starts (driver or finishing worker) and SIGKILLs that process when the ``cog`` export is
about to be recorded, i.e. after the COG (and its ``.aux.xml``) were moved into place and before the store
vouches for them. The store's export intents let the rerun recognise those files as its own.
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
import zarr

from tests.engine.helpers import write_job, write_model, write_raster
from tests.io.array_reader import ArrayReader
from tiler.geometry import BlockPartition, Window
from tiler.io.atomic import atomic_dir, atomic_path, content_digest
from tiler.io.export import export_cog, export_nifti, export_ome_zarr, write_quicklook
from tiler.io.lock import lock_path_for
from tiler.io.store import OutputStore
from tiler.io.vector import export_geojson, export_geoparquet, export_qupath
from tiler.io.verify import verify_store

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

REPO = Path(__file__).resolve().parents[1]
KILL_ENV = "TILER_TEST_KILL_BEFORE_RECORDING"

SITECUSTOMIZE = f'''
import os, signal

if os.environ.get("{KILL_ENV}"):
    from tiler.io.store import OutputStore

    _record = OutputStore.record_export

    def record_export(self, name, path, *args, **kwargs):
        if name == os.environ["{KILL_ENV}"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return _record(self, name, path, *args, **kwargs)

    OutputStore.record_export = record_export
'''


Template = dict[str, Any]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """A tiny 2D job (96×80 scene, 32-px blocks, COG export), its scene and model written once for the module."""
    return dict(yaml.safe_load(write_job(tmp_path_factory.mktemp("inputs"), shape=(96, 80), block=32).read_text()))


def job(root: Path, template: Template) -> Path:
    """``template``'s job with its output in ``root``, written to ``root/job.yaml``."""
    data = copy.deepcopy(template)
    data["output"]["path"] = str(root / "out.zarr")
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fault_env(tmp_path: Path, kill: str | None) -> dict[str, str]:
    """The environment of a job whose processes are SIGKILLed when export ``kill`` is about to be recorded."""
    folder = tmp_path / "fault"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if kill is not None:
        env[KILL_ENV] = kill
    return env


def tiler(tmp_path: Path, *args: str, kill: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tiler.cli --quiet <args>`` in a fresh process (with the fault when ``kill`` is given).

    The job runs in its own process group, so a job that hangs is ended with its finishing workers.
    """
    command = [sys.executable, "-m", "tiler.cli", "--quiet", *args, "--engine", "local"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=fault_env(tmp_path, kill), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(args)} hung for 240 s: {err[-2000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def complete(store: Path) -> bool:
    return bool(zarr.open_group(str(store), mode="r").attrs.get("complete", False))


def labels_of(store: Path) -> np.ndarray:
    opened = OutputStore.open(store, mode="r")
    return opened.read(Window.from_shape(opened.shape))


def block_stamps(store: Path) -> dict[str, tuple[int, bytes]]:
    """Each block record's mtime and bytes (its ``finished_at`` included): unchanged when no block reruns."""
    records = sorted((store / ".tiler" / "blocks").glob("*.json"))
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in records}


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, template: Template) -> Path:
    """The folder of the job run with the fault once for the module: it died with the COG in place but unrecorded.

    The tests rerun it, so each copies it first (:func:`killed_after_the_cog_moved`).
    """
    root = tmp_path_factory.mktemp("killed")
    first = tiler(root, "run", str(job(root, template)), kill="cog")
    assert first.returncode != 0, first.stderr[-2000:]
    died_after_the_cog_moved(root)
    return root


def killed_after_the_cog_moved(tmp_path: Path, killed: Path, copy_job: Callable[[Path, Path], Path],
                               template: Template) -> tuple[Path, Path]:
    """The module's killed job copied into ``tmp_path``: (config, store), the COG in place but unrecorded."""
    copy_job(killed, tmp_path)
    config = job(tmp_path, template)
    return config, died_after_the_cog_moved(tmp_path)


def died_after_the_cog_moved(folder: Path) -> Path:
    """Check the job in ``folder`` died with the COG (and its sidecar) moved into place but unrecorded; its store."""
    store = folder / "out.zarr"
    cog = folder / "out.cog.tif"
    assert cog.is_file() and (folder / "out.cog.tif.aux.xml").is_file()
    assert not complete(store)
    assert not (store / ".tiler" / "exports" / "cog.json").exists()
    assert len(block_stamps(store)) == 9
    return store


def test_a_job_killed_after_the_cog_moved_in_but_before_it_was_recorded_finishes_on_the_rerun(
    tmp_path: Path, killed: Path, copy_finished_job: Callable[[Path, Path], Path], template: Template
) -> None:
    config, store = killed_after_the_cog_moved(tmp_path, killed, copy_finished_job, template)
    blocks = block_stamps(store)
    rerun = tiler(tmp_path, "run", str(config))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert complete(store)
    assert block_stamps(store) == blocks  # no block recomputed
    with rasterio.open(tmp_path / "out.cog.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert np.array_equal(cog.read(1), labels_of(store))
    assert (store / ".tiler" / "exports" / "cog.json").is_file()
    assert (store / ".tiler" / "exports" / "cog_aux.json").is_file()
    assert not list((store / ".tiler").glob("intents/*.json"))  # recorded exports supersede their intents
    report = verify_store(store)
    assert report.ok, report.lines()


def test_a_user_file_replacing_the_killed_jobs_cog_is_refused_and_the_sidecar_is_still_ours(
    tmp_path: Path, killed: Path, copy_finished_job: Callable[[Path, Path], Path], template: Template
) -> None:
    config, store = killed_after_the_cog_moved(tmp_path, killed, copy_finished_job, template)
    cog = tmp_path / "out.cog.tif"
    mine = b"II*\x00 my own map, not the job's"
    cog.write_bytes(mine)
    rerun = tiler(tmp_path, "run", str(config))
    assert rerun.returncode == 2
    assert f"{cog} already exists and was not written by the store" in rerun.stderr
    assert cog.read_bytes() == mine and not complete(store)
    # the user moves their file away: the .aux.xml beside it is the job's own (its intent matches), so the
    # rerun replaces it and finishes
    cog.rename(tmp_path / "mine.tif")
    again = tiler(tmp_path, "run", str(config))
    assert again.returncode == 0, again.stderr[-2000:]
    assert complete(store) and (tmp_path / "mine.tif").read_bytes() == mine


HOLD_LOCK = """
import sys, time
from tiler.io.lock import acquire_store_lock
acquire_store_lock(sys.argv[1], "first-job")
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_job_on_a_locked_output_names_the_first_before_any_file(tmp_path: Path, template: Template) -> None:
    config = job(tmp_path, template)
    store = tmp_path / "out.zarr"
    (tmp_path / "out.cog.tif").write_bytes(b"a file the first job has not recorded yet")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store)], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env=fault_env(tmp_path, None),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = tiler(tmp_path, "run", str(config))
        assert second.returncode != 0
        assert f"output {store} is being written by job first-job (pid {holder.pid}" in second.stderr
        assert "already exists" not in second.stderr
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert lock_path_for(store).exists()  # the second job never touched the first one's lock


# ---------------------------------------------------------------------------------------------------
# an archive: every input killed while finishing completes on the next run


def write_archive(folder: Path) -> Path:
    scenes = folder / "scenes"
    scenes.mkdir()
    for seed, stem in enumerate(("a", "b")):
        write_raster(scenes / f"{stem}.tif", (96, 80), 3, seed)
    write_model(folder / "model.pt")
    config = {
        "archive": {"root": "out"},
        "input": {"path": "scenes/*.tif"},
        "model": {"weights": "model.pt", "device": "cpu", "batch_size": 4, "threads": 1},
        "tiling": {"tile": 32, "overlap": 8, "block": 64},
        "output": {"chunks": 64, "exports": ["cog"]},
    }
    path = folder / "archive.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_archive_input_killed_while_finishing_completes_on_the_rerun(tmp_path: Path) -> None:
    config = write_archive(tmp_path)
    first = tiler(tmp_path, "archive", str(config), kill="cog")
    assert first.returncode != 0
    stores = {stem: tmp_path / "out" / stem / f"{stem}.zarr" for stem in ("a", "b")}
    killed = [s for s, store in stores.items() if (store.parent / f"{s}.cog.tif").exists() and not complete(store)]
    assert killed, "the fault killed no input after its COG moved into place"
    blocks = {s: block_stamps(store) for s, store in stores.items() if store.exists()}
    for attempt in range(2):  # the ledger must not keep a killed input failing on every later run
        rerun = tiler(tmp_path, "archive", str(config))
        assert rerun.returncode == 0, f"run {attempt + 2}: {rerun.stderr[-2000:]}"
    assert all(complete(store) for store in stores.values())
    for stem in killed:
        assert block_stamps(stores[stem]) == blocks[stem]
        with rasterio.open(stores[stem].parent / f"{stem}.cog.tif") as cog:
            assert np.array_equal(cog.read(1), labels_of(stores[stem]))


# ---------------------------------------------------------------------------------------------------
# the pieces, in process: the hook, the intents, the store's question, verify


def tiny_store(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> OutputStore:
    store = OutputStore.create(path, shape=shape, num_classes=3, chunks=chunks, pixels_hash="p")
    rng = np.random.default_rng(0)
    for block in BlockPartition(shape, chunks):
        store.write_block(block, rng.integers(0, 3, block.shape).astype(np.uint8))
    return store


def reader_of(store: OutputStore) -> ArrayReader:
    return ArrayReader(np.zeros((1, *store.shape), np.uint8))


WRITERS: dict[str, tuple[tuple[int, ...], str, Callable[..., Any], tuple[str, ...]]] = {
    # name: (store shape, file name, writer(store, path, hook), every file it moves into place)
    "cog": ((40, 48), "p.cog.tif", lambda s, p, h: export_cog(s, p, before_move=h), ("p.cog.tif", "p.cog.tif.aux.xml")),
    "nifti": ((8, 16, 16), "p.nii.gz", lambda s, p, h: export_nifti(s, p, before_move=h),
              ("p.nii.gz", "p.ctbl", "p.itksnap.txt")),
    "ome-zarr": ((40, 48), "p.ome.zarr", lambda s, p, h: export_ome_zarr(s, p, reader=reader_of(s), before_move=h),
                 ("p.ome.zarr",)),
    "quicklook": ((40, 48), "p.png", lambda s, p, h: write_quicklook(s, p, before_move=h), ("p.png",)),
    "geojson": ((40, 48), "p.geojson", lambda s, p, h: export_geojson(s, p, before_move=h), ("p.geojson",)),
    "geoparquet": ((40, 48), "p.parquet", lambda s, p, h: export_geoparquet(s, p, before_move=h), ("p.parquet",)),
    "qupath": ((40, 48), "p.qupath.geojson", lambda s, p, h: export_qupath(s, p, before_move=h),
               ("p.qupath.geojson",)),
}  # fmt: skip


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in WRITERS])
def test_every_export_writer_calls_before_move_with_the_complete_temporary_just_before_each_move(
    tmp_path: Path, name: str
) -> None:
    shape, file, write, moved = WRITERS[name]
    store = tiny_store(tmp_path / "o.zarr", shape, (8, 16, 16)[-len(shape):] if len(shape) == 3 else (16, 16))
    seen: list[tuple[str, str, bool, str]] = []

    def hook(tmp: Path, final: Path) -> None:
        assert tmp.parent == final.parent and tmp.exists()
        seen.append((final.name, tmp.name, final.exists(), content_digest(tmp)))

    write(store, tmp_path / file, hook)
    assert [f for f, *_ in seen] == list(moved)
    for final, tmp, existed, digest in seen:
        assert not existed and not (tmp_path / tmp).exists()
        assert content_digest(tmp_path / final) == digest  # the digest of the temporary is the final file's


def test_a_hook_that_fails_leaves_nothing_at_the_final_name(tmp_path: Path) -> None:
    def refuse(tmp: Path, final: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="no space|nearly full|No space"), atomic_path(
        tmp_path / "a.tif", before_move=refuse
    ) as tmp:
        tmp.write_bytes(b"whole")
    with pytest.raises(OSError), atomic_dir(tmp_path / "d.zarr", before_move=refuse) as tmp:
        (tmp / "x").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_folder_digest_sees_a_renamed_edited_or_added_file(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a").write_bytes(b"abc")
    (folder / "b").write_bytes(b"de")
    digest = content_digest(folder)
    copy = tmp_path / "g"
    (copy / "sub").mkdir(parents=True)
    (copy / "b").write_bytes(b"de")
    (copy / "sub" / "a").write_bytes(b"abc")
    assert content_digest(copy) == digest  # the listing, not the order files were made in
    for change in (lambda: (copy / "b").write_bytes(b"dE"), lambda: (copy / "b").rename(copy / "c"),
                   lambda: (copy / "sub" / "n").write_bytes(b"")):  # fmt: skip
        change()
        assert content_digest(copy) != digest


def test_the_store_owns_a_file_its_intent_vouches_for_until_someone_replaces_it(tmp_path: Path) -> None:
    store = tiny_store(tmp_path / "o.zarr", (40, 48), (16, 16))
    cog = tmp_path / "o.cog.tif"
    hook = store.intent_recorder()
    assert pickle.loads(pickle.dumps(hook)) == hook  # finishing workers get it by value
    export_cog(store, cog, before_move=hook)  # then the job is killed: no record
    assert store.export_records() == {}
    intents = store.export_intents()
    assert set(intents) == {str(cog.resolve()), str((tmp_path / "o.cog.tif.aux.xml").resolve())}
    assert intents[str(cog.resolve())]["digest"] == content_digest(cog)
    assert store.wrote(cog) and store.wrote(tmp_path / "o.cog.tif.aux.xml")
    assert not store.wrote(tmp_path / "o.geojson")  # no intent, no record
    original = cog.read_bytes()
    cog.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit of someone else's
    assert not store.wrote(cog)
    cog.write_bytes(original)
    assert store.wrote(cog)


def test_recording_the_export_supersedes_its_intent_and_keeps_digest_pid_and_host(tmp_path: Path) -> None:
    store = tiny_store(tmp_path / "o.zarr", (40, 48), (16, 16))
    cog = tmp_path / "o.cog.tif"
    export_cog(store, cog, before_move=store.intent_recorder())
    store.record_export("cog", cog, job_hash="j")
    rec = store.export_records()["cog"]
    assert rec["digest"] == content_digest(cog) and rec["pid"] == os.getpid() and rec["host"] == socket.gethostname()
    assert list(store.export_intents()) == [str((tmp_path / "o.cog.tif.aux.xml").resolve())]
    store.record_export("cog", cog, job_hash="k")  # a later finishing keeps the file: its digest stays known
    assert store.export_records()["cog"]["digest"] == rec["digest"]
    store.retire_exports(["cog"])
    store.record_export("cog", cog, job_hash="k")  # rewritten without a hook: the digest of the file there now
    assert store.export_records()["cog"]["digest"] == content_digest(cog)


def test_overwriting_or_invalidating_the_store_forgets_its_intents(tmp_path: Path) -> None:
    store = tiny_store(tmp_path / "o.zarr", (40, 48), (16, 16))
    cog = tmp_path / "o.cog.tif"
    export_cog(store, cog, before_move=store.intent_recorder())
    store.invalidate_blocks(["any"])
    assert store.export_intents() == {} and not store.wrote(cog)
    export_cog(store, cog, before_move=store.intent_recorder())
    fresh = OutputStore.create(tmp_path / "o.zarr", shape=(40, 48), num_classes=3, chunks=(16, 16),
                               pixels_hash="other", overwrite=True)
    assert fresh.export_intents() == {} and not fresh.wrote(cog)


def test_verify_notes_a_matching_intent_and_names_a_replaced_export(tmp_path: Path) -> None:
    store = tiny_store(tmp_path / "o.zarr", (40, 48), (16, 16))
    cog = tmp_path / "o.cog.tif"
    export_cog(store, cog, before_move=store.intent_recorder())
    report = verify_store(store.path)
    assert report.ok and any("a rerun records them" in n for n in report.notes)
    cog.write_bytes(b"II*\x00 a user's map")
    report = verify_store(store.path)
    assert [(p.kind, p.where) for p in report.problems] == [("changed-export", str(cog.resolve()))]
    assert "Move it away" in report.problems[0].detail
    # a complete store: a recorded export whose file changed is named too
    export_cog(store, cog, before_move=store.intent_recorder())
    for role, path in (("cog", cog), ("cog_aux", tmp_path / "o.cog.tif.aux.xml")):
        store.record_export(role, path)
    store.mark_complete({})
    assert verify_store(store.path).ok
    (tmp_path / "o.cog.tif.aux.xml").write_text("<PAMDataset/>")
    kinds = [(p.kind, Path(p.where).name) for p in verify_store(store.path).problems]
    assert kinds == [("changed-export", "o.cog.tif.aux.xml")]
