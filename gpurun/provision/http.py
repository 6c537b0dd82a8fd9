"""The HTTP boundary of the REST adapters: auth headers, retries, and vendor answers turned into gpurun errors.

Everything a provider says over HTTP passes through `ProviderHttp`, so the mapping below is the only one:

    401, 403                              AuthError (never retried; names the provider and the env var)
    429                                   TransientNotProcessed with Retry-After (seconds or an HTTP date)
    Vast's daily search quota (429)       ProviderError (resets at UTC midnight; retrying is pointless)
    "no longer available" and friends     CapacityError (the offer is gone; the orchestrator fails over)
    404, 410                              NotFoundError
    5xx, timeouts, dropped connections    TransientProviderError
    connection refused                    TransientNotProcessed (the request never arrived)
    anything else                         ProviderError

API keys travel only in the Authorization header: never in a URL (Vast's legacy `?api_key=` is not used),
never in process arguments, never in a log line, repr or error message.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from gpurun.errors import (
    AuthError,
    CapacityError,
    NotFoundError,
    ProviderError,
    TransientProviderError,
)
from gpurun.retry import call_provider

T = TypeVar("T")

#: vendor phrases meaning "this offer/capacity is gone", matched case-insensitively anywhere in the message.
#: Vast: 404/410 `no_such_ask` "... is no longer available" / "... is not available"; RunPod (GraphQL errors,
#: REST 400 problem+json): "There are no longer any instances available with the requested specifications".
CAPACITY_PHRASES = (
    "no longer available",
    "no longer any instances available",
    "no instances available",
    "not enough free gpus",
    "no_such_ask",
    "is not available",
)

#: a vendor message longer than this is cut in error texts (some return whole HTML pages)
MAX_MESSAGE_CHARS = 300


class TransientNotProcessed(TransientProviderError):
    """The provider certainly did not act on the request (rate-limited, connection refused).

    Retrying is safe even for a create, unlike a timeout or a 5xx after which the instance may exist.
    """


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Parameters for `gpurun.retry.call_provider` (the one retry mechanism); tests shorten them."""

    attempts: int = 5
    initial_wait: float = 1.0
    max_wait: float = 20.0
    max_seconds: float = 120.0


