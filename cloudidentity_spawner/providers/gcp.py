"""GKE Workload Identity: plan the Google service account a ServiceAccount maps to (pure).

* ``{"service_account": "<template e-mail>"}`` - an existing GSA; we only annotate
  the ServiceAccount with ``iam.gke.io/gcp-service-account``.
* ``{"managed": {...}}`` - the hub creates the GSA and grants
  ``roles/iam.workloadIdentityUser`` to exactly this ServiceAccount.
* ``{"principal": {...}}`` - no GSA: the roles are granted to the ServiceAccount's own
  Workload Identity Federation principal (``principal://.../subject/ns/<ns>/sa/<ksa>``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import names
from ..errors import ConfigError
from ..overlap import Named
from ..plan import MANAGED_BY, PREFIX, CloudPlan
from ..templates import SAMPLE_CONTEXT, TemplateError, raw, render
from ._common import check_keys, check_string_list, check_template

GSA_ANNOTATION = "iam.gke.io/gcp-service-account"
BINDINGS_ANNOTATION = PREFIX + "gcp-bindings"
"""On the ServiceAccount: the project/bucket bindings the hub added for its GSA, so exactly
those (and no binding someone else added) are removed when the identity is deleted."""
ANNOTATIONS = (GSA_ANNOTATION,)
WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"

_PROJECT_ID = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
_EMAIL = re.compile(rf"(?P<id>[a-z][a-z0-9-]{{4,28}}[a-z0-9])@(?P<project>{_PROJECT_ID})\.iam\.gserviceaccount\.com")
_ROLE = re.compile(r"(roles|projects/[^/]+/roles|organizations/[0-9]+/roles)/[A-Za-z0-9_.]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def parse_email(email: str) -> tuple[str, str]:
    """``(account_id, project)`` of a user-managed GSA e-mail; ValueError says what is wrong."""
    match = _EMAIL.fullmatch(email) if isinstance(email, str) else None
    if not match:
        raise ValueError(
            f"invalid Google service account e-mail {email!r}: expected "
            "<id>@<project>.iam.gserviceaccount.com with an id of 6-30 characters "
            "[a-z0-9-] starting with a letter"
        )
    return match["id"], match["project"]


MARKER_START = f"[{MANAGED_BY} "
"""Where the ownership marker starts in a managed account's description."""


PERSON_MARK = "person="
"""Before a user's account's ownership marker: ``person=<digest of the login's issuer and subject>``."""


def recorded_person(description: str) -> str | None:
    """The person a managed account's description says it was made for, or None."""
    # Anchored to the ownership marker that ends the description: text before it may come from a
    # description template with claims the user controls.
    found = re.search(rf" {PERSON_MARK}([a-z2-7]{{26}}\.(?:[a-z2-7]{{10}})?) {re.escape(MARKER_START)}[^\]]*\]$",
                      description or "")
    return found.group(1) if found else None


def ownership_marker(hub: str, owner: str) -> str:
    """Google service accounts have no labels or tags: the description carries who made
    the account and for whom, and an account without the right marker is never touched."""
    digest = hashlib.sha256(f"{hub}\xff{owner}".encode()).hexdigest()[:32]
    return f"{MARKER_START}hub={hub} owner={digest}]"


def workload_identity_member(pool: str, namespace: str, service_account: str) -> str:
    """The IAM member a GKE pod's ServiceAccount acts as: exactly one namespace/name."""
    return f"serviceAccount:{pool}[{namespace}/{service_account}]"


_EXISTING_KEYS = {"service_account"}
_MANAGED_KEYS = {
    "project",
    "account_id",
    "display_name",
    "description",
    "workload_identity_pool",
    "project_roles",
    "bucket_roles",
}
_BUCKET_ROLE_KEYS = {"bucket", "role", "prefix"}
_PRINCIPAL_KEYS = {"project", "project_number", "workload_identity_pool", "project_roles", "bucket_roles"}
DEFAULT_ACCOUNT_ID = {"user": "jh-{username}", "group": "jh-group-{group}", "hub": "jh-{rule}"}


_CLUSTER = re.compile(rf"https://container\.googleapis\.com/v1/projects/(?P<project>{_PROJECT_ID})/locations/"
                      r"[a-z][a-z0-9-]{1,62}/clusters/[a-z]([-a-z0-9]{0,38}[a-z0-9])?")
