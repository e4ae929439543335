"""Object storage through GDAL: the configuration options a remote path needs, from the clouds' standard variables.

The clouds' tools (the AWS CLI, boto3, obstore, Azure and Google SDKs) read a few standard environment variables;
GDAL reads most of them itself and spells a few its own way. :func:`gdal_cloud_options` computes, for one path,
the GDAL options that the standard variables of *this process* imply and GDAL does not read under that name:

* ``s3://`` (``/vsis3/``): ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (an S3-compatible server: MinIO,
  Ceph, moto), becomes ``AWS_S3_ENDPOINT`` (host[:port], no scheme), ``AWS_HTTPS`` (``NO`` for ``http://``) and
  ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style requests, ``host/bucket/key``, which such servers need; GDAL's default
  is ``bucket.host/key``). ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`` turns the translation off, as in the SDKs.
  ``AWS_REGION`` is ``AWS_REGION``, else ``AWS_DEFAULT_REGION``. Keys, session token and profile are left to GDAL,
  which reads ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the
  ``~/.aws`` files (and an EC2 instance role) itself (GDAL's "/vsis3/" documentation). ``AWS_NO_SIGN_REQUEST`` is
  set to its environment value, ``NO`` by default (GDAL's own default): an explicit value keeps rasterio from
  resolving credentials with boto3 when boto3 happens to be installed (``rasterio.env.ensure_env_with_credentials``
  skips its ``AWSSession`` then), so opening and reading a file both use GDAL's one credential chain, the same
  with or without boto3.
* ``gs://`` (``/vsigs/``): nothing; GDAL reads ``GOOGLE_APPLICATION_CREDENTIALS`` (or ``~/.boto``, the GCE
  instance account) itself.
* ``az://`` (``/vsiaz/``): nothing; GDAL reads ``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT`` with
  ``AZURE_STORAGE_ACCESS_KEY`` / ``AZURE_STORAGE_SAS_TOKEN``, itself.
* ``http(s)://`` (``/vsicurl/``): nothing.

rasterio maps each URL scheme to its GDAL virtual file system (``s3://b/k`` is opened as ``/vsis3/b/k``), so paths
are passed on as given. An option the user set wins over its translation: one in ``input.gdal.options`` (the
caller merges those last), or a GDAL variable of that name already in the environment (GDAL reads it there).

The options are computed in the process that opens the file, each time it opens or reads it, from that process's
own environment: never on the driver and shipped to the workers (on a cluster each node has its own credentials or
role). None of them is a secret, and none is stored in a config, a plan or a store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from tiler.errors import ReadError
from tiler.redact import redact

__all__ = ["describe_remote_failure", "endpoint_of", "gdal_cloud_options", "s3_endpoint", "storage_service"]

_SCHEMES = {"s3": "s3", "gs": "gs", "az": "az", "http": "http", "https": "http"}
_VSI = re.compile(r"/vsi(s3|gs|az|adls|curl)(?:_streaming)?/")
_VSI_SERVICE = {"s3": "s3", "gs": "gs", "az": "az", "adls": "az", "curl": "http"}
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_TRUE = ("1", "true", "yes", "on")

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Where an S3-compatible server is named, first found wins (the AWS SDKs' service-specific variable first)."""


def storage_service(path: str) -> str | None:
    """The object store or protocol behind ``path``: ``"s3"``, ``"gs"``, ``"az"``, ``"http"``, or None (local).

    A URL's scheme decides (``zip+s3://`` is on S3), else a GDAL virtual file system in the path (chained ones too).

    >>> [storage_service(p) for p in ("s3://b/k.tif", "/vsis3/b/k.tif", "/vsizip//vsiaz/c/a.zip/k.tif", "a.tif")]
    ['s3', 's3', 'az', None]
    >>> storage_service("https://host/k.tif"), storage_service("/vsicurl/https://host/k.tif")
    ('http', 'http')
    """
    url = _URL.match(path)
    if url is not None:
        for part in url.group("scheme").lower().split("+"):
            if part in _SCHEMES:
                return _SCHEMES[part]
    vsi = _VSI.search(path)
    return _VSI_SERVICE[vsi.group(1)] if vsi is not None else None


