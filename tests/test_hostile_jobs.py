"""Careless and hostile jobs end to end: nothing of the user's deleted, no hang, no secret written, no false result."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr

from tests.engine.helpers import write_job, write_raster
from tiler.cli import main as cli_main
from tiler.config import load_config, parse_config
from tiler.errors import ConfigError, OutputError
from tiler.segment import run_segment

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Pa55"


Template = dict[str, Any]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """:func:`write_job`'s job, its scene and model written once for the module (tests only read them)."""
    return dict(yaml.safe_load(write_job(tmp_path_factory.mktemp("inputs")).read_text()))


def job(root: Path, template: Template, **extra: object) -> Path:
    """:func:`write_job`'s job reading ``template``'s scene and model, its output in ``root``."""
    data = {**copy.deepcopy(template), **extra}
    data["output"] = {**data["output"], "path": str(root / "out.zarr")}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_overwrite_never_deletes_a_folder_of_user_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], template: Template
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    config = job(tmp_path, template)
    rc = cli_main(["--quiet", "run", str(config), "--engine", "local", "--overwrite", "--set", f"output.path={mine}"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "not a tiler" in err and "--overwrite" not in err.split("not a tiler", 1)[1]
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_an_output_inside_or_equal_to_a_zarr_input_is_refused_even_with_overwrite(
    tmp_path: Path, template: Template
) -> None:
    volume = tmp_path / "volume.zarr"
    group = zarr.open_group(str(volume), mode="w", zarr_format=3)
    group.create_array("data", shape=(3, 64, 64), dtype="uint8", chunks=(3, 32, 32))[...] = 7
    before = sorted(p.relative_to(volume) for p in volume.rglob("*"))
    cfg = load_config(job(tmp_path, template))
    for target in (volume, volume / "labels"):
        data = {**json.loads(cfg.model_dump_json()), "input": {"path": str(volume / "data")},
                "output": {"path": str(target), "chunks": 32}}
        with pytest.raises((ConfigError, OutputError), match="input"):
            run_segment(parse_config(data), engine="local", quiet=True, overwrite=True)
    assert sorted(p.relative_to(volume) for p in volume.rglob("*")) == before


def test_credentials_and_url_signatures_never_reach_outputs_or_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], template: Template
) -> None:
    config = job(tmp_path, template, input={"path": str(tmp_path / "image.tif"),
                                            "gdal": {"options": {"GDAL_HTTP_USERPWD": f"me:{SECRET}",
                                                                 "AWS_SECRET_ACCESS_KEY": SECRET}}})
    write_raster(tmp_path / "image.tif", (64, 64))
    assert cli_main(["run", str(config), "--engine", "local"]) == 0
    bad = job(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path, template,
              input={"path": f"/vsicurl/https://127.0.0.1:9/scene.tif?X-Amz-Signature={SECRET}&sig={SECRET}"})
    assert cli_main(["run", str(bad), "--engine", "local"]) != 0
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()
             and p.name not in ("job.yaml",)]
    assert leaks == []


