"""Secrets never appear in what tiler writes or prints (issue 17): tiler.redact on options, URLs and configs."""

from __future__ import annotations

import json

import pytest

from tiler.config import parse_config
from tiler.redact import MASK, is_secret_key, redact, redacted_config_dict

SECRET = "s3cr3t-Value_42"


@pytest.mark.parametrize(
    "key",
    [
        "GDAL_HTTP_USERPWD", "GDAL_HTTP_HEADERS", "GDAL_HTTP_AUTH", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_TOKEN", "GS_SECRET_ACCESS_KEY",
        "GS_OAUTH2_REFRESH_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS", "OSS_SECRET_ACCESS_KEY", "Authorization",
        "db_password", "api_key",
    ],
)  # fmt: skip
def test_credential_bearing_option_is_redacted_in_a_mapping_and_in_text(key: str) -> None:
    assert is_secret_key(key)
    assert redact({key: SECRET, "GDAL_CACHEMAX": "256"}) == {key: MASK, "GDAL_CACHEMAX": "256"}
    for text in (f"{key}={SECRET}", f"{{'{key}': '{SECRET}'}}", f'"{key}": "{SECRET}"', f"{key}: {SECRET}"):
        out = redact(text)
        assert SECRET not in out and key in out and MASK in out, (text, out)


@pytest.mark.parametrize(
    "key", ["GDAL_CACHEMAX", "GDAL_NUM_THREADS", "AWS_REGION", "AWS_S3_ENDPOINT", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS"]
)
def test_plain_gdal_options_are_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert redact({key: "x"}) == {key: "x"} and redact(f"{key}=x") == f"{key}=x"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            f"/vsicurl/https://bucket.s3.amazonaws.com/a.tif?X-Amz-Credential=AKIA%2F1&X-Amz-Signature={SECRET}",
            "/vsicurl/https://bucket.s3.amazonaws.com/a.tif?X-Amz-Credential=***&X-Amz-Signature=***",
            id="S3 presigned",
        ),
        pytest.param(
            f"https://acct.blob.core.windows.net/c/a.tif?sv=2022&sig={SECRET}&se=2030",
            "https://acct.blob.core.windows.net/c/a.tif?sv=***&sig=***&se=***",
            id="Azure SAS",
        ),
        pytest.param(f"/vsicurl/http://alice:{SECRET}@host:8080/a.tif", "/vsicurl/http://***@host:8080/a.tif",
                     id="userinfo"),
        pytest.param("/vsis3/bucket/key.tif", "/vsis3/bucket/key.tif", id="no secret"),
    ],
)
def test_url_query_values_and_userinfo_are_redacted(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert redact(f"cannot open {url}: HTTP 403.") == f"cannot open {expected}: HTTP 403."


def test_authorization_header_value_is_redacted_in_text() -> None:
    out = redact(f"GDAL_HTTP_HEADERS=Authorization: Bearer {SECRET}\nAuthorization: Basic {SECRET}")
    assert SECRET not in out and "Authorization" in out


def test_redacted_config_dict_holds_no_secret_and_keeps_the_rest() -> None:
    cfg = parse_config(
        {
            "input": {
                "path": f"/vsicurl/https://h/a.tif?X-Amz-Signature={SECRET}",
                "gdal": {
                    "options": {
                        "GDAL_HTTP_USERPWD": f"u:{SECRET}", "AWS_SECRET_ACCESS_KEY": SECRET,
                        "GDAL_HTTP_HEADERS": f"Authorization: Bearer {SECRET}", "AWS_REGION": "eu-west-1",
                    }
                },  # fmt: skip
            },
            "model": {"weights": "/models/unet.pt"},
            "output": {"path": "/out/scene.zarr"},
        }
    )
    assert SECRET in cfg.model_dump_json()  # the job itself keeps the real values to read the input
    out = redacted_config_dict(cfg)
    assert SECRET not in json.dumps(out)
    assert out["input"]["gdal"]["options"]["AWS_REGION"] == "eu-west-1"
    assert out["input"]["path"] == "/vsicurl/https://h/a.tif?X-Amz-Signature=***"
    assert out["model"]["weights"] == "/models/unet.pt" and out["output"]["path"] == "/out/scene.zarr"
