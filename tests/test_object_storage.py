"""Inputs and truth on S3: ``tiler run`` with ``s3://`` paths and only the standard AWS variables, against moto.

The scene and its truth are uploaded to a fresh bucket of a real S3-compatible server on loopback
(:mod:`tests.s3`, moto with signature checks on); the environment holds ``AWS_ENDPOINT_URL``, the key, the secret
and the region, nothing else. The same job on the local files is the reference: labels bit for bit, scores equal.
A successful job runs in a process started with the user's environment (a ``tiler run`` subprocess): its finishing
processes (a fork server) and Ray workers (a raylet) take the environment of whatever started them, and those of
this test process were started before a test set the variables. On Ray, the driver joins the session's cluster
with the job's ``runtime_env`` environment, as ``ray job submit --runtime-env-json`` gives it; the session's Ray
as it is (workers without the variables) shows what a user sees when a node lacks them.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
import zarr
from rasterio.errors import RasterioIOError

from tests.engine.helpers import write_model
from tests.s3 import S3Bucket  # the fixtures s3_server (one per session) and s3_bucket come from conftest
from tiler.cli import main as cli_main
from tiler.config import load_config
from tiler.errors import EngineError, ReadError
from tiler.io import cloud
from tiler.io.cloud import gdal_cloud_options
from tiler.io.raster import RasterReader
from tiler.io.scenes_files import write_satellite
from tiler.scenes import satellite_scene
from tiler.segment import run_segment

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 240
TILER = "import sys; from tiler.cli import entry; entry(sys.argv[1:])"


@dataclass(frozen=True)
class Scene:
    """The job's local files: a 4-band satellite scene (256×192, uint16), its truth, the tiny model's checkpoint."""

    image: Path
    truth: Path
    model: Path


@dataclass(frozen=True)
class Reference:
    """The job run on the local files: its labels and its scores (without the file-specific details)."""

    labels: np.ndarray
    scores: dict[str, Any]


def write_job(root: Path, scene: Scene, *, image: str, truth: str | None) -> Path:
    """The job's YAML in ``root`` (output ``root/out.zarr``), reading ``image`` and scoring against ``truth``."""
    data: dict[str, Any] = {
        "input": {"path": image},
        "model": {"weights": str(scene.model), "batch_size": 4, "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "engine": {"actors": 1},
        "output": {"path": str(root / "out.zarr"), "chunks": [32, 32], "exports": []},
        "scoring": {"truth": truth},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def scores_of(store: Path) -> dict[str, Any]:
    """The scores JSON a finished job wrote beside ``store``, without its ``details`` (paths and timings)."""
    scores = json.loads(store.with_name(store.stem + ".scores.json").read_text())
    scores.pop("details")
    return dict(scores)


def labels_of(store: Path) -> np.ndarray:
    group: Any = zarr.open_group(str(store), mode="r")
    assert group.attrs["complete"] is True
    return np.asarray(group["labels"][...])


def run_tiler(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tiler <args>`` in a new process with this process's environment now (the user's shell)."""
    return subprocess.run([sys.executable, "-c", TILER, *args], cwd=REPO, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)  # fmt: skip


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    root = tmp_path_factory.mktemp("scene")
    generated = satellite_scene((256, 192), seed=3, bands=4)
    write_satellite(generated, root / "scene.tif", root / "truth.tif", block=64)
    model = write_model(root / "model.pt", in_channels=4, classes=generated.num_classes)
    return Scene(root / "scene.tif", root / "truth.tif", model)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, scene: Scene) -> Reference:
    """The job on the local files, in this process (no AWS variable matters to it)."""
    root = tmp_path_factory.mktemp("reference")
    result = run_segment(load_config(write_job(root, scene, image=str(scene.image), truth=str(scene.truth))),
                         engine="local", quiet=True)  # fmt: skip
    return Reference(labels_of(Path(result.store)), scores_of(Path(result.store)))


@pytest.fixture
def uploaded(s3_bucket: S3Bucket, scene: Scene) -> S3Bucket:
    """A fresh bucket holding ``scene.tif`` and ``truth.tif``."""
    s3_bucket.upload(scene.image, "scene.tif")
    s3_bucket.upload(scene.truth, "truth.tif")
    return s3_bucket


S3_OPTIONS = {"AWS_NO_SIGN_REQUEST": "NO", "AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO",
              "AWS_VIRTUAL_HOSTING": "FALSE"}  # fmt: skip
LOCAL = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}


@pytest.mark.parametrize(
    ("path", "environ", "expected"),
    [
        pytest.param("s3://b/k.tif", LOCAL, S3_OPTIONS, id="endpoint"),
        pytest.param("/vsis3/b/k.tif", LOCAL, S3_OPTIONS, id="vsis3"),
        pytest.param("s3://b/k.tif", {"AWS_ENDPOINT_URL": "https://s3.example.org"},
                     {**S3_OPTIONS, "AWS_S3_ENDPOINT": "s3.example.org", "AWS_HTTPS": "YES"}, id="https"),
        pytest.param("s3://b/k.tif", {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "AWS_ENDPOINT_URL": "http://x:1"},
                     S3_OPTIONS, id="s3-specific-first"),
        pytest.param("s3://b/k.tif", {**LOCAL, "AWS_DEFAULT_REGION": "eu-west-1"},
                     {**S3_OPTIONS, "AWS_REGION": "eu-west-1"}, id="default-region"),
        pytest.param("s3://b/k.tif", {**LOCAL, "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-1"},
                     S3_OPTIONS, id="region-gdal-reads-itself"),
        pytest.param("s3://b/k.tif", {**LOCAL, "AWS_VIRTUAL_HOSTING": "TRUE", "AWS_HTTPS": "YES"},
                     {"AWS_NO_SIGN_REQUEST": "NO", "AWS_S3_ENDPOINT": "127.0.0.1:9000"}, id="gdal-variables-win"),
        pytest.param("s3://b/k.tif", {**LOCAL, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"},
                     {"AWS_NO_SIGN_REQUEST": "NO"}, id="endpoints-ignored"),
        pytest.param("s3://b/k.tif", {"AWS_NO_SIGN_REQUEST": "YES"}, {"AWS_NO_SIGN_REQUEST": "YES"}, id="aws"),
        pytest.param("gs://b/k.tif", LOCAL, {}, id="gs"),
        pytest.param("az://c/k.tif", LOCAL, {}, id="az"),
        pytest.param("https://host/k.tif", LOCAL, {}, id="https-url"),
        pytest.param("/data/k.tif", LOCAL, {}, id="local"),
    ],
)  # fmt: skip
def test_the_standard_variables_become_gdal_options(
    path: str, environ: dict[str, str], expected: dict[str, str]
) -> None:
    assert gdal_cloud_options(path, environ=environ) == expected


def test_the_cloud_module_examples_run() -> None:
    result = doctest.testmod(cloud, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_an_endpoint_that_is_not_a_url_is_refused_naming_the_variable() -> None:
    with pytest.raises(ReadError, match=r"AWS_ENDPOINT_URL='127\.0\.0\.1:9000' is not an endpoint URL.*http://"):
        gdal_cloud_options("s3://b/k.tif", environ={"AWS_ENDPOINT_URL": "127.0.0.1:9000"})


def test_input_gdal_options_win_over_the_translation(uploaded: S3Bucket) -> None:
    with pytest.raises(ReadError, match=r"cannot be reached at http://127\.0\.0\.1:9 "):
        RasterReader(uploaded.url("scene.tif"), gdal_options={"AWS_S3_ENDPOINT": "127.0.0.1:9"})
    assert RasterReader(uploaded.url("scene.tif"), gdal_options={"AWS_HTTPS": "NO"}).shape == (256, 192)


def test_gdal_alone_ignores_aws_endpoint_url_and_asks_aws(uploaded: S3Bucket) -> None:
    """The bug report's cause: with the standard variables only, GDAL sends ``s3://`` requests to AWS, not moto."""
    with pytest.raises(
        RasterioIOError,
        match=rf"Could not resolve host: {uploaded.name}\.s3\.[\w-]+\.amazonaws\.com"
        r"|InvalidAccessKeyId|Access Key Id you provided does not exist",
    ):
        with rasterio.Env(), rasterio.open(uploaded.url("scene.tif")):
            pass
    assert gdal_cloud_options(uploaded.url("scene.tif"))["AWS_S3_ENDPOINT"] == uploaded.server.host
    with rasterio.Env(**gdal_cloud_options(uploaded.url("scene.tif"))), rasterio.open(uploaded.url("scene.tif")) as f:
        assert f.shape == (256, 192)


def test_tiler_run_reads_input_and_truth_from_s3_as_from_local_files(
    uploaded: S3Bucket, scene: Scene, reference: Reference, tmp_path: Path
) -> None:
    config = write_job(tmp_path, scene, image=uploaded.url("scene.tif"), truth=uploaded.url("truth.tif"))
    proc = run_tiler("run", str(config), "--engine", "local")
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = tmp_path / "out.zarr"
    assert np.array_equal(labels_of(store), reference.labels)
    assert scores_of(store) == reference.scores
    written = (
        proc.stdout
        + proc.stderr
        + "".join(
            p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".json", ".md")
        )
    )  # the log, the store's attributes and records, the reports
    assert uploaded.url("scene.tif") in written  # the config is kept, its inputs named...
    assert uploaded.server.secret_access_key not in written  # ...and no credential with it
    assert uploaded.server.access_key_id not in written


@dataclass(frozen=True)
class Failure:
    """A broken path or environment, and the cause the one line must give (after ``cannot open <url>: ``)."""

    image: str
    truth: str
    cause: str
    env: dict[str, str | None]  # None: unset
    unlisted: str | None = None  # the cause when GDAL does not list the folder on open, where it differs


NOT_FOUND = r"not found \(HTTP 404, or not in the bucket's listing\)"
REFUSED = r"the server refused the credentials \(HTTP 403\)"
FAILURES = {
    "missing-key": Failure("nope.tif", "truth.tif", NOT_FOUND, {}),
    "missing-truth-key": Failure("scene.tif", "nope.tif", NOT_FOUND, {}),
    "missing-bucket": Failure(
        "s3://tiler-no-such-bucket/scene.tif", "truth.tif", r"no such bucket \(HTTP 404, NoSuchBucket\)", {},
        unlisted=NOT_FOUND,  # a HEAD request's 404 has no body saying which
    ),
    "wrong-secret": Failure(
        "scene.tif", "truth.tif", REFUSED + r".*signature we calculated", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    ),
    "unknown-key": Failure(
        "scene.tif", "truth.tif", REFUSED + r".*(Access Key Id you provided|HTTP response code: 403)",
        {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN0000000"},
    ),
    # GDAL's own credential chain, also where boto3 is installed (rasterio would resolve the profile with boto3
    # and fail with botocore's ProfileNotFound, a traceback): no key, and a profile that ~/.aws does not hold
    "unknown-profile": Failure(
        "scene.tif", "truth.tif", r"no credentials in the environment of this process",
        {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": "tiler-no-such-profile"},
    ),
}  # fmt: skip
LISTINGS = {"listed": None, "unlisted": "EMPTY_DIR"}
"""GDAL_DISABLE_READDIR_ON_OPEN: GDAL's default lists the folder on open; deploy/ sets EMPTY_DIR (no listing)."""


@pytest.mark.parametrize("listing", list(LISTINGS))
@pytest.mark.parametrize("case", [pytest.param(v, id=k) for k, v in FAILURES.items()])
def test_a_storage_failure_is_one_line_naming_the_url_and_the_fix_and_writes_nothing(
    uploaded: S3Bucket,
    scene: Scene,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: Failure,
    listing: str,
) -> None:
    image = case.image if "://" in case.image else uploaded.url(case.image)
    truth = uploaded.url(case.truth)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws of this machine's user
    readdir = LISTINGS[listing]
    for name, value in {**case.env, "GDAL_DISABLE_READDIR_ON_OPEN": readdir}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    config = write_job(tmp_path / "job", scene, image=image, truth=truth)
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    err = capsys.readouterr().err.strip()
    bad = truth if case.truth == "nope.tif" else image
    cause = case.unlisted if readdir and case.unlisted else case.cause
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert re.search(rf"ReadError: cannot open {re.escape(bad)}: {cause}", err), err
    assert f"at {uploaded.server.endpoint} (GDAL: " in err and "fix:" in err  # where, what GDAL said, the fix
    assert uploaded.server.secret_access_key not in err and "not-the-secret" not in err
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["job.yaml"]  # nothing written


def test_credentials_refused_after_the_bucket_was_listed_still_point_at_them(
    uploaded: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL found truth.tif in the listing made with good credentials; a refused read of it must not read as corrupt."""
    RasterReader(uploaded.url("scene.tif"))  # lists the bucket
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "expired")
    url = re.escape(uploaded.url("truth.tif"))
    with pytest.raises(ReadError, match=rf"^cannot open {url}: .*the server refused the (credentials|read)"):
        RasterReader(uploaded.url("truth.tif"))


def test_without_the_endpoint_translation_the_run_fails_as_reported(
    uploaded: S3Bucket,
    scene: Scene,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reproduction: the same run with tiler's translation taken out fails the way the bug report says."""
    monkeypatch.setattr("tiler.io.raster.gdal_cloud_options", lambda path: {})
    config = write_job(tmp_path / "job", scene, image=uploaded.url("scene.tif"), truth=uploaded.url("truth.tif"))
    assert cli_main(["--quiet", "run", str(config), "--engine", "local"]) == 2
    err = capsys.readouterr().err
    assert re.search(
        rf"Could not resolve host: {uploaded.name}\.s3\.[\w-]+\.amazonaws\.com"
        r"|InvalidAccessKeyId|Access Key Id you provided does not exist",
        err,
    ), err


def test_ray_workers_take_the_raylets_environment_so_a_job_fails_naming_the_cause(
    ray_session: Any, uploaded: S3Bucket, scene: Scene, tmp_path: Path
) -> None:
    """The session's Ray started before this test set the variables: its workers do not have them, and the actors'
    reads fail with the cause and the fix (the driver, which has them, planned the job)."""
    seen = ray_session.get(ray_session.remote(_environment).remote(sorted(uploaded.server.environment())))
    assert seen.get("AWS_ENDPOINT_URL") != uploaded.server.endpoint
    assert seen.get("AWS_SECRET_ACCESS_KEY") != uploaded.server.secret_access_key
    config = write_job(tmp_path, scene, image=uploaded.url("scene.tif"), truth=uploaded.url("truth.tif"))
    with pytest.raises(
        EngineError,
        match=rf"cannot open {re.escape(uploaded.url('scene.tif'))}: no credentials in "
        r"the environment of this process .*fix: .*every Ray worker",
    ):
        run_segment(load_config(config), engine="ray", quiet=True)
    assert not zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs.get("complete")


def _environment(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def test_a_ray_job_reads_the_bucket_with_the_workers_own_environment(
    ray_session: Any, uploaded: S3Bucket, scene: Scene, reference: Reference, tmp_path: Path
) -> None:
    """A driver joins the session's Ray with the job's environment for its workers, as ``ray job submit
    --runtime-env-json '{"env_vars": ...}'`` gives it: the actors and finishing tasks read the bucket themselves."""
    config = write_job(tmp_path, scene, image=uploaded.url("scene.tif"), truth=uploaded.url("truth.tif"))
    job = {"runtime_env": {"env_vars": uploaded.server.environment()}}
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}  # fmt: skip
    proc = run_tiler("--quiet", "run", str(config), "--engine", "ray", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = tmp_path / "out.zarr"
    assert np.array_equal(labels_of(store), reference.labels)
    assert scores_of(store) == reference.scores


def test_engine_env_vars_give_the_workers_of_a_joined_cluster_the_drivers_variables(
    ray_session: Any, uploaded: S3Bucket, scene: Scene, reference: Reference, tmp_path: Path
) -> None:
    """A driver joining the session's Ray (whose workers lack the variables: see the test above) with
    ``engine.env_vars`` naming them: the actors and finishing tasks get this process's values and read the bucket."""
    config = write_job(tmp_path, scene, image=uploaded.url("scene.tif"), truth=uploaded.url("truth.tif"))
    names = sorted(uploaded.server.environment())
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    env.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)
    proc = run_tiler("--quiet", "run", str(config), "--engine", "ray", "--set", f"engine.env_vars=[{','.join(names)}]",
                     env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = tmp_path / "out.zarr"
    assert np.array_equal(labels_of(store), reference.labels)
    assert scores_of(store) == reference.scores
    stored = json.dumps(zarr.open_group(str(store), mode="r").attrs.asdict())
    assert uploaded.server.secret_access_key not in stored and "AWS_SECRET_ACCESS_KEY" in stored  # names, no values


def test_worker_env_leaves_out_what_the_jobs_runtime_env_sets_and_what_this_process_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ray.init`` refuses a ``runtime_env`` setting a variable the submitted job's ``runtime_env`` sets too."""
    from tiler.engine.ray_connect import RAY_JOB_CONFIG, worker_env

    monkeypatch.setenv("TILER_TEST_A", "driver-a")
    monkeypatch.setenv("TILER_TEST_B", "driver-b")
    monkeypatch.delenv("TILER_TEST_C", raising=False)
    monkeypatch.setenv(RAY_JOB_CONFIG, json.dumps({"runtime_env": {"env_vars": {"TILER_TEST_A": "job-a"}}}))
    assert worker_env(["TILER_TEST_A", "TILER_TEST_B", "TILER_TEST_C"]) == {"TILER_TEST_B": "driver-b"}
    monkeypatch.delenv(RAY_JOB_CONFIG)
    assert worker_env(["TILER_TEST_A"]) == {"TILER_TEST_A": "driver-a"}
