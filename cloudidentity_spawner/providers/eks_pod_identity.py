"""EKS Pod Identity associations the hub makes, one per ServiceAccount (boto3; the ``aws`` extra).

An association lets pods under one ``namespace/serviceAccount`` of one cluster assume a role,
optionally narrowed by a session policy - no IAM role per user, no IRSA trust policy to grow.
:class:`PodIdentityAssociations` creates and converges the association a plan describes and
deletes it with its user; it only ever changes an association tagged as ours, for the same owner
and hub. Calls go through :class:`.managed.CloudCalls` (a bounded number at once, counted);
throttled and failed calls are tried again with jittered backoff *outside* that bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import IdentityError
from ..plan import MANAGED_BY, IdentityPlan, thaw
from ._botocore import BotoBackend
from .aws import TAG_HUB, TAG_MANAGED_BY, TAG_OWNER, tag_value
from .managed import failed_operation, fingerprint, report_progress, seconds_text

ASSOCIATION_QUOTA = 5000
"""EKS's default number of Pod Identity associations per cluster."""


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


class PodIdentityAssociations(BotoBackend):
    """Create, converge and delete hub-made EKS Pod Identity associations."""

    service = provider = "eks"
    default_propagation_seconds = 5.0

    async def _find(self, cluster: str, namespace: str, service_account: str) -> dict[str, Any] | None:
        """The association of exactly this ServiceAccount, described, or None."""
        listed = await self._call(
            "ListPodIdentityAssociations", clusterName=cluster, namespace=namespace, serviceAccount=service_account
        )
        for summary in listed.get("associations", []):
            if summary["namespace"] == namespace and summary["serviceAccount"] == service_account:
                described = await self._call(
                    "DescribePodIdentityAssociation", clusterName=cluster, associationId=summary["associationId"]
                )
                return described["association"]
        return None

    async def ensure(self, plan: IdentityPlan, recheck: bool = False) -> str:
        """Make the plan's association exist exactly as planned: created, updated or unchanged.
        A warm spawn whose association was made right within ``cache_seconds`` makes no call, unless
        *recheck* (the account is new, or ``gc`` is removing it)."""
        want = thaw(plan.cloud.resources["association"])
        key = plan.cloud.recorded
        planned = fingerprint(want)
        if not recheck and self.converged.fresh(key, planned):
            return "unchanged"
        async with self.converged.lock(key):
            if not recheck and self.converged.fresh(key, planned):
                return "unchanged"
            try:
                outcome = await self._ensure(plan, want)
            except ClientError as e:
                raise self._error(plan, e) from None
            except BotoCoreError as e:
                raise IdentityError(
                    "Your cloud identity could not be set up because AWS did not answer; try again in a minute, "
                    "or ask your hub admin.",
                    f"EKS call for the Pod Identity association of {key} failed: {e}",
                ) from None
            if outcome != "unchanged" and self.propagation_seconds:
                report_progress(f"Waiting {seconds_text(self.propagation_seconds)} s for EKS to apply your cloud identity.")
                # AWS documents that a new or changed association takes a few seconds to take
                # effect; a pod asking the agent before then gets no (or the old) credentials.
                await asyncio.sleep(self.propagation_seconds)
            self.converged.remember(key, planned)
            return outcome

    async def _ensure(self, plan: IdentityPlan, want: dict[str, Any]) -> str:
        cluster, namespace, account = want["clusterName"], want["namespace"], want["serviceAccount"]
        current = await self._find(cluster, namespace, account)
        settings = {"roleArn": want["roleArn"], "disableSessionTags": want["disableSessionTags"]}
        if want["policy"] is not None:
            settings["policy"] = want["policy"]
        if current is None:
            report_progress("Creating your cloud identity (an EKS Pod Identity association).")
            try:
                await self._call("CreatePodIdentityAssociation", clusterName=cluster, namespace=namespace,
                                 serviceAccount=account, tags=want["tags"], **settings)
                return "created"
            except ClientError as e:
                if _code(e) != "ResourceInUseException":
                    raise
                current = await self._find(cluster, namespace, account)  # a concurrent spawn made it
                if current is None:
                    raise
        self._check_ours(plan, current)
        if (current.get("roleArn") == want["roleArn"] and bool(current.get("disableSessionTags")) == want["disableSessionTags"]
                and (current.get("policy") or None) == want["policy"] and not current.get("targetRoleArn")):
            return "unchanged"
        if (current.get("policy") and want["policy"] is None) or current.get("targetRoleArn"):
            # Something to take away (a session policy, a chained target role): the association is
            # ours, so it is made again rather than relying on an update to remove a field.
            await self._call("DeletePodIdentityAssociation", clusterName=cluster, associationId=current["associationId"])
            await self._call("CreatePodIdentityAssociation", clusterName=cluster, namespace=namespace,
                             serviceAccount=account, tags=want["tags"], **settings)
            return "updated"
        await self._call("UpdatePodIdentityAssociation", clusterName=cluster, associationId=current["associationId"], **settings)
        return "updated"

    def _check_ours(self, plan: IdentityPlan, current: Mapping[str, Any]) -> None:
        tags = current.get("tags") or {}
        want = plan.cloud.resources["association"]["tags"]
        if tags.get(TAG_MANAGED_BY) != MANAGED_BY or tags.get(TAG_OWNER) != want[TAG_OWNER] or tags.get(TAG_HUB) != want[TAG_HUB]:
            raise IdentityError(
                "Your cloud identity could not be set up: your server's account already has a cloud identity "
                "this hub does not manage for you; ask your hub admin.",
                f"Pod Identity association {current.get('associationId')} of {plan.cloud.recorded} exists without "
                f"tags {TAG_MANAGED_BY}={MANAGED_BY}, {TAG_OWNER}={want[TAG_OWNER]}, {TAG_HUB}={want[TAG_HUB]}; "
                "refusing to change it. Delete it, or use another ServiceAccount name for the rule.",
            )

    async def present(self, key: str) -> bool:
        """Whether the association recorded as ``<cluster>/<namespace>/<service account>`` exists."""
        return await self._find(*key.split("/", 2)) is not None

    async def hub_made(self, cluster: str, hub: str) -> list[dict[str, Any]]:
        """The associations in *cluster* tagged as made by *hub* (``gc``): ``identity``
        (``eks:<cluster>/<namespace>/<service account>``), ``owner`` and ``created``."""
        found, token = [], None
        while True:
            page = await self._call("ListPodIdentityAssociations", clusterName=cluster, maxResults=100,
                                    **({"nextToken": token} if token else {}))
            for summary in page.get("associations", []):
                described = (await self._call("DescribePodIdentityAssociation", clusterName=cluster,
                                              associationId=summary["associationId"]))["association"]
                tags = described.get("tags") or {}
                if tags.get(TAG_MANAGED_BY) == MANAGED_BY and tags.get(TAG_HUB) == tag_value(hub):
                    found.append({"identity": f"eks:{cluster}/{described['namespace']}/{described['serviceAccount']}",
                                  "owner": tags.get(TAG_OWNER, ""), "created": described.get("createdAt")})
            token = page.get("nextToken")
            if not token:
                return found

    async def delete(self, key: str, owner: str | None, hub: str) -> bool:
        """Delete the association recorded as ``<cluster>/<namespace>/<service account>`` - only
        if it carries our tags for *owner* (any owner: None, for ``gc``) and *hub*. True if deleted."""
        cluster, namespace, account = key.split("/", 2)
        current = await self._find(cluster, namespace, account)
        if current is None:
            self.converged.forget(f"eks:{key}")
            return False
        tags = current.get("tags") or {}
        if tags.get(TAG_MANAGED_BY) != MANAGED_BY or tags.get(TAG_HUB) != tag_value(hub) or (
            owner is not None and tags.get(TAG_OWNER) != tag_value(owner)
        ):
            if self.log:
                self.log.info("cloudidentity: not deleting Pod Identity association %s of %s: not made by this hub for %s",
                              current.get("associationId"), key, owner or "anyone")
            return False
        try:
            await self._call("DeletePodIdentityAssociation", clusterName=cluster, associationId=current["associationId"])
        except ClientError as e:
            if _code(e) != "ResourceNotFoundException":
                raise
        self.converged.forget(f"eks:{key}")
        return True

    def _error(self, plan: IdentityPlan, error: ClientError) -> IdentityError:
        code = _code(error)
        message = error.response.get("Error", {}).get("Message", "")
        key = plan.cloud.recorded
        if code == "ResourceLimitExceededException":
            return IdentityError(
                "The hub cannot create more cloud identities: the cluster's Pod Identity association quota is reached. "
                "Please tell your hub admin.",
                f"EKS refused a Pod Identity association for {key} ({plan.owner}): {message}. A cluster allows "
                f"{ASSOCIATION_QUOTA:,} associations by default: raise the quota with AWS, delete unused ones "
                "(cloudidentity-spawner can delete a user's with the user), or use group scope.",
            )
        if code in ("AccessDeniedException", "AccessDenied"):
            return IdentityError(
                "Your cloud identity could not be set up (the hub is not allowed to manage it); ask your hub admin.",
                f"EKS denied {error.operation_name or failed_operation(error)} for {key}: {message}. Give the hub "
                "examples/aws/hub-eks-pod-identity-policy.json (and iam:PassRole on the role).",
            )
        if code == "ResourceNotFoundException":
            return IdentityError(
                "Your cloud identity could not be set up; ask your hub admin.",
                f"EKS: {message} (rule {plan.rule!r}, cluster {plan.cloud.resources['association']['clusterName']!r})",
            )
        return IdentityError(
            "Your cloud identity could not be set up; ask your hub admin.",
            f"EKS {code or type(error).__name__} for the Pod Identity association of {key} (rule {plan.rule!r}): {message}",
        )