TOKEN_VOLUME = "gcp-sts-token"
TOKEN_MOUNT_PATH = "/var/run/secrets/cloudidentity/gcp"
TOKEN_FILE = f"{TOKEN_MOUNT_PATH}/token"
TOKEN_SECONDS = 600
"""Kubernetes' shortest lifetime of a projected token (the kubelet renews it at 80 %): a token
that left the pod (to a laptop) can be exchanged until it expires, whatever happens to the pod."""


@dataclass(frozen=True)
class GcpSettings:
    """A rule's validated ``gcp`` block."""

    service_account: str | None = None
    managed: Mapping[str, Any] | None = None
    principal: Mapping[str, Any] | None = None
    cluster: str | None = None
    """The GKE cluster as Workload Identity's identity provider
    (``https://container.googleapis.com/v1/projects/<p>/locations/<l>/clusters/<c>``): with it,
    pods also hold a token Google's STS exchanges for their identity, so the credentials client
    works from other computers (google-auth's executable-sourced credential)."""

    @property
    def mode(self) -> str:
        """``existing`` (an operator's GSA), ``managed`` (a GSA per identity) or ``principal``."""
        return "managed" if self.managed is not None else "principal" if self.principal is not None else "existing"

    @property
    def hub_made(self) -> bool:
        return self.mode != "existing"


def parse(block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str] = ()) -> GcpSettings:
    """Validate a rule's ``gcp`` block at start-up (ConfigError names *where* and the key).

    Claims in the templates that decide an identity must be among *trusted_claims*."""
    check_keys(block, _EXISTING_KEYS | {"managed", "principal", "cluster"}, where)
    if sum(key in block for key in ("service_account", "managed", "principal")) != 1:
        raise ConfigError(
            f"{where}: give exactly one of 'service_account' (an existing GSA), 'managed' (the hub creates a GSA) "
            "or 'principal' (roles for the ServiceAccount itself, no GSA)"
        )
    cluster = block.get("cluster")
    if cluster is not None and (not isinstance(cluster, str) or not _CLUSTER.fullmatch(cluster)):
        raise ConfigError(f"{where}.cluster: expected the GKE cluster as Workload Identity names it, "
                          "https://container.googleapis.com/v1/projects/<project>/locations/<location>/clusters/<name> "
                          f"(its ServiceAccount token issuer: kubectl get --raw /.well-known/openid-configuration), got {cluster!r}")
    if "principal" in block:
        principal = _parse_principal(block["principal"], f"{where}.principal", forbidden, trusted_claims)
        _check_cluster_pool(cluster, principal, f"{where}.principal")
        return GcpSettings(principal=principal, cluster=cluster)
    if "service_account" in block:
        template = check_template(block["service_account"], f"{where}.service_account", forbidden, trusted_claims)
        try:
            parse_email(existing_email(template, SAMPLE_CONTEXT))
        except (ValueError, TemplateError) as e:
            raise ConfigError(f"{where}.service_account: {e}") from None
        return GcpSettings(service_account=template, cluster=cluster)

    managed_where = f"{where}.managed"
    managed = dict(check_keys(block["managed"], _MANAGED_KEYS, managed_where, {"project"}))
    _check_project_and_pool(managed, managed_where)
    for key in ("account_id", "display_name", "description"):
        if key in managed:
            check_template(managed[key], f"{managed_where}.{key}", forbidden, trusted_claims if key == "account_id" else None)
    _check_roles(managed, managed_where, forbidden, trusted_claims)
    _check_cluster_pool(cluster, managed, managed_where)
    return GcpSettings(managed=managed, cluster=cluster)


def _check_cluster_pool(cluster: str | None, block: Mapping[str, Any], where: str) -> None:
    """The cluster's Workload Identity pool is its project's: the one the block grants in."""
    if cluster is not None and block["workload_identity_pool"] != cluster_pool(cluster):
        raise ConfigError(f"{where}.workload_identity_pool: {block['workload_identity_pool']!r} is not the pool of "
                          f"cluster {cluster} ({cluster_pool(cluster)!r})")


def cluster_pool(cluster: str) -> str:
    """A GKE cluster's Workload Identity pool: ``<cluster project>.svc.id.goog``."""
    return f"{_CLUSTER.fullmatch(cluster)['project']}.svc.id.goog"


