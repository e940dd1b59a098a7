"""Cloud providers: the pure planning half of each, and (loaded lazily) the API-calling half.

``aws``, ``gcp`` and ``azure`` import no cloud SDK; the SDK-backed backends for hub-managed
identities (``aws_iam``, ``eks_pod_identity``, ``gcp_iam``, ``azure_msi``) are imported only when a rule needs them,
through :func:`backend_for`.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from ..errors import ConfigError

_backends: dict[tuple, Any] = {}
_registered: dict[str, Any] | None = None


def registered() -> dict[str, Any]:
    """Every provider (:class:`.base.Provider`) by its rule block's key: the built-in ones, and
    those a site registers under the entry-point group ``cloudidentity_spawner.providers``
    (loaded once per process). A site's provider cannot take a built-in key."""
    global _registered
    if _registered is None:
        from importlib.metadata import entry_points

        from .base import ENTRY_POINT_GROUP
        from .builtin import BUILTIN

        found = {p.key: p for p in BUILTIN}
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.name in found:
                raise ConfigError(f"entry point {entry.value!r} ({ENTRY_POINT_GROUP}) registers provider {entry.name!r}, "
                                  "a key that is taken; choose another")
            try:
                provider = entry.load()
            except Exception as e:  # the site's package: say which, in one line
                raise ConfigError(f"provider {entry.name!r} ({entry.value}) cannot be loaded: {type(e).__name__}: {e}") from None
            provider = provider() if isinstance(provider, type) else provider
            missing = [m for m in ("parse", "plan", "named_templates") if not callable(getattr(provider, m, None))]
            if missing:
                raise ConfigError(f"provider {entry.name!r} ({entry.value}) lacks {', '.join(missing)}: "
                                  "see cloudidentity_spawner.providers.base.Provider")
            provider.key = entry.name
            found[entry.name] = provider
        _registered = found
    return _registered


def provider_of_backend(kind: str) -> Any:
    """The provider whose backend *kind* makes an identity recorded as ``<kind>:<name>``, or None."""
    return next((p for p in registered().values() if kind in getattr(p, "backends", ())), None)


def provider_for(key: str | None) -> Any:
    """The provider of rule block *key* (a plan's ``cloud.provider``), or None."""
    return registered().get(key) if key else None


def backend_for_plan(settings: Any, cloud: Any) -> Any:
    """The backend that makes a plan's hub-made identity (Pod Identity associations are EKS's)."""
    return backend_for(settings, "eks" if cloud.mode == "pod_identity" else cloud.provider)


def _shared(key: tuple, module: str, cls: str, *args: Any, **kwargs: Any) -> Any:
    """The backend registered under *key*; the first time, ``module.cls(*args, **kwargs)``
    (imported only then: the SDK-backed modules need their extra)."""
    if key not in _backends:
        _backends[key] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)(*args, **kwargs)
    return _backends[key]


def backend_for(settings: Any, provider: str) -> Any:
    """The backend that manages *provider* identities for *settings* (a ``CloudIdentity``).

    One per provider and client settings per hub process, so the caches, the per-identity
    locks and the concurrent-call limit are shared by all spawns.
    """
    common = {"cache_seconds": settings.cloud_cache_seconds, "log": settings.log}
    if provider == "aws":
        kwargs = dict(settings.aws_client_kwargs)
        return _shared(("aws", json.dumps(kwargs, sort_keys=True, default=str)), "aws_iam", "ManagedRoles", kwargs,
                       max_concurrent_calls=settings.aws_max_concurrent_calls,
                       propagation_seconds=settings.aws_role_propagation_seconds, **common)
    if provider == "eks":
        kwargs = dict(settings.aws_eks_client_kwargs or settings.aws_client_kwargs)
        return _shared(("eks", json.dumps(kwargs, sort_keys=True, default=str)), "eks_pod_identity", "PodIdentityAssociations",
                       kwargs, max_concurrent_calls=settings.aws_max_concurrent_calls,
                       propagation_seconds=settings.aws_pod_identity_propagation_seconds, **common)
    if provider == "s3_sts":
        kwargs = dict(settings.s3_sts_client_kwargs)
        return _shared(("s3_sts", json.dumps(kwargs, sort_keys=True, default=str)), "s3_sts_iam", "StoreRoles", kwargs,
                       max_concurrent_calls=settings.aws_max_concurrent_calls, **common)
    if provider == "gcp":
        factory = settings.gcp_client_factory
        return _shared(("gcp", id(factory)), "gcp_iam", "ManagedServiceAccounts", factory,
                       max_concurrent_calls=settings.gcp_max_concurrent_calls,
                       propagation_seconds=settings.gcp_propagation_seconds, **common)
    if provider == "azure":
        factory = settings.azure_client_factory
        return _shared(("azure", id(factory)), "azure_msi", "ManagedIdentities", factory,
                       max_concurrent_calls=settings.azure_max_concurrent_calls, **common)
    raise ConfigError(f"no backend manages {provider!r} identities")


def with_what_the_cloud_assigned(plan: Any, annotations: Any) -> Any:
    """*plan* completed with what the cloud chose when it made the identity and the account
    records (an Azure identity's client and tenant ids), for comparing the account with its plan
    outside a spawn (``status``, the admin page) - a spawn learns them from the cloud."""
    from . import azure

    cloud = plan.cloud
    if cloud is not None and cloud.provider == "azure" and cloud.mode == "managed":
        client, tenant = (annotations.get(k) for k in azure.ANNOTATIONS)
        if client and tenant:
            return azure.with_identity_ids(plan, client, tenant)
    return plan
