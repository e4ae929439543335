"""The segment job end to end: config → Ray → store → exports → score → report, the CLI, and ray job submit."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
import zarr

from tests.engine.helpers import write_model
from tests.jobs import Finished, Scene, finish, write_config, write_scene
from tests.shared_data import SHARED_DATA
from tiler.cli import main as cli_main
from tiler.config import load_config
from tiler.errors import ConfigError, InputError
from tiler.segment import run_segment

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """The module's inputs, written once; tests only read them (each writes its outputs into its own folder)."""
    return write_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, scene: Scene) -> Finished:
    """One finished job for the tests that only read it; a test that changes or reruns it copies it first."""
    return finish(tmp_path_factory.mktemp("finished"), scene)


CopyJob = Callable[[Path, Path], Path]


def test_segment_writes_store_exports_scores_and_report(finished: Finished) -> None:
    cfg, result = finished.cfg, finished.result
    group = zarr.open_group(result.store, mode="r")
    assert group.attrs["complete"] is True
    with rasterio.open(result.outputs["cog"]) as cog, rasterio.open(cfg.input.path) as src:
        assert cog.crs == src.crs and cog.transform == src.transform and cog.nodata == 255
        assert np.array_equal(cog.read(1), group["labels"][...])
    assert result.scores is not None
    assert set(result.scores) >= {"fwiou", "miou", "per_class_iou", "confusion_matrix", "boundary_iou"}
    # the per-block matrices summed during inference give the same headline as the second pass
    assert result.scores["engine_fwiou"] == pytest.approx(result.scores["fwiou"], abs=1e-12)
    report = json.loads(Path(result.outputs["report_json"]).read_text())
    assert report["summary"]["tiles_skipped"] > 0 and report["scores"]["fwiou"] == result.scores["fwiou"]
    assert Path(result.outputs["report_md"]).read_text().startswith("# tiler report")
    assert Path(result.outputs["quicklook"]).stat().st_size > 0


