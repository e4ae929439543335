"""The public face: ``import tiler`` is cheap, every public name resolves, and the docstring examples run."""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tiler

REPO = Path(__file__).resolve().parents[1]


def test_importing_tiler_loads_no_heavy_library() -> None:
    code = "import sys, json, tiler; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"torch", "ray", "rasterio", "zarr", "dask", "monai", "pydantic"}


@pytest.mark.parametrize("name", sorted(set(tiler.__all__) - {"__version__"}))
def test_every_public_name_resolves(name: str) -> None:
    from tiler import _LAZY

    value = getattr(tiler, name)
    assert name in dir(tiler)
    if name in _LAZY:  # the very object of the module the name is documented to come from
        module, _, attr = _LAZY[name].partition(":")
        assert value is getattr(importlib.import_module(module), attr or name)
    else:  # the error classes, imported eagerly
        assert value is getattr(importlib.import_module("tiler.errors"), name)


def test_public_names_are_the_library_objects() -> None:
    from tiler.metrics.files import score_paths
    from tiler.segment import run_many, run_segment

    assert tiler.run is run_segment and tiler.run_many is run_many and tiler.score is score_paths
    assert issubclass(tiler.ConfigError, tiler.TilerError) and issubclass(tiler.ReadError, OSError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tiler.nope  # noqa: B018


DOCUMENTED = [
    "tiler.geometry", "tiler.blend", "tiler.stitch", "tiler.paths", "tiler.palette", "tiler.jsonsafe",
    "tiler.errors", "tiler.io.base", "tiler.engine.plan", "tiler.label_rules", "tiler.io.objects", "tiler.job.outputs",
]  # fmt: skip


@pytest.mark.parametrize("module", DOCUMENTED)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module} has no example"
    assert result.failed == 0
