"""The tiler command line: run, inspect, score, train, demo, archive, verify.

Every failure a user can cause ends with one paragraph naming the file or key, the value and the fix.
Exit codes, one rule for every command (:func:`tiler.errors.exit_code`): 0 done, 1 the job failed, 2 bad
usage or bad input, 130 interrupted, 143 terminated.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from tiler.errors import EXIT_FAILED, EXIT_OK, InputError, TilerError, exit_code


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run a segment job from a YAML config",
        description=(
            "Segment one input from a job config: plan the tile grid, run the model on Ray actors (or in this "
            "process with --engine local), blend the tiles into the zarr output store, write the configured "
            "exports, score against scoring.truth when set, and mark the store complete. Rerunning the same "
            "command resumes from the finished blocks; a config that changes only the exports or the scoring "
            "finishes the store again without running a block. See configs/example.yaml for every key."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="job configuration (YAML; see configs/example.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set tiling.tile=[512,512] (repeatable; values are YAML)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output store that holds other pixels (another input, model, tiling or layout; "
                        "never any other folder)")
    p.add_argument("--engine", choices=["ray", "local"], default="ray",
                   help="ray (default: RAY_ADDRESS or an embedded local Ray) or local (in this process, no Ray)")
    add_common_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tiler.config.files import check_files
    from tiler.config.loading import load_config
    from tiler.segment import run_segment

    cfg = load_config(args.config, args.overrides)
    check_files(cfg, source=args.config)  # named after the config file; the job checks again for library callers
    result = run_segment(cfg, overwrite=args.overwrite, quiet=args.quiet or args.json_logs, engine=args.engine)
    if args.json_logs:
        print(json.dumps({"event": "done", "store": result.store, "outputs": result.outputs,
                          "summary": result.summary, "fwiou": (result.scores or {}).get("fwiou")}))
    return EXIT_OK


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect", help="describe an input and, with --config, its tile plan",
        description=(
            "Describe an input image without running anything: format, shape, channels, dtype, nodata, "
            "georeferencing and the share of nodata pixels. With --config, also the plan of that job over it: "
            "tiles, blocks, tile runs, tiles skipped by the mask and, when the model can be loaded, the classes "
            "and the memory each actor needs."
        ),
    )
    p.add_argument("input", metavar="IMAGE", help="image path (GeoTIFF/COG, NIfTI, zarr, slide; /vsicurl/ URLs too)")
    p.add_argument("--config", metavar="CONFIG", help="job config whose tiling, model and engine to plan with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of --config (repeatable; values are YAML)")
    add_common_options(p)
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from tiler.describe import describe

    info = describe(args.input, config=args.config, overrides=args.overrides)
    if args.json_logs:
        print(json.dumps(info, default=str))
    else:
        for key, value in info.items():
            print(f"{key:>22}: {value}")
    return EXIT_OK


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a scene, train or reuse the demo model, segment it on a local Ray, score",
        description=(
            "The whole product on generated data: write a scene and its truth, train the domain's small demo "
            "model once (reused afterwards), segment the scene and score it. Everything lands under --out."
        ),
    )
    p.add_argument("--domain", choices=["satellite", "ct", "slide"], default="satellite",
                   help="satellite (2D raster), ct (3D volume) or slide (2D RGB); default satellite")
    p.add_argument("--out", default="demo-output", metavar="DIR",
                   help="folder for the generated data, the model and the outputs (default demo-output)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="scene size in pixels per axis (default per domain)")
    p.add_argument("--engine", choices=["ray", "local"], default="ray",
                   help="ray (default: an embedded local Ray) or local (in this process, no Ray)")
    add_common_options(p)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from tiler.demo import run_demo

    run_demo(args.domain, out=args.out, size=args.size, quiet=args.quiet, engine=args.engine)
    return EXIT_OK


def _add_verify(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check every chunk and block record of an output store (exit 1: problems)",
        description=(
            "Read every chunk of an output store (checksums) and check every block record against the chunks "
            "it wrote. Exit code 0: the store is whole; 1: problems were found (rerun the job to recompute "
            "them); 2: the folder is not a tiler output store."
        ),
    )
    p.add_argument("store", metavar="STORE", help="output store folder (a job's output.path)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_common_options(p)
    p.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from tiler.io.store import OutputStore
    from tiler.io.verify import verify_store

    if not OutputStore.is_tiler_store(args.store):
        raise InputError(
            f"{args.store} is not a tiler output store (no tiler metadata in its zarr.json); fix: give the store "
            "folder a job wrote (its output.path)."
        )
    from tiler.job.outputs import check_finished_exports

    report = verify_store(args.store)
    check_finished_exports(report)
    if args.json or args.json_logs:
        print(json.dumps(report.to_dict()))
    elif not args.quiet or not report.ok:
        print("\n".join(report.lines()))
    return EXIT_OK if report.ok else EXIT_FAILED


DESCRIPTION = """\
tiler: tiled inference for images too big for memory (rasters, whole-slide images, 3D volumes) on Ray.

