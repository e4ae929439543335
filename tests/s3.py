"""A real S3-compatible server on loopback for the tests: moto in server mode, with its IAM authentication on.

:func:`start_moto` starts ``moto.server.ThreadedMotoServer`` on a free 127.0.0.1 port, creates one IAM user allowed
every S3 action and an access key for it, then turns authentication on (``POST /moto-api/reset-auth 0``): requests
must be signed with that key, so a wrong secret is refused (HTTP 403 ``SignatureDoesNotMatch``) as by AWS. The
session fixture :func:`s3_server` shares one server between the test modules; the function fixture :func:`s3_bucket`
gives each test a fresh bucket and the environment a user has, the standard AWS variables only
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``; every other
``AWS_*`` variable unset). tiler never hears of moto: only ``AWS_ENDPOINT_URL`` points at it. ``tests/conftest.py``
registers the two fixtures once for every test module: moto's authentication switch is global to the process, so
a second server (a fixture imported into two modules is two session fixtures) could not create its IAM user
once the first had turned authentication on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 30.0
"""Seconds moto has to answer on its port (it starts in well under a second)."""
REGION = "us-east-1"
USER = "tiler-tests"
S3_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server that checks signatures.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>``, what ``AWS_ENDPOINT_URL`` is set to.
        access_key_id: The key of the IAM user allowed every S3 action.
        secret_access_key: Its secret.
    """

    endpoint: str
    access_key_id: str
    secret_access_key: str

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>`` (GDAL's ``AWS_S3_ENDPOINT`` form)."""
        return self.endpoint.split("://", 1)[1]

    def client(self) -> Any:
        """A boto3 S3 client with the server's endpoint and key given explicitly (whatever the environment says)."""
        return _s3_client(self.endpoint, self.access_key_id, self.secret_access_key)

    def environment(self) -> dict[str, str]:
        """The standard AWS variables a user of this server sets, and nothing else."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
        }


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server.

    Attributes:
        server: The server holding it.
        name: Its name (unique per test).
    """

    server: S3Server
    name: str

    def url(self, key: str) -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.name}/{key}"

    def upload(self, path: str | os.PathLike[str], key: str | None = None) -> str:
        """Upload the local file ``path`` under ``key`` (default: its name) and return its ``s3://`` URL."""
        key = key if key is not None else Path(path).name
        self.server.client().upload_file(str(path), self.name, key)
        return self.url(key)

    def keys(self) -> list[str]:
        """The keys in the bucket, sorted."""
        listing = self.server.client().list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@functools.lru_cache(maxsize=4)
def _s3_client(endpoint: str, key: str, secret: str) -> Any:
    """One boto3 client per server (a client takes about 0.1 s to build)."""
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key, aws_secret_access_key=secret
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(endpoint: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                return
        time.sleep(0.05)
    raise RuntimeError(f"moto did not answer on {endpoint} within {timeout:.0f} s")


def _set_auth(endpoint: str, unauthenticated_requests: float) -> None:
    """Tell moto how many more requests it serves without checking them (0: check every one from now on)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=str(unauthenticated_requests).encode(), method="POST",
        headers={"Content-Type": "text/plain"},  # a form body would be parsed away and moto would read nothing
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10):
        pass


def _iam_user(endpoint: str) -> tuple[str, str]:
    """Create the IAM user allowed every S3 action (moto still unauthenticated) and return its key and secret."""
    import boto3

    iam = boto3.session.Session().client(
        "iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )  # fmt: skip
    iam.create_user(UserName=USER)
    iam.put_user_policy(UserName=USER, PolicyName="s3-all", PolicyDocument=json.dumps(S3_ALL))
    key = iam.create_access_key(UserName=USER)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@contextlib.contextmanager
def start_moto(*, timeout: float = START_TIMEOUT) -> Iterator[S3Server]:
    """Run moto's S3 (and IAM) on a free loopback port with authentication on; stop it on exit.

    Raises:
        RuntimeError: moto does not answer within ``timeout``.
    """
    from moto.server import ThreadedMotoServer

    requests_log = logging.getLogger("werkzeug")  # one INFO line per request: noise in a failing test's log
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(endpoint, timeout)
        key, secret = _iam_user(endpoint)
        _set_auth(endpoint, 0)
        yield S3Server(endpoint, key, secret)
    finally:
        with contextlib.suppress(OSError, urllib.error.URLError):
            _set_auth(endpoint, float("inf"))  # moto's settings are this process's: leave them as they were
        server.stop()
        requests_log.setLevel(level)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the test session."""
    with start_moto() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A fresh bucket, and this process's environment set as a user of the server sets it (standard variables only).

    Every ``AWS_*`` variable is unset first (a profile, a GDAL ``AWS_S3_ENDPOINT`` or a region from the machine
    would change what is tested), then the four of :meth:`S3Server.environment` are set; monkeypatch restores them.
    """
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    bucket = S3Bucket(s3_server, f"tiler-{uuid.uuid4().hex[:16]}")
    s3_server.client().create_bucket(Bucket=bucket.name)
    return bucket
