"""What this hub has made, judged against its rules as they are now: ``status``, ``gc`` and
the admin page all read it.

An :class:`Account` is one of our ServiceAccounts as the cluster has it. :func:`judge` (pure)
compares it with what the rules plan for its owner today: ``ok``, ``drift`` (the account or
its cloud identity differ from the plan; the owner's next spawn repairs it), ``orphaned``
(nobody plans it: the user is gone, the rule is gone or no longer gives the owner this
account) or ``unknown`` (it cannot be judged from here, e.g. the plan needs a stored login
the token may not read). :func:`survey` does the reading: Kubernetes, the hub's users, and for
hub-made identities whether they still exist in the cloud. It never writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from . import names
from .claims import claims_with_settings
from .errors import IdentityError, NoMatchingRule
from .hubusers import HubUser
from .kube import ADOPTED_ANNOTATION, ServiceAccounts, hub_made_identity, identity_to_revoke, service_account_change
from .plan import (
    HUB_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MANAGED_IDENTITY_ANNOTATION,
    OWNER_ANNOTATION,
    RULE_ANNOTATION,
    SCOPE_LABEL,
    IdentityPlan,
)
from .providers import account_identity, backend_for, provider_of_backend, with_what_the_cloud_assigned
from .rules import IdentityRules

STATES = ("ok", "drift", "orphaned", "unknown")


@dataclass(frozen=True)
class Account:
    """One of our ServiceAccounts, as the cluster has it."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    @classmethod
    def from_api(cls, sa: Any) -> Account:
        meta = sa.metadata
        return cls(meta.namespace, meta.name, meta.uid, meta.resource_version, dict(meta.labels or {}),
                   dict(meta.annotations or {}))

    @classmethod
    def from_json(cls, sa: Mapping[str, Any]) -> Account:
        """From the plain JSON a watch cache holds."""
        meta = sa.get("metadata") or {}
        return cls(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""), meta.get("resourceVersion", ""),
                   dict(meta.get("labels") or {}), dict(meta.get("annotations") or {}))

    @property
    def owner(self) -> str:
        return self.annotations.get(OWNER_ANNOTATION, "")

    @property
    def rule(self) -> str:
        return self.annotations.get(RULE_ANNOTATION, "")

    @property
    def scope(self) -> str:
        return self.labels.get(SCOPE_LABEL, "")

    @property
    def user(self) -> str | None:
        """The user a user-scope account belongs to."""
        return self.owner[len("user:"):] if self.owner.startswith("user:") else None

    @property
    def hub_labelled(self) -> bool:
        """Whether the account carries the hub label (accounts made before it may be another hub's)."""
        return HUB_LABEL in self.labels

    @property
    def adopted(self) -> bool:
        return bool(self.annotations.get(ADOPTED_ANNOTATION))

    @property
    def identity(self) -> str | None:
        """The cloud identity the account gives its pods (``aws:<arn>``, ``gcp:<e-mail or
        principal>``, ``eks:<cluster>/<namespace>/<account>``), or None: the hub-made one it
        records, else what its annotations point at."""
        return self.annotations.get(MANAGED_IDENTITY_ANNOTATION) or account_identity(self.annotations)

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def metadata(self) -> dict[str, Any]:
        return {"labels": dict(self.labels), "annotations": dict(self.annotations)}


def plan_identity(plan: IdentityPlan) -> str | None:
    """The plan's cloud identity, written as :attr:`Account.identity` writes an account's."""
    cloud = plan.cloud
    if cloud is None:
        return None
    return cloud.recorded if cloud.hub_made else f"{cloud.provider}:{cloud.identity}"


@dataclass
class Entry:
    """One account, judged. ``problems`` say what differs (drift), why nobody plans the
    account (orphaned) or why it was not judged (unknown); ``stale_identity`` is a hub-made
    identity the account records and no plan uses any more (``gc`` revokes it)."""

    account: Account
    state: str
    problems: list[str] = field(default_factory=list)
    planned_identity: str | None = None
    stale_identity: str | None = None
    pods: list[str] = field(default_factory=list)
    last_event: dict[str, str] | None = None
    """The latest Event the hub recorded on the account (``reason``, ``time``, ``message``)."""

    def to_dict(self) -> dict[str, Any]:
        a = self.account
        return {
            "service_account": a.where, "owner": a.owner, "user": a.user, "rule": a.rule, "scope": a.scope,
            "identity": a.identity, "planned_identity": self.planned_identity, "state": self.state,
            "problems": list(self.problems), "stale_identity": self.stale_identity, "adopted": a.adopted,
            "pods": list(self.pods), "last_event": self.last_event,
        }


