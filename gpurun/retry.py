"""The only retry policies in gpurun. They retry typed transient errors only, never user or auth errors.

Provider calls: TransientProviderError (429, 5xx, timeouts, resets) is retried with exponential backoff and
jitter, honouring the server's Retry-After when it gives one, for a bounded number of attempts and time.
SSH: TransientSshError (refused, reset, timed out) is retried the same way within the caller's deadline.
Anything else (AuthError, CapacityError, UserError, ...) propagates at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from gpurun.errors import TransientProviderError, TransientSshError

T = TypeVar("T")

#: never sleep longer than this for one Retry-After, whatever the server says
MAX_RETRY_AFTER_S = 60.0


class _WaitHonouringRetryAfter:
    """Exponential backoff with jitter, or the server's Retry-After when it is longer."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._backoff = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, state: RetryCallState) -> float:
        backoff = float(self._backoff(state))
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(max(float(retry_after), backoff), MAX_RETRY_AFTER_S)
        return backoff


def _retrying(
    transient: tuple[type[BaseException], ...], attempts: int, max_seconds: float, initial: float, maximum: float
) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(transient),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
        wait=_WaitHonouringRetryAfter(initial, maximum),
        reraise=True,
    )


async def call_provider(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = 5,
    max_seconds: float = 120.0,
    initial_wait: float = 1.0,
    max_wait: float = 20.0,
) -> T:
    """Run one provider API call, retrying only TransientProviderError."""
    async for attempt in _retrying((TransientProviderError,), attempts, max_seconds, initial_wait, max_wait):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


async def call_ssh(
    operation: Callable[[], Awaitable[T]],
    *,
    deadline: float | None = None,
    attempts: int = 30,
    initial_wait: float = 1.0,
    max_wait: float = 15.0,
) -> T:
    """Run an SSH operation, retrying only TransientSshError until `deadline` (time.monotonic() based)."""
    budget = 600.0 if deadline is None else max(0.0, deadline - time.monotonic())
    async for attempt in _retrying((TransientSshError,), attempts, budget, initial_wait, max_wait):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover
