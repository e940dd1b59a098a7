"""The built-in providers (:class:`.base.Provider`): AWS (IRSA roles, hub-made roles, EKS Pod
Identity), Google Cloud (service accounts, principals), Azure managed identities, and
S3-compatible stores with STS. Their planning is in :mod:`.aws`, :mod:`.gcp`, :mod:`.azure`
and :mod:`.s3_sts`; what their pods need, in :mod:`..pinning`."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from types import ModuleType
from typing import Any

from ..errors import ConfigError
from ..plan import MANAGED_IDENTITY_ANNOTATION
from . import aws, azure, client_key, gcp, load_backend, s3_sts
from .base import Grant, Provider


class _Planned(Provider):
    """A provider whose parse, plan and named_templates are its planning module's functions."""

    module: ModuleType

    def parse(self, block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str]) -> Any:
        return self.module.parse(block, where, forbidden, trusted_claims)

    def plan(self, settings: Any, context: Mapping[str, Any], scope: str, owner: str, namespace: str,
             service_account: str) -> tuple[dict[str, str], Any]:
        return self.module.plan(settings, context, scope, owner, namespace, service_account)

    def named_templates(self, settings: Any, where: str, rule: str, scope: str) -> list[Any]:
        return self.module.named_templates(settings, where, rule, scope)


def _common(settings: Any) -> dict[str, Any]:
    return {"cache_seconds": settings.cloud_cache_seconds, "log": settings.log}


def _recorded(annotations: Mapping[str, str], key: str) -> list[Any]:
    return json.loads(annotations.get(key, "[]"))


async def _ensure_role(backend: Any, plan: Any, recheck: bool, namespaces: Collection[str]) -> str:
    """A managed role (IAM's or a store's): with *namespaces* (user namespaces), trusting each
    namespace's account of the user."""
    if namespaces:
        return await backend.ensure(plan, recheck=recheck, namespaces=namespaces)
    return await backend.ensure(plan, recheck=recheck)


def _role_path(name: str) -> str:
    """The path of a role ARN (``arn:...:role/<path>/<name>``): ``/`` or ``/a/b/``."""
    return name.split(":role", 1)[1].rpartition("/")[0] + "/"


class AwsProvider(_Planned):
    key, module, sdk_module, extra, backends = "aws", aws, "boto3", "aws", ("aws", "eks")
    annotations = aws.ANNOTATIONS

    def backend_kind(self, cloud: Any) -> str:
        return "eks" if cloud.mode == "pod_identity" else "aws"

    def _client_kwargs(self, settings: Any, kind: str) -> dict[str, Any]:
        return dict((settings.aws_eks_client_kwargs or settings.aws_client_kwargs) if kind == "eks" else settings.aws_client_kwargs)

    def backend_key(self, settings: Any, kind: str) -> Any:
        return client_key(self._client_kwargs(settings, kind))

    def make_backend(self, settings: Any, kind: str) -> Any:
        if kind == "eks":
            return load_backend("eks_pod_identity", "PodIdentityAssociations", self._client_kwargs(settings, kind),
                                max_concurrent_calls=settings.aws_max_concurrent_calls,
                                propagation_seconds=settings.aws_pod_identity_propagation_seconds, **_common(settings))
        return load_backend("aws_iam", "ManagedRoles", self._client_kwargs(settings, kind),
                            max_concurrent_calls=settings.aws_max_concurrent_calls,
                            propagation_seconds=settings.aws_role_propagation_seconds, **_common(settings))

    async def ensure(self, backend: Any, plan: Any, recheck: bool, namespaces: Collection[str]) -> tuple[str | None, Any]:
        return await _ensure_role(backend, plan, recheck, namespaces if plan.cloud.mode == "managed" else ()), plan

    def credentials_routes(self) -> list[tuple[str, Any]]:
        from ..creds import AWSCredentialsHandler  # IRSA, Pod Identity and S3-compatible stores alike

        return [("aws", AWSCredentialsHandler)]

    def account_identity(self, annotations: Mapping[str, str]) -> str | None:
        arn = annotations.get(aws.ROLE_ARN_ANNOTATION)
        return f"aws:{arn}" if arn else None

    def made_before_records(self, annotations: Mapping[str, str], managed_places: Collection[str]) -> str | None:
        role = annotations.get(aws.ROLE_ARN_ANNOTATION)
        return f"aws:{role}" if role and any(role.startswith(p) for p in managed_places) else None

    def account_of(self, kind: str, name: str) -> tuple[str, str] | None:
        if kind != "eks":
            return None
        _, namespace, account = name.split("/", 2)  # an association: <cluster>/<namespace>/<account>
        return namespace, account

    async def revoke(self, backend: Any, kind: str, name: str, owner: str | None, hub: str,
                     annotations: Mapping[str, str], account: tuple[str, str] | None) -> bool:
        if kind == "eks":  # an association names its one account
            return await backend.delete(name, owner, hub)
        return await backend.delete(name, owner, hub, account)

    def place_of(self, kind: str, name: str) -> tuple[str, str] | None:
        if kind == "eks":
            return "eks", name.split("/", 1)[0]
        return ("aws", _role_path(name)) if ":role/" in name else None

    def managed_places(self, settings: Any) -> list[str]:
        if settings.managed is None:
            return []
        partition, account, _ = aws.parse_oidc_provider_arn(settings.managed["oidc_provider_arn"])
        return [f"arn:{partition}:iam::{account}:role{settings.managed['role_path']}"]

    def search_places(self, settings: Any) -> list[tuple[str, str]]:
        if settings.managed is not None:
            return [("aws", settings.managed["role_path"])]
        if settings.pod_identity is not None:
            return [("eks", settings.pod_identity["cluster"])]
        return []

    def describe(self, cloud: Any, plan: Any) -> str:
        if cloud.mode == "pod_identity":
            return f"{cloud.identity} through an EKS Pod Identity association"
        return cloud.identity

    def pin(self, pod: Any, plan: Any, webhook_parts: bool) -> None:
        from . import aws_pods

        role_arn = plan.service_account.annotations.get(aws.ROLE_ARN_ANNOTATION)
        if role_arn:
            aws_pods.name_the_session(pod, plan)
            if webhook_parts:
                aws_pods.pin_irsa(pod, plan, role_arn)
        if webhook_parts and plan.cloud.mode == "pod_identity":
            aws_pods.pin_pod_identity(pod, plan.cloud.identity)


class GcpProvider(_Planned):
    key, module, sdk_module, extra, backends = "gcp", gcp, "google.cloud.iam_admin_v1", "gcp", ("gcp",)
    annotations = gcp.ANNOTATIONS

    def backend_key(self, settings: Any, kind: str) -> Any:
        return id(settings.gcp_client_factory)

    def make_backend(self, settings: Any, kind: str) -> Any:
        return load_backend("gcp_iam", "ManagedServiceAccounts", settings.gcp_client_factory,
                            max_concurrent_calls=settings.gcp_max_concurrent_calls,
                            propagation_seconds=settings.gcp_propagation_seconds, **_common(settings))

    def credentials_routes(self) -> list[tuple[str, Any]]:
        from ..creds import GCPTokenHandler

        return [("gcp", GCPTokenHandler)]

    def account_identity(self, annotations: Mapping[str, str]) -> str | None:
        email = annotations.get(gcp.GSA_ANNOTATION)
        return f"gcp:{email}" if email else None

    def made_before_records(self, annotations: Mapping[str, str], managed_places: Collection[str]) -> str | None:
        email = annotations.get(gcp.GSA_ANNOTATION)
        return f"gcp:{email}" if email and any(email.endswith(p) for p in managed_places) else None

    def has_object(self, kind: str, name: str) -> bool:
        return not name.startswith("principal://")

    def pin(self, pod: Any, plan: Any, webhook_parts: bool) -> None:
        from ..pinning import project_token

        outside = plan.cloud.resources.get("pod")
        if outside:  # the rule names its cluster: a token Google's STS exchanges, for use elsewhere
            project_token(pod, gcp.TOKEN_VOLUME, gcp.TOKEN_MOUNT_PATH, outside["audience"], outside["expiration"],
                          dict(outside["env"]))

    def dropped_grants(self, annotations: Mapping[str, str], plan: Any) -> list[Any]:
        # Bindings the same account (or principal) was given that the plan no longer wants: a
        # dropped bucket role, or a bucket binding an older version made, must not stay granted.
        cloud = plan.cloud
        if cloud.mode not in ("managed", "principal"):
            return []
        same = (annotations.get(MANAGED_IDENTITY_ANNOTATION) == f"gcp:{cloud.identity}" if cloud.mode == "principal"
                else annotations.get(gcp.GSA_ANNOTATION) == cloud.identity)
        if not same:
            return []  # another identity: revoked whole, if it was ours
        new = _recorded(plan.service_account.annotations, gcp.BINDINGS_ANNOTATION)
        return [b for b in _recorded(annotations, gcp.BINDINGS_ANNOTATION) if b not in new]

    async def remove_grants(self, backend: Any, identity: str, grants: list[Any]) -> None:
        await backend.remove_bindings(identity, grants)

    async def settle(self, step: Any, plan: Any, before: Mapping[str, Any] | None) -> None:
        from .gcp_upkeep import await_activation

        await await_activation(step, plan, before)

    def recorded_grants(self, grants: list[Any]) -> dict[str, str]:
        return {gcp.BINDINGS_ANNOTATION: json.dumps(grants)} if grants else {}

    async def orphaned_grants(self, blocks: list[Any], backend: Any, made_here: Collection[str],
                              deleting: Mapping[str, list[Any]], namespaces: Collection[str]) -> tuple[list[Any], list[tuple[str, str]]]:
        from .gcp_upkeep import orphaned_grants

        return await orphaned_grants(blocks, backend, made_here, deleting, namespaces)

    async def remove_grant(self, backend: Any, grant: Grant) -> bool:
        return await backend.remove_grant(grant.resource, grant.role, grant.title, grant.member)

    async def revoke(self, backend: Any, kind: str, name: str, owner: str | None, hub: str,
                     annotations: Mapping[str, str], account: tuple[str, str] | None) -> bool:
        bindings = _recorded(annotations, gcp.BINDINGS_ANNOTATION)
        if name.startswith("principal://"):  # no account: the recorded grants to the principal
            await backend.remove_bindings(name, bindings)
            return True
        return await backend.delete(name, owner, hub, bindings, account)

    def place_of(self, kind: str, name: str) -> tuple[str, str] | None:
        return ("gcp", name.rsplit("@", 1)[1].split(".", 1)[0]) if name.endswith(".iam.gserviceaccount.com") else None

    def managed_places(self, settings: Any) -> list[str]:
        return [f"@{settings.managed['project']}.iam.gserviceaccount.com"] if settings.managed is not None else []

    def search_places(self, settings: Any) -> list[tuple[str, str]]:
        return [("gcp", settings.managed["project"])] if settings.managed is not None else []

    def describe(self, cloud: Any, plan: Any) -> str:
        if cloud.mode == "principal":
            account = plan.service_account
            return f"its own Google principal (ServiceAccount {account.namespace}/{account.name})"
        return cloud.identity


