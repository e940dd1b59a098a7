"""Hub-managed Google service accounts for Workload Identity (install the ``gcp`` extra).

:class:`ManagedServiceAccounts` creates the GSA a plan describes, grants
``roles/iam.workloadIdentityUser`` to exactly its Kubernetes ServiceAccount,
adds the planned project and bucket bindings, and undoes all of that when its
user is deleted - only for accounts whose description carries our ownership
marker, and only the bindings recorded as ours.

IAM policies are edited read-modify-write with their etag; a concurrent change
(ABORTED / 409 / 412) re-reads and retries, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from google.api_core import exceptions as gexc

from ..errors import IdentityError
from ..plan import IdentityPlan, refuse_another_person, thaw
from ..retry import Backoff
from .managed import CloudCalls, Converged, failed_operation, fingerprint, report_progress
from .gcp import MARKER_START, WORKLOAD_IDENTITY_USER, iam_member, ownership_marker, recorded_person

CONFLICTS = (gexc.Aborted, gexc.Conflict, gexc.PreconditionFailed)
PROPAGATION_BACKOFF = Backoff(attempts=10_000, base_delay=0.25, max_delay=8.0, floor=0.5)
"""Waiting for IAM to know a new account: bounded by time (``propagation_seconds``), not tries."""
RATE_LIMIT_BACKOFF = Backoff(attempts=8, base_delay=0.25, max_delay=8.0, floor=0.5)
_ACCOUNT_QUOTA = "Maximum number of service accounts"


def _rate_limited(error: BaseException) -> bool:
    """429 and 503: Google asks to slow down and try again - except the project's service-account
    quota (RESOURCE_EXHAUSTED too, but a count that no wait lowers: the user is told at once)."""
    if isinstance(error, gexc.ResourceExhausted) and _ACCOUNT_QUOTA in str(error.message):
        return False
    return isinstance(error, (gexc.TooManyRequests, gexc.ServiceUnavailable))


def default_clients():
    """Clients with Application Default Credentials (the hub pod's own Workload Identity)."""
    from google.cloud import iam_admin_v1, resourcemanager_v3, storage

    return iam_admin_v1.IAMClient(), resourcemanager_v3.ProjectsClient(), storage.Client()


def _key(binding: Mapping[str, Any]) -> tuple:
    condition = binding.get("condition") or {}
    return (binding["role"], condition.get("title", ""), condition.get("expression", ""))


class ManagedServiceAccounts:
    """Create, converge and delete hub-managed Google service accounts."""

    def __init__(
        self,
        clients: Callable[[], tuple[Any, Any, Any]] | None = None,
        *,
        max_concurrent_calls: int = 4,
        cache_seconds: float = 3600.0,
        policy_retries: int = 6,
        propagation_seconds: float = 60.0,
        log: Any = None,
    ):
        self.iam, self.projects, self.storage = (clients or default_clients)()
        self.calls = CloudCalls("gcp", max_concurrent_calls)
        self.converged = Converged(cache_seconds)
        self.policy_retries = policy_retries
        self.propagation_seconds = max(0.0, min(propagation_seconds, 600.0))
        self.activation_pending: dict[str, float] = {}
        """Accounts whose Workload Identity grant was just added (``time.monotonic()``): the
        spawn waits for them to be usable from the pod (see the provisioner's activation step)."""
        self._created: dict[str, float] = {}
        """When this process created each account (``time.monotonic()``), while that is less than
        ``propagation_seconds`` ago: only those get their "does not exist" answers retried."""
        self.log = log

    async def _call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Some calls (managed folders, through the storage connection) get no retry from the
        # client library: a rate-limited or unavailable answer is tried again here.
        return await RATE_LIMIT_BACKOFF.run(lambda: self.calls(name, fn, *args, **kwargs), _rate_limited)

    # -- spawn -----------------------------------------------------------------

    async def ensure(self, plan: IdentityPlan, recheck: bool = False) -> str:
        """Make the planned GSA (``managed`` mode) and bindings exist; returns created, updated
        or unchanged. In ``principal`` mode there is no account: only the bindings, whose member
        is the Kubernetes ServiceAccount's own principal. *recheck*: ask Google even if the cache
        says it was made right (the account is new, or ``gc`` is removing it)."""
        resources = thaw(plan.cloud.resources)
        email = plan.cloud.identity  # the GSA e-mail, or the principal
        principal = plan.cloud.mode == "principal"
        planned = fingerprint(resources)
        if not recheck and self.converged.fresh(email, planned):
            return "unchanged"
        async with self.converged.lock(email):
            if not recheck and self.converged.fresh(email, planned):
                return "unchanged"  # a concurrent spawn (a double click) just made it right
            try:
                created = False if principal else await self._ensure_account(plan, resources["service_account"])
                changed = False
                for binding in resources["bindings"]:
                    added = await self._settled(email, lambda b=binding: self._edit(b["resource"], add=b))
                    if added and (principal or binding["role"] == WORKLOAD_IDENTITY_USER):
                        # Until IAM applies the new grant, the pod's token exchange (a GSA) or its
                        # calls (a principal) are refused: the spawn waits for it.
                        self.activation_pending[email] = time.monotonic()
                    changed |= added
            except gexc.GoogleAPICallError as e:
                raise self._error(plan, e) from None
            self.converged.remember(email, planned)
        return "created" if created else "updated" if changed else "unchanged"

    async def _ensure_account(self, plan: IdentityPlan, account: Mapping[str, Any]) -> bool:
        name = f"projects/{account['project']}/serviceAccounts/{account['email']}"
        try:
            current = await self._call("GetServiceAccount", self.iam.get_service_account, request={"name": name})
        except gexc.NotFound:
            current = None
        if current is None:
            report_progress("Creating your cloud identity (a Google service account).")
            try:
                await self._call(
                    "CreateServiceAccount",
                    self.iam.create_service_account,
                    request={
                        "name": f"projects/{account['project']}",
                        "account_id": account["account_id"],
                        "service_account": {"display_name": account["display_name"], "description": account["description"]},
                    },
                )
                now = time.monotonic()
                self._created = {e: t for e, t in self._created.items() if now - t < self.propagation_seconds}
                self._created[account["email"]] = now
                return True
            except gexc.AlreadyExists:
                current = await self._call("GetServiceAccount", self.iam.get_service_account, request={"name": name})
        want_marker = account["description"][account["description"].rfind(MARKER_START) :]
        if not current.description.endswith(want_marker):
            raise IdentityError(
                "Your cloud identity could not be set up: a Google service account with its name already exists "
                "and is not managed by this hub for you; ask your hub admin.",
                f"Google service account {account['email']} exists without the marker {want_marker!r} in its "
                f"description; refusing to use or modify it for {plan.owner} (rule {plan.rule!r}). "
                "Change account_id in the rule.",
            )
        refuse_another_person(plan, recorded_person(current.description), f"Google service account {account['email']}")
        return False

    async def _settled(self, email: str, edit: Callable[[], Any]) -> Any:
        """Run *edit*; while IAM still says a just-created *email* "does not exist", retry.

        Google's IAM is eventually consistent: for a while after CreateServiceAccount,
        ``setIamPolicy`` on the account answers NOT_FOUND and a policy naming it answers
        400 "... does not exist". Only accounts this process created within
        ``propagation_seconds`` are waited for, with jittered backoff, the total capped.
        """
        created = self._created.get(email)
        if created is None:
            return await edit()

        def not_yet_known(error: BaseException) -> bool:
            # Only IAM not yet knowing *this* account; a missing bucket or pool is a real error.
            return (isinstance(error, (gexc.NotFound, gexc.BadRequest)) and "does not exist" in str(error.message)
                    and email in str(error.message))

        started, tries = time.monotonic(), 0

        async def attempt() -> Any:
            nonlocal tries
            tries += 1
            return await edit()

        try:
            result = await PROPAGATION_BACKOFF.run(attempt, not_yet_known, deadline=created + self.propagation_seconds)
        except Exception as e:
            if not not_yet_known(e):
                raise
            self._created.pop(email, None)  # later spawns get IAM's own answer
            if tries == 1:
                raise  # already past the wait: IAM's own answer
            raise PropagationTimeout(email, self.propagation_seconds) from None
        if tries > 1 and self.log:
            waited = time.monotonic() - started
            self.log.info("cloudidentity: Google IAM knew new service account %s after %.1f s", email, waited)
        return result

    async def _edit(self, resource: str, *, add: Mapping[str, Any] | None = None, remove: tuple | None = None, member: str = "") -> bool:
        """Read-modify-write one IAM policy, retrying on a concurrent change. True if written."""
        async with self.converged.lock(resource):
            return await Backoff(self.policy_retries, 0.05, 2.0).run(
                lambda: self._edit_once(resource, add, remove, member), lambda e: isinstance(e, CONFLICTS)
            )

    async def _edit_once(self, resource: str, add: Mapping[str, Any] | None, remove: tuple | None, member: str) -> bool:
        policy = await self._read_policy(resource, create_missing=add is not None)
        bindings = policy["bindings"]
        if add is not None:
            target = next((b for b in bindings if _key(b) == _key(add)), None)
            if target is None:
                target = {"role": add["role"], "members": []}
                if add.get("condition"):
                    target["condition"] = dict(add["condition"])
                bindings.append(target)
            if add["member"] in target["members"]:
                return False
            target["members"].append(add["member"])
        else:
            hits = [b for b in bindings if _key(b)[:2] == remove and member in b["members"]]
            if not hits:
                return False
            for b in hits:
                b["members"].remove(member)
            policy["bindings"] = [b for b in bindings if b["members"]]
        if any(b.get("condition") for b in policy["bindings"]):
            policy["version"] = 3
        await self._write_policy(resource, policy)  # a concurrent change: CONFLICTS, tried again
        return True

    async def _read_policy(self, resource: str, create_missing: bool = False) -> dict[str, Any]:
        kind = _kind(resource)
        if kind == "managed_folder":
            return await self._read_folder_policy(resource, create_missing)
        if kind == "bucket":
            bucket = self.storage.bucket(resource.rsplit("/", 1)[-1])
            raw = await self._call("buckets.getIamPolicy", bucket.get_iam_policy, requested_policy_version=3)
            return {
                "version": raw.version,
                "etag": raw.etag,
                "raw": raw,
                "bindings": [
                    {"role": b["role"], "members": sorted(b["members"]), **({"condition": dict(b["condition"])} if b.get("condition") else {})}
                    for b in raw.bindings
                ],
            }
        client = self.iam if kind == "service_account" else self.projects
        request = {"resource": resource, "options": {"requested_policy_version": 3}}
        if kind == "service_account":
            request.pop("options")
        raw = await self._call(f"{kind}.getIamPolicy", client.get_iam_policy, request=request)
        bindings = []
        for b in raw.bindings:
            item = {"role": b.role, "members": list(b.members)}
            if b.HasField("condition"):
                item["condition"] = {"title": b.condition.title, "description": b.condition.description, "expression": b.condition.expression}
            bindings.append(item)
        return {"version": raw.version, "etag": raw.etag, "bindings": bindings}

    # google-cloud-storage has no managed-folder methods: these use its connection's
    # connection's api_request (a private attribute of storage.Client) with the JSON API paths.

    async def _read_folder_policy(self, resource: str, create_missing: bool) -> dict[str, Any]:
        bucket, folder = _folder(resource)
        api = self.storage._connection.api_request
        path = f"/b/{bucket}/managedFolders/{quote(folder, safe='')}/iam"
        try:
            raw = await self._call("managedFolders.getIamPolicy", api, method="GET", path=path,
                                   query_params={"optionsRequestedPolicyVersion": 3})
        except gexc.NotFound:
            if not create_missing:
                return {"version": 1, "etag": "", "bindings": []}
            try:
                await self._call("managedFolders.insert", api, method="POST", path=f"/b/{bucket}/managedFolders",
                                 data={"name": folder})
            except gexc.Conflict:
                pass  # another spawn made it
            raw = await self._call("managedFolders.getIamPolicy", api, method="GET", path=path,
                                   query_params={"optionsRequestedPolicyVersion": 3})
        bindings = [
            {"role": b["role"], "members": sorted(b.get("members", [])), **({"condition": dict(b["condition"])} if b.get("condition") else {})}
            for b in raw.get("bindings", [])
        ]
        return {"version": raw.get("version", 1), "etag": raw.get("etag", ""), "bindings": bindings}

    async def _write_policy(self, resource: str, policy: Mapping[str, Any]) -> None:
        kind = _kind(resource)
        if kind == "managed_folder":
            bucket, folder = _folder(resource)
            body = {"version": policy["version"], "etag": policy["etag"], "bindings": policy["bindings"]}
            await self._call("managedFolders.setIamPolicy", self.storage._connection.api_request, method="PUT",
                             path=f"/b/{bucket}/managedFolders/{quote(folder, safe='')}/iam", data=body)
            return
        if kind == "bucket":
            raw = policy["raw"]
            raw.version = policy["version"]
            raw.bindings = [
                {"role": b["role"], "members": set(b["members"]), **({"condition": b["condition"]} if b.get("condition") else {})}
                for b in policy["bindings"]
            ]
            bucket = self.storage.bucket(resource.rsplit("/", 1)[-1])
            await self._call("buckets.setIamPolicy", bucket.set_iam_policy, raw)
            return
        client = self.iam if kind == "service_account" else self.projects
        body = {"version": policy["version"], "etag": policy["etag"], "bindings": policy["bindings"]}
        await self._call(f"{kind}.setIamPolicy", client.set_iam_policy, request={"resource": resource, "policy": body})

    # -- deletion --------------------------------------------------------------

    async def present(self, email: str) -> bool:
        """Whether the account exists (``status``)."""
        project = email.split("@", 1)[1].split(".", 1)[0]
        try:
            await self._call("GetServiceAccount", self.iam.get_service_account,
                             request={"name": f"projects/{project}/serviceAccounts/{email}"})
        except gexc.NotFound:
            return False
        return True

    async def hub_made(self, project: str, hub: str) -> list[dict[str, Any]]:
        """The accounts in *project* whose description carries *hub*'s marker (``gc``): ``identity``
        (``gcp:<e-mail>``), ``owner`` (the marker's digest) and ``created`` (None: Google does not say)."""
        pages = await self._call("ListServiceAccounts", self.iam.list_service_accounts,
                                 request={"name": f"projects/{project}", "page_size": 100})
        found = []
        # Later pages are fetched by the pager as it is iterated (blocking calls): in a thread.
        for account in await asyncio.to_thread(list, pages):
            owner = _marked_owner(account.description, hub)
            if owner is not None:
                found.append({"identity": f"gcp:{account.email}", "owner": owner, "created": None})
        return found

    async def delete(self, email: str, owner: str | None, hub: str, added_bindings: list[list[str]],
                     account: tuple[str, str] | None = None) -> bool:
        """Remove the bindings we added, then the GSA - only if its description carries our marker
        (for *owner*; for any owner of this hub with None, ``gc``'s accounts no ServiceAccount records).

        With *account* (``(namespace, name)``, one ServiceAccount leaving the GSA): a shared GSA
        that other namespaces' accounts may also act as (user namespaces) only loses this one's
        ``workloadIdentityUser`` grant, and stays (with its bindings) while others remain."""
        project = email.split("@", 1)[1].split(".", 1)[0]
        name = f"projects/{project}/serviceAccounts/{email}"
        try:
            current = await self._call("GetServiceAccount", self.iam.get_service_account, request={"name": name})
        except gexc.NotFound:
            return False
        marked = (current.description.endswith(ownership_marker(hub, owner)) if owner is not None
                  else _marked_owner(current.description, hub) is not None)
        if not marked:
            if self.log:
                self.log.info("cloudidentity: not deleting Google service account %s: not managed by this hub for %s",
                              email, owner or "anyone")
            return False
        self.converged.forget(email)
        if account is not None:
            suffix = f"[{account[0]}/{account[1]}]"
            policy = await self._read_policy(name)
            users = [m for b in policy["bindings"] if b["role"] == WORKLOAD_IDENTITY_USER for m in b["members"]]
            if any(not m.endswith(suffix) for m in users):
                # Other namespaces' accounts still act as it: only this one's grant goes (if it is
                # still there - a repeat after a partial failure finds it gone and must stop here).
                for member in [m for m in users if m.endswith(suffix)]:
                    await self._edit(name, remove=(WORKLOAD_IDENTITY_USER, ""), member=member)
                return True
        await self.remove_bindings(email, added_bindings)
        await self._call("DeleteServiceAccount", self.iam.delete_service_account, request={"name": name})
        self.converged.forget(email)
        return True

    async def remove_bindings(self, email: str, bindings: list[list[str]]) -> None:
        """Take *email* (a GSA, or a principal) out of each ``[resource, role, condition title]``
        binding (others' members stay)."""
        member = iam_member(email)
        for resource, role, title in bindings:
            await self._edit(resource, remove=(role, title), member=member)
        self.converged.forget(email)

    # -- grants left behind (gc) ---------------------------------------------------

    async def managed_folders(self, bucket: str) -> list[str]:
        """The resource names of the bucket's managed folders."""
        api, found, token = self.storage._connection.api_request, [], None
        while True:
            page = await self._call("managedFolders.list", api, method="GET", path=f"/b/{bucket}/managedFolders",
                                    query_params={"pageSize": 1000, **({"pageToken": token} if token else {})})
            found += [f"projects/_/buckets/{bucket}/managedFolders/{item['name']}" for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return found

    async def grants(self, resource: str) -> list[tuple[str, str, str]]:
        """``(role, condition title, member)`` of every grant in *resource*'s IAM policy."""
        policy = await self._read_policy(resource)
        return [(b["role"], (b.get("condition") or {}).get("title", ""), m) for b in policy["bindings"] for m in b["members"]]

    async def remove_grant(self, resource: str, role: str, title: str, member: str) -> bool:
        """Take *member* out of *resource*'s ``(role, condition title)`` binding; False if it was not there."""
        return await self._edit(resource, remove=(role, title), member=member)

    def _error(self, plan: IdentityPlan, error: gexc.GoogleAPICallError) -> IdentityError:
        if isinstance(error, PropagationTimeout):
            return IdentityError(
                "Google is still setting up your new cloud identity; try again in a minute.",
                f"Google IAM still says {error.email} does not exist {error.seconds:.0f} s after it was created "
                "(gcp_propagation_seconds); the next spawn carries on from here",
            )
        email = plan.cloud.identity
        if isinstance(error, gexc.ResourceExhausted):
            return IdentityError(
                "The hub cannot create more cloud identities: the Google Cloud project's service account quota is "
                "reached. Please tell your hub admin.",
                f"creating {email} for {plan.owner}: {error.message}. Google Cloud allows 100 service accounts per "
                "project by default: request more quota, delete unused accounts, or use group scope or existing "
                "service accounts for large hubs.",
            )
        if isinstance(error, gexc.Forbidden):  # includes PermissionDenied over gRPC
            return IdentityError(
                "Your cloud identity could not be set up (the hub is not allowed to manage it); ask your hub admin.",
                f"Google Cloud denied {failed_operation(error)} for {email}: {error.message}",
            )
        return IdentityError(
            "Your cloud identity could not be set up; ask your hub admin.",
            f"Google Cloud {type(error).__name__} for {email} (rule {plan.rule!r}): {error.message}",
        )


class PropagationTimeout(gexc.GoogleAPICallError):
    """A new service account stayed unknown to IAM policy writes for longer than allowed."""

    code = 404

    def __init__(self, email: str, seconds: float):
        super().__init__(f"{email} does not exist after {seconds:.0f} s")
        self.email, self.seconds = email, seconds


def _marked_owner(description: str, hub: str) -> str | None:
    """The owner digest of *hub*'s ownership marker ending *description*, or None."""
    found = re.search(rf" {re.escape(MARKER_START)}hub={re.escape(hub)} owner=([0-9a-f]{{32}})\]$", description)
    return found.group(1) if found else None


def _kind(resource: str) -> str:
    if resource.startswith("projects/_/buckets/") and "/managedFolders/" in resource:
        return "managed_folder"
    if resource.startswith("projects/_/buckets/"):
        return "bucket"
    if "/serviceAccounts/" in resource:
        return "service_account"
    return "project"


def _folder(resource: str) -> tuple[str, str]:
    """``(bucket, folder)`` of ``projects/_/buckets/<bucket>/managedFolders/<folder>/``."""
    bucket, folder = resource.removeprefix("projects/_/buckets/").split("/managedFolders/", 1)
    return bucket, folder
