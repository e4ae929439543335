"""The README's recipes run as written after `make demo`: every line of "Using it" and the Python snippet.

They run in a copy of the layout they assume (``configs/`` and ``demo-output/`` in a temporary folder), made
by the demo's own code on small scenes, with demo models of the demo's network trained for two steps (the
demo reuses a checkpoint whose network is its own, as it would after ``make demo``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tiler.demo import run_demo
from tiler.model.train import DOMAINS, demo_config, train

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent
# Small scenes (pixels per axis) and training set-ups for each domain: seconds, not minutes.
SIZES = {"satellite": 512, "slide": 512, "ct": 64}
TINY: dict[str, dict[str, Any]] = {
    "satellite": {"scene_shape": (96, 96), "crop": (64, 64)},
    "slide": {"scene_shape": (96, 96), "crop": (64, 64)},
    "ct": {"scene_shape": (16, 64, 64), "crop": (16, 32, 32)},
}


def fenced_block(text: str, heading: str, language: str) -> str:
    """The first ```language block after the line ``heading``, before the next heading of that level or above.

    >>> fenced_block("## A\\n```bash\\nls\\n```\\n## B\\n", "## A", "bash")
    'ls\\n'
    """
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        raise AssertionError(f"README has no heading {heading!r}")
    level = len(heading) - len(heading.lstrip("#"))
    body: list[str] | None = None
    for line in lines[start + 1 :]:
        if body is None:
            if re.match(rf"#{{1,{level}}} ", line):
                break
            if line.rstrip() == f"```{language}":
                body = []
        elif line.rstrip() == "```":
            return "".join(body)
        else:
            body.append(line)
    raise AssertionError(f"README has no ```{language} block under {heading!r}")


def shell_commands(block: str) -> list[str]:
    """The commands of a bash block: backslash continuations joined, blank and comment-only lines left out.

    >>> shell_commands("a \\\\\\n  b   # c\\n\\n# d\\ne\\n")
    ['a b   # c', 'e']
    """
    commands, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        full = (pending + line.strip()).strip()
        pending = ""
        if full and not full.startswith("#"):
            commands.append(full)
    return commands


def test_the_readme_blocks_are_found() -> None:
    text = README.read_text()
    commands = shell_commands(fenced_block(text, "## Using it", "bash"))
    assert {c.split()[1] for c in commands} >= {"run", "inspect", "score", "train", "archive", "verify"}
    assert all(c.startswith("tiler ") for c in commands), commands
    assert "tiler.run(" in fenced_block(text, "### Use it from Python", "python")


@pytest.fixture(scope="module")
def demo_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``configs/`` and the ``demo-output/`` that `make demo` and `tiler demo --domain ...` write."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "configs", root / "configs")
    out = root / "demo-output"
    for domain in DOMAINS:  # `make demo` (satellite), `tiler demo --domain ct`, `tiler demo --domain slide`
        weights = out / "models" / f"{domain}-demo.pt"
        train(demo_config(domain, out=str(weights), steps=2, batch_size=2, train_seeds=(1,), **TINY[domain]))
        trained = weights.stat().st_mtime_ns
        result = run_demo(domain, out=out, size=SIZES[domain], quiet=True, engine="local")
        assert weights.stat().st_mtime_ns == trained, "the demo retrained the model: it is not the demo's network"
        assert Path(result.store) == out / domain / "labels.zarr"
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["RAY_ADDRESS"] = "local"  # a private embedded Ray, never a cluster another process left running
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # `tiler` is this environment's
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.slow
def test_every_using_it_command_runs_as_written(demo_layout: Path) -> None:
    commands = shell_commands(fenced_block(README.read_text(), "## Using it", "bash"))
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command], cwd=demo_layout, env=_env(), capture_output=True, text=True, timeout=300,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"README command failed (exit {done.returncode}): {command}\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_the_python_snippet_runs_as_written(demo_layout: Path) -> None:
    script = demo_layout / "readme_snippet.py"  # a file, as a user saves it (worker processes import it again)
    script.write_text(fenced_block(README.read_text(), "### Use it from Python", "python"))
    done = subprocess.run(
        [sys.executable, script.name], cwd=demo_layout, env=_env(), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"README Python snippet failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
