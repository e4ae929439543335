"""Archives under hostile conditions (issue 27): stopped runs, --quiet failures, the progress total, shared stems,
huge manifests, damaged ledgers, two configs on one root, inputs rewritten behind the fingerprint's back."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import tiler.archive.ledger as ledger_module
from pipelines.archive import main
from tests.archive.helpers import SHAPE, by_stem, rows, write_config
from tests.engine.helpers import write_raster
from tiler.archive import Ledger, fingerprint, load_archive, run_archive
from tiler.archive.report import ArchiveReport
from tiler.engine.stream import Outcome
from tiler.errors import InputError
from tiler.segment import SegmentJob


def run(folder: Path, *overrides: str, quiet: bool = True) -> ArchiveReport:
    return run_archive(load_archive(folder / "archive.yaml", overrides), engine="local", quiet=quiet)


def latest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "out" / "latest.json").read_text())


def stop_after_claiming(n: int, failed_first: bool = False):  # noqa: ANN201 - a run_many stand-in
    """A run_many that takes ``n`` jobs (their inputs are claimed, and running), then is stopped by Ctrl-C."""

    def stopped(jobs: Iterable[SegmentJob], **_: object) -> Iterator[Outcome]:
        source = iter(jobs)
        taken = [next(source) for _ in range(n)]
        if failed_first:
            yield Outcome(taken[0], error=InputError(f"{taken[0].name}: every pixel is nodata"))
        raise KeyboardInterrupt

    return stopped


# ---------------------------------------------------------------------------------------------------
# 1. interrupted is not failed


def test_a_stopped_run_reports_its_unfinished_inputs_as_interrupted_not_failed(
    archive_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tiler.archive.run.run_many", stop_after_claiming(2, failed_first=True))
    with pytest.raises(KeyboardInterrupt):
        run(archive_dir)

    report = latest(archive_dir)
    assert report["counts"] == {"done": 0, "skipped": 0, "failed": 1, "interrupted": 2, "total": 3}
    assert report["exit_code"] == 1
    items = {Path(i["input"]).stem: i for i in report["items"]}
    assert {s: i["status"] for s, i in items.items()} == {"a": "failed", "b": "interrupted", "c": "interrupted"}
    assert "every pixel is nodata" in items["a"]["error"]
    assert items["b"]["reason"] == "interrupted (KeyboardInterrupt) while running; rerun to resume"
    assert items["c"]["reason"] == "not started: the run interrupted (KeyboardInterrupt)"
    assert items["b"]["error"] is None and items["c"]["error"] is None
    markdown = (archive_dir / "out" / "latest.md").read_text()
    assert "**0 done, 0 skipped, 1 failed, 2 interrupted** of 3 inputs." in markdown
    failed, interrupted = markdown.split("## Failed")[1].split("## Interrupted")
    assert "a.tif" in failed and "b.tif" not in failed and "c.tif" not in failed
    assert "b.tif" in interrupted and "c.tif" in interrupted
    table = by_stem(rows(archive_dir / "out"))
    assert sorted(table) == ["a", "b"]  # c was never claimed
    assert table["b"]["status"] == "failed" and "interrupted" in str(table["b"]["error"])  # claimed again next run


# ---------------------------------------------------------------------------------------------------
# 2. --quiet still prints failures


def test_quiet_prints_one_line_per_failed_input_and_exits_non_zero(
    archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (archive_dir / "scenes" / "c.tif").unlink()
    for stem in ("a", "b"):  # scoring.truth is required: both fail (quickly, before any block)
        (archive_dir / "scenes" / f"{stem}_truth.tif").unlink()
    write_config(archive_dir, missing_truth="fail")

    code = main([str(archive_dir / "archive.yaml"), "--engine", "local", "--quiet"])

    err = capsys.readouterr().err
    errors = [item["error"] for item in latest(archive_dir)["items"]]
    assert code == 1
    assert err.splitlines() == [f"tiler archive: failed: {error}" for error in errors]
    for stem in ("a", "b"):
        assert f"{archive_dir / 'scenes' / stem}.tif: its truth file" in err


# ---------------------------------------------------------------------------------------------------
# 3. the progress bar counts inputs


def test_the_progress_bar_total_is_every_input_from_the_start(
    archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (archive_dir / "scenes" / "c.tif").unlink()  # a and b: 4 blocks each, planned one after the other
    run(archive_dir, quiet=False)

    err = capsys.readouterr().err
    bars = re.findall(r"(\w+): +\d+%\|[^|]*\| *(\d+)/(\d+) \[", err)
    assert bars, err
    assert {(desc, total) for desc, _, total in bars} == {("inputs", "2")}  # 2 from the first draw to the last
    assert bars[0][1] == "0" and bars[-1][1] == "2"


# ---------------------------------------------------------------------------------------------------
# 4. inputs sharing a stem fail alone


def test_inputs_sharing_a_stem_fail_alone_naming_both_and_the_others_run(archive_dir: Path) -> None:
    (archive_dir / "scenes" / "c.tif").unlink()
    (archive_dir / "scenes" / "sub").mkdir()
    write_raster(archive_dir / "scenes" / "sub" / "a.tif", SHAPE, 3, 5)
    config = yaml.safe_load((archive_dir / "archive.yaml").read_text())
    config["input"]["path"] = "scenes/**/*.tif"
    (archive_dir / "archive.yaml").write_text(yaml.safe_dump(config))

    report = run(archive_dir)

    first, second = str(archive_dir / "scenes" / "a.tif"), str(archive_dir / "scenes" / "sub" / "a.tif")
    items = {item.input: item for item in report.items}
    assert report.counts == {"done": 1, "skipped": 0, "failed": 2, "total": 3}
    assert items[str(archive_dir / "scenes" / "b.tif")].status == "done"
    for path, other in ((first, second), (second, first)):
        error = str(items[path].error)
        assert items[path].status == "failed" and "\n" not in error
        assert error.startswith(f"{path}: has the stem 'a' like {other}, so both would write ")
        assert "fix: rename one of the files" in error
    assert not (archive_dir / "out" / "a").exists()  # neither wrote the shared store


# ---------------------------------------------------------------------------------------------------
# 5. manifests: linear de-duplication, first mention wins


def manifest_archive(folder: Path, lines: Iterable[str]) -> Path:
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    config = {"archive": {"root": "out", "manifest": "list.txt"}, "model": {"weights": "m.pt"}}
    (folder / "archive.yaml").write_text(yaml.safe_dump(config))
    return folder / "archive.yaml"


def test_a_100000_line_manifest_lists_each_path_once_in_first_mention_order(tmp_path: Path) -> None:
    # 100,000 lines, 60,000 paths (none exists: listing does not open them), three spellings of each repeat.
    # Timing (2 shared cores): about 1 s; the list membership test it replaced took over a minute (6 s at 10,000).
    spellings = ("scenes/s{}.tif", "./scenes/x/../s{}.tif", str(tmp_path / "scenes" / "s{}.tif"))
    lines = ["# nightly"] + [spellings[i % 3].format(i % 60_000) for i in range(100_000)] + ["", "  "]

    inputs = load_archive(manifest_archive(tmp_path, lines)).inputs()

    assert inputs == [str(tmp_path / "scenes" / f"s{i}.tif") for i in range(60_000)]


class CountingPath(str):
    """A path that counts the comparisons made with it (one equality test per call)."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingPath.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_manifest_deduplication_compares_each_line_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3000  # distinct paths; a list membership test makes n²/2 = 4.5 million comparisons here
    lines = [f"scenes/s{i}.tif" for i in range(n)] + [f"scenes/s{i}.tif" for i in range(0, n, 3)]
    archive = load_archive(manifest_archive(tmp_path, lines))
    normpath = os.path.normpath
    monkeypatch.setattr(os.path, "normpath", lambda path: CountingPath(normpath(path)))
    CountingPath.comparisons = 0

    inputs = archive.inputs()

    assert len(inputs) == n
    assert CountingPath.comparisons <= 2 * len(lines)  # a set or dict: about one per repeated line


