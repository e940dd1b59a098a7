"""Check IAM policy documents against AWS's own service authorization data.

moto evaluates Allow/Deny and resources, but not which condition keys an action
carries: in real AWS a condition on a key the action does not carry never
matches, so an Allow with it never applies. parliament ships AWS's table of
actions, resource types and condition keys and reports such keys as
``UNKNOWN_CONDITION_FOR_ACTION``; :func:`problems` runs it over a document and
returns every finding, so a test fails on any of them.

Role trust policies are resource policies (a Principal, no Resource), which
parliament does not lint; their statements are checked as the equivalent
identity statement on the role, after the OIDC provider's own keys
(``<issuer>:aud``, ``:sub``, ``:amr``, which AWS documents for web identity
federation but does not list per action) are checked against the statement's
``Federated`` principal.
"""

from __future__ import annotations

import json
from typing import Any

from parliament import analyze_policy_string

OIDC_PROVIDER_KEYS = {"aud", "sub", "amr"}
"""Keys an IAM OIDC identity provider adds to sts:AssumeRoleWithWebIdentity."""


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


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
    """Every finding parliament (AWS's action and condition-key data) reports for *document*."""
    out: list[str] = []
    statements = [
        _as_identity_statement(s, out) if "Principal" in s else s for s in _listify(document["Statement"])
    ]
    analysed = analyze_policy_string(json.dumps({"Version": document.get("Version", "2012-10-17"), "Statement": statements}))
    out += sorted({f"{f.issue}: {f.detail}" for f in analysed.findings})
    return out
