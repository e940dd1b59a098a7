"""S3-compatible object stores that speak STS (Ceph RADOS Gateway, MinIO): plan the role a
ServiceAccount assumes with its own Kubernetes token (pure; no boto3 here).

On a cluster without a cloud (bare metal, OpenStack) the store itself is the identity
provider's relying party: the operator registers the cluster's ServiceAccount token issuer at
the store as an OpenID Connect provider, and a pod calls the store's
``AssumeRoleWithWebIdentity`` with a projected token whose audience the store accepts. No
webhook exists there, so the hub adds the token volume and the AWS SDK variables to the pod
itself (:mod:`..pinning`). Two modes, chosen by the rule's ``s3_sts`` block:

* ``{"role_arn": "<template>", ...}`` - a role that exists at the store;
* ``{"managed": {...}, ...}`` - the hub creates the role through the store's IAM API, with a
  trust policy that names exactly this ServiceAccount, and deletes it with its user.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .. import names
from ..errors import ConfigError
from ..overlap import Named
from ..plan import PREFIX, CloudPlan
from ..templates import SAMPLE_CONTEXT, TemplateError, raw, render
from ._common import check_keys, check_template, json_strings, render_json_template
from .aws import (
    DEFAULT_ROLE_NAME,
    _after_last_literal_slash,
    _description,
    check_managed_role,
    managed_role_tags,
    render_role_arn,
)

PROVIDER = "s3_sts"
ROLE_ARN_ANNOTATION = PREFIX + "s3-sts-role-arn"
"""The role the account's pods assume at the store (for ``status`` and the admin page; nothing
else reads it: the pod's variables are pinned by the hub)."""
TOKEN_VOLUME = "cloudidentity-s3-sts-token"
TOKEN_MOUNT_PATH = "/var/run/secrets/cloudidentity/s3-sts"
TOKEN_FILE = f"{TOKEN_MOUNT_PATH}/token"

# A store's ARNs carry a tenant (often empty) where AWS has a 12-digit account.
_TENANT = r"[A-Za-z0-9_]{0,64}"
_ROLE_ARN = re.compile(rf"arn:aws:iam::(?P<tenant>{_TENANT}):role(?P<path>/(?:[\x21-\x7e]*/)?)(?P<name>[\w+=,.@-]{{1,64}})", re.ASCII)
_OIDC_PROVIDER_ARN = re.compile(rf"arn:aws:iam::(?P<tenant>{_TENANT}):oidc-provider/(?P<issuer>[A-Za-z0-9.:-]+(?:/[\x21-\x7e]+)?)",
                                re.ASCII)
_AUDIENCE = re.compile(r"[\x21-\x7e]{1,256}", re.ASCII)
_TOKEN_EXPIRATION = range(600, 86401)
_MODE_KEYS = {"role_arn", "managed"}
_KEYS = {"endpoint", "sts_endpoint", "audience", "region", "token_expiration", "allow_http"} | _MODE_KEYS
_OTHER_AUDIENCES = ("sts.amazonaws.com", "pods.eks.amazonaws.com", "api://AzureADTokenExchange", "https://kubernetes.default.svc")
"""Audiences other relying parties accept: a token sent to the store must not be one of theirs."""
_MANAGED_KEYS = {"oidc_provider_arn", "role_path", "role_name", "inline_policy", "tags", "max_session_duration", "description"}


@dataclass(frozen=True)
class S3StsSettings:
    """A rule's validated ``s3_sts`` block."""

    endpoint: str
    sts_endpoint: str
    audience: str
    region: str = "us-east-1"
    token_expiration: int = 3600
    role_arn: str | None = None
    managed: Mapping[str, Any] | None = None

    @property
    def mode(self) -> str:
        return "managed" if self.managed is not None else "existing"

    @property
    def hub_made(self) -> bool:
        return self.managed is not None


def parse_role_arn(arn: str) -> tuple[str, str, str]:
    """``(tenant, path, name)`` of a store's role ARN such as ``arn:aws:iam:::role/jupyterhub/alice``."""
    match = _ROLE_ARN.fullmatch(arn) if isinstance(arn, str) else None
    if not match:
        raise ValueError(f"invalid role ARN {arn!r}: expected arn:aws:iam::<tenant, often empty>:role/<path/>name, "
                         "the name 1-64 of [A-Za-z0-9+=,.@_-]")
    return match["tenant"], match["path"], match["name"]


