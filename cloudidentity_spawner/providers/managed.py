"""What every backend for hub-managed identities shares (:mod:`.aws_iam`, :mod:`.gcp_iam`).

* :class:`CloudCalls` - the one way a backend reaches its cloud: the SDK's blocking
  call in a worker thread, at most ``max_concurrent_calls`` at once per hub process
  (a class of first logins must not trip the cloud's throttling), counted on
  ``/hub/metrics``;
* :class:`Converged` - which identities were made right recently (so a warm spawn makes
  no cloud call), and one lock per identity while a spawn works on it (a double click
  creates nothing twice).

Both stay as small as the set of active users: locks are dropped when nobody holds
them, expired entries are pruned, and only the last few call names are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

from ..metrics import CLOUD_CALLS, CLOUD_CALLS_IN_FLIGHT
from ..plan import thaw

PROGRESS: ContextVar[Callable[[str], None] | None] = ContextVar("cloudidentity_progress", default=None)
"""Where this spawn's progress messages go (the spawn page); set by the provisioner per spawn."""


def report_progress(message: str) -> None:
    """Tell the user waiting on the spawn page what a long step is doing."""
    show = PROGRESS.get()
    if show is not None:
        show(message)


def seconds_text(seconds: float) -> str:
    """``10`` or ``0.5``: a wait as people read it."""
    return f"{seconds:.1f}".rstrip("0").rstrip(".")


RECENT_CALLS = 256
"""How many call names :attr:`CloudCalls.recent` keeps (for the hub log and tests)."""


class CloudCalls:
    """Run SDK calls off the event loop, a bounded number at once, counting them."""

    def __init__(self, provider: str, max_concurrent_calls: int):
        self.provider = provider
        self._slots = asyncio.Semaphore(max(1, max_concurrent_calls))
        self.recent: deque[str] = deque(maxlen=RECENT_CALLS)
        """The names of the latest calls, oldest first."""

    async def __call__(self, operation: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async with self._slots:
            self.recent.append(operation)
            CLOUD_CALLS.labels(self.provider, operation).inc()
            in_flight = CLOUD_CALLS_IN_FLIGHT.labels(self.provider)
            in_flight.inc()
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except Exception as e:
                e.cloudidentity_operation = operation  # the admin message names the call that failed
                raise
            finally:
                in_flight.dec()


def failed_operation(error: BaseException) -> str:
    """The name of the cloud call that raised *error* (for the admin's log line)."""
    return getattr(error, "cloudidentity_operation", None) or "a call"


def fingerprint(value: Any) -> str:
    """A stable digest of a planned identity (a changed rule or template changes it)."""
    return hashlib.sha256(json.dumps(thaw(value), sort_keys=True, default=str).encode()).hexdigest()


class Converged:
    """Identities made right recently, and per-identity locks.

    ``fresh(key, print)`` is True when *key* was made right with the same fingerprint
    within *ttl* seconds; a changed plan always misses.
    """

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._known: dict[str, tuple[str, float]] = {}
        self._prune_at = 1024
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def fresh(self, key: str, fingerprint: str) -> bool:
        known = self._known.get(key)
        return known is not None and known[0] == fingerprint and time.monotonic() - known[1] < self.ttl

    def remember(self, key: str, fingerprint: str) -> None:
        self._known[key] = (fingerprint, time.monotonic())
        if len(self._known) >= self._prune_at:
            now = time.monotonic()
            self._known = {k: v for k, v in self._known.items() if now - v[1] < self.ttl}
            self._prune_at = max(1024, 2 * len(self._known))

    def forget(self, key: str) -> None:
        self._known.pop(key, None)

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """Hold *key*'s lock; the lock is dropped once no one holds or waits for it."""
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]
