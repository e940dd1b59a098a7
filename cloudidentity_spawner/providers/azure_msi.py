"""Hub-managed Azure user-assigned managed identities for AKS Workload Identity (the ``azure`` extra).

:class:`ManagedIdentities` creates the identity a plan describes (tagged with the hub's
ownership tags), its one federated identity credential for exactly the plan's
ServiceAccount, and the planned role assignments; and removes the role assignments it
recorded, then the identity (its credentials go with it), when the identity is revoked or
its user deleted - only for identities that carry this hub's tags.

Azure rejects concurrent writes of federated credentials to one identity (409) and allows 20
per identity: writes to one identity are serialised (one lock per identity), and a full
identity is a clear error. Clients make one attempt per call; 429 and 5xx are retried here,
outside the hub's concurrent-call limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from ..errors import IdentityError
from ..plan import MANAGED_BY, IdentityPlan, refuse_another_person, thaw
from ..retry import Backoff
from .azure import (
    MAX_FEDERATED_CREDENTIALS,
    TAG_HUB,
    TAG_MANAGED_BY,
    TAG_OWNER,
    TAG_PERSON,
    identity_resource_id,
    parse_identity_resource_id,
)
from .managed import CloudCalls, Converged, failed_operation, fingerprint, report_progress

RETRIES = Backoff(attempts=8, base_delay=0.25, max_delay=8.0, floor=0.5)
PRINCIPAL_REPLICATION = Backoff(attempts=12, base_delay=0.5, max_delay=8.0, floor=0.5)
"""A new identity's service principal takes a while to reach every Entra replica; a role
assignment made at once can meet PrincipalNotFound (Azure documents the delay)."""


def _code(error: HttpResponseError) -> str:
    return getattr(getattr(error, "error", None), "code", None) or ""


def _worth_retrying(error: BaseException) -> bool:
    return isinstance(error, HttpResponseError) and (error.status_code or 0) in (429, 500, 502, 503, 504)


def default_clients(subscription_id: str) -> tuple[Any, Any]:
    """Clients with DefaultAzureCredential (the hub pod's own Workload Identity), one attempt per call."""
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.authorization import AuthorizationManagementClient
    from azure.mgmt.msi import ManagedServiceIdentityClient

    credential = DefaultAzureCredential()
    return (ManagedServiceIdentityClient(credential, subscription_id, retry_total=0),
            AuthorizationManagementClient(credential, subscription_id, retry_total=0))


class ManagedIdentities:
    """Create, converge and delete hub-managed Azure identities."""

    def __init__(self, clients: Callable[[str], tuple[Any, Any]] | None = None, *, max_concurrent_calls: int = 4,
                 cache_seconds: float = 3600.0, log: Any = None):
        self._factory = clients or default_clients
        self._clients: dict[str, tuple[Any, Any]] = {}
        self.calls = CloudCalls("azure", max_concurrent_calls)
        self.converged = Converged(cache_seconds)
        self.ids: dict[str, tuple[str, str]] = {}
        """Client and tenant id of each identity made or seen (resource id -> ids): the ServiceAccount's annotations."""
        self._role_ids: dict[tuple[str, str], str] = {}
        self.log = log

    def clients(self, subscription: str) -> tuple[Any, Any]:
        """(ManagedServiceIdentityClient, AuthorizationManagementClient) for *subscription*."""
        if subscription not in self._clients:
            self._clients[subscription] = self._factory(subscription)
        return self._clients[subscription]

    async def _call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await RETRIES.run(lambda: self.calls(name, fn, *args, **kwargs), _worth_retrying)

    # -- spawn -----------------------------------------------------------------

    async def ensure(self, plan: IdentityPlan, recheck: bool = False) -> str:
        """Make the planned identity, its credential and role assignments exist; created,
        updated or unchanged. A warm spawn within ``cache_seconds`` makes no call, unless
        *recheck* (the account is new, or ``gc`` is removing it)."""
        resources = thaw(plan.cloud.resources)
        key = plan.cloud.identity
        planned = fingerprint(resources)
        if not recheck and self.converged.fresh(key, planned) and key in self.ids:
            return "unchanged"
        # One spawn at a time per identity: Azure refuses concurrent credential writes to one.
        async with self.converged.lock(key):
            if not recheck and self.converged.fresh(key, planned) and key in self.ids:
                return "unchanged"
            try:
                outcome = await self._ensure(plan, resources)
            except HttpResponseError as e:
                raise self._error(plan, e) from None
            self.converged.remember(key, planned)
            return outcome

    async def _ensure(self, plan: IdentityPlan, resources: Mapping[str, Any]) -> str:
        spec = resources["managed_identity"]
        msi, auth = self.clients(spec["subscription_id"])
        group, name = spec["resource_group"], spec["name"]
        outcome = "unchanged"
        try:
            current = await self._call("GetIdentity", msi.user_assigned_identities.get, group, name)
        except ResourceNotFoundError:
            current = None
        if current is None:
            report_progress("Creating your cloud identity (an Azure managed identity).")
            current = await self._call("CreateIdentity", msi.user_assigned_identities.create_or_update, group, name,
                                       {"location": spec["location"], "tags": spec["tags"]})
            outcome = "created"
        else:
            self._check_ours(plan, current.tags or {})
            if dict(current.tags or {}) != spec["tags"]:
                current = await self._call("UpdateIdentity", msi.user_assigned_identities.create_or_update, group, name,
                                           {"location": current.location, "tags": spec["tags"]})
                outcome = "updated"
        self.ids[plan.cloud.identity] = (current.client_id, current.tenant_id)
        if await self._ensure_credential(msi, group, name, resources["federated_credential"], plan) and outcome == "unchanged":
            outcome = "updated"
        for assignment in resources["role_assignments"]:
            if await self._ensure_assignment(auth, assignment, current.principal_id) and outcome == "unchanged":
                outcome = "updated"
        return outcome

    def _check_ours(self, plan: IdentityPlan, tags: Mapping[str, str]) -> None:
        want = plan.cloud.resources["managed_identity"]["tags"]
        if any(tags.get(k) != want[k] for k in (TAG_MANAGED_BY, TAG_HUB, TAG_OWNER)):
            raise IdentityError(
                "Your cloud identity could not be set up: an Azure identity of that name exists and this hub does not "
                "manage it for you; ask your hub admin.",
                f"managed identity {plan.cloud.identity} exists without tags {TAG_MANAGED_BY}={MANAGED_BY}, "
                f"{TAG_HUB}={want[TAG_HUB]}, {TAG_OWNER}={want[TAG_OWNER]}; refusing to use or change it. Delete it, "
                "or change the rule's identity_name.",
            )
        refuse_another_person(plan, tags.get(TAG_PERSON), f"managed identity {plan.cloud.identity}")

    async def _ensure_credential(self, msi: Any, group: str, name: str, want: Mapping[str, Any], plan: IdentityPlan) -> bool:
        """The identity's federated credential for the plan's ServiceAccount; True if written."""
        existing = await self._call("ListFederatedCredentials", lambda: list(msi.federated_identity_credentials.list(group, name)))
        mine = next((c for c in existing if c.name == want["name"]), None)
        if mine is not None and (mine.issuer, mine.subject, sorted(mine.audiences or [])) == (
                want["issuer"], want["subject"], sorted(want["audiences"])):
            return False
        if mine is None and len(existing) >= MAX_FEDERATED_CREDENTIALS:
            raise IdentityError(
                "Your cloud identity cannot take another server account: its Azure identity has the most federated "
                "credentials Azure allows. Please tell your hub admin.",
                f"managed identity {plan.cloud.identity} has {len(existing)} federated credentials, Azure's limit is "
                f"{MAX_FEDERATED_CREDENTIALS}; a shared (group or hub scope) identity gets one per namespace and "
                "ServiceAccount - use fewer namespaces for the rule, or user scope.",
            )
        await self._call("PutFederatedCredential", msi.federated_identity_credentials.create_or_update, group, name,
                         want["name"], {"issuer": want["issuer"], "subject": want["subject"], "audiences": list(want["audiences"])})
        return True

    async def _role_definition(self, auth: Any, scope: str, role: str) -> str:
        key = (scope, role)
        if key not in self._role_ids:
            found = await self._call("ListRoleDefinitions", lambda: list(
                auth.role_definitions.list(scope, filter=f"roleName eq '{role}'")))
            if not found:
                raise IdentityError(
                    "Your cloud identity could not be set up; ask your hub admin.",
                    f"no Azure role named {role!r} at {scope} (role_assignments of the rule)",
                )
            self._role_ids[key] = found[0].id
        return self._role_ids[key]

    async def _ensure_assignment(self, auth: Any, assignment: Mapping[str, Any], principal_id: str) -> bool:
        """The planned role assignment (its name is derived from identity, scope and role); True if made."""
        role_id = await self._role_definition(auth, assignment["scope"], assignment["role"])
        try:
            made = await self._call("GetRoleAssignment", auth.role_assignments.get, assignment["scope"], assignment["name"])
        except ResourceNotFoundError:
            made = None
        if made is not None and made.principal_id == principal_id and made.role_definition_id.lower() == role_id.lower():
            return False
        if made is not None:
            # Our name (derived from this identity, scope and role) for an identity of the same
            # name that was deleted and made again: that assignment names a principal that no
            # longer exists, and Azure does not let an assignment change its principal.
            await self._call("DeleteRoleAssignment", auth.role_assignments.delete, assignment["scope"], assignment["name"])
        body = {"properties": {"roleDefinitionId": role_id, "principalId": principal_id, "principalType": "ServicePrincipal"}}

        def not_replicated_yet(error: BaseException) -> bool:
            return isinstance(error, HttpResponseError) and _code(error) == "PrincipalNotFound"

        try:
            await PRINCIPAL_REPLICATION.run(
                lambda: self._call("CreateRoleAssignment", auth.role_assignments.create, assignment["scope"],
                                   assignment["name"], body),
                not_replicated_yet)
        except ResourceExistsError as e:
            if _code(e) != "RoleAssignmentExists":
                raise
            return False  # made before (this name, or the same grant under another name)
        return True

    async def remove_assignments(self, resource_id: str, assignments: list[list[str]]) -> None:
        """Delete these role assignments (``[scope, name]``) the identity was given (a role the plan dropped)."""
        auth = self.clients(parse_identity_resource_id(resource_id)[0])[1]
        for scope, assignment in assignments:
            try:
                await self._call("DeleteRoleAssignment", auth.role_assignments.delete, scope, assignment)
            except ResourceNotFoundError:
                pass
        self.converged.forget(resource_id)

    # -- status, gc and deletion -----------------------------------------------

    async def present(self, resource_id: str) -> bool:
        subscription, group, name = parse_identity_resource_id(resource_id)
        try:
            await self._call("GetIdentity", self.clients(subscription)[0].user_assigned_identities.get, group, name)
        except ResourceNotFoundError:
            return False
        return True

    async def hub_made(self, place: str, hub: str) -> list[dict[str, Any]]:
        """The identities in resource group *place* (``/subscriptions/<id>/resourceGroups/<name>``)
        tagged as made by *hub* (``gc``)."""
        parts = place.strip("/").split("/")
        subscription, group = parts[1], parts[3]
        msi = self.clients(subscription)[0]
        listed = await self._call("ListIdentities", lambda: list(msi.user_assigned_identities.list_by_resource_group(group)))
        found = []
        for identity in listed:
            tags = identity.tags or {}
            if tags.get(TAG_MANAGED_BY) == MANAGED_BY and tags.get(TAG_HUB) == hub:
                created = getattr(getattr(identity, "system_data", None), "created_at", None)
                # ARM answers ids with "resourcegroups" in lower case; accounts record the canonical form.
                canonical = identity_resource_id(subscription, group, identity.name)
                found.append({"identity": f"azure:{canonical}", "owner": tags.get(TAG_OWNER, ""), "created": created})
        return found

    async def delete(self, resource_id: str, owner: str | None, hub: str, assignments: list[list[str]],
                     credential: str | None = None) -> bool:
        """Take the identity away - only if it carries our tags for *owner* (any owner of this hub:
        None) and *hub*; False if it was not ours or not there.

        With *credential* (one account leaving the identity), that account's federated credential
        goes; the identity stays while other accounts' credentials remain (a group's identity
        serves an account per namespace). Otherwise, or once none remain, the recorded role
        assignments (``[scope, name]``; all of the identity's in the subscription if none are
        recorded) go, then the identity with its credentials."""
        subscription, group, name = parse_identity_resource_id(resource_id)
        msi, auth = self.clients(subscription)
        async with self.converged.lock(resource_id):
            try:
                current = await self._call("GetIdentity", msi.user_assigned_identities.get, group, name)
            except ResourceNotFoundError:
                self.converged.forget(resource_id)
                return False
            tags = current.tags or {}
            if tags.get(TAG_MANAGED_BY) != MANAGED_BY or tags.get(TAG_HUB) != hub or (
                    owner is not None and tags.get(TAG_OWNER) != owner[:256]):
                if self.log:
                    self.log.info("cloudidentity: not deleting Azure identity %s: not managed by this hub for %s",
                                  resource_id, owner or "anyone")
                return False
            self.converged.forget(resource_id)
            if credential is not None:
                try:
                    await self._call("DeleteFederatedCredential", msi.federated_identity_credentials.delete, group, name, credential)
                except ResourceNotFoundError:
                    pass
                remaining = await self._call("ListFederatedCredentials",
                                             lambda: list(msi.federated_identity_credentials.list(group, name)))
                if remaining:
                    return True
            if not assignments:
                listed = await self._call("ListRoleAssignments", lambda: list(auth.role_assignments.list_for_scope(
                    f"/subscriptions/{subscription}", filter=f"principalId eq '{current.principal_id}'")))
                assignments = [[a.scope, a.name] for a in listed]
            for scope, assignment in assignments:
                try:
                    await self._call("DeleteRoleAssignment", auth.role_assignments.delete, scope, assignment)
                except ResourceNotFoundError:
                    pass
            try:
                await self._call("DeleteIdentity", msi.user_assigned_identities.delete, group, name)
            except ResourceNotFoundError:
                pass
            self.ids.pop(resource_id, None)
            return True

    def _error(self, plan: IdentityPlan, error: HttpResponseError) -> IdentityError:
        code, status = _code(error), error.status_code
        message = " ".join(str(getattr(getattr(error, "error", None), "message", "") or error.message or "").split())
        where = f"Azure {failed_operation(error)} for {plan.cloud.identity} (rule {plan.rule!r})"
        if status == 403 or code in ("AuthorizationFailed", "LinkedAuthorizationFailed"):
            return IdentityError(
                "Your cloud identity could not be set up (the hub is not allowed to manage it); ask your hub admin.",
                f"{where}: {code} {message}. Give the hub's identity the custom role in examples/azure/hub-role.json "
                "on the identities' resource group and the role assignments' scopes.",
            )
        if status == 409 and code == "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity":
            return IdentityError(
                "Your cloud identity is being changed by another hub; try again in a minute.",
                f"{where}: {message} (another writer, e.g. a second hub process, changed its credentials at the same time)",
            )
        return IdentityError("Your cloud identity could not be set up; ask your hub admin.", f"{where}: {code or status} {message}")
