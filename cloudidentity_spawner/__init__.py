"""Give every JupyterHub user on Kubernetes a cloud identity of their own.

Public API (each name is imported when first used, so the notebook-side
extension :mod:`cloudidentity_spawner.creds` loads without the hub's packages):

* :class:`CloudIdentitySpawner` - the KubeSpawner subclass (entry point ``cloudidentity``);
* :func:`pre_spawn_hook` - the same for a stock KubeSpawner;
* :class:`CloudIdentity` - the identity settings;
* :class:`IdentityPlan` and friends - what a spawn's identity resolves to;
* :class:`ConfigError`, :class:`IdentityError` - what goes wrong, for whom.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ClaimsError": "errors",
    "CloudIdentity": "config",
    "CloudIdentitySpawner": "spawner",
    "CloudPlan": "plan",
    "ConfigError": "errors",
    "IdentityError": "errors",
    "IdentityPlan": "plan",
    "NoMatchingRule": "errors",
    "ServiceAccountPlan": "plan",
    "pre_spawn_hook": "hooks",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

