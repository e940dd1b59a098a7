"""AWS IRSA: plan the role a ServiceAccount maps to (pure; no boto3 here).

Two modes, chosen by the rule's ``aws`` block:

* ``{"role_arn": "<template>"}`` - an existing role; we only annotate the
  ServiceAccount with ``eks.amazonaws.com/role-arn``.
* ``{"managed": {...}}`` - the hub creates the role, with a trust policy that
  names exactly this ServiceAccount and the operator's permissions boundary.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .. import names
from ..errors import ConfigError
from ..overlap import Named
from ..plan import MANAGED_BY, MANAGED_BY_LABEL, PREFIX, CloudPlan
from ..templates import SAMPLE_CONTEXT, TemplateError, raw, render
from ._common import (
    json_strings,
    check_keys,
    check_string_list,
    check_template,
    json_template_fields,
    load_json_template,
    render_json_template,
)

ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"
STS_REGIONAL_ANNOTATION = "eks.amazonaws.com/sts-regional-endpoints"
TOKEN_EXPIRATION_ANNOTATION = "eks.amazonaws.com/token-expiration"
ANNOTATIONS = (ROLE_ARN_ANNOTATION, STS_REGIONAL_ANNOTATION, TOKEN_EXPIRATION_ANNOTATION)

# A managed role's tags: the same ownership words as our ServiceAccounts' labels.
TAG_MANAGED_BY = MANAGED_BY_LABEL
TAG_HUB = PREFIX + "hub"
TAG_OWNER = PREFIX + "owner"
TAG_PERSON = PREFIX + "person"
"""A user's role: whose login it was made for (the account's ``person`` annotation)."""

_PARTITION = r"aws(?:-cn|-us-gov|-iso|-iso-[a-z]|-eusc)?"
_ROLE_ARN = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):iam::(?P<account>\d{{12}}):role(?P<path>/(?:[\x21-\x7e]*/)?)(?P<name>[\w+=,.@-]{{1,64}})",
    re.ASCII,
)
_OIDC_PROVIDER_ARN = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):iam::(?P<account>\d{{12}}):oidc-provider/(?P<issuer>[A-Za-z0-9.-]+(?:/[\x21-\x7e]+)?)",
    re.ASCII,
)
_POLICY_ARN = re.compile(rf"arn:{_PARTITION}:iam::(?:\d{{12}}|aws):policy/[\x21-\x7e]+", re.ASCII)
_ROLE_PATH = re.compile(r"/(?:[\x21-\x7e]+/)?", re.ASCII)
_TOKEN_EXPIRATION = range(600, 86401)


@dataclass(frozen=True)
class RoleArn:
    partition: str
    account: str
    path: str
    name: str


def parse_role_arn(arn: str) -> RoleArn:
    """Validate an IAM role ARN; raise ValueError saying which part is wrong."""
    match = _ROLE_ARN.fullmatch(arn)
    if not match:
        if not arn.startswith("arn:"):
            why = "it does not start with 'arn:'"
        elif not re.match(rf"arn:{_PARTITION}:", arn):
            why = "unknown partition (expected aws, aws-cn, aws-us-gov, ...)"
        elif not re.match(rf"arn:{_PARTITION}:iam::\d{{12}}:", arn):
            why = "the account id must be 12 digits, in an iam ARN (arn:aws:iam::123456789012:role/...)"
        elif ":role/" not in arn:
            why = "it is not a role ARN (expected ':role/')"
        else:
            why = "the role name must be 1-64 of [A-Za-z0-9+=,.@_-] after an optional /path/"
        raise ValueError(f"invalid IAM role ARN {arn!r}: {why}")
    if len(match["path"]) > 512:
        raise ValueError(f"invalid IAM role ARN {arn!r}: the path is longer than 512 characters")
    return RoleArn(match["partition"], match["account"], match["path"], match["name"])


def render_role_arn(template: str, context: Mapping[str, Any]) -> str:
    """An operator's role ARN from its template: the path with each value escaped (no '/', '*'),
    the role name rendered once and encoded as a whole - valid, at most 64 characters, a hash
    when it had to change (``u-{username}`` stays ``u-alice``)."""
    start = _after_last_literal_slash(template)
    return render(template[:start], context, names.resource_part) + names.iam_role_name(render(template[start:], context, raw))


def parse_oidc_provider_arn(arn: str) -> tuple[str, str, str]:
    """``(partition, account, issuer)`` of an IAM OIDC provider ARN such as
    ``arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC``."""
    match = _OIDC_PROVIDER_ARN.fullmatch(arn) if isinstance(arn, str) else None
    if not match:
        raise ValueError(
            f"invalid OIDC provider ARN {arn!r}: expected "
            "arn:aws:iam::<12-digit account>:oidc-provider/<issuer host and path>"
        )
    return match["partition"], match["account"], match["issuer"]


def trust_policy(provider_arn: str, namespace: str, service_account: str) -> dict[str, Any]:
    """The role trust policy for IRSA: exactly one ServiceAccount, exact-match conditions only."""
    _, _, issuer = parse_oidc_provider_arn(provider_arn)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                        f"{issuer}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ],
    }


def scratch_prefix_policy(bucket: str, prefix: str = "{username}") -> dict[str, Any]:
    """The per-user scratch pattern as an ``inline_policy`` template: read/write
    ``s3://<bucket>/<prefix>/*`` and list only inside that prefix.

    Listing is allowed only for ``s3:prefix`` values that start with ``<prefix>/``:
    a bare ``<prefix>`` would let user ``al`` list with ``Prefix="al"`` and see the
    key names under ``alice/``. Rendered names never contain ``/``, ``*`` or ``?``
    (see :func:`names.resource_part`), so no user's patterns reach another's prefix.

    >>> rule["aws"]["managed"]["inline_policy"] = scratch_prefix_policy("my-scratch")
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OwnPrefixObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
            },
            {
                "Sid": "ListOwnPrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/", f"{prefix}/*"]}},
            },
        ],
    }


