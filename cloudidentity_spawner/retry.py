"""Trying again: the one backoff loop behind every retry in this package.

Kubernetes calls retry 5xx, 429 and timeouts; Google IAM policy edits retry a
concurrent change (etag conflict) and a just-created account that IAM does not
know yet. Each caller says which errors are worth another try; the waiting is here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes_asyncio.client.exceptions import ApiException

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff with full jitter: before try ``n + 1`` wait a random
    time up to ``min(max_delay, base_delay * 2**n)``, so many hubs or spawns that failed
    together do not come back together."""

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    floor: float = 0.0
    """The shortest wait, as a share of the longest (0.5: between half and all of it)."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            object.__setattr__(self, "attempts", 1)  # one try, no retry

    def delay(self, attempt: int) -> float:
        longest = min(self.max_delay, self.base_delay * 2 ** min(attempt, 32))
        return random.uniform(self.floor * longest, longest)

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        retryable: Callable[[BaseException], bool],
        what: str = "",
        log: Any = None,
        deadline: float | None = None,
    ) -> T:
        """Await ``call()`` until it returns, or raise its last error: one that is not
        *retryable*, or the one after ``attempts`` tries, or past *deadline*
        (``time.monotonic()``; the last wait is cut short to end there)."""
        for attempt in range(self.attempts):
            try:
                return await call()
            except Exception as e:
                if not retryable(e) or attempt == self.attempts - 1:
                    raise
                delay = self.delay(attempt)
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    delay = min(delay, remaining)
                if log is not None and what:
                    log.warning("cloudidentity: %s failed (%s); retry %d/%d in %.2fs",
                                what, describe(e), attempt + 1, self.attempts - 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def describe(error: BaseException) -> str:
    """One line about an error for the hub log (never shown to users)."""
    if isinstance(error, ApiException):
        return f"Kubernetes API {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
