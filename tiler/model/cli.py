"""The ``tiler train`` command (and ``python -m pipelines.train``): load a training config, train, print a summary.

The trainer itself is :mod:`tiler.model.train`; it is imported only when a command runs, so building the
``tiler`` parser stays cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiler.errors import ConfigError

if TYPE_CHECKING:
    from tiler.model.train import TrainConfig

__all__ = ["DESCRIPTION", "HELP", "NAME", "configure", "load_train_config", "run", "run_train"]


def load_train_config(source: str) -> TrainConfig:
    """Load a config: a domain name gives its preset, a path a YAML file of :class:`TrainConfig` fields.

    Raises:
        ConfigError: Neither a domain nor a file, invalid YAML, or unknown or bad keys.
    """
    from tiler.model.train import DOMAINS, TrainConfig, demo_config

    if source in DOMAINS:
        return demo_config(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"train config {source!r} is neither a domain ({', '.join(DOMAINS)}) nor an existing YAML file; "
            f"fix: give one of {', '.join(DOMAINS)}, or the path of a YAML file of TrainConfig fields."
        )
    from tiler.yamlsafe import load_yaml

    data: Any = load_yaml(path.read_text(encoding="utf-8"), f"train config {path}")
    return TrainConfig.from_mapping(data or {}, source=f"train config {path}")


def run_train(args: argparse.Namespace) -> int:
    """Handle ``tiler train``: train, then print a JSON summary on stdout; exit code 0."""
    from tiler.model.train import train

    cfg = load_train_config(args.config)
    overrides = {k: getattr(args, k) for k in ("out", "steps", "seed", "threads") if getattr(args, k) is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    log_every = 0 if getattr(args, "quiet", False) else args.log_every
    result = train(cfg, log_every=log_every)
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


NAME = "train"
HELP = "train a demo model (satellite or slide 2D, CT 3D) on generated scenes"
DESCRIPTION = (
    "Train a small MONAI U-Net on generated scenes and write a tiler checkpoint (normalisation, class "
    "names and colours stored in it). CONFIG is a domain preset (satellite, ct, slide) or a YAML file of "
    "TrainConfig fields (domain, out, scene_shape, crop, steps, batch_size, lr, channels, strides, ...). "
    "Prints a JSON summary on stdout."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``tiler train``'s arguments to its parser (:mod:`tiler.cli` adds the common options and registers it)."""
    parser.add_argument("config", metavar="CONFIG",
                        help="a preset ('satellite', 'ct', 'slide') or a YAML file of TrainConfig fields")
    parser.add_argument("--out", metavar="PATH", help="checkpoint path to write (overrides the config's out)")
    parser.add_argument("--steps", type=int, metavar="N", help="optimiser steps (overrides the config)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the weights, crops and augmentation")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads while training (overrides the config)")
    parser.add_argument("--log-every", type=int, default=25, metavar="N",
                        help="print the mean loss every N steps (default 25; 0 or --quiet: never)")


def run(args: argparse.Namespace) -> int:
    """Handle ``tiler train`` (see :func:`run_train`)."""
    return run_train(args)
