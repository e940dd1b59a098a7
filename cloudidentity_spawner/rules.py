"""Identity rules: validate the operator's rules, and turn claims into an IdentityPlan.

A rule is a plain dict (see the README's configuration reference)::

    {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
     "aws": {"role_arn": "arn:aws:iam::123456789012:role/jh/atlas"}}

Rules are checked in order and the first that matches decides. Nothing here
does I/O; the spawner calls :meth:`IdentityRules.resolve` on every spawn.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Any

from . import names, storage_tokens
from .claims import Claims
from .errors import ConfigError, IdentityError, NoMatchingRule
from .overlap import Named, check_disjoint
from .plan import (
    GROUP_LABEL,
    HUB_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MANAGED_IDENTITY_ANNOTATION,
    OWNER_ANNOTATION,
    PERSON_ANNOTATION,
    RULE_ANNOTATION,
    RULE_LABEL,
    SCOPE_LABEL,
    SCOPES,
    USER_LABEL,
    IdentityPlan,
    ServiceAccountPlan,
)
from .providers import registered
from .providers._common import check_keys, check_template
from .templates import TemplateError, raw, render

ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
"""Kubernetes' rule for environment variable names (its ``IsEnvVarName``)."""
RULE_KEYS = {"name", "match", "scope", "service_account", "env", "adopt", "tokens"}
"""A rule's keys besides its provider blocks (one per registered provider: :func:`.providers.registered`)."""
MATCH_KEYS = {"groups", "users", "admin", "roles"}
DEFAULT_SERVICE_ACCOUNT = {
    "user": "jupyter-{username}",
    "group": "jupyter-group-{group}",
    "hub": "jupyter-{hub}-{rule}",
}
_USER_FIELDS = {"username", "safe_username"}
_GROUP_FIELDS = {"group", "safe_group"}


@dataclass(frozen=True)
class Rule:
    """One validated identity rule."""

    index: int
    name: str
    scope: str
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    admin: bool | None = None
    roles: tuple[str, ...] = ()
    service_account: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    cloud_key: str | None = None
    """The rule's provider block's key (``aws``, ``gcp``, ``azure``, ``s3_sts`` or a site's), or None."""
    cloud: Any = None
    """That block's validated settings."""
    adopt: bool = False
    tokens: Any = None
    """The rule's storage tokens (:class:`.storage_tokens.TokenSettings`), or None."""

    @property
    def provider(self) -> Any:
        """The rule's provider block's settings, or None."""
        return self.cloud

    def _block(self, key: str) -> Any:
        return self.cloud if self.cloud_key == key else None

    @property
    def aws(self) -> Any:
        return self._block("aws")

    @property
    def gcp(self) -> Any:
        return self._block("gcp")

    @property
    def azure(self) -> Any:
        return self._block("azure")

    @property
    def s3_sts(self) -> Any:
        return self._block("s3_sts")

    @property
    def matches_everyone(self) -> bool:
        """``match: {}``: no groups and no users listed."""
        return not self.groups and not self.users and self.admin is None and not self.roles

    @property
    def label(self) -> str:
        return f"identity_rules[{self.index}] ({self.name!r})"

    def match(self, claims: Claims) -> tuple[bool, str | None]:
        """``(matched, group)``: the group is the one that decides a group-scope identity.

        For each pattern of ``match.groups`` in order, the user's groups matching it
        are sorted and the first wins, so the choice does not depend on claim order.
        """
        for pattern in self.groups:
            hits = sorted(g for g in claims.groups if fnmatchcase(g, pattern))
            if hits:
                return True, hits[0]
        if self.matches_everyone or any(fnmatchcase(claims.username, p) for p in self.users):
            return True, None
        if (self.admin is not None and claims.admin == self.admin) or any(
                fnmatchcase(role, p) for role in claims.roles for p in self.roles):
            return True, None
        return False, None