def s3_endpoint(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``(variable, URL)`` of the S3-compatible server named in ``environ``, or None for AWS itself.

    Raises:
        ReadError: The variable is not an ``http(s)://host[:port]`` URL (it names the variable and the fix).
    """
    if environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() in _TRUE:
        return None
    for name in ENDPOINT_VARIABLES:
        value = environ.get(name, "").strip()
        if not value:
            continue
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ReadError(
                redact(
                    f"the environment variable {name}={value!r} is not an endpoint URL GDAL can use for s3:// paths; "
                    f"fix: give the scheme and the host, e.g. {name}=http://127.0.0.1:9000 (or https://...), in the "
                    "environment of every process that reads the file, or unset it to read from AWS S3."
                )
            )
        return name, value
    return None


def gdal_cloud_options(path: str, *, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The GDAL configuration options that reading ``path`` needs, from the standard variables of ``environ``.

    Args:
        path: A URL (``s3://bucket/key``), a GDAL virtual path (``/vsis3/bucket/key``) or a local path.
        environ: The environment to read; default this process's (:data:`os.environ`), read now.

    Returns:
        GDAL option name to value; empty for a local path, and for services whose variables GDAL reads itself. An
        option whose GDAL variable is set in ``environ`` is left out (GDAL reads the user's value there).

    Raises:
        ReadError: ``AWS_ENDPOINT_URL(_S3)`` is set but is not an ``http(s)://`` URL.

    >>> env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1"}
    >>> gdal_cloud_options("s3://inputs/scene.tif", environ=env)  # doctest: +NORMALIZE_WHITESPACE
    {'AWS_NO_SIGN_REQUEST': 'NO', 'AWS_S3_ENDPOINT': '127.0.0.1:9000', 'AWS_HTTPS': 'NO',
     'AWS_VIRTUAL_HOSTING': 'FALSE', 'AWS_REGION': 'eu-west-1'}
    >>> sorted(gdal_cloud_options("s3://inputs/scene.tif", environ={**env, "AWS_VIRTUAL_HOSTING": "TRUE"}))
    ['AWS_HTTPS', 'AWS_NO_SIGN_REQUEST', 'AWS_REGION', 'AWS_S3_ENDPOINT']
    >>> gdal_cloud_options("gs://inputs/scene.tif", environ=env), gdal_cloud_options("scene.tif", environ=env)
    ({}, {})
    """
    env = os.environ if environ is None else environ
    if storage_service(path) != "s3":
        return {}
    options = {"AWS_NO_SIGN_REQUEST": env.get("AWS_NO_SIGN_REQUEST") or "NO"}
    endpoint = s3_endpoint(env)
    if endpoint is not None:
        parts = urlsplit(endpoint[1])
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else str(parts.hostname)
        port = f":{parts.port}" if parts.port else ""  # no user information: GDAL wants host[:port]
        options["AWS_S3_ENDPOINT"] = host + port + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "YES" if parts.scheme.lower() == "https" else "NO"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    # AWS_NO_SIGN_REQUEST is kept even when set: its value is the environment's, and rasterio needs to see it
    return {k: v for k, v in options.items() if k == "AWS_NO_SIGN_REQUEST" or not env.get(k)}


def endpoint_of(path: str, options: Mapping[str, object], *, environ: Mapping[str, str] | None = None) -> str:
    """Where GDAL sends the requests for ``path`` under ``options``, in words for a message (no secret).

    >>> endpoint_of("s3://b/k", {"AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO"}, environ={})
    'http://127.0.0.1:9000'
    >>> endpoint_of("s3://b/k", {}, environ={})
    "AWS S3 (no AWS_ENDPOINT_URL in this process's environment)"
    """
    env = os.environ if environ is None else environ
    service = storage_service(path)
    if service != "s3":
        return {"gs": "Google Cloud Storage", "az": "Azure Blob Storage", "http": "the URL's server"}.get(
            service or "", "this machine"
        )
    endpoint = options.get("AWS_S3_ENDPOINT") or env.get("AWS_S3_ENDPOINT")
    if not endpoint:
        return "AWS S3 (no AWS_ENDPOINT_URL in this process's environment)"
    https = str(options.get("AWS_HTTPS") or env.get("AWS_HTTPS") or "YES").upper() not in ("NO", "FALSE", "OFF", "0")
    return redact(f"{'https' if https else 'http'}://{endpoint}")


_READERS = "the driver, its finishing processes, every Ray worker"
"""Every process that reads an input or a truth, named in the fixes (each takes its environment where it starts)."""

_FAILURES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"could not resolve host|couldn't resolve host|failed to connect|connection refused", re.IGNORECASE),
        "the storage server cannot be reached",
        "for an S3-compatible server set AWS_ENDPOINT_URL (e.g. http://127.0.0.1:9000) in the environment of every "
        f"process that reads ({_READERS}); check the network and that the server runs",
    ),
    (
        re.compile(
            r"NoSuchBucket|specified bucket does not exist|container does not exist|ContainerNotFound", re.IGNORECASE
        ),
        "no such bucket (HTTP 404, NoSuchBucket)",
        "check the bucket name in the path and that the endpoint is the server holding it",
    ),
    (
        re.compile(
            r"SignatureDoesNotMatch|signature we calculated does not match|InvalidAccessKeyId|Access Key Id you "
            r"provided does not exist|AccessDenied|Access Denied|ExpiredToken|InvalidToken|security token|"
            r"AuthenticationFailed|HTTP (?:response|error) code:? 40[13]",
            re.IGNORECASE,
        ),
        "the server refused the credentials (HTTP 403)",
        "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or AWS_PROFILE (GOOGLE_APPLICATION_"
        f"CREDENTIALS, AZURE_STORAGE_* for gs://, az://) in the environment of every process that reads the file "
        f"({_READERS}): GDAL reads them there, never from the job's config",
    ),
    (
        re.compile(r"No valid AWS credentials|configuration options not defined|credentials not filled", re.IGNORECASE),
        "no credentials in the environment of this process",
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws files, or an instance role) in "
        f"the environment of every process that reads the file ({_READERS}), or AWS_NO_SIGN_REQUEST=YES for a public "
        "bucket",
    ),
    (
        re.compile(
            r"does not exist in the file system|specified key does not exist|NoSuchKey|HTTP response code: 404",
            re.IGNORECASE,
        ),
        "not found (HTTP 404, or not in the bucket's listing): no such key, or no such bucket",
        "check the bucket and the key (e.g. `aws s3 ls s3://bucket/folder/` with the same AWS_ENDPOINT_URL), or "
        "upload the file",
    ),
    (
        # GDAL reports a refused range read of an object it found in a listing as unreadable content
        re.compile(r"not recognized as being in a supported file format", re.IGNORECASE),
        "GDAL read no raster there: not a format GDAL opens, or the server refused the read",
        "check the object with `gdalinfo` in the same environment, and the credentials of every process that reads "
        "it (a refused or expired credential looks like this once the bucket was listed)",
    ),
)


def describe_remote_failure(
    path: str, message: str, options: Mapping[str, object], *, environ: Mapping[str, str] | None = None
) -> str | None:
    """The cause and the fix of GDAL's ``message`` about a remote ``path``, or None when it is not a storage failure.

    The answer names the server the request went to (:func:`endpoint_of`) and quotes GDAL; the caller redacts it.

    >>> describe_remote_failure("s3://b/k.tif", "The specified bucket does not exist", {}, environ={})[:58]
    'no such bucket (HTTP 404, NoSuchBucket) at AWS S3 (no AWS_'
    >>> describe_remote_failure("data/k.tif", "The specified bucket does not exist", {}, environ={}) is None
    True
    """
    if storage_service(path) is None:
        return None
    for pattern, cause, fix in _FAILURES:
        if pattern.search(message):
            where = endpoint_of(path, options, environ=environ)
            return f"{cause} at {where} (GDAL: {message.rstrip('.')}); fix: {fix}."
    return None