def tag_value(value: str) -> str:
    """IAM tag values allow letters, digits, spaces and ``_.:/=+-@`` (256 max)."""
    if re.fullmatch(r"[\w .:/=+\-@]{0,256}", value):
        return value
    return names.resource_part(value)


def _description(text: str) -> str:
    """IAM role descriptions allow printable Latin-1 only, 1000 characters at most."""
    return re.sub(r"[^\t\n\r\x20-\x7e\xa1-\xff]", "?", text)[:1000]


_EXISTING_KEYS = {"role_arn", "sts_regional_endpoints", "token_expiration"}
_MANAGED_KEYS = {
    "oidc_provider_arn",
    "role_path",
    "permissions_boundary",
    "role_name",
    "inline_policy",
    "policy_arns",
    "tags",
    "max_session_duration",
    "description",
}
_MANAGED_REQUIRED = {"oidc_provider_arn", "role_path", "permissions_boundary"}
_POD_IDENTITY_KEYS = {"cluster", "role_arn", "session_policy", "tags"}
_CLUSTER_NAME = re.compile(r"[0-9A-Za-z][A-Za-z0-9_-]{0,99}")
SESSION_POLICY_LIMIT = 2048
"""EKS Pod Identity's limit on an association's session policy, in characters."""
HOSTILE_USERNAME = "ü" * 40 + "*/?${}" * 20 + "x" * 80
"""A long user name full of characters that escaping expands: the start-up check renders
session policies with it, so no real user's policy can be longer."""
DEFAULT_ROLE_NAME = {"user": "{hub}-{username}", "group": "{hub}-group-{group}", "hub": "{hub}-{rule}"}

@dataclass(frozen=True)
class AwsSettings:
    """A rule's validated ``aws`` block."""

    role_arn: str | None = None
    sts_regional_endpoints: bool | None = None
    token_expiration: int | None = None
    managed: Mapping[str, Any] | None = None
    pod_identity: Mapping[str, Any] | None = None

    @property
    def mode(self) -> str:
        """``existing`` (an operator's role), ``managed`` (a role per identity) or ``pod_identity``."""
        return "managed" if self.managed is not None else "pod_identity" if self.pod_identity is not None else "existing"

    @property
    def hub_made(self) -> bool:
        return self.mode != "existing"


