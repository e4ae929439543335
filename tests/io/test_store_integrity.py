"""Stores prove themselves: atomic creation, safe overwrite, lock before create, checksummed chunks, block records
that name their chunks, and corruption that is an error, never wrong pixels."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr

from tiler.errors import OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.atomic import TMP_PREFIX, host_tag
from tiler.io.store import OutputStore, StoreWarning, labels_digest, lock_path_for, store_lock

SHAPE, CHUNKS, BLOCK = (96, 128), (32, 32), (64, 64)


def _create(path, **kw):
    args = dict(shape=SHAPE, num_classes=3, chunks=CHUNKS, pixels_hash="h1", attrs={"class_names": ["a", "b", "c"]})
    args.update(kw)
    return OutputStore.create(path, **args)


def _blocks():
    return {f"{b.start[0] // 64}_{b.start[1] // 64}": b for b in BlockPartition(SHAPE, BLOCK)}


def _filled(path, *, probabilities=None, nodata_block=None):
    """A store with every block written and recorded; ``nodata_block`` is written as all-nodata."""
    store = _create(path, probabilities=probabilities)
    truth = np.random.default_rng(0).integers(0, 3, SHAPE).astype(np.uint8)
    for key, block in _blocks().items():
        labels = np.full(block.shape, 255, np.uint8) if key == nodata_block else truth[block.slices]
        probs = np.full((3, *block.shape), 0.25, np.float32) if probabilities else None
        store.write_block(block, labels, probs)
        store.record_block(key, {"tiles_run": 1}, block)
    return store, truth


def _temporaries(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(TMP_PREFIX)]


# -- creation ------------------------------------------------------------------------------------------
def test_created_store_carries_its_marker_and_all_attributes_in_one_file(tmp_path):
    store = _create(tmp_path / "o.zarr", attrs={"class_names": ["a", "b", "c"], "config": {"k": 1}})
    meta = json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())
    assert meta["attributes"]["tiler_store"] == 1
    assert meta["attributes"]["pixels_hash"] == "h1" and meta["attributes"]["config"] == {"k": 1}
    assert OutputStore.is_tiler_store(store.path) and os.listdir(tmp_path) == ["o.zarr"]
    codecs = [c["name"] for c in json.loads((tmp_path / "o.zarr" / "labels" / "zarr.json").read_text())["codecs"]]
    assert codecs[-1] == "crc32c"


@pytest.mark.parametrize("overwrite", [pytest.param(False, id="plain"), pytest.param(True, id="overwrite")])
@pytest.mark.parametrize(
    "content",
    [
        pytest.param({"thesis.docx": "chapter 1"}, id="user-files"),
        pytest.param({"zarr.json": json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})},
                     id="someone-elses-zarr"),
        pytest.param({"zarr.json": '{"zarr_format": 3, "node_ty'}, id="truncated-zarr-json"),
    ],
)
def test_a_folder_that_is_not_a_tiler_store_is_never_replaced(tmp_path, content, overwrite):
    folder = tmp_path / "o.zarr"
    folder.mkdir()
    for name, text in content.items():
        (folder / name).write_text(text)
    with pytest.raises(OutputError, match=r"o\.zarr exists and is not a tiler output store.*remove it by hand") as err:
        _create(folder, overwrite=overwrite)
    assert "--overwrite" not in str(err.value)
    assert {p.name: p.read_text() for p in folder.iterdir()} == content


def test_open_of_a_non_store_does_not_suggest_overwrite(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(OutputError, match=r"x\.zarr exists and is not a tiler output store") as err:
        OutputStore.open(tmp_path / "x.zarr")
    assert "--overwrite" not in str(err.value)


def test_overwrite_replaces_a_tiler_store_whole(tmp_path):
    old, _ = _filled(tmp_path / "o.zarr")
    old.mark_complete({"blocks_total": 4})
    fresh = _create(tmp_path / "o.zarr", pixels_hash="h2", overwrite=True)
    assert fresh.pixels_hash == "h2" and not fresh.complete and fresh.block_records() == {}
    assert not (tmp_path / "o.zarr" / "labels" / "c").exists()  # the old chunks went with the old store
    assert os.listdir(tmp_path) == ["o.zarr"]


def test_leftovers_of_a_killed_creation_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f"{TMP_PREFIX}{host_tag()}-{int(dead.stdout)}-12345678-o.zarr"
    leftover.mkdir()
    (leftover / "zarr.json").write_text("{}")
    _create(tmp_path / "o.zarr")
    assert sorted(os.listdir(tmp_path)) == ["o.zarr"]


def _race_create(path, pixels_hash, barrier, results):
    barrier.wait(30)
    try:
        _create(path, pixels_hash=pixels_hash)
        results.put(("ok", pixels_hash))
    except OutputError as exc:
        results.put(("error", str(exc)))


def test_two_processes_racing_to_create_end_with_one_store_and_one_clear_error(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    path = str(tmp_path / "o.zarr")
    procs = [ctx.Process(target=_race_create, args=(path, h, barrier, results)) for h in ("ha", "hb")]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert [kind for kind, _ in outcomes] == ["error", "ok"]
    assert re.search(r"o\.zarr (already holds the result of another job|appeared while it was being created)",
                     outcomes[0][1])
    assert OutputStore.open(path).pixels_hash == outcomes[1][1]
    assert sorted(os.listdir(tmp_path)) == ["o.zarr"]


def _race_locked(path, barrier, loser_done, results):
    barrier.wait(30)
    try:
        with store_lock(path, f"job {os.getpid()}"):
            _create(path)
            results.put(("ok", ""))
            loser_done.wait(60)  # hold the lock until the other process has tried
    except OutputError as exc:
        results.put(("error", str(exc)))
        loser_done.set()


def test_lock_is_taken_before_the_store_exists_and_one_racer_wins(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, loser_done, results = ctx.Barrier(2), ctx.Event(), ctx.Queue()
    path = str(tmp_path / "o.zarr")
    procs = [ctx.Process(target=_race_locked, args=(path, barrier, loser_done, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert [kind for kind, _ in outcomes] == ["error", "ok"]
    assert re.search(r"output .*o\.zarr is being written by job job \d+ \(pid \d+ on .*\); wait", outcomes[0][1])
    assert sorted(os.listdir(tmp_path)) == ["o.zarr"]  # the lock went with its holder


def test_store_lock_is_reentrant_and_beside_the_store(tmp_path):
    path = tmp_path / "o.zarr"
    with store_lock(path, "job-1") as lock:
        assert lock == lock_path_for(path) == tmp_path / ".o.zarr.lock" and not path.exists()
        store = _create(path)
        store.acquire_lock("job-1")  # the job's inner take/drop must not drop the outer hold
        store.release_lock()
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        held = json.loads(lock.read_text())
    assert not lock.exists()
    held.update(pid=os.getppid(), owner="job-other")  # a live process on this host
    lock.write_text(json.dumps(held))
    with pytest.raises(OutputError, match=r"being written by job job-other"):
        _create(path, pixels_hash="h2", overwrite=True)
    assert OutputStore.open(path).pixels_hash == "h1"


def test_stale_lock_before_create_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = lock_path_for(tmp_path / "o.zarr")
    lock.write_text(json.dumps({"owner": "crashed", "pid": int(dead.stdout), "host": socket.gethostname()}))
    with store_lock(tmp_path / "o.zarr", "job-2"):
        assert json.loads(lock.read_text())["owner"] == "job-2"
    assert not lock.exists()


# -- checksums ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("array", ["labels", "probabilities"])
def test_every_single_bit_flip_is_an_error_never_a_wrong_pixel(tmp_path, array):
    store, _ = _filled(tmp_path / "o.zarr", probabilities="float16")
    chunk = tmp_path / "o.zarr" / array / ("c/1/1" if array == "labels" else "c/0/1/1")
    good = chunk.read_bytes()
    rng = np.random.default_rng(7)
    window = Window((32, 32), (64, 64))
    silent = 0
    for _ in range(100):
        bad = bytearray(good)
        bit = int(rng.integers(0, 8 * len(bad)))
        bad[bit // 8] ^= 1 << (bit % 8)
        chunk.write_bytes(bytes(bad))
        try:
            store.read(window, array=array)
            silent += 1
        except OutputError as exc:
            assert f"chunk {array}/" in str(exc) and "tiler verify" in str(exc)
    chunk.write_bytes(good)
    assert silent == 0
    store.read(window, array=array)


def test_truncated_chunk_errors_on_read_naming_chunk_and_store(tmp_path):
    store, _ = _filled(tmp_path / "o.zarr")
    chunk = tmp_path / "o.zarr" / "labels" / "c" / "1" / "2"
    chunk.write_bytes(chunk.read_bytes()[:5])
    expected = r"chunk labels/c/1/2 of output store .*o\.zarr is corrupt.*tiler verify.*rerun"
    with pytest.raises(OutputError, match=expected):
        store.read(Window((0, 0), (96, 128)))


# -- block records ------------------------------------------------------------------------------------
def test_block_record_names_its_chunks_and_digest(tmp_path):
    store, truth = _filled(tmp_path / "o.zarr", probabilities="uint8")
    rec = store.block_records()["0_1"]
    assert rec["start"] == [0, 64] and rec["stop"] == [64, 128]
    assert rec["chunks"] == [
        "labels/c/0/2", "labels/c/0/3", "labels/c/1/2", "labels/c/1/3",
        "probabilities/c/0/0/2", "probabilities/c/0/0/3", "probabilities/c/0/1/2", "probabilities/c/0/1/3",
    ]
    assert rec["labels_digest"] == labels_digest(truth[0:64, 64:128], np.uint8) == store.stored_digest(
        Window((0, 64), (64, 128))
    )
    assert all((tmp_path / "o.zarr" / c).is_file() for r in store.block_records().values() for c in r["chunks"])


def test_a_nodata_block_still_stores_its_chunks_so_a_lost_one_is_found(tmp_path):
    store, _ = _filled(tmp_path / "o.zarr", nodata_block="1_0")
    assert store.check_blocks() == []
    os.remove(tmp_path / "o.zarr" / "labels" / "c" / "2" / "0")
    assert store.check_blocks() == ["1_0"]


def test_deleted_chunk_is_found_by_the_cheap_check_and_blocks_complete(tmp_path):
    store, _ = _filled(tmp_path / "o.zarr")
    os.remove(tmp_path / "o.zarr" / "labels" / "c" / "0" / "3")
    assert store.check_blocks() == ["0_1"]
    assert store.missing_chunks(store.block_records()["0_1"]) == ["labels/c/0/3"]
    with pytest.raises(OutputError, match=r"cannot be marked complete: 1 recorded block.*0_1.*[Rr]erun"):
        store.mark_complete({"blocks_total": 4})
    assert not store.complete


def test_deleted_chunk_of_a_complete_store_is_an_error_on_read_not_nodata(tmp_path):
    store, _ = _filled(tmp_path / "o.zarr")
    store.mark_complete({"blocks_total": 4})
    os.remove(tmp_path / "o.zarr" / "labels" / "c" / "0" / "3")
    with pytest.raises(OutputError, match=r"chunk labels/c/0/3 .* is corrupt or missing \(the chunk file is missing\)"):
        OutputStore.open(tmp_path / "o.zarr", mode="r").read(Window((0, 0), (32, 128)))


def test_truncated_block_record_counts_as_missing_with_a_warning(tmp_path):
    store, _ = _filled(tmp_path / "o.zarr")
    record = tmp_path / "o.zarr" / ".tiler" / "blocks" / "1_1.json"
    record.write_text(record.read_text()[:17])
    (tmp_path / "o.zarr" / ".tiler" / "blocks" / "0_0.json").write_text("[1, 2]")
    unreadable = r"block record .*blocks/\d_\d\.json is unreadable.*rerun redoes it"
    with pytest.warns(StoreWarning, match=unreadable) as caught:
        records = store.block_records()
    assert sorted(records) == ["0_1", "1_0"]
    assert sorted(w.message.path.name for w in caught) == ["0_0.json", "1_1.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        assert store.check_blocks() == []


def test_invalidated_blocks_are_forgotten_and_complete_cleared(tmp_path):
    store, _ = _filled(tmp_path / "o.zarr")
    (tmp_path / "pred.tif").write_text("cog")
    store.record_export("cog", tmp_path / "pred.tif")
    store.mark_complete({"blocks_total": 4})
    assert store.invalidate_blocks(["0_1", "9_9"]) == 1
    assert "0_1" not in store.block_records() and len(store.block_records()) == 3
    assert not store.complete and not OutputStore.open(tmp_path / "o.zarr").complete
    assert store.exports_done() == {}


def test_export_records_are_done_only_while_the_file_is_there(tmp_path):
    store = _create(tmp_path / "o.zarr")
    (tmp_path / "pred.tif").write_text("cog")
    store.record_export("cog", tmp_path / "pred.tif")
    assert store.exports_done() == {"cog": str((tmp_path / "pred.tif").resolve())}
    (tmp_path / "pred.tif").unlink()
    assert store.exports_done() == {}


def test_mark_complete_rewrites_zarr_json_atomically(tmp_path):
    store, _ = _filled(tmp_path / "o.zarr")
    before = json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())
    store.mark_complete({"blocks_total": 4})
    after = json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())
    # without a job hash the finishing is the store's own (a job that writes nothing beside it)
    expected = {**before["attributes"], "complete": True, "summary": {"blocks_total": 4}, "job_hash": "h1"}
    assert after["attributes"] == expected
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["complete"] is True
    assert _temporaries(tmp_path) == []


def test_sharded_store_records_and_checks_its_shard_files(tmp_path):
    store = _create(tmp_path / "o.zarr", shards=(64, 64))
    block = Window((0, 64), (64, 128))
    store.write_block(block, np.full(block.shape, 255, np.uint8))  # all nodata: the shard is still stored
    store.record_block("0_1", {"tiles_run": 1}, block)
    assert store.block_records()["0_1"]["chunks"] == ["labels/c/0/1"]
    assert store.check_blocks() == []
    os.remove(tmp_path / "o.zarr" / "labels" / "c" / "0" / "1")
    assert store.check_blocks() == ["0_1"]


def test_a_record_still_being_written_by_another_process_is_neither_read_nor_warned_about(tmp_path) -> None:
    import warnings

    from tiler.io.atomic import temp_path

    store = OutputStore.create(tmp_path / "s.zarr", shape=(64, 64), num_classes=2, chunks=(32, 32), pixels_hash="p")
    store.record_export("cog", tmp_path / "pred.tif")
    half = temp_path(store.path / ".tiler" / "exports" / "geojson.json")
    half.write_text('{"key": "geo')  # a finishing worker's record, caught before its rename
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(store.export_records()) == {"cog"}
