"""`tiler verify`: every missing or corrupt chunk and every bad record is named with the block that owns it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tiler.cli import main
from tiler.errors import OutputError
from tiler.geometry import BlockPartition, Window
from tiler.io.store import OutputStore
from tiler.io.verify import verify_store

SHAPE, CHUNKS, BLOCK = (96, 128), (32, 32), (64, 64)


@pytest.fixture
def store(tmp_path):
    """A complete store of 4 blocks with probabilities; block 0_1 covers labels chunks c/0/2 c/0/3 c/1/2 c/1/3."""
    out = OutputStore.create(
        tmp_path / "o.zarr", shape=SHAPE, num_classes=3, chunks=CHUNKS, pixels_hash="h", probabilities="uint8"
    )
    truth = np.random.default_rng(0).integers(0, 3, SHAPE).astype(np.uint8)
    for block in BlockPartition(SHAPE, BLOCK):
        out.write_block(block, truth[block.slices], np.full((3, *block.shape), 0.5, np.float32))
        out.record_block(f"{block.start[0] // 64}_{block.start[1] // 64}", {"tiles_run": 1}, block)
    (tmp_path / "pred.tif").write_text("cog")
    out.record_export("cog", tmp_path / "pred.tif")
    out.mark_complete({"blocks_total": 4})
    return out


def _kinds(report):
    return sorted((p.kind, p.where, p.block) for p in report.problems)


def test_a_sound_store_verifies_clean(store):
    report = verify_store(store.path)
    assert report.ok and report.complete and report.problems == []
    assert report.chunks_checked == 12 + 12 and report.blocks_checked == 4
    assert report.lines() == [f"{store.path}: ok (24 chunks, 4 block records checked, complete, job hash h)."]


def test_deleted_chunk_is_named_with_its_block(store):
    os.remove(store.path / "labels" / "c" / "1" / "3")
    report = verify_store(store.path)
    assert _kinds(report) == [("missing-chunk", "labels/c/1/3", "0_1")]
    assert report.bad_blocks == ["0_1"]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:9] + bytes([b[9] ^ 0x04]) + b[10:], id="bit-flip"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
def test_corrupt_chunk_is_named_with_its_block(store, damage):
    chunk = store.path / "probabilities" / "c" / "0" / "2" / "1"
    chunk.write_bytes(damage(chunk.read_bytes()))
    report = verify_store(store.path)
    assert _kinds(report) == [("corrupt-chunk", "probabilities/c/0/2/1", "1_0")]
    assert report.lines()[0].startswith("corrupt-chunk: probabilities/c/0/2/1 (block 1_0): cannot be decoded")
    with pytest.raises(OutputError, match=r"chunk probabilities/c/0/2/1 .* corrupt"):
        store.read(Window((64, 0), (96, 64)), array="probabilities")


def test_labels_changed_behind_the_records_back_are_a_digest_mismatch(store):
    block = Window((64, 64), (96, 128))
    store.labels[block.slices] = np.zeros(block.shape, np.uint8)  # valid chunks, wrong pixels
    report = verify_store(store.path)
    assert _kinds(report) == [("digest-mismatch", "labels in start=(64, 64) stop=(96, 128)", "1_1")]


def test_unreadable_record_and_lost_export_make_complete_a_lie(store, tmp_path):
    (store.path / ".tiler" / "blocks" / "1_1.json").write_text('{"key": "1_1", "tiles_')
    (tmp_path / "pred.tif").unlink()
    report = verify_store(store.path)
    assert _kinds(report) == [
        ("bad-record", ".tiler/blocks/1_1.json", "1_1"),
        ("incomplete-complete", "zarr.json", None),
        ("missing-export", str((tmp_path / "pred.tif").resolve()), None),
    ]
    assert report.bad_blocks == ["1_1"]


def test_invalidating_the_bad_blocks_leaves_a_store_a_rerun_finishes(store):
    os.remove(store.path / "labels" / "c" / "0" / "0")
    report = verify_store(store.path)
    store.invalidate_blocks(report.bad_blocks)
    again = verify_store(store.path)
    assert again.ok and not again.complete  # the lost chunk now belongs to a block that is simply not done
    assert "0_0" not in store.block_records() and any("not complete" in n for n in again.notes)


def test_cli_exit_codes_and_one_line_per_problem(store, tmp_path, capsys):
    assert main(["verify", str(store.path)]) == 0
    os.remove(store.path / "labels" / "c" / "0" / "0")
    os.remove(store.path / "labels" / "c" / "2" / "3")
    assert main(["verify", str(store.path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3:-1] == [
        "missing-chunk: labels/c/0/0 (block 0_0): the chunk file is missing (recorded as written by its block)",
        "missing-chunk: labels/c/2/3 (block 1_1): the chunk file is missing (recorded as written by its block)",
    ]
    assert lines[-1].endswith("2 problem(s), 2 block(s) to recompute (0_0, 1_1); invalidate them and rerun "
                              "`tiler run` with the same config to recompute them.")
    assert main(["verify", str(store.path), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False and payload["bad_blocks"] == ["0_0", "1_1"]
    (tmp_path / "photos").mkdir()
    assert main(["verify", str(tmp_path / "photos")]) == 2
    assert "is not a tiler output store" in capsys.readouterr().err