class AzureProvider(_Planned):
    key, module, sdk_module, extra, backends = "azure", azure, "azure.mgmt.msi", "azure", ("azure",)
    annotations = azure.ANNOTATIONS

    def backend_key(self, settings: Any, kind: str) -> Any:
        return id(settings.azure_client_factory)

    def make_backend(self, settings: Any, kind: str) -> Any:
        return load_backend("azure_msi", "ManagedIdentities", settings.azure_client_factory,
                            max_concurrent_calls=settings.azure_max_concurrent_calls, **_common(settings))

    async def ensure(self, backend: Any, plan: Any, recheck: bool, namespaces: Collection[str]) -> tuple[str | None, Any]:
        outcome = await backend.ensure(plan, recheck=recheck)
        # Azure chose the identity's client id when it made it.
        return outcome, azure.with_identity_ids(plan, *backend.ids[plan.cloud.identity])

    def credentials_routes(self) -> list[tuple[str, Any]]:
        from ..creds import AzureTokenHandler

        return [("azure", AzureTokenHandler)]

    def account_identity(self, annotations: Mapping[str, str]) -> str | None:
        client = annotations.get(azure.CLIENT_ID_ANNOTATION)
        return f"azure:{client}" if client else None

    def completed(self, plan: Any, annotations: Mapping[str, str]) -> Any:
        if plan.cloud.mode != "managed":
            return plan
        client, tenant = (annotations.get(k) for k in azure.ANNOTATIONS)
        return azure.with_identity_ids(plan, client, tenant) if client and tenant else plan

    def dropped_grants(self, annotations: Mapping[str, str], plan: Any) -> list[Any]:
        # Role assignments the same identity was given that the plan no longer wants.
        if plan.cloud.mode != "managed" or annotations.get(MANAGED_IDENTITY_ANNOTATION) != plan.cloud.recorded:
            return []  # another identity: revoked whole, if it was ours
        new = _recorded(plan.service_account.annotations, azure.ROLE_ASSIGNMENTS_ANNOTATION)
        return [a for a in _recorded(annotations, azure.ROLE_ASSIGNMENTS_ANNOTATION) if a not in new]

    async def remove_grants(self, backend: Any, identity: str, grants: list[Any]) -> None:
        await backend.remove_assignments(identity, grants)

    async def revoke(self, backend: Any, kind: str, name: str, owner: str | None, hub: str,
                     annotations: Mapping[str, str], account: tuple[str, str] | None) -> bool:
        assignments = _recorded(annotations, azure.ROLE_ASSIGNMENTS_ANNOTATION)
        credential = None if account is None else azure.credential_name(*account)
        return await backend.delete(name, owner, hub, assignments, credential)

    def place_of(self, kind: str, name: str) -> tuple[str, str] | None:
        if not name.lower().startswith("/subscriptions/"):
            return None
        parts = name.strip("/").split("/")
        return "azure", f"/subscriptions/{parts[1]}/resourceGroups/{parts[3]}"

    def search_places(self, settings: Any) -> list[tuple[str, str]]:
        managed = settings.managed
        if managed is None:
            return []
        return [("azure", f"/subscriptions/{managed['subscription_id']}/resourceGroups/{managed['resource_group']}")]

    def describe(self, cloud: Any, plan: Any) -> str:
        if cloud.mode == "managed":
            return f"the Azure managed identity {cloud.resources['managed_identity']['name']}"
        return f"the Azure managed identity with client id {cloud.identity}"

    def pod_labels(self, plan: Any) -> dict[str, str]:
        # AKS's Workload Identity webhook only gives labelled pods their Azure token and settings.
        return {azure.USE_LABEL: "true"}


