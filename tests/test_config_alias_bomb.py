"""YAML alias bombs in job files (issue 17): refused quickly, in bounded memory, with a ConfigError."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tiler.config import load_config
from tiler.errors import ConfigError

_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time, tracemalloc
    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))  # a failure must not take the machine
    from tiler.config import load_config
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        load_config(sys.argv[1])
        out = {"error": None}
    except Exception as exc:  # noqa: BLE001
        out = {"error": type(exc).__name__, "message": str(exc)}
    out["seconds"] = time.perf_counter() - t0
    out["peak"] = tracemalloc.get_traced_memory()[1]
    print(json.dumps(out))
    """
)


def _laughs(levels: int = 9) -> str:
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]")
    return "input:\n  path: in.tif\n" + "\n".join(lines) + "\n"


def test_billion_laughs_config_is_refused_within_a_second_in_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(), encoding="utf-8")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(bomb)], capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("loading an alias bomb did not end within 20 s")
    assert done.stdout, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["error"] == "ConfigError", out
    assert "bomb.yaml" in out["message"] and "aliases" in out["message"] and "fix:" in out["message"]
    assert out["seconds"] < 1.0 and out["peak"] < 50 * 2**20


def test_recursive_alias_is_refused_naming_the_file(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.write_text("input:\n  path: in.tif\n  bands: &b [1, *b]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"loop\.yaml: refused: an alias \(\*name\) refers to the anchor"):
        load_config(loop)
