"""Imports only go down the layers (ARCHITECTURE.md), and a rule written once stays written once.

The import rules are import-linter contracts in ``pyproject.toml`` (``make lint`` runs them too); these tests run
them, and show each contract breaks when a module imports against it.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

TILER = Path(__file__).resolve().parents[1] / "tiler"


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (import-linter) on the project at ``root``, with the contracts of its ``pyproject.toml``."""
    tool = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(tool), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, check=False)


def contracts() -> list[dict[str, Any]]:
    """The import-linter contracts of ``pyproject.toml``."""
    return tomllib.loads((TILER.parent / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold() -> None:
    done = lint_imports(TILER.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Contracts: {len(contracts())} kept, 0 broken." in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("metrics/confusion.py", "import rasterio", "Metrics open no file themselves"),
        ("io/store/layout.py", "import matplotlib", "The output store takes its palette from one place"),
        ("exports/base.py", "import tiler.job.finish", "An export format knows the store and io"),
        ("config/fields.py", "import tiler.config.schema", "The config package imports only downward"),
        ("geometry.py", "import pipelines.segment", "The library never imports the job entry points"),
        ("io/base.py", "from tiler.cli import main", "Nothing imports the command line"),
        ("geometry.py", "import tiler.io.base", "No import cycle"),
    ],
)
def test_an_import_against_a_contract_breaks_it(tmp_path: Path, module: str, line: str, contract: str) -> None:
    root = tmp_path / "project"
    for name in ("tiler", "pipelines"):
        shutil.copytree(TILER.parent / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(TILER.parent / "pyproject.toml", root / "pyproject.toml")
    target = root / "tiler" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _against_a_contract() -> None:\n    {line}\n")
    done = lint_imports(root)
    assert done.returncode != 0
    name = next(c["name"] for c in contracts() if c["name"].startswith(contract))
    assert f"{name} BROKEN" in " ".join(done.stdout.split()), done.stdout[-3000:]  # names wrap at 80 columns


def test_training_scores_with_tiler_metrics() -> None:
    source = (TILER / "model" / "train.py").read_text(encoding="utf-8")
    assert "np.bincount" not in source and "def fwiou" not in source
    assert "tiler.metrics" in imports(TILER / "model" / "train.py")


@pytest.mark.parametrize("path", modules(TILER), ids=lambda p: str(p.relative_to(TILER)))
def test_the_remote_path_rule_is_written_once(path: Path) -> None:
    if path == TILER / "paths.py":
        return
    source = path.read_text(encoding="utf-8")
    assert 'startswith("/vsi")' not in source and '"://" in' not in source, (
        f"{path} decides local/remote itself; use tiler.paths.is_remote"
    )


@pytest.mark.parametrize("path", [*modules(TILER), *modules(TILER.parent / "bench")], ids=lambda p: p.name)
def test_windows_over_an_image_come_from_the_geometry(path: Path) -> None:
    if path == TILER / "geometry.py":
        return
    source = path.read_text(encoding="utf-8")
    hand_written = ("range(0, n, b) for n, b in zip(shape", "range(0, n, s) for n, s in zip(shape", "range(0, size, ")
    assert not any(text in source for text in hand_written), (
        f"{path} iterates windows by hand; use tiler.geometry.BlockPartition(shape, size)"
    )


def test_every_config_module_is_placed_in_the_layers_contract() -> None:
    layers = next(c["layers"] for c in contracts() if c.get("containers") == ["tiler.config"])
    assert {p.stem for p in (TILER / "config").glob("*.py")} - {"__init__"} == set(layers)


def test_the_config_package_loads_no_heavy_library() -> None:
    code = "import sys, json, tiler.config; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=TILER.parent, capture_output=True, text=True, check=True)
    assert not set(json.loads(out.stdout)) & {"torch", "dask", "zarr", "rasterio", "ray", "monai"}
