"""Archive runs: the ledger skips done inputs, retries failed ones, and reprocesses on a new config."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
import zarr

from pipelines.archive import main
from tests.archive.helpers import SHAPE, by_stem, rows, write_config, write_truth
from tests.engine.helpers import local_finishing_on, write_raster
from tiler.archive import Ledger, fingerprint, input_stem, load_archive, run_archive
from tiler.archive.report import ArchiveReport
from tiler.cli import build_parser
from tiler.engine.finishing import ProcessFinisher
from tiler.errors import ConfigError, OutputError
from tiler.metrics import confusion_matrix, scores_from_confusion

REPO = Path(__file__).resolve().parents[2]


def block_mtimes(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((store / ".tiler" / "blocks").glob("*.json"))}


def run(folder: Path, *overrides: str):  # noqa: ANN201 - an ArchiveReport
    return run_archive(load_archive(folder / "archive.yaml", overrides), engine="local", quiet=True)


# ---------------------------------------------------------------------------------------------------
# end to end, in-process engine


@dataclass(frozen=True)
class TwoRuns:
    """One archive run twice: what the first run left, and the second run's report (see :func:`two_runs`)."""

    folder: Path
    first: ArchiveReport
    first_rows: dict[str, dict[str, object]]
    blocks: dict[str, dict[str, int]]  # a's and b's block records' mtimes after the first run
    second: ArchiveReport


@pytest.fixture(scope="module")
def two_runs(prepared: Path, finisher: ProcessFinisher, tmp_path_factory: pytest.TempPathFactory) -> TwoRuns:
    """A copy of the prepared folder run twice, shared by the tests that only read its results (never change it).

    The first run's report and ledger rows, and the block records' mtimes, are kept before the second run. The
    second run skips a and b (their stores and block records stay as the first run wrote them) and fails c again.
    """
    folder = tmp_path_factory.mktemp("two-runs")
    shutil.copytree(prepared, folder, dirs_exist_ok=True)
    with local_finishing_on(finisher):
        first = run(folder)
        first_rows = rows(folder / "out")
        blocks = {s: block_mtimes(folder / "out" / s / f"{s}.zarr") for s in ("a", "b")}
        second = run(folder)
    return TwoRuns(folder, first, first_rows, blocks, second)


def test_first_run_does_two_and_records_the_corrupt_file_as_failed(two_runs: TwoRuns) -> None:
    archive_dir, report = two_runs.folder, two_runs.first
    assert report.counts == {"done": 2, "skipped": 0, "failed": 1, "total": 3}
    assert report.exit_code == 1
    table = by_stem(two_runs.first_rows)
    assert {s: r["status"] for s, r in table.items()} == {"a": "done", "b": "done", "c": "failed"}
    assert str(archive_dir / "scenes" / "c.tif") in str(table["c"]["error"])
    assert all(r["attempts"] == 1 for r in table.values())
    for stem in ("a", "b"):
        scores = table[stem]["scores"]
        # the ledger keeps the job's score, which is the score of the stored labels against the truth file
        labels = zarr.open_group(str(archive_dir / "out" / stem / f"{stem}.zarr"), mode="r")["labels"][...]
        with rasterio.open(archive_dir / "scenes" / f"{stem}_truth.tif") as src:
            truth = src.read(1)
        expected = scores_from_confusion(confusion_matrix(truth, labels, num_classes=4, pred_nodata=255)).fwiou
        assert isinstance(scores, dict) and scores["fwiou"] == pytest.approx(expected, abs=1e-12)
        assert (archive_dir / "out" / stem / f"{stem}.zarr" / "zarr.json").is_file()
    c_attrs = archive_dir / "out" / "c" / "c.zarr" / "zarr.json"
    assert not c_attrs.exists() or not json.loads(c_attrs.read_text())["attributes"].get("complete")


