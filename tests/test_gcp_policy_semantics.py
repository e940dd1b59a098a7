"""The GCP hub cannot grant itself more than its rules need: the shipped condition on the hub's
own role, evaluated in CEL the way IAM evaluates it for a setIamPolicy request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudidentity_spawner import cli
from cloudidentity_spawner.claims import Claims
from cloudidentity_spawner.config import identity_settings
from cloudidentity_spawner.errors import ConfigError
from cloudidentity_spawner.providers.gcp import hub_grant_condition, roles_the_hub_grants
from cloudidentity_spawner.rules import IdentityRules

pytest.importorskip("celpy", reason="cel-python is a test dependency")

from cloudidentity_spawner.testing.iam_conditions import condition_holds  # noqa: E402

GCP_EXAMPLES = Path(__file__).parent.parent / "examples" / "gcp"
PROJECT_RESOURCE = {"name": "//cloudresourcemanager.googleapis.com/projects/my-lab-project",
                    "type": "cloudresourcemanager.googleapis.com/Project"}
GRANTS = "iam.googleapis.com/modifiedGrantsByRole"


def example_rules():
    return identity_settings(cli.load_config(str(GCP_EXAMPLES / "jupyterhub_config.py"))).compiled_rules


def shipped_condition() -> dict:
    return json.loads((GCP_EXAMPLES / "hub-grant-condition.json").read_text())


def allows_setting(roles: list[str]) -> bool:
    return condition_holds(shipped_condition()["expression"], PROJECT_RESOURCE, {GRANTS: roles})


def test_shipped_condition_is_the_one_the_example_rules_need(capsys):
    assert shipped_condition() == hub_grant_condition(example_rules())
    assert cli.main(["gcp-hub-condition", "--config", str(GCP_EXAMPLES / "jupyterhub_config.py")]) == 0
    assert json.loads(capsys.readouterr().out) == shipped_condition()


@pytest.mark.parametrize("roles", [["roles/owner"], ["roles/storage.admin"], ["roles/iam.serviceAccountTokenCreator"],
                                   ["roles/storage.objectUser", "roles/resourcemanager.projectIamAdmin"]])
def test_the_hub_cannot_grant_a_role_its_rules_do_not_name(roles):
    assert not allows_setting(roles)


def test_the_hub_can_grant_every_role_it_plans():
    rules = example_rules()
    planned = set()
    for rule in rules.rules:
        if rule.gcp is not None and rule.gcp.managed is not None:
            plan = rules.resolve(Claims("carol", tuple(g.replace("*", "x") for g in rule.groups[:1])), "jupyterhub",
                                 rule_name=rule.name)
            planned |= {b["role"] for b in plan.cloud.resources["bindings"]}
    assert "roles/iam.workloadIdentityUser" in planned
    assert planned == set(roles_the_hub_grants(rules))
    assert allows_setting(sorted(planned))
    for role in planned:
        assert allows_setting([role])


def test_requests_that_grant_nothing_are_not_limited():
    """getIamPolicy, serviceAccounts.create, ... carry no modifiedGrantsByRole: the default [] passes."""
    assert condition_holds(shipped_condition()["expression"], PROJECT_RESOURCE, {})


def test_more_roles_than_one_condition_can_list_is_a_start_up_error():
    many = [{"name": f"r{i}", "match": {"users": [f"u{i}"]},
             "gcp": {"managed": {"project": "my-lab-project", "project_roles": [f"roles/custom.r{i}"]}}}
            for i in range(10)]
    with pytest.raises(ConfigError, match="at most 10"):
        hub_grant_condition(IdentityRules.from_config(many))


@pytest.mark.parametrize("role", ["roles/storage.admin", "roles/owner", "roles/editor", "roles/resourcemanager.projectIamAdmin"])
def test_a_role_that_can_change_policies_is_refused_in_the_grant_limit(role):
    """Google: a grant limit listing a role with setIamPolicy permissions bounds nothing."""
    rule = [{"name": "r", "match": {}, "gcp": {"managed": {"project": "my-lab-project", "project_roles": [role]}}}]
    with pytest.raises(ConfigError, match="can itself change IAM policies"):
        hub_grant_condition(IdentityRules.from_config(rule))


@pytest.mark.parametrize("prefix", ["{username}/", "/{username}", "a//{username}"])
def test_a_prefix_that_makes_no_folder_name_fails_at_start_up(prefix):
    rule = [{"name": "r", "match": {}, "gcp": {"managed": {"project": "my-lab-project", "bucket_roles": [
        {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": prefix}]}}}]
    with pytest.raises(ConfigError, match=r"bucket_roles\[0\].prefix"):
        IdentityRules.from_config(rule)
