"""Cloud providers: the pure planning half of each, and (loaded lazily) the API-calling half.

``aws``, ``gcp``, ``azure`` and ``s3_sts`` import no cloud SDK; the SDK-backed backends for
hub-managed identities (``aws_iam``, ``eks_pod_identity``, ``gcp_iam``, ``azure_msi``,
``s3_sts_iam``) are imported only when a rule needs them, through :func:`backend_for`.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from ..errors import ConfigError

_backends: dict[tuple, Any] = {}  # (kind, client settings) -> backend
_registered: dict[str, Any] | None = None


def registered() -> dict[str, Any]:
    """Every provider (:class:`.base.Provider`) by its rule block's key: the built-in ones, and
    those a site registers under the entry-point group ``cloudidentity_spawner.providers``
    (loaded once per process). A site's provider cannot take a built-in key."""
    global _registered
    if _registered is None:
        from importlib.metadata import entry_points

        from .base import ENTRY_POINT_GROUP, Provider
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
            if not isinstance(provider, Provider):
                raise ConfigError(f"provider {entry.name!r} ({entry.value}) is not a "
                                  "cloudidentity_spawner.providers.base.Provider (subclass it)")
            missing = [m for m in ("parse", "plan", "named_templates") if not callable(getattr(provider, m, None))]
            if missing:
                raise ConfigError(f"provider {entry.name!r} ({entry.value}) lacks {', '.join(missing)}: "
                                  "see cloudidentity_spawner.providers.base.Provider")
            provider.key = entry.name
            claimed = {kind for p in found.values() for kind in p.backends}
            taken = sorted(set(provider.backends) & claimed)
            if taken:
                raise ConfigError(f"provider {entry.name!r} ({entry.value}) names backends another provider has: "
                                  f"{', '.join(taken)}; choose others")
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
    return backend_for(settings, provider_for(cloud.provider).backend_kind(cloud))


def backend_for(settings: Any, kind: str) -> Any:
    """The backend *kind* (``aws``, ``eks``, ``gcp``, ...) for *settings* (a ``CloudIdentity``),
    made by its provider (:meth:`.base.Provider.make_backend`).

    One per kind and client settings per hub process, so the caches, the per-identity locks and
    the concurrent-call limit are shared by all spawns.
    """
    provider = provider_of_backend(kind)
    if provider is None:
        raise ConfigError(f"no backend manages {kind!r} identities")
    key = (kind, provider.backend_key(settings, kind))
    if key not in _backends:
        backend = provider.make_backend(settings, kind)
        if backend is None:
            raise ConfigError(f"provider {provider.key!r} has no backend {kind!r}")
        _backends[key] = backend
    return _backends[key]


def load_backend(module: str, cls: str, *args: Any, **kwargs: Any) -> Any:
    """``<this package>.module.cls(*args, **kwargs)``, imported only then (the SDK-backed
    modules need their extra)."""
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(*args, **kwargs)


def client_key(kwargs: Any) -> str:
    """A backend's client settings as a key (the same settings, the same backend)."""
    return json.dumps(dict(kwargs), sort_keys=True, default=str)


def with_what_the_cloud_assigned(plan: Any, annotations: Any) -> Any:
    """*plan* completed with what the cloud chose when it made the identity and the account
    records (an Azure identity's client and tenant ids), for comparing the account with its plan
    outside a spawn (``status``, the admin page) - a spawn learns them from the cloud."""
    provider = provider_for(plan.cloud.provider) if plan.cloud is not None else None
    return provider.completed(plan, annotations) if provider is not None else plan


def account_identity(annotations: Any) -> str | None:
    """The identity an account's annotations give its pods, by the first provider that reads one."""
    for provider in registered().values():
        found = provider.account_identity(annotations)
        if found:
            return found
    return None


def owned_annotations() -> frozenset[str]:
    """Every provider's :attr:`~.base.Provider.annotations`."""
    return frozenset(a for p in registered().values() for a in getattr(p, "annotations", ()))
