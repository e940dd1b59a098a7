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

import asyncio
from typing import Any

from jupyterhub.utils import maybe_future

from .config import CloudIdentity
from .errors import IdentityError, SpawnRefused
from .pinning import apply_plan, pinning_hook
from .profiles import unenforceable_profile_setting
from .provisioner import IdentityProvisioner
from .retry import Backoff, describe
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
    if plan.tokens is not None:  # renewing a token and deleting its Secret need the spawner's start and stop
        spawner.log.error("cloudidentity: spawn refused for %s: rule %r has 'tokens', which needs "
                          "c.JupyterHub.spawner_class = 'cloudidentity' (the plain hook cannot keep them fresh)",
                          spawner.user.name, plan.rule)
        raise SpawnRefused("Your storage token cannot be given with this hub's setup; ask your hub admin.")
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


_PREPARING: dict[str, asyncio.Future] = {}
"""User name -> the identity being prepared after their login (one at a time per user)."""


def prepare_at_login(authenticator: Any, handler: Any, authentication: dict[str, Any]) -> dict[str, Any]:
    """A ``post_auth_hook``: start making a new user's identity as they log in, so their first
    spawn (the user reads the profile form meanwhile) finds it made - under a surge of first
    logins the identity step is what the spawn waits for::

        from cloudidentity_spawner.hooks import prepare_at_login
        c.Authenticator.post_auth_hook = prepare_at_login

    It works in the background, after JupyterHub has stored this login, and never delays or fails
    the login. It only makes what is missing (an account that exists is the spawns' to change:
    nothing is revoked or changed), and nothing while a server of the user runs or starts; what it
    cannot make, the spawn makes or reports as usual. Only with ``CloudIdentitySpawner``."""
    name = authentication.get("name") if isinstance(authentication, dict) else None
    if name and name not in _PREPARING:
        user = handler.find_user(name)
        before = getattr(user, "_auth_refreshed", None) if user is not None else None
        task = asyncio.ensure_future(_prepare_when_stored(handler, name, before))
        _PREPARING[name] = task
        task.add_done_callback(lambda _: _PREPARING.pop(name, None))
    return authentication


async def _prepare_when_stored(handler: Any, name: str, before: float | None, wait: float = 10.0) -> None:
    from .spawner import CloudIdentitySpawner

    log = handler.log
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # The hook runs before JupyterHub stores the user, their groups and this login (auth_state):
        # planning earlier would use the previous login's. JupyterHub marks the stored login.
        while True:
            user = handler.find_user(name)
            if user is not None and getattr(user, "_auth_refreshed", None) not in (None, before):
                break
            if loop.time() >= deadline:  # e.g. a token request that authenticates without a login
                return
            await asyncio.sleep(0.1)
        spawner = user.spawner
        if not isinstance(spawner, CloudIdentitySpawner):
            return
        plan = await spawner.prepare_identity()
        if plan is not None:
            log.info("cloudidentity: prepared %s's identity at login (rule %s)", name, plan.rule)
    except IdentityError as e:  # no rule for them: their spawn page says why
        log.debug("cloudidentity: no identity to prepare at login for %s: %s", name, e.admin_detail)
    except SpawnRefused as e:  # logged above; said again, to the user, when they spawn
        log.info("cloudidentity: %s's identity not prepared at login: %s", name, e)
    except Exception as e:
        log.warning("cloudidentity: %s's identity not prepared at login: %s", name, describe(e))


# Last, so a check that runs at once (a hub already configured) finds this module complete.
guard_jupyterhub_startup()
