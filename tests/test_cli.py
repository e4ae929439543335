"""The command line's conventions: one exit-code rule, help text for every command and option, --quiet anywhere."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.engine.helpers import write_model, write_raster
from tiler.cli import build_parser, main
from tiler.errors import (
    ConfigError,
    EngineError,
    GeometryError,
    InputError,
    ModelError,
    OutputError,
    ReadError,
    ScoreError,
    exit_code,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(ConfigError, 2, id="ConfigError"),
        pytest.param(InputError, 2, id="InputError"),
        pytest.param(ReadError, 2, id="ReadError"),
        pytest.param(ModelError, 2, id="ModelError"),
        pytest.param(ScoreError, 2, id="ScoreError"),
        pytest.param(GeometryError, 2, id="GeometryError"),
        pytest.param(EngineError, 1, id="EngineError"),
        pytest.param(OutputError, 1, id="OutputError"),
    ],
)
def test_one_exit_code_rule(error: type[Exception], code: int) -> None:
    assert exit_code(error("x")) == code


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_top_level_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and ":mod:" not in text
    assert "exit codes: 0 done; 1 the job failed" in text
    assert all(name in text for name in ("run", "inspect", "score", "train", "demo", "archive", "verify"))


@pytest.mark.parametrize("command", ["run", "inspect", "score", "train", "demo", "archive", "verify"])
def test_every_command_has_a_description_and_every_option_help(command: str) -> None:
    parser = _commands()[command]
    assert parser.description and len(parser.description) > 60, f"{command} has no description"
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {action.option_strings} has no help"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["run", "c.yaml"], id="run"),
        pytest.param(["inspect", "i.tif"], id="inspect"),
        pytest.param(["score", "p.tif", "t.tif"], id="score"),
        pytest.param(["train", "satellite"], id="train"),
        pytest.param(["demo"], id="demo"),
        pytest.param(["archive", "a.yaml"], id="archive"),
        pytest.param(["verify", "s.zarr"], id="verify"),
    ],
)
@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_is_accepted_before_and_after_every_command(argv: list[str], where: str) -> None:
    full = ["--quiet", *argv] if where == "before" else [*argv, "--quiet"]
    args = build_parser().parse_args(full)
    assert args.quiet is True
    assert getattr(build_parser().parse_args(argv), "quiet", False) is False


def test_a_missing_store_for_verify_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path)]) == 2
    assert "is not a tiler output store" in capsys.readouterr().err


def test_pipelines_train_is_the_tiler_train_command(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.train import main as train_main

    assert train_main(["no-such-domain"]) == 2
    assert "tiler train: error: ConfigError: train config 'no-such-domain'" in capsys.readouterr().err


@pytest.mark.slow
def test_quiet_run_on_ray_prints_nothing(tmp_path: Path) -> None:
    data = {
        "input": {"path": str(write_raster(tmp_path / "image.tif", shape=(64, 64)))},
        "model": {"weights": str(write_model(tmp_path / "model.pt")), "batch_size": 4, "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "engine": {"actors": 1, "address": "local"},
        "output": {"path": str(tmp_path / "out.zarr"), "chunks": [32, 32]},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PYTHONPATH"] = str(REPO)
    run = subprocess.run(
        [sys.executable, "-m", "tiler.cli", "--quiet", "run", str(tmp_path / "job.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Token authentication" not in run.stderr
    assert run.stdout == "" and run.stderr == ""


def test_a_dashboard_address_as_ray_address_gets_one_line_with_the_fix(tmp_path: Path) -> None:
    import socket

    data = {
        "input": {"path": str(write_raster(tmp_path / "image.tif", shape=(64, 64)))},
        "model": {"weights": str(write_model(tmp_path / "model.pt")), "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "output": {"path": str(tmp_path / "out.zarr"), "chunks": [32, 32]},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    with socket.socket() as dashboard:  # something answers there, as a dashboard would
        dashboard.bind(("127.0.0.1", 0))
        dashboard.listen()
        address = f"http://127.0.0.1:{dashboard.getsockname()[1]}"
        env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(REPO)}
        run = subprocess.run([sys.executable, "-m", "tiler.cli", "--quiet", "run", str(tmp_path / "job.yaml")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "ray job submit" in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "out.zarr").exists()