def parse_oidc_provider_arn(arn: str) -> tuple[str, str]:
    """``(tenant, issuer)`` of the store's OpenID Connect provider ARN, e.g.
    ``arn:aws:iam:::oidc-provider/kubernetes.default.svc`` (the issuer without ``https://``)."""
    match = _OIDC_PROVIDER_ARN.fullmatch(arn) if isinstance(arn, str) else None
    if not match:
        raise ValueError(f"invalid OIDC provider ARN {arn!r}: expected arn:aws:iam::<tenant>:oidc-provider/<issuer host and path>")
    return match["tenant"], match["issuer"]


def _endpoint(value: Any, where: str, allow_http: bool) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise ConfigError(f"{where}: expected the store's URL, like 'https://s3.example.org', got {value!r}")
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(f"{where}: {value!r} is plain http: the pod sends its token (a bearer credential, valid until it "
                          "expires) and gets keys back in the clear. Use https, or set \"allow_http\": true in the block "
                          "if the network between pods and store is trusted")
    return value.rstrip("/")


def parse(block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str] = ()) -> S3StsSettings:
    """Validate a rule's ``s3_sts`` block at start-up (ConfigError names *where* and the key)."""
    check_keys(block, _KEYS, where, {"endpoint", "audience"})
    if ("managed" in block) == ("role_arn" in block):
        raise ConfigError(f"{where}: give exactly one of 'role_arn' (a role that exists at the store) or 'managed' "
                          "(the hub creates it through the store's IAM API)")
    allow_http = block.get("allow_http", False)
    if not isinstance(allow_http, bool):
        raise ConfigError(f"{where}.allow_http: expected true or false, got {allow_http!r}")
    endpoint = _endpoint(block["endpoint"], f"{where}.endpoint", allow_http)
    sts_endpoint = _endpoint(block.get("sts_endpoint", endpoint), f"{where}.sts_endpoint", allow_http)
    audience = block["audience"]
    if not isinstance(audience, str) or not _AUDIENCE.fullmatch(audience):
        raise ConfigError(f"{where}.audience: expected the audience the store accepts (one of its OIDC provider's "
                          f"client ids, printable ASCII without spaces), got {audience!r}")
    if audience.rstrip("/") in _OTHER_AUDIENCES or audience.startswith("https://kubernetes.default.svc"):
        raise ConfigError(f"{where}.audience: {audience!r} is what another service accepts; a token for the store must "
                          "be good at the store only: use an audience of its own, e.g. 'sts.<your store's host>'")
    region = block.get("region", "us-east-1")  # the AWS SDKs sign with a region; MinIO and RGW take this one
    if not isinstance(region, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", region):
        raise ConfigError(f"{where}.region: expected the store's region name (its zonegroup), got {region!r}")
    expiration = block.get("token_expiration", 3600)
    if isinstance(expiration, bool) or expiration not in _TOKEN_EXPIRATION:
        raise ConfigError(f"{where}.token_expiration: expected seconds between 600 and 86400, got {expiration!r}")
    common = {"endpoint": endpoint, "sts_endpoint": sts_endpoint, "audience": audience, "region": region,
              "token_expiration": expiration}
    if "role_arn" in block:
        template = check_template(block["role_arn"], f"{where}.role_arn", forbidden, trusted_claims)
        try:
            parse_role_arn(render_role_arn(template, SAMPLE_CONTEXT))
        except (ValueError, TemplateError) as e:
            raise ConfigError(f"{where}.role_arn: {e}") from None
        return S3StsSettings(role_arn=template, **common)

    managed_where = f"{where}.managed"
    managed = dict(check_keys(block["managed"], _MANAGED_KEYS, managed_where, {"oidc_provider_arn", "role_path"}))
    try:
        parse_oidc_provider_arn(managed["oidc_provider_arn"])
    except ValueError as e:
        raise ConfigError(f"{managed_where}.oidc_provider_arn: {e}") from None
    check_managed_role(managed, managed_where, forbidden, trusted_claims)
    return S3StsSettings(managed=managed, **common)


def trust_policy(provider_arn: str, audience: str, namespace: str, service_account: str) -> dict[str, Any]:
    """Exactly one ServiceAccount of this cluster, with this audience: exact-match conditions only."""
    _, issuer = parse_oidc_provider_arn(provider_arn)
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": [provider_arn]},
            # Ceph RGW refuses a role that carries tags (ours do) unless its trust allows
            # sts:TagSession too; session tags could only come from the token, which the
            # cluster issues without any.
            "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
            "Condition": {"StringEquals": {
                f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                f"{issuer}:aud": audience,
            }},
        }],
    }


