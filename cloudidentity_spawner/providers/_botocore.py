"""boto3 clients for the backends that manage AWS identities, and when to try a call again.

botocore's own retries sleep inside the call, so a throttled call would hold one of the hub's
``aws_max_concurrent_calls`` slots while it waits, and adaptive mode's client-side rate limiter
slows every later call after a few throttled ones: a class's first logins took minutes
(``benchmarks/surge.py``). So clients make one attempt per call, and the backends retry with
:data:`RETRIES` outside the slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
from botocore import xform_name
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from ..retry import Backoff
from .managed import CloudCalls, Converged

RETRIES = Backoff(attempts=10, base_delay=0.25, max_delay=8.0, floor=0.5)
_RETRY_CODES = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded",
                "ServiceFailure", "ServerException", "ServiceUnavailable", "InternalFailure"}


def client(service: str, client_kwargs: Mapping[str, Any] | None = None) -> Any:
    """A boto3 client that tries each call once (see the module docstring)."""
    config = BotoConfig(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=20)
    return boto3.client(service, config=config, **dict(client_kwargs or {}))


def worth_retrying(error: BaseException) -> bool:
    """Throttling, 5xx and connection failures: AWS asks to slow down, or did not answer."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.response.get("Error", {}).get("Code", "") in _RETRY_CODES or status in (429, 500, 502, 503, 504)
    return isinstance(error, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError))


class BotoBackend:
    """What the AWS backends share: a one-attempt client, the hub's concurrent-call limit and
    call log, the converged-identity cache, and calls retried outside the limit. A subclass
    names its boto3 ``service``, its ``provider`` (for metrics) and its default propagation wait."""

    service = ""
    provider = ""
    default_propagation_seconds = 0.0

    def __init__(self, client_kwargs: Mapping[str, Any] | None = None, *, max_concurrent_calls: int = 4,
                 cache_seconds: float = 3600.0, propagation_seconds: float | None = None, log: Any = None):
        if propagation_seconds is None:
            propagation_seconds = self.default_propagation_seconds
        self.client = client(self.service, client_kwargs)
        self.calls = CloudCalls(self.provider, max_concurrent_calls)
        self.converged = Converged(cache_seconds)
        self.propagation_seconds = max(0.0, min(propagation_seconds, 60.0))
        self.log = log

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        method = getattr(self.client, xform_name(operation))
        return await RETRIES.run(lambda: self.calls(operation, method, **kwargs), worth_retrying)
