"""The operator's identity settings, shared by CloudIdentitySpawner and the plain pre_spawn_hook."""

from __future__ import annotations

import inspect
import json
from functools import cached_property
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Integer, List, Unicode
from traitlets.config import Config, LoggingConfigurable

from .claims import DEFAULT_GROUP_CLAIMS, Claims, claims_from_auth_state
from .errors import ConfigError, IdentityError
from .plan import IdentityPlan
from .rules import IdentityRules, ownership_markers


class CloudIdentity(LoggingConfigurable):
    """The identity settings. ``CloudIdentitySpawner`` inherits them, so both
    ``c.CloudIdentitySpawner.identity_rules`` and (for a stock KubeSpawner with
    the ``pre_spawn_hook``) ``c.CloudIdentity.identity_rules`` work."""

    # Any, not List: a wrong type (a string, a dict) gets our message naming the key,
    # instead of being coerced or rejected with a generic TraitError.
    identity_rules = AnyTrait(
        [],
        config=True,
        help="""
        Rules that choose each user's cloud identity; the first rule that matches wins.

        Each rule is a dict with keys `name` (optional), `match` ({"groups": [...]},
        {"users": [...]}, both, or {} for everyone; shell-style globs such as
        "/escape/*" allowed), `scope` ("user", "group" or "hub"; default "user"),
        `service_account` (ServiceAccount name template), one of `aws` or `gcp`
        (or neither: ServiceAccount only), `env` (extra environment templates)
        and `adopt` (take over an existing ServiceAccount we did not create).
        Example:

            c.CloudIdentitySpawner.identity_rules = [
                {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
                 "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/atlas"}},
                {"name": "everyone", "match": {}, "scope": "user",
                 "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/{username}"}},
            ]

        Unset (empty), no user matches and every spawn fails with "no cloud identity
        is configured"; a user never silently gets a broader identity.
        """,
    )
    identity_resolver = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        Optional callable `(spawner, claims) -> IdentityPlan | None` (may be async) for
        cases rules cannot express. Returning None falls through to `identity_rules`.
        `claims` has `.username`, `.groups` and the raw provider claims in `.values`.
        """,
    )
    hub_name = Unicode(
        "jupyterhub",
        config=True,
        help="""
        A short name for this hub, used in default names ({hub}) and in the tags of
        roles and accounts the hub manages, so several hubs can share one cloud account.
        Example: "atlas-hub". Default: "jupyterhub".
        """,
    )
    trusted_claims = List(
        Unicode(),
        config=True,
        help="""
        Claims that may decide a cloud identity: a `{claims[key]}` in a ServiceAccount
        name, role ARN or name, Google account id or e-mail, bucket prefix or policy
        template must name one of these, or the hub refuses to start naming the rule
        and key. List only claims your identity provider never lets users edit (its
        stable subject id, say: ["sub"]); `name` and often `email` are user-editable,
        and a user who edits one could pick someone else's identity.
        Environment values (`env`) and descriptions may use any claim.
        Default: [] (no claim decides an identity; use {username}).
        """,
    )
    auth_state_claims_key = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""
        The auth_state key that holds the identity provider's claims. Unset, the keys
        OAuthenticator uses are tried in order ("oauth_user" for GenericOAuthenticator,
        "user" for Azure AD, "github_user", ...).
        """,
    )
    claim_groups_keys = List(
        list(DEFAULT_GROUP_CLAIMS),
        config=True,
        help="""
        Claims that list the user's groups, read in order and merged. A key is looked
        up literally first ("wlcg.groups" is one claim) and then as a dotted path
        ("realm_access.roles"). "eduperson_entitlement" values are read as AARC-G002
        group URNs. Default: ["groups", "wlcg.groups", "eduperson_entitlement"].
        """,
    )

    aws_client_kwargs = Dict(
        config=True,
        help="""
        Extra arguments for the boto3 IAM client that manages roles, e.g.
        {"region_name": "eu-west-1"} or {"endpoint_url": "http://127.0.0.1:5000"} for a
        test endpoint. Credentials come from the hub pod's own identity as usual.
        Only used by rules with aws.managed.
        """,
    )
    aws_max_concurrent_calls = Integer(
        4,
        config=True,
        help="""
        At most this many IAM calls at once from this hub, so a class of first-time
        logins does not trip IAM throttling (throttled calls are also retried, adaptively).
        """,
    )
    aws_role_propagation_seconds = Float(
        10.0,
        config=True,
        help="""
        After creating a role, wait this long (0-60 s) before the pod starts: new IAM roles
        take a few seconds before STS lets a pod assume them. The user sees a slower first
        spawn instead of AccessDenied in their first notebook cell. 0 disables the wait.
        """,
    )
    gcp_propagation_seconds = Float(
        60.0,
        config=True,
        help="""
        After creating a Google service account, how long (0-600 s) the first spawn keeps
        retrying IAM's "service account ... does not exist" answers while Google's IAM catches
        up (usually seconds). Past it the spawn fails with "try again in a minute" and the next
        spawn carries on. Only accounts this hub just created are retried.
        """,
    )
    gcp_activation_seconds = Float(
        60.0,
        config=True,
        help="""
        After a spawn grants a Kubernetes ServiceAccount its Google account
        (roles/iam.workloadIdentityUser: a first spawn, or a new namespace or name), wait up to
        this long (0-900 s) before the pod starts, showing "Your new Google identity is being
        activated" on the spawn page: Google documents that IAM changes can take minutes to
        take effect, and until then the pod's token exchange is refused (403). Without
        gcp_activation_check the whole time is waited; with it, only until the check passes.
        0 starts the pod at once.
        """,
    )
    gcp_annotation_settle_seconds = Float(
        10.0,
        config=True,
        help="""
        After a spawn sets or changes a ServiceAccount's iam.gke.io/gcp-service-account
        annotation (a first spawn, or a changed Google account, existing ones included), wait
        this long (0-300 s) before the pod starts: GKE's metadata server learns annotations
        from its own watch, and a pod that asks first gets no (or the old) Google identity.
        Ends early when gcp_activation_check passes. 0 starts the pod at once.
        """,
    )
    gcp_activation_check = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        Optional callable `(plan) -> bool` (may be async): True once the plan's Google account
        is usable from its Kubernetes ServiceAccount (e.g. a token exchange your platform can
        try). Polled every second during the activation wait; still False after
        gcp_activation_seconds fails the spawn with "try again in a few minutes".
        """,
    )
    gcp_client_factory = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        Optional callable returning (iam_admin_v1.IAMClient, resourcemanager_v3.ProjectsClient,
        storage.Client) for hub-managed Google service accounts, for custom endpoints or
        credentials. Unset, the clients use Application Default Credentials (the hub pod's
        own Workload Identity). Only used by rules with gcp.managed.
        """,
    )
    gcp_max_concurrent_calls = Integer(
        4,
        config=True,
        help="At most this many Google Cloud IAM calls at once from this hub.",
    )
    irsa_pod_spec = Bool(
        True,
        config=True,
        help="""
        Put what EKS's pod-identity webhook would add for an IRSA role - AWS_ROLE_ARN,
        AWS_WEB_IDENTITY_TOKEN_FILE and the projected token volume "aws-iam-token" - into
        the pod spec ourselves, for the plan's role. The webhook reads ServiceAccounts from
        its own cache, so a pod made right after its account was created or re-annotated
        can start without credentials or with the old role; with this, the first notebook
        cell works every time, and the webhook sees the work done and adds nothing twice.
        Set False to leave it all to the webhook.
        """,
    )
    cloud_cache_seconds = Float(
        3600.0,
        config=True,
        help="""
        How long a managed role or service account that was checked or made right is
        trusted without asking the cloud again, so warm spawns make no cloud calls.
        A changed rule or template is applied at the next spawn regardless.
        """,
    )

    @cached_property
    def compiled_rules(self) -> IdentityRules:
        """The validated rules (ConfigError names the rule and key when they are wrong)."""
        return IdentityRules.from_config(self.identity_rules, self.hub_name, self.trusted_claims)

    @cached_property
    def managed_places(self) -> tuple[str, ...]:
        """Where the rules make identities: role ARN prefixes (``arn:...:role/<path>``) and
        Google account e-mail suffixes (``@<project>.iam.gserviceaccount.com``)."""
        from .providers.aws import parse_oidc_provider_arn

        places = []
        for rule in self.compiled_rules.rules:
            if rule.aws is not None and rule.aws.managed is not None:
                partition, account, _ = parse_oidc_provider_arn(rule.aws.managed["oidc_provider_arn"])
                places.append(f"arn:{partition}:iam::{account}:role{rule.aws.managed['role_path']}")
            if rule.gcp is not None and rule.gcp.managed is not None:
                places.append(f"@{rule.gcp.managed['project']}.iam.gserviceaccount.com")
        return tuple(places)

    def manages(self, provider: str) -> bool:
        """Whether any rule has the hub manage *provider* identities."""
        return any(
            getattr(rule, provider) is not None and getattr(rule, provider).managed is not None
            for rule in self.compiled_rules.rules
        )

    def cloud_backend(self, provider: str) -> Any:
        """The process-wide backend that manages *provider* identities (its SDK loaded on first use)."""
        return backend_for(self, provider)

    def claims_for(self, username: str, auth_state: Any, hub_groups: list[str]) -> Claims:
        return claims_from_auth_state(
            username,
            auth_state,
            hub_groups,
            claims_key=self.auth_state_claims_key,
            group_claims=self.claim_groups_keys,
        )

    async def plan_for(self, spawner: Any, claims: Claims, namespace: str, rule_name: str | None = None) -> IdentityPlan:
        """The plan for one spawn: the resolver if it answers, else the rules."""
        rules = self.compiled_rules
        if self.identity_resolver is not None:
            plan = self.identity_resolver(spawner, claims)
            if inspect.isawaitable(plan):
                plan = await plan
            if plan is not None:
                if not isinstance(plan, IdentityPlan):
                    raise IdentityError(
                        "Your cloud identity could not be chosen; ask your hub admin.",
                        f"identity_resolver returned {type(plan).__name__}, expected an IdentityPlan or None",
                    )
                return ownership_markers(plan)
        return rules.resolve(claims, namespace, rule_name)


