"""The HTTP boundary: Retry-After parsing, vendor messages, and the status → error mapping."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from gpurun.errors import AuthError, CapacityError, NotFoundError, ProviderError, TransientProviderError
from gpurun.provision.http import (
    ApiKey,
    ProviderHttp,
    TransientNotProcessed,
    mask_secret,
    parse_retry_after,
    vendor_message,
)


def _response(status: int, body: object = None, *, text: str | None = None, headers: dict | None = None):
    request = httpx.Request("GET", "https://example.invalid/api/v0/x/")
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), ("0.5", 0.5), (" 12 ", 12.0), ("-3", 0.0), ("", None), (None, None), ("soon", None), ("nan", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize(
    ("body", "text", "expected"),
    [
        ({"success": False, "error": "no_such_ask", "msg": "offer gone"}, None, "no_such_ask: offer gone"),
        ({"message": "Something went wrong."}, None, "Something went wrong."),
        ({"title": "Bad Request", "status": 400, "detail": "no capacity"}, None, "no capacity"),
        ({"errors": [{"message": "Unauthorized"}]}, None, "Unauthorized"),
        ({"error": "Something went wrong."}, None, "Something went wrong."),
        (None, "API requests too frequent endpoint threshold=4.5", "API requests too frequent endpoint threshold=4.5"),
        (None, "x" * 1000, "x" * 299 + "…"),
    ],
)
def test_vendor_message(body: object, text: str | None, expected: str) -> None:
    assert vendor_message(_response(400, body, text=text)) == expected


@pytest.fixture
def http() -> ProviderHttp:
    return ProviderHttp("vast", "https://example.invalid", ApiKey("k" * 32), key_env="VAST_API_KEY")


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_name_the_provider_and_the_variable(http: ProviderHttp, status: int) -> None:
    error = http.error_for(_response(status, {"msg": "Invalid user key"}), "GET /x")
    assert isinstance(error, AuthError) and not isinstance(error, TransientProviderError)
    assert "vast" in error.one_line() and "VAST_API_KEY" in error.one_line()
    assert "set-key vast" in error.one_line()


def test_rate_limit_is_transient_and_carries_retry_after(http: ProviderHttp) -> None:
    error = http.error_for(_response(429, text="API requests too frequent", headers={"Retry-After": "3"}), "POST /b")
    assert isinstance(error, TransientNotProcessed) and error.retry_after == 3.0


def test_search_quota_is_not_retried(http: ProviderHttp) -> None:
    error = http.error_for(_response(429, {"error": "search_quota_exceeded", "msg": "daily quota"}), "POST /b")
    assert type(error) is ProviderError and "UTC midnight" in error.one_line()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(http: ProviderHttp, status: int) -> None:
    error = http.error_for(_response(status, text="<html>bad gateway</html>"), "GET /x")
    assert isinstance(error, TransientProviderError) and not isinstance(error, TransientNotProcessed)


@pytest.mark.parametrize(
    "message",
    [
        "error 410/3907: no_such_ask Instance type 1234567 is no longer available.",
        "There are no longer any instances available with the requested specifications.",
        "not enough free GPUs on this host",
    ],
)
def test_capacity_messages(http: ProviderHttp, message: str) -> None:
    for status in (400, 404, 410):
        assert isinstance(http.error_for(_response(status, {"msg": message}), "PUT /asks"), CapacityError)


def test_not_found_and_other_client_errors(http: ProviderHttp) -> None:
    assert isinstance(http.error_for(_response(404, {"msg": "Instance not found"}), "GET /i"), NotFoundError)
    other = http.error_for(_response(400, {"error": "invalid_args", "msg": "bad disk"}), "PUT /asks")
    assert type(other) is ProviderError and "bad disk" in other.message


def test_key_is_masked_everywhere_it_could_show() -> None:
    secret = "s3cr3t-" + "a" * 40
    key = ApiKey(secret)
    assert secret not in repr(key) and secret not in str(key) and secret not in f"{key}"
    assert mask_secret(secret) == "…aaaa" and mask_secret("short") == "…"
    http = ProviderHttp("runpod", "https://example.invalid", key, key_env="RUNPOD_API_KEY")
    echoed = http.error_for(_response(400, {"msg": f"bad key {secret}"}), "GET /x")
    assert secret not in echoed.one_line() and secret not in repr(http)


def test_connection_refused_is_not_processed(unused_tcp_port: int) -> None:
    import asyncio

    async def call() -> None:
        http = ProviderHttp("vast", f"http://127.0.0.1:{unused_tcp_port}", ApiKey("k" * 20), key_env="VAST_API_KEY")
        try:
            await http.request("GET", "/api/v0/users/current/")
        finally:
            await http.aclose()

    with pytest.raises(TransientNotProcessed, match="cannot connect"):
        asyncio.run(call())