def outside_settings(cluster: str, email: str | None) -> dict[str, Any]:
    """What a pod needs for its identity to be usable elsewhere (GKE's own exchange, as its
    metadata server does it): a projected token for the cluster's pool, which Google's STS
    exchanges with audience ``identitynamespace:<pool>:<cluster>`` for a federated token of the
    account's principal, and (with a Google service account) that account to impersonate."""
    pool = cluster_pool(cluster)
    env = {"CLOUDIDENTITY_GCP_TOKEN_FILE": TOKEN_FILE, "CLOUDIDENTITY_GCP_STS_AUDIENCE": f"identitynamespace:{pool}:{cluster}"}
    if email:
        env["CLOUDIDENTITY_GCP_SERVICE_ACCOUNT"] = email
    return {"audience": pool, "expiration": TOKEN_SECONDS, "env": env}


def _parse_principal(block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str]) -> dict[str, Any]:
    principal = dict(check_keys(block, _PRINCIPAL_KEYS, where, {"project", "project_number"}))
    _check_project_and_pool(principal, where)
    number = principal["project_number"]
    if not isinstance(number, str) or not re.fullmatch(r"[1-9][0-9]{5,19}", number):
        raise ConfigError(
            f"{where}.project_number: expected the cluster project's number as a string of digits "
            f"(gcloud projects describe <project> --format='value(projectNumber)'), got {number!r}"
        )
    _check_roles(principal, where, forbidden, trusted_claims, principal_mode=True)
    if not principal.get("project_roles") and not principal.get("bucket_roles"):
        raise ConfigError(f"{where}: grants nothing; give project_roles or bucket_roles")
    return principal


def _check_project_and_pool(block: dict[str, Any], where: str) -> None:
    """The project id, and the GKE Workload Identity pool (default ``<project>.svc.id.goog``), filled in."""
    if not isinstance(block["project"], str) or not re.fullmatch(_PROJECT_ID, block["project"]):
        raise ConfigError(f"{where}.project: invalid project id {block['project']!r} (6-30 of [a-z0-9-], starting with a letter)")
    pool = block.setdefault("workload_identity_pool", f"{block['project']}.svc.id.goog")
    if not isinstance(pool, str) or not re.fullmatch(rf"{_PROJECT_ID}\.svc\.id\.goog", pool):
        raise ConfigError(f"{where}.workload_identity_pool: expected '<cluster project>.svc.id.goog', got {pool!r}")


def _check_roles(block: dict[str, Any], where: str, forbidden: set[str], trusted_claims: Collection[str],
                 principal_mode: bool = False) -> None:
    for index, role in enumerate(check_string_list(block.get("project_roles", []), f"{where}.project_roles")):
        if not _ROLE.fullmatch(role):
            raise ConfigError(f"{where}.project_roles[{index}]: invalid role {role!r} (expected e.g. roles/serviceusage.serviceUsageConsumer)")
    bucket_roles = block.get("bucket_roles", [])
    if not isinstance(bucket_roles, list):
        raise ConfigError(f"{where}.bucket_roles: expected a list of {{bucket, role, prefix}} mappings")
    for index, item in enumerate(bucket_roles):
        item_where = f"{where}.bucket_roles[{index}]"
        check_keys(item, _BUCKET_ROLE_KEYS | ({"managed_folder"} if principal_mode else set()), item_where, {"bucket", "role"})
        if item.get("managed_folder", True) is not True:
            raise ConfigError(
                f"{item_where}.managed_folder: only true is supported: a prefix is granted on its managed folder, "
                "because a conditional bucket binding cannot keep listing inside the prefix (Cloud Storage checks "
                "listing on the bucket, and its list-prefix attribute works only in credential access boundaries)"
            )
        if not isinstance(item["bucket"], str) or not _BUCKET.fullmatch(item["bucket"]):
            raise ConfigError(f"{item_where}.bucket: invalid bucket name {item['bucket']!r}")
        if not isinstance(item["role"], str) or not _ROLE.fullmatch(item["role"]):
            raise ConfigError(f"{item_where}.role: invalid role {item['role']!r}")
        if "prefix" in item:
            check_template(item["prefix"], f"{item_where}.prefix", forbidden, trusted_claims)
            sample = render(item["prefix"], SAMPLE_CONTEXT, names.resource_part)
            if not re.fullmatch(r"[^/\r\n#\[\]*?]+(/[^/\r\n#\[\]*?]+)*", sample):
                raise ConfigError(
                    f"{item_where}.prefix: {item['prefix']!r} does not make a folder name: no leading, trailing or "
                    "double '/' (the hub adds the final '/'), e.g. '{username}' or 'users/{username}'"
                )