class ApiKey:
    """An API key that cannot leak by accident: its repr and str are masked."""

    __slots__ = ("_pattern", "_value")

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise ValueError("empty API key")
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            # a pasted key with a newline would end up in an HTTP header error, escaped past any mask
            raise ValueError("the API key holds whitespace or control characters (a stray newline when pasted?)")
        self._value = value
        self._pattern = re.compile(re.escape(value), re.IGNORECASE)

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the key masked, in any letter case (defence in depth for vendor
        messages that echo it, upper-cased or not)."""
        return self._pattern.sub(mask_secret(self._value), text)

    def __repr__(self) -> str:
        return f"ApiKey({mask_secret(self._value)})"

    __str__ = __repr__


def mask_secret(value: str) -> str:
    """A key as the user may see it: the last 4 characters of a long key, nothing of a short one."""
    return f"…{value[-4:]}" if len(value) >= 16 else "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None when absent or garbled."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def vendor_message(response: httpx.Response, redact: Callable[[str], str] = lambda text: text) -> str:
    """The human part of a vendor error body: msg, message, detail, error, GraphQL errors[0], else raw text.
    `redact` masks secrets in the whole message BEFORE it is cut to length (a cut key would escape the mask)."""
    text = response.text
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    message = ""
    if isinstance(body, dict):
        for key in ("msg", "message", "detail", "title"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                message = value
                break
        else:
            errors = body.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                message = str(errors[0].get("message", ""))
            elif isinstance(body.get("error"), str):
                message = body["error"]
        code = body.get("error")
        if isinstance(code, str) and code and code not in message:
            message = f"{code}: {message}" if message else code
    if not message:
        message = " ".join(text.split())
    message = redact(message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return message or f"HTTP {response.status_code}"


def is_capacity_message(text: str) -> bool:
    lowered = text.lower()
    return any(phrase in lowered for phrase in CAPACITY_PHRASES)


class ProviderHttp:
    """One provider's HTTP client: base URL, Bearer auth, error mapping, retries through `call_provider`."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        api_key: ApiKey | None,
        *,
        key_env: str,
        client: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.key_env = key_env
        self.retry = retry or RetryPolicy()
        self._key = api_key
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout
        self._log = logging.getLogger(f"gpurun.provision.{provider}")

    def __repr__(self) -> str:
        return f"ProviderHttp({self.provider!r}, {self.base_url!r})"

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def redact(self, text: str) -> str:
        return self._key.redact(text) if self._key else text

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def url(self, path: str) -> str:
        if not path:
            return self.base_url
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        accept_redirects: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """One attempt. Returns a 2xx response (or a 3xx with `accept_redirects`, which are not followed: a
        redirect's own headers describe what it points to); raises the mapped gpurun error for anything else."""
        api_key = self._key
        sent = {"Accept": "application/json", "User-Agent": "gpurun", **(headers or {})}
        if api_key is not None:
            sent["Authorization"] = f"Bearer {api_key.reveal()}"
        url = self.url(path)
        try:
            response = await self._client.request(
                method, url, json=json_body, params=params, headers=sent, timeout=self._timeout,
                follow_redirects=follow_redirects,
            )  # fmt: skip
        except httpx.ConnectError as exc:
            raise TransientNotProcessed(
                f"cannot connect to {self.base_url}: {self.redact(str(exc)) or type(exc).__name__}",
                provider=self.provider,
            ) from None
        except httpx.TimeoutException:
            raise TransientProviderError(
                f"{method} {path} timed out after {self._timeout:.0f} s", provider=self.provider
            ) from None
        except httpx.TransportError as exc:
            raise TransientProviderError(
                f"{method} {path} failed: {self.redact(str(exc)) or type(exc).__name__}", provider=self.provider
            ) from None
        self._log.debug("%s %s -> %s", method, path, response.status_code)
        if response.is_success or (accept_redirects and response.is_redirect):
            return response
        raise self.error_for(response, f"{method} {path}")

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` under the retry policy (transient errors only)."""
        policy = self.retry
        return await call_provider(
            operation,
            attempts=policy.attempts,
            max_seconds=policy.max_seconds,
            initial_wait=policy.initial_wait,
            max_wait=policy.max_wait,
        )

    async def json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Any:
        """Request and decode JSON, retrying transient failures unless `retry` is False."""

        async def once() -> Any:
            return self.decode(await self.request(method, path, json_body=json_body, params=params))

        return await (self.call(once) if retry else once())

    def decode(self, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProviderError(
                f"unexpected answer (not JSON) from {response.request.method} {response.request.url.path}",
                provider=self.provider,
            ) from None

    def error_for(self, response: httpx.Response, what: str) -> ProviderError:
        """The gpurun error for a non-2xx vendor response."""
        status = response.status_code
        message = vendor_message(response, self.redact)
        provider = self.provider
        if status in (401, 403):
            return AuthError(
                f"{provider} rejected the API key (HTTP {status}: {message})",
                provider=provider,
                hint=f"check {self.key_env}, or run `gpurun providers set-key {provider}`",
            )
        if status == 429:
            if "search_quota_exceeded" in message:
                # Vast's daily search quota: the SDK deliberately does not retry it; it resets at UTC midnight
                return ProviderError(
                    f"daily search quota exceeded ({message})", provider=provider, hint="it resets at UTC midnight"
                )
            # Vast's docs say it never sends Retry-After; its SDK 1.9.1 honours one, and RunPod v2 sends it on
            # every 429. Trust the code: honour it when present (retry.py caps the wait at 60 s).
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return TransientNotProcessed(
                f"rate-limited on {what} ({message})", provider=provider, retry_after=retry_after
            )
        if 400 <= status < 500 and is_capacity_message(message):
            return CapacityError(f"no capacity: {message}", provider=provider)
        if status in (404, 410):
            return NotFoundError(f"{what}: not found ({message})", provider=provider)
        if status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return TransientProviderError(
                f"{what} failed with HTTP {status} ({message})", provider=provider, retry_after=retry_after
            )
        return ProviderError(f"{what} refused with HTTP {status}: {message}", provider=provider)