def parse(block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str] = ()) -> AwsSettings:
    """Validate a rule's ``aws`` block at start-up (ConfigError names *where* and the key).

    Claims in its templates must be among *trusted_claims*: every one of them decides an identity."""
    check_keys(block, _EXISTING_KEYS | {"managed", "pod_identity"}, where)
    if "pod_identity" in block:
        if set(block) != {"pod_identity"}:
            raise ConfigError(f"{where}: 'pod_identity' takes no other aws key (no IRSA annotation is set)")
        return AwsSettings(pod_identity=_parse_pod_identity(block["pod_identity"], f"{where}.pod_identity", forbidden, trusted_claims))
    if ("managed" in block) == ("role_arn" in block):
        raise ConfigError(
            f"{where}: give exactly one of 'role_arn' (an existing role), 'managed' (the hub creates it) "
            "or 'pod_identity' (an EKS Pod Identity association)"
        )
    sts = block.get("sts_regional_endpoints")
    if sts is not None and not isinstance(sts, bool):
        raise ConfigError(f"{where}.sts_regional_endpoints: expected true or false, got {sts!r}")
    expiration = block.get("token_expiration")
    if expiration is not None and (isinstance(expiration, bool) or expiration not in _TOKEN_EXPIRATION):
        raise ConfigError(f"{where}.token_expiration: expected seconds between 600 and 86400, got {expiration!r}")
    if "role_arn" in block:
        template = check_template(block["role_arn"], f"{where}.role_arn", forbidden, trusted_claims)
        try:
            parse_role_arn(render_role_arn(template, SAMPLE_CONTEXT))
        except (ValueError, TemplateError) as e:
            raise ConfigError(f"{where}.role_arn: {e}") from None
        return AwsSettings(role_arn=template, sts_regional_endpoints=sts, token_expiration=expiration)

    managed_where = f"{where}.managed"
    managed = dict(check_keys(block["managed"], _MANAGED_KEYS, managed_where, _MANAGED_REQUIRED))
    try:
        parse_oidc_provider_arn(managed["oidc_provider_arn"])
    except ValueError as e:
        raise ConfigError(f"{managed_where}.oidc_provider_arn: {e}") from None
    boundary = managed["permissions_boundary"]
    if not isinstance(boundary, str) or not _POLICY_ARN.fullmatch(boundary):
        raise ConfigError(
            f"{managed_where}.permissions_boundary: expected a managed policy ARN "
            f"(arn:aws:iam::123456789012:policy/...), got {boundary!r}; managed roles always carry a boundary"
        )
    for index, arn in enumerate(check_string_list(managed.get("policy_arns", []), f"{managed_where}.policy_arns")):
        if not _POLICY_ARN.fullmatch(arn):
            raise ConfigError(f"{managed_where}.policy_arns[{index}]: invalid managed policy ARN {arn!r}")
    check_managed_role(managed, managed_where, forbidden, trusted_claims)
    return AwsSettings(sts_regional_endpoints=sts, token_expiration=expiration, managed=managed)


def check_managed_role(managed: dict[str, Any], where: str, forbidden: set[str], trusted_claims: Collection[str]) -> None:
    """Validate what a hub-made role's block shares with an object store's (:mod:`.s3_sts`): its
    path, name template, inline policy (loaded in place), tags and session duration."""
    path = managed["role_path"]
    if not isinstance(path, str) or not _ROLE_PATH.fullmatch(path) or len(path) > 512:
        raise ConfigError(f"{where}.role_path: expected a path like '/jupyterhub/myhub/' (starts and ends with '/'), got {path!r}")
    if "role_name" in managed:
        check_template(managed["role_name"], f"{where}.role_name", forbidden, trusted_claims)
    if "inline_policy" in managed:
        managed["inline_policy"] = load_json_template(managed["inline_policy"], f"{where}.inline_policy")
        json_template_fields(managed["inline_policy"], f"{where}.inline_policy", forbidden, trusted_claims)
    tags = managed.get("tags", {})
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ConfigError(f"{where}.tags: expected a mapping of strings to strings")
    duration = managed.get("max_session_duration", 3600)
    if isinstance(duration, bool) or duration not in range(3600, 43201):
        raise ConfigError(f"{where}.max_session_duration: expected seconds between 3600 and 43200, got {duration!r}")


def managed_role_tags(managed: Mapping[str, Any], context: Mapping[str, Any], owner: str) -> dict[str, str]:
    """A hub-made role's tags: the operator's, then the ownership markers (which win)."""
    return {
        **managed.get("tags", {}),
        TAG_MANAGED_BY: MANAGED_BY,
        TAG_HUB: tag_value(context["hub"]),
        TAG_OWNER: tag_value(owner),
        **({TAG_PERSON: context["person"]} if context.get("person") else {}),
    }


