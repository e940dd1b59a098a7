"""``gc``: remove what this hub made and nobody plans any more.

:func:`cleanup_actions` (pure) turns a :class:`~.inventory.Survey` and the hub-made
identities listed in the clouds into actions: delete an orphaned account (its hub-made
identity first, so a failure leaves the account and its record for the next run), revoke
a hub-made identity an account still records but its plan no longer uses, delete a
hub-made identity no account records. :func:`apply` carries them out, each only after
checking again that nothing changed - a spawn that touched the account meanwhile wins,
and nothing is taken from under a running pod. Only what carries this hub's ownership
markers is ever deleted (the backends check the tags / description marker themselves).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from .errors import IdentityError
from .inventory import Account, Survey, hub_made_identity, our_accounts
from .kube import ServiceAccounts
from .providers import backend_for
from .provisioner import revoke_identity


@dataclass
class Action:
    """One thing ``gc`` would do (``delete-account``, ``revoke``, ``delete-identity``), why,
    and after ``apply`` what became of it (``done``, or ``skipped`` with the reason)."""

    kind: str
    reason: str
    account: Account | None = None
    identity: str | None = None
    skipped: str | None = None
    done: bool = False

    def describe(self) -> str:
        identity = self.identity.split(":", 1)[1] if self.identity else None
        if self.kind == "delete-account":
            what = f"ServiceAccount {self.account.where}" + (f" and {identity}" if identity else "")
        elif self.kind == "revoke":
            what = f"{identity} (still recorded by ServiceAccount {self.account.where})"
        else:
            what = identity
        return f"{what}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.kind, "service_account": self.account.where if self.account else None,
                "identity": self.identity, "reason": self.reason, "done": self.done, "skipped": self.skipped}


def cleanup_actions(survey: Survey, cloud_made: Iterable[dict[str, Any]], min_age: float,
                    now: datetime.datetime | None = None) -> list[Action]:
    """What to remove, from a survey and the hub-made identities found in the clouds."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    actions = []
    for entry in survey.entries:
        account = entry.account
        if entry.state == "orphaned":
            action = Action("delete-account", entry.problems[0], account, entry.stale_identity)
            if account.adopted:
                action.skipped = "adopted by the hub (adopt: true): it is the operator's and never deleted"
        elif entry.stale_identity and entry.state in ("ok", "drift"):
            action = Action("revoke", "its plan no longer uses it", account, entry.stale_identity)
        else:
            continue
        if entry.pods:
            action.skipped = f"pods still run under it ({', '.join(entry.pods)})"
        actions.append(action)
    known = {i for e in survey.entries for i in (e.account.identity, hub_made_identity(e.account.annotations),
                                                  e.planned_identity) if i}
    for found in cloud_made:
        if found["identity"] in known:
            continue
        action = Action("delete-identity", "made by this hub; no ServiceAccount records it", identity=found["identity"])
        created = found.get("created")
        if created is not None:
            age = (now - created).total_seconds()
            if age < min_age:
                action.skipped = f"made {age:.0f} s ago: a spawn may still be setting it up (--min-age {min_age:.0f})"
        actions.append(action)
    return actions


async def cloud_made(settings: Any) -> list[dict[str, Any]]:
    """Hub-made identities in the places the rules make them: IAM roles under managed rules'
    role paths, Pod Identity associations in their clusters, Google accounts in their projects
    (Workload Identity Federation grants have no object of their own: they go with their account)."""
    places: dict[tuple[str, str], None] = {}
    for rule in settings.compiled_rules.rules:
        if rule.aws is not None and rule.aws.managed is not None:
            places[("aws", rule.aws.managed["role_path"])] = None
        if rule.aws is not None and rule.aws.pod_identity is not None:
            places[("eks", rule.aws.pod_identity["cluster"])] = None
        if rule.gcp is not None and rule.gcp.managed is not None:
            places[("gcp", rule.gcp.managed["project"])] = None
    found: list[dict[str, Any]] = []
    for provider, place in places:
        found += await backend_for(settings, provider).hub_made(place, settings.hub_name)
    # A path nested in another is listed twice.
    return list({f["identity"]: f for f in found}.values())


async def apply(actions: list[Action], settings: Any, accounts: ServiceAccounts, hub_users: Any, namespace: str,
                progress: Callable[[str, int, int], None] | None = None) -> None:
    """Carry out the actions not skipped, each after checking again; record the outcome on each."""
    todo = [a for a in actions if not a.skipped]
    for i, action in enumerate(todo, 1):
        try:
            if action.kind == "delete-identity":
                await _delete_unrecorded(action, settings, accounts, namespace)
            else:
                await _act_on_account(action, settings, accounts, hub_users)
        except (IdentityError, ApiException) as e:
            detail = e.admin_detail if isinstance(e, IdentityError) else f"Kubernetes said {e.status} {e.reason}"
            action.skipped = f"failed: {detail}"
        if progress:
            progress("cleaning up", i, len(todo))


async def _act_on_account(action: Action, settings: Any, accounts: ServiceAccounts, hub_users: Any) -> None:
    judged = action.account
    now = await accounts.call(
        lambda: accounts.api.read_namespaced_service_account(judged.name, judged.namespace, _request_timeout=accounts.request_timeout),
        f"read ServiceAccount {judged.where}")
    if now.metadata.uid != judged.uid or now.metadata.resource_version != judged.resource_version:
        action.skipped = "changed since it was judged (a spawn used it): run gc again to judge it anew"
        return
    if judged.user is not None and action.kind == "delete-account":
        if (await hub_users.users([judged.user])).get(judged.user) is not None and action.reason.endswith("no longer on the hub"):
            action.skipped = f"user {judged.user} is on the hub again"
            return
    pods = await accounts.call(
        lambda: accounts.api.list_namespaced_pod(judged.namespace, field_selector=f"spec.serviceAccountName={judged.name}",
                                                 _request_timeout=accounts.request_timeout),
        f"list pods under {judged.where}")
    running = sorted(p.metadata.name for p in pods.items if not p.metadata.deletion_timestamp)
    if running:
        action.skipped = f"pods started under it meanwhile ({', '.join(running)})"
        return
    if action.identity:
        # The cloud side first: if it cannot be removed, the account keeps the record of it.
        await revoke_identity(settings, action.identity, judged.owner, judged.annotations)
    if action.kind == "delete-account":
        try:
            await accounts.call(
                lambda: accounts.api.delete_namespaced_service_account(
                    judged.name, judged.namespace,
                    body={"preconditions": {"uid": judged.uid, "resourceVersion": judged.resource_version}},
                    _request_timeout=accounts.request_timeout),
                f"delete ServiceAccount {judged.where}")
        except ApiException as e:
            if e.status == 409:
                action.skipped = ("a spawn changed the account while its cloud identity was being removed: the account "
                                  "stays, and that spawn's next start re-creates the identity")
                return
            if e.status != 404:
                raise
    action.done = True


async def _delete_unrecorded(action: Action, settings: Any, accounts: ServiceAccounts, namespace: str) -> None:
    # Judged a moment ago: look again, a spawn may have recorded it since.
    found, _ = await our_accounts(accounts, settings.hub_name, namespace)
    if any(action.identity in (a.identity, hub_made_identity(a.annotations)) for a in found):
        action.skipped = "a ServiceAccount records it now (a spawn made it meanwhile)"
        return
    if await revoke_identity(settings, action.identity, None, {}):
        action.done = True
    else:
        action.skipped = "gone already, or without this hub's markers"