def judge(account: Account, plan: IdentityPlan | None, reason: str | None = None,
          managed_places: Collection[str] = ()) -> Entry:
    """Compare *account* with *plan*, what its owner's rule plans now (None: nobody plans the
    account, for *reason*)."""
    if plan is None:
        return Entry(account, "orphaned", [reason or "no rule plans it"], stale_identity=hub_made_identity(
            account.annotations, managed_places))
    if plan.cloud is not None and plan.cloud.hub_made and account.annotations.get(MANAGED_IDENTITY_ANNOTATION) == plan.cloud.recorded:
        plan = with_what_the_cloud_assigned(plan, account.annotations)
    now, planned = account.identity, plan_identity(plan)
    problems = []
    if now != planned:
        problems.append(f"runs as {_name(now)}; the rules now plan {_name(planned)}")
    else:
        try:
            change = service_account_change(account.metadata(), plan)
        except IdentityError as e:
            change = None
            problems.append(e.admin_detail)
        if change is not None and change.action == "patch":
            keys = sorted({*change.body["metadata"].get("labels", {}), *change.body["metadata"].get("annotations", {})})
            problems.append(f"settings differ from the plan ({', '.join(keys)})")
    stale = identity_to_revoke({"labels": dict(account.labels), "annotations": dict(account.annotations)}, plan,
                               managed_places)
    return Entry(account, "drift" if problems else "ok", problems, planned, stale)


def _name(identity: str | None) -> str:
    return "no cloud identity" if identity is None else identity.split(":", 1)[1]


def user_namespaces(config: Any) -> bool:
    """Whether the hub's spawner gives each user a namespace of their own (KubeSpawner's
    ``enable_user_namespaces``)."""
    return any(bool(config[section].get("enable_user_namespaces")) for section in ("KubeSpawner", "CloudIdentitySpawner")
               if section in config)


def profile_rules(config: Any) -> set[str] | None:
    """The rules a static ``profile_list`` names (``identity_rule``); None when any rule may be
    named (a callable profile_list)."""
    named: set[str] = set()
    for section in ("KubeSpawner", "CloudIdentitySpawner"):
        profiles = config[section].get("profile_list") if section in config else None
        if callable(profiles):
            return None
        if isinstance(profiles, Mapping):  # KubeSpawner also takes {key: profile}
            profiles = list(profiles.values())
        named.update(p["identity_rule"] for p in profiles or [] if isinstance(p, Mapping) and p.get("identity_rule"))
    return named


def plan_for_account(settings: Any, account: Account, user: HubUser | None,
                     named_by_profiles: set[str] | None,
                     namespace: str | None = None) -> tuple[IdentityPlan | None, str | None, str | None]:
    """``(plan, reason, unknown)``: the plan the account's rule makes now for its owner, or
    None and why nobody plans the account, or why it cannot be judged here. *namespace* is where
    the hub's servers run (None with user namespaces: wherever the account is, each server
    keeping the namespace it started in)."""
    rules: IdentityRules = settings.compiled_rules
    namespace = namespace or account.namespace
    if account.user is not None and user is None:
        return None, f"user {account.user} is no longer on the hub", None
    if settings.identity_resolver is not None:
        return None, None, "the hub plans with an identity_resolver, which only runs in a spawn"
    if account.user is not None:
        try:
            claims = claims_with_settings(settings, user.name, user.auth_state, user.groups, user.admin, user.roles)
        except IdentityError as e:
            why = e.admin_detail if user.auth_state_known else (
                "the hub's stored login could not be read (the token needs admin:auth_state, or set "
                "JUPYTERHUB_CRYPT_KEY to read the database)")
            return None, None, f"cannot plan for {user.name}: {why}"
        plan, reason = None, None
        if account.rule not in {r.name for r in rules.rules}:
            reason = f"rule {account.rule!r} no longer exists"
        else:
            try:
                plan = rules.resolve(claims, namespace, account.rule)
            except NoMatchingRule:
                reason = f"rule {account.rule!r} no longer matches {user.name}"
            except IdentityError as e:
                return None, None, e.admin_detail
        if plan is not None:
            try:
                first = rules.find(claims)[0].name
            except NoMatchingRule:
                first = None
            if first != account.rule and named_by_profiles is not None and account.rule not in named_by_profiles:
                plan, reason = None, f"rule {account.rule!r} no longer applies to {user.name} (rule {first!r} does)"
    else:
        try:
            plan, reason = rules.shared_plan(account.owner, account.rule, namespace), None
        except NoMatchingRule as e:
            plan, reason = None, e.admin_detail
        except IdentityError as e:
            return None, None, e.admin_detail
    if plan is not None and (plan.service_account.name, plan.service_account.namespace) != (account.name, account.namespace):
        plan, reason = None, f"rule {account.rule!r} now gives {plan.owner} ServiceAccount {plan.service_account.namespace}/{plan.service_account.name}"
    return plan, reason, None


