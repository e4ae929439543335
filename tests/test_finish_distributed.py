"""Finishing runs in worker processes, never the driver: exports, scores and reports, and where the time went."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.jobs import Finished, Scene, finish, write_config, write_scene
from tiler.config import load_config
from tiler.io.store import OutputStore
from tiler.job.finish import FINISH_MODULES
from tiler.segment import run_segment

REPO = Path(__file__).resolve().parents[1]
EXPORTS = "output.exports=[cog,geojson,quicklook]"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """The module's inputs (:func:`tests.jobs.write_scene`), written once; tests only read them."""
    return write_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, scene: Scene) -> Finished:
    """One finished job for the tests that only read it; a test that changes or reruns it copies it first."""
    return finish(tmp_path_factory.mktemp("finished"), scene, [EXPORTS])


def _writers(store: str) -> dict[str, int]:
    """Export record name → the pid that recorded it."""
    return {name: int(rec["pid"]) for name, rec in OutputStore.open(store, mode="r").export_records().items()}


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_the_driver_writes_no_export_score_or_report(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest, scene: Scene
) -> None:
    if engine == "ray":
        request.getfixturevalue("ray_session")
        cfg = load_config(write_config(tmp_path, inputs=scene), [EXPORTS])
        result = run_segment(cfg, engine=engine, quiet=True)
    else:  # the module's job: this config, run on the in-process engine
        result = request.getfixturevalue("finished").result
    writers = _writers(result.store)
    assert set(writers) >= {"cog", "cog_aux", "geojson", "quicklook", "scores_json", "report_json", "report_md"}
    assert os.getpid() not in writers.values(), f"the driver ({os.getpid()}) wrote {writers}"
    steps = result.summary["finishing"]
    assert set(steps) == {"cog", "geojson", "quicklook", "score", "report", "polygons"}
    assert steps["polygons"]["bands"] >= 2  # the polygons are drawn band by band, each band a step of its own
    assert all(not s["worker"].startswith(f"{os.getpid()}@") for s in steps.values())
    assert zarr.open_group(result.store, mode="r").attrs["complete"] is True


def test_the_report_says_where_the_time_went(
    tmp_path: Path, scene: Scene, finished: Finished, copy_finished_job: Callable[[Path, Path], Path]
) -> None:
    result = finished.result  # this config, run on the in-process engine
    report = json.loads(Path(result.outputs["report_json"]).read_text())
    s = report["summary"]
    assert set(s["stages"]) == {"read", "assemble", "infer", "stitch", "write"}
    assert s["stages"]["infer"] > 0 and s["stages"]["read"] > 0
    assert 0 <= s["model_idle_share"] <= 1 and s["mpx_per_second"] > 0
    assert s["finishing"]["cog"]["seconds"] > 0 and not s["finishing"]["cog"]["reused"]
    # the report's time is the blocks' and the finishing's together
    assert s["seconds"] == pytest.approx(s["blocks_seconds"] + s["finish_seconds"], abs=2e-3)
    assert s["finish_seconds"] >= max(v["seconds"] for v in s["finishing"].values() if v is not None) - 1e-3
    markdown = Path(result.outputs["report_md"]).read_text()
    assert "## Where the time went" in markdown and "| cog |" in markdown and "model idle share" in markdown
    # finished again with the same exports: nothing is drawn twice, and the report says the files were kept
    copy_finished_job(finished.root, tmp_path)
    again = run_segment(load_config(write_config(tmp_path, inputs=scene), [EXPORTS, "scoring.boundary_width=3"]),
                        engine="local", quiet=True)
    assert again.summary["blocks_run"] == 0 and again.summary["finishing"]["cog"]["reused"] is True


def test_a_failing_export_fails_the_input_with_its_own_error_and_leaves_it_incomplete(
    tmp_path: Path, scene: Scene
) -> None:
    from tiler.errors import OutputError

    cfg = load_config(write_config(tmp_path, inputs=scene),
                      ["output.exports=[cog,geojson]", "output.polygon_classes=[nope]"])
    with pytest.raises(OutputError, match=r"polygon_classes names \['nope'\]"):
        run_segment(cfg, engine="local", quiet=True)
    assert zarr.open_group(cfg.output.path, mode="r").attrs.get("complete") is not True
    assert not Path(cfg.output.path).with_suffix(".report.json").exists()


def _die() -> None:
    os.kill(os.getpid(), 9)


def _pid() -> int:
    return os.getpid()


def test_a_killed_finishing_process_fails_its_step_by_name_and_the_next_step_gets_a_new_pool() -> None:
    from tiler.engine.finishing import ProcessFinisher
    from tiler.errors import EngineError

    finisher = ProcessFinisher(1, FINISH_MODULES)  # the engine's preload: the fork server is one per process
    try:
        with pytest.raises(EngineError, match="finishing worker process died.*rerun to finish"):
            finisher.submit(_die).result(timeout=60)
        assert finisher.submit(_pid).result(timeout=60) not in (os.getpid(), None)
    finally:
        finisher.close()


