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
from . import aws, azure, gcp, s3_sts
from .base import Provider


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


def _role_path(name: str) -> str:
    """The path of a role ARN (``arn:...:role/<path>/<name>``): ``/`` or ``/a/b/``."""
    return name.split(":role", 1)[1].rpartition("/")[0] + "/"


class AwsProvider(_Planned):
    key, module, sdk_module, extra, backends = "aws", aws, "boto3", "aws", ("aws", "eks")

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
        from .. import pinning

        role_arn = plan.service_account.annotations.get(aws.ROLE_ARN_ANNOTATION)
        if role_arn:
            pinning.name_the_session(pod, plan)
            if webhook_parts:
                pinning.pin_irsa(pod, plan, role_arn)
        if webhook_parts and plan.cloud.mode == "pod_identity":
            pinning.pin_pod_identity(pod, plan.cloud.identity)


class GcpProvider(_Planned):
    key, module, sdk_module, extra, backends = "gcp", gcp, "google.cloud.iam_admin_v1", "gcp", ("gcp",)

    async def revoke(self, backend: Any, kind: str, name: str, owner: str | None, hub: str,
                     annotations: Mapping[str, str], account: tuple[str, str] | None) -> bool:
        bindings = json.loads(annotations.get(gcp.BINDINGS_ANNOTATION, "[]"))
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

    async def revoke(self, backend: Any, kind: str, name: str, owner: str | None, hub: str,
                     annotations: Mapping[str, str], account: tuple[str, str] | None) -> bool:
        assignments = json.loads(annotations.get(azure.ROLE_ASSIGNMENTS_ANNOTATION, "[]"))
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
        from .. import pinning

        pinning.pin_store_token(pod, plan.cloud.resources["pod"])  # no webhook exists there: always


BUILTIN: tuple[Provider, ...] = (AwsProvider(), GcpProvider(), AzureProvider(), StoreProvider())
