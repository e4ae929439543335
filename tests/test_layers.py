"""Imports only go down the layers (ARCHITECTURE.md): checked on the source, module by module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

TILER = Path(__file__).resolve().parents[1] / "tiler"
FILE_LIBRARIES = ("zarr", "rasterio", "nibabel", "tifffile", "openslide")


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


def _uses(names: set[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in names)


@pytest.mark.parametrize("path", modules(TILER / "metrics"), ids=lambda p: p.name)
def test_metrics_opens_no_file_itself(path: Path) -> None:
    found = [lib for lib in FILE_LIBRARIES if _uses(imports(path), lib)]
    assert not found, f"{path.name} imports {found}: label maps come from tiler.io (open_labels, Georef.same_grid)"


@pytest.mark.parametrize("path", modules(TILER), ids=lambda p: str(p.relative_to(TILER)))
def test_nothing_in_tiler_imports_pipelines(path: Path) -> None:
    assert not _uses(imports(path), "pipelines"), f"{path} imports pipelines (an arrow pointing up)"


@pytest.mark.parametrize("path", modules(TILER), ids=lambda p: str(p.relative_to(TILER)))
def test_only_the_command_line_imports_command_modules(path: Path) -> None:
    commands = ("tiler.metrics.cli", "tiler.archive.cli", "tiler.cli", "tiler.model.cli")
    allowed = {"cli.py"} if path.parent == TILER else {"cli.py", "__init__.py"}
    if path.name in allowed:
        return
    used = [name for name in commands if name in imports(path)]
    assert not used, f"{path} imports the command module(s) {used}; import the library function instead"


def test_the_output_store_takes_its_palette_from_one_place() -> None:
    assert not any(_uses(imports(p), "matplotlib") for p in (TILER / "io" / "store").glob("*.py"))


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


CONFIG_ORDER = (
    "problems", "fields", "sections", "model_section", "schema", "messages", "files", "overrides", "completion",
    "loading",
    "identity",
)  # fmt: skip
"""The modules of tiler.config, lowest first: each imports only modules before it."""


@pytest.mark.parametrize("name", CONFIG_ORDER)
def test_the_config_package_imports_only_downward(name: str) -> None:
    used = {n.split(".")[2] for n in imports(TILER / "config" / f"{name}.py") if n.startswith("tiler.config.")}
    above = used - set(CONFIG_ORDER[: CONFIG_ORDER.index(name)])
    assert not above, f"tiler.config.{name} imports {sorted(above)}, which sit above it (or beside it)"


def test_every_config_module_is_placed() -> None:
    found = {p.stem for p in (TILER / "config").glob("*.py")} - {"__init__"}
    assert found == set(CONFIG_ORDER)


def test_the_config_package_loads_no_heavy_library() -> None:
    code = "import sys, json, tiler.config; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=TILER.parent, capture_output=True, text=True, check=True)
    assert not set(json.loads(out.stdout)) & {"torch", "dask", "zarr", "rasterio", "ray", "monai"}


@pytest.mark.parametrize("path", modules(TILER / "exports"), ids=lambda p: p.name)
def test_the_export_registry_sits_just_above_io(path: Path) -> None:
    above = ("tiler.engine", "tiler.job", "tiler.config", "tiler.segment", "tiler.archive", "tiler.cli", "tiler.model")
    used = [name for name in imports(path) if any(_uses({name}, layer) for layer in above)]
    assert not used, f"{path.name} imports {used}: an export format knows the store and io, nothing above them"
    found = [lib for lib in FILE_LIBRARIES if any(n.split(".")[0] == lib for n in imports(path))]
    assert not found, f"{path.name} imports {found}: writers live in tiler.io, imported when an export runs"