async def user_claims(config: CloudIdentity, user: Any) -> Claims:
    """Claims of a JupyterHub user: their auth_state plus their JupyterHub groups."""
    auth_state = await user.get_auth_state()
    hub_groups = [getattr(g, "name", g) for g in (getattr(user, "groups", None) or [])]
    return config.claims_for(user.name, auth_state, hub_groups)


SECTIONS = ("CloudIdentity", "CloudIdentitySpawner")


def identity_settings(config: Config) -> CloudIdentity:
    """The identity settings in a loaded config, as the spawner sees them
    (``c.CloudIdentitySpawner.*`` overrides ``c.CloudIdentity.*``)."""
    merged = Config()
    for section in SECTIONS:
        if section in config:
            merged.CloudIdentity.merge(config[section])
    return CloudIdentity(config=merged)


def check_config(config: Config) -> None:
    """Raise ConfigError (naming the rule and key) if the identity settings are wrong."""
    settings = identity_settings(config)
    for rule in settings.compiled_rules.rules:
        for provider, block, module in (("aws", rule.aws, "boto3"), ("gcp", rule.gcp, "google.cloud.iam_admin_v1")):
            if block is not None and block.managed is not None:
                try:
                    __import__(module)
                except ImportError:
                    raise ConfigError(
                        f"{rule.label}.{provider}.managed: needs the {provider} extra "
                        f"(pip install 'cloudidentity-spawner[{provider}]')"
                    ) from None


