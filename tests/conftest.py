"""Shared fixtures: small random conv nets usable as tile models; one Ray, one S3 server, one Orthanc per session."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from tests.orthanc import orthanc  # noqa: F401 - registered once here: one Orthanc for the session
from tests.s3 import s3_bucket, s3_server  # noqa: F401 - registered once here: one moto server for the session

# Fixed examples on every run and every machine, as the rest of the suite fixes its seeds.
settings.register_profile("tiler", derandomize=True, deadline=None)
settings.load_profile("tiler")

DURATIONS = Path(__file__).with_name("durations.json")
"""Seconds each test file took (setup, calls and teardown), written by ``make test-durations``."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--write-durations", action="store_true", help=f"write each file's seconds to {DURATIONS}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first, so that two workers (``-n 2 --dist loadfile``) never end on one long file.

    A file :data:`DURATIONS` does not know yet counts as the longest. The order within a file is kept.
    """
    known = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    longest = max(known.values(), default=0.0)
    items.sort(key=lambda item: -known.get(item.nodeid.split("::")[0], longest))


_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    file = report.nodeid.split("::")[0]
    _seconds[file] = _seconds.get(file, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.getoption("--write-durations") and not hasattr(session.config, "workerinput"):
        DURATIONS.write_text(json.dumps({f: round(s, 1) for f, s in sorted(_seconds.items())}, indent=1) + "\n")


def conv_net(ndim: int, in_ch: int, classes: int, *, layers: int = 3, seed: int = 0) -> torch.nn.Module:
    """A tiny translation-equivariant conv net (3-wide kernels, zero padding, no strides).

    Its receptive-field radius is ``layers`` pixels.
    """
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    mods: list[torch.nn.Module] = []
    ch = in_ch
    for i in range(layers):
        out = classes if i == layers - 1 else 8
        mods.append(conv(ch, out, 3, padding=1))
        if i < layers - 1:
            mods.append(torch.nn.Tanh())
        ch = out
    mods.append(torch.nn.Softmax(dim=1))
    return torch.nn.Sequential(*mods).eval()


def as_predict(net: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a torch module as a numpy batch → probabilities function."""

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    return predict


@pytest.fixture(scope="session")
def torch_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():  # type: ignore[no-untyped-def]
    """One local Ray instance for the whole test session (2 CPUs, dashboard off)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


class ThreadFinisher:
    """A finisher running the steps on threads of the test's own process (:class:`tiler.engine.finishing.Finisher`).

    For tests that patch an export writer in this process to inject a fault: the product's finishers run steps in
    other processes, where the patch would not apply.
    """

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max(1, workers))

    def submit(self, fn, /, *args):  # type: ignore[no-untyped-def]
        return self.pool.submit(fn, *args)

    def warm(self) -> None:
        pass

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@pytest.fixture
def finish_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process engine finishes on threads of this process, so faults patched in here reach the writers."""
    from tiler.engine.executor import LocalExecutor

    monkeypatch.setattr(LocalExecutor, "finisher", lambda self, workers, preload=(): ThreadFinisher(workers))


@pytest.fixture(scope="session")
def copy_finished_job() -> Callable[[Path, Path], Path]:
    """``copy(src, dst)``: the job folder ``src`` (its stores and the files beside them) copied into ``dst``, as if
    the job had run there; returns ``dst``.

    For a test that changes or reruns a job another fixture already ran (copy first: that fixture's folder stays as
    it was for the tests after). Files are copied byte for byte with their times, so the digests a store keeps of
    its exports still vouch for them; a store names those files (and a killed job's intents theirs) by absolute
    path, so in the copy's stores the paths under ``src`` are renamed under ``dst``, as a run there would have
    written them. Inputs outside ``src`` (a module's shared scene and model) are named as they were.
    """
    import json
    import os
    import shutil

    from tiler.io.store.exports import write_intent

    def copy(src: Path, dst: Path) -> Path:
        src, dst = Path(src).resolve(), Path(dst).resolve()
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        old, new = f"{src}{os.sep}", f"{dst}{os.sep}"
        for store in (state.parent for state in dst.rglob(".tiler") if (state / "blocks").is_dir()):
            intents = store / ".tiler" / "intents"
            for meta in [store / "zarr.json", *(store / ".tiler").rglob("*.json")]:
                if meta.parent == intents or not meta.is_file():
                    continue
                text = meta.read_text()
                if old in text:
                    meta.write_text(text.replace(old, new))
            for intent in sorted(intents.glob("*.json")):  # named by a hash of the path: written again under dst
                record = json.loads(intent.read_text())
                if str(record["path"]).startswith(old):
                    intent.unlink()
                    write_intent(store, new + str(record["path"])[len(old):], record["digest"])
        return dst

    return copy
