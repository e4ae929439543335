"""Output store: create/open/resume, config-hash refusal, overwrite, aligned block writes, records, lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tiler.errors import OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.base import Georef
from tiler.io.store import OutputStore

GEO = Georef(kind="raster", crs_wkt="EPSG:32633", transform=(10, 0, 500000, 0, -10, 5000000))


def _create(path, **kw):
    args = dict(
        shape=(100, 120),
        num_classes=3,
        chunks=(32, 32),
        pixels_hash="h1",
        attrs={"georef": GEO, "class_names": ["a", "b", "c"]},
    )
    args.update(kw)
    return OutputStore.create(path, **args)


def test_create_sets_arrays_and_attributes(tmp_path):
    store = _create(tmp_path / "out.zarr", probabilities="float16")
    assert store.shape == (100, 120) and store.chunks == (32, 32) and store.num_classes == 3
    assert store.labels.dtype == np.uint8 and store.labels.fill_value == 255
    assert store.probabilities.shape == (3, 100, 120) and store.probabilities.chunks == (3, 32, 32)
    assert store.probabilities.dtype == np.float16
    assert np.all(store.labels[:5, :5] == 255)
    reopened = OutputStore.open(tmp_path / "out.zarr")
    assert reopened.georef == GEO and reopened.pixels_hash == "h1"
    assert reopened.class_names == ["a", "b", "c"] and reopened.attrs["tiler_version"]


@pytest.mark.parametrize(
    ("num_classes", "nodata_label", "dtype"),
    [
        pytest.param(3, 255, np.uint8, id="few-classes"),
        pytest.param(3, 1000, np.uint16, id="few-classes-large-nodata"),
        pytest.param(256, 0, np.uint8, id="256-classes-nodata-0"),
        pytest.param(300, 0, np.uint16, id="many-classes-small-nodata"),
    ],
)
def test_labels_dtype_holds_every_class_and_the_nodata_label(tmp_path, num_classes, nodata_label, dtype):
    store = _create(tmp_path / "o.zarr", num_classes=num_classes, nodata_label=nodata_label)
    assert store.labels.dtype == dtype and store.labels.fill_value == nodata_label
    block = Window((0, 0), (32, 32))
    labels = np.full(block.shape, nodata_label, dtype)
    labels[0, :3] = [0, 1, num_classes - 1]
    store.write_block(block, labels)
    assert np.array_equal(store.read(block), labels)


def test_a_nodata_label_past_uint16_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"nodata_label=70000 must lie in 0\.\.65535"):
        _create(tmp_path / "o.zarr", nodata_label=70000)


def test_aligned_blocks_cover_the_output(tmp_path):
    store = _create(tmp_path / "o.zarr", probabilities="uint8")
    truth = np.random.default_rng(0).integers(0, 3, (100, 120)).astype(np.uint8)
    for block in BlockPartition((100, 120), (64, 64)):
        probs = np.full((3, *block.shape), 0.5, np.float32)
        store.write_block(block, truth[block.slices], probs)
    assert np.array_equal(store.labels[...], truth)
    assert np.all(store.probabilities[...] == 128)


@pytest.mark.parametrize(
    "start,stop",
    [
        pytest.param((0, 16), (32, 48), id="start-off-grid"),
        pytest.param((0, 0), (32, 40), id="stop-off-grid"),
        pytest.param((96, 96), (130, 120), id="past-the-end"),
    ],
)
def test_misaligned_block_is_refused(tmp_path, start, stop):
    store = _create(tmp_path / "o.zarr")
    window = Window(start, stop)
    with pytest.raises(OutputError, match=r"not aligned to the chunk grid|outside output"):
        store.write_block(window, np.zeros(window.shape, np.uint8))


def test_sharded_store_aligns_to_shards(tmp_path):
    store = _create(tmp_path / "o.zarr", shards=(64, 64))
    assert store.write_unit == (64, 64)
    with pytest.raises(OutputError, match=r"chunk grid \(64, 64\)"):
        store.write_block(Window((0, 0), (32, 32)), np.zeros((32, 32), np.uint8))
    store.write_block(Window((64, 64), (100, 120)), np.ones((36, 56), np.uint8))
    assert np.all(store.labels[64:, 64:] == 1) and np.all(store.labels[:64] == 255)


def test_same_hash_resumes_and_keeps_records(tmp_path):
    store = _create(tmp_path / "o.zarr")
    store.write_block(Window((0, 0), (32, 32)), np.ones((32, 32), np.uint8))
    store.record_block("0_0", {"tiles": 4})
    again = _create(tmp_path / "o.zarr")
    assert again.block_records() == {"0_0": {"tiles": 4}}
    assert np.all(again.labels[:32, :32] == 1)


def test_different_hash_is_refused_naming_both(tmp_path):
    _create(tmp_path / "o.zarr")
    with pytest.raises(OutputError, match=r"o\.zarr.*another job.*h1.*h2.*--overwrite"):
        _create(tmp_path / "o.zarr", pixels_hash="h2")


def test_overwrite_recreates(tmp_path):
    store = _create(tmp_path / "o.zarr")
    store.record_block("0_0", {"tiles": 4})
    store.mark_complete({"blocks": 1})
    fresh = _create(tmp_path / "o.zarr", pixels_hash="h2", overwrite=True)
    assert fresh.pixels_hash == "h2" and fresh.block_records() == {} and not fresh.complete


def test_complete_records_the_job_hash_and_clearing_it_drops_both(tmp_path):
    store = _create(tmp_path / "o.zarr")
    assert store.job_hash is None
    store.mark_complete({"blocks": 1}, job_hash="j1", attrs={"config": {"k": 2}})
    reopened = OutputStore.open(tmp_path / "o.zarr")
    assert reopened.complete and reopened.job_hash == "j1" and reopened.attrs["config"] == {"k": 2}
    reopened.clear_complete()  # one rewrite: a store being finished again never names a finishing
    meta = json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())["attributes"]
    assert meta["complete"] is False and "job_hash" not in meta and meta["pixels_hash"] == "h1"
    assert OutputStore.open(tmp_path / "o.zarr").job_hash is None


@pytest.mark.parametrize("legacy", ["h1", "j1"], ids=["pixels-hash-of-then", "job-hash-of-then"])
def test_a_store_from_before_the_split_resumes_under_either_of_its_hashes(tmp_path, legacy):
    store = _create(tmp_path / "o.zarr")
    store.mark_complete({"blocks": 1})
    meta_path = tmp_path / "o.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    for key in ("pixels_hash", "job_hash"):
        del meta["attributes"][key]
    meta["attributes"]["config_hash"] = legacy  # what stores recorded before the split
    meta_path.write_text(json.dumps(meta))
    assert OutputStore.open(tmp_path / "o.zarr").job_hash == legacy  # the one identity it had
    with pytest.raises(OutputError, match="another job"):
        _create(tmp_path / "o.zarr", pixels_hash="h2", job_hash="j2")
    again = _create(tmp_path / "o.zarr", pixels_hash="h1", job_hash="j1")
    assert again.complete and again.pixels_hash == "h1" and again.job_hash == legacy  # both named from now on
    assert json.loads(meta_path.read_text())["attributes"]["pixels_hash"] == "h1"


def test_complete_only_after_mark_complete(tmp_path):
    store = _create(tmp_path / "o.zarr")
    store.record_block("0_0", {"tiles": 1})
    assert not store.complete and not OutputStore.open(tmp_path / "o.zarr").complete
    store.mark_complete({"blocks": 1})
    reopened = OutputStore.open(tmp_path / "o.zarr")
    assert reopened.complete and reopened.attrs["summary"] == {"blocks": 1}


def _record_many(path: str, prefix: str) -> None:
    store = OutputStore.open(path)
    for i in range(20):
        store.record_block(f"{prefix}{i}", {"worker": prefix, "i": i})


def test_records_from_two_processes_all_land(tmp_path):
    _create(tmp_path / "o.zarr")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path / "o.zarr"), p)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    records = OutputStore.open(tmp_path / "o.zarr").block_records()
    assert set(records) == {f"{p}{i}" for p in "ab" for i in range(20)}
    assert records["b7"] == {"worker": "b", "i": 7}


def test_lock_refuses_a_second_job(tmp_path):
    store = _create(tmp_path / "o.zarr")
    store.acquire_lock("job-1")
    store.acquire_lock("job-1")  # re-entrant for the holder
    held = json.loads(store.lock_path.read_text())
    held["pid"], held["owner"] = os.getppid(), "job-other"  # a live process on this host
    store.lock_path.write_text(json.dumps(held))
    with pytest.raises(OutputError, match=rf"being written by job job-other \(pid {os.getppid()}.*wait"):
        OutputStore.open(tmp_path / "o.zarr").acquire_lock("job-2")
    with pytest.raises(OutputError, match=r"being written by job job-other"):
        _create(tmp_path / "o.zarr", overwrite=True)


def test_stale_lock_is_taken_over_and_release(tmp_path):
    store = _create(tmp_path / "o.zarr")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    payload = {"owner": "crashed", "pid": int(dead.stdout), "host": socket.gethostname(), "time": 0}
    store.lock_path.write_text(json.dumps(payload))
    store.acquire_lock("job-2")
    assert json.loads(store.lock_path.read_text())["owner"] == "job-2"
    store.release_lock()
    assert not store.lock_path.exists()


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("/proc/tiler-test-out.zarr", id="proc"),
        pytest.param("FILE/out.zarr", id="under-a-file"),
    ],
)
def test_unwritable_location(tmp_path, where):
    (tmp_path / "FILE").write_text("x")
    path = where.replace("FILE", str(tmp_path / "FILE"))
    with pytest.raises(OutputError, match=r"cannot write the output store at .*out\.zarr"):
        _create(path)


def test_open_refuses_non_store(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(OutputError, match=r"x\.zarr"):
        OutputStore.open(tmp_path / "x.zarr")


def test_a_store_without_colours_uses_the_one_default_palette(tmp_path):
    from tiler.model.checkpoint import _names_colors
    from tiler.palette import default_colors

    store = _create(tmp_path / "o.zarr", num_classes=12)
    assert store.class_colors == list(default_colors(12))
    assert store.class_colors[:3] == [(0, 0, 0), (230, 25, 75), (60, 180, 75)]
    assert tuple(store.class_colors) == _names_colors(None, [str(k) for k in range(12)], None)[1]
