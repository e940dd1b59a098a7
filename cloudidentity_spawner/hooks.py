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

from typing import Any

from jupyterhub.utils import maybe_future

from .config import CloudIdentity
from .errors import SpawnRefused
from .pinning import apply_plan, pinning_hook
from .profiles import unenforceable_profile_setting
from .provisioner import IdentityProvisioner
from .retry import Backoff
from .startup import guard_jupyterhub_startup


async def pre_spawn_hook(spawner: Any) -> None:
    """Give *spawner*'s pod the user's planned ServiceAccount (settings from ``c.CloudIdentity``)."""
    settings = CloudIdentity(config=spawner.config, parent=None)
    await refuse_what_the_hook_cannot_enforce(spawner)
    automount = bool(spawner.automount_service_account_token)
    provisioner = IdentityProvisioner(settings, spawner, Backoff(), spawner.k8s_api_request_timeout)
    if spawner.enable_user_namespaces:
        await spawner._ensure_namespace()  # KubeSpawner would make it only after this hook
    plan = await provisioner.prepare(spawner.namespace)
    apply_plan(spawner, plan, automount)
    spawner.modify_pod_hook = pinning_hook(spawner.modify_pod_hook, plan, automount, settings.irsa_pod_spec)


async def refuse_what_the_hook_cannot_enforce(spawner: Any) -> None:
    """The hook runs before KubeSpawner applies the chosen profile, so it cannot check
    per-group profiles, follow a profile's ``identity_rule``, or stay last after a profile's
    own ``modify_pod_hook``: such a profile list fails the spawn here (and the hub's start-up,
    when the list is static) instead of silently not being enforced."""
    profiles = spawner.profile_list
    if callable(profiles):
        profiles = await maybe_future(profiles(spawner))
    problem = unenforceable_profile_setting(profiles or [])
    if problem:
        spawner.log.error("cloudidentity: spawn refused for %s: %s", spawner.user.name, problem)
        raise SpawnRefused("This hub's server profiles need a setting the hub cannot enforce; ask your hub admin.")


# Last, so a check that runs at once (a hub already configured) finds this module complete.
guard_jupyterhub_startup()
