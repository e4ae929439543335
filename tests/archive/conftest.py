"""Fixtures of the archive tests: the prepared archive folder, written once per module, and a fresh copy per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.archive.helpers import write_archive_dir
from tests.engine.helpers import local_finishing_on
from tiler.engine.finishing import ProcessFinisher
from tiler.job.finish import FINISH_MODULES


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive folder of :func:`write_archive_dir`, written once for the module (never run: tests copy it)."""
    return write_archive_dir(tmp_path_factory.mktemp("archive-template"))


@pytest.fixture(scope="module")
def finisher() -> Iterator[ProcessFinisher]:
    """One pool of finishing processes for the module's in-process runs (see :func:`local_finishing_on`)."""
    pool = ProcessFinisher(2, FINISH_MODULES)
    yield pool
    pool.close()


@pytest.fixture
def archive_dir(prepared: Path, finisher: ProcessFinisher, tmp_path: Path) -> Iterator[Path]:
    """scenes/a.tif and b.tif (with truth) and the corrupt c.tif, a tiny model and the archive file.

    A fresh copy of the prepared folder (nothing run yet: its inputs are new files), the test's to change.
    """
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    with local_finishing_on(finisher):
        yield tmp_path
