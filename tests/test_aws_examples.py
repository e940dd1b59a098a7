"""The shipped AWS policy files: in sync with the code (their semantics: test_aws_policy_semantics)."""

import json
from pathlib import Path

from cloudidentity_spawner.providers.aws import scratch_prefix_policy
from cloudidentity_spawner.rules import IdentityRules

EXAMPLES = Path(__file__).parent.parent / "examples" / "aws"


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