def managed_folder(bucket: str, prefix: str) -> str:
    """The managed folder a prefix grant lives on: ``projects/_/buckets/<b>/managedFolders/<prefix>/``.

    A role granted on a managed folder reaches exactly the objects under it, and
    listing only with a prefix inside it (Cloud Storage enforces both). A
    conditional bucket binding cannot do that: ``storage.objects.list`` is checked
    on the bucket, so a ``resource.name`` condition cannot narrow listing, and
    Google documents that Cloud Storage API attributes such as
    ``objectListPrefix`` work only in Credential Access Boundaries, not in role
    bindings. Managed folders need uniform bucket-level access on the bucket.
    """
    return f"projects/_/buckets/{bucket}/managedFolders/{prefix}/"


def existing_email(template: str, context: Mapping[str, Any]) -> str:
    """An operator's Google account e-mail from its template: the account id rendered once and
    encoded as a whole (valid, within 30 characters, collision-free), the domain part escaped."""
    local, at, domain = template.rpartition("@")
    if not at:
        raise ValueError(f"{template!r} is not an e-mail address template")
    return f"{names.gsa_account_id(render(local, context, raw))}@{render(domain, context, names.ksa_name)}"


def plan(settings: GcpSettings, context: Mapping[str, Any], scope: str, owner: str, namespace: str, service_account: str):
    """Return ``(annotations, CloudPlan)`` for one identity. Raises TemplateError/ValueError on bad input."""
    annotations, cloud = _plan(settings, context, scope, owner, namespace, service_account)
    if settings.cluster is not None:
        email = None if cloud.mode == "principal" else cloud.identity
        cloud = replace(cloud, resources={**cloud.resources, "pod": outside_settings(settings.cluster, email)})
    return annotations, cloud


def _plan(settings: GcpSettings, context: Mapping[str, Any], scope: str, owner: str, namespace: str, service_account: str):
    if settings.service_account is not None:
        email = existing_email(settings.service_account, context)
        parse_email(email)
        return {GSA_ANNOTATION: email}, CloudPlan(provider="gcp", mode="existing", identity=email)

    if settings.principal is not None:
        block = settings.principal
        member = principal_member(block["project_number"], block["workload_identity_pool"], namespace, service_account)
        bindings = role_bindings(block, context, member)
        resources = {"member": member, "bindings": bindings}
        return recorded_bindings(bindings), CloudPlan(provider="gcp", mode="principal", identity=member, resources=resources)

    managed = settings.managed
    project = managed["project"]
    account_id = names.gsa_account_id(render(managed.get("account_id", DEFAULT_ACCOUNT_ID[scope]), context, raw), scope)
    email = f"{account_id}@{project}.iam.gserviceaccount.com"
    member = f"serviceAccount:{email}"
    bindings = [
        {
            "resource": f"projects/{project}/serviceAccounts/{email}",
            "role": WORKLOAD_IDENTITY_USER,
            "member": workload_identity_member(managed["workload_identity_pool"], namespace, service_account),
        }
    ]
    bindings += role_bindings(managed, context, member)
    display = render(managed.get("display_name", "JupyterHub {hub}: " + owner.replace("{", "{{").replace("}", "}}")), context, raw)
    description = render(managed.get("description", "Notebook identity for " + owner.replace("{", "{{").replace("}", "}}")), context, raw)
    marker = ownership_marker(context["hub"], owner)
    if context.get("person"):  # a user's account: whose login it was made for
        marker = f"{PERSON_MARK}{context['person']} {marker}"
    description = description[: 256 - len(marker) - 1].rstrip() + " " + marker
    resources = {
        "service_account": {
            "project": project,
            "account_id": account_id,
            "email": email,
            "display_name": display[:100],
            "description": description,
        },
        "bindings": bindings,
    }
    annotations = {GSA_ANNOTATION: email, **recorded_bindings(
        [b for b in bindings if not b["resource"].startswith("projects/" + project + "/serviceAccounts/")]
    )}
    return annotations, CloudPlan(provider="gcp", mode="managed", identity=email, resources=resources)


def role_bindings(block: Mapping[str, Any], context: Mapping[str, Any], member: str) -> list[dict[str, str]]:
    """The project and bucket bindings a ``managed`` or ``principal`` block gives *member*;
    a bucket role with a prefix lands on that prefix's managed folder."""
    bindings = [{"resource": f"projects/{block['project']}", "role": role, "member": member} for role in block.get("project_roles", [])]
    for item in block.get("bucket_roles", []):
        if "prefix" in item:
            resource = managed_folder(item["bucket"], render(item["prefix"], context, names.resource_part))
        else:
            resource = f"projects/_/buckets/{item['bucket']}"
        bindings.append({"resource": resource, "role": item["role"], "member": member})
    return bindings


