"""Training entry point: ``python -m pipelines.train satellite|ct|CONFIG.yaml [--out PATH] [--steps N]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tiler.errors import ConfigError, TilerError
from tiler.model.train import DOMAINS, TrainConfig, demo_config, train


def load_config(source: str) -> TrainConfig:
    """Load a config: a domain name gives its preset, a path a YAML file of :class:`TrainConfig` fields."""
    if source in DOMAINS:
        return demo_config(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"train config {source!r} is neither a domain ({', '.join(DOMAINS)}) nor an existing YAML file."
        )
    try:
        data: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"train config {path} is not valid YAML: {err}") from err
    return TrainConfig.from_mapping(data or {}, source=f"train config {path}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print a JSON summary; exit status 2 on a tiler error."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__)
    parser.add_argument("config", help="'satellite', 'ct', or a YAML file with TrainConfig fields")
    parser.add_argument("--out", help="checkpoint path (overrides the config)")
    parser.add_argument("--steps", type=int, help="optimiser steps (overrides the config)")
    parser.add_argument("--seed", type=int, help="seed (overrides the config)")
    parser.add_argument("--threads", type=int, help="torch threads (overrides the config)")
    parser.add_argument("--log-every", type=int, default=25, help="print the loss every N steps (0: quiet)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        overrides = {k: getattr(args, k) for k in ("out", "steps", "seed", "threads") if getattr(args, k) is not None}
        cfg = dataclasses.replace(cfg, **overrides)
        result = train(cfg, log_every=args.log_every)
    except TilerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {
        "checkpoint": str(result.checkpoint_path),
        "domain": cfg.domain,
        "steps": cfg.steps,
        "seconds": round(result.seconds, 1),
        "first_loss": round(result.losses[0], 4),
        "final_loss": round(result.losses[-1], 4),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
