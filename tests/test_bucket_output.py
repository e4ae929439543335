"""Outputs in a bucket: ``tiler run`` with ``output.path: s3://…`` writes its store, lock, records and exports there.

A fresh bucket of a real S3-compatible server on loopback (:mod:`tests.s3`, moto with signature checks on) holds
the output ``s3://<bucket>/out/scene.zarr``; the environment holds the standard AWS variables only. The same job
written to a local folder, in this process, is the reference (module-scoped, one per config): the store read back
from the bucket (every object under its prefix downloaded with boto3, then opened with zarr) must hold its labels
bit for bit, and the COG its pixels. A successful job runs in a ``tiler run`` subprocess started with this
environment (its finishing processes take the environment of whatever started them, see
``tests/test_object_storage.py``); refusals, which must come before anything is written, run in this process
through :func:`tiler.cli.main`, as do ``tiler verify`` and the writers of :mod:`tiler.io.objects` and
:mod:`tiler.io.atomic`.

What is asserted: the store, its ``complete`` flag and its COG land in the bucket, with no ``.tiler-tmp-`` object
and no lock object left behind; the job lock ``out/.scene.zarr.lock`` is honoured (a live holder refuses the run
in one line naming it, a holder whose heartbeat is an hour old is taken over, two jobs started at once never both
claim the store); a job SIGKILLed mid-run resumes from its block records in the bucket; an interrupted upload
leaves nothing under its key; ``tiler verify`` finds a deleted chunk object and a rerun repairs it; outputs that
cannot be written (``https://``, a bucket that does not exist) are refused in one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
import zarr

from tests.engine.helpers import write_model
from tests.s3 import S3Bucket  # the fixtures s3_server (one per session) and s3_bucket come from conftest
from tiler.cli import main as cli_main
from tiler.config import load_config
from tiler.io.atomic import TMP_PREFIX, atomic_path
from tiler.io.objects import ObjectPath
from tiler.io.scenes_files import write_satellite
from tiler.io.store.layout import STATE_DIR
from tiler.job.outputs import output_paths
from tiler.scenes import satellite_scene
from tiler.segment import run_segment

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 240
TILER = "import sys; from tiler.cli import entry; entry(sys.argv[1:])"
STORE_KEY = "out/scene.zarr"
LOCK_KEY = "out/.scene.zarr.lock"
COG_KEY = f"out/{output_paths(Path(STORE_KEY))['cog'].name}"  # out/scene.cog.tif
BLOCKS = f"{STORE_KEY}/{STATE_DIR}/blocks/"
SMALL_BLOCKS: dict[str, Any] = {"block": 32, "batch_size": 1}
"""The job cut into 64 blocks of 32×32 (one chunk each), one tile a batch: seconds of blocks to kill the job in."""
BUSY = r"being written by job|another job"
"""How a job refused because another one holds (or held) the output says so."""


@dataclass(frozen=True)
class Scene:
    """The job's local files: a 4-band satellite scene (256×256, uint16) and the tiny model's checkpoint."""

    image: Path
    model: Path


@dataclass(frozen=True)
class Reference:
    """A job run to a local folder: its labels and its COG."""

    labels: np.ndarray
    cog: Path


def write_job(
    root: Path, scene: Scene, *, output: str, image: str | None = None, overlap: int = 8, block: int = 64,
    chunks: int = 32, batch_size: int = 4,
) -> Path:  # fmt: skip
    """The job's YAML in ``root/job.yaml``: ``image`` (default: the local scene) to ``output``, exporting a COG."""
    data: dict[str, Any] = {
        "input": {"path": image or str(scene.image)},
        "model": {"weights": str(scene.model), "batch_size": batch_size, "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [overlap, overlap], "block": [block, block]},
        "engine": {"actors": 1},
        "output": {"path": output, "chunks": [chunks, chunks], "exports": ["cog"]},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def user_env() -> dict[str, str]:
    """This process's environment now (the user's shell), without the session Ray's address: a ``tiler`` started
    with it starts its own embedded Ray, whose workers take the AWS variables set here."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def run_tiler(*args: str) -> subprocess.CompletedProcess[str]:
    """``tiler <args>`` in a new process with this process's environment now (the user's shell)."""
    return subprocess.run([sys.executable, "-c", TILER, *args], cwd=REPO, env=user_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)  # fmt: skip


def run_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``tiler --quiet <args>`` in this process: its exit code and stderr. A run here must finish on this process's
    threads (the ``finish_in_this_process`` fixture): finishing processes started before the test set the AWS
    variables would not see them."""
    capsys.readouterr()
    code = cli_main(["--quiet", *args])
    return code, capsys.readouterr().err


def start_tiler(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``tiler <args>`` started in its own process group (killed with its workers), stdout and stderr to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", TILER, *args], cwd=REPO, env=user_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def wait(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, str]:
    """The exit code and output of a started ``tiler``; its process group is killed if it hangs."""
    try:
        code = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"tiler hung for {RUN_TIMEOUT} s: {log.read_text(errors='replace')[-2000:]}")
    return code, log.read_text(errors="replace")


def verify(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``tiler --quiet verify <url>`` in this process: its exit code and what it printed."""
    capsys.readouterr()
    code = cli_main(["--quiet", "verify", url])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def keys_under(bucket: S3Bucket, prefix: str = "") -> list[str]:
    """Every key in the bucket starting with ``prefix``, sorted (all pages of the listing)."""
    pages = bucket.server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def temporaries(bucket: S3Bucket) -> list[str]:
    """The keys with a segment named like a temporary of :mod:`tiler.io.atomic` (``.tiler-tmp-…``)."""
    return [key for key in keys_under(bucket) if any(part.startswith(TMP_PREFIX) for part in key.split("/"))]


def get_bytes(bucket: S3Bucket, key: str) -> bytes:
    return bytes(bucket.server.client().get_object(Bucket=bucket.name, Key=key)["Body"].read())


def download(bucket: S3Bucket, prefix: str, folder: Path) -> Path:
    """Every object under ``prefix/`` copied to ``folder`` (its keys relative to the prefix as file paths)."""
    client = bucket.server.client()
    for key in keys_under(bucket, prefix.rstrip("/") + "/"):
        target = folder / key[len(prefix.rstrip("/")) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket.name, key, str(target))
    return folder


def stored_group(bucket: S3Bucket, folder: Path) -> Any:
    """The store ``out/scene.zarr`` of ``bucket`` as read back: downloaded to ``folder`` and opened with zarr."""
    assert f"{STORE_KEY}/zarr.json" in keys_under(bucket, STORE_KEY), "the store has no zarr.json in the bucket"
    return zarr.open_group(str(download(bucket, STORE_KEY, folder)), mode="r")


def stored_labels(bucket: S3Bucket, folder: Path) -> np.ndarray:
    """The labels of the bucket's store, which must be marked complete."""
    group = stored_group(bucket, folder)
    assert group.attrs.get("complete") is True
    return np.asarray(group["labels"][...])


def problem_lines(err: str) -> list[str]:
    """The lines of a refusal but a configuration error's heading (``1 problem in the configuration:``)."""
    return [line for line in err.splitlines() if not line.endswith("problem in the configuration:")]


def put_lock(bucket: S3Bucket, *, age: float) -> bytes:
    """A lock object of another host's job at ``out/.scene.zarr.lock``, taken and last beaten ``age`` seconds ago."""
    stamp = time.time() - age
    body = json.dumps({"owner": "another job", "pid": 1, "host": "some-other-host", "time": stamp,
                       "heartbeat": stamp}).encode()  # fmt: skip
    bucket.server.client().put_object(Bucket=bucket.name, Key=LOCK_KEY, Body=body)
    return body


def run_local(root: Path, scene: Scene, **options: Any) -> Reference:
    """The job written to ``root/scene.zarr`` in this process (no AWS variable matters to it)."""
    store = root / "scene.zarr"
    run_segment(load_config(write_job(root, scene, output=str(store), **options)), engine="local", quiet=True)
    group: Any = zarr.open_group(str(store), mode="r")
    assert group.attrs["complete"] is True
    return Reference(np.asarray(group["labels"][...]), Path(str(output_paths(store)["cog"])))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    root = tmp_path_factory.mktemp("scene")
    generated = satellite_scene((256, 256), seed=3, bands=4)
    write_satellite(generated, root / "scene.tif", root / "truth.tif", block=64)
    return Scene(root / "scene.tif", write_model(root / "model.pt", in_channels=4, classes=generated.num_classes))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, scene: Scene) -> Reference:
    """The job (overlap 8, 64-px blocks) to a local folder."""
    return run_local(tmp_path_factory.mktemp("reference"), scene)


@pytest.fixture(scope="module")
def reference_overlap4(tmp_path_factory: pytest.TempPathFactory, scene: Scene) -> Reference:
    """The job with ``tiling.overlap: 4`` to a local folder: other pixels than :func:`reference`."""
    return run_local(tmp_path_factory.mktemp("reference-overlap4"), scene, overlap=4)


@pytest.fixture(scope="module")
def reference_small_blocks(tmp_path_factory: pytest.TempPathFactory, scene: Scene) -> Reference:
    """The job cut into 32-px blocks (:data:`SMALL_BLOCKS`) to a local folder."""
    return run_local(tmp_path_factory.mktemp("reference-small"), scene, **SMALL_BLOCKS)


def read_cog(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(path) as src:
        return src.read(), {"crs": src.crs, "transform": src.transform, "dtypes": src.dtypes}


# ---------------------------------------------------------------------------------------------------
# a job written to a bucket


def test_a_job_with_its_output_in_a_bucket_writes_the_labels_and_cog_of_the_local_run_and_leaves_no_temporary_or_lock(
    s3_bucket: S3Bucket,
    scene: Scene,
    reference: Reference,
    tmp_path: Path,
) -> None:
    image = s3_bucket.upload(scene.image, "in/scene.tif")  # the input in the bucket too
    config = write_job(tmp_path / "job", scene, output=s3_bucket.url(STORE_KEY), image=image)
    proc = run_tiler("--quiet", "run", str(config))  # the default engine: Ray actors write the chunks to the bucket
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.array_equal(stored_labels(s3_bucket, tmp_path / "store"), reference.labels)
    assert COG_KEY in keys_under(s3_bucket, "out/")
    (tmp_path / "cog").mkdir()
    s3_bucket.server.client().download_file(s3_bucket.name, COG_KEY, str(tmp_path / "cog" / "scene.cog.tif"))
    pixels, profile = read_cog(tmp_path / "cog" / "scene.cog.tif")
    expected_pixels, expected_profile = read_cog(reference.cog)
    assert profile == expected_profile
    assert np.array_equal(pixels, expected_pixels)
    assert temporaries(s3_bucket) == []
    assert LOCK_KEY not in keys_under(s3_bucket)
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["job.yaml"]  # nothing written beside the config


# ---------------------------------------------------------------------------------------------------
# the job lock in the bucket


def test_a_live_jobs_lock_in_the_bucket_refuses_the_run_in_one_line_naming_it_before_any_store_object(
    s3_bucket: S3Bucket,
    scene: Scene,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lock = put_lock(s3_bucket, age=0)
    url = s3_bucket.url(STORE_KEY)
    config = write_job(tmp_path, scene, output=url)
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    err = capsys.readouterr().err.strip()
    assert code != 0, err
    assert len(problem_lines(err)) == 1, err
    assert url in err and "another job" in err, err
    assert f"{STORE_KEY}/zarr.json" not in keys_under(s3_bucket)
    assert keys_under(s3_bucket, STORE_KEY + "/") == []  # no object of the store at all
    assert get_bytes(s3_bucket, LOCK_KEY) == lock  # the holder's lock untouched


def test_a_lock_whose_heartbeat_is_an_hour_old_is_taken_over_and_the_run_completes(
    s3_bucket: S3Bucket,
    scene: Scene,
    reference: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    finish_in_this_process: None,
) -> None:
    put_lock(s3_bucket, age=3600)
    config = write_job(tmp_path / "job", scene, output=s3_bucket.url(STORE_KEY))
    code, err = run_here(capsys, "run", str(config), "--engine", "local")
    assert code == 0, err[-3000:]
    assert np.array_equal(stored_labels(s3_bucket, tmp_path / "store"), reference.labels)
    assert LOCK_KEY not in keys_under(s3_bucket)  # taken over, then released


def test_two_jobs_started_at_once_on_one_bucket_output_never_both_succeed_and_the_store_is_one_of_them_whole(
    s3_bucket: S3Bucket,
    scene: Scene,
    reference: Reference,
    reference_overlap4: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = s3_bucket.url(STORE_KEY)
    jobs = {
        "overlap8": (write_job(tmp_path / "overlap8", scene, output=url), reference),
        "overlap4": (write_job(tmp_path / "overlap4", scene, output=url, overlap=4), reference_overlap4),
    }
    assert not np.array_equal(reference.labels, reference_overlap4.labels)  # the two jobs' pixels differ
    started = {name: start_tiler(tmp_path / f"{name}.log", "--quiet", "run", str(config), "--engine", "local")
               for name, (config, _) in jobs.items()}  # fmt: skip
    ended = {name: wait(proc, tmp_path / f"{name}.log") for name, proc in started.items()}
    succeeded = [name for name, (code, _) in ended.items() if code == 0]
    assert succeeded, "\n".join(f"{name}: {log[-1500:]}" for name, (_, log) in ended.items())
    for name, (code, log) in ended.items():
        if code != 0:
            assert re.search(BUSY, log), f"{name} failed without naming the other job: {log[-2000:]}"
    code, report = verify(url, capsys)
    assert code == 0, report
    labels = stored_labels(s3_bucket, tmp_path / "store")
    for name in succeeded:  # every job that said it wrote the store finds its own pixels there, unmixed
        assert np.array_equal(labels, jobs[name][1].labels), f"{name} exited 0 but the store holds other pixels"
    assert LOCK_KEY not in keys_under(s3_bucket)
    assert temporaries(s3_bucket) == []


# ---------------------------------------------------------------------------------------------------
# a job killed mid-run resumes from the bucket


def test_a_job_sigkilled_mid_run_resumes_from_the_bucket_keeping_its_finished_blocks_and_ends_equal_to_the_reference(
    s3_bucket: S3Bucket,
    scene: Scene,
    reference_small_blocks: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = s3_bucket.url(STORE_KEY)
    config = write_job(tmp_path / "job", scene, output=url, **SMALL_BLOCKS)
    log = tmp_path / "killed.log"
    proc = start_tiler(log, "--quiet", "run", str(config), "--engine", "local")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(key.endswith(".json") for key in keys_under(s3_bucket, BLOCKS)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, (
            f"the job ended (exit {proc.returncode}) before a block record appeared in the bucket to kill it "
            f"after: {log.read_text(errors='replace')[-2000:]}"
        )
        assert time.monotonic() < deadline, "no block record appeared in the bucket within 120 s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    records = {key: get_bytes(s3_bucket, key) for key in keys_under(s3_bucket, BLOCKS) if key.endswith(".json")}
    assert 0 < len(records) < 64  # killed with blocks done and blocks to do
    assert not stored_group(s3_bucket, tmp_path / "killed").attrs.get("complete", False)

    rerun = run_tiler("--quiet", "run", str(config), "--engine", "local")  # takes over the dead job's lock
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert np.array_equal(stored_labels(s3_bucket, tmp_path / "store"), reference_small_blocks.labels)
    assert {key: get_bytes(s3_bucket, key) for key in records} == records  # finished blocks kept, not recomputed
    code, report = verify(url, capsys)
    assert code == 0, report
    assert LOCK_KEY not in keys_under(s3_bucket)
    assert temporaries(s3_bucket) == []


# ---------------------------------------------------------------------------------------------------
# uploads: whole or nothing under the final key


MIB = 2**20


def test_a_multipart_upload_interrupted_after_two_parts_leaves_no_object_at_its_key(
    s3_bucket: S3Bucket,
) -> None:
    import obstore

    target = ObjectPath(s3_bucket.url("out/big.bin"))

    def parts() -> Iterator[bytes]:
        yield b"a" * (5 * MIB)
        yield b"b" * (5 * MIB)
        raise RuntimeError("the writer died mid-upload")

    with pytest.raises(Exception, match="mid-upload|died"):
        obstore.put(target.store, target.key, parts())
    assert target.head() is None
    assert not [k for k in keys_under(s3_bucket) if not k.startswith("inputs/")]


def test_atomic_path_to_a_bucket_key_puts_nothing_there_when_the_writer_fails_and_the_whole_file_when_it_ends(
    s3_bucket: S3Bucket,
) -> None:
    target = ObjectPath(s3_bucket.url("out/x.tif"))
    data = os.urandom(6 * MIB)  # above the multipart threshold: parts, completed last
    with pytest.raises(RuntimeError, match="export interrupted"):
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(data)
            raise RuntimeError("export interrupted")
    assert not Path(tmp).exists() and target.head() is None and keys_under(s3_bucket) == []
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
    assert not Path(tmp).exists()
    head = target.head()
    assert head is not None and head["size"] == len(data)
    assert get_bytes(s3_bucket, "out/x.tif") == data
    assert keys_under(s3_bucket) == ["out/x.tif"]


# ---------------------------------------------------------------------------------------------------
# tiler verify on a bucket, and the repair


def test_verify_finds_a_chunk_object_deleted_from_the_bucket_a_rerun_repairs_it_and_a_swapped_chunk_is_found(
    s3_bucket: S3Bucket,
    scene: Scene,
    reference: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    finish_in_this_process: None,
) -> None:
    url = s3_bucket.url(STORE_KEY)
    config = write_job(tmp_path / "job", scene, output=url)
    code, err = run_here(capsys, "run", str(config), "--engine", "local")
    assert code == 0, err[-3000:]
    code, report = verify(url, capsys)
    assert code == 0, report
    chunks = keys_under(s3_bucket, f"{STORE_KEY}/labels/c/")
    assert len(chunks) == 64  # 256×256 in 32×32 chunks
    lost = chunks[len(chunks) // 2]
    s3_bucket.server.client().delete_object(Bucket=s3_bucket.name, Key=lost)
    code, report = verify(url, capsys)
    assert code != 0, report
    assert lost[len(STORE_KEY) + 1 :] in report and "missing" in report, report  # labels/c/<i>/<j>, missing
    code, err = run_here(capsys, "run", str(config), "--engine", "local")
    assert code == 0, err[-3000:]
    assert lost in keys_under(s3_bucket, f"{STORE_KEY}/labels/c/")
    code, report = verify(url, capsys)
    assert code == 0, report
    assert np.array_equal(stored_labels(s3_bucket, tmp_path / "store"), reference.labels)
    client = s3_bucket.server.client()
    source, victim = next((a, b) for a, b in zip(chunks, chunks[1:], strict=False)
                          if get_bytes(s3_bucket, a) != get_bytes(s3_bucket, b))  # fmt: skip
    client.put_object(Bucket=s3_bucket.name, Key=victim, Body=get_bytes(s3_bucket, source))  # a valid chunk, swapped
    code, report = verify(url, capsys)
    row, col = (int(n) * 32 // 64 for n in victim.rsplit("/", 2)[-2:])  # 32-px chunks in 64-px blocks
    assert code != 0 and f"block(s) to recompute ({row}_{col})" in report, report


# ---------------------------------------------------------------------------------------------------
# outputs that cannot be written


def test_an_https_output_is_refused_in_one_line_naming_output_path_and_the_writable_schemes(
    scene: Scene, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_job(tmp_path, scene, output="https://host/x.zarr")
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    err = capsys.readouterr().err.strip()
    assert code != 0, err
    assert len(problem_lines(err)) == 1, err
    assert "output.path" in err, err
    assert all(scheme in err for scheme in ("s3://", "gs://", "az://")), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def test_an_output_in_a_bucket_that_does_not_exist_is_refused_in_one_line_naming_its_url(
    s3_bucket: S3Bucket,
    scene: Scene,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = f"tiler-no-such-bucket-{uuid.uuid4().hex[:8]}"
    config = write_job(tmp_path, scene, output=f"s3://{missing}/out/scene.zarr")
    code = cli_main(["--quiet", "run", str(config), "--engine", "local"])
    err = capsys.readouterr().err.strip()
    assert code != 0, err
    assert len(problem_lines(err)) == 1, err
    assert f"s3://{missing}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]
    assert keys_under(s3_bucket) == []  # nothing went to the bucket the environment can reach either


# ---------------------------------------------------------------------------------------------------
# an archive whose root is a bucket


def write_archive(root: Path, scene: Scene, *, bucket: S3Bucket, ledger: Path | None) -> Path:
    """Two inputs ``a.tif`` and ``b.tif`` (the scene twice) in the bucket, listed by a manifest there (relative
    lines), into ``s3://<bucket>/nightly`` with COGs and STAC Items."""
    for stem in ("a", "b"):
        bucket.upload(scene.image, f"inputs/{stem}.tif")
    bucket.server.client().put_object(Bucket=bucket.name, Key="inputs/manifest.txt", Body=b"# tonight\na.tif\nb.tif\n")
    root.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "archive": {"root": f"s3://{bucket.name}/nightly", "manifest": f"s3://{bucket.name}/inputs/manifest.txt",
                    **({"ledger": str(ledger)} if ledger else {})},  # fmt: skip
        "input": {},
        "model": {"weights": str(scene.model), "batch_size": 4, "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "engine": {"actors": 1},
        "output": {"chunks": [32, 32], "exports": ["cog", "stac"]},
    }
    path = root / "archive.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_archive_into_a_bucket_writes_every_store_item_collection_and_report_there_and_skips_them_on_rerun(
    s3_bucket: S3Bucket,
    scene: Scene,
    reference: Reference,
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "state" / "nightly.sqlite"
    config = write_archive(tmp_path, scene, bucket=s3_bucket, ledger=ledger)
    first = run_tiler("--quiet", "archive", str(config), "--engine", "local")
    assert first.returncode == 0, first.stderr[-3000:]
    keys = keys_under(s3_bucket, "nightly/")
    for stem in ("a", "b"):
        assert f"nightly/{stem}/{stem}.zarr/zarr.json" in keys and f"nightly/{stem}/{stem}.cog.tif" in keys
        group = zarr.open_group(str(download(s3_bucket, f"nightly/{stem}/{stem}.zarr", tmp_path / stem)), mode="r")
        assert group.attrs["complete"] is True
        np.testing.assert_array_equal(np.asarray(group["labels"][...]), reference.labels)
    collection = json.loads(get_bytes(s3_bucket, "nightly/collection.json"))
    items = sorted(link["href"] for link in collection["links"] if link["rel"] == "item")
    assert items == ["./a/a.stac.json", "./b/b.stac.json"]
    assert "nightly/latest.json" in keys and ledger.is_file()
    assert not [k for k in keys if k.endswith(".sqlite")], "the ledger must stay local"
    assert temporaries(s3_bucket) == []
    before = {k: get_bytes(s3_bucket, k) for k in keys if "/labels/" in k}
    again = run_tiler("--quiet", "archive", str(config), "--engine", "local")
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(get_bytes(s3_bucket, "nightly/latest.json"))
    assert sorted(item["status"] for item in report["items"]) == ["skipped", "skipped"], report["items"]
    assert {k: get_bytes(s3_bucket, k) for k in keys if "/labels/" in k} == before


def test_an_archive_root_in_a_bucket_without_a_local_ledger_is_refused_in_one_line_naming_archive_ledger(
    s3_bucket: S3Bucket,
    scene: Scene,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_archive(tmp_path, scene, bucket=s3_bucket, ledger=None)
    code = cli_main(["--quiet", "archive", str(config)])
    err = capsys.readouterr().err
    assert code != 0
    lines = problem_lines(err.strip())
    assert len(lines) == 1 and "archive.ledger" in lines[0] and f"s3://{s3_bucket.name}/nightly" in lines[0], err
    assert not [k for k in keys_under(s3_bucket) if not k.startswith("inputs/")]


# ---------------------------------------------------------------------------------------------------
# model weights read from a bucket


def test_model_weights_in_a_bucket_are_read_through_a_local_cache_and_give_the_local_models_labels_and_hash(
    s3_bucket: S3Bucket,
    scene: Scene,
    reference: Reference,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    finish_in_this_process: None,
) -> None:
    from tiler.config import pixels_hash

    cache = tmp_path / "cache"
    monkeypatch.setenv("TILER_CACHE_DIR", str(cache))
    s3_bucket.upload(scene.model, "models/model.pt")
    config = write_job(tmp_path / "job", scene, output=str(tmp_path / "out" / "scene.zarr"))
    data = yaml.safe_load(config.read_text())
    data["model"]["weights"] = f"s3://{s3_bucket.name}/models/model.pt"
    config.write_text(yaml.safe_dump(data))
    code, err = run_here(capsys, "run", str(config), "--engine", "local")
    assert code == 0, err[-3000:]
    group: Any = zarr.open_group(str(tmp_path / "out" / "scene.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(group["labels"][...]), reference.labels)
    copies = sorted(p for p in (cache / "models").rglob("*") if p.is_file())
    assert [p.read_bytes() for p in copies] == [scene.model.read_bytes()], copies
    local = write_job(tmp_path / "local", scene, output=str(tmp_path / "out" / "scene.zarr"))
    assert group.attrs["pixels_hash"] == pixels_hash(load_config(local)), "a bucket model must hash as its content"


def test_a_store_creation_killed_mid_upload_is_cleared_by_the_next_one_but_an_object_tiler_did_not_write_is_refused(
    s3_bucket: S3Bucket,
) -> None:
    from tiler.errors import OutputError
    from tiler.io.store import OutputStore

    client = s3_bucket.server.client()
    args: dict[str, Any] = {"shape": (64, 64), "num_classes": 3, "chunks": (32, 32), "pixels_hash": "p1"}
    client.put_object(Bucket=s3_bucket.name, Key=f"{STORE_KEY}/labels/zarr.json", Body=b"{}")  # no group: killed
    store = OutputStore.create(f"s3://{s3_bucket.name}/{STORE_KEY}", **args)
    assert store.complete is False and store.shape == (64, 64)
    assert f"{STORE_KEY}/zarr.json" in keys_under(s3_bucket, STORE_KEY)
    client.put_object(Bucket=s3_bucket.name, Key="mine.zarr/notes.txt", Body=b"a user's file")
    with pytest.raises(OutputError, match="not a tiler output store"):
        OutputStore.create(f"s3://{s3_bucket.name}/mine.zarr", **args)
    assert keys_under(s3_bucket, "mine.zarr") == ["mine.zarr/notes.txt"]


def test_the_holder_of_a_lock_object_renews_its_heartbeat_and_removes_it_when_released(
    s3_bucket: S3Bucket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tiler.io import lock as lock_module

    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.1)
    url = f"s3://{s3_bucket.name}/{STORE_KEY}"
    with lock_module.store_lock(url, "heartbeat test"):
        first = json.loads(get_bytes(s3_bucket, LOCK_KEY))
        deadline = time.monotonic() + 10
        while json.loads(get_bytes(s3_bucket, LOCK_KEY))["heartbeat"] == first["heartbeat"]:
            assert time.monotonic() < deadline, "the heartbeat was never renewed"
            time.sleep(0.05)
        assert json.loads(get_bytes(s3_bucket, LOCK_KEY))["owner"] == "heartbeat test"
    assert LOCK_KEY not in keys_under(s3_bucket)