def hub_selector(hub: str) -> str:
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{HUB_LABEL}={names.label_value(hub)}"


@dataclass
class Listing:
    """This hub's accounts, where they were looked for, whether that was every namespace, and
    the cloud identities any account of this package records (of any hub, labelled or not)."""

    accounts: list[Account]
    searched: str
    complete: bool
    recorded: set[str]


async def our_accounts(accounts: ServiceAccounts, hub: str, namespace: str) -> Listing:
    """This hub's ServiceAccounts. Every namespace if the hub's Kubernetes permissions allow
    (user namespaces, a changed namespace), else the hub's namespace; accounts made before the
    hub label are counted in the hub's namespace only."""
    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    api, timeout = accounts.api, accounts.request_timeout
    try:
        listing = await accounts.call(
            lambda: api.list_service_account_for_all_namespaces(label_selector=selector, _request_timeout=timeout),
            "list ServiceAccounts in all namespaces")
        where, complete = "all namespaces", True
    except ApiException as e:
        if e.status != 403:
            raise
        listing = await accounts.call(
            lambda: api.list_namespaced_service_account(namespace, label_selector=selector, _request_timeout=timeout),
            f"list ServiceAccounts in {namespace}")
        where, complete = f"namespace {namespace} (the hub may not list other namespaces)", False
    mine = names.label_value(hub)
    found, recorded = [], set()
    for sa in listing.items:
        account = Account.from_api(sa)
        recorded.update(i for i in (account.identity, hub_made_identity(account.annotations)) if i)
        label = account.labels.get(HUB_LABEL)
        if label == mine or (label is None and account.namespace == namespace):
            found.append(account)
    found.sort(key=lambda a: (a.namespace, a.name))
    return Listing(found, where, complete, recorded)


async def pods_by_account(accounts: ServiceAccounts, namespaces: Collection[str]) -> dict[tuple[str, str], list[str]]:
    """Pods that run (not being deleted) under each ServiceAccount of *namespaces*."""
    running: dict[tuple[str, str], list[str]] = {}
    for ns in sorted(namespaces):
        pods = await accounts.call(
            lambda ns=ns: accounts.api.list_namespaced_pod(ns, _request_timeout=accounts.request_timeout), f"list pods in {ns}")
        for pod in pods.items:
            if not pod.metadata.deletion_timestamp:
                running.setdefault((ns, pod.spec.service_account_name or "default"), []).append(pod.metadata.name)
    return running


async def last_events(accounts: ServiceAccounts, namespaces: Collection[str]) -> dict[tuple[str, str], dict[str, str]]:
    """The latest Event the hub recorded on each of its accounts in *namespaces* (best effort:
    Events expire after an hour by default, and a hub without ``list`` on events shows none)."""
    latest: dict[tuple[str, str], dict[str, str]] = {}
    for ns in sorted(namespaces):
        try:
            events = await accounts.api.list_namespaced_event(
                ns, label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}", _request_timeout=accounts.request_timeout)
        except ApiException:
            continue
        for event in events.items:
            obj = event.involved_object
            if obj.kind != "ServiceAccount":
                continue
            when = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
            when = when.isoformat() if hasattr(when, "isoformat") else str(when or "")
            key = (ns, obj.name)
            if key not in latest or when >= latest[key]["time"]:
                latest[key] = {"reason": event.reason or "", "time": when, "message": event.message or ""}
    return latest


async def cloud_presence(settings: Any, identities: Collection[str]) -> dict[str, bool | str | None]:
    """Whether each hub-made identity exists: True, False, None (nothing to check: principal
    grants have no object of their own), or why it could not be checked (no credentials, the
    cloud refused or did not answer)."""
    async def check(identity: str) -> bool | str | None:
        kind, _, name = identity.partition(":")
        provider = provider_of_backend(kind)
        if provider is not None and not provider.has_object(kind, name):
            return None
        try:
            return await backend_for(settings, kind).present(name)
        except Exception as e:  # the SDKs' own errors, whatever they are: said, not raised
            return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    results = await asyncio.gather(*(check(i) for i in identities))
    return dict(zip(identities, results))


