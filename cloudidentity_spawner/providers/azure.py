"""AKS Workload Identity: plan the Azure managed identity a ServiceAccount maps to (pure).

* ``{"client_id": "<GUID>", "tenant_id": "<GUID>"}`` - an existing user-assigned managed
  identity (the operator made it and its federated credential); we annotate the
  ServiceAccount with ``azure.workload.identity/client-id`` (and ``tenant-id``).
* ``{"managed": {...}}`` - the hub creates a user-assigned managed identity per planned
  identity, one federated identity credential that trusts exactly
  ``system:serviceaccount:<namespace>:<account>`` from the cluster's OIDC issuer, and the
  configured role assignments. Azure assigns the identity's client id, so the account's
  annotation is filled in once the identity exists (:func:`with_identity_ids`).

Pods under such an account need the label ``azure.workload.identity/use: "true"``: the
Workload Identity webhook only looks at labelled pods (:mod:`..pinning` sets it).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

from .. import names
from ..errors import ConfigError
from ..overlap import Named
from ..plan import MANAGED_BY, PREFIX, CloudPlan, IdentityPlan
from ..templates import SAMPLE_CONTEXT, TemplateError, raw, render
from ._common import check_keys, check_template

CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
TENANT_ID_ANNOTATION = "azure.workload.identity/tenant-id"
ANNOTATIONS = (CLIENT_ID_ANNOTATION, TENANT_ID_ANNOTATION)
USE_LABEL = "azure.workload.identity/use"
ROLE_ASSIGNMENTS_ANNOTATION = PREFIX + "azure-role-assignments"
"""On the ServiceAccount: the role assignments the hub made for its managed identity
(``[scope, assignment name]``), so exactly those are removed with the identity."""
AUDIENCE = "api://AzureADTokenExchange"
TAG_MANAGED_BY = "managed-by"
TAG_HUB = MANAGED_BY + ".hub"
TAG_OWNER = MANAGED_BY + ".owner"
TAG_PERSON = MANAGED_BY + ".person"
"""The ownership tags of a hub-made identity (Azure tag names may not contain '/', so not the
Kubernetes-style keys the AWS tags use)."""
MAX_FEDERATED_CREDENTIALS = 20
"""Azure allows 20 federated identity credentials per user-assigned managed identity."""

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RESOURCE_GROUP = re.compile(r"[-\w._()]{0,89}[-\w_()]", re.ASCII)
_LOCATION = re.compile(r"[a-z][a-z0-9]{1,49}")
_SCOPE = re.compile(r"/subscriptions/[0-9a-fA-F-]{36}(/[^/?#\s]+)*")
_EXISTING_KEYS = {"client_id", "tenant_id"}
_MANAGED_KEYS = {"subscription_id", "resource_group", "location", "oidc_issuer", "identity_name", "role_assignments", "tags"}
DEFAULT_IDENTITY_NAME = {"user": "{hub}-{username}", "group": "{hub}-group-{group}", "hub": "{hub}-{rule}"}


@dataclass(frozen=True)
class AzureSettings:
    """A rule's validated ``azure`` block."""

    client_id: str | None = None
    tenant_id: str | None = None
    managed: Mapping[str, Any] | None = None

    @property
    def mode(self) -> str:
        """``existing`` (an operator's managed identity) or ``managed`` (one per identity, made by the hub)."""
        return "managed" if self.managed is not None else "existing"

    @property
    def hub_made(self) -> bool:
        return self.mode == "managed"