class StoreProvider(_Planned):
    key, module, sdk_module, extra, backends = "s3_sts", s3_sts, "boto3", "aws", ("s3_sts",)

    def backend_key(self, settings: Any, kind: str) -> Any:
        return client_key(settings.s3_sts_client_kwargs)

    def make_backend(self, settings: Any, kind: str) -> Any:
        return load_backend("s3_sts_iam", "StoreRoles", dict(settings.s3_sts_client_kwargs),
                            max_concurrent_calls=settings.aws_max_concurrent_calls, **_common(settings))

    async def ensure(self, backend: Any, plan: Any, recheck: bool, namespaces: Collection[str]) -> tuple[str | None, Any]:
        return await _ensure_role(backend, plan, recheck, namespaces), plan

    def account_identity(self, annotations: Mapping[str, str]) -> str | None:
        arn = annotations.get(s3_sts.ROLE_ARN_ANNOTATION)
        return f"s3_sts:{arn}" if arn else None

    async def revoke(self, backend: Any, kind: str, name: str, owner: str | None, hub: str,
                     annotations: Mapping[str, str], account: tuple[str, str] | None) -> bool:
        return await backend.delete(name, owner, hub, account)

    def place_of(self, kind: str, name: str) -> tuple[str, str] | None:
        return ("s3_sts", _role_path(name)) if ":role/" in name else None

    def check(self, settings: Any, identity_settings: Any, where: str) -> None:
        if settings.hub_made and not identity_settings.s3_sts_client_kwargs.get("endpoint_url"):
            raise ConfigError(
                f"{where}.managed: the hub makes roles through the store's IAM API; set "
                "c.CloudIdentitySpawner.s3_sts_client_kwargs = {'endpoint_url': ..., 'aws_access_key_id': ..., "
                "'aws_secret_access_key': ...} (an account of the store allowed to manage roles)"
            )

    def managed_places(self, settings: Any) -> list[str]:
        if settings.managed is None:
            return []
        tenant, _ = s3_sts.parse_oidc_provider_arn(settings.managed["oidc_provider_arn"])
        return [f"arn:aws:iam::{tenant}:role{settings.managed['role_path']}"]

    def search_places(self, settings: Any) -> list[tuple[str, str]]:
        return [("s3_sts", settings.managed["role_path"])] if settings.managed is not None else []

    def describe(self, cloud: Any, plan: Any) -> str:
        return f"the role {cloud.identity} at the object store {cloud.resources['pod']['env']['AWS_ENDPOINT_URL_S3']}"

    def pin(self, pod: Any, plan: Any, webhook_parts: bool) -> None:
        from . import aws_pods

        aws_pods.pin_store_token(pod, plan.cloud.resources["pod"])  # no webhook exists there: always


BUILTIN: tuple[Provider, ...] = (AwsProvider(), GcpProvider(), AzureProvider(), StoreProvider())