AUDIENCE_ENV = "CLOUDIDENTITY_S3_STS_AUDIENCE"
EXPIRATION_ENV = "CLOUDIDENTITY_S3_STS_TOKEN_EXPIRATION"
"""Where a notebook finds its token's audience and lifetime, to give its Dask pods the same
(:func:`..dask.kubecluster_spec`)."""


def token_volume(audience: str, expiration: int) -> dict[str, Any]:
    """The projected token volume, as a pod spec holds it (plain Kubernetes JSON)."""
    return {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": audience, "expirationSeconds": expiration, "path": "token"}}]}}


TOKEN_MOUNT = {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": True}


def pod_settings(settings: S3StsSettings, role_arn: str, username: str) -> dict[str, Any]:
    """What the pod gets: a projected token for the store's audience and the variables with
    which boto3, s3fs and the AWS CLI assume the role at the store."""
    env = {
        "AWS_ROLE_ARN": role_arn,
        "AWS_WEB_IDENTITY_TOKEN_FILE": TOKEN_FILE,
        "AWS_ROLE_SESSION_NAME": names.role_session_name(username),
        "AWS_ENDPOINT_URL_STS": settings.sts_endpoint,
        "AWS_ENDPOINT_URL_S3": settings.endpoint,
        "AWS_DEFAULT_REGION": settings.region,  # boto3 and the CLI sign every call with one
        "AWS_REGION": settings.region,
        AUDIENCE_ENV: settings.audience,
        EXPIRATION_ENV: str(settings.token_expiration),
    }
    return {"audience": settings.audience, "expiration": settings.token_expiration, "env": env}


def plan(settings: S3StsSettings, context: Mapping[str, Any], scope: str, owner: str, namespace: str, service_account: str):
    """Return ``(annotations, CloudPlan)`` for one identity."""
    if settings.role_arn is not None:
        arn = render_role_arn(settings.role_arn, context)
        parse_role_arn(arn)
        return {ROLE_ARN_ANNOTATION: arn}, CloudPlan(provider=PROVIDER, mode="existing", identity=arn,
                             resources={"pod": pod_settings(settings, arn, context["username"])})
    managed = settings.managed
    tenant, _ = parse_oidc_provider_arn(managed["oidc_provider_arn"])
    role_name = names.iam_role_name(render(managed.get("role_name", DEFAULT_ROLE_NAME[scope]), context, raw), scope)
    path = managed["role_path"]
    arn = f"arn:aws:iam::{tenant}:role{path}{role_name}"
    parse_role_arn(arn)
    inline = managed.get("inline_policy")
    role = {
        "name": role_name,
        "path": path,
        "arn": arn,
        "trust_policy": trust_policy(managed["oidc_provider_arn"], settings.audience, namespace, service_account),
        "permissions_boundary": None,  # the store has none
        "inline_policy": None if inline is None else render_json_template(inline, context, names.resource_part),
        "policy_arns": [],
        "tags": managed_role_tags(managed, context, owner),
        "max_session_duration": managed.get("max_session_duration", 3600),
        "description": _description(managed.get("description", f"JupyterHub {context['hub']} identity for {owner}")),
    }
    return {ROLE_ARN_ANNOTATION: arn}, CloudPlan(provider=PROVIDER, mode="managed", identity=arn,
                         resources={"role": role, "pod": pod_settings(settings, arn, context["username"])})


ROLE_NAME_KIND = "store role (role names are unique in a tenant, whatever the path)"


def named_templates(settings: S3StsSettings, where: str, rule: str, scope: str) -> list[Named]:
    """The block's templates that name a role or what it reaches (:mod:`..overlap`)."""
    found = []
    if settings.role_arn is not None:
        head, _, rest = settings.role_arn.partition(":role/")
        found.append(Named(f"{where}.role_arn", rule, scope, ROLE_NAME_KIND, f"{head}:{rest[_after_last_literal_slash(rest):]}",
                           "raw", written=settings.role_arn, casefold=True))
    if settings.managed is not None:
        tenant, _ = parse_oidc_provider_arn(settings.managed["oidc_provider_arn"])
        template = settings.managed.get("role_name", DEFAULT_ROLE_NAME[scope])
        found.append(Named(f"{where}.managed.role_name", rule, scope, ROLE_NAME_KIND, f"arn:aws:iam::{tenant}:{template}",
                           "raw", scoped=True, written=template, casefold=True))
        found += [Named(f"{where}.managed.inline_policy", rule, scope, "policy value", text, "resource_part", covers=True)
                  for text in json_strings(settings.managed.get("inline_policy") or {})]
    return found
