"""The identity step of a spawn, shared by CloudIdentitySpawner and the plain pre_spawn_hook.

In order: the user's claims (:mod:`.claims`) → their plan (:mod:`.rules`, or the
operator's resolver) → the hub-made cloud identity, if any (the plan's provider,
:mod:`.providers`) → revoke what the account no longer plans → the ServiceAccount
(:mod:`.kube`) → wait until the identity is usable (a new Google grant takes minutes: the
provider's ``settle``). One audit line per decision; anything that goes wrong becomes a
:class:`SpawnRefused` with a message for the user and a log line for the admin. Pinning the
pod to the result is :mod:`.pinning`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException
from kubespawner.clients import shared_client

from .claims import Claims, user_claims
from .config import CloudIdentity
from .errors import ConfigError, IdentityError, SpawnRefused
from .inventory import Account
from .kube import (
    ServiceAccounts,
    grants_to_remove,
    hub_made_identity,
    identity_to_revoke,
    is_retryable,
    is_users_own,
    service_account_change,
    user_labels,
)
from .metrics import IDENTITY_STEP_SECONDS, SERVICE_ACCOUNT_CHANGES, SPAWN_DECISIONS
from .plan import GC_PENDING_ANNOTATION, IdentityPlan
from .providers import backend_for, backend_for_plan, provider_for, provider_of_backend
from .providers.managed import PROGRESS
from .retry import Backoff, describe
from .rules import plan_for


def api_message(error: ApiException) -> str:
    """The API server's own message (RBAC's names the verb, resource and namespace)."""
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"


def audit_record(plan: IdentityPlan, spawner_name: str, outcome: str, cloud_outcome: str | None = None) -> dict[str, Any]:
    """The one structured line logged per spawn decision (it doubles as the audit trail)."""
    return {
        "event": "cloudidentity.spawn",
        "user": plan.user,
        "server": spawner_name,
        "groups": list(plan.groups),
        "group": plan.group,
        "rule": plan.rule,
        "scope": plan.scope,
        "service_account": f"{plan.service_account.namespace}/{plan.service_account.name}",
        "service_account_change": outcome,
        "cloud_provider": plan.cloud.provider if plan.cloud else None,
        "cloud_identity": plan.cloud.identity if plan.cloud else None,
        "cloud_identity_change": cloud_outcome,
    }


def identity_sentence(plan: IdentityPlan) -> str:
    """What the user is told their server will run as (spawn form and progress page)."""
    why = {"user": "your own", "group": f"shared with group {plan.group}", "hub": "shared by everyone it matches"}[plan.scope]
    cloud = plan.cloud
    if cloud is None:
        return f"Your server will run with no cloud identity (rule {plan.rule}, ServiceAccount {plan.service_account.name})."
    provider = provider_for(cloud.provider)
    what = provider.describe(cloud, plan) if provider is not None else cloud.identity
    return f"Your server will run as {what} (rule {plan.rule}, {why})."


EVENT_REASONS = {"created": "CloudIdentityCreated", "patched": "CloudIdentityUpdated", "unchanged": "CloudIdentityUpdated"}


def event_message(plan: IdentityPlan, outcome: str, cloud_outcome: str | None) -> str:
    """What a ServiceAccount's Event says: who it is for, by which rule, and which identity."""
    cloud = "no cloud identity" if plan.cloud is None else f"{plan.cloud.provider} {plan.cloud.mode} {plan.cloud.identity}"
    made = f" ({cloud_outcome})" if cloud_outcome in ("created", "updated") else ""
    return f"ServiceAccount {outcome} for {plan.owner} by rule {plan.rule!r}: {cloud}{made}"


