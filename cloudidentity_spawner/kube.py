"""Make a user's Kubernetes ServiceAccount match their plan (the only Kubernetes writes we do).

``service_account_change`` is the pure decision (create, patch or nothing, or
refuse); :class:`ServiceAccounts` does the I/O with kubernetes_asyncio, with
retries on 5xx, 429 and timeouts (:mod:`.retry`).
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from kubespawner.reflector import ResourceReflector

from . import names
from .errors import IdentityError
from .plan import (
    HUB_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MANAGED_IDENTITY_ANNOTATION,
    OWNER_ANNOTATION,
    PERSON_ANNOTATION,
    PREFIX,
    SCOPE_LABEL,
    USER_LABEL,
    IdentityPlan,
    refuse_another_person,
)
from .providers import owned_annotations, provider_for, registered
from .retry import Backoff, describe

ADOPTED_ANNOTATION = PREFIX + "adopted"
"""Marks a ServiceAccount we took over (``adopt: true``): we update it but never delete it."""

T = TypeVar("T")


def _owned(key: str, owned: frozenset[str] = frozenset()) -> bool:
    return key.startswith(PREFIX) or key in owned


@dataclass(frozen=True)
class Change:
    """What to do to a ServiceAccount: ``action`` is create, patch or none."""

    action: str
    body: Mapping[str, Any] | None = None


def service_account_change(existing: Mapping[str, Any] | None, plan: IdentityPlan) -> Change:
    """Decide how to make *existing* (a ServiceAccount's metadata, or None) match *plan*.

    Only keys this package owns are compared and changed: our labels
    (``app.kubernetes.io/managed-by`` and ``cloudidentity-spawner/*``) and the
    cloud identity annotations. Owned keys the plan no longer wants are removed
    (e.g. the AWS annotation after a rule moved to GCP); every other key is left alone.
    """
    sa = plan.service_account
    want_labels = dict(sa.labels)
    want_annotations = dict(sa.annotations)
    if existing is None:
        return Change(
            "create",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": sa.name, "namespace": sa.namespace, "labels": want_labels, "annotations": want_annotations},
                # The user pod gets no Kubernetes API token through this account.
                "automountServiceAccountToken": False,
            },
        )
    labels = dict(existing.get("labels") or {})
    annotations = dict(existing.get("annotations") or {})
    where = f"{sa.namespace}/{sa.name}"
    ours = labels.get(MANAGED_BY_LABEL) == MANAGED_BY
    if not ours and not plan.adopt:
        raise IdentityError(
            f"Your cloud identity could not be set up: the ServiceAccount {where} already exists and is not managed "
            "by this hub; ask your hub admin.",
            f"ServiceAccount {where} exists without label {MANAGED_BY_LABEL}={MANAGED_BY}; refusing to take it over "
            f"for user {plan.user!r} (rule {plan.rule!r}). Rename the account in the rule, or set adopt: true.",
        )
    owner = annotations.get(OWNER_ANNOTATION)
    if ours and owner is not None and owner != plan.owner:
        # Two identities resolved to one account name: never share silently.
        raise IdentityError(
            f"Your cloud identity could not be set up: the ServiceAccount {where} belongs to someone else; ask your hub admin.",
            f"ServiceAccount {where} is owned by {owner!r} but rule {plan.rule!r} planned it for {plan.owner!r}; "
            "two identities map to one name - change the rule's service_account template.",
        )
    person = annotations.get(PERSON_ANNOTATION)
    if ours and owner == plan.owner:
        refuse_another_person(plan, person, f"ServiceAccount {where}")
    if person and want_annotations.get(PERSON_ANNOTATION, "").endswith("."):
        want_annotations[PERSON_ANNOTATION] = person  # this login shows no issuer: the record keeps it
    if not ours:
        want_annotations[ADOPTED_ANNOTATION] = "true"
    elif ADOPTED_ANNOTATION in annotations:
        want_annotations[ADOPTED_ANNOTATION] = annotations[ADOPTED_ANNOTATION]

    label_patch = {k: v for k, v in want_labels.items() if labels.get(k) != v}
    label_patch.update({k: None for k in labels if _owned(k, frozenset({MANAGED_BY_LABEL})) and k not in want_labels})
    annotation_patch = {k: v for k, v in want_annotations.items() if annotations.get(k) != v}
    owned = owned_annotations()  # the providers' annotations outside our prefix (IRSA's, GKE's, AKS's)
    annotation_patch.update({k: None for k in annotations if _owned(k, owned) and k not in want_annotations})
    if not label_patch and not annotation_patch:
        return Change("none")
    metadata: dict[str, Any] = {}
    if label_patch:
        metadata["labels"] = label_patch
    if annotation_patch:
        metadata["annotations"] = annotation_patch
    return Change("patch", {"metadata": metadata})


def _owned_for(existing: Mapping[str, Any] | None, plan: IdentityPlan) -> Mapping[str, str] | None:
    """*existing*'s annotations if the account is ours and already belongs to the plan's owner."""
    if existing is None:
        return None
    annotations = existing.get("annotations") or {}
    if (existing.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY or annotations.get(OWNER_ANNOTATION) != plan.owner:
        return None
    return annotations


def hub_made_identity(annotations: Mapping[str, str], managed_places: Collection[str] = ()) -> str | None:
    """The hub-made cloud identity a ServiceAccount of ours records (its ``managed-identity``
    annotation: ``aws:<arn>``, ``gcp:<e-mail or principal>``, ``eks:<cluster>/<ns>/<sa>``), or for
    an account made before that annotation existed, its role or Google account when that lies in
    one of *managed_places*; None for an operator's identity."""
    recorded = annotations.get(MANAGED_IDENTITY_ANNOTATION)
    if recorded:
        return recorded
    for provider in registered().values():
        found = provider.made_before_records(annotations, managed_places)
        if found:
            return found
    return None


def identity_to_revoke(
    existing: Mapping[str, Any] | None, plan: IdentityPlan, managed_places: Collection[str] = ()
) -> str | None:
    """The hub-managed identity (``aws:<arn>`` / ``gcp:<email>``) that *existing* - this plan's
    ServiceAccount as it is now - still points at and the plan no longer uses, or None.

    Managed trust names the account by name, so whatever identity the account pointed at
    stays assumable with its token until it is revoked. Only an account that is ours and
    already belongs to the plan's owner qualifies. The identity is the one recorded in the
    account's ``managed-identity`` annotation; an account made before that annotation
    existed counts its role or Google account as managed when it lies in one of
    *managed_places* (the ARN prefix ``arn:...:role/<role_path>`` or the ``@<project>.iam...``
    e-mail suffix of a managed rule) - the backend still checks the identity's own marker
    before deleting, so an operator's role or GSA is never revoked.
    """
    annotations = _owned_for(existing, plan)
    if annotations is None:
        return None
    old = hub_made_identity(annotations, managed_places)
    if not old or old == plan.service_account.annotations.get(MANAGED_IDENTITY_ANNOTATION):
        return None
    if plan.cloud is not None and old == plan.cloud.recorded:
        return None  # the same identity, now planned as an existing one: nothing moved
    return old


def grants_to_remove(existing: Mapping[str, Any] | None, plan: IdentityPlan) -> list[Any]:
    """Grants *existing* - this plan's ServiceAccount as it is now - records for its hub-made
    identity that the plan keeps the identity but no longer wants (a dropped bucket role or role
    assignment): they must not stay granted (:meth:`.providers.base.Provider.dropped_grants`)."""
    annotations = _owned_for(existing, plan)
    provider = provider_for(plan.cloud.provider) if plan.cloud is not None else None
    if annotations is None or provider is None:
        return []
    return provider.dropped_grants(annotations, plan)


def is_retryable(error: BaseException) -> bool:
    """5xx, 429 and timeouts: worth another try (after a backoff)."""
    if isinstance(error, ApiException):
        return error.status in (429, 500, 502, 503, 504) or error.status == 0
    return isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError))


class ServiceAccountReflector(ResourceReflector):
    """A watch cache of the ServiceAccounts this package manages (by label), so
    a warm spawn needs no Kubernetes request. Runs like KubeSpawner's pod reflector."""

    kind = "serviceaccounts"
    labels = {MANAGED_BY_LABEL: MANAGED_BY}

    def __init__(self, *args: Any, **kwargs: Any):
        omit = kwargs.get("omit_namespace", False)
        kwargs.setdefault(
            "list_method_name",
            "list_service_account_for_all_namespaces" if omit else "list_namespaced_service_account",
        )
        super().__init__(*args, **kwargs)


def _metadata(sa: Any) -> dict[str, Any]:
    meta = sa.metadata
    return {"labels": meta.labels or {}, "annotations": meta.annotations or {}, "name": meta.name}


def user_labels(username: str, hub: str) -> dict[str, str]:
    """The labels of *username*'s own accounts on *hub* (values hashed: :func:`is_users_own` checks exactly)."""
    return {MANAGED_BY_LABEL: MANAGED_BY, SCOPE_LABEL: "user", USER_LABEL: names.label_value(username),
            HUB_LABEL: names.label_value(hub)}


def is_users_own(labels: Mapping[str, str], annotations: Mapping[str, str], username: str, hub: str) -> bool:
    """Whether an account of ours is *username*'s own on *hub* (not adopted; hub label ours, or
    absent on accounts made before it)."""
    return (annotations.get(OWNER_ANNOTATION) == f"user:{username}" and not annotations.get(ADOPTED_ANNOTATION)
            and labels.get(HUB_LABEL, names.label_value(hub)) == names.label_value(hub))


_EVENT_TASKS: set[asyncio.Future] = set()
"""Events being written (a reference each, so none is collected before it is sent)."""


class ServiceAccounts:
    """Kubernetes ServiceAccount I/O for identity plans."""

    def __init__(self, core_api: Any, backoff: Backoff | None = None, request_timeout: float = 10.0, log: Any = None):
        self.api = core_api
        self.backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self.log = log

    async def call(self, request: Callable[[], Awaitable[T]], what: str) -> T:
        """One Kubernetes request, tried again (with backoff) on 5xx, 429 and timeouts."""
        return await self.backoff.run(request, is_retryable, what, self.log)

    async def _read(self, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            sa = await self.api.read_namespaced_service_account(name, namespace, _request_timeout=self.request_timeout)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return _metadata(sa)

    async def current(self, plan: IdentityPlan, cache: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The plan's ServiceAccount metadata as it is now (labels, annotations), or None.

        *cache* is a synced watch cache of our accounts (``namespace/name`` ->
        account), or None. An account in it costs no request; absence from a
        synced cache is an answer too (a racing create then meets 409). Without a
        cache the account is read.
        """
        sa = plan.service_account
        if cache is not None:
            cached = cache.get(f"{sa.namespace}/{sa.name}")
            if cached is None:
                return None
            return {k: cached.get("metadata", {}).get(k) or {} for k in ("labels", "annotations")}
        return await self.call(lambda: self._read(sa.name, sa.namespace), f"read ServiceAccount {sa.namespace}/{sa.name}")

    async def ensure(
        self,
        plan: IdentityPlan,
        existing: Mapping[str, Any] | None,
        before_change: Callable[[Mapping[str, Any]], Awaitable[None]] | None = None,
    ) -> str:
        """Make the plan's ServiceAccount right, starting from *existing* (from :meth:`current`);
        returns ``created``, ``patched`` or ``unchanged``. Only differences are written.

        If a create meets 409, the account found instead is passed to *before_change*
        before it is patched (the caller revokes what that account pointed at)."""
        sa = plan.service_account
        what = f"ServiceAccount {sa.namespace}/{sa.name}"
        change = service_account_change(existing, plan)
        for _ in range(3):
            if change.action != "create":
                break
            try:
                await self.call(
                    lambda: self.api.create_namespaced_service_account(sa.namespace, change.body, _request_timeout=self.request_timeout),
                    f"create {what}",
                )
                return "created"
            except ApiException as e:
                if e.status != 409:
                    raise
            # It exists after all (another spawn, or a stale cache): compare against what is there;
            # if it is gone again by now, create again.
            existing = await self.call(lambda: self._read(sa.name, sa.namespace), f"read {what}")
            change = service_account_change(existing, plan)
            if existing is not None and before_change is not None:
                await before_change(existing)
        if change.action == "create":
            raise IdentityError(
                "Your cloud identity could not be set up; try again in a minute, or ask your hub admin.",
                f"{what} kept appearing and disappearing while it was being created; something else deletes it",
            )
        if change.action == "patch":
            await self.call(
                lambda: self.api.patch_namespaced_service_account(
                    sa.name, sa.namespace, change.body,
                    _content_type="application/merge-patch+json", _request_timeout=self.request_timeout,
                ),
                f"patch {what}",
            )
            return "patched"
        return "unchanged"

    def record_event(self, plan: IdentityPlan, reason: str, message: str) -> None:
        """A Kubernetes Event on the plan's ServiceAccount, so ``kubectl describe sa`` tells what
        the hub did to it and why. Sent in the background and best effort: it never delays or
        fails a spawn; one that cannot be written (no ``create`` on ``events``) is logged."""
        task = asyncio.ensure_future(self._write_event(plan, reason, message))
        _EVENT_TASKS.add(task)
        task.add_done_callback(_EVENT_TASKS.discard)

    async def _write_event(self, plan: IdentityPlan, reason: str, message: str) -> None:
        sa = plan.service_account
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{sa.name}.{secrets.token_hex(8)}", "namespace": sa.namespace,
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
            "involvedObject": {"apiVersion": "v1", "kind": "ServiceAccount", "name": sa.name, "namespace": sa.namespace},
            "reason": reason,
            "message": message[:1024],
            "type": "Normal",
            "source": {"component": MANAGED_BY},
            "reportingComponent": MANAGED_BY,
            "reportingInstance": "jupyterhub",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.create_namespaced_event(sa.namespace, body, _request_timeout=self.request_timeout)
        except Exception as e:
            if self.log is not None:
                self.log.warning("cloudidentity: could not record event %s on ServiceAccount %s/%s: %s",
                                 reason, sa.namespace, sa.name, describe(e))

    async def user_accounts(self, username: str, namespace: str | None, hub: str) -> list[Any]:
        """The user-scope ServiceAccounts *hub* created for *username* in *namespace*, or in
        every namespace with None (user namespaces, a changed namespace; a 403 is raised when
        the hub may not list them all).

        Selected by our labels, then checked by the exact owner annotation (label values are
        hashed) and the hub label (accounts made before it count in *namespace* only); adopted
        and group/hub accounts never qualify.
        """
        labels = user_labels(username, hub)
        if namespace is None:
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            listing = await self.call(
                lambda: self.api.list_service_account_for_all_namespaces(
                    label_selector=selector, _request_timeout=self.request_timeout),
                f"list ServiceAccounts of {username!r} in all namespaces",
            )
        else:  # accounts made before the hub label count here too
            selector = ",".join(f"{k}={v}" for k, v in labels.items() if k != HUB_LABEL)
            listing = await self.call(
                lambda: self.api.list_namespaced_service_account(namespace, label_selector=selector, _request_timeout=self.request_timeout),
                f"list ServiceAccounts of {username!r}",
            )
        return [sa for sa in listing.items if is_users_own(dict(sa.metadata.labels or {}), dict(sa.metadata.annotations or {}),
                                                           username, hub)]

    async def exists(self, namespace: str, name: str) -> bool | None:
        """Whether the ServiceAccount exists; None if the hub may not read it."""
        try:
            return await self.call(lambda: self._read(name, namespace), f"read ServiceAccount {namespace}/{name}") is not None
        except ApiException as e:
            if e.status == 403:
                return None
            raise

    async def running_pods(self, namespace: str, name: str) -> list[str]:
        """Pods (not being deleted) that run under ServiceAccount *namespace*/*name*."""
        pods = await self.call(
            lambda: self.api.list_namespaced_pod(namespace, field_selector=f"spec.serviceAccountName={name}",
                                                 _request_timeout=self.request_timeout),
            f"list pods under {namespace}/{name}")
        return sorted(p.metadata.name for p in pods.items if not p.metadata.deletion_timestamp)

    async def delete_account(self, namespace: str, name: str, uid: str) -> None:
        """Delete exactly this ServiceAccount object (its uid), if it is still there."""
        try:
            await self.call(
                lambda: self.api.delete_namespaced_service_account(
                    name, namespace, body={"preconditions": {"uid": uid}}, _request_timeout=self.request_timeout
                ),
                f"delete ServiceAccount {namespace}/{name}",
            )
        except ApiException as e:
            if e.status != 404:
                raise