An input is cut into overlapping tiles, a segmentation model runs on them in a pool of Ray actors, and the
tile predictions are blended into one zarr output store, exported (COG, NIfTI, OME-Zarr) and scored.
"""

EPILOG = """\
exit codes: 0 done; 1 the job failed (a block kept failing, an output could not be written);
2 bad usage or bad input (a config key, a missing or unreadable file, a model that cannot be used);
130 interrupted (Ctrl-C), 143 terminated (SIGTERM): finished blocks are kept, rerun to resume.

--quiet and --json-logs may be given before or after the command. Run `tiler COMMAND --help` for a
command's options; `make demo` (or `tiler demo`) writes a runnable example.
"""


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every command takes, before or after its name (SUPPRESS: one given before is kept)."""
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="print no progress, summaries or notices (errors are still printed)")
    parser.add_argument("--json-logs", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable JSON lines on stdout instead of text")


def build_parser() -> argparse.ArgumentParser:
    """The ``tiler`` argument parser with every subcommand."""
    from tiler.archive import cli as archive
    from tiler.metrics import cli as score
    from tiler.model import cli as train

    parser = argparse.ArgumentParser(
        prog="tiler", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_inspect, _command(score), _command(train), _add_demo, _command(archive), _add_verify):
        add(sub)
    return parser


def _command(module: Any) -> Any:
    """The registration of a subcommand module (``NAME``, ``HELP``, ``DESCRIPTION``, ``configure``, ``run``)."""

    def add(sub: Any) -> None:
        parser = sub.add_parser(module.NAME, help=module.HELP, description=module.DESCRIPTION)
        module.configure(parser)
        add_common_options(parser)  # --quiet, --json-logs after the command too
        parser.set_defaults(func=module.run)

    return add


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
    """Run the CLI; returns the exit code (0 done, 1 the job failed, 2 bad usage or input, 130/143 stopped)."""
    handle_sigterm()
    args = build_parser().parse_args(argv)
    for name in ("quiet", "json_logs"):
        if not hasattr(args, name):
            setattr(args, name, False)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    disabled = logging.root.manager.disable
    if args.quiet:
        quiet_notices()
    try:
        return int(args.func(args))
    except TilerError as exc:
        from tiler.redact import redact

        message = redact(str(exc))  # a signed URL or a credential never reaches a log
        if args.json_logs:
            print(json.dumps({"event": "error", "type": type(exc).__name__, "message": message}))
        print(f"tiler {args.command}: error: {type(exc).__name__}: {message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        return stopped_code(args.command, exc)
    finally:
        logging.disable(disabled)  # main() may be called in a process that goes on (tests, pipelines)


def quiet_notices() -> None:
    """Silence every log record below ERROR in this process: tiler's notices and the libraries' (Ray's start-up lines).

    ``logging.disable`` holds whatever levels a library sets on its own loggers when it is imported (Ray sets
    its logger to INFO with its own handler on import). Errors, and Python warnings about the data, still print.
    """
    logging.disable(logging.WARNING)


def entry(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``tiler`` command: :func:`main`, then :func:`exit_process` with its code."""
    exit_process(main(argv))


def exit_process(code: int) -> NoReturn:
    """Stop the embedded Ray this process started (if any), then exit with ``code`` (the entry points' last step)."""
    ray_module = sys.modules.get("tiler.engine.ray")  # imported only when a command used Ray
    if ray_module is not None:
        try:
            ray_module.stop_embedded()
        except KeyboardInterrupt:
            code = 130 if code == EXIT_OK else code
    sys.exit(code)


if __name__ == "__main__":
    entry()
