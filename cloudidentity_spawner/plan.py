"""The immutable result of planning one user's identity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "cloudidentity-spawner"
PREFIX = "cloudidentity-spawner/"
OWNER_ANNOTATION = PREFIX + "owner"
"""Who an account belongs to (``user:alice``, ``group:/escape/atlas``, ``hub:<rule>``)."""
RULE_ANNOTATION = PREFIX + "rule"
PERSON_ANNOTATION = PREFIX + "person"
"""Whose login a user's account was made for: a hash of the login's issuer and subject
(:func:`.claims.person_digest`). A later login with the same user name and another subject is
refused the account and its identity (names are not people: ``preferred_username`` is neither
stable nor unique)."""
MANAGED_IDENTITY_ANNOTATION = PREFIX + "managed-identity"
"""The hub-managed cloud identity the account's plan uses (``aws:<role ARN>``, ``gcp:<e-mail>``):
when a later plan for the same account moves away from it, exactly that identity is revoked."""
GC_PENDING_ANNOTATION = PREFIX + "gc-pending"
"""Set by ``gc`` on an account it is about to remove; a spawn that finds it re-checks the cloud
identity instead of trusting its cache, and (like any owned key the plan lacks) removes it."""
SCOPE_LABEL = PREFIX + "scope"
USER_LABEL = PREFIX + "user"
GROUP_LABEL = PREFIX + "group"
RULE_LABEL = PREFIX + "rule"
HUB_LABEL = PREFIX + "hub"
"""Which hub (``hub_name``) made the account: ``status`` and ``gc`` look only at their own hub's."""

SCOPES = ("user", "group", "hub")
HUB_MADE_MODES = ("managed", "principal", "pod_identity")
"""Cloud plan modes whose cloud side the hub creates: a managed role or Google account, IAM
bindings for a Workload Identity Federation principal, or an EKS Pod Identity association.
The ``existing`` mode only points at what the operator made."""


def freeze(value: Any) -> Any:
    """A deeply read-only copy: mappings become MappingProxyType, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again, e.g. for JSON or API calls."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class _Frozen:
    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            object.__setattr__(self, name, freeze(getattr(self, name)))


@dataclass(frozen=True)
class ServiceAccountPlan(_Frozen):
    """The Kubernetes ServiceAccount the user's pods run under."""

    name: str
    namespace: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CloudPlan(_Frozen):
    """The cloud identity bound to the ServiceAccount.

    ``identity`` is the IAM role ARN, the Google service account e-mail, or (``principal``
    mode) the ServiceAccount's own Workload Identity Federation principal. For the modes the
    hub makes (:attr:`hub_made`), ``resources`` holds what it creates (role, trust and
    inline policies; account and IAM bindings; bindings only; a Pod Identity association).
    """

    provider: str
    mode: str
    identity: str
    resources: Mapping[str, Any] = field(default_factory=dict)

    @property
    def hub_made(self) -> bool:
        """Whether the hub makes this identity (and so also revokes and deletes it)."""
        return self.mode in HUB_MADE_MODES

    @property
    def recorded(self) -> str:
        """How a ServiceAccount records the hub-made identity it uses (its ``managed-identity``
        annotation): ``aws:<role ARN>``, ``gcp:<e-mail or principal>``, or for a Pod Identity
        association ``eks:<cluster>/<namespace>/<service account>`` (the shared role is not ours)."""
        if self.mode == "pod_identity":
            a = self.resources["association"]
            return f"eks:{a['clusterName']}/{a['namespace']}/{a['serviceAccount']}"
        return f"{self.provider}:{self.identity}"


@dataclass(frozen=True)
class IdentityPlan(_Frozen):
    """Everything the spawner needs to give one user their identity.

    ``owner`` names who the identity belongs to: ``user:<name>``,
    ``group:<group>`` or ``hub:<rule>``. Two plans with the same ServiceAccount
    but different owners are a conflict the spawner refuses.
    """

    user: str
    groups: tuple[str, ...]
    rule: str
    scope: str
    owner: str
    service_account: ServiceAccountPlan
    env: Mapping[str, str] = field(default_factory=dict)
    cloud: CloudPlan | None = None
    group: str | None = None
    adopt: bool = False
    tokens: Mapping[str, str] | None = None
    """The user's storage token: its ``audience`` and ``scope`` (:mod:`.storage_tokens`), or None."""

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-ready data (the ``plan --json`` format)."""
        sa = self.service_account
        return {
            "user": self.user,
            "groups": list(self.groups),
            "rule": self.rule,
            "scope": self.scope,
            "group": self.group,
            "owner": self.owner,
            "service_account": {
                "name": sa.name,
                "namespace": sa.namespace,
                "annotations": thaw(sa.annotations),
                "labels": thaw(sa.labels),
            },
            "env": thaw(self.env),
            "cloud": None
            if self.cloud is None
            else {
                "provider": self.cloud.provider,
                "mode": self.cloud.mode,
                "identity": self.cloud.identity,
                **thaw(self.cloud.resources),
            },
            "adopt": self.adopt,
            "tokens": thaw(self.tokens),
        }


def other_person(recorded: str | None, current: str | None) -> bool:
    """Whether an account or identity recorded for *recorded* (a :func:`.claims.person_digest`)
    must be refused to a login of *current*: another subject, another issuer where both are known,
    or a login that names no subject at all. Nothing recorded (made before records): no refusal."""
    if not recorded:
        return False
    if not current:
        return True
    subject, _, issuer = recorded.partition(".")
    now_subject, _, now_issuer = current.partition(".")
    return subject != now_subject or bool(issuer and now_issuer and issuer != now_issuer)


def refuse_another_person(plan: IdentityPlan, recorded: str | None, what: str) -> None:
    """Raise IdentityError if *what* (an account or identity, for the admin's line) was made for
    *recorded*, a person the plan's login is not (:func:`other_person`): a reused user name is never
    given the earlier person's identity. Shared (group, hub) identities belong to no one person."""
    want = plan.service_account.annotations.get(PERSON_ANNOTATION)
    if plan.scope != "user" or not other_person(recorded, want):
        return
    from .errors import IdentityError

    identity = plan.cloud.identity if plan.cloud is not None else None
    raise IdentityError(
        "Your server was not started: your user name was used on this hub by someone who logged in with another "
        "account, and their cloud identity is not yours to take; ask your hub admin.",
        f"user {plan.user!r} logged in as another person (issuer/subject digest {want}) than the one {what} was made "
        "for: a reused user name is never given the earlier person's identity. If the name now belongs to someone "
        "new, move or delete the earlier person's data (e.g. their scratch prefix), delete the ServiceAccount "
        f"{plan.service_account.namespace}/{plan.service_account.name}, then run `cloudidentity-spawner gc --apply` "
        f"to remove its hub-made identity{f' ({identity})' if identity else ''}; the next spawn makes new ones",
    )