# ---------------------------------------------------------------------------------------------------
# 6. a damaged ledger: one line, the file, the fix; nothing changed


def snapshot(path: Path) -> dict[str, str]:
    """Every file and folder at or under ``path``, with each file's sha256."""
    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"

    return {str(p.relative_to(path)): digest(p) for p in (path, *(path.rglob("*") if path.is_dir() else ()))}


def small_archive(folder: Path) -> Path:
    (folder / "scenes").mkdir()
    write_raster(folder / "scenes" / "a.tif", (16, 16))
    (folder / "archive.yaml").write_text(
        "archive: {root: out}\ninput: {path: 'scenes/*.tif'}\nmodel: {weights: m.pt}\n"
    )
    return folder / "archive.yaml"


def a_done_ledger(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Ledger(path) as ledger:
        ledger.claim("fp", "h", input_path="/a.tif", store_path="/out/a/a.zarr")
        ledger.finish("fp", "h", status="done", scores={"fwiou": 0.5})


def sql(path: Path, *statements: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def other_tool(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sql(path, "CREATE TABLE jobs (id INTEGER, name TEXT)", "INSERT INTO jobs VALUES (1, 'x')")


def other_tools_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sql(path, "CREATE TABLE runs (id INTEGER, name TEXT)", "INSERT INTO runs VALUES (1, 'x')")


def invalid_json(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_done_ledger(path)
    sql(path, "UPDATE runs SET scores = '{\"fwiou\": 0.5'")


def json_not_an_object(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_done_ledger(path)
    sql(path, "UPDATE runs SET outputs = '[1, 2]'")


def not_sqlite(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("run,status\na.tif,done\n" * 100)


def read_only_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_done_ledger(path)  # tests run as root, which chmod does not stop: SQLite opens the file read-only instead
    connect = sqlite3.connect
    monkeypatch.setattr(
        ledger_module.sqlite3, "connect", lambda file, **kw: connect(f"file:{file}?mode=ro", uri=True, **kw)
    )


def journal_blocked(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_done_ledger(path)  # SQLite cannot write its journal beside the ledger, as in a read-only root
    Path(f"{path}-journal").mkdir()


def root_is_a_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.parent.write_text("not a folder\n")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        pytest.param(other_tool, r"is not an archive ledger: it holds the table\(s\) jobs", id="other-tools-db"),
        pytest.param(other_tools_runs, r"its runs table lacks the column\(s\) fingerprint", id="other-runs-table"),
        pytest.param(invalid_json, r"the scores of row 1 \(input /a\.tif\) is not a JSON object", id="bad-json"),
        pytest.param(json_not_an_object, r"the outputs of row 1 .* is not a JSON object", id="json-list"),
        pytest.param(not_sqlite, r"is not an SQLite database", id="not-sqlite"),
        pytest.param(read_only_file, r"cannot be written \(attempt to write a readonly database\)", id="read-only"),
        pytest.param(journal_blocked, r"cannot be read or written \(disk I/O error\)", id="journal-blocked"),
        pytest.param(root_is_a_file, r"archive\.root .*out is a file", id="root-is-a-file"),
    ],
)
def test_a_damaged_ledger_is_refused_in_one_line_naming_it_and_the_fix_and_left_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], damage, problem: str  # type: ignore[no-untyped-def]
) -> None:
    config = small_archive(tmp_path)
    ledger = tmp_path / "out" / "ledger.sqlite"
    damage(ledger, monkeypatch)
    before = snapshot(tmp_path)

    code = main([str(config), "--engine", "local"])

    err = capsys.readouterr().err
    assert code != 0
    (line,) = err.splitlines()
    assert re.fullmatch(rf"tiler archive: error: OutputError: {re.escape(str(ledger))}: .*{problem}.*; fix: .+", line)
    assert snapshot(tmp_path) == before  # the ledger's bytes, and no file added (no report, no journal left)


# ---------------------------------------------------------------------------------------------------
# 7. two archive configs on one root


def test_two_configs_sharing_a_root_replace_each_others_stores_without_failing_and_name_the_fix(
    archive_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("b.tif", "b_truth.tif", "c.tif"):
        (archive_dir / "scenes" / name).unlink()
    other = "tiling.overlap=4"  # config B: the same inputs and root, other pixels
    assert run(archive_dir).counts["done"] == 1  # A
    with monkeypatch.context() as patch:  # B is stopped after claiming a, before it touched the store
        patch.setattr("tiler.archive.run.run_many", stop_after_claiming(1))
        with pytest.raises(KeyboardInterrupt):
            run(archive_dir, other)
    assert run(archive_dir).counts["skipped"] == 1  # A: the store is still A's
    capsys.readouterr()

    b = run(archive_dir, other, quiet=False)  # B again: its last attempt never wrote the store, A's pixels are there

    assert (b.counts["done"], b.counts["failed"]) == (1, 0), b.items[0].error
    err = capsys.readouterr().err
    assert "held the result of config" in err and "give each config its own archive.root" in err
    a = run(archive_dir)  # and back: A replaces B's store, then skips it
    assert (a.counts["done"], a.counts["failed"]) == (1, 0), a.items[0].error
    assert run(archive_dir).counts["skipped"] == 1
    assert all("--overwrite" not in str(row["error"]) for row in rows(archive_dir / "out").values())


# ---------------------------------------------------------------------------------------------------
# 8. an input rewritten with its size and mtime restored


def test_an_input_rewritten_in_the_middle_with_size_and_mtime_restored_gets_a_new_fingerprint(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, size=3 << 20, dtype=np.uint8).tobytes()
    scene, edited = tmp_path / "scene.tif", tmp_path / "edited.tif"
    scene.write_bytes(data)
    middle = len(data) // 2
    edited.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:])
    stat = scene.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = fingerprint(str(scene))

    shutil.copy2(edited, scene)  # cp -p: same size, the mtime restored

    assert scene.stat().st_mtime_ns == stat.st_mtime_ns and scene.stat().st_size == stat.st_size
    assert fingerprint(str(scene)) != before
