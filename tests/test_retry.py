"""The retry policy retries transient errors only, and honours Retry-After."""

from __future__ import annotations

import time

import pytest

from gpurun.errors import AuthError, CapacityError, TransientProviderError, TransientSshError
from gpurun.retry import call_provider, call_ssh


async def test_transient_errors_are_retried_until_success() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TransientProviderError("503", provider="vast")
        return "ok"

    assert await call_provider(flaky, initial_wait=0.01, max_wait=0.02) == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize("error", [AuthError("401", provider="vast"), CapacityError("gone", provider="vast")])
async def test_non_transient_errors_are_not_retried(error: Exception) -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        await call_provider(failing, initial_wait=0.01)
    assert calls == 1


async def test_retry_after_is_honoured() -> None:
    calls: list[float] = []

    async def limited() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise TransientProviderError("429", provider="runpod", retry_after=0.3)
        return "ok"

    await call_provider(limited, initial_wait=0.01, max_wait=0.02)
    assert calls[1] - calls[0] >= 0.3


async def test_attempts_are_bounded() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise TransientProviderError("502", provider="vast")

    with pytest.raises(TransientProviderError):
        await call_provider(down, attempts=3, initial_wait=0.01, max_wait=0.01)
    assert calls == 3


async def test_ssh_retry_stops_at_deadline() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise TransientSshError("connection refused")

    start = time.monotonic()
    with pytest.raises(TransientSshError):
        await call_ssh(refused, deadline=time.monotonic() + 0.3, initial_wait=0.05, max_wait=0.05)
    assert time.monotonic() - start < 2
    assert calls >= 2