def _parse_pod_identity(block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str]) -> dict[str, Any]:
    settings = dict(check_keys(block, _POD_IDENTITY_KEYS, where, {"cluster", "role_arn"}))
    if not isinstance(settings["cluster"], str) or not _CLUSTER_NAME.fullmatch(settings["cluster"]):
        raise ConfigError(f"{where}.cluster: expected an EKS cluster name (1-100 of [A-Za-z0-9_-]), got {settings['cluster']!r}")
    template = check_template(settings["role_arn"], f"{where}.role_arn", forbidden, trusted_claims)
    try:
        parse_role_arn(render_role_arn(template, SAMPLE_CONTEXT))
    except (ValueError, TemplateError) as e:
        raise ConfigError(f"{where}.role_arn: {e}") from None
    if "session_policy" in settings:
        policy = settings["session_policy"] = load_json_template(settings["session_policy"], f"{where}.session_policy")
        json_template_fields(policy, f"{where}.session_policy", forbidden, trusted_claims)
        hostile = {**SAMPLE_CONTEXT, "username": HOSTILE_USERNAME, "safe_username": names.ksa_name(HOSTILE_USERNAME),
                   "group": HOSTILE_USERNAME, "safe_group": names.ksa_name(HOSTILE_USERNAME)}
        longest = session_policy_text(render_json_template(policy, hostile, names.resource_part))
        if len(longest) > SESSION_POLICY_LIMIT:
            raise ConfigError(
                f"{where}.session_policy: rendered for a long user name it has {len(longest)} characters; EKS allows "
                f"{SESSION_POLICY_LIMIT} in a Pod Identity session policy. Shorten it, or leave it out and scope users "
                "in the role's own policy with pod_identity_tag_policy()"
            )
    tags = settings.get("tags", {})
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ConfigError(f"{where}.tags: expected a mapping of strings to strings")
    return settings


def session_policy_text(policy: Any) -> str:
    """A session policy as EKS stores it: compact JSON (its length is what the limit counts)."""
    return json.dumps(policy, separators=(",", ":"))


def pod_identity_tag_policy(bucket: str) -> dict[str, Any]:
    """The role policy for the shared Pod Identity role *without* session policies: EKS tags
    each session with the pod's ``kubernetes-namespace`` and ``kubernetes-service-account``,
    and this policy lets a session reach only ``s3://<bucket>/<namespace>/<service account>/``
    (and list only inside it). Attach it to the role yourself; the hub does not edit the role.

    Choose this (session tags) when one role policy should scope everyone and the prefix may be
    the ServiceAccount's name; choose ``session_policy`` when the scope needs the user name, a
    group or claims, or other services than S3 (it is limited to 2,048 characters and turns
    session tags off).
    """
    own = "${aws:PrincipalTag/kubernetes-namespace}/${aws:PrincipalTag/kubernetes-service-account}"
    return scratch_prefix_policy(bucket, prefix=own)


def association_key(cluster: str, namespace: str, service_account: str) -> str:
    """How a ServiceAccount records the association the hub made for it (``eks:`` + this)."""
    return f"{cluster}/{namespace}/{service_account}"


