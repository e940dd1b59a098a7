"""What the hub does around a Google identity besides making it: wait until a pod can use it
(Google applies IAM changes in minutes, GKE's metadata server learns an account's annotation
from its own watch), and find the grants that outlived their member (for ``gc``).

No Google SDK here: the backend (:mod:`.gcp_iam`) makes the calls.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Collection, Mapping
from typing import Any

from ..errors import IdentityError
from ..retry import describe
from . import gcp
from .base import Grant


async def await_activation(step: Any, plan: Any, before: Mapping[str, Any] | None) -> None:
    """Wait (bounded) until the pod can use its Google account: after a new Workload Identity
    grant (``gcp_activation_seconds``; Google: IAM changes take minutes), and after the account's
    ``iam.gke.io/gcp-service-account`` annotation was just set or changed
    (``gcp_annotation_settle_seconds``; GKE's metadata server learns it from its own watch)."""
    settings = step.settings
    deadlines = []
    if plan.cloud.hub_made:
        since = step.backend("gcp").activation_pending.get(plan.cloud.identity)
        if since is not None:
            deadlines.append(since + max(0.0, min(settings.gcp_activation_seconds, 900.0)))
    annotations = (before or {}).get("annotations") or {}
    if plan.cloud.mode != "principal" and annotations.get(gcp.GSA_ANNOTATION) != plan.cloud.identity:
        deadlines.append(time.monotonic() + max(0.0, min(settings.gcp_annotation_settle_seconds, 300.0)))
    if not deadlines or max(deadlines) <= time.monotonic():
        return
    deadline, started = max(deadlines), time.monotonic()
    long_wait = len(deadlines) > 1 or plan.cloud.hub_made
    step.show_progress(
        "Your new Google identity is being activated (this can take a few minutes)." if long_wait
        else "Your server is being connected to its Google identity."
    )
    check = settings.gcp_activation_check
    while True:
        if check is not None and await _check_passes(step.log, check, plan, deadline):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if check is None:
                break
            raise IdentityError(
                "Google has not activated your new cloud identity yet; try again in a few minutes.",
                f"{plan.cloud.identity} not usable from {plan.service_account.namespace}/{plan.service_account.name} "
                f"{time.monotonic() - started:.0f} s into the wait (gcp_activation_seconds, "
                "gcp_annotation_settle_seconds); the next spawn starts at once",
            )
        await asyncio.sleep(min(1.0 if check is not None else remaining, remaining))
    step.log.info("cloudidentity: waited %.1f s for %s to become usable for %s%s", time.monotonic() - started,
                  plan.cloud.identity, plan.user, "" if check is None else " (check passed)")
    if plan.cloud.hub_made:
        pending = step.backend("gcp").activation_pending
        if pending.get(plan.cloud.identity, float("inf")) <= started:
            pending.pop(plan.cloud.identity, None)  # waited for; a grant added since keeps its own entry


async def _check_passes(log: Any, check: Any, plan: Any, deadline: float) -> bool:
    """Run the operator's check without blocking the hub or outliving the wait; an error is "not yet"."""
    try:
        result = await asyncio.wait_for(asyncio.to_thread(check, plan), max(0.1, deadline - time.monotonic()))
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, max(0.1, deadline - time.monotonic()))
        return bool(result)
    except Exception as e:
        log.debug("cloudidentity: gcp_activation_check for %s: %s", plan.cloud.identity, describe(e))
        return False


async def orphaned_grants(blocks: list[Any], backend: Any, made_here: Collection[str],
                          deleting: Mapping[str, list[Any]], principal_namespaces: Collection[str]
                          ) -> tuple[list[tuple[Grant, tuple[str, str] | None, str]], list[tuple[str, str]]]:
    """Grants the rules' Google blocks made that outlive their member, in the places the rules
    grant (the project, whole buckets, each managed folder of a bucket the rules grant prefixes
    in; only bindings of the roles the rules grant there):

    - to a Google service account this hub made (*made_here*: recorded as made by its accounts
      or carrying its marker) that was deleted - IAM shows ``deleted:serviceAccount:...``: it
      reaches nothing, but counts against the policy's member limit;
    - with *principal_namespaces* (``gc --principal-grants``), to the Workload Identity Federation
      principal of a Kubernetes ServiceAccount in one of those namespaces (``gc`` checks that it
      does not exist: a new account of that name would get its grants). Nothing marks a grant
      as this hub's, and every cluster of a project shares its pool: only on the operator's word;
    - and a Google service account ``gc`` is *deleting* without an account recording its grants
      gets them appended (``[resource, role, title]``), so they go before it (not left as
      ``deleted:`` members).

    A resource that cannot be read is reported (``(what, why)``), the rest go on.
    """
    ours = {i.split(":", 1)[1] for i in made_here if i.startswith("gcp:") and not i.startswith("gcp:principal://")}
    wanted: dict[str, set[str]] = {}  # resource (or "folders:<bucket>") -> roles the rules grant there
    principals: set[str] = set()  # "principal://.../subject/ns/" of the rules' pools
    for settings in blocks:
        block = settings.managed or settings.principal
        if block is None:
            continue
        if settings.principal is not None:
            principals.add(gcp.principal_member(block["project_number"], block["workload_identity_pool"], "", "")
                           .removesuffix("/sa/"))
        for role in block.get("project_roles", []):
            wanted.setdefault(f"projects/{block['project']}", set()).add(role)
        for item in block.get("bucket_roles", []):
            where = f"folders:{item['bucket']}" if "prefix" in item else f"projects/_/buckets/{item['bucket']}"
            wanted.setdefault(where, set()).add(item["role"])
    deleting_accounts = {identity.split(":", 1)[1]: grants for identity, grants in deleting.items()
                         if identity.startswith("gcp:")}
    unread: list[tuple[str, str]] = []
    resources: dict[str, set[str]] = {}
    for where, roles in wanted.items():
        if not where.startswith("folders:"):
            resources.setdefault(where, set()).update(roles)
            continue
        bucket = where.removeprefix("folders:")
        try:
            for folder in await backend.managed_folders(bucket):
                resources.setdefault(folder, set()).update(roles)
        except Exception as e:
            unread.append((f"grants on the managed folders of bucket {bucket}", f"could not list them: {_said(e)}"))
    found: list[tuple[Grant, tuple[str, str] | None, str]] = []
    for resource, roles in sorted(resources.items()):
        try:
            grants = await backend.grants(resource)
        except Exception as e:
            unread.append((f"grants on {resource}", f"could not read them: {_said(e)}"))
            continue
        for role, title, member in grants:
            kind, _, rest = member.partition(":")
            if role not in roles:
                continue
            if kind == "serviceAccount" and rest in deleting_accounts:
                deleting_accounts[rest].append([resource, role, title])
            elif kind == "deleted" and rest.startswith("serviceAccount:") and rest[15:].partition("?")[0] in ours:
                found.append((Grant("gcp", resource, role, title, member), None, "its Google service account was deleted"))
            elif any(member.startswith(p) for p in principals):
                namespace, _, name = member.rpartition("/ns/")[2].partition("/sa/")
                if namespace in principal_namespaces:
                    found.append((Grant("gcp", resource, role, title, member), (namespace, name), ""))
    return found, unread


def _said(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