def _string_patterns(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of non-empty strings (shell-style globs allowed), got {value!r:.80}")
    return tuple(value)


def parse_rule(raw_rule: Any, index: int, trusted_claims: Collection[str] = ()) -> Rule:
    """Validate one rule; every ConfigError names the rule (index and name) and the key.

    A claim may decide an identity (ServiceAccount name, ARN, account id, prefix,
    policy) only if it is in *trusted_claims*; env values may use any claim."""
    name = raw_rule.get("name", f"rule-{index}") if isinstance(raw_rule, Mapping) else f"rule-{index}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"identity_rules[{index}].name: expected a non-empty string, got {name!r}")
    where = f"identity_rules[{index}] ({name!r})"
    check_keys(raw_rule, RULE_KEYS | set(registered()), where)

    match = check_keys(raw_rule.get("match", None), MATCH_KEYS, f"{where}.match") if "match" in raw_rule else None
    if match is None:
        raise ConfigError(f"{where}: missing required key 'match' (use {{}} to match everyone)")
    groups = _string_patterns(match["groups"], f"{where}.match.groups") if "groups" in match else ()
    users = _string_patterns(match["users"], f"{where}.match.users") if "users" in match else ()
    roles = _string_patterns(match["roles"], f"{where}.match.roles") if "roles" in match else ()
    admin = match.get("admin")
    if admin is not None and not isinstance(admin, bool):
        raise ConfigError(f"{where}.match.admin: expected true (JupyterHub admins) or false (everyone else), got {admin!r}")

    scope = raw_rule.get("scope", "user")
    if scope not in SCOPES:
        raise ConfigError(f"{where}.scope: unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    if scope == "group" and not groups:
        raise ConfigError(f"{where}.scope: 'group' scope needs match.groups (the group decides the shared identity)")

    # Fields a template of this rule cannot use: shared identities must not
    # depend on one user, and {group} needs a group match.
    # Per-pod settings (env) may still use the user's name.
    group_fields = _GROUP_FIELDS if scope == "hub" or not groups else set()
    forbidden = group_fields | (_USER_FIELDS | {"claims"} if scope != "user" else set())

    service_account = raw_rule.get("service_account", DEFAULT_SERVICE_ACCOUNT[scope])
    check_template(service_account, f"{where}.service_account", forbidden, trusted_claims)

    env = raw_rule.get("env", {})
    if not isinstance(env, Mapping):
        raise ConfigError(f"{where}.env: expected a mapping of variable names to templates")
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise ConfigError(f"{where}.env: invalid environment variable name {key!r}: Kubernetes takes letters, "
                              "digits, '_', '-' and '.', not starting with a digit (ASCII only)")
        check_template(value, f"{where}.env.{key}", group_fields)

    blocks = [key for key in registered() if key in raw_rule]
    if len(blocks) > 1:
        raise ConfigError(f"{where}: has both {blocks[0]!r} and {blocks[1]!r}; give exactly one provider block per rule (or none)")
    cloud_key = blocks[0] if blocks else None
    cloud = registered()[cloud_key].parse(raw_rule[cloud_key], f"{where}.{cloud_key}", forbidden, trusted_claims) \
        if cloud_key else None

    # A storage token is the user's own whatever the rule's scope (like env), so its paths may
    # name the user; a claim in them must be trusted, as in a policy.
    tokens = storage_tokens.parse(raw_rule["tokens"], f"{where}.tokens", group_fields, trusted_claims) \
        if "tokens" in raw_rule else None

    adopt = raw_rule.get("adopt", False)
    if not isinstance(adopt, bool):
        raise ConfigError(f"{where}.adopt: expected true or false, got {adopt!r}")

    return Rule(
        index=index,
        name=name,
        scope=scope,
        groups=groups,
        users=users,
        admin=admin,
        roles=roles,
        service_account=service_account,
        env=dict(env),
        cloud_key=cloud_key,
        cloud=cloud,
        adopt=adopt,
        tokens=tokens,
    )


def named_templates(rule: Rule) -> list[Named]:
    """Every template of *rule* that names an identity or what it reaches (:mod:`.overlap`)."""
    found = [Named(f"{rule.label}.service_account", rule.name, rule.scope, "ServiceAccount", rule.service_account,
                   "raw", scoped=True)]
    if rule.cloud_key is not None:
        found += registered()[rule.cloud_key].named_templates(rule.cloud, f"{rule.label}.{rule.cloud_key}", rule.name, rule.scope)
    return found


def parse_rules(raw_rules: Any, trusted_claims: Collection[str] = ()) -> tuple[Rule, ...]:
    """Validate all rules (at hub start-up). Rule names must be unique."""
    if not isinstance(raw_rules, Sequence) or isinstance(raw_rules, (str, bytes)):
        raise ConfigError(f"identity_rules: expected a list of rules, got {type(raw_rules).__name__}")
    if isinstance(trusted_claims, (str, bytes)) or not all(isinstance(c, str) and c for c in trusted_claims):
        raise ConfigError(f"trusted_claims: expected a list of claim names like ['sub'], got {trusted_claims!r}")
    rules = tuple(parse_rule(r, i, trusted_claims) for i, r in enumerate(raw_rules))
    seen: dict[str, int] = {}
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(f"{rule.label}.name: the name is already used by identity_rules[{seen[rule.name]}]")
        seen[rule.name] = rule.index
    storage_tokens.check_disjoint([path for rule in rules if rule.tokens is not None
                                   for path in storage_tokens.storage_paths(rule.tokens, f"{rule.label}.tokens")])
    return rules


def ownership_markers(plan: IdentityPlan, hub: str) -> IdentityPlan:
    """*plan* with the labels and annotations every account the hub manages carries.

    Plans from the rules have them already; an ``identity_resolver`` may build its
    ServiceAccountPlan bare, and an account made without them would be refused as
    foreign at the next spawn. The markers always win over what the plan says.
    """
    sa = plan.service_account
    if plan.scope not in SCOPES:
        raise IdentityError(
            "Your cloud identity could not be chosen; ask your hub admin.",
            f"identity_resolver returned scope {plan.scope!r}; expected one of {', '.join(SCOPES)}",
        )
    labels = {**sa.labels, MANAGED_BY_LABEL: MANAGED_BY, HUB_LABEL: names.label_value(hub), SCOPE_LABEL: plan.scope,
              RULE_LABEL: names.label_value(plan.rule)}
    if plan.scope == "user":
        labels[USER_LABEL] = names.label_value(plan.user)
    elif plan.scope == "group" and plan.group:
        labels[GROUP_LABEL] = names.label_value(plan.group)
    annotations = {**sa.annotations, OWNER_ANNOTATION: plan.owner, RULE_ANNOTATION: plan.rule}
    if plan.cloud is not None and plan.cloud.hub_made:
        annotations[MANAGED_IDENTITY_ANNOTATION] = plan.cloud.recorded
    return replace(plan, service_account=replace(sa, labels=labels, annotations=annotations))


@dataclass(frozen=True)
class IdentityRules:
    """The operator's rules plus the hub-wide settings they are rendered with."""

    rules: tuple[Rule, ...]
    hub: str = "jupyterhub"

    @classmethod
    def from_config(cls, raw_rules: Any, hub: str = "jupyterhub", trusted_claims: Collection[str] = ()) -> IdentityRules:
        if not isinstance(hub, str) or not names.is_valid_ksa_name(hub):
            raise ConfigError(f"hub_name: expected a short DNS-style name like 'jupyterhub', got {hub!r}")
        rules = parse_rules(raw_rules, trusted_claims)
        check_disjoint([named for rule in rules for named in named_templates(rule)], hub)
        return cls(rules, hub)

    def manages(self, provider: str) -> bool:
        """Whether any rule has the hub manage *provider* (``aws``, ``gcp``, ``azure``) identities."""
        return any(getattr(rule, provider) is not None and getattr(rule, provider).hub_made for rule in self.rules)

    @property
    def storage_tokens(self) -> bool:
        """Whether any rule gives servers a storage token (so there are Secrets to look after)."""
        return any(rule.tokens is not None for rule in self.rules)

    @cached_property
    def managed_places(self) -> tuple[str, ...]:
        """Where the rules make identities: role ARN prefixes (``arn:...:role/<path>``) and
        Google account e-mail suffixes (``@<project>.iam.gserviceaccount.com``)."""
        return tuple(place for rule in self.rules if rule.cloud_key is not None
                     for place in registered()[rule.cloud_key].managed_places(rule.cloud))

    def find(self, claims: Claims) -> tuple[Rule, str | None]:
        for rule in self.rules:
            matched, group = rule.match(claims)
            if matched:
                return rule, group
        raise NoMatchingRule(
            f"No cloud identity is configured for user {claims.username!r} ({_groups_phrase(claims)}); ask your hub admin.",
            f"no identity rule matches user {claims.username!r} ({_groups_phrase(claims)})",
        )

    def resolve(self, claims: Claims, namespace: str, rule_name: str | None = None) -> IdentityPlan:
        """The plan for this user: first matching rule, rendered for them.

        With *rule_name* (a profile's ``identity_rule``), that rule decides, and it
        must match the user like any other rule.
        """
        if rule_name is None:
            rule, group = self.find(claims)
        else:
            rule = next((r for r in self.rules if r.name == rule_name), None)
            if rule is None:
                raise IdentityError(
                    "This server profile's cloud identity is not configured; ask your hub admin.",
                    f"a profile names identity_rule {rule_name!r}, but no identity rule has that name",
                )
            matched, group = rule.match(claims)
            if not matched:
                raise NoMatchingRule(
                    "This server profile's cloud identity is not available to you; ask your hub admin.",
                    f"identity rule {rule_name!r} (named by the profile) does not match user "
                    f"{claims.username!r} ({_groups_phrase(claims)})",
                )
        try:
            return self._plan(rule, group, claims, namespace)
        except (TemplateError, ValueError) as e:
            raise IdentityError(
                "Your cloud identity could not be prepared from your login details; ask your hub admin.",
                f"{rule.label}: cannot plan an identity for user {claims.username!r}: {e}",
            ) from None

    def shared_plan(self, owner: str, rule_name: str, namespace: str) -> IdentityPlan:
        """What rule *rule_name* plans now for a shared account's *owner* (``group:<group>`` or
        ``hub:<rule>``) in *namespace*: the same plan every member's spawn makes. NoMatchingRule
        (admin detail: why) if the rule is gone, has another scope, or no longer covers the group."""
        rule = next((r for r in self.rules if r.name == rule_name), None)
        kind, _, who = owner.partition(":")
        if rule is None:
            raise NoMatchingRule("", f"rule {rule_name!r} no longer exists")
        if rule.scope != kind:
            raise NoMatchingRule("", f"rule {rule_name!r} now gives {rule.scope}-scope accounts")
        group = None
        if kind == "group":
            matched, group = rule.match(Claims("", (who,)))
            if not matched or group != who:
                raise NoMatchingRule("", f"rule {rule_name!r} no longer matches group {who}")
        elif who != rule.name:
            raise NoMatchingRule("", f"rule {rule_name!r} does not own {owner}")
        try:
            return self._plan(rule, group, Claims("", () if group is None else (group,)), namespace)
        except (TemplateError, ValueError) as e:
            raise IdentityError("", f"{rule.label}: cannot plan {owner}: {e}") from None

    def _plan(self, rule: Rule, group: str | None, claims: Claims, namespace: str) -> IdentityPlan:
        context = {
            "username": claims.username,
            "safe_username": names.ksa_name(claims.username),
            "group": group,
            "safe_group": None if group is None else names.ksa_name(group),
            "namespace": namespace,
            "hub": self.hub,
            "rule": rule.name,
            "claims": claims.values,
            "person": claims.person if rule.scope == "user" else None,
        }
        if rule.scope == "user":
            owner = f"user:{claims.username}"
        elif rule.scope == "group":
            owner = f"group:{group}"
        else:
            owner = f"hub:{rule.name}"
        sa_name = names.ksa_name(render(rule.service_account, context, raw), rule.scope)

        labels = {
            MANAGED_BY_LABEL: MANAGED_BY,
            HUB_LABEL: names.label_value(self.hub),
            SCOPE_LABEL: rule.scope,
            RULE_LABEL: names.label_value(rule.name),
        }
        if rule.scope == "user":
            labels[USER_LABEL] = names.label_value(claims.username)
        elif rule.scope == "group":
            labels[GROUP_LABEL] = names.label_value(group)
        annotations = {OWNER_ANNOTATION: owner, RULE_ANNOTATION: rule.name}
        if context["person"]:
            annotations[PERSON_ANNOTATION] = context["person"]

        cloud = None
        if rule.cloud_key is not None:
            extra, cloud = registered()[rule.cloud_key].plan(rule.cloud, context, rule.scope, owner, namespace, sa_name)
            annotations.update(extra)
            if cloud.hub_made:
                annotations[MANAGED_IDENTITY_ANNOTATION] = cloud.recorded

        env = {key: render(value, context, names.resource_part) for key, value in rule.env.items()}
        # The user's own storage token (none for a group's or the hub's plan made without a user).
        tokens = storage_tokens.plan(rule.tokens, context) if rule.tokens is not None and claims.username else None
        return IdentityPlan(
            user=claims.username,
            groups=claims.groups,
            rule=rule.name,
            scope=rule.scope,
            owner=owner,
            group=group,
            service_account=ServiceAccountPlan(sa_name, namespace, annotations, labels),
            env=env,
            cloud=cloud,
            adopt=rule.adopt,
            tokens=tokens,
        )


def _groups_phrase(claims: Claims) -> str:
    """The user's groups as a person reads them: ``no groups``, ``group /a``, ``groups /a, /b``."""
    groups = list(claims.groups)
    if not groups:
        return "no groups"
    return ("group " if len(groups) == 1 else "groups ") + ", ".join(groups)


async def plan_for(
    settings: Any, spawner: Any, claims: Claims, namespace: str, rule_name: str | None = None
) -> IdentityPlan:
    """The plan for one spawn: the operator's ``identity_resolver`` if it answers, else the rules."""
    rules = settings.compiled_rules
    if settings.identity_resolver is not None:
        plan = settings.identity_resolver(spawner, claims)
        if inspect.isawaitable(plan):
            plan = await plan
        if plan is not None:
            if not isinstance(plan, IdentityPlan):
                raise IdentityError(
                    "Your cloud identity could not be chosen; ask your hub admin.",
                    f"identity_resolver returned {type(plan).__name__}, expected an IdentityPlan or None",
                )
            return ownership_markers(plan, settings.hub_name)
    return rules.resolve(claims, namespace, rule_name)
