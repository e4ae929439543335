"""Nothing wrong looks finished: a chunk of another block, a forged or ill-typed block record, a hand-set complete
flag, a changed export and absurd metadata are found by `tiler verify`, and a rerun redoes what verify finds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
import zarr

from tests.engine.helpers import write_model, write_raster
from tiler.cli import main as cli_main
from tiler.config import load_config
from tiler.errors import OutputError
from tiler.geometry import BlockPartition
from tiler.io.atomic import content_digest
from tiler.io.store import OutputStore, finished_job_hash
from tiler.io.verify import verify_store
from tiler.segment import SegmentResult, run_segment

SHAPE = (64, 128)  # two 64-px blocks, 0_0 and 0_1, each owning four 32-px chunks
CHUNKS = r"chunk_grid\.configuration\.chunk_shape="
SWAPS = {  # a chunk of block 0_0 copied over one of block 0_1: a valid, checksummed chunk in the wrong place
    "labels": ("labels/c/0/0", "labels/c/1/3"),
    "probabilities": ("probabilities/c/0/0/0", "probabilities/c/0/1/3"),
}


def _job(root: Path, **output: Any) -> Path:
    """A tiny job over a (64, 128) scene, blocks of 64, chunks of 32, a COG export; returns its YAML."""
    data = {
        "input": {"path": str(write_raster(root / "image.tif", SHAPE))},
        "model": {"weights": str(write_model(root / "model.pt")), "batch_size": 4, "threads": 1},
        "tiling": {"tile": 32, "overlap": 8, "block": 64},
        "output": {"path": str(root / "out.zarr"), "chunks": 32, "exports": ["cog"], **output},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(config: Path) -> SegmentResult:
    return run_segment(load_config(config), engine="local", quiet=True)


def _arrays(store: Path) -> dict[str, np.ndarray]:
    group: Any = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(group[name][...]) for name in ("labels", "probabilities") if name in group}


def _problems(store: Path) -> list[tuple[str, str, str | None]]:
    return sorted((p.kind, p.where, p.block) for p in verify_store(store).problems)


# -- 1, 2: a chunk swapped for another block's valid chunk, labels and probabilities alike ------------------
@pytest.mark.parametrize("array", [pytest.param("labels", id="labels"), pytest.param("probabilities", id="probs")])
def test_a_chunk_swapped_for_another_blocks_chunk_fails_verify_and_the_rerun_redoes_its_block(
    tmp_path: Path, array: str
) -> None:
    config = _job(tmp_path, probabilities="float32")
    store = tmp_path / "out.zarr"
    _run(config)
    before = _arrays(store)
    theirs, ours = SWAPS[array]
    shutil.copyfile(store / theirs, store / ours)
    assert not np.array_equal(_arrays(store)[array], before[array])  # it decodes fine: only its place is wrong

    report = verify_store(store)
    assert report.bad_blocks == ["0_1"] and {p.kind for p in report.problems} == {"digest-mismatch"}
    with pytest.warns(UserWarning, match=rf"1 recorded block\(s\) cannot be trusted \(first: 0_1: chunk file {ours} "):
        result = _run(config)
    assert result.summary["blocks_run"] == 1
    after = _arrays(store)
    for name in ("labels", "probabilities"):
        np.testing.assert_array_equal(after[name], before[name])
    assert verify_store(store).ok


def test_block_records_keep_a_digest_of_every_chunk_file_they_wrote(tmp_path: Path) -> None:
    store = OutputStore.create(tmp_path / "o.zarr", shape=(32, 64), num_classes=2, chunks=(32, 32), pixels_hash="h",
                               probabilities="uint8", block=(32, 64))
    window = BlockPartition((32, 64), (32, 64)).window((0, 0))
    store.write_block(window, np.ones(window.shape, np.uint8), np.full((2, *window.shape), 0.5, np.float32))
    store.record_block("0_0", {"tiles_run": 1}, window)
    digests = store.block_records()["0_0"]["chunk_digests"]
    assert sorted(digests) == ["labels/c/0/0", "labels/c/0/1", "probabilities/c/0/0/0", "probabilities/c/0/0/1"]
    assert store.audit_blocks() == {}


# -- 3: forged windows and ill-typed records ----------------------------------------------------------------
def test_a_forged_record_window_is_a_bad_record_and_the_rerun_redoes_its_block(tmp_path: Path) -> None:
    config = _job(tmp_path)
    store = tmp_path / "out.zarr"
    _run(config)
    record = store / ".tiler" / "blocks" / "0_1.json"
    forged = json.loads(record.read_text())
    forged["start"], forged["stop"] = [0, 0], [64, 64]  # block 0_0's window, under 0_1's key
    forged["chunks"] = ["labels/c/0/0", "labels/c/0/1", "labels/c/1/0", "labels/c/1/1"]
    record.write_text(json.dumps(forged))

    report = verify_store(store)
    assert sorted((p.kind, p.where, p.block) for p in report.problems) == [
        ("bad-record", ".tiler/blocks/0_1.json", "0_1"), ("incomplete-complete", "zarr.json", None),
    ]
    assert "is not block 0_1's (start=(0, 64) stop=(64, 128)" in report.problems[0].detail
    with pytest.warns(UserWarning, match=r"cannot be trusted \(first: 0_1: its window start=\(0, 0\)"):
        result = _run(config)
    assert result.summary["blocks_run"] == 1
    assert json.loads(record.read_text())["start"] == [0, 64] and verify_store(store).ok


@pytest.mark.parametrize(
    "field, value",
    [
        pytest.param("start", "0,64", id="start-a-string"),
        pytest.param("tiles_run", "nine", id="tiles_run-a-string"),
        pytest.param("class_counts", ["a", "b"], id="class_counts-strings"),
    ],
)
def test_a_record_with_bad_types_is_a_bad_record_and_the_rerun_redoes_it_without_a_traceback(
    tmp_path: Path, field: str, value: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _job(tmp_path, exports=[])
    store = tmp_path / "out.zarr"
    _run(config)
    record = store / ".tiler" / "blocks" / "0_1.json"
    bad = json.loads(record.read_text())
    bad[field] = value
    record.write_text(json.dumps(bad))

    report = verify_store(store)
    assert ("bad-record", ".tiler/blocks/0_1.json", "0_1") in [(p.kind, p.where, p.block) for p in report.problems]
    assert f"{field}={value!r}" in report.problems[0].detail and report.bad_blocks == ["0_1"]
    with pytest.warns(UserWarning, match=r"1 recorded block\(s\) cannot be trusted \(first: 0_1: "):
        assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert json.loads(record.read_text())[field] != value and verify_store(store).ok


# -- 4: a complete flag set by hand on a partial store --------------------------------------------------------
def test_a_hand_set_complete_flag_on_a_partial_store_is_believed_by_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _job(tmp_path, exports=[])
    store = tmp_path / "out.zarr"
    _run(config)
    OutputStore.open(store).invalidate_blocks(["0_1"])  # block 0_1 never ran: no record, no chunks ...
    for chunk in ("labels/c/0/2", "labels/c/0/3", "labels/c/1/2", "labels/c/1/3"):
        (store / chunk).unlink()
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["complete"] = True  # ... and someone marked it complete by hand
    (store / "zarr.json").write_text(json.dumps(meta))
    truth = tmp_path / "truth.tif"
    with rasterio.open(tmp_path / "image.tif") as src:
        profile = {**src.profile, "count": 1, "nodata": None}
    with rasterio.open(truth, "w", **profile) as dst:
        dst.write(np.ones((1, *SHAPE), dtype=np.uint8))

    assert not OutputStore.open(store, mode="r").complete and finished_job_hash(store) is None
    report = verify_store(store)
    assert _problems(store) == [("incomplete-complete", "zarr.json", None)] and not report.complete
    assert "1 of its 2 blocks (blocks of (64, 64)) have no sound record (first: 0_1)" in report.problems[0].detail
    assert cli_main(["--quiet", "score", str(store), str(truth)]) != 0  # its fill values are never scored
    assert "is not complete" in capsys.readouterr().err
    assert _run(config).summary["blocks_run"] == 1
    assert OutputStore.open(store, mode="r").complete and verify_store(store).ok


def test_complete_is_believed_only_while_every_block_of_the_partition_has_a_sound_record(tmp_path: Path) -> None:
    shape, block = (64, 128), (64, 64)
    store = OutputStore.create(tmp_path / "o.zarr", shape=shape, num_classes=2, chunks=(32, 32), pixels_hash="h",
                               block=block)
    windows = dict(zip(("0_0", "0_1"), BlockPartition(shape, block), strict=True))
    store.write_block(windows["0_0"], np.zeros(block, np.uint8))
    store.record_block("0_0", {"tiles_run": 1}, windows["0_0"])
    with pytest.raises(OutputError, match=r"cannot be marked complete: 1 of its 2 blocks .*first: 0_1.*[Rr]erun"):
        store.mark_complete({"blocks_total": 2})
    store._update_attrs({"complete": True})  # by hand
    assert store.complete_flag and not store.complete
    store.write_block(windows["0_1"], np.ones(block, np.uint8))
    store.record_block("0_1", {"tiles_run": 1}, windows["0_1"])
    assert store.complete and verify_store(store.path).ok


# -- 5: exports are recorded with a digest and checked ---------------------------------------------------------
def test_a_truncated_cog_is_a_changed_export_and_the_rerun_writes_it_again(tmp_path: Path) -> None:
    config = _job(tmp_path)
    store = tmp_path / "out.zarr"
    _run(config)
    cog = tmp_path / "out.cog.tif"
    whole = cog.read_bytes()
    cog.write_bytes(whole[: len(whole) // 2])

    report = verify_store(store)
    assert [(p.kind, p.where) for p in report.problems] == [("changed-export", str(cog.resolve()))]
    assert "rerun `tiler run` with the same config to write it again" in report.problems[0].detail
    result = _run(config)
    assert result.summary["blocks_run"] == 0 and result.summary["finishing"]["cog"]["reused"] is False
    assert cog.read_bytes() == whole and verify_store(store).ok


def test_an_export_recorded_without_an_intent_is_recorded_with_the_digest_of_its_file(tmp_path: Path) -> None:
    store = OutputStore.create(tmp_path / "o.zarr", shape=(32, 32), num_classes=2, chunks=(32, 32), pixels_hash="h")
    store.write_block(BlockPartition((32, 32), (32, 32)).window((0, 0)), np.zeros((32, 32), np.uint8))
    report_md = tmp_path / "o.report.md"
    report_md.write_text("# report\n")  # written without an intent hook
    store.record_export("report_md", report_md)
    assert store.export_records()["report_md"]["digest"] == content_digest(report_md)
    assert store.export_intact("report_md") and store.exports_done() == {"report_md": str(report_md.resolve())}
    store.mark_complete({})
    report_md.write_text("# rep")
    assert not store.export_intact("report_md") and store.exports_done() == {}
    assert [p.kind for p in verify_store(store.path).problems] == ["changed-export"]


# -- 6: metadata declaring shapes no job writes ----------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "array, field, value, shown",
    [
        pytest.param("labels", "shape", [10**12, 10**12], r"shape=\[1000000000000, 1000000000000\] with chunks "
                     r"\[32, 32\] makes 9\.77e\+20 chunk files", id="shape-1e12"),
        pytest.param("labels", "shape", [1e12, 1e12], r"shape=\[1000000000000\.0, 1000000000000\.0\] must be",
                     id="shape-floats"),
        pytest.param("labels", "chunks", [0, 32], CHUNKS + r"\[0, 32\] must be 2 whole numbers", id="chunk-0"),
        pytest.param("labels", "chunks", [-32, 32], CHUNKS + r"\[-32, 32\] must be", id="chunk-negative"),
        pytest.param("labels", "chunks", ["32", 32], CHUNKS + r"\['32', 32\] must be", id="chunk-string"),
        pytest.param("labels", "chunks", [10**6, 10**6], CHUNKS + r"\[1000000, 1000000\] makes chunks of 1e\+12 "
                     r"bytes", id="chunk-1e12-bytes"),
        pytest.param("probabilities", "shape", [3, 64, 63], r"shape=\[\[3, 64, 63\], \[3, 32, 32\]\] must be \(K, "
                     r"\*\[64, 64\]\)", id="probabilities-off-the-labels"),
    ],
)
def test_absurd_array_metadata_is_refused_in_one_line_before_anything_is_allocated(
    tmp_path: Path, array: str, field: str, value: Any, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = OutputStore.create(tmp_path / "o.zarr", shape=(64, 64), num_classes=3, chunks=(32, 32), pixels_hash="h",
                               probabilities="uint8")
    file = store.path / array / "zarr.json"
    meta = json.loads(file.read_text())
    if field == "shape":
        meta["shape"] = value
    else:
        meta["chunk_grid"]["configuration"]["chunk_shape"] = value
    file.write_text(json.dumps(meta))

    expected = rf"{file}: {shown}.*Fix: rerun the job with --overwrite"
    with pytest.raises(OutputError, match=expected):
        verify_store(store.path)
    assert cli_main(["verify", str(store.path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(file) in err[0] and "Fix:" in err[0]
