"""What the hub exports on ``/hub/metrics`` (JupyterHub serves the default Prometheus registry).

Every label has a small, fixed set of values (outcomes, scopes, providers, API
operation names): no user names, so the series do not grow with the hub.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SPAWN_DECISIONS = Counter(
    "cloudidentity_spawn_decisions",
    "Cloud identity decisions at spawn time, by outcome (ok or refused), scope and provider",
    ["outcome", "scope", "provider"],
)
SERVICE_ACCOUNT_CHANGES = Counter(
    "cloudidentity_service_account_changes",
    "What spawns did to ServiceAccounts: created, patched or unchanged",
    ["change"],
)
IDENTITY_STEP_SECONDS = Histogram(
    "cloudidentity_identity_step_seconds",
    "Time a spawn spent resolving and ensuring its identity (cloud and Kubernetes calls included)",
    ["outcome"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60),
)
CLOUD_CALLS = Counter(
    "cloudidentity_cloud_calls",
    "Cloud API calls made to manage identities, by provider and operation (e.g. aws CreateRole)",
    ["provider", "operation"],
)
CLOUD_CALLS_IN_FLIGHT = Gauge(
    "cloudidentity_cloud_calls_in_flight",
    "Cloud API calls running now, by provider (at most aws_max_concurrent_calls / gcp_max_concurrent_calls)",
    ["provider"],
)