def recorded_bindings(bindings: list[Mapping[str, Any]]) -> dict[str, str]:
    """The ServiceAccount annotation that records the bindings the hub adds (``[resource, role,
    condition title]``), so exactly those are removed later."""
    added = [[b["resource"], b["role"], (b.get("condition") or {}).get("title", "")] for b in bindings]
    return {BINDINGS_ANNOTATION: json.dumps(added, separators=(",", ":"))} if added else {}


def principal_member(project_number: str, pool: str, namespace: str, service_account: str) -> str:
    """The Workload Identity Federation principal of one Kubernetes ServiceAccount: IAM grants
    to it reach exactly the pods that run under ``<namespace>/<service_account>``."""
    return (f"principal://iam.googleapis.com/projects/{project_number}/locations/global/"
            f"workloadIdentityPools/{pool}/subject/ns/{namespace}/sa/{service_account}")


def iam_member(identity: str) -> str:
    """The IAM member of a planned Google identity: a GSA e-mail, or a principal as it is."""
    return identity if identity.startswith("principal://") else f"serviceAccount:{identity}"


MAX_GRANT_LIMIT_ROLES = 10
"""Google allows at most 10 roles in one ``modifiedGrantsByRole`` condition."""


def roles_the_hub_grants(rules: Any) -> list[str]:
    """Every role the hub can grant for these rules (``roles/iam.workloadIdentityUser`` included)."""
    roles = set()
    for rule in rules.rules:
        block = None if rule.gcp is None else rule.gcp.managed or rule.gcp.principal
        if block is not None:
            if rule.gcp.managed is not None:
                roles.add(WORKLOAD_IDENTITY_USER)
            roles.update(block.get("project_roles", []))
            roles.update(item["role"] for item in block.get("bucket_roles", []))
    return sorted(roles)


def hub_grant_condition(rules: Any) -> dict[str, str]:
    """The IAM condition for the project binding of the hub's own role: it may change
    policies (``setIamPolicy``) only to grant or revoke the roles its rules name.

    Other requests carry no ``modifiedGrantsByRole``, so the default ``[]`` passes and
    the role's read and create permissions are unaffected. Cloud Storage and IAM
    (service accounts) recognise the limit for their own ``setIamPolicy`` calls.
    Use it with ``gcloud projects add-iam-policy-binding ... --condition-from-file``.
    """
    roles = roles_the_hub_grants(rules)
    broad = [r for r in roles if r in ("roles/owner", "roles/editor") or r.lower().endswith("admin")]
    if broad:
        raise ConfigError(
            f"the rules grant {broad[0]}, which can itself change IAM policies: a grant limit that lists it bounds "
            "nothing (Google advises against it); grant users a narrower role"
        )
    if not roles:
        raise ConfigError("no rule has gcp.managed or gcp.principal: the hub grants no roles, so it needs no role of its own")
    if len(roles) > MAX_GRANT_LIMIT_ROLES:
        raise ConfigError(
            f"the rules grant {len(roles)} roles ({', '.join(roles)}); a modifiedGrantsByRole condition lists at most "
            f"{MAX_GRANT_LIMIT_ROLES}: use fewer roles, or a custom role that combines them"
        )
    listed = ", ".join(f"'{role}'" for role in roles)
    return {
        "title": "cloudidentity-spawner grants only its roles",
        "description": "The hub may grant and revoke only the roles its identity rules name.",
        "expression": f"api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly([{listed}])",
    }


def named_templates(settings: GcpSettings, where: str, rule: str, scope: str) -> list[Named]:
    """The block's templates that name a Google account or a prefix, for the start-up check that
    no two rules can name the same one for different owners (:mod:`..overlap`)."""
    found = []
    if settings.service_account is not None:
        found.append(Named(f"{where}.service_account", rule, scope, "Google service account", settings.service_account, "raw"))
    if settings.managed is not None:
        template = settings.managed.get("account_id", DEFAULT_ACCOUNT_ID[scope])
        found.append(Named(f"{where}.managed.account_id", rule, scope, "Google service account",
                           f"{template}@{settings.managed['project']}.iam.gserviceaccount.com", "raw", scoped=True))
    block = settings.managed or settings.principal or {}
    for index, item in enumerate(block.get("bucket_roles", [])):
        if "prefix" in item:
            found.append(Named(f"{where}.bucket_roles[{index}].prefix", rule, scope, "Cloud Storage prefix",
                               item["bucket"] + "/" + item["prefix"], "resource_part", covers=True))
    return found