_backends: dict[tuple, Any] = {}


def backend_for(settings: CloudIdentity, provider: str) -> Any:
    """One backend per provider and client settings per process, so caches,
    locks and the IAM call limit are shared by all spawns."""
    if provider == "aws":
        kwargs = dict(settings.aws_client_kwargs)
        key = ("aws", json.dumps(kwargs, sort_keys=True, default=str))
        if key not in _backends:
            from .providers.aws_iam import ManagedRoles

            _backends[key] = ManagedRoles(
                kwargs,
                max_concurrent_calls=settings.aws_max_concurrent_calls,
                cache_seconds=settings.cloud_cache_seconds,
                propagation_seconds=settings.aws_role_propagation_seconds,
                log=settings.log,
            )
        return _backends[key]
    if provider == "gcp":
        factory = settings.gcp_client_factory
        key = ("gcp", id(factory))
        if key not in _backends:
            from .providers.gcp_iam import ManagedServiceAccounts

            _backends[key] = ManagedServiceAccounts(
                factory,
                max_concurrent_calls=settings.gcp_max_concurrent_calls,
                cache_seconds=settings.cloud_cache_seconds,
                propagation_seconds=settings.gcp_propagation_seconds,
                log=settings.log,
            )
        return _backends[key]
    raise ConfigError(f"no backend manages {provider!r} identities")


def check_hook_profiles(config: Config) -> None:
    """With the plain pre_spawn_hook on another spawner, a static profile_list may not use
    what only CloudIdentitySpawner enforces (ConfigError naming the profile and key)."""
    from .hooks import pre_spawn_hook
    from .profiles import unenforceable_profile_setting

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


def _check_hub(app: Any) -> None:
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
    if settings.manages("gcp") and longest + 30 > timeout:
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

    Called when this package is imported. JupyterHub imports it while starting:
    while building its list of configurable classes (inside ``JupyterHub()``,
    before the config file is read), from jupyterhub_config.py itself, or when
    it resolves ``spawner_class`` (after the config is read). So the config is
    checked now if a hub is already configured, and after every config load
    from then on; a bad rule stops the hub at start-up instead of failing spawns.
    """
    try:
        from jupyterhub.app import JupyterHub
    except ImportError:
        return
    if not getattr(JupyterHub, "_cloudidentity_guarded", False):
        load = JupyterHub.update_config

        def update_config(self: Any, config: Config) -> None:
            load(self, config)
            _check_hub(self)

        update_config.__doc__ = load.__doc__
        JupyterHub.update_config = update_config
        JupyterHub._cloudidentity_guarded = True
    # Not JupyterHub.initialized(): in a Jupyter server (another Application
    # singleton) that is also true, and JupyterHub.instance() would raise.
    app = getattr(JupyterHub, "_instance", None)
    if isinstance(app, JupyterHub):
        _check_hub(app)