def test_small_class_count_with_a_large_nodata_label_writes_uint16_labels(tmp_path: Path, scene: Scene) -> None:
    data = {
        "input": {"path": str(scene.image)},
        "model": {"weights": str(write_model(tmp_path / "model.pt", classes=3)), "batch_size": 4, "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "output": {"path": str(tmp_path / "out.zarr"), "chunks": [32, 32], "nodata_label": 1000,
                   "exports": ["cog", "quicklook"]},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    result = run_segment(load_config(tmp_path / "job.yaml"), engine="local", quiet=True)
    labels = zarr.open_group(result.store, mode="r")["labels"]
    assert labels.dtype == np.uint16 and labels.fill_value == 1000
    values = np.unique(labels[...])
    assert values[-1] == 1000 and set(values[:-1].tolist()) <= {0, 1, 2}  # the nodata corner, then classes
    with rasterio.open(result.outputs["cog"]) as cog:
        assert cog.dtypes[0] == "uint16" and cog.nodata == 1000
        assert np.array_equal(cog.read(1), labels[...])


def test_block_records_on_disk_keep_their_keys_and_read_back_typed(finished: Finished) -> None:
    from tiler.engine.plan import BlockRecord

    result = finished.result
    files = sorted((Path(result.store) / ".tiler" / "blocks").glob("*.json"))
    assert len(files) == result.summary["blocks_total"] == 12
    on_disk = json.loads(files[0].read_text())
    assert list(on_disk) == [
        "key", "block", "started_at", "finished_at", "start", "stop", "tiles_run", "tiles_skipped", "read_seconds",
        "infer_seconds", "stitch_seconds", "write_seconds", "assemble_seconds", "idle_seconds", "wait_seconds", "pid",
        "class_counts", "confusion", "scored_against", "chunks", "labels_digest", "chunk_digests",
    ]
    record = BlockRecord.from_json(on_disk)
    store_keys = ("key", "chunks", "labels_digest", "chunk_digests")  # what the store adds to the engine's record
    assert record.to_json() == {k: v for k, v in on_disk.items() if k not in store_keys}
    assert record.block == on_disk["key"] == files[0].stem and record.window.stop == tuple(on_disk["stop"])


def test_cli_run_succeeds_then_resumes_and_refuses_another_config(tmp_path: Path, capsys, scene: Scene) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, inputs=scene)
    assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) == 0
    assert cli_main(["--json-logs", "run", str(config), "--engine", "local"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["summary"]["blocks_resumed"] == done["summary"]["blocks_total"]
    code = cli_main(["--quiet", "run", str(config), "--engine", "local", "--set", "tiling.overlap=[4,4]"])
    err = capsys.readouterr().err
    assert code == 1 and "overwrite" in err and str(tmp_path / "out.zarr") in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param("tiling.overlap=[32,32]", "tiling.overlap", id="overlap>=tile"),
        pytest.param("input.path=/nonexistent/scene.tif", "/nonexistent/scene.tif", id="missing-input"),
        pytest.param("input.bands=[1,2]", "expects 3", id="band-count"),
        pytest.param(
            "input.path=" + str(SHARED_DATA / "all-nodata.tif"), "nodata", id="all-nodata"
        ),
    ],
)
def test_cli_bad_input_exits_2_with_the_cause(  # type: ignore[no-untyped-def]
    tmp_path: Path, capsys, scene: Scene, override: str, message: str
) -> None:
    config = write_config(tmp_path, inputs=scene)
    code = cli_main(["--quiet", "run", str(config), "--engine", "local", "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert not (tmp_path / "out.zarr").exists() or not zarr.open_group(str(tmp_path / "out.zarr")).attrs.get("complete")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ray_job_submit_runs_the_segment_pipeline(tmp_path: Path, scene: Scene) -> None:
    config = write_config(tmp_path, inputs=scene)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(VENV_BIN / "ray")
    port, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"ray-submit-{os.getpid()}"
    start = [
        ray_bin,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--num-cpus=1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
        "--include-dashboard=true",
        # its own ports, so it never collides with the test session's Ray on the defaults (agent 52365...)
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
    ]
    head = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        submit = [
            ray_bin,
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash}",
            "--working-dir",
            str(REPO),
            "--",
            "python",
            "-m",
            "pipelines.segment",
            str(config),
            "--quiet",
        ]
        deadline = time.time() + 120
        while True:  # the dashboard's job API comes up a few seconds after the head
            run = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            text = (run.stdout + run.stderr).lower()
            not_up_yet = "connect" in text or "try again later" in text
            if run.returncode == 0 or time.time() > deadline or not not_up_yet:
                break
            time.sleep(2)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "succeeded" in (run.stdout + run.stderr).lower()
        # a client without the token is told so in one line (not 40 warnings while ray.init retries)
        unauthenticated = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        refused = subprocess.run(
            [str(VENV_BIN / "tiler"), "--quiet", "run", str(config), "--set", f"engine.address=127.0.0.1:{port}",
             "--set", f"output.path={tmp_path / 'refused.zarr'}"],
            env=unauthenticated, capture_output=True, text=True, timeout=120,
        )
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode != 0 and len(lines) == 1, refused.stderr[-3000:]
        assert "RAY_AUTH_MODE to token" in lines[0] and "***" not in lines[0]
    finally:
        head.terminate()  # stops only this head (never `ray stop`, which would kill the test session's Ray)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp, ignore_errors=True)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert group.attrs["complete"] is True
    scores = json.loads((tmp_path / "out.scores.json").read_text())
    assert scores["engine_fwiou"] == pytest.approx(scores["fwiou"], abs=1e-12)  # the job's two scorings agree


def test_inspect_describes_the_input_and_the_plan(tmp_path: Path, capsys, scene: Scene) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, inputs=scene)
    image = scene.image
    assert cli_main(["--json-logs", "inspect", str(image), "--config", str(config)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [200, 168] and info["channels"] == 3 and info["crs"].startswith("WGS 84")
    assert info["nodata share"] == "11.0%"  # the corner: (200 // 3) * (168 // 3) = 3696 of 33600 pixels
    assert info["tiles"].startswith("56 (8 x 7)")  # ceil((200 - 32) / 24) + 1 = 8 rows, ceil(136 / 24) + 1 = 7 cols
    assert info["tiles skipped (mask)"] == 4
    assert info["memory per actor (est.)"].endswith("MiB")


def test_inspect_describes_the_image_when_the_checkpoint_is_missing(tmp_path: Path, capsys, scene: Scene) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, inputs=replace(scene, model=tmp_path / "model.pt"))  # no file there
    assert not (tmp_path / "model.pt").exists()
    assert cli_main(["--json-logs", "inspect", str(scene.image), "--config", str(config)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [200, 168] and info["tiles"].startswith("56 (8 x 7)")
    assert info["tiles skipped (mask)"] == 4
    for key in ("classes", "memory per actor (est.)"):
        assert info[key].startswith("needs the model, which cannot be loaded") and "model.pt" in info[key]


def test_inspect_plans_the_slide_level_the_job_reads_not_level_0(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tiler.geometry import TileGrid
    from tiler.io.scenes_files import write_slide
    from tiler.scenes import slide_scene

    slide = tmp_path / "slide.ome.tif"
    write_slide(slide_scene((640, 576), seed=3, mpp=0.25), slide, tmp_path / "truth.ome.tif", levels=3)
    config = Path(__file__).parents[1] / "configs" / "slide.yaml"  # mpp: 0.5, the README's slide job
    assert cli_main(["--json-logs", "inspect", str(slide), "--config", str(config)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [640, 576]  # the file's level 0 ...
    assert info["job reads"].startswith("(320, 288) x 3 channel(s) at 0.5 mpp")  # ... and the level the job reads
    grid = TileGrid((320, 288), (256, 256), (32, 32))
    assert info["tiles"].startswith(f"{len(grid)} ({' x '.join(map(str, grid.counts))})")


def test_a_first_run_names_every_missing_file_with_its_key_and_the_fix(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, inputs=Scene(tmp_path / "image.tif", tmp_path / "model.pt", tmp_path / "truth.tif"))
    for name in ("image.tif", "model.pt", "truth.tif"):
        assert not (tmp_path / name).exists()
    assert cli_main(["run", str(config), "--engine", "local"]) == 2
    err = capsys.readouterr().err
    assert f"3 files named in {config} do not exist:" in err
    for key, name in (("input.path", "image.tif"), ("model.weights", "model.pt"), ("scoring.truth", "truth.tif")):
        assert f"  {key}: {tmp_path / name}\n" in err
    assert "--set input.path=... --set model.weights=... --set scoring.truth=..." in err and "make demo" in err
    assert not (tmp_path / "out.zarr").exists()


def test_every_shipped_config_that_names_missing_files_says_how_to_fix_it(capsys) -> None:  # type: ignore[no-untyped-def]
    from tiler.config import missing_files

    for config in sorted((REPO / "configs").glob("*.yaml")):
        if config.name in ("archive.yaml", "example.yaml"):
            continue
        missing = missing_files(load_config(config))
        if not missing:
            continue
        assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) == 2
        err = capsys.readouterr().err
        assert "make demo" in err and all(f"  {key}: {path}\n" in err for key, path in missing), err


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        pytest.param("input.mask=tissue", "mask 'tissue' is a slide's tissue mask", id="tissue-on-a-raster"),
        pytest.param("input.mask=threshold", "threshold=-5.0 is a volume's", id="threshold-on-a-raster"),
    ],
)
def test_a_mask_kind_of_another_format_is_refused(  # type: ignore[no-untyped-def]
    tmp_path: Path, capsys, scene: Scene, override: str, fragment: str
) -> None:
    config = write_config(tmp_path, inputs=scene)
    argv = ["--quiet", "run", str(config), "--engine", "local", "--set", override]
    if "threshold" in override:
        argv += ["--set", "input.threshold=-5"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "input.mask / input.threshold" in err and fragment in err and "fix: set input.mask to auto" in err


def test_the_raster_mask_by_its_name_runs_like_auto(tmp_path: Path, scene: Scene) -> None:
    named = run_segment(load_config(write_config(tmp_path, inputs=scene), ["input.mask=nodata"]), engine="local",
                        quiet=True)
    assert named.summary["tiles_skipped"] > 0  # the nodata corner's tiles


def test_scoring_num_classes_is_the_k_of_the_scores(tmp_path: Path, scene: Scene) -> None:
    config = write_config(tmp_path, inputs=scene, scoring={"truth": str(tmp_path / "truth5.tif"), "boundary_width": 2})
    with rasterio.open(scene.image) as src:
        data, profile = src.read(1), src.profile | {"count": 1, "nodata": 255}
    truth = np.minimum(data // 50, 4).astype(np.uint8)  # classes 0..4: one more than the model's 4
    truth[data == 0] = 255
    with rasterio.open(tmp_path / "truth5.tif", "w", **profile) as dst:
        dst.write(truth, 1)
    with pytest.raises(InputError) as caught:
        run_segment(load_config(config), engine="local", quiet=True)
    message = str(caught.value)
    assert "\n" not in message
    named = r"scoring\.truth \S*truth5\.tif holds label value\(s\) \[4\] outside \[0, num_classes=4\)"
    assert re.search(named, message), message
    assert "fix: set scoring.num_classes to 5" in message and "scoring.ignore_index" in message
    result = run_segment(load_config(config, ["scoring.num_classes=5"]), engine="local", quiet=True, overwrite=True)
    assert result.scores is not None and result.scores["num_classes"] == 5
    assert np.asarray(result.scores["confusion_matrix"]).shape == (5, 6)  # K columns and "no prediction"
    assert result.scores["engine_fwiou"] == pytest.approx(result.scores["fwiou"], abs=1e-12)
    with pytest.raises(ConfigError, match=r"scoring\.num_classes=3 but the model .* predicts 4 classes"):
        run_segment(load_config(config, ["scoring.num_classes=3"]), engine="local", quiet=True, overwrite=True)


@pytest.mark.parametrize(
    ("truth_nodata", "nodata_stripe"),
    [
        pytest.param(None, False, id="truth-labelled-under-the-input-nodata"),
        pytest.param(9, True, id="truth-nodata-that-is-not-ignore-index"),
    ],
)
def test_the_engine_score_and_the_file_score_follow_one_rule(
    tmp_path: Path, scene: Scene, truth_nodata: int | None, nodata_stripe: bool
) -> None:
    # the scene's top-left third is nodata; the truth gives those pixels classes all the same
    config = write_config(tmp_path, inputs=scene,
                          scoring={"truth": str(tmp_path / "full_truth.tif"), "boundary_width": 2})
    with rasterio.open(scene.image) as src:
        data, profile = src.read(1), src.profile | {"count": 1, "nodata": truth_nodata}
    assert (data == 0).mean() > 0.1
    truth = np.minimum(data // 64, 3).astype(np.uint8)
    truth[data == 0] = 1
    if nodata_stripe:
        truth[:, 100:110] = 9  # the truth's own nodata, inside and outside the input's nodata
    with rasterio.open(tmp_path / "full_truth.tif", "w", **profile) as dst:
        dst.write(truth, 1)
    result = run_segment(load_config(config), engine="local", quiet=True)
    assert result.scores is not None
    assert result.scores["engine_fwiou"] == pytest.approx(result.scores["fwiou"], abs=1e-12)


def test_the_quicklook_is_written_only_when_asked_for_and_the_report_always(tmp_path: Path, scene: Scene) -> None:
    config = write_config(tmp_path, inputs=scene)
    result = run_segment(load_config(config, ["output.exports=[cog]"]), engine="local", quiet=True)
    assert "quicklook" not in result.outputs and not (tmp_path / "out.quicklook.png").exists()
    assert Path(result.outputs["report_json"]).is_file() and Path(result.outputs["report_md"]).is_file()
    with pytest.raises(ConfigError, match=r"output\.exports\[1\]: must be one of"):
        load_config(config, ["output.exports=[cog, report]"])


def _block_files(store: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (store / ".tiler" / "blocks").glob("*.json")}


def test_a_new_export_or_truth_refinishes_a_finished_store_without_recomputing_a_block(
    tmp_path: Path, scene: Scene
) -> None:
    """Same pixels, other finishing: no block runs, the new export and scores appear, the store ends complete."""
    from tiler.config import config_hash

    path = write_config(tmp_path, inputs=scene)
    data = yaml.safe_load(path.read_text())
    truth = data.pop("scoring")["truth"]
    data["output"]["exports"] = []
    path.write_text(yaml.safe_dump(data))
    first = run_segment(load_config(path), engine="local", quiet=True)
    store = Path(first.store)
    before = _block_files(store)
    assert first.scores is None and "cog" not in first.outputs

    data["output"]["exports"] = ["cog"]
    data["scoring"] = {"truth": truth}
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    second = run_segment(cfg, engine="local", quiet=True)
    assert second.summary["blocks_resumed"] == second.summary["blocks_total"]
    assert _block_files(store) == before, "a block was recomputed"
    assert Path(second.outputs["cog"]).is_file()
    assert second.scores is not None and "engine_fwiou" not in second.scores  # blocks were not scored then
    report = json.loads(Path(second.outputs["report_json"]).read_text())
    assert report["scores"]["fwiou"] == second.scores["fwiou"] and "cog" in report["outputs"]
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["complete"] is True and group.attrs["job_hash"] == config_hash(cfg)


def test_a_store_finished_for_another_job_is_not_complete_while_this_job_refinishes(
    tmp_path: Path, scene: Scene, finished: Finished, copy_finished_job: CopyJob
) -> None:
    from tiler.segment import SegmentJob

    copy_finished_job(finished.root, tmp_path)  # the job of this config, finished
    path = write_config(tmp_path, inputs=scene)
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["complete"] is True
    data = yaml.safe_load(path.read_text())
    data["output"]["exports"] = ["cog"]
    path.write_text(yaml.safe_dump(data))
    job = SegmentJob(load_config(path))
    try:
        work = job.open()  # what a kill right after opening would leave behind
        assert work.pending == []
        assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["complete"] is False
    finally:
        job.close()


def test_another_pixels_setting_is_still_refused_without_overwrite(
    tmp_path: Path, scene: Scene, finished: Finished, copy_finished_job: CopyJob
) -> None:
    from tiler.errors import OutputError

    copy_finished_job(finished.root, tmp_path)  # the job of this config, finished
    path = write_config(tmp_path, inputs=scene)
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["complete"] is True
    data = yaml.safe_load(path.read_text())
    data["tiling"]["overlap"] = [4, 4]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(OutputError, match="another job"):
        run_segment(load_config(path), engine="local", quiet=True)
# ---------------------------------------------------------------------------------------------------
# a store with the same pixels but another finishing (exports, scoring) is finished again, never recomputed


def block_state(store: Path) -> dict[str, tuple[bytes, int]]:
    """Every block record's bytes and mtime, and every labels chunk's mtime: what a recomputed block changes."""
    records = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (store / ".tiler" / "blocks").glob("*.json")}
    chunks = {str(p): (b"", p.stat().st_mtime_ns) for p in (store / "labels" / "c").rglob("*") if p.is_file()}
    return {**records, **chunks}


def store_attrs(store: Path) -> dict[str, object]:
    return dict(json.loads((store / "zarr.json").read_text())["attributes"])


def test_an_added_export_finishes_the_store_again_without_running_a_block(  # type: ignore[no-untyped-def]
    tmp_path: Path, capsys, scene: Scene, finished: Finished, copy_finished_job: CopyJob
) -> None:
    from tiler.config import config_hash
    from tiler.io.verify import verify_store

    copy_finished_job(finished.root, tmp_path)  # the job of this config, finished
    config = write_config(tmp_path, inputs=scene)  # exports: cog, quicklook
    store = tmp_path / "out.zarr"
    assert store_attrs(store)["complete"] is True and store_attrs(store)["job_hash"]
    blocks, cog = block_state(store), (tmp_path / "out.cog.tif").stat().st_mtime_ns
    pixels = store_attrs(store).get("pixels_hash")

    added = ["output.exports=[cog,quicklook,geojson]"]
    assert cli_main(["--json-logs", "run", str(config), "--engine", "local", "--set", added[0]]) == 0

    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["summary"]["blocks_run"] == 0 and done["summary"]["blocks_resumed"] == 12
    assert block_state(store) == blocks  # no block recomputed: records and chunks untouched
    assert (tmp_path / "out.cog.tif").stat().st_mtime_ns == cog  # same pixels, same settings: kept
    assert json.loads((tmp_path / "out.geojson").read_text())["type"] == "FeatureCollection"
    from tiler.config import pixels_hash

    cfg = load_config(config, added)
    attrs = store_attrs(store)
    assert attrs["complete"] is True and attrs["job_hash"] == config_hash(cfg)
    assert attrs["pixels_hash"] == pixels == pixels_hash(cfg)
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["config_hash"] == config_hash(cfg) and report["outputs"]["geojson"] == str(tmp_path / "out.geojson")
    assert report["scores"]["engine_fwiou"] == pytest.approx(report["scores"]["fwiou"], abs=1e-12)  # same truth

    # an export no longer asked for stays on disk, but is not an output of this finishing
    assert cli_main(["--json-logs", "run", str(config), "--engine", "local", "--set", "output.exports=[cog]"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["summary"]["blocks_run"] == 0 and block_state(store) == blocks
    assert set(done["outputs"]) == {"cog", "cog_aux", "scores_json", "scores_confusion", "scores_per_class",
                                    "report_json", "report_md"}
    assert (tmp_path / "out.geojson").is_file() and (tmp_path / "out.quicklook.png").is_file()
    assert "geojson" not in json.loads((tmp_path / "out.report.json").read_text())["outputs"]
    verified = verify_store(store)
    assert verified.ok and verified.job_hash == config_hash(load_config(config, ["output.exports=[cog]"]))
    assert any("earlier finishing" in note and "geojson, quicklook" in note for note in verified.notes)


def test_a_new_truth_rescores_the_store_without_running_a_block(
    tmp_path: Path, scene: Scene, finished: Finished, copy_finished_job: CopyJob
) -> None:
    from tiler.metrics import confusion_matrix, scores_from_confusion

    copy_finished_job(finished.root, tmp_path)  # the job of this config, finished
    config = write_config(tmp_path, inputs=scene)
    store = tmp_path / "out.zarr"
    first = finished.result
    assert store_attrs(store)["complete"] is True
    blocks = block_state(store)
    other = tmp_path / "other_truth.tif"
    with rasterio.open(scene.truth) as src:
        profile = src.profile | {"nodata": None}
        truth = np.random.default_rng(5).integers(0, 4, size=(src.height, src.width), dtype=np.uint8)
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(truth, 1)

    second = run_segment(load_config(config, [f"scoring.truth={other}"]), engine="local", quiet=True)

    assert second.summary["blocks_run"] == 0 and block_state(store) == blocks
    labels = zarr.open_group(str(store), mode="r")["labels"][...]
    expected = scores_from_confusion(confusion_matrix(truth, labels, num_classes=4, pred_nodata=255)).fwiou
    assert first.scores is not None and second.scores is not None
    assert second.scores["fwiou"] == pytest.approx(expected, abs=1e-12) != first.scores["fwiou"]
    # the blocks' own matrices were counted against the old truth: never summed into the new score
    assert "engine_fwiou" not in second.scores
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["scores"]["fwiou"] == second.scores["fwiou"]
    assert json.loads((tmp_path / "out.scores.json").read_text())["fwiou"] == second.scores["fwiou"]
    assert store_attrs(store)["complete"] is True


def test_a_finishing_killed_half_way_leaves_no_complete_store_and_its_rerun_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish_in_this_process: None, scene: Scene,
    finished: Finished, copy_finished_job: CopyJob,
) -> None:
    import tiler.io.vector as vector
    from tiler.config import config_hash
    from tiler.errors import OutputError

    copy_finished_job(finished.root, tmp_path)  # the job of this config, finished
    config = write_config(tmp_path, inputs=scene)
    store = tmp_path / "out.zarr"
    assert store_attrs(store)["complete"] is True
    blocks = block_state(store)
    seen: list[object] = []

    def killed(store_: object, path: object, **kwargs: object) -> None:
        seen.append(store_attrs(store).get("complete"))
        raise OutputError(f"cannot write {path}: [Errno 28] No space left on device; fix: free space")

    monkeypatch.setattr(vector, "export_geojson", killed)
    cfg = load_config(config, ["output.exports=[cog,quicklook,geojson]"])
    with pytest.raises(OutputError, match="No space left"):
        run_segment(cfg, engine="local", quiet=True)
    assert seen == [False]  # cleared before the first file beside the store changed
    attrs = store_attrs(store)
    assert attrs["complete"] is False and "job_hash" not in attrs

    monkeypatch.undo()
    result = run_segment(cfg, engine="local", quiet=True)
    assert result.summary["blocks_run"] == 0 and block_state(store) == blocks
    assert Path(result.outputs["geojson"]).is_file()
    assert store_attrs(store)["complete"] is True and store_attrs(store)["job_hash"] == config_hash(cfg)


def test_other_pixels_are_still_refused_and_leave_the_finished_store_as_it_was(  # type: ignore[no-untyped-def]
    tmp_path: Path, capsys, scene: Scene, finished: Finished, copy_finished_job: CopyJob
) -> None:
    copy_finished_job(finished.root, tmp_path)  # the job of this config, finished
    config = write_config(tmp_path, inputs=scene)
    store = tmp_path / "out.zarr"
    before, blocks = store_attrs(store), block_state(store)
    code = cli_main(["--quiet", "run", str(config), "--engine", "local", "--set", "tiling.overlap=[4,4]",
                     "--set", "output.exports=[cog,geojson]"])
    err = capsys.readouterr().err
    assert code == 1 and "pixels hash" in err and "--overwrite" in err and str(store) in err
    assert store_attrs(store) == before and before["complete"] is True and before["job_hash"]
    assert block_state(store) == blocks and not (tmp_path / "out.geojson").exists()


def test_new_polygon_settings_redraw_the_polygons_and_keep_the_other_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish_in_this_process: None, scene: Scene
) -> None:
    import tiler.io.vector as vector
    from tiler.errors import OutputError

    config = write_config(tmp_path, inputs=scene, output={"path": str(tmp_path / "out.zarr"), "chunks": [32, 32],
                                            "exports": ["cog", "geojson"]})
    geojson = tmp_path / "out.geojson"
    run_segment(load_config(config), engine="local", quiet=True)
    polygons = json.loads(geojson.read_text())["features"]
    cog = (tmp_path / "out.cog.tif").stat().st_mtime_ns
    blocks = block_state(tmp_path / "out.zarr")

    fewer_cfg = load_config(config, ["output.min_polygon_pixels=20"])
    result = run_segment(fewer_cfg, engine="local", quiet=True)

    assert result.summary["blocks_run"] == 0 and block_state(tmp_path / "out.zarr") == blocks
    assert (tmp_path / "out.cog.tif").stat().st_mtime_ns == cog
    fewer = json.loads(geojson.read_text())["features"]
    assert 0 < len(fewer) < len(polygons)

    def killed_mid_write(store: object, path: Path, **kwargs: object) -> None:
        Path(path).write_text("{half a file")  # the old settings' file is already gone
        raise OutputError(f"cannot write {path}: killed")

    monkeypatch.setattr(vector, "export_geojson", killed_mid_write)
    with pytest.raises(OutputError, match="killed"):
        run_segment(load_config(config), engine="local", quiet=True)
    monkeypatch.undo()
    # back to the settings the file was last recorded with: its record no longer vouches for it, so it is redrawn
    run_segment(fewer_cfg, engine="local", quiet=True)
    assert len(json.loads(geojson.read_text())["features"]) == len(fewer)