def test_second_run_recomputes_nothing_and_retries_the_failed_file(two_runs: TwoRuns) -> None:
    archive_dir = two_runs.folder
    first = by_stem(two_runs.first_rows)
    stores = {s: archive_dir / "out" / s / f"{s}.zarr" for s in ("a", "b")}
    blocks = two_runs.blocks
    assert all(blocks.values())

    report = two_runs.second

    second = by_stem(rows(archive_dir / "out"))
    assert report.counts == {"done": 0, "skipped": 2, "failed": 1, "total": 3}
    assert report.exit_code == 1
    for stem in ("a", "b"):
        assert second[stem] == first[stem]  # same attempts, started_at and finished_at
        assert block_mtimes(stores[stem]) == blocks[stem]
    assert second["c"]["attempts"] == 2 and second["c"]["status"] == "failed"
    assert second["c"]["started_at"] > first["c"]["started_at"]
    skipped = {i.stem: i for i in report.items if i.status == "skipped"}
    assert skipped["a"].scores == first["a"]["scores"]


def test_a_new_file_is_the_only_one_processed(archive_dir: Path) -> None:
    run(archive_dir)
    write_raster(archive_dir / "scenes" / "d.tif", SHAPE, 3, 7)
    report = run(archive_dir)
    statuses = {i.stem: i.status for i in report.items}
    assert statuses == {"a": "skipped", "b": "skipped", "c": "failed", "d": "done"}
    table = by_stem(rows(archive_dir / "out"))
    assert table["d"]["status"] == "done" and table["d"]["attempts"] == 1
    assert table["d"]["scores"] is None  # no d_truth.tif and missing_truth: unscored


def test_changing_the_overlap_reprocesses_every_file(archive_dir: Path) -> None:
    run(archive_dir)
    before = rows(archive_dir / "out")
    blocks = block_mtimes(archive_dir / "out" / "a" / "a.zarr")

    report = run(archive_dir, "tiling.overlap=4")

    assert report.counts == {"done": 2, "skipped": 0, "failed": 1, "total": 3}
    after = rows(archive_dir / "out")
    new = {k: r for k, r in after.items() if k not in before}
    assert sorted(k.split("/")[0] for k in new) == ["a", "b", "c"]
    assert all(r["attempts"] == 1 for r in new.values())
    assert {k.split("/")[1] for k in new}.isdisjoint({k.split("/")[1] for k in before})
    store = archive_dir / "out" / "a" / "a.zarr"
    new_hash = next(k.split("/")[1] for k in new if k.startswith("a/"))
    assert json.loads((store / "zarr.json").read_text())["attributes"]["job_hash"] == new_hash
    after_blocks = block_mtimes(store)
    assert after_blocks.keys() == blocks.keys()
    assert all(after_blocks[k] > blocks[k] for k in blocks)  # every block recomputed


def test_a_new_truth_pattern_rescores_instead_of_reporting_the_old_scores(archive_dir: Path) -> None:
    run(archive_dir)
    truths = archive_dir / "truths"  # beside scenes/, so the input glob does not match them
    truths.mkdir()
    for seed, stem in enumerate(("a", "b")):
        write_truth(truths / f"{stem}.tif", seed=seed + 10)

    report = run(archive_dir, "scoring.truth=../truths/{stem}.tif")

    items = {i.stem: i for i in report.items}  # a_truth.tif and b_truth.tif are inputs now: they fail
    assert {items["a"].status, items["b"].status} == {"done"}
    for stem in ("a", "b"):
        labels = zarr.open_group(str(archive_dir / "out" / stem / f"{stem}.zarr"), mode="r")["labels"][...]
        with rasterio.open(truths / f"{stem}.tif") as src:
            truth = src.read(1)
        expected = scores_from_confusion(confusion_matrix(truth, labels, num_classes=4, pred_nodata=255)).fwiou
        scores = items[stem].scores
        assert isinstance(scores, dict) and scores["fwiou"] == pytest.approx(expected, abs=1e-12)