def plan(settings: AwsSettings, context: Mapping[str, Any], scope: str, owner: str, namespace: str, service_account: str):
    """Return ``(annotations, CloudPlan)`` for one identity. Raises TemplateError/ValueError on bad input."""
    annotations: dict[str, str] = {}
    if settings.pod_identity is not None:
        block = settings.pod_identity
        arn = render_role_arn(block["role_arn"], context)
        parse_role_arn(arn)
        association = {
            "clusterName": block["cluster"],
            "namespace": namespace,
            "serviceAccount": service_account,
            "roleArn": arn,
            "disableSessionTags": "session_policy" in block,
            "policy": None,
            "tags": {**block.get("tags", {}), TAG_MANAGED_BY: MANAGED_BY, TAG_HUB: tag_value(context["hub"]),
                     TAG_OWNER: tag_value(owner)},
        }
        if "session_policy" in block:
            association["policy"] = session_policy_text(render_json_template(block["session_policy"], context, names.resource_part))
            if len(association["policy"]) > SESSION_POLICY_LIMIT:
                raise ValueError(f"the session policy has {len(association['policy'])} characters; EKS allows {SESSION_POLICY_LIMIT}")
        return annotations, CloudPlan(provider="aws", mode="pod_identity", identity=arn, resources={"association": association})
    if settings.sts_regional_endpoints is not None:
        annotations[STS_REGIONAL_ANNOTATION] = "true" if settings.sts_regional_endpoints else "false"
    if settings.token_expiration is not None:
        annotations[TOKEN_EXPIRATION_ANNOTATION] = str(settings.token_expiration)

    if settings.role_arn is not None:
        arn = render_role_arn(settings.role_arn, context)
        parse_role_arn(arn)
        annotations[ROLE_ARN_ANNOTATION] = arn
        return annotations, CloudPlan(provider="aws", mode="existing", identity=arn)

    managed = settings.managed
    partition, account, _ = parse_oidc_provider_arn(managed["oidc_provider_arn"])
    role_name = names.iam_role_name(render(managed.get("role_name", DEFAULT_ROLE_NAME[scope]), context, raw), scope)
    path = managed["role_path"]
    arn = f"arn:{partition}:iam::{account}:role{path}{role_name}"
    parse_role_arn(arn)
    tags = managed_role_tags(managed, context, owner)
    inline = managed.get("inline_policy")
    resources = {
        "role": {
            "name": role_name,
            "path": path,
            "arn": arn,
            "trust_policy": trust_policy(managed["oidc_provider_arn"], namespace, service_account),
            "permissions_boundary": managed["permissions_boundary"],
            "inline_policy": None if inline is None else render_json_template(inline, context, names.resource_part),
            "policy_arns": list(managed.get("policy_arns", [])),
            "tags": tags,
            "max_session_duration": managed.get("max_session_duration", 3600),
            "description": _description(managed.get("description", f"JupyterHub {context['hub']} identity for {owner}")),
        }
    }
    annotations[ROLE_ARN_ANNOTATION] = arn
    return annotations, CloudPlan(provider="aws", mode="managed", identity=arn, resources=resources)


ROLE_NAME_KIND = "IAM role (role names are unique in an account, whatever the path)"


def named_templates(settings: AwsSettings, where: str, rule: str, scope: str) -> list[Named]:
    """The block's templates that name an identity or what it reaches, for the start-up check
    that no two rules can name the same one for different owners (:mod:`..overlap`). IAM role
    names are unique in an account whatever their path, so roles compare as ``<account>:<name>``."""
    found = []
    for key, arn in (("role_arn", settings.role_arn), ("pod_identity.role_arn", (settings.pod_identity or {}).get("role_arn"))):
        if arn is not None and ":role/" in arn:
            head, _, rest = arn.partition(":role/")
            name_start = _after_last_literal_slash(rest)
            found.append(Named(f"{where}.{key}", rule, scope, ROLE_NAME_KIND, f"{head}:{rest[name_start:]}",
                               "raw", written=arn, casefold=True))
    if settings.managed is not None:
        partition, account, _ = parse_oidc_provider_arn(settings.managed["oidc_provider_arn"])
        template = settings.managed.get("role_name", DEFAULT_ROLE_NAME[scope])
        found.append(Named(f"{where}.managed.role_name", rule, scope, ROLE_NAME_KIND,
                           f"arn:{partition}:iam::{account}:{template}", "raw", scoped=True, written=template, casefold=True))
        found += [Named(f"{where}.managed.inline_policy", rule, scope, "policy value", text, "resource_part", covers=True)
                  for text in json_strings(settings.managed.get("inline_policy") or {})]
    if settings.pod_identity is not None:
        found += [Named(f"{where}.pod_identity.session_policy", rule, scope, "policy value", text, "resource_part",
                        covers=True) for text in json_strings(settings.pod_identity.get("session_policy") or {})]
    return found


def _after_last_literal_slash(template: str) -> int:
    """Where the text after the last ``/`` outside ``{fields}`` starts (0 if there is none)."""
    position, start = 0, 0
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if "/" in literal:
            start = position + literal.rindex("/") + 1
        position += len(literal) + (0 if field is None else len(field) + 2)
    return start
