"""The ``tiler`` command line: run, inspect, score, train, demo, archive.

Every failure a user can cause ends with one paragraph naming the file or key, the value and the
fix, and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from tiler.errors import TilerError


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run a segment job from a YAML config")
    p.add_argument("config", help="job configuration (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set tiling.tile=[512,512] (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an output holding another config's result")
    p.add_argument("--engine", choices=["ray", "local"], default="ray",
                   help="ray (default: RAY_ADDRESS or an embedded local Ray) or local (in-process, no Ray)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tiler.config import load_config
    from tiler.segment import run_segment

    cfg = load_config(args.config, args.overrides)
    result = run_segment(cfg, overwrite=args.overwrite, quiet=args.quiet or args.json_logs, engine=args.engine)
    if args.json_logs:
        print(json.dumps({"event": "done", "store": result.store, "outputs": result.outputs,
                          "summary": result.summary, "fwiou": (result.scores or {}).get("fwiou")}))
    return 0


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="describe an input and, with --config, its tile plan")
    p.add_argument("input", help="image path (GeoTIFF/COG, NIfTI, zarr, slide)")
    p.add_argument("--config", help="job config whose tiling, model and engine to plan with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of --config (repeatable)")
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from tiler.inspect import describe

    info = describe(args.input, config=args.config, overrides=args.overrides)
    if args.json_logs:
        print(json.dumps(info, default=str))
    else:
        for key, value in info.items():
            print(f"{key:>22}: {value}")
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a demo model (satellite 2D or CT 3D) on generated scenes")
    p.add_argument("config", help="'satellite', 'ct', or a YAML file of TrainConfig fields")
    p.add_argument("--out", help="checkpoint path to write")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from pipelines.train import main as train_main

    argv = [args.config] + (["--out", args.out] if args.out else [])
    return int(train_main(argv) or 0)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="generate a scene, train or reuse the demo model, segment it on a local Ray, score")
    p.add_argument("--domain", choices=["satellite", "ct", "slide"], default="satellite")
    p.add_argument("--out", default="demo-output", help="folder for the generated data and the outputs")
    p.add_argument("--size", type=int, default=None, help="scene size in pixels per axis (default per domain)")
    p.add_argument("--engine", choices=["ray", "local"], default="ray")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from tiler.demo import run_demo

    run_demo(args.domain, out=args.out, size=args.size, quiet=args.quiet, engine=args.engine)
    return 0


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every chunk and block record of an output store (exit 1: problems)")
    p.add_argument("store", help="output store folder (a job's output.store)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from tiler.io.store import OutputStore
    from tiler.io.verify import verify_store

    if not OutputStore.is_tiler_store(args.store):
        print(f"tiler verify: {args.store} is not a tiler output store (no tiler metadata in its zarr.json); "
              f"give the store folder a job wrote.", file=sys.stderr)
        return 2
    report = verify_store(args.store)
    if args.json or args.json_logs:
        print(json.dumps(report.to_dict()))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``tiler`` argument parser with every subcommand."""
    from tiler.archive import add_parser as add_archive
    from tiler.metrics.cli import add_parser as add_score

    parser = argparse.ArgumentParser(prog="tiler", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summaries")
    parser.add_argument("--json-logs", action="store_true", help="machine-readable JSON lines on stdout")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_inspect, add_score, _add_train, _add_demo, add_archive, _add_verify):
        add(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (Kubernetes, systemd, ``ray job stop``): handled like Ctrl-C, with exit code 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this (main) thread, so locks are released and the run stops cleanly."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def stopped_code(command: str, exc: KeyboardInterrupt) -> int:
    """Print the one-line message of a stopped run; return 143 for SIGTERM, 130 for Ctrl-C."""
    how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    print(f"tiler {command}: {how}; finished blocks are kept, rerun the same command to resume.", file=sys.stderr)
    return 143 if isinstance(exc, Terminated) else 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 1 job failure, 2 usage error, 130/143 stopped)."""
    handle_sigterm()
    args = build_parser().parse_args(argv)
    for name in ("quiet", "json_logs"):
        if not hasattr(args, name):
            setattr(args, name, False)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args))
    except TilerError as exc:
        from tiler.redact import redact

        message = redact(str(exc))  # a signed URL or a credential never reaches a log
        if args.json_logs:
            print(json.dumps({"event": "error", "type": type(exc).__name__, "message": message}))
        print(f"tiler {args.command}: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        return stopped_code(args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
