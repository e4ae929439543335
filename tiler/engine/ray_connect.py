"""Connecting the driver to Ray: join a cluster (checked first for an answer and our token) or start a private one.

Part of the Ray engine (:mod:`tiler.engine.ray`, which re-exports :func:`connect` and :func:`stop_embedded`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import ray.exceptions

from tiler.errors import EngineError

RAY_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Where ``ray job submit`` hands its driver the job's config (its ``runtime_env``)."""

__all__ = ["CONNECT_TIMEOUT_S", "RAY_JOB_CONFIG", "connect", "stop_embedded", "worker_env"]

CONNECT_TIMEOUT_S = 15.0
"""How long to wait for a cluster's address to accept a connection before giving up."""


def _check_reachable(address: str) -> None:
    """Raise EngineError within :data:`CONNECT_TIMEOUT_S` when ``host:port`` accepts no connection."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EngineError(
            f"engine.address / RAY_ADDRESS {address!r}: nothing answers there ({exc}); fix: start the cluster "
            "(ray start --head), correct the address, or unset it to use an embedded local Ray"
        ) from None


def _check_authenticated(address: str) -> None:
    """Raise EngineError at once when the cluster at ``host:port`` refuses this client's token (or its lack of one).

    ``ray.init`` retries an unauthenticated connection for about 40 s, printing a warning a second; one GCS client
    answers in milliseconds. Ray's C++ warning of that one attempt is kept off stderr.
    """
    target = address.split("://", 1)[-1].rstrip("/")
    if not target.rpartition(":")[2].isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
    except ImportError:  # another Ray: ray.init reports it, slowly
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                GcsClient(address=target)
            finally:
                os.dup2(saved, 2)
    except ray.exceptions.AuthenticationError as exc:
        mode = os.environ.get("RAY_AUTH_MODE") or "unset"
        raise EngineError(
            f"engine.address / RAY_ADDRESS {address!r}: the cluster refused this client's authentication token "
            f"({str(exc).split('.')[0]}; RAY_AUTH_MODE is {mode}); fix: set the environment variable RAY_AUTH_MODE to "
            "token, with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
        ) from None
    except Exception:  # noqa: BLE001 - anything else is for ray.init to report
        return
    finally:
        os.close(saved)


class _DropTokenNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster" notice (a logging warning of ray.init).

    Ray prints it whenever it starts a cluster; for tiler's private embedded one it says nothing the user can act
    on, and it broke into the progress bar (even with --quiet).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


_STARTED_HERE = False  # whether this process started the embedded Ray it is connected to


def _start_local(runtime_env: Mapping[str, Any] | None) -> None:
    """Start a private embedded Ray: dashboard off, node address on loopback, session folder for this user only."""
    global _STARTED_HERE
    notices = logging.getLogger(_TOKEN_NOTICE_LOGGER)
    if not any(isinstance(f, _DropTokenNotice) for f in notices.filters):
        notices.addFilter(_DropTokenNotice())
    root = tempfile.mkdtemp(prefix="tiler-ray-")
    ray.init(
        address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
        _node_ip_address="127.0.0.1", _temp_dir=root, runtime_env=runtime_env,
    )
    os.chmod(root, 0o700)  # ray makes its temp root world-writable; nobody else needs to enter it
    _STARTED_HERE = True


def stop_embedded() -> None:
    """Shut down the embedded Ray this process started (a joined cluster is left alone).

    The command-line entry points call it before the process exits: ``ray.shutdown`` from there takes
    about half the time the interpreter's exit handler does.
    """
    global _STARTED_HERE
    if _STARTED_HERE and ray.is_initialized():
        ray.shutdown()
    _STARTED_HERE = False


def worker_env(names: Sequence[str]) -> dict[str, str]:
    """The variables ``names`` of this process's environment that the job's own ``runtime_env`` does not set.

    ``ray job submit --runtime-env-json`` gives the driver the job's ``runtime_env`` (``RAY_JOB_CONFIG_JSON_ENV_VAR``),
    which Ray refuses to merge with a ``ray.init`` one setting the same variable: the job's wins, as it would anyway.
    """
    job = json.loads(os.environ.get(RAY_JOB_CONFIG, "") or "{}")
    given = ((job.get("runtime_env") or {}).get("env_vars") or {}) if isinstance(job, dict) else {}
    return {name: os.environ[name] for name in names if name in os.environ and name not in given}


def connect(address: str | None = None, env_vars: Sequence[str] = ()) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, or the job's cluster), else start a private local one.

    ``env_vars``: names of this process's environment variables every worker of the job gets (``engine.env_vars``:
    credentials and endpoints of object storage), passed as the job's ``runtime_env``; their values are read now,
    in this process, and never stored.

    Raises:
        EngineError: The address does not answer, or refuses us (token authentication).
    """
    if ray.is_initialized():
        return
    keep = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        _connect(address, worker_env(env_vars))
    finally:
        if keep is not None:  # ray.init installs its own SIGTERM handler; the caller's (tiler's CLI) wins
            signal.signal(signal.SIGTERM, keep)


def _connect(address: str | None, env: Mapping[str, str]) -> None:
    runtime_env = {"env_vars": dict(env)} if env else None
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    if address is None or address == "local":
        _start_local(runtime_env)
        return
    if address.startswith(("http://", "https://")):
        raise EngineError(
            f"engine.address / RAY_ADDRESS {address!r} is a dashboard / job API address (the one `ray job submit` "
            "takes), not a cluster a driver joins; fix: submit the job with `ray job submit --address "
            f"{address} -- tiler run ...`, or join the cluster at its GCS address (head:6379, or 'auto' on a node)"
        )
    _check_reachable(address)
    _check_authenticated(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
    except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the user gets one line and the fix
        # the fix names the environment variable and its value in words: the redactor masks KEY=value for AUTH keys
        hint = ""
        if "auth" in str(exc).lower() or os.environ.get("RAY_AUTH_MODE") != "token":
            hint = " (a cluster started with token authentication wants the client's RAY_AUTH_MODE set to token)"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EngineError(
            f"engine.address / RAY_ADDRESS {address!r}: cannot join the cluster: {first}{hint}; fix: set the "
            "environment variable RAY_AUTH_MODE to token (and RAY_AUTH_TOKEN or the token file), check the address, "
            "or unset it for an embedded local Ray"
        ) from None
