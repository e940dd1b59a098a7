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

import dataclasses
import datetime
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from .errors import IdentityError
from .inventory import Account, Survey, hub_made_identity, our_accounts
from .kube import ServiceAccounts
from . import names
from .plan import GC_PENDING_ANNOTATION, HUB_LABEL, MANAGED_BY, MANAGED_BY_LABEL, MANAGED_IDENTITY_ANNOTATION
from .providers import backend_for, provider_for, provider_of_backend
from .providers.base import Grant, Provider
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
    grant: Grant | None = None
    """For ``remove-grant``: the grant in an access policy whose member is gone."""
    grant_account: tuple[str, str] | None = None
    """For ``remove-grant`` to a ServiceAccount's principal: that account, which must not exist."""
    secret: tuple[str, str, str, str, str] | None = None
    """For ``delete-secret``: a storage-token Secret's namespace, name, uid, resourceVersion and
    its server's pod name."""
    grants: list[Any] = dataclasses.field(default_factory=list)
    """For ``delete-identity``: its grants in the rules' places (a Google service account's
    ``[resource, role, condition title]``), removed before it."""

    def describe(self) -> str:
        identity = self.identity.split(":", 1)[1] if self.identity else None
        if self.kind == "search":
            return self.reason
        if self.kind == "remove-grant":
            g = self.grant
            return f"{g.role} on {g.resource} for {g.member}: {self.reason}"
        if self.kind == "delete-secret":
            return f"storage-token Secret {self.secret[0]}/{self.secret[1]}: {self.reason}"
        if self.kind == "delete-account":
            what = f"ServiceAccount {self.account.where}" + (f" and {identity}" if identity else "")
        elif self.kind == "revoke":
            what = f"{identity} (still recorded by ServiceAccount {self.account.where})"
        else:
            what = identity
        return f"{what}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        grant = {k: v for k, v in dataclasses.asdict(self.grant).items() if k != "kind"} if self.grant else None
        return {"action": self.kind, "service_account": self.account.where if self.account else None,
                "identity": self.identity, "reason": self.reason, "done": self.done, "skipped": self.skipped,
                **({"grant": grant} if grant else {}),
                **({"secret": f"{self.secret[0]}/{self.secret[1]}"} if self.secret else {})}


