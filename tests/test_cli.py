"""`cloudidentity-spawner plan` on the shipped examples, as an operator runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


def run_plan(*args):
    exe = shutil.which("cloudidentity-spawner", path=os.path.dirname(sys.executable))
    assert exe, "the console script is installed with the package"
    return subprocess.run([exe, "plan", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_aws_example_group_rule():
    out = run_plan(
        "--config", str(EXAMPLES / "aws/jupyterhub_config.py"), "--user", "alice",
        "--claims", str(EXAMPLES / "claims/escape-iam-alice.json"), "--json",
    )
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["rule"] == "atlas"
    assert plan["scope"] == "group"
    assert plan["service_account"]["namespace"] == "jupyterhub"
    assert plan["service_account"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/jupyterhub/escape-atlas"
    )
    assert plan["cloud"] == {
        "provider": "aws",
        "mode": "existing",
        "identity": "arn:aws:iam::123456789012:role/jupyterhub/escape-atlas",
    }


def test_aws_example_managed_role_shows_what_would_be_created():
    out = run_plan(
        "--config", str(EXAMPLES / "aws/jupyterhub_config.py"), "--user", "dave",
        "--claims", str(EXAMPLES / "claims/escape-iam-dave.json"), "--json",
    )
    assert out.returncode == 0, out.stderr
    role = json.loads(out.stdout)["cloud"]["role"]
    assert role["path"] == "/jupyterhub/escape-hub/"
    assert role["permissions_boundary"].endswith(":policy/jupyterhub-user-boundary")
    assert role["inline_policy"]["Statement"][0]["Resource"] == "arn:aws:s3:::escape-scratch/dave/*"
    condition = role["trust_policy"]["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:jupyterhub:jupyter-dave" in condition.values()


def test_gcp_example_managed_account_and_bindings():
    out = run_plan(
        "--config", str(EXAMPLES / "gcp/jupyterhub_config.py"), "--user", "carol",
        "--claims", str(EXAMPLES / "claims/keycloak-carol.json"), "--json",
    )
    assert out.returncode == 0, out.stderr
    cloud = json.loads(out.stdout)["cloud"]
    assert cloud["service_account"]["email"] == "jh-carol@my-lab-project.iam.gserviceaccount.com"
    members = {b["member"] for b in cloud["bindings"]}
    assert "serviceAccount:my-lab-project.svc.id.goog[jupyterhub/jupyter-carol]" in members


def test_gcp_example_group_from_command_line_and_namespace_override():
    out = run_plan(
        "--config", str(EXAMPLES / "gcp/jupyterhub_config.py"), "--user", "gus",
        "--group", "/labs/genomics", "--namespace", "lab", "--json",
    )
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["rule"] == "genomics"
    assert plan["service_account"]["namespace"] == "lab"


def test_human_readable_output():
    out = run_plan(
        "--config", str(EXAMPLES / "aws/jupyterhub_config.py"), "--user", "dave", "--group", "/escape",
    )
    assert out.returncode == 0, out.stderr
    assert "rule:            escape-members (scope: user" in out.stdout
    assert "would create:" in out.stdout


def test_no_matching_rule_exits_1_with_one_line():
    out = run_plan("--config", str(EXAMPLES / "aws/jupyterhub_config.py"), "--user", "bob")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert "no identity rule matches user 'bob'" in out.stderr


@pytest.mark.parametrize(
    "config,fragment",
    [
        ('c.CloudIdentitySpawner.identity_rules = [{"name": "x", "match": {}, "scope": "team"}]', "identity_rules[0] ('x').scope"),
        ("c.CloudIdentitySpawner.identity_rules = 'everyone'", "expected a list"),
        ("this is not python", "cannot load"),
    ],
)
def test_bad_config_exits_1_with_one_line(tmp_path, config, fragment):
    path = tmp_path / "jupyterhub_config.py"
    path.write_text("c = get_config()\n" + config + "\n")
    out = run_plan("--config", str(path), "--user", "alice")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1, out.stderr
    assert fragment in out.stderr


def test_missing_config_file(tmp_path):
    out = run_plan("--config", str(tmp_path / "nope.py"), "--user", "alice")
    assert out.returncode == 1
    assert "not found" in out.stderr


def test_json_output_is_only_the_plan_even_when_the_config_prints(tmp_path):
    """zero-to-jupyterhub's own jupyterhub_config.py prints "Loading ..." lines."""
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "c = get_config()\nprint('Loading /usr/local/etc/jupyterhub/secret/values.yaml')\n"
        "c.CloudIdentitySpawner.identity_rules = [{'name': 'everyone', 'match': {}}]\n"
    )
    out = run_plan("--config", str(config), "--user", "alice", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rule"] == "everyone"
    assert "Loading /usr/local/etc/jupyterhub/secret/values.yaml" in out.stderr


def test_plan_shows_what_an_admin_and_a_role_get(tmp_path):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "c = get_config()\n"
        "c.CloudIdentitySpawner.identity_rules = [{'name': 'admins', 'match': {'admin': True}, 'scope': 'hub'},\n"
        "    {'name': 'instructors', 'match': {'roles': ['instructor*']}, 'scope': 'hub'},\n"
        "    {'name': 'everyone', 'match': {}}]\n"
    )
    plans = {args: json.loads(run_plan("--config", str(config), "--user", "ann", "--json", *args).stdout)["rule"]
             for args in [(), ("--admin",), ("--role", "instructor-fall")]}
    assert plans == {(): "everyone", ("--admin",): "admins", ("--role", "instructor-fall"): "instructors"}