def _guid(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        raise ConfigError(f"{where}: expected a GUID like 00000000-0000-0000-0000-000000000000, got {value!r}")
    return value.lower()


def parse(block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str] = ()) -> AzureSettings:
    """Validate a rule's ``azure`` block at start-up (ConfigError names *where* and the key)."""
    check_keys(block, _EXISTING_KEYS | {"managed"}, where)
    if ("managed" in block) == ("client_id" in block):
        raise ConfigError(f"{where}: give exactly one of 'client_id' (an existing managed identity) or 'managed' "
                          "(the hub creates one per identity)")
    if "client_id" in block:
        tenant = _guid(block["tenant_id"], f"{where}.tenant_id") if "tenant_id" in block else None
        return AzureSettings(client_id=_guid(block["client_id"], f"{where}.client_id"), tenant_id=tenant)
    if "tenant_id" in block:
        raise ConfigError(f"{where}.tenant_id: only with client_id (a managed identity's tenant is the subscription's)")
    managed_where = f"{where}.managed"
    managed = dict(check_keys(block["managed"], _MANAGED_KEYS, managed_where,
                              {"subscription_id", "resource_group", "location", "oidc_issuer"}))
    managed["subscription_id"] = _guid(managed["subscription_id"], f"{managed_where}.subscription_id")
    if not isinstance(managed["resource_group"], str) or not _RESOURCE_GROUP.fullmatch(managed["resource_group"]):
        raise ConfigError(f"{managed_where}.resource_group: invalid resource group name {managed['resource_group']!r}")
    if not isinstance(managed["location"], str) or not _LOCATION.fullmatch(managed["location"]):
        raise ConfigError(f"{managed_where}.location: expected an Azure region like 'westeurope', got {managed['location']!r}")
    issuer = managed["oidc_issuer"]
    parsed = urlparse(issuer) if isinstance(issuer, str) else None
    if parsed is None or parsed.scheme != "https" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError(f"{managed_where}.oidc_issuer: expected the cluster's OIDC issuer URL (az aks show --query "
                          f"oidcIssuerProfile.issuerUrl), https://..., got {issuer!r}")
    if "identity_name" in managed:  # the default suits each scope (DEFAULT_IDENTITY_NAME)
        template = check_template(managed["identity_name"], f"{managed_where}.identity_name", forbidden, trusted_claims)
        try:  # any rendering becomes a valid name (names.azure_identity_name); only a bad template fails
            render(template, SAMPLE_CONTEXT, raw)
        except TemplateError as e:
            raise ConfigError(f"{managed_where}.identity_name: {e}") from None
    assignments = managed.get("role_assignments", [])
    if not isinstance(assignments, list):
        raise ConfigError(f"{managed_where}.role_assignments: expected a list of {{scope, role}} mappings")
    for index, item in enumerate(assignments):
        item_where = f"{managed_where}.role_assignments[{index}]"
        check_keys(item, {"scope", "role"}, item_where, {"scope", "role"})
        check_template(item["scope"], f"{item_where}.scope", forbidden, trusted_claims)
        try:
            sample = render(item["scope"], SAMPLE_CONTEXT, names.resource_part)
        except TemplateError as e:
            raise ConfigError(f"{item_where}.scope: {e}") from None
        if not _SCOPE.fullmatch(sample):
            raise ConfigError(f"{item_where}.scope: expected an Azure resource id /subscriptions/<GUID>/..., got {item['scope']!r}")
        if not isinstance(item["role"], str) or not item["role"].strip():
            raise ConfigError(f"{item_where}.role: expected a role name like 'Storage Blob Data Contributor'")
    tags = managed.get("tags", {})
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ConfigError(f"{managed_where}.tags: expected a mapping of strings to strings")
    return AzureSettings(managed=managed)


def identity_resource_id(subscription: str, resource_group: str, name: str) -> str:
    return (f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
            f"Microsoft.ManagedIdentity/userAssignedIdentities/{name}")


