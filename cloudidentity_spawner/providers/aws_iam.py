"""Hub-managed IAM roles for IRSA (boto3; install the ``aws`` extra).

:class:`ManagedRoles` creates and converges the role a plan describes, and
deletes it when its user is deleted - only ever a role that carries our
``app.kubernetes.io/managed-by`` tag and names the same owner and hub.

boto3 is synchronous; calls run in worker threads, at most
``max_concurrent_calls`` at a time per hub process; throttled calls are tried
again outside that bound (:mod:`._botocore`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Collection, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import IdentityError
from ..plan import MANAGED_BY, IdentityPlan, refuse_another_person, thaw
from ._botocore import BotoBackend
from .aws import TAG_HUB, TAG_MANAGED_BY, TAG_OWNER, TAG_PERSON, parse_role_arn, tag_value
from .managed import failed_operation, fingerprint, report_progress, seconds_text

INLINE_POLICY_NAME = "cloudidentity-spawner"
TRUST_POLICY_LIMIT = 2048
"""IAM's default quota for the length of a role's trust policy (adjustable with AWS)."""


def _code(error: ClientError) -> str:
    """IAM's error code. Ceph RGW answers IAM calls with S3-style errors, whose code botocore
    puts at the top of the response instead of under ``Error``. No code at all (a proxy's page,
    say) is no code: never taken for NoSuchEntity."""
    return error.response.get("Error", {}).get("Code") or error.response.get("Code") or ""


def _tags(tag_list: list[dict[str, str]]) -> dict[str, str]:
    """Tags as a mapping. Ceph RGW lists each tag's Key and Value as members of their own
    (``[{"Key": k}, {"Value": v}, ...]``): a Value then belongs to the Key before it."""
    tags: dict[str, str] = {}
    key = None
    for tag in tag_list or []:
        if "Key" in tag and "Value" in tag:
            tags[tag["Key"]] = tag["Value"]
        elif "Key" in tag:
            key = tag["Key"]
            tags[key] = ""
        elif "Value" in tag and key is not None:
            tags[key], key = tag["Value"], None
    return tags


def _document(policy: Any) -> str:
    """A policy document as sent: compact JSON (an object store's form decoding may not turn
    '+' back into a space, and IAM's limits count these characters)."""
    return json.dumps(policy, separators=(",", ":"))


class ManagedRoles(BotoBackend):
    """Create, converge and delete hub-managed IRSA roles."""

    service, provider = "iam", "aws"
    default_propagation_seconds = 10.0
    where = "AWS"
    """Who answers, for the user's message when nobody does."""
    updates_role = True
    """Whether UpdateRole (session duration, description) exists; an object store may lack it."""
    attaches_policies = True
    """Whether managed policies can be attached; an object store may have inline ones only."""

    def role_name(self, role_arn: str) -> str:
        return parse_role_arn(role_arn).name


    @property
    def iam(self) -> Any:
        """The boto3 IAM client."""
        return self.client

    @iam.setter
    def iam(self, value: Any) -> None:
        self.client = value

    async def ensure(self, plan: IdentityPlan, recheck: bool = False, namespaces: Collection[str] | None = None) -> str:
        """Make the plan's role exist exactly as planned; returns created, updated or unchanged.

        A warm spawn whose role was made right within ``cache_seconds`` makes no IAM call, unless
        *recheck* (the account is new, or ``gc`` is removing it: the role may be gone since).
        With user namespaces a user's servers may run in several namespaces (each keeps the one it
        started in): *namespaces* are those, and a user's role trusts its account in each of them
        and no other.
        """
        role = plan.cloud.resources["role"]
        name = role["name"]
        planned = fingerprint({**role, "namespaces": sorted(namespaces)} if namespaces is not None else role)
        if not recheck and self.converged.fresh(name, planned):
            return "unchanged"
        # One spawn at a time per role: the others then find it made.
        async with self.converged.lock(name):
            if not recheck and self.converged.fresh(name, planned):
                return "unchanged"  # a concurrent spawn (a double click) just made it right
            try:
                outcome = await self._ensure(plan, role, namespaces)
            except ClientError as e:
                raise self._error(plan, e) from None
            except BotoCoreError as e:
                raise IdentityError(
                    f"Your cloud identity could not be set up because {self.where} did not answer; try again in a minute, "
                    "or ask your hub admin.",
                    f"IAM call for role {name} failed: {e}",
                ) from None
            self.converged.remember(name, planned)
            return outcome

    async def _ensure(self, plan: IdentityPlan, role: Mapping[str, Any], namespaces: Collection[str] | None) -> str:
        name = role["name"]
        try:
            current = (await self._call("GetRole", RoleName=name))["Role"]
        except ClientError as e:
            if _code(e) != "NoSuchEntity":
                raise
            current = None
        if current is None:
            try:
                report_progress("Creating your cloud identity (an AWS IAM role).")
                await self._create(role)
                await self._settle(name)
                return "created"
            except ClientError as e:
                if _code(e) != "EntityAlreadyExists":
                    raise
            current = (await self._call("GetRole", RoleName=name))["Role"]
        self._check_ours(plan, current)
        if await self._converge(role, current, shared=plan.scope != "user" or namespaces is not None,
                                namespaces=namespaces if plan.scope == "user" else None):
            # A changed trust or policy is eventually consistent too: the pod's first
            # AssumeRoleWithWebIdentity (new namespace in the trust) or call must not race it.
            await self._settle(name)
            return "updated"
        return "unchanged"

    async def _create(self, role: Mapping[str, Any]) -> None:
        name = role["name"]
        boundary = {} if role["permissions_boundary"] is None else {"PermissionsBoundary": role["permissions_boundary"]}
        await self._call(
            "CreateRole",
            RoleName=name,
            Path=role["path"],
            AssumeRolePolicyDocument=_document(thaw(role["trust_policy"])),
            Description=role["description"],
            MaxSessionDuration=role["max_session_duration"],
            Tags=[{"Key": k, "Value": v} for k, v in role["tags"].items()],
            **boundary,
        )
        if role["inline_policy"] is not None:
            await self._call(
                "PutRolePolicy", RoleName=name, PolicyName=INLINE_POLICY_NAME, PolicyDocument=_document(thaw(role["inline_policy"]))
            )
        for arn in role["policy_arns"]:
            await self._call("AttachRolePolicy", RoleName=name, PolicyArn=arn)

    async def _settle(self, name: str) -> None:
        """New and changed IAM roles are eventually consistent: STS may refuse to assume one,
        or a call its new policy allows, for a few seconds. Wait (bounded) so the user's first
        AWS call does not fail."""
        if self.propagation_seconds <= 0:
            return
        report_progress(f"Waiting up to {seconds_text(self.propagation_seconds)} s for AWS IAM to accept your role.")
        waiter = self.iam.get_waiter("role_exists")
        delay = min(1, self.propagation_seconds)
        attempts = max(1, int(self.propagation_seconds / delay))
        started = time.monotonic()
        await asyncio.to_thread(waiter.wait, RoleName=name, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
        remaining = self.propagation_seconds - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)

    def _check_ours(self, plan: IdentityPlan, current: Mapping[str, Any]) -> None:
        name = current["RoleName"]
        tags = _tags(current.get("Tags", []))
        want = plan.cloud.resources["role"]["tags"]
        if tags.get(TAG_MANAGED_BY) != MANAGED_BY:
            raise IdentityError(
                "Your cloud identity could not be set up: a role with its name already exists and is not managed by "
                "this hub; ask your hub admin.",
                f"IAM role {name} exists without tag {TAG_MANAGED_BY}={MANAGED_BY}; refusing to modify it for "
                f"{plan.owner} (rule {plan.rule!r}). Change role_name or role_path in the rule.",
            )
        if tags.get(TAG_OWNER) != want[TAG_OWNER] or tags.get(TAG_HUB) != want[TAG_HUB]:
            raise IdentityError(
                "Your cloud identity could not be set up: its role belongs to someone else; ask your hub admin.",
                f"IAM role {name} is tagged for {tags.get(TAG_OWNER)!r} on hub {tags.get(TAG_HUB)!r}, "
                f"not {want[TAG_OWNER]!r} on {want[TAG_HUB]!r}; two identities map to one role name.",
            )
        refuse_another_person(plan, tags.get(TAG_PERSON), f"IAM role {name}")
        if current["Path"] != plan.cloud.resources["role"]["path"]:
            raise IdentityError(
                "Your cloud identity could not be set up; ask your hub admin.",
                f"IAM role {name} exists at path {current['Path']!r}, the rule wants "
                f"{plan.cloud.resources['role']['path']!r}; IAM cannot move a role: delete it or change role_name.",
            )

    async def _converge(self, role: Mapping[str, Any], current: Mapping[str, Any], shared: bool = False,
                        namespaces: Collection[str] | None = None) -> bool:
        """Write only what differs; True if anything was written."""
        name = role["name"]
        changed = False
        trust = thaw(role["trust_policy"])
        if shared:
            trust = trust_for_every_namespace(trust, current.get("AssumeRolePolicyDocument"), namespaces)
            size = len(json.dumps(trust, separators=(",", ":")))
            if size > TRUST_POLICY_LIMIT:
                raise IdentityError(
                    "Your cloud identity cannot trust one more namespace; ask your hub admin.",
                    f"the trust policy of shared role {name} would be {size} characters for "
                    f"{len(trust['Statement'][0]['Condition']['StringEquals'])} keys, over IAM's default "
                    f"{TRUST_POLICY_LIMIT}: raise the 'Role trust policy length' quota, or remove namespaces that "
                    "no longer run members' servers from its trust",
                )
        # botocore decodes IAM's URL-encoded policy documents into dicts.
        if current.get("AssumeRolePolicyDocument") != trust:
            await self._call("UpdateAssumeRolePolicy", RoleName=name, PolicyDocument=_document(trust))
            changed = True
        boundary = (current.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
        if boundary != role["permissions_boundary"]:
            await self._call("PutRolePermissionsBoundary", RoleName=name, PermissionsBoundary=role["permissions_boundary"])
            changed = True
        if self.updates_role and (current.get("MaxSessionDuration") != role["max_session_duration"]
                                  or current.get("Description", "") != role["description"]):
            await self._call("UpdateRole", RoleName=name, MaxSessionDuration=role["max_session_duration"], Description=role["description"])
            changed = True
        tags = _tags(current.get("Tags", []))
        if any(tags.get(k) != v for k, v in role["tags"].items()):
            # Always send the whole planned set: the hub's IAM policy allows TagRole
            # only when the request carries our ownership tags (aws:RequestTag).
            await self._call("TagRole", RoleName=name, Tags=[{"Key": k, "Value": v} for k, v in role["tags"].items()])
            changed = True

        inline = None if role["inline_policy"] is None else thaw(role["inline_policy"])
        try:
            existing = (await self._call("GetRolePolicy", RoleName=name, PolicyName=INLINE_POLICY_NAME))["PolicyDocument"]
        except ClientError as e:
            if _code(e) != "NoSuchEntity":
                raise
            existing = None
        if inline is not None and existing != inline:
            await self._call("PutRolePolicy", RoleName=name, PolicyName=INLINE_POLICY_NAME, PolicyDocument=_document(inline))
            changed = True
        elif inline is None and existing is not None:
            await self._call("DeleteRolePolicy", RoleName=name, PolicyName=INLINE_POLICY_NAME)
            changed = True

        if not self.attaches_policies:
            return changed
        attached = {p["PolicyArn"] for p in (await self._call("ListAttachedRolePolicies", RoleName=name))["AttachedPolicies"]}
        for arn in sorted(set(role["policy_arns"]) - attached):
            await self._call("AttachRolePolicy", RoleName=name, PolicyArn=arn)
            changed = True
        for arn in sorted(attached - set(role["policy_arns"])):
            await self._call("DetachRolePolicy", RoleName=name, PolicyArn=arn)
            changed = True
        return changed

    async def present(self, role_arn: str) -> bool:
        """Whether the role exists (``status``)."""
        try:
            await self._call("GetRole", RoleName=self.role_name(role_arn))
        except ClientError as e:
            if _code(e) == "NoSuchEntity":
                return False
            raise
        return True

    async def hub_made(self, path_prefix: str, hub: str) -> list[dict[str, Any]]:
        """The roles under *path_prefix* tagged as made by *hub* (``gc``): ``identity``
        (``aws:<arn>``), ``owner`` (the owner tag) and ``created`` (a datetime) of each."""
        found, marker = [], None
        while True:
            page = await self._call("ListRoles", PathPrefix=path_prefix, MaxItems=1000, **({"Marker": marker} if marker else {}))
            for role in page["Roles"]:
                # ListRoles leaves the tags out.
                tags = _tags((await self._call("ListRoleTags", RoleName=role["RoleName"]))["Tags"])
                if tags.get(TAG_MANAGED_BY) == MANAGED_BY and tags.get(TAG_HUB) == tag_value(hub):
                    found.append({"identity": f"{self.provider}:{role['Arn']}", "owner": tags.get(TAG_OWNER, ""), "created": role["CreateDate"]})
            if not page.get("IsTruncated"):
                return found
            marker = page["Marker"]

    async def delete(self, role_arn: str, owner: str | None, hub: str, account: tuple[str, str] | None = None) -> bool:
        """Delete the role if it is ours, for *owner* on *hub* (any owner: None, for ``gc``'s
        roles no account records); False if it was not ours or not there.

        With *account* (``(namespace, name)``, one ServiceAccount leaving the role): a shared role
        that also trusts the same account name in other namespaces (user namespaces) only stops
        trusting this one, and stays for the others.

        Inline policies are deleted and managed policies detached first, as IAM
        requires; the data the role could reach is never touched.
        """
        name = self.role_name(role_arn)
        async with self.converged.lock(name):  # not while a spawn of another namespace edits its trust
            return await self._delete(name, owner, hub, account)

    async def _delete(self, name: str, owner: str | None, hub: str, account: tuple[str, str] | None) -> bool:
        try:
            current = (await self._call("GetRole", RoleName=name))["Role"]
        except ClientError as e:
            if _code(e) == "NoSuchEntity":
                return False
            raise
        tags = _tags(current.get("Tags", []))
        if not tags:  # some stores leave them out of GetRole, as ListRoles does: ask for them
            tags = _tags((await self._call("ListRoleTags", RoleName=name))["Tags"])
        if tags.get(TAG_MANAGED_BY) != MANAGED_BY or tags.get(TAG_HUB) != tag_value(hub) or (
            owner is not None and tags.get(TAG_OWNER) != tag_value(owner)
        ):
            if self.log:
                self.log.info("cloudidentity: not deleting IAM role %s: not managed by this hub for %s", name, owner or "anyone")
            return False
        self.converged.forget(name)
        if account is not None:
            trust, others = _without_subject(current.get("AssumeRolePolicyDocument"),
                                             f"system:serviceaccount:{account[0]}:{account[1]}")
            if others:  # other namespaces' accounts still use it: only this one's trust goes
                if trust is not None:
                    await self._call("UpdateAssumeRolePolicy", RoleName=name, PolicyDocument=_document(trust))
                return True
        for policy in (await self._call("ListRolePolicies", RoleName=name))["PolicyNames"]:
            await self._gone_is_done("DeleteRolePolicy", RoleName=name, PolicyName=policy)
        attached = (await self._call("ListAttachedRolePolicies", RoleName=name))["AttachedPolicies"] if self.attaches_policies else []
        for policy in attached:
            await self._gone_is_done("DetachRolePolicy", RoleName=name, PolicyArn=policy["PolicyArn"])
        await self._gone_is_done("DeleteRole", RoleName=name)
        self.converged.forget(name)
        return True

    async def _gone_is_done(self, operation: str, **kwargs: Any) -> None:
        """A removal whose object is already gone is done: a retried call whose first try
        succeeded answers NoSuchEntity."""
        try:
            await self._call(operation, **kwargs)
        except ClientError as e:
            if _code(e) != "NoSuchEntity":
                raise

    def _error(self, plan: IdentityPlan, error: ClientError) -> IdentityError:
        code = _code(error)
        name = plan.cloud.resources["role"]["name"]
        message = error.response.get("Error", {}).get("Message", "")
        if code == "LimitExceeded":
            return IdentityError(
                "The hub cannot create more cloud identities: the AWS account's IAM role quota is reached. "
                "Please tell your hub admin.",
                f"IAM LimitExceeded creating role {name} for {plan.owner}: {message}. The account's role quota "
                "(1,000 by default) is reached: raise it with AWS, delete unused roles, or use group scope or "
                "existing roles for large hubs.",
            )
        if code in ("AccessDenied", "AccessDeniedException"):
            return IdentityError(
                "Your cloud identity could not be set up (the hub is not allowed to manage it); ask your hub admin.",
                f"IAM denied {error.operation_name or failed_operation(error)} for role {name}: {message}. Check the hub's "
                "IAM policy allows the role path and requires the permissions boundary.",
            )
        if code == "MalformedPolicyDocument":
            return IdentityError(
                "Your cloud identity could not be set up; ask your hub admin.",
                f"IAM rejected a policy document for role {name} (rule {plan.rule!r}): {message}",
            )
        return IdentityError(
            "Your cloud identity could not be set up; ask your hub admin.",
            f"IAM {code or 'error'} for role {name} (rule {plan.rule!r}): {message}",
        )



def _without_subject(trust: Any, subject: str) -> tuple[dict[str, Any] | None, list[str]]:
    """*trust* without *subject* among the trusted ServiceAccounts (None if it was not trusted:
    nothing to change), and the subjects that stay trusted.

    Whether the role may go depends only on the subjects that stay: a revocation repeated after a
    partial failure (the trust updated, then the ServiceAccount's deletion failed) finds *subject*
    gone already, and must still leave the role to the other namespaces' pods."""
    if isinstance(trust, str):
        trust = json.loads(trust)
    if not isinstance(trust, Mapping) or len(trust.get("Statement", [])) != 1:
        return None, []
    trust = json.loads(json.dumps(trust))
    condition = (trust["Statement"][0].get("Condition") or {}).get("StringEquals") or {}
    key = next((k for k in condition if k.endswith(":sub")), None)
    values = condition.get(key) if key else None
    values = [values] if isinstance(values, str) else list(values or [])
    rest = [v for v in values if v != subject]
    if subject not in values or not rest:
        return None, rest
    condition[key] = rest[0] if len(rest) == 1 else rest
    return trust, rest


def trust_for_every_namespace(planned: dict[str, Any], current: Mapping[str, Any] | None,
                              namespaces: Collection[str] | None = None) -> dict[str, Any]:
    """A role's trust that keeps the same ServiceAccount in other namespaces.

    With ``enable_user_namespaces`` each member's pod runs in their own namespace, under
    their copy of a shared ServiceAccount (and a user's servers may run in several). Each spawn
    plans trust for its namespace only; keeping the subjects already trusted - exactly that
    account name, each listed exactly (never a wildcard) - stops spawns from rewriting each
    other's trust. A user's role keeps only the *namespaces* their servers use; a shared role
    (None) every namespace, until the account there is revoked.
    """
    statement = planned["Statement"][0]
    condition = statement["Condition"]["StringEquals"]
    key = next(k for k in condition if k.endswith(":sub"))
    subject = condition[key]
    account = subject.rsplit(":", 1)[1]
    same_account = re.compile(rf"system:serviceaccount:[a-z0-9]([-a-z0-9]*[a-z0-9])?:{re.escape(account)}")
    known: set[str] = set()
    for old in (current or {}).get("Statement", []):
        values = ((old.get("Condition") or {}).get("StringEquals") or {}).get(key, [])
        known.update(v for v in ([values] if isinstance(values, str) else values) if same_account.fullmatch(v)
                     and (namespaces is None or v.split(":")[2] in namespaces))
    subjects = sorted(known | {subject})
    if len(subjects) > 1:
        condition[key] = subjects
    return planned