def test_score_refuses_an_incomplete_store_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], template: Template
) -> None:
    cfg = load_config(job(tmp_path, template))
    result = run_segment(cfg, engine="local", quiet=True)
    store = Path(result.store)
    attrs = json.loads((store / "zarr.json").read_text())
    attrs["attributes"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(attrs))
    truth = tmp_path / "truth.tif"
    shutil.copy(result.outputs["cog"], truth)
    assert cli_main(["score", str(store), str(truth)]) == 2
    assert "is not complete" in capsys.readouterr().err
    out = tmp_path / "scores.json"
    assert cli_main(["score", str(store), str(truth), "--allow-incomplete", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["incomplete"] is True


@pytest.mark.timeout(120)  # a hang guard: the pool would otherwise wait forever for actors it cannot place
def test_a_pool_larger_than_the_cluster_is_refused_at_once(ray_session, tmp_path: Path, template: Template) -> None:  # type: ignore[no-untyped-def]
    for setting in ("engine.actors=3", "engine.cpus_per_actor=4"):
        cfg = load_config(job(tmp_path, template), [setting])
        with pytest.raises(ConfigError, match=setting.split("=")[0].replace(".", r"\.") + r".*fix:"):
            run_segment(cfg, engine="ray", quiet=True)


def test_a_tile_that_cannot_fit_in_memory_is_refused_before_anything_allocates(
    tmp_path: Path, template: Template
) -> None:
    cfg = load_config(job(tmp_path, template), ["tiling.tile=[60000,60000]", "tiling.overlap=[0,0]",
                                                "tiling.block=[60000,60000]", "output.chunks=[60000,60000]"])
    with pytest.raises(ConfigError, match=r"tiling\.tile"):
        run_segment(cfg, engine="local", quiet=True)
    assert not (tmp_path / "out.zarr").exists()


def test_the_embedded_rays_session_folder_is_private_to_the_user() -> None:
    script = """
import os, psutil, ray
from tiler.engine.ray import connect
connect("local")
ray.get(ray.remote(lambda: 1).remote())
root = ray._private.worker.global_worker.node.get_temp_dir_path()
print("ROOT", oct(os.stat(root).st_mode & 0o777))
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    modes = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("ROOT")]
    assert modes and int(modes[0], 8) & 0o077 == 0, modes


def test_nan_free_labels_from_the_job(tmp_path: Path, template: Template) -> None:
    import rasterio
    from rasterio.transform import from_origin

    image = tmp_path / "float.tif"
    data = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32) * 200 + 1
    data[:, 10, 5:15] = np.nan
    with rasterio.open(image, "w", driver="GTiff", width=64, height=64, count=3, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(0, 0, 1, 1)) as dst:
        dst.write(data)
    cfg = load_config(job(tmp_path, template), [f"input.path={image}", "output.probabilities=float32"])
    result = run_segment(cfg, engine="local", quiet=True)
    probs = zarr.open_group(result.store, mode="r")["probabilities"][...]
    labels = zarr.open_group(result.store, mode="r")["labels"][...]
    assert np.isfinite(probs).all()
    assert (labels[10, 5:15] == 255).all() and (labels[11] < 4).all()


def test_an_input_that_overflows_the_model_fails_the_job_instead_of_writing_meaningless_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], template: Template
) -> None:
    import rasterio

    config = job(tmp_path, template)
    huge = tmp_path / "huge.tif"
    data = np.random.default_rng(0).random((3, 64, 64)) * 1e300  # finite float64, beyond float32
    with rasterio.open(huge, "w", driver="GTiff", width=64, height=64, count=3, dtype="float64", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(0, 64, 1, 1)) as dst:
        dst.write(data)
    rc = cli_main(["--quiet", "run", str(config), "--engine", "local", "--set", f"input.path={huge}",
                   "--set", "output.exports=[]"])
    assert rc != 0
    err = capsys.readouterr().err
    assert str(huge) in err and "not finite" in err and "fix:" in err
    store = tmp_path / "out.zarr"
    assert not (store.exists() and zarr.open_group(str(store), mode="r").attrs.get("complete", False))


def test_a_2d_multiband_model_on_a_volume_is_told_its_dimensionality_not_to_pick_bands(tmp_path: Path) -> None:
    import nibabel as nib

    from tests.engine.helpers import write_model
    from tiler.errors import ModelError

    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 12), np.float32), np.eye(4)), str(volume))
    cfg = parse_config({
        "input": {"path": str(volume)}, "model": {"weights": str(write_model(tmp_path / "m.pt", in_channels=4))},
        "tiling": {"tile": [8, 16, 16], "overlap": [2, 4, 4], "block": [12, 24, 24]},
        "output": {"path": str(tmp_path / "o.zarr"), "chunks": [6, 12, 12]},
    })
    with pytest.raises(ModelError, match=r"is 2D but .*ct\.nii\.gz has spatial shape \(12, 24, 24\); use a 3D model"):
        run_segment(cfg, engine="local", quiet=True)
