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


_PREPARING: set[asyncio.Future] = set()
"""Identities being prepared after a login (a reference each, so none is collected early)."""


def prepare_at_login(authenticator: Any, handler: Any, authentication: dict[str, Any]) -> dict[str, Any]:
    """A ``post_auth_hook``: start making the user's identity as they log in, so the spawn that
    follows (the user reads the profile form meanwhile) finds it made - under a surge of first
    logins the identity step is what the spawn waits for::

        from cloudidentity_spawner.hooks import prepare_at_login
        c.Authenticator.post_auth_hook = prepare_at_login

    It works in the background and never delays or fails the login: what it cannot do, the spawn
    does (and reports) as usual. It prepares what the default profile gives; a spawn with a profile
    that names another rule revokes that again. Only with ``CloudIdentitySpawner``."""
    name = authentication.get("name") if isinstance(authentication, dict) else None
    if name:
        task = asyncio.ensure_future(_prepare_when_stored(handler, name))
        _PREPARING.add(task)
        task.add_done_callback(_PREPARING.discard)
    return authentication


async def _prepare_when_stored(handler: Any, name: str, wait: float = 10.0) -> None:
    from .spawner import CloudIdentitySpawner

    log = handler.log
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        user = handler.find_user(name)
        # The hook runs before JupyterHub stores the user and their login: wait for both.
        while (user is None or (handler.authenticator.enable_auth_state and not await user.get_auth_state())) \
                and loop.time() < deadline:
            await asyncio.sleep(0.05)
            user = handler.find_user(name)
        if user is None:
            return
        spawner = user.spawner
        if not isinstance(spawner, CloudIdentitySpawner) or spawner.active or spawner.pending:
            return
        plan = await spawner.prepare_identity()
        log.info("cloudidentity: prepared %s's identity at login (rule %s)", name, plan.rule)
    except IdentityError as e:  # no rule for them: their spawn page says why
        log.debug("cloudidentity: no identity to prepare at login for %s: %s", name, e.admin_detail)
    except SpawnRefused as e:  # logged above; said again, to the user, when they spawn
        log.info("cloudidentity: %s's identity not prepared at login: %s", name, e)
    except Exception as e:
        log.warning("cloudidentity: %s's identity not prepared at login: %s: %s", name, type(e).__name__, e)


# Last, so a check that runs at once (a hub already configured) finds this module complete.
guard_jupyterhub_startup()