def block_files(store: Path) -> dict[str, tuple[bytes, int]]:
    """Every block record's bytes and mtime: a recomputed block rewrites its record."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (store / ".tiler" / "blocks").glob("*.json")}


def test_an_added_export_finishes_every_done_input_again_without_running_a_block(archive_dir: Path) -> None:
    run(archive_dir)
    before = rows(archive_dir / "out")
    stores = {s: archive_dir / "out" / s / f"{s}.zarr" for s in ("a", "b")}
    blocks = {s: block_files(p) for s, p in stores.items()}

    report = run(archive_dir, "output.exports=[cog]")

    assert report.counts == {"done": 2, "skipped": 0, "failed": 1, "total": 3}
    new = by_stem({k: r for k, r in rows(archive_dir / "out").items() if k not in before})
    assert sorted(new) == ["a", "b", "c"]
    for stem, store in stores.items():
        assert block_files(store) == blocks[stem]  # every block reused: records untouched
        row = new[stem]
        assert row["status"] == "done" and row["attempts"] == 1
        assert row["summary"]["blocks_run"] == 0  # type: ignore[index]
        outputs = row["outputs"]
        assert isinstance(outputs, dict) and Path(outputs["cog"]).is_file()
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        assert attrs["complete"] is True and attrs["job_hash"] == row["config_hash"]
        assert attrs["pixels_hash"] == row["pixels_hash"] == by_stem(before)[stem]["pixels_hash"]
        stored = json.loads((store.parent / f"{stem}.report.json").read_text())
        assert stored["config_hash"] == row["config_hash"] and "cog" in stored["outputs"]

    assert run(archive_dir, "output.exports=[cog]").counts["skipped"] == 2  # done under the new hash


def test_switching_the_config_back_finishes_again_what_another_config_finished_since(archive_dir: Path) -> None:
    run(archive_dir)  # config A: done, the stores finished under A's hash
    first = by_stem(rows(archive_dir / "out"))
    run(archive_dir, "output.exports=[cog]")  # config B on the same pixels: the stores now say B
    stores = {s: archive_dir / "out" / s / f"{s}.zarr" for s in ("a", "b")}
    blocks = {s: block_files(p) for s, p in stores.items()}

    report = run(archive_dir)  # back to A: the ledger's done rows for A no longer describe the stores

    items = {i.stem: i for i in report.items}
    assert {items["a"].status, items["b"].status} == {"done"}
    for stem, store in stores.items():
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        assert attrs["complete"] is True and attrs["job_hash"] == first[stem]["config_hash"]
        assert block_files(store) == blocks[stem]  # same pixels: finished again, not recomputed
        stored = json.loads((store.parent / f"{stem}.report.json").read_text())
        assert stored["config_hash"] == first[stem]["config_hash"]
    assert run(archive_dir).counts["skipped"] == 2  # and now A's rows hold again


def test_deleted_outputs_are_computed_again_not_skipped_as_done(archive_dir: Path) -> None:
    run(archive_dir)
    shutil.rmtree(archive_dir / "out" / "a")  # the user removed a's outputs to have it redone

    report = run(archive_dir)

    items = {i.stem: i for i in report.items}
    assert items["a"].status == "done" and items["b"].status == "skipped"
    store = archive_dir / "out" / "a" / "a.zarr"
    assert json.loads((store / "zarr.json").read_text())["attributes"]["complete"] is True
    assert by_stem(rows(archive_dir / "out"))["a"]["attempts"] == 2


def test_a_deleted_store_beside_its_old_reports_fails_naming_the_file_instead_of_skipping(archive_dir: Path) -> None:
    run(archive_dir)
    shutil.rmtree(archive_dir / "out" / "b" / "b.zarr")  # the reports beside it are no longer vouched for

    report = run(archive_dir)

    items = {i.stem: i for i in report.items}
    assert items["a"].status == "skipped" and items["b"].status == "failed"
    assert "b.scores.json already exists" in str(items["b"].error) and "Fix:" in str(items["b"].error)
    assert by_stem(rows(archive_dir / "out"))["b"]["status"] == "failed"


def test_report_files_list_the_counts(two_runs: TwoRuns) -> None:
    root = two_runs.folder / "out"
    latest = json.loads((root / "latest.json").read_text())
    assert latest["counts"] == {"done": 0, "skipped": 2, "failed": 1, "total": 3}
    assert latest["exit_code"] == 1
    assert [i["status"] for i in latest["items"]] == ["skipped", "skipped", "failed"]
    assert len(sorted(root.glob("report-*.json"))) == 2 and len(sorted(root.glob("report-*.md"))) == 2
    markdown = (root / "latest.md").read_text()
    assert "**0 done, 2 skipped, 1 failed** of 3 inputs." in markdown
    assert "c.tif" in markdown.split("## Failed")[1].split("## Skipped")[0]


def test_a_missing_truth_fails_only_that_file_when_required(archive_dir: Path) -> None:
    (archive_dir / "scenes" / "b_truth.tif").unlink()
    (archive_dir / "scenes" / "c.tif").unlink()
    write_config(archive_dir, missing_truth="fail")
    report = run(archive_dir)
    status = {i.stem: i for i in report.items}
    assert status["a"].status == "done"
    assert status["b"].status == "failed"
    assert "b_truth.tif" in str(status["b"].error) and "does not exist" in str(status["b"].error)


def test_a_manifest_lists_inputs_and_a_missing_one_fails_alone(archive_dir: Path) -> None:
    (archive_dir / "list.txt").write_text("# tonight\nscenes/a.tif\n\nscenes/gone.tif\n")
    config = yaml.safe_load((archive_dir / "archive.yaml").read_text())
    del config["input"]
    config["archive"]["manifest"] = "list.txt"
    (archive_dir / "archive.yaml").write_text(yaml.safe_dump(config))
    report = run(archive_dir)
    status = {i.stem: i for i in report.items}
    assert list(status) == ["a", "gone"]
    assert status["a"].status == "done"
    assert status["gone"].status == "failed" and "gone.tif" in str(status["gone"].error)


def test_the_cli_returns_1_when_a_file_failed_and_0_when_none(archive_dir: Path) -> None:
    config = str(archive_dir / "archive.yaml")
    args = build_parser().parse_args(["archive", config, "--engine", "local", "--quiet"])
    assert args.func(args) == 1
    (archive_dir / "scenes" / "c.tif").unlink()
    assert main([config, "--engine", "local", "--quiet"]) == 0


def test_the_pipeline_runs_as_a_plain_script_and_exits_2_on_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("archive: {root: out, colour: red}\ninput: {path: '*.tif'}\nmodel: {weights: m.pt}\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "archive.py"), str(bad)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "archive.colour: unknown key" in proc.stderr


# ---------------------------------------------------------------------------------------------------
# configuration errors


def _config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "scenes").mkdir(exist_ok=True)
    write_raster(tmp_path / "scenes" / "a.tif", (16, 16))
    path = tmp_path / "archive.yaml"
    path.write_text(text)
    return path


JOB = "model: {weights: m.pt}\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("input: {path: 'scenes/*.tif'}\n" + JOB, r"archive: required section is missing",
                     id="no-archive-section"),
        pytest.param("archive: {}\ninput: {path: 'scenes/*.tif'}\n" + JOB, r"archive\.root: required key",
                     id="no-root"),
        pytest.param("archive: {root: out, colour: red}\ninput: {path: 'scenes/*.tif'}\n" + JOB,
                     r"archive\.colour: unknown key.*fix: remove it", id="unknown-archive-key"),
        pytest.param("archive: {root: out, missing_truth: maybe}\ninput: {path: 'scenes/*.tif'}\n" + JOB,
                     r"archive\.missing_truth: .*\"maybe\".*fix: use fail or unscored",
                     id="bad-missing-truth"),
        pytest.param("archive: {root: out}\ninput: {path: 'scenes/*.tif'}\n" + JOB
                     + "output: {path: x.zarr}\n",
                     r"output\.path: is set by the archive.*fix: remove output\.path",
                     id="output-path-given"),
        pytest.param("archive: {root: out, manifest: l.txt}\ninput: {path: 'scenes/*.tif'}\n" + JOB,
                     r"both are set.*fix: give a glob in input\.path, or a manifest", id="glob-and-manifest"),
        pytest.param("archive: {root: out}\n" + JOB, r"neither is set", id="no-inputs-given"),
        pytest.param("archive: {root: out}\ninput: {path: 'scenes/*.tif'}\n" + JOB
                     + "scoring: {truth: '{scene}_gt.tif'}\n",
                     r"scoring\.truth: placeholder \{scene\}.*fix: use \{stem\}", id="bad-truth-placeholder"),
        pytest.param("archive: {root: out}\ninput: {path: 'scenes/*.tif'}\n" + JOB + "tiling: {tile: 0}\n",
                     r"tiling\.tile", id="bad-job-key"),
    ],
)
def test_bad_archive_configs_are_refused(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_archive(_config(tmp_path, text))


def test_an_empty_glob_is_an_error(tmp_path: Path) -> None:
    path = _config(tmp_path, "archive: {root: out}\ninput: {path: 'scenes/*.jp2'}\n" + JOB)
    with pytest.raises(ConfigError, match=r"input\.path '.*\*\.jp2' lists no inputs.*fix: check the glob"):
        load_archive(path).inputs()


def test_two_inputs_with_one_stem_are_both_listed_and_their_clash_names_both(tmp_path: Path) -> None:
    # only those two fail, when the run reaches them: see test_archive_hostile.py
    path = _config(tmp_path, "archive: {root: out}\ninput: {path: 'scenes/**/*.tif'}\n" + JOB)
    (tmp_path / "scenes" / "sub").mkdir()
    write_raster(tmp_path / "scenes" / "sub" / "a.tif", (16, 16))
    archive = load_archive(path)
    first, second = str(tmp_path / "scenes" / "a.tif"), str(tmp_path / "scenes" / "sub" / "a.tif")
    assert archive.inputs() == [first, second]
    with pytest.raises(ConfigError, match=rf"{first}: has the stem 'a' like {second}, .*fix: rename one"):
        raise archive.stem_clash(first, [second])


def test_outputs_and_truth_files_are_not_inputs(tmp_path: Path) -> None:
    path = _config(tmp_path, "archive: {root: scenes/out}\ninput: {path: 'scenes/**/*.tif'}\n" + JOB
                   + "scoring: {truth: '{stem}_truth.tif'}\n")
    write_truth(tmp_path / "scenes" / "a_truth.tif", (16, 16))
    (tmp_path / "scenes" / "out" / "a").mkdir(parents=True)
    write_raster(tmp_path / "scenes" / "out" / "a" / "a.cog.tif", (16, 16))
    assert load_archive(path).inputs() == [str(tmp_path / "scenes" / "a.tif")]


def test_set_overrides_reach_the_archive_section_and_the_job(tmp_path: Path) -> None:
    path = _config(tmp_path, "archive: {root: out}\ninput: {path: 'scenes/*.tif'}\n" + JOB)
    sets = ["archive.missing_truth=unscored", "tiling.overlap=4", "scoring.truth={stem}.gt"]
    archive = load_archive(path, sets)
    cfg = archive.job_for(str(tmp_path / "scenes" / "a.tif"))
    assert archive.archive.missing_truth == "unscored"
    assert cfg.tiling.overlap == (4, 4)
    assert cfg.output.path == str(tmp_path / "out" / "a" / "a.zarr")
    assert cfg.scoring.truth is None  # scenes/a.gt does not exist: unscored
    assert archive.truth_path(str(tmp_path / "scenes" / "a.tif")) == str(tmp_path / "scenes" / "a.gt")


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        pytest.param("scene.tif", "scene", id="tif"),
        pytest.param("brain.nii.gz", "brain", id="nii.gz"),
        pytest.param("slide.ome.tiff", "slide", id="ome.tiff"),
        pytest.param("vol.zarr/", "vol", id="zarr-dir"),
        pytest.param("a.b.tif", "a.b", id="dots"),
    ],
)
def test_input_stem(name: str, stem: str) -> None:
    assert input_stem(f"/data/{name}") == stem


# ---------------------------------------------------------------------------------------------------
# fingerprint


def test_fingerprint_changes_with_the_tail_and_the_mtime_but_not_with_nothing(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, size=3 << 20, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    first = fingerprint(str(path))
    assert fingerprint(str(path)) == first
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    tail = fingerprint(str(path))
    assert tail != first
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert fingerprint(str(path)) != tail


def test_fingerprint_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fingerprint(str(tmp_path / "nope.tif"))


# ---------------------------------------------------------------------------------------------------
# ledger


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_ledger_claims_once_then_reports_done(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        claim = ledger.claim("fp", "h1", input_path="/a.tif", store_path="/out/a.zarr")
        assert (claim.state, claim.row.attempts, claim.resume) == ("claimed", 1, False)
        done = ledger.finish("fp", "h1", status="done", scores={"fwiou": float("nan"), "miou": 0.5})
        assert done.scores == {"fwiou": None, "miou": 0.5}
        assert ledger.claim("fp", "h1", input_path="/a.tif", store_path="/out/a.zarr").state == "done"
        assert ledger.get("fp", "h1") == done


def test_ledger_retries_a_failure_and_resumes_its_store(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.claim("fp", "h1", input_path="/a.tif", store_path="/out/a.zarr")
        ledger.finish("fp", "h1", status="failed", error="/a.tif: broken")
        retry = ledger.claim("fp", "h1", input_path="/a.tif", store_path="/out/a.zarr")
        assert (retry.state, retry.row.attempts, retry.resume) == ("claimed", 2, True)
        assert retry.row.error == "/a.tif: broken" and retry.row.finished_at is None
        other = ledger.claim("fp", "h2", input_path="/a.tif", store_path="/out/a.zarr")
        assert (other.state, other.resume) == ("claimed", False)  # another config: overwrite the store


def test_ledger_resumes_a_store_with_the_same_pixels_of_the_same_input(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.claim("fp", "h1", input_path="/a.tif", store_path="/out/a.zarr", pixels_hash="p")
        ledger.finish("fp", "h1", status="done")
        # another export or truth: the store is finished again from its blocks
        refinish = ledger.claim("fp", "h2", input_path="/a.tif", store_path="/out/a.zarr", pixels_hash="p")
        assert (refinish.state, refinish.resume, refinish.row.pixels_hash) == ("claimed", True, "p")
        ledger.finish("fp", "h2", status="done")
        changed = ledger.claim("fp2", "h2", input_path="/a.tif", store_path="/out/a.zarr", pixels_hash="p")
        assert (changed.state, changed.resume) == ("claimed", False)  # the input was rewritten: compute anew
        ledger.finish("fp2", "h2", status="done")
        other = ledger.claim("fp2", "h3", input_path="/a.tif", store_path="/out/a.zarr", pixels_hash="q")
        assert (other.state, other.resume) == ("claimed", False)  # other pixels: overwrite


def test_a_ledger_from_before_the_pixels_hash_gains_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.claim("fp", "p-then", input_path="/a.tif", store_path="/out/a.zarr")
        ledger.finish("fp", "p-then", status="done")
    with sqlite3.connect(path) as conn:  # the table as it was: no pixels_hash column
        conn.execute("ALTER TABLE runs DROP COLUMN pixels_hash")
    with Ledger(path) as ledger:
        (row,) = ledger.rows()
        assert (row.config_hash, row.status, row.pixels_hash) == ("p-then", "done", None)
        # its hash identified the store then: a new finishing of the same pixels resumes the store
        claim = ledger.claim("fp", "h2", input_path="/a.tif", store_path="/out/a.zarr", pixels_hash="p-then")
        assert (claim.state, claim.resume) == ("claimed", True)


@pytest.mark.parametrize(
    ("pid", "state"),
    [
        pytest.param(os.getppid(), "busy", id="live-run-elsewhere"),
        pytest.param(dead_pid(), "claimed", id="dead-run-is-stale"),
    ],
)
def test_ledger_leaves_a_live_run_alone_and_takes_over_a_dead_one(
    tmp_path: Path, pid: int, state: str
) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.claim("fp", "h", input_path="/a.tif", store_path="/out/a.zarr")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET pid = ?", (pid,))
    with Ledger(path) as other:
        claim = other.claim("fp", "h", input_path="/a.tif", store_path="/out/a.zarr")
        assert claim.state == state
        assert claim.row.attempts == (2 if state == "claimed" else 1)


def test_ledger_waits_for_another_writer_to_commit(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    timer.start()
    with Ledger(path, busy_timeout_s=10) as ledger:
        assert ledger.claim("fp", "h", input_path="/a.tif", store_path=None).state == "claimed"
    timer.join()
    holder.close()


def test_ledger_gives_up_with_a_clear_error_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with Ledger(path, busy_timeout_s=0.2) as ledger, pytest.raises(
            OutputError, match=r"l\.sqlite: the archive ledger stayed locked.*fix: let the other archive run"
        ):
            ledger.claim("fp", "h", input_path="/a.tif", store_path=None)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_the_example_archive_config_loads_and_comments_every_key() -> None:
    archive = load_archive(REPO / "configs" / "archive.yaml")
    assert archive.root == REPO / "archive-output" / "satellite"
    assert archive.template["model"]["weights"] == str(REPO / "demo-output" / "models" / "satellite-demo.pt")
    assert archive.truth_path("/scenes/x.tif") == "/scenes/x_truth.tif"
    keys = [line for line in (REPO / "configs" / "archive.yaml").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    assert all("#" in line for line in keys), [line for line in keys if "#" not in line]
