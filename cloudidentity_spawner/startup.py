"""Hub start-up: refuse to start with wrong identity settings, and warn about risky ones.

JupyterHub has no hook for a spawner to check its configuration when the hub
starts (spawners are made per user, at their first spawn), so a wrong rule would
only show up as failed spawns. :func:`guard_jupyterhub_startup` therefore wraps
``JupyterHub.update_config``: after every config load the settings are checked, and a
wrong rule stops the hub with one message naming the rule and key. It is installed
by the hub-side modules (:mod:`.spawner`, :mod:`.hooks`) when they are imported;
the notebook side (:mod:`.creds`) never imports it, so no Jupyter server is patched.
"""

from __future__ import annotations

import sys
from typing import Any

from traitlets.config import Config

from .config import SECTIONS, identity_settings
from .errors import ConfigError
from .providers import registered
from .providers.base import Provider


def check_config(config: Config) -> None:
    """Raise ConfigError (naming the rule and key) if the identity settings are wrong."""
    settings = identity_settings(config)
    for rule in settings.compiled_rules.rules:
        if rule.cloud_key is None:
            continue
        provider, block, where = registered()[rule.cloud_key], rule.cloud, f"{rule.label}.{rule.cloud_key}"
        if block.hub_made and provider.sdk_module:
            try:
                __import__(provider.sdk_module)
            except ImportError:
                raise ConfigError(
                    f"{where}.{block.mode}: needs the {provider.extra} extra "
                    f"(pip install 'cloudidentity-spawner[{provider.extra}]')"
                ) from None
        if block.hub_made and not makes_identities(provider):
            raise ConfigError(f"{where}: provider {rule.cloud_key!r} plans an identity for the hub to make, but has no "
                              "backends that make, revoke and delete identities (Provider.backends, make_backend, revoke)")
        provider.check(block, settings, where)
    check_group_authorities(config)


def makes_identities(provider: Any) -> bool:
    """Whether *provider* names backends and implements making and revoking with them."""
    implemented = [getattr(type(provider), m, None) is not getattr(Provider, m) for m in ("make_backend", "revoke")]
    # An account records a hub-made identity as "<key>:<identity>": the key must be a backend's.
    return provider.key in getattr(provider, "backends", ()) and all(implemented)


def check_group_authorities(config: Config) -> None:
    """JupyterHub's groups (which the rules match too) must trust the same entitlement authorities
    as the rules: with ``entitlement_authorities`` set, an authenticator that fills JupyterHub's
    groups with :func:`.auth.auth_state_groups` must be given the same list."""
    from .auth import auth_state_groups

    wanted = identity_settings(config).entitlement_authorities
    if wanted is None:
        return
    for section in [s for s in config if s.endswith("Authenticator")]:
        key = config[section].get("auth_state_groups_key")
        plain = key is auth_state_groups
        partial_authorities = getattr(key, "keywords", {}).get("authorities") if getattr(key, "func", None) is auth_state_groups else None
        if plain or (partial_authorities is not None and sorted(partial_authorities) != sorted(wanted)):
            raise ConfigError(
                f"c.{section}.auth_state_groups_key trusts {'the login issuer' if plain else list(partial_authorities)} "
                f"for entitlements but c.CloudIdentitySpawner.entitlement_authorities is {list(wanted)}: JupyterHub's "
                "groups, which the rules match too, would count other authorities' groups. Use "
                f"functools.partial(auth_state_groups, authorities={list(wanted)!r})"
            )


def check_hook_profiles(config: Config) -> None:
    """With the plain pre_spawn_hook on another spawner, a static profile_list may not use
    what only CloudIdentitySpawner enforces (ConfigError naming the profile and key)."""
    from .profiles import unenforceable_profile_setting

    # A config can only name the hook by importing its module; if it is not imported, no
    # section names it (and importing it here would run this check again, nested).
    hooks = sys.modules.get(f"{__package__}.hooks")
    pre_spawn_hook = getattr(hooks, "pre_spawn_hook", None)
    if pre_spawn_hook is None:
        return
    for section in ("KubeSpawner", "Spawner"):
        if section in config and config[section].get("pre_spawn_hook") is pre_spawn_hook:
            break
    else:
        return
    spawner_class = config.JupyterHub.get("spawner_class", "") if "JupyterHub" in config else ""
    if spawner_class == "cloudidentity" or getattr(spawner_class, "__name__", "") == "CloudIdentitySpawner":
        return
    profiles = config.KubeSpawner.get("profile_list") if "KubeSpawner" in config else None
    problem = None if callable(profiles) or not profiles else unenforceable_profile_setting(profiles)
    if problem:
        raise ConfigError(f"KubeSpawner.profile_list: {problem}")