def _not_imported(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name not in sys.modules]


def test_a_finishing_process_starts_with_every_module_its_steps_import() -> None:
    """The fork server imports the steps' modules once; before this, each finishing process imported them again."""
    from tiler.engine.finishing import ProcessFinisher

    finisher = ProcessFinisher(1, FINISH_MODULES)
    try:  # the first thing this process runs: what it has, it had when it was forked
        assert finisher.submit(_not_imported, FINISH_MODULES).result(timeout=120) == []
    finally:
        finisher.close()


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    import psutil

    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return out


SLOW_FINISH = textwrap.dedent(
    """
    import os, time
    if os.environ.get("TILER_TEST_SLOW_FINISH"):
        from tiler.io.store import OutputStore

        _record = OutputStore.record_export

        def record_export(self, name, path, *args, **kwargs):
            if name == "cog":
                open(os.environ["TILER_TEST_SLOW_FINISH"], "w").close()
                time.sleep(120)
            return _record(self, name, path, *args, **kwargs)

        OutputStore.record_export = record_export
    """
)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_driver_killed_while_finishing_is_resumed_by_its_rerun_with_no_block_recomputed(
    tmp_path: Path, engine: str, scene: Scene
) -> None:
    import signal
    import time

    config = write_config(tmp_path, inputs=scene)
    (tmp_path / "fault").mkdir()
    (tmp_path / "fault" / "sitecustomize.py").write_text(SLOW_FINISH)
    marker = tmp_path / "finishing"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "fault"), str(REPO)])
    command = [sys.executable, "-m", "tiler.cli", "--quiet", "run", str(config), "--engine", engine]
    driver = subprocess.Popen(command, cwd=REPO, env={**env, "TILER_TEST_SLOW_FINISH": str(marker)},
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), driver.stderr.read().decode()[-2000:] if driver.stderr else ""
        os.kill(driver.pid, signal.SIGKILL)  # the driver, while a worker is finishing its input
        driver.wait(timeout=60)
        if engine == "local":  # its finishing processes and their fork server do not live on as orphans
            left = _group(driver.pid)
            for _ in range(100):
                if not left:
                    break
                time.sleep(0.1)
                left = _group(driver.pid)
            assert not left, f"processes left behind by the killed driver: {left}"
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # the finishing workers it leaves behind
        except ProcessLookupError:
            pass
    blocks = {p.name: p.read_bytes() for p in (Path(tmp_path / "out.zarr") / ".tiler" / "blocks").glob("*.json")}
    assert blocks and zarr.open_group(tmp_path / "out.zarr", mode="r").attrs.get("complete") is not True

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert zarr.open_group(tmp_path / "out.zarr", mode="r").attrs["complete"] is True
    after = {p.name: p.read_bytes() for p in (Path(tmp_path / "out.zarr") / ".tiler" / "blocks").glob("*.json")}
    assert after == blocks  # no block recomputed
    assert (tmp_path / "out.cog.tif").is_file() and (tmp_path / "out.report.json").is_file()


def test_verify_names_an_export_the_last_finishing_asked_for_but_never_recorded(  # type: ignore[no-untyped-def]
    tmp_path: Path, capsys, finished: Finished, copy_finished_job: Callable[[Path, Path], Path]
) -> None:
    from tiler.cli import main

    store = str(copy_finished_job(finished.root, tmp_path) / "out.zarr")  # a finished job with a COG, copied
    assert main(["verify", store]) == 0
    (Path(store) / ".tiler" / "exports" / "cog_aux.json").unlink()  # the sidecar's record lost
    assert main(["verify", store]) == 1
    out = capsys.readouterr().out
    assert "missing-export" in out and "out.cog.tif.aux.xml" in out and "cog_aux has no record" in out


def test_a_map_with_overviews_gets_them_drawn_in_bands_by_workers_and_its_cog_and_quicklook_use_them(
    tmp_path: Path,
) -> None:
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    from tests.engine.helpers import write_job
    from tiler.io.overviews import mode_2x

    config = write_job(tmp_path, shape=(700, 620), block=128,
                       output={"path": str(tmp_path / "out.zarr"), "chunks": 64, "exports": ["cog", "quicklook"]})
    result = run_segment(load_config(config), engine="local", quiet=True)
    steps = result.summary["finishing"]
    assert steps["overviews"]["bands"] >= 2 and not steps["cog"]["reused"]
    labels = zarr.open_group(result.store, mode="r")["labels"][...]
    with rasterio.open(result.outputs["cog"], overview_level=0) as level1:
        assert np.array_equal(level1.read(1), mode_2x(labels, nodata=255))  # the stored mode level, exactly
    assert cog_validate(result.outputs["cog"])[0]
    assert not list((Path(result.store) / ".tiler").glob("overviews-*"))  # the bands are gone once drawn in
