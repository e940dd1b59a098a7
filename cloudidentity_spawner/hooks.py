"""The same identity handling for a stock KubeSpawner, as a ``pre_spawn_hook``.

For hubs that already subclass KubeSpawner or cannot change ``spawner_class``::

    from cloudidentity_spawner.hooks import pre_spawn_hook
    c.KubeSpawner.pre_spawn_hook = pre_spawn_hook
    c.CloudIdentity.identity_rules = [...]

The hook resolves and ensures the ServiceAccount before the spawn, and chains a
``modify_pod_hook`` (keeping any the operator set) that pins the pod to it, so a
profile's ``kubespawner_override`` cannot pick another account.
"""

from __future__ import annotations

import inspect
from typing import Any

from .config import CloudIdentity
from .kube import RetryPolicy
from .spawner import IdentityProvisioner, SpawnRefused, apply_plan, pin_pod


async def pre_spawn_hook(spawner: Any) -> None:
    """Give *spawner*'s pod the user's planned ServiceAccount (settings from ``c.CloudIdentity``)."""
    settings = CloudIdentity(config=spawner.config, parent=None)
    automount = bool(spawner.automount_service_account_token)
    provisioner = IdentityProvisioner(settings, spawner, RetryPolicy(), spawner.k8s_api_request_timeout)
    plan = await provisioner.prepare(spawner.namespace)
    apply_plan(spawner, plan, automount)

    operator_hook = spawner.modify_pod_hook
    if getattr(operator_hook, "_cloudidentity_pin", False):
        operator_hook = operator_hook._operator_hook

    async def modify_pod_hook(spawner: Any, pod: Any) -> Any:
        if operator_hook is not None:
            pod = operator_hook(spawner, pod)
            if inspect.isawaitable(pod):
                pod = await pod
        if spawner.namespace != plan.service_account.namespace:
            raise SpawnRefused("A profile moved your server to another namespace than your cloud identity's; ask your hub admin.")
        pin_pod(pod, plan, automount)
        return pod

    modify_pod_hook._cloudidentity_pin = True
    modify_pod_hook._operator_hook = operator_hook
    spawner.modify_pod_hook = modify_pod_hook