async def revoke_identity(settings: Any, identity: str, owner: str | None, annotations: Mapping[str, str],
                          account: tuple[str, str] | None = None) -> bool:
    """Delete the hub-made identity ``aws:<arn>`` / ``gcp:<email>`` / ``gcp:<principal>``'s grants /
    ``eks:<cluster>/<namespace>/<service account>`` (an association) made for *owner* (None: for
    any owner on this hub - ``gc``'s identities no account records), with the bindings recorded in
    *annotations*; never one without our markers. *account* (``(namespace, name)``) is the
    ServiceAccount leaving the identity: a shared role, Google account or Azure identity then only
    stops trusting that account while other namespaces' accounts still use it. An SDK error
    becomes an IdentityError."""
    kind, _, name = identity.partition(":")
    try:
        provider = provider_of_backend(kind)
        if provider is None:
            raise IdentityError("Your server was not started: your previous cloud identity could not be revoked; "
                                "ask your hub admin.", f"no provider makes {identity!r}: nothing to revoke it with")
        return await provider.revoke(backend_for(settings, kind), kind, name, owner, settings.hub_name, annotations, account)
    except IdentityError:
        raise
    except Exception as e:  # the SDKs' own errors: fail closed, saying what could not be revoked
        raise IdentityError(
            "Your server was not started: your previous cloud identity could not be revoked; ask your hub admin.",
            f"revoking {identity} (no longer planned for {owner or 'anyone'}) failed: {type(e).__name__}: {e}",
        ) from None


