"""Give every JupyterHub user on Kubernetes a cloud identity of their own.

Public API:

* :class:`CloudIdentitySpawner` - the KubeSpawner subclass (entry point ``cloudidentity``);
* :class:`CloudIdentity` - the identity settings (for stock KubeSpawner hubs);
* :class:`IdentityPlan` and friends - what a spawn's identity resolves to;
* :class:`ConfigError`, :class:`IdentityError` - what goes wrong, for whom.
"""

from .config import CloudIdentity, guard_jupyterhub_startup
from .errors import ClaimsError, ConfigError, IdentityError, NoMatchingRule
from .plan import CloudPlan, IdentityPlan, ServiceAccountPlan
from .hooks import pre_spawn_hook
from .spawner import CloudIdentitySpawner

__version__ = "0.1.0"

guard_jupyterhub_startup()

__all__ = [
    "ClaimsError",
    "CloudIdentity",
    "CloudIdentitySpawner",
    "CloudPlan",
    "ConfigError",
    "IdentityError",
    "IdentityPlan",
    "NoMatchingRule",
    "ServiceAccountPlan",
    "__version__",
    "pre_spawn_hook",
]