@dataclass
class Survey:
    entries: list[Entry]
    searched: str
    complete: bool = True
    """Whether every namespace was searched (else an identity may be recorded where gc cannot see)."""
    recorded: set[str] = field(default_factory=set)
    """Cloud identities recorded by any account of this package, of this hub or not."""

    def counts(self) -> dict[str, int]:
        return {s: sum(e.state == s for e in self.entries) for s in STATES}

    def to_dict(self) -> dict[str, Any]:
        return {"searched": self.searched, "counts": self.counts(), "accounts": [e.to_dict() for e in self.entries]}


async def survey(settings: Any, config: Any, accounts: ServiceAccounts, hub_users: Any, namespace: str,
                 check_cloud: bool = True, progress: Callable[[str, int, int], None] | None = None) -> Survey:
    """Judge every account of this hub (reads only)."""
    listing = await our_accounts(accounts, settings.hub_name, namespace)
    found = listing.accounts
    owners = sorted({a.user for a in found if a.user is not None})
    users = await hub_users.users(owners) if owners else {}
    named = profile_rules(config)
    servers_namespace = None if user_namespaces(config) else namespace
    # Judged against the spawner's namespace only when some account is there: none is when gc is
    # given the wrong namespace (e.g. run outside the hub's pod), not only after a move.
    moved = servers_namespace is not None and not any(a.namespace == namespace for a in found)
    places = settings.compiled_rules.managed_places
    entries = []
    for i, account in enumerate(found, 1):
        if moved and account.namespace != namespace:
            plan, reason, unknown = None, None, (
                f"none of this hub's accounts is in namespace {namespace}, where the config runs servers: give the "
                "hub's namespace with --namespace, or (if the hub moved there) judge again after a first spawn there")
        else:
            plan, reason, unknown = plan_for_account(settings, account, users.get(account.user), named, servers_namespace)
        if unknown:
            entry = Entry(account, "unknown", [unknown])
        else:
            entry = judge(account, plan, reason, places)
            user = users.get(account.user)
            if user is not None and not user.auth_state_known and entry.state in ("drift", "orphaned"):
                # Planned from the JupyterHub groups alone: the stored login might decide otherwise.
                entry = Entry(account, "unknown", entry.problems + [
                    "judged from JupyterHub groups only: the hub's stored login could not be read "
                    "(the token needs admin:auth_state, or set JUPYTERHUB_CRYPT_KEY to read the database)"])
        entries.append(entry)
        if progress:
            progress("judging accounts", i, len(found))
    namespaces = {a.namespace for a in found}
    running = await pods_by_account(accounts, namespaces)
    events = await last_events(accounts, namespaces)
    for entry in entries:
        key = (entry.account.namespace, entry.account.name)
        entry.pods = sorted(running.get(key, []))
        entry.last_event = events.get(key)
    if check_cloud:
        recorded = sorted({i for e in entries for i in (hub_made_identity(e.account.annotations, places),) if i})
        present = await cloud_presence(settings, recorded)
        for entry in entries:
            identity = hub_made_identity(entry.account.annotations, places)
            found = present.get(identity) if identity else None
            if found is False and entry.state in ("ok", "drift"):
                entry.state = "drift"
                entry.problems.append(f"{_name(identity)} is missing in the cloud (the owner's next spawn re-creates it)")
            elif isinstance(found, str) and entry.state in ("ok", "drift"):
                entry.state = "unknown"  # not "ok": the identity may be gone
                entry.problems.append(f"{_name(identity)} could not be checked in the cloud ({found}); give the command "
                                      "the hub's cloud credentials, or use --no-cloud")
    return Survey(entries, listing.searched, listing.complete, listing.recorded)


async def user_decisions(settings: Any, hub_users: Any, names: list[str], namespace: str) -> list[dict[str, Any]]:
    """What the rules decide now for each of these hub users (for users without an account yet):
    rule, scope, ServiceAccount and identity, or why they get none - as their next spawn would."""
    users = await hub_users.users(names)
    rules: IdentityRules = settings.compiled_rules
    decisions = []
    for name in names:
        user = users.get(name)
        if user is None:
            continue
        row: dict[str, Any] = {"user": name, "groups": list(user.groups)}
        if settings.identity_resolver is not None:
            row["decision"] = "decided by the hub's identity_resolver at spawn time"
        else:
            try:
                claims = claims_with_settings(settings, name, user.auth_state, user.groups, user.admin, user.roles)
                plan = rules.resolve(claims, namespace)
                row.update(rule=plan.rule, scope=plan.scope, identity=plan_identity(plan),
                           service_account=f"{plan.service_account.namespace}/{plan.service_account.name}",
                           decision=f"{_name(plan_identity(plan))} (rule {plan.rule}, {plan.scope} scope)")
            except IdentityError as e:
                row["decision"] = f"no identity: {e.admin_detail}"
        decisions.append(row)
    return decisions