class IdentityProvisioner:
    """Plan + ensure + log, shared by the spawner and the plain ``pre_spawn_hook``."""

    def __init__(self, settings: CloudIdentity, spawner: Any, backoff: Backoff, request_timeout: float):
        self.settings = settings
        self.spawner = spawner
        self.log = spawner.log
        self.accounts = ServiceAccounts(shared_client("CoreV1Api"), backoff, request_timeout, spawner.log)

    async def prepare(
        self, namespace: str, cache: Any = None, rule_name: str | None = None, claims: Claims | None = None,
        counted: bool = True, only_new: bool = False,
    ) -> IdentityPlan | None:
        """Resolve and ensure; on failure log one admin line and raise :class:`SpawnRefused`.

        *cache* is a ServiceAccount watch cache (a mapping of ``namespace/name``
        to the account) or None; *claims*, if the caller has read them already. Not *counted*
        (preparing at login): not a spawn's decision in the metrics. With *only_new*, nothing is
        done (None) to an account that exists or appears meanwhile: only what is missing is made,
        nothing revoked or changed.
        """
        started = time.perf_counter()
        shown = PROGRESS.set(self.show_progress)
        try:
            plan = await self._prepare(namespace, cache, rule_name, claims, only_new)
        except SpawnRefused:
            if counted:
                IDENTITY_STEP_SECONDS.labels("refused").observe(time.perf_counter() - started)
                SPAWN_DECISIONS.labels("refused", "", "").inc()
            raise
        finally:
            PROGRESS.reset(shown)
        if counted and plan is not None:
            IDENTITY_STEP_SECONDS.labels("ok").observe(time.perf_counter() - started)
            SPAWN_DECISIONS.labels("ok", plan.scope, plan.cloud.provider if plan.cloud else "none").inc()
        return plan

    @property
    def user_namespaces(self) -> bool:
        """KubeSpawner's ``enable_user_namespaces`` (the spawner's, also in the plain hook)."""
        return bool(getattr(self.spawner, "enable_user_namespaces", False))

    def show_progress(self, message: str) -> None:
        """A message on the spawn page (CloudIdentitySpawner's progress events; the plain hook has none)."""
        progress = getattr(self.spawner, "_identity_progress", None)
        if progress is not None:
            progress.append(message)

    async def _prepare(self, namespace: str, cache: Any, rule_name: str | None, claims: Claims | None,
                       only_new: bool = False) -> IdentityPlan | None:
        who = self.spawner.user.name + (f"/{self.spawner.name}" if self.spawner.name else "")
        plan = None
        try:
            if claims is None:
                claims = await user_claims(self.settings, self.spawner.user)
            plan = await plan_for(self.settings, self.spawner, claims, namespace, rule_name)
            existing = await self.accounts.current(plan, cache)
            if only_new and existing is not None:
                return None
            # The account must be this plan's to take (ours, this owner's) before anything is
            # granted to it: a name two rules both produce must not collect grants (pure; no call).
            service_account_change(existing, plan)
            cloud_outcome = None
            if plan.cloud is not None and plan.cloud.hub_made:
                # The cloud identity first: the ServiceAccount must not point at a role that is not there yet.
                # A new account, or one gc is removing: the identity may have been deleted since the
                # cache last saw it right (gc runs outside the hub), so the cloud is asked.
                recheck = existing is None or GC_PENDING_ANNOTATION in (existing.get("annotations") or {})
                namespaces = server_namespaces(self.spawner) if self.user_namespaces else set()
                cloud_outcome, plan = await self._provider_step(plan, "ensure", lambda provider: provider.ensure(
                    backend_for_plan(self.settings, plan.cloud), plan, recheck, namespaces))
            revoked: list[str] = []

            async def revoke_what_it_no_longer_plans(found: Any) -> None:
                # Before the new pod exists: the account's token must not reach what it no longer plans.
                # Also called with what a create that met 409 found, so a stale cache cannot skip it.
                if only_new and found is not None:
                    raise _MadeMeanwhile()
                old = identity_to_revoke(found, plan, self.settings.compiled_rules.managed_places)
                if old:
                    await self.refuse_while_other_pods_use(plan, old)
                    account = (plan.service_account.namespace, plan.service_account.name)
                    if await self.revoke(old, plan.owner, found["annotations"], account):
                        revoked.append(old)
                        self.accounts.record_event(
                            plan, "CloudIdentityRevoked",
                            f"Revoked {old.split(':', 1)[1]} (no longer planned for {plan.owner}; rule {plan.rule!r})")
                dropped = grants_to_remove(found, plan)
                if dropped:
                    await self.revoke_grants(plan, dropped)

            await revoke_what_it_no_longer_plans(existing)
            try:
                outcome = await self.accounts.ensure(plan, existing, before_change=revoke_what_it_no_longer_plans)
            except _MadeMeanwhile:  # a spawn made the account meanwhile: it is the spawn's to change
                return None
            if plan.scope == "user" and self.user_namespaces and outcome == "created":
                await self.leave_old_namespaces(plan, cache)
            if outcome != "unchanged" or cloud_outcome in ("created", "updated"):
                self.accounts.record_event(plan, EVENT_REASONS[outcome], event_message(plan, outcome, cloud_outcome))
            if plan.cloud is not None:  # e.g. a new Google grant takes minutes to work
                await self._provider_step(plan, "settle", lambda provider: provider.settle(self, plan, existing))
        except IdentityError as e:
            self.log.error("cloudidentity: spawn refused for %s: %s", who, e.admin_detail)
            raise SpawnRefused(e.user_message) from None
        except ConfigError as e:
            self.log.error("cloudidentity: spawn refused for %s: configuration error: %s", who, e)
            raise SpawnRefused("This hub's cloud identity configuration has an error; ask your hub admin.") from None
        except Exception as e:
            if not (isinstance(e, ApiException) or is_retryable(e)):
                raise
            # Kubernetes API failures (after retries); cloud failures arrive as IdentityError.
            rule = plan.rule if plan else "?"
            if isinstance(e, ApiException) and e.status == 403:
                self.log.error(
                    "cloudidentity: spawn refused for %s (rule %s): the hub's Kubernetes permissions do not allow it: "
                    "%s. Grant the hub what examples/z2jh/rbac.yaml grants.", who, rule, api_message(e),
                )
                raise SpawnRefused(
                    "Your cloud identity could not be set up: the hub is not allowed to manage it; ask your hub admin."
                ) from None
            self.log.error("cloudidentity: spawn refused for %s (rule %s): Kubernetes API failed: %s", who, rule, describe(e))
            raise SpawnRefused(
                "Your cloud identity could not be set up because the cluster did not answer; "
                "try again in a minute, or ask your hub admin.",
                503,
            ) from None
        if not only_new:  # what spawns did
            SERVICE_ACCOUNT_CHANGES.labels(outcome).inc()
        record = audit_record(plan, self.spawner.name, outcome, cloud_outcome)
        if only_new:
            record["event"] = "cloudidentity.prepare"  # at login, not a spawn
        if revoked:
            record["revoked_cloud_identity"] = revoked[0]
        self.log.info("cloudidentity audit %s", json.dumps(record, sort_keys=True))
        return plan

    async def _provider_step(self, plan: IdentityPlan, step: str, call: Any) -> Any:
        """A provider's step of the spawn; what it raises other than the package's own errors is
        a refused spawn with the provider and step in the admin log (never a stack trace to the user)."""
        provider = provider_for(plan.cloud.provider)
        try:
            return await call(provider)
        except (IdentityError, ConfigError, ApiException):
            raise
        except Exception as e:
            self.log.exception("cloudidentity: provider %r %s failed for %s", provider.key, step, plan.user)
            raise IdentityError(
                "Your cloud identity could not be set up; try again in a minute, or ask your hub admin.",
                f"provider {provider.key!r} {step} of {plan.cloud.identity} failed: {type(e).__name__}: {e}",
            ) from None

    def backend(self, kind: str) -> Any:
        """The hub's backend *kind* (for a provider's :meth:`~.providers.base.Provider.settle`)."""
        return backend_for(self.settings, kind)

    async def refuse_while_other_pods_use(self, plan: IdentityPlan, identity: str) -> None:
        """One ServiceAccount carries one identity: revoking it under a pod that still runs
        (the user's other named server, another member of a group) would break that pod, and
        sharing it would leave the old identity reachable. So the spawn waits its turn."""
        sa = plan.service_account
        others = [p for p in await self.accounts.running_pods(sa.namespace, sa.name) if p != getattr(self.spawner, "pod_name", None)]
        if others:
            raise IdentityError(
                "Your server cannot start yet: another server runs under the same account with your previous cloud "
                f"identity ({', '.join(others)}). Stop it first, or ask your hub admin.",
                f"not revoking {identity} from ServiceAccount {sa.namespace}/{sa.name} for rule {plan.rule!r}: "
                f"pods {others} still run under it",
            )

    async def revoke(self, identity: str, owner: str, annotations: dict[str, str], account: tuple[str, str] | None = None) -> bool:
        return await revoke_identity(self.settings, identity, owner, annotations, account)

    async def revoke_grants(self, plan: IdentityPlan, grants: list[Any]) -> None:
        """Take back what the plan's identity keeps but no longer gets (a dropped role)."""
        try:
            await provider_for(plan.cloud.provider).remove_grants(backend_for_plan(self.settings, plan.cloud),
                                                                  plan.cloud.identity, grants)
        except Exception as e:
            raise IdentityError(
                "Your server was not started: access you no longer have could not be revoked; ask your hub admin.",
                f"removing grants {grants} of {plan.cloud.identity} (no longer planned) failed: {type(e).__name__}: {e}",
            ) from None

    async def forget_user(self, username: str, namespace: str, everywhere: bool = True, why: str = "user deleted") -> None:
        """Delete the user's own ServiceAccounts and the hub-made cloud identities they record:
        in *namespace*, and with *everywhere* in every namespace the hub may list (user
        namespaces, a namespace the hub used before).

        The cloud side goes first: if it cannot be removed, the account (and its record of what
        to remove) stays for a later attempt, and the admin log says so. Only identities the
        account records as hub-made are touched, never an operator's role or Google account; an
        account pods run under stays.
        """
        hub = self.settings.hub_name
        found = {sa.metadata.uid: Account.from_api(sa) for sa in await self.accounts.user_accounts(username, namespace, hub)}
        if everywhere:
            try:
                found.update((sa.metadata.uid, Account.from_api(sa)) for sa in await self.accounts.user_accounts(username, None, hub))
            except ApiException as e:
                if e.status != 403:
                    raise
                self.log.warning("cloudidentity: user %s deleted; the hub may not list ServiceAccounts in every namespace, "
                                 "so their accounts outside %s (if any) stay: gc with cluster-wide read finds them",
                                 username, namespace)
        for account in sorted(found.values(), key=lambda a: (a.namespace, a.name)):
            try:
                running = await self.accounts.running_pods(account.namespace, account.name)
                if running:  # e.g. the user's other server in this namespace, starting
                    self.log.info("cloudidentity: keeping %s's ServiceAccount %s: pods run under it (%s)",
                                  username, account.where, ", ".join(running))
                    continue
                await self._forget_account(username, account, why)
            except Exception as e:  # the others still go; what stays is logged (and gc finds it)
                self.log.error("cloudidentity: user %s deleted, but ServiceAccount %s could not be deleted: %s; it "
                               "stays for gc", username, account.where, describe(e))

    async def _forget_account(self, username: str, account: Account, why: str) -> bool:
        """Revoke what one of the user's accounts records as hub-made (for that account only: a
        role or Google account other namespaces' accounts still use stays), then delete it."""
        record: dict[str, Any] = {"event": "cloudidentity.delete", "user": username, "service_account": account.where,
                                  "reason": why}
        identity = hub_made_identity(account.annotations, self.settings.compiled_rules.managed_places)
        if identity:
            record["cloud_identity"] = identity.split(":", 1)[1]
            try:
                record["cloud_identity_deleted"] = await self.revoke(
                    identity, account.owner, dict(account.annotations), (account.namespace, account.name))
            except IdentityError as e:
                self.log.error("cloudidentity: %s (%s), but %s could not be removed (%s); keeping ServiceAccount %s, "
                               "which records it, for a later attempt", why, username, record["cloud_identity"],
                               e.admin_detail, account.where)
                return False
        await self.accounts.delete_account(account.namespace, account.name, account.uid)
        self.log.info("cloudidentity audit %s", json.dumps(record, sort_keys=True))
        return True

    async def leave_old_namespaces(self, plan: IdentityPlan, cache: Mapping[str, Any] | None) -> None:
        """With user namespaces, a server may start in a namespace it did not use before (a
        changed ``user_namespace_template``, a lost server state): its account there is new,
        and the user's accounts in namespaces none of their servers use any more still hold
        grants (a role's trust, a Pod Identity association, a Google or Azure credential for
        that namespace's account). Revoke those and delete the accounts, unless pods still run
        under them. A failure is logged for the admin and left to user deletion or ``gc``; the
        spawn goes on (the new pod gets nothing of the old account's)."""
        username, hub = self.spawner.user.name, self.settings.hub_name
        keep = server_namespaces(self.spawner)
        try:
            if cache is not None:  # with user namespaces the watch cache holds every namespace: no request
                # This hub's label, always: an account without it may be another hub's (as gc judges it).
                wanted = user_labels(username, hub)
                found = [Account.from_json(item) for item in cache.values()
                         if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in wanted.items())]
                found = [a for a in found if is_users_own(a.labels, a.annotations, username, hub)]
            else:
                found = [Account.from_api(sa) for sa in await self.accounts.user_accounts(username, None, hub)]
        except ApiException as e:
            if e.status != 403:
                self.log.error("cloudidentity: could not look for %s's accounts in other namespaces: %s", username, describe(e))
                return
            self.log.warning("cloudidentity: the hub may not list ServiceAccounts in every namespace, so %s's accounts "
                             "in namespaces their servers no longer use are not cleaned up", username)
            return
        except Exception as e:
            self.log.error("cloudidentity: could not look for %s's accounts in other namespaces: %s", username, describe(e))
            return
        for account in found:
            if account.namespace in keep:
                continue
            try:
                running = await self.accounts.running_pods(account.namespace, account.name)
                if running:
                    self.log.info("cloudidentity: keeping %s's ServiceAccount %s: pods still run under it (%s)",
                                  username, account.where, ", ".join(running))
                    continue
                await self._forget_account(username, account, f"{plan.service_account.namespace} is the namespace now")
            except Exception as e:
                self.log.error("cloudidentity: could not clean up %s's ServiceAccount %s in a namespace their servers no "
                               "longer use: %s", username, account.where, describe(e))


class _MadeMeanwhile(Exception):
    """Preparing only what is missing, an account was found made meanwhile (by a spawn)."""


def server_namespaces(spawner: Any, include_self: bool = True) -> set[str]:
    """The namespaces the user's servers use: this one's (unless not *include_self*), and each
    other server's as its saved state says (KubeSpawner keeps a server's namespace across
    template changes; a server never started has no account yet)."""
    found = {spawner.namespace} if include_self else set()
    orm_user = getattr(spawner.user, "orm_user", None)
    for name, orm_spawner in (getattr(orm_user, "orm_spawners", None) or {}).items():
        namespace = (getattr(orm_spawner, "state", None) or {}).get("namespace")
        if name != spawner.name and namespace:
            found.add(namespace)
    # A server starting for the first time has saved no state yet.
    for other in list((getattr(spawner.user, "spawners", None) or {}).values()):
        if other is not spawner and (getattr(other, "pending", None) or getattr(other, "active", False)):
            found.add(other.namespace)
    return found
