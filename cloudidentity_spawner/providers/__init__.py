"""Cloud providers: the pure planning half of each, and (loaded lazily) the API-calling half.

``aws`` and ``gcp`` import no cloud SDK; the SDK-backed backends for hub-managed
identities (``aws_iam``, ``gcp_iam``) are imported only when a rule needs them,
through :func:`backend_for`.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigError

_backends: dict[tuple, Any] = {}


def backend_for_plan(settings: Any, cloud: Any) -> Any:
    """The backend that makes a plan's hub-made identity (Pod Identity associations are EKS's)."""
    return backend_for(settings, "eks" if cloud.mode == "pod_identity" else cloud.provider)


def backend_for(settings: Any, provider: str) -> Any:
    """The backend that manages *provider* identities for *settings* (a ``CloudIdentity``).

    One per provider and client settings per hub process, so the caches, the per-identity
    locks and the concurrent-call limit are shared by all spawns.
    """
    if provider == "aws":
        kwargs = dict(settings.aws_client_kwargs)
        key = ("aws", json.dumps(kwargs, sort_keys=True, default=str))
        if key not in _backends:
            from .aws_iam import ManagedRoles

            _backends[key] = ManagedRoles(
                kwargs,
                max_concurrent_calls=settings.aws_max_concurrent_calls,
                cache_seconds=settings.cloud_cache_seconds,
                propagation_seconds=settings.aws_role_propagation_seconds,
                log=settings.log,
            )
        return _backends[key]
    if provider == "eks":
        kwargs = dict(settings.aws_eks_client_kwargs or settings.aws_client_kwargs)
        key = ("eks", json.dumps(kwargs, sort_keys=True, default=str))
        if key not in _backends:
            from .eks_pod_identity import PodIdentityAssociations

            _backends[key] = PodIdentityAssociations(
                kwargs,
                max_concurrent_calls=settings.aws_max_concurrent_calls,
                cache_seconds=settings.cloud_cache_seconds,
                propagation_seconds=settings.aws_pod_identity_propagation_seconds,
                log=settings.log,
            )
        return _backends[key]
    if provider == "gcp":
        factory = settings.gcp_client_factory
        key = ("gcp", id(factory))
        if key not in _backends:
            from .gcp_iam import ManagedServiceAccounts

            _backends[key] = ManagedServiceAccounts(
                factory,
                max_concurrent_calls=settings.gcp_max_concurrent_calls,
                cache_seconds=settings.cloud_cache_seconds,
                propagation_seconds=settings.gcp_propagation_seconds,
                log=settings.log,
            )
        return _backends[key]
    if provider == "azure":
        factory = settings.azure_client_factory
        key = ("azure", id(factory))
        if key not in _backends:
            from .azure_msi import ManagedIdentities

            _backends[key] = ManagedIdentities(
                factory,
                max_concurrent_calls=settings.azure_max_concurrent_calls,
                cache_seconds=settings.cloud_cache_seconds,
                log=settings.log,
            )
        return _backends[key]
    raise ConfigError(f"no backend manages {provider!r} identities")
