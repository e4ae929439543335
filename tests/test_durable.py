"""Nothing wrong ever looks finished: inputs untouched, complete only after exports, stores that heal, clean stops."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
import zarr

from tests.engine.helpers import write_model, write_raster
from tests.shared_data import SHARED_DATA
from tiler.cli import main as cli_main
from tiler.config import load_config, parse_config
from tiler.errors import ConfigError, EngineError, OutputError, ScoreError
from tiler.io.lock import lock_path_for
from tiler.job.outputs import check_output_paths
from tiler.model.checkpoint import save_checkpoint
from tiler.model.spec import ModelSpec, build_network
from tiler.segment import run_segment

REPO = Path(__file__).resolve().parents[1]


def job(root: Path, inputs: tuple[Path, Path], **output: object) -> Path:
    """A small 2D job (one 96×80 scene, 64-px blocks, COG export) written to ``root/job.yaml``.

    It reads ``inputs``: the scene and the model (:func:`write_inputs`), which may lie outside ``root``.
    """
    image, model = inputs
    data = {
        "input": {"path": str(image)},
        "model": {"weights": str(model), "batch_size": 1, "threads": 1},
        "tiling": {"tile": 32, "overlap": 8, "block": 32},
        "output": {"path": str(root / "out.zarr"), "chunks": 32, "exports": ["cog"], **output},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_inputs(root: Path) -> tuple[Path, Path]:
    """The 96×80 scene and the tiny model's checkpoint, written into ``root``."""
    return write_raster(root / "image.tif", (96, 80)), write_model(root / "model.pt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The module's scene and model, written once; tests only read them (their outputs go to their own folder)."""
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, inputs: tuple[Path, Path]) -> Path:
    """The folder of :func:`job` on the module's inputs, run to the end; a test that changes it copies it first."""
    root = tmp_path_factory.mktemp("finished")
    run_segment(load_config(job(root, inputs)), engine="local", quiet=True)
    return root


def complete(store: Path) -> bool:
    return bool(zarr.open_group(str(store), mode="r").attrs.get("complete", False))


def test_a_nifti_export_that_would_replace_its_input_scan_is_refused_and_the_scan_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "same"
    folder.mkdir()
    volume = nib.load(str(SHARED_DATA / "anatomical.nii"))
    scan = folder / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(volume.dataobj), volume.affine), str(scan))
    before = scan.read_bytes()
    torch.manual_seed(0)
    spec = ModelSpec("UNet", 3, 1, 3, args={"channels": [4, 8], "strides": [2], "num_res_units": 0})
    weights = save_checkpoint(tmp_path / "ct.pt", build_network(spec), spec=spec)
    config = tmp_path / "ct.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": str(scan)}, "model": {"weights": str(weights)},
        "tiling": {"tile": [16, 16, 16], "overlap": [4, 4, 4], "block": [32, 32, 32]},
        "output": {"path": str(folder / "vol.zarr"), "chunks": [16, 16, 16], "exports": ["nifti"]},
    }))
    assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) != 0
    err = capsys.readouterr().err
    assert "would overwrite input.path" in err and str(scan) in err and "fix:" in err
    assert scan.read_bytes() == before
    assert not (folder / "vol.zarr").exists()