def blocks_metadata_server(config: Config) -> bool:
    """Whether user pods get zero-to-jupyterhub's ``block-cloud-metadata`` init container
    (``singleuser.cloudMetadata.blockWithIptables``, on by default in the chart)."""
    containers = config.KubeSpawner.get("init_containers", []) if "KubeSpawner" in config else []
    return any(
        (c.get("name") if isinstance(c, dict) else getattr(c, "name", None)) == "block-cloud-metadata"
        for c in containers or []
    )


def check_hub(app: Any) -> None:
    """Check a JupyterHub app's loaded config: exit on an error, log warnings for risky settings."""
    if not any(section in app.config for section in SECTIONS):
        return
    try:
        check_config(app.config)
        check_hook_profiles(app.config)
    except ConfigError as e:
        app.log.critical("cloudidentity-spawner: configuration error: %s", " ".join(str(e).split()))
        app.exit(1)
    if blocks_metadata_server(app.config) and any(r.gcp is not None for r in identity_settings(app.config).compiled_rules.rules):
        app.log.warning(
            "cloudidentity-spawner: user pods block the cloud metadata server (zero-to-jupyterhub's "
            "singleuser.cloudMetadata.blockWithIptables), so GKE Workload Identity cannot give them credentials; "
            "set blockWithIptables: false and networkPolicy.egressAllowRules.cloudMetadataServer: true "
            "(examples/z2jh/values-gke.yaml)"
        )
    settings = identity_settings(app.config)
    timeout = app.config.KubeSpawner.get("start_timeout", 60) if "KubeSpawner" in app.config else 60
    longest = max(settings.gcp_activation_seconds, settings.gcp_annotation_settle_seconds) + settings.gcp_propagation_seconds
    if settings.compiled_rules.manages("gcp") and longest + 30 > timeout:
        app.log.warning(
            "cloudidentity-spawner: a first spawn may wait up to %.0f s for Google IAM (gcp_propagation_seconds + "
            "gcp_activation_seconds) before its pod starts, but KubeSpawner.start_timeout is %s s: raise start_timeout "
            "(zero-to-jupyterhub's default is 300) or lower the waits", longest, timeout,
        )
    if not _auth_state_enabled(app.config):
        app.log.warning(
            "cloudidentity-spawner: auth_state is not enabled (c.Authenticator.enable_auth_state = True, and "
            "JUPYTERHUB_CRYPT_KEY): identity rules can only see JupyterHub groups, and spawns of users "
            "without a stored login fail with 'log in again'"
        )


def _auth_state_enabled(config: Config) -> bool:
    for section, values in config.items():
        if section.endswith("Authenticator") and "enable_auth_state" in values:
            return bool(values["enable_auth_state"])
    return False


def guard_jupyterhub_startup() -> None:
    """Make JupyterHub refuse to start when the identity rules are wrong, with one message.

    JupyterHub imports the hub-side modules while starting: while building its list of
    configurable classes (inside ``JupyterHub()``, before the config file is read), from
    jupyterhub_config.py itself, or when it resolves ``spawner_class`` (after the config is
    read). So the config is checked now if a hub is already configured, and after every
    config load from then on.
    """
    try:
        from jupyterhub.app import JupyterHub
    except ImportError:
        return
    if not getattr(JupyterHub, "_cloudidentity_guarded", False):
        load = JupyterHub.update_config

        def update_config(self: Any, config: Config) -> None:
            load(self, config)
            check_hub(self)

        update_config.__doc__ = load.__doc__
        JupyterHub.update_config = update_config
        JupyterHub._cloudidentity_guarded = True
    # Not JupyterHub.initialized(): in a Jupyter server (another Application
    # singleton) that is also true, and JupyterHub.instance() would raise.
    app = getattr(JupyterHub, "_instance", None)
    if isinstance(app, JupyterHub):
        check_hub(app)