def parse_identity_resource_id(resource_id: str) -> tuple[str, str, str]:
    """``(subscription, resource group, name)`` of a user-assigned identity's resource id."""
    match = re.fullmatch(r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/"
                         r"Microsoft\.ManagedIdentity/userAssignedIdentities/([^/]+)", resource_id, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a user-assigned managed identity id: {resource_id!r}")
    return match[1], match[2], match[3]


def credential_name(namespace: str, service_account: str) -> str:
    """The federated credential's name for one ServiceAccount: ``<namespace>_<account>`` (``_``
    cannot occur in either, so two accounts never share a name), made valid and collision-free."""
    return names.azure_credential_name(f"{namespace}_{service_account}")


def assignment_name(identity: str, scope: str, role: str) -> str:
    """The role assignment's name (a GUID): the same for the same identity, scope and role, so a
    retried create meets the assignment it made instead of making a second one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{MANAGED_BY}|{identity.lower()}|{scope.lower()}|{role}"))


def plan(settings: AzureSettings, context: Mapping[str, Any], scope: str, owner: str, namespace: str, service_account: str):
    """Return ``(annotations, CloudPlan)`` for one identity. Raises TemplateError/ValueError on bad input."""
    if settings.client_id is not None:
        annotations = {CLIENT_ID_ANNOTATION: settings.client_id}
        if settings.tenant_id:
            annotations[TENANT_ID_ANNOTATION] = settings.tenant_id
        return annotations, CloudPlan(provider="azure", mode="existing", identity=settings.client_id)
    managed = settings.managed
    name = names.azure_identity_name(render(managed.get("identity_name", DEFAULT_IDENTITY_NAME[scope]), context, raw), scope)
    resource_id = identity_resource_id(managed["subscription_id"], managed["resource_group"], name)
    assignments = []
    for item in managed.get("role_assignments", []):
        target = render(item["scope"], context, names.resource_part)
        assignments.append({"scope": target, "role": item["role"], "name": assignment_name(resource_id, target, item["role"])})
    resources = {
        "managed_identity": {
            "subscription_id": managed["subscription_id"],
            "resource_group": managed["resource_group"],
            "name": name,
            "location": managed["location"],
            "tags": {**managed.get("tags", {}), TAG_MANAGED_BY: MANAGED_BY, TAG_HUB: context["hub"], TAG_OWNER: owner[:256],
                     **({TAG_PERSON: context["person"]} if context.get("person") else {})},
        },
        "federated_credential": {
            "name": credential_name(namespace, service_account),
            "issuer": managed["oidc_issuer"],
            "subject": f"system:serviceaccount:{namespace}:{service_account}",
            "audiences": [AUDIENCE],
        },
        "role_assignments": assignments,
    }
    recorded = [[a["scope"], a["name"]] for a in assignments]
    annotations = {ROLE_ASSIGNMENTS_ANNOTATION: json.dumps(recorded, separators=(",", ":"))} if recorded else {}
    return annotations, CloudPlan(provider="azure", mode="managed", identity=resource_id, resources=resources)


def with_identity_ids(plan: IdentityPlan, client_id: str, tenant_id: str) -> IdentityPlan:
    """*plan* with the managed identity's client and tenant ids on its ServiceAccount (Azure
    assigns them when the identity is made)."""
    sa = plan.service_account
    annotations = {**sa.annotations, CLIENT_ID_ANNOTATION: client_id, TENANT_ID_ANNOTATION: tenant_id}
    return replace(plan, service_account=replace(sa, annotations=annotations))


def named_templates(settings: AzureSettings, where: str, rule: str, scope: str) -> list[Named]:
    """The managed identity's name template, for the start-up check that no two rules can name
    the same identity for different owners (:mod:`..overlap`)."""
    if settings.managed is None:
        return []
    managed = settings.managed
    template = managed.get("identity_name", DEFAULT_IDENTITY_NAME[scope])
    found = [Named(f"{where}.managed.identity_name", rule, scope, "Azure managed identity",
                   f"{managed['subscription_id']}/{managed['resource_group']}/{template}", "raw", scoped=True)]
    found += [Named(f"{where}.managed.role_assignments[{i}].scope", rule, scope, "Azure role assignment scope",
                    item["scope"], "resource_part", covers=True) for i, item in enumerate(managed.get("role_assignments", []))]
    return found