def test_a_user_file_where_an_export_would_go_is_refused_and_kept(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    cfg = load_config(job(tmp_path, inputs))
    mine = tmp_path / "out.cog.tif"
    mine.write_bytes(b"my own map")
    with pytest.raises(ConfigError, match=r"out\.cog\.tif already exists and was not written by the store"):
        run_segment(cfg, engine="local", quiet=True)
    assert mine.read_bytes() == b"my own map"


@pytest.mark.parametrize("chart", ["out.scores.confusion.png", "out.scores.per_class.png"])
def test_a_user_file_where_the_score_charts_would_go_is_refused_and_kept(
    tmp_path: Path, inputs: tuple[Path, Path], chart: str
) -> None:
    import rasterio

    cfg = load_config(job(tmp_path, inputs))
    truth = tmp_path / "truth.tif"
    with rasterio.open(inputs[0]) as src:
        profile = {**src.profile, "count": 1, "nodata": None}
    with rasterio.open(truth, "w", **profile) as dst:
        dst.write(np.ones((1, 96, 80), dtype=np.uint8))
    scored = parse_config({**json.loads(cfg.model_dump_json()), "scoring": {"truth": str(truth)}})
    mine = tmp_path / chart
    mine.write_bytes(b"my own chart")
    with pytest.raises(ConfigError, match=rf"{chart.replace('.', '[.]')} already exists and was not written by"):
        run_segment(scored, engine="local", quiet=True)
    assert mine.read_bytes() == b"my own chart"
    mine.unlink()  # moved away: the job runs, and its charts are its own from then on (a rerun may redraw them)
    run_segment(scored, engine="local", quiet=True)
    assert mine.read_bytes().startswith(b"\x89PNG")
    run_segment(scored, engine="local", quiet=True, overwrite=True)


@pytest.mark.parametrize("crs", ["EPSG:4326", None], ids=["another-crs", "no-crs"])
def test_a_truth_off_the_inputs_grid_is_refused_before_any_block_runs(
    tmp_path: Path, inputs: tuple[Path, Path], crs: str | None
) -> None:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    cfg = load_config(job(tmp_path, inputs))
    truth = tmp_path / "truth.tif"
    with rasterio.open(inputs[0]) as src:
        profile = {**src.profile, "count": 1, "nodata": None, "crs": crs}
        if crs is None:
            profile.pop("transform")
    with pytest.warns(NotGeoreferencedWarning) if crs is None else contextlib.nullcontext():
        with rasterio.open(truth, "w", **profile) as dst:
            dst.write(np.ones((1, 96, 80), dtype=np.uint8))
    scored = parse_config({**json.loads(cfg.model_dump_json()), "scoring": {"truth": str(truth)}})
    with pytest.raises(ScoreError, match=rf"truth {truth} has (no CRS|CRS)") as caught:
        run_segment(scored, engine="local", quiet=True)
    assert "fix" in str(caught.value) or "first" in str(caught.value)
    assert not (tmp_path / "out.zarr").exists()  # found before the store was made, not after every block


def test_an_output_inside_rays_temporary_working_dir_copy_is_refused(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    cfg = load_config(job(tmp_path, inputs))
    inside = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1" / "out" / "x.zarr"
    moved = parse_config({**json.loads(cfg.model_dump_json()), "output": {"path": str(inside), "chunks": 32}})
    with pytest.raises(ConfigError, match="temporary copy of `ray job submit --working-dir`"):
        check_output_paths(moved)


@pytest.mark.parametrize("export", ["nifti"])
def test_exports_that_do_not_fit_the_dimensionality_are_refused_at_load(
    tmp_path: Path, inputs: tuple[Path, Path], export: str
) -> None:
    with pytest.raises(ConfigError, match=rf"output\.exports.*{export} on a 2D job"):
        load_config(job(tmp_path, inputs, exports=[export]))


@pytest.mark.parametrize("export", ["cog", "geojson", "geoparquet", "qupath"])
def test_2d_exports_on_a_3d_job_are_refused_at_load(export: str) -> None:
    with pytest.raises(ConfigError, match=rf"output\.exports.*{export} on a 3D job"):
        parse_config({"input": {"path": "v.nii.gz"}, "model": {"weights": "m.pt"},
                      "tiling": {"tile": [16, 16, 16], "overlap": [4, 4, 4], "block": [32, 32, 32]},
                      "output": {"path": "o.zarr", "chunks": [16, 16, 16], "exports": [export]}})


def test_complete_comes_only_after_the_exports_and_a_rerun_redoes_only_the_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish_in_this_process: None, inputs: tuple[Path, Path]
) -> None:
    import tiler.io.export as export

    cfg = load_config(job(tmp_path, inputs))
    store = tmp_path / "out.zarr"
    seen: list[bool] = []

    def disk_full(store_: object, path: object, **kwargs: object) -> Path:
        seen.append(lock_path_for(store).exists())  # the job lock is held while exports are written
        raise OutputError(f"cannot write {path}: [Errno 28] No space left on device; fix: free space")

    monkeypatch.setattr(export, "export_cog", disk_full)
    with pytest.raises(OutputError, match=r"out\.cog\.tif.*No space left"):
        run_segment(cfg, engine="local", quiet=True)
    assert seen == [True]
    assert not complete(store)
    assert not lock_path_for(store).exists()
    blocks = len(list((store / ".tiler" / "blocks").glob("*.json")))
    assert blocks == 3 * 3

    monkeypatch.undo()
    result = run_segment(cfg, engine="local", quiet=True)
    assert result.summary["blocks_run"] == 0 and result.summary["blocks_resumed"] == 9
    assert complete(store) and Path(result.outputs["cog"]).is_file()


def test_a_deleted_chunk_is_found_and_its_block_recomputed_by_the_rerun(
    tmp_path: Path, inputs: tuple[Path, Path], finished: Path, copy_finished_job: Callable[[Path, Path], Path]
) -> None:
    copy_finished_job(finished, tmp_path)  # this job, finished
    cfg = load_config(job(tmp_path, inputs))
    store = tmp_path / "out.zarr"
    assert complete(store)
    labels = zarr.open_group(str(store), mode="r")["labels"][...]
    chunk = store / "labels" / "c" / "1" / "1"
    assert chunk.is_file()
    chunk.unlink()
    with pytest.warns(UserWarning, match="lost chunk files"):
        result = run_segment(cfg, engine="local", quiet=True)
    assert result.summary["blocks_run"] == 1
    assert complete(store)
    assert np.array_equal(zarr.open_group(str(store), mode="r")["labels"][...], labels)


def test_sigterm_stops_with_143_and_one_line_releases_the_lock_and_the_rerun_resumes(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    config = job(tmp_path, inputs, exports=[])
    store = tmp_path / "out.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiler.cli", "--quiet", "run", str(config), "--engine", "local",
         "--set", "tiling.block=[32,32]"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    blocks = store / ".tiler" / "blocks"
    while time.time() < deadline and (not blocks.exists() or len(list(blocks.glob("*.json"))) < 2):
        assert proc.poll() is None, "the job ended before it could be stopped"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "terminated (SIGTERM)" in lines[0] and "rerun" in lines[0]
    assert not lock_path_for(store).exists()
    assert not complete(store)
    done = len(list(blocks.glob("*.json")))
    result = run_segment(load_config(config), engine="local", quiet=True)
    assert result.summary["blocks_resumed"] == done and result.summary["blocks_run"] == 9 - done


CONNECT = """
import sys, ray
from tiler.engine.ray import connect
connect(sys.argv[1])
print("GCS", ray.get_runtime_context().gcs_address)
"""


def test_engine_address_local_never_joins_the_cluster_in_ray_address(ray_session) -> None:  # type: ignore[no-untyped-def]
    session = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": session}
    run = subprocess.run([sys.executable, "-c", CONNECT, "local"], env=env, capture_output=True, text=True,
                         timeout=180, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    gcs = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("GCS")]
    assert gcs and gcs[0] != session


def test_an_address_where_nothing_answers_fails_with_one_line() -> None:
    run = subprocess.run([sys.executable, "-c", CONNECT, "127.0.0.1:9"], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert run.returncode != 0
    assert "EngineError" in run.stderr and "nothing answers there" in run.stderr and "fix:" in run.stderr


def test_a_block_that_fails_names_its_input_and_block(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    cfg = load_config(job(tmp_path, inputs))
    bad = parse_config({**json.loads(cfg.model_dump_json()),
                        "input": {"path": str(SHARED_DATA / "corrupt.tif")},
                        "tiling": {"tile": 64, "overlap": 16, "block": 256},
                        "output": {"path": str(tmp_path / "bad.zarr"), "chunks": 256}})
    with pytest.raises(EngineError, match=r"block \d+_\d+ .*corrupt\.tif"):
        run_segment(bad, engine="local", quiet=True)
    assert not complete(tmp_path / "bad.zarr")
