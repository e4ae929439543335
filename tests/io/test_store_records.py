"""Block records read back typed: one reader (StoredBlock) for the store's audit, verify and class areas, the JSON on
disk unchanged, one error type (RecordError) for every record that cannot be trusted."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from tiler.geometry import BlockPartition, Window
from tiler.io.classes import class_areas
from tiler.io.store import OutputStore, RecordError, StoredBlock, check_block
from tiler.io.verify import verify_store

SHAPE, CHUNKS, BLOCK = (96, 128), (32, 32), (64, 64)

# a block record exactly as earlier tilers wrote it (the keys a worker and the store write, in their order)
ON_DISK: dict[str, Any] = {
    "key": "0_1", "block": "0_1", "started_at": 1.5, "finished_at": 2.5, "start": [0, 64], "stop": [64, 128],
    "tiles_run": 9, "tiles_skipped": 0, "read_seconds": 0.1, "infer_seconds": 0.2, "stitch_seconds": 0.0,
    "write_seconds": 0.0, "assemble_seconds": 0.0, "idle_seconds": 0.0, "wait_seconds": 0.0, "pid": 7,
    "class_counts": [4000, 96, 0], "chunks": ["labels/c/0/2", "labels/c/0/3", "labels/c/1/2", "labels/c/1/3"],
    "labels_digest": "crc32:0000abcd", "chunk_digests": {"labels/c/0/2": "crc32:00000001"},
}  # fmt: skip


def _filled(path):
    store = OutputStore.create(path, shape=SHAPE, num_classes=3, chunks=CHUNKS, pixels_hash="h", block=BLOCK)
    truth = np.random.default_rng(0).integers(0, 3, SHAPE).astype(np.uint8)
    for block in BlockPartition(SHAPE, BLOCK):
        key = f"{block.start[0] // 64}_{block.start[1] // 64}"
        counts = np.bincount(truth[block.slices].ravel(), minlength=3).tolist()
        store.write_block(block, truth[block.slices])
        store.record_block(key, {"tiles_run": 1, "class_counts": counts}, block)
    return store, truth


def test_a_record_as_earlier_tilers_wrote_it_reads_typed():
    rec = StoredBlock.from_json(ON_DISK)
    assert rec.key == "0_1" and rec.window == Window((0, 64), (64, 128))
    assert rec.chunks == tuple(ON_DISK["chunks"]) and rec.chunk_digests == ON_DISK["chunk_digests"]
    assert rec.labels_digest == "crc32:0000abcd" and rec.class_counts == (4000, 96, 0)
    assert rec.fields == {k: v for k, v in ON_DISK.items() if k != "key"}  # every field kept as stored
    without_key = {k: v for k, v in ON_DISK.items() if k != "key"}
    assert StoredBlock.from_json(without_key, key="0_1") == rec  # as block_records() gives it


def test_the_store_writes_the_record_json_it_always_wrote_and_reads_it_back_typed(tmp_path):
    store, truth = _filled(tmp_path / "o.zarr")
    on_disk = json.loads(store.block_record_file("0_1").read_text())
    assert list(on_disk) == ["key", "tiles_run", "class_counts", "start", "stop", "chunks", "labels_digest",
                             "chunk_digests"]  # fmt: skip
    typed = store.stored_blocks()
    assert sorted(typed) == ["0_0", "0_1", "1_0", "1_1"]
    assert typed["0_1"] == StoredBlock.from_json(on_disk) and typed["0_1"].fields == store.block_records()["0_1"]
    assert typed["0_1"].chunks == ("labels/c/0/2", "labels/c/0/3", "labels/c/1/2", "labels/c/1/3")
    assert class_areas(store)["classes"][1]["pixels"] == int((truth == 1).sum())  # counts from the typed records


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param([1, 2], r"a JSON list, not an object", id="not-an-object"),
        pytest.param({"key": 3}, r"key=3 must be the block's key", id="key-a-number"),
        pytest.param({"start": "0,64", "stop": [64, 128]}, r"start='0,64' stop=\[64, 128\] must be 2", id="start"),
        pytest.param({"start": [0, 64]}, r"start=\[0, 64\] stop=None must be 2 whole numbers", id="no-stop"),
        pytest.param({"start": [0, 64, 0], "stop": [64, 128, 1]}, r"must be 2 whole numbers each", id="3-axes"),
        pytest.param({"start": [64, 64], "stop": [0, 128]}, r".", id="empty-window"),
        pytest.param({"chunks": "labels/c/0/0"}, r"chunks='labels/c/0/0' must be a list of chunk files", id="chunks"),
        pytest.param({"chunk_digests": {"labels/c/0/0": 1}}, r"chunk_digests=.* must map chunk files", id="digest"),
        pytest.param({"labels_digest": 5}, r"labels_digest=5 must be a digest string", id="labels_digest"),
        pytest.param({"tiles_run": True}, r"tiles_run=True must be a whole number", id="tiles_run-bool"),
        pytest.param({"class_counts": ["a"]}, r"class_counts=\['a'\] must be a list of whole numbers", id="counts"),
        pytest.param({"confusion": [[1], "x"]}, r"must be a list of lists of whole numbers", id="confusion"),
    ],
)
def test_a_record_with_bad_data_raises_one_error_type_naming_the_field(data, message):
    with pytest.raises(RecordError, match=message):
        StoredBlock.from_json(data, key="0_1", ndim=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"start": [64, 64], "stop": [128, 128]}, r"lies outside the store's shape \(96, 128\)", id="out"),
        pytest.param({"start": [0, 48], "stop": [64, 128]}, r"is not on the chunk grid \(32, 32\)", id="off-grid"),
        pytest.param({"start": [0, 0], "stop": [64, 64]}, r"is not block 0_1's \(start=\(0, 64\)", id="moved"),
        pytest.param({"chunks": ["labels/c/0/2"]}, r"are not the chunk files of its window", id="chunks"),
        pytest.param({"chunk_digests": {"labels/c/0/0": "crc32:1"}}, r"must map chunk files of its window", id="dig"),
        pytest.param({"start": None, "stop": None}, r"it names no window", id="no-window"),
    ],
)
def test_a_record_that_does_not_fit_the_store_is_not_sound(tmp_path, change, message):
    store, _ = _filled(tmp_path / "o.zarr")
    record = {**json.loads(store.block_record_file("0_1").read_text()), **change}
    record = {k: v for k, v in record.items() if v is not None}
    with pytest.raises(RecordError, match=message):
        check_block("0_1", record, store.grid, block=BLOCK)
    why = store.record_problem("0_1", record, block=BLOCK)  # the same reader, its message as a string
    assert why is not None and re.search(message, why)


def test_audit_verify_and_class_areas_read_the_records_alike(tmp_path):
    store, truth = _filled(tmp_path / "o.zarr")
    store.mark_complete({"blocks_total": 4})
    file = store.block_record_file("1_0")
    file.write_text(json.dumps({**json.loads(file.read_text()), "tiles_skipped": "none"}))
    seen: list[dict[str, Any]] = []
    bad = store.audit_blocks(check=lambda fields: seen.append(dict(fields)))  # type: ignore[func-returns-value]
    assert list(bad) == ["1_0"] and "tiles_skipped='none' must be a whole number" in bad["1_0"]
    assert sorted(f["start"] == [0, 0] for f in seen) == [False, False, True] and all("key" not in f for f in seen)
    report = verify_store(store.path)
    assert [(p.kind, p.block) for p in report.problems] == [("bad-record", "1_0"), ("incomplete-complete", None)]
    assert "tiles_skipped='none' must be a whole number" in report.problems[0].detail
    assert sorted(store.stored_blocks()) == ["0_0", "0_1", "1_1"]  # the bad record counts for nothing
    pixels = sum(c["pixels"] for c in class_areas(store)["classes"])
    assert pixels == 96 * 128 - 32 * 64  # block 1_0 (rows 64..96, cols 0..64) is not counted from a bad record