def cleanup_actions(survey: Survey, cloud_made: Iterable[dict[str, Any]], min_age: float,
                    now: datetime.datetime | None = None) -> list[Action]:
    """What to remove, from a survey and the hub-made identities found in the clouds."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    still_used: dict[str, list[str]] = {}  # identity -> accounts that are planned and record or plan it
    for entry in survey.entries:
        if entry.state != "orphaned":
            # An account does not keep alive the hub-made identity it records and no longer plans
            # (its stale identity): that is what gc revokes. Other accounts recording it do.
            used = {entry.account.identity, hub_made_identity(entry.account.annotations), entry.planned_identity}
            for identity in used - {entry.stale_identity, None}:
                still_used.setdefault(identity, []).append(entry.account.where)
    actions = []
    for entry in survey.entries:
        account = entry.account
        if entry.state == "orphaned":
            identity = entry.stale_identity
            reason = entry.problems[0]
            if identity in still_used:  # e.g. a renamed account: the same role, now under the new name
                reason += f"; its {identity.split(':', 1)[1]} stays (used by {', '.join(still_used[identity])})"
                identity = None
            action = Action("delete-account", reason, account, identity)
            if account.adopted:
                action.skipped = "adopted by the hub (adopt: true): it is the operator's and never deleted"
        elif entry.stale_identity and entry.state in ("ok", "drift") and entry.stale_identity not in still_used:
            action = Action("revoke", "its plan no longer uses it", account, entry.stale_identity)
        else:
            continue
        if not account.hub_labelled and not action.skipped:
            action.skipped = ("made before accounts carried the hub label, so it may be another hub's: its owner's "
                              "next spawn labels it (or label it cloudidentity-spawner/hub=<hub_name> by hand)")
        if entry.pods and not action.skipped:
            action.skipped = f"pods still run under it ({', '.join(entry.pods)})"
        actions.append(action)
    known = set(still_used) | survey.recorded | {a.identity for a in actions if a.identity}
    for found in cloud_made:
        if found["identity"] in known:
            continue
        action = Action("delete-identity", "made by this hub; no ServiceAccount records it", identity=found["identity"])
        created = found.get("created")
        if not survey.complete:
            action.skipped = ("the hub may not list ServiceAccounts in every namespace, so an account elsewhere "
                              "may record it")
        elif created is None and min_age > 0:
            action.skipped = ("the cloud does not say when it was made, so a spawn may still be setting it up: "
                              "run gc --min-age 0 when no first spawn is under way")
        elif created is not None and (age := (now - created).total_seconds()) < min_age:
            action.skipped = f"made {age:.0f} s ago: a spawn may still be setting it up (--min-age {min_age:.0f})"
        actions.append(action)
    return actions


async def cloud_made(settings: Any, recorded: Iterable[str] = (), role_paths: Iterable[str] = (),
                     unsearched: list[Action] | None = None) -> list[dict[str, Any]]:
    """Hub-made identities in the places the rules make them: IAM roles under managed rules'
    role paths, Pod Identity associations in their clusters, Google accounts in their projects;
    and in the places of the hub-made identities accounts *recorded* (a rule removed since) and
    under the IAM *role_paths* an operator names (``gc --role-path``: a rule removed whose
    accounts are gone too). Grants to principals have no object of their own (:func:`stale_grants`).
    A place the rules do not name that cannot be listed is added to *unsearched* (when given)."""
    places: dict[tuple[str, str], bool] = {}  # -> whether the rules name it (else: searched if it can be)
    for identity in recorded:
        place = _place_of(identity)
        if place is not None:
            places[place] = False
    for path in role_paths:
        places[("aws", path)] = False
    for rule in settings.compiled_rules.rules:
        provider = provider_for(rule.cloud_key)
        for place in provider.search_places(rule.cloud) if provider is not None else ():
            places[place] = True
    found: list[dict[str, Any]] = []
    for (kind, place), named_by_rules in places.items():
        try:
            listed = await backend_for(settings, kind).hub_made(place, settings.hub_name)
            # A backend answers for its own kind only (gc deletes through the kind's backend).
            found += [f for f in listed if str(f.get("identity", "")).startswith(f"{kind}:")]
        except IdentityError:
            raise
        except Exception as e:  # no credentials, refused, unreachable: one line, nothing done
            if not named_by_rules and unsearched is not None:  # e.g. the hub's policy covers the rules' paths only
                unsearched.append(Action("search", f"this hub's {kind} identities in {place}",
                                         skipped=f"could not list them: {_said(e)}"))
                continue
            raise IdentityError("", f"gc could not list the hub-made {kind} identities in {place}: "
                                    f"{type(e).__name__}: {' '.join(str(e).split())[:300]}. gc needs the hub's cloud "
                                    "credentials: run it where the hub runs (kubectl exec into the hub pod), or give it "
                                    "the same ones (AWS_PROFILE or AWS_* variables, GOOGLE_APPLICATION_CREDENTIALS, "
                                    "AZURE_* variables); nothing was changed") from None
    # A path nested in another is listed twice.
    return list({f["identity"]: f for f in found}.values())


async def plan_cleanup(settings: Any, survey: Survey, accounts: ServiceAccounts, min_age: float,
                       role_paths: Iterable[str] = (), principal_grants: bool = False, namespace: str = "") -> list[Action]:
    """Everything ``gc`` would do: :func:`cleanup_actions` over the survey and the hub-made
    identities in the clouds, then :func:`stale_grants` (with *principal_grants*, also grants to
    principals of missing ServiceAccounts in the hub's *namespace* and its accounts' namespaces)."""
    places = settings.compiled_rules.managed_places
    recorded = {i for e in survey.entries if (i := hub_made_identity(e.account.annotations, places))}
    unsearched: list[Action] = []
    made = await cloud_made(settings, sorted(recorded), role_paths, unsearched)
    actions = cleanup_actions(survey, made, min_age) + unsearched
    # Identities this hub made: recorded as made (not merely in a managed place) or marked.
    made_here = {e.account.annotations.get(MANAGED_IDENTITY_ANNOTATION) for e in survey.entries} | {f["identity"] for f in made}
    namespaces = ({namespace} | {e.account.namespace for e in survey.entries}) if principal_grants else set()
    actions += await stale_grants(settings, accounts, actions, made_here - {None}, min_age, namespaces - {""})
    if not settings.compiled_rules.storage_tokens:  # no Secrets to look for (nor, maybe, the right to list them)
        return actions
    return actions + await stale_token_secrets(settings, accounts, {namespace} | {e.account.namespace for e in survey.entries},
                                               min_age)


async def stale_token_secrets(settings: Any, accounts: ServiceAccounts, namespaces: Collection[str],
                              min_age: float = 0.0) -> list[Action]:
    """This hub's storage-token Secrets (:mod:`.token_keeper`) whose server's pod is gone: a
    stop that could not delete one, or a hub that stopped while servers were stopping. The
    token in it still works until it expires: ``gc`` deletes it. One written less than
    *min_age* ago is left: a starting server writes its Secret before its pod exists."""
    from .token_keeper import KIND, KIND_LABEL, POD_ANNOTATION, WRITTEN_ANNOTATION

    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY},{KIND_LABEL}={KIND},{HUB_LABEL}={names.label_value(settings.hub_name)}"
    found = []
    for namespace in sorted(n for n in namespaces if n):
        try:
            listed = await accounts.api.list_namespaced_secret(namespace, label_selector=selector,
                                                               _request_timeout=accounts.request_timeout)
        except ApiException as e:
            found.append(Action("search", f"storage-token Secrets in {namespace}",
                                skipped=f"could not list them: Kubernetes said {e.status} {e.reason}"))
            continue
        now = datetime.datetime.now(datetime.timezone.utc)
        for secret in listed.items:
            meta = secret.metadata
            pod = (meta.annotations or {}).get(POD_ANNOTATION, "")
            if pod and await _pod_exists(accounts, namespace, pod):
                continue
            action = Action("delete-secret", f"its server's pod {namespace}/{pod or '?'} is gone",
                            secret=(namespace, meta.name, meta.uid, meta.resource_version, pod))
            try:
                written = datetime.datetime.strptime((meta.annotations or {}).get(WRITTEN_ANNOTATION, ""),
                                                     "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
            except ValueError:
                written = None
            if written is None and min_age > 0:
                action.skipped = "it does not say when it was written: run gc --min-age 0 when no server is starting"
            elif written is not None and (age := (now - written).total_seconds()) < min_age:
                action.skipped = f"written {age:.0f} s ago: its server may be starting (--min-age {min_age:.0f})"
            found.append(action)
    return found


async def _pod_exists(accounts: ServiceAccounts, namespace: str, pod: str) -> bool:
    try:
        await accounts.api.read_namespaced_pod(pod, namespace, _request_timeout=accounts.request_timeout)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _said(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _place_of(identity: str) -> tuple[str, str] | None:
    """Where a hub-made identity was made, as :func:`cloud_made` searches places."""
    kind, _, name = identity.partition(":")
    provider = provider_of_backend(kind)
    return provider.place_of(kind, name) if provider is not None else None


async def stale_grants(settings: Any, accounts: ServiceAccounts, actions: list[Action], made_here: set[str],
                       min_age: float, principal_namespaces: Collection[str] = ()) -> list[Action]:
    """Grants the rules made that outlive their member, as each provider finds them
    (:meth:`.providers.base.Provider.orphaned_grants`): to an identity this hub made
    (*made_here*) that was deleted, or with *principal_namespaces* (``gc --principal-grants``)
    to the principal of a ServiceAccount in one of those namespaces that does not exist. An
    identity *actions* delete gets its grants attached, so they go before it. What cannot be
    read is reported (a ``search`` action, skipped), the rest go on."""
    blocks: dict[str, list[Any]] = {}
    for rule in settings.compiled_rules.rules:
        if rule.cloud_key is not None and rule.cloud.hub_made:
            blocks.setdefault(rule.cloud_key, []).append(rule.cloud)
    deleting = {a.identity: a.grants for a in actions if a.kind == "delete-identity" and not a.skipped}
    stale: list[Action] = []
    unread: list[Action] = []
    present: dict[tuple[str, str], bool | None] = {}
    for key, rule_blocks in blocks.items():
        provider = provider_for(key)
        if type(provider).orphaned_grants is Provider.orphaned_grants:
            continue  # its grants live and die with its identities
        kinds = set(provider.backends)
        own = {identity: grants for identity, grants in deleting.items() if identity.partition(":")[0] in kinds}
        try:
            backend = backend_for(settings, provider.backend_kind(rule_blocks[0]))
            found, unreadable = await provider.orphaned_grants(rule_blocks, backend, made_here, own, principal_namespaces)
        except IdentityError:
            raise
        except Exception as e:  # one provider's search: reported, the rest go on
            unread.append(Action("search", f"grants of the rules' {key} blocks", skipped=f"could not search them: {_said(e)}"))
            continue
        unread += [Action("search", what, skipped=why) for what, why in unreadable]
        for grant, account, reason in found:
            if grant.kind not in kinds:  # a provider removes grants through its own backends only
                continue
            if account is None:
                stale.append(Action("remove-grant", reason, grant=grant))
                continue
            if account not in present:
                present[account] = await accounts.exists(*account)
            if present[account] is False:
                action = Action("remove-grant", f"ServiceAccount {account[0]}/{account[1]} does not exist", grant=grant,
                                grant_account=account)
                if min_age > 0:
                    action.skipped = ("IAM does not say when a grant was made, and a first spawn grants before it "
                                      "makes its account: run gc --min-age 0 when no first spawn is under way")
                stale.append(action)
    return stale + unread


async def apply(actions: list[Action], settings: Any, accounts: ServiceAccounts, hub_users: Any, namespace: str,
                progress: Callable[[str, int, int], None] | None = None) -> None:
    """Carry out the actions not skipped, each after checking again; record the outcome on each."""
    todo = [a for a in actions if not a.skipped]
    for i, action in enumerate(todo, 1):
        try:
            if action.kind == "delete-identity":
                await _delete_unrecorded(action, settings, accounts, namespace)
            elif action.kind == "remove-grant":
                await _remove_grant(action, settings, accounts)
            elif action.kind == "delete-secret":
                await _delete_secret(action, accounts)
            else:
                await _act_on_account(action, settings, accounts, hub_users)
        except (IdentityError, ApiException) as e:
            detail = e.admin_detail if isinstance(e, IdentityError) else f"Kubernetes said {e.status} {e.reason}"
            action.skipped = f"failed: {detail}"
        if progress:
            progress("cleaning up", i, len(todo))


async def _act_on_account(action: Action, settings: Any, accounts: ServiceAccounts, hub_users: Any) -> None:
    """Mark the account (``gc-pending``: a spawn that finds it re-checks its cloud identity and
    removes the mark), check pods, remove the cloud side, check pods again, delete the account
    only if nothing changed it since the mark."""
    judged = action.account
    api, timeout = accounts.api, accounts.request_timeout
    if judged.user is not None and action.reason.startswith(f"user {judged.user} is no longer on the hub"):
        if (await hub_users.users([judged.user])).get(judged.user) is not None:
            action.skipped = f"user {judged.user} is on the hub again"
            return
    mark = {"metadata": {"resourceVersion": judged.resource_version, "uid": judged.uid,
                         "annotations": {GC_PENDING_ANNOTATION: datetime.datetime.now(datetime.timezone.utc).isoformat()}}}
    try:
        marked = await accounts.call(
            lambda: api.patch_namespaced_service_account(judged.name, judged.namespace, mark,
                                                         _content_type="application/merge-patch+json", _request_timeout=timeout),
            f"mark ServiceAccount {judged.where}")
    except ApiException as e:
        if e.status not in (404, 409):
            raise
        action.skipped = ("gone already" if e.status == 404 else
                          "changed since it was judged (a spawn used it): run gc again to judge it anew")
        return
    version = marked.metadata.resource_version
    running = await accounts.running_pods(judged.namespace, judged.name)
    if running:
        await _unmark(accounts, judged, version)
        action.skipped = f"pods started under it meanwhile ({', '.join(running)})"
        return
    if action.identity:
        # The cloud side first: if it cannot be removed, the account keeps the record of it.
        await revoke_identity(settings, action.identity, judged.owner, judged.annotations, (judged.namespace, judged.name))
    if action.kind == "revoke":
        # The account no longer records what was revoked (its owner's next spawn writes the plan).
        await _unmark(accounts, judged, version, forget_identity=True)
        action.done = True
        return
    running = await accounts.running_pods(judged.namespace, judged.name)
    if running:
        action.skipped = (f"a server started under it while its cloud identity was being removed ({', '.join(running)}): "
                          "the account stays, marked, and that server's next start re-creates the identity")
        return
    try:
        await accounts.call(
            lambda: api.delete_namespaced_service_account(
                judged.name, judged.namespace, body={"preconditions": {"uid": judged.uid, "resourceVersion": version}},
                _request_timeout=timeout),
            f"delete ServiceAccount {judged.where}")
    except ApiException as e:
        if e.status == 409:
            action.skipped = ("a spawn changed the account while its cloud identity was being removed: the account "
                              "stays, and that spawn re-created the identity or its next one will")
            return
        if e.status != 404:
            raise
    action.done = True


async def _unmark(accounts: ServiceAccounts, judged: Account, version: str, forget_identity: bool = False) -> None:
    """Take the ``gc-pending`` mark off again (if nothing changed the account since; a spawn removes
    it anyway), and with *forget_identity* the record of the hub-made identity just revoked."""
    annotations: dict[str, None] = {GC_PENDING_ANNOTATION: None}
    if forget_identity:
        annotations[MANAGED_IDENTITY_ANNOTATION] = None
    body = {"metadata": {"resourceVersion": version, "annotations": annotations}}
    try:
        await accounts.api.patch_namespaced_service_account(
            judged.name, judged.namespace, body, _content_type="application/merge-patch+json",
            _request_timeout=accounts.request_timeout)
    except ApiException:
        pass


async def _delete_unrecorded(action: Action, settings: Any, accounts: ServiceAccounts, namespace: str) -> None:
    # Judged a moment ago: look again, a spawn may have recorded it since.
    listing = await our_accounts(accounts, settings.hub_name, namespace)
    if action.identity in listing.recorded:
        action.skipped = "a ServiceAccount records it now (a spawn made it meanwhile)"
        return
    kind, _, name = action.identity.partition(":")
    provider = provider_of_backend(kind)
    named = provider.account_of(kind, name) if provider is not None else None
    if named is not None:  # e.g. an association names its account: pods may still run under it
        running = await accounts.running_pods(*named)
        if running:
            action.skipped = f"pods still run under {named[0]}/{named[1]} ({', '.join(running)})"
            return
    recorded = provider.recorded_grants(action.grants) if provider is not None else {}
    if await revoke_identity(settings, action.identity, None, recorded):
        action.done = True
    else:
        action.skipped = "gone already, or without this hub's markers"


async def _delete_secret(action: Action, accounts: ServiceAccounts) -> None:
    namespace, name, uid, version, pod = action.secret
    try:  # judged a moment ago: only if its server did not start since and nothing wrote it since
        if pod and await _pod_exists(accounts, namespace, pod):
            action.skipped = "its server started again meanwhile"
            return
        await accounts.api.delete_namespaced_secret(
            name, namespace, body={"preconditions": {"uid": uid, "resourceVersion": version}},
            _request_timeout=accounts.request_timeout)
    except ApiException as e:
        if e.status not in (404, 409):
            raise
        action.skipped = "gone already" if e.status == 404 else "changed since it was judged"
        return
    action.done = True


async def _remove_grant(action: Action, settings: Any, accounts: ServiceAccounts) -> None:
    grant = action.grant
    if action.grant_account is not None:  # judged a moment ago: a spawn may have made the account since
        namespace, name = action.grant_account
        if await accounts.exists(namespace, name) is not False:
            action.skipped = f"ServiceAccount {namespace}/{name} exists now"
            return
    try:
        removed = await provider_of_backend(grant.kind).remove_grant(backend_for(settings, grant.kind), grant)
    except Exception as e:
        raise IdentityError("", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
    if removed:
        action.done = True
    else:
        action.skipped = "gone already"
