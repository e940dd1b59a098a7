"""The shipped AWS policies: in sync with the code, and covering every IAM call the hub makes."""

import ast
import json
import re
from pathlib import Path

from cloudidentity_spawner.providers import aws_iam
from cloudidentity_spawner.providers.aws import scratch_prefix_policy
from cloudidentity_spawner.rules import IdentityRules

EXAMPLES = Path(__file__).parent.parent / "examples" / "aws"


def iam_calls_made_by_the_hub() -> set[str]:
    tree = ast.parse(Path(aws_iam.__file__).read_text())
    calls = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "_call"
        and node.args and isinstance(node.args[0], ast.Constant)
    }
    assert "CreateRole" in calls and "DeleteRole" in calls
    return calls | {"GetRole"}  # the role_exists waiter polls GetRole


def test_hub_policy_allows_every_call_and_only_under_the_path_with_the_boundary():
    policy = json.loads((EXAMPLES / "hub-iam-policy.json").read_text())
    allowed = {a.removeprefix("iam:") for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    assert iam_calls_made_by_the_hub() <= allowed
    for statement in policy["Statement"]:
        if statement["Effect"] == "Allow":
            assert re.fullmatch(r"arn:aws:iam::\d{12}:role/jupyterhub/[\w-]+/\*", statement["Resource"])
        writes = {"CreateRole", "PutRolePolicy", "AttachRolePolicy", "DeleteRole"}
        if statement["Effect"] == "Allow" and writes & {a.removeprefix("iam:") for a in statement["Action"]}:
            assert "iam:PermissionsBoundary" in statement["Condition"]["StringEquals"]
    denied = {a for s in policy["Statement"] if s["Effect"] == "Deny" for a in s["Action"]}
    assert "iam:DeleteRolePermissionsBoundary" in denied


def test_scratch_policy_file_matches_the_shipped_template_and_is_a_valid_rule():
    document = json.loads((EXAMPLES / "scratch-prefix-policy.json").read_text())
    assert document == scratch_prefix_policy("escape-scratch")
    rules = IdentityRules.from_config([{
        "match": {},
        "aws": {"managed": {
            "oidc_provider_arn": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/X",
            "role_path": "/jupyterhub/escape-hub/",
            "permissions_boundary": "arn:aws:iam::123456789012:policy/jupyterhub-user-boundary",
            "inline_policy": (EXAMPLES / "scratch-prefix-policy.json").read_text(),
        }},
    }])
    from cloudidentity_spawner.claims import Claims

    plan = rules.resolve(Claims("alice", ()), "jupyterhub")
    assert plan.cloud.resources["role"]["inline_policy"]["Statement"][0]["Resource"] == "arn:aws:s3:::escape-scratch/alice/*"


def test_boundary_policy_denies_iam():
    policy = json.loads((EXAMPLES / "boundary-policy.json").read_text())
    assert any(s["Effect"] == "Deny" and "iam:*" in s["Action"] for s in policy["Statement"])
