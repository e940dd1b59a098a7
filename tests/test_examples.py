"""Every shipped example loads the way JupyterHub / z2jh loads it, and plans."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from cloudidentity_spawner import cleanup, cli, inventory, kube, token_keeper
from cloudidentity_spawner.config import identity_settings
from cloudidentity_spawner.startup import check_config
from cloudidentity_spawner.providers import gcp_iam

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


def plan_json(config_path: Path, *args: str, capsys) -> dict:
    assert cli.main(["plan", "--config", str(config_path), *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path", ["jupyterhub_config.py", "aws/jupyterhub_config.py", "gcp/jupyterhub_config.py",
                                  "azure/jupyterhub_config.py"])
def test_config_files_pass_the_startup_check(path):
    check_config(cli.load_config(str(EXAMPLES / path)))


def test_escape_example_plans_group_and_user_identities(capsys):
    claims = str(EXAMPLES / "claims/escape-iam-alice.json")
    alice = plan_json(EXAMPLES / "jupyterhub_config.py", "--user", "alice", "--claims", claims, capsys=capsys)
    assert alice["rule"] == "atlas" and alice["scope"] == "group"
    dave = plan_json(EXAMPLES / "jupyterhub_config.py", "--user", "dave", "--claims",
                     str(EXAMPLES / "claims/escape-iam-dave.json"), capsys=capsys)
    assert dave["rule"] == "escape-members" and dave["cloud"]["mode"] == "managed"


def test_escape_example_configures_the_authenticator():
    config = cli.load_config(str(EXAMPLES / "jupyterhub_config.py"))
    auth = config.GenericOAuthenticator
    assert "wlcg.groups" in auth.scope
    assert auth.username_claim == "preferred_username"
    assert auth.manage_groups and auth.enable_auth_state and auth.refresh_pre_spawn
    assert config.JupyterHub.authenticator_class == "generic-oauth"


SET_FILE = {"cloudidentity-rules": EXAMPLES / "aws/identity_rules.py"}
"""What the values file's header says to give with ``--set-file hub.extraFiles.<name>.stringData=``."""


def z2jh_config_file(tmp_path: Path, set_file: dict[str, Path] | None = None) -> Path:
    """A jupyterhub_config.py that does what z2jh's does with hub.config, the .py files of
    hub.extraFiles mounted in jupyterhub_config.d (exec'd in name order), then hub.extraConfig;
    *set_file* overrides what the values file's header says to give with ``--set-file``."""
    values = yaml.safe_load((EXAMPLES / "z2jh/values.yaml").read_text())
    set_file = {**SET_FILE, **(set_file or {})}
    lines = ["c = get_config()"]
    for section, traits in values["hub"]["config"].items():
        for trait, value in traits.items():
            lines.append(f"c.{section}.{trait} = {value!r}")
    config_d = {}
    for name, item in values["hub"].get("extraFiles", {}).items():
        directory, file_name = item["mountPath"].rsplit("/", 1)
        if directory == "/usr/local/etc/jupyterhub/jupyterhub_config.d" and file_name.endswith(".py"):
            config_d[file_name] = item.get("stringData") or set_file[name].read_text()
    for file_name in sorted(config_d):
        lines.append(f"exec(compile({config_d[file_name]!r}, {file_name!r}, 'exec'))")
    for key in sorted(values["hub"]["extraConfig"]):  # z2jh runs them in key order
        lines.append(f"exec(compile({values['hub']['extraConfig'][key]!r}, {key!r}, 'exec'))")
    path = tmp_path / "jupyterhub_config.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_z2jh_extra_config_runs_as_the_chart_runs_it_and_plans(tmp_path, capsys):
    path = z2jh_config_file(tmp_path)
    config = cli.load_config(str(path))
    check_config(config)
    assert config.JupyterHub.spawner_class == "cloudidentity"
    plan = plan_json(path, "--user", "erin", "--group", "/escape/atlas", capsys=capsys)
    assert plan["cloud"]["identity"] == "arn:aws:iam::123456789012:role/jupyterhub/escape-atlas"


def test_the_gke_overlay_with_the_google_rules_plans_google_identities(tmp_path, capsys):
    """values-gke.yaml's header: the same chart values, the Google Cloud rules file instead of the AWS one."""
    header = (EXAMPLES / "z2jh/values-gke.yaml").read_text()
    assert "--set-file hub.extraFiles.cloudidentity-rules.stringData=../gcp/identity_rules.py" in header
    path = z2jh_config_file(tmp_path, {"cloudidentity-rules": EXAMPLES / "gcp/identity_rules.py"})
    check_config(cli.load_config(str(path)))
    plan = plan_json(path, "--user", "carol", "--claims", str(EXAMPLES / "claims/keycloak-carol.json"), capsys=capsys)
    assert plan["cloud"]["provider"] == "gcp" and plan["rule"] == "staff"


def test_the_aks_overlay_with_the_azure_rules_plans_azure_identities(tmp_path, capsys):
    """values-aks.yaml's header: the same chart values, the Azure rules file instead of the AWS one."""
    overlay = yaml.safe_load((EXAMPLES / "z2jh/values-aks.yaml").read_text())
    assert overlay["hub"]["labels"] == {"azure.workload.identity/use": "true"}
    assert "--set-file hub.extraFiles.cloudidentity-rules.stringData=../azure/identity_rules.py" in (
        EXAMPLES / "z2jh/values-aks.yaml").read_text()
    path = z2jh_config_file(tmp_path, {"cloudidentity-rules": EXAMPLES / "azure/identity_rules.py"})
    check_config(cli.load_config(str(path)))
    plan = plan_json(path, "--user", "dave", "--claims", str(EXAMPLES / "claims/escape-iam-dave.json"), capsys=capsys)
    assert plan["cloud"]["provider"] == "azure" and plan["rule"] == "escape-members"


def kubernetes_verbs_the_spawner_uses() -> set[str]:
    tree = ast.parse(Path(kube.__file__).read_text())
    verbs = {"read": "get", "create": "create", "patch": "patch", "delete": "delete", "list": "list"}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.endswith("_namespaced_service_account"):
            used.add(verbs[node.attr.split("_")[0]])
    return used | {"list", "watch"}  # the ServiceAccount watch cache


verbs_of = {"read": "get", "create": "create", "patch": "patch", "delete": "delete", "list": "list", "replace": "update"}


def test_rbac_covers_every_call_the_spawner_makes():
    docs = list(yaml.safe_load_all((EXAMPLES / "z2jh/rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    granted = {verb for rule in role["rules"] if "serviceaccounts" in rule["resources"] for verb in rule["verbs"]}
    needed = kubernetes_verbs_the_spawner_uses()
    assert {"get", "create", "patch", "delete"} <= needed
    assert needed <= granted
    events = {verb for rule in role["rules"] if "events" in rule["resources"] for verb in rule["verbs"]}
    assert "create_namespaced_event" in Path(kube.__file__).read_text() and events == {"create", "list"}
    assert "list_namespaced_event" in Path(inventory.__file__).read_text()  # the admin page's latest Event
    secrets = {verb for rule in role["rules"] if "secrets" in rule["resources"] for verb in rule["verbs"]}
    calls = {m.group(1) for m in re.finditer(r"\.(\w+)_namespaced_secret\(", Path(token_keeper.__file__).read_text()
                                                                         + Path(cleanup.__file__).read_text())}
    assert calls and {verbs_of[c] for c in calls} <= secrets, (calls, secrets)  # the storage-token Secrets
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "jupyterhub"}]  # z2jh's hub account
    # The per-user accounts themselves are never bound to any role.
    assert not any("serviceaccounts" in r["resources"] and "bind" in r["verbs"] for r in role["rules"])


def test_gcp_hub_role_covers_every_call():
    role = yaml.safe_load((EXAMPLES / "gcp/hub-role.yaml").read_text())
    permissions = set(role["includedPermissions"])
    source = Path(gcp_iam.__file__).read_text()
    # Each call the backend makes (as it names them in its call log) and the permission it needs.
    needed = {
        "CreateServiceAccount": {"iam.serviceAccounts.create"},
        "GetServiceAccount": {"iam.serviceAccounts.get"},
        "ListServiceAccounts": {"iam.serviceAccounts.list"},
        "DeleteServiceAccount": {"iam.serviceAccounts.delete"},
        "{kind}.getIamPolicy": {"iam.serviceAccounts.getIamPolicy", "resourcemanager.projects.getIamPolicy"},
        "{kind}.setIamPolicy": {"iam.serviceAccounts.setIamPolicy", "resourcemanager.projects.setIamPolicy"},
        "buckets.getIamPolicy": {"storage.buckets.getIamPolicy"},
        "buckets.setIamPolicy": {"storage.buckets.setIamPolicy"},
        "managedFolders.insert": {"storage.managedFolders.create"},
        "managedFolders.list": {"storage.managedFolders.list"},
        "managedFolders.getIamPolicy": {"storage.managedFolders.getIamPolicy"},
        "managedFolders.setIamPolicy": {"storage.managedFolders.setIamPolicy"},
    }
    calls = set(re.findall(r'_call\(\s*f?"([^"]+)"', source))
    assert calls == set(needed)  # a new call needs its permission named here and in the role
    for call in calls:
        assert needed[call] <= permissions, call


def test_azure_hub_role_covers_every_call_and_the_condition_every_role_the_example_assigns():
    from cloudidentity_spawner.providers import azure_msi
    from cloudidentity_spawner.testing.azure import BUILT_IN_ROLES

    role = json.loads((EXAMPLES / "azure/hub-role.json").read_text())
    actions = set(role["Actions"])
    source = Path(azure_msi.__file__).read_text()
    identity = "Microsoft.ManagedIdentity/userAssignedIdentities"
    needed = {  # each call the backend makes (its call-log name) and the Azure action it needs
        '"GetIdentity"': f"{identity}/read", '"CreateIdentity"': f"{identity}/write", '"UpdateIdentity"': f"{identity}/write",
        '"DeleteIdentity"': f"{identity}/delete", '"ListIdentities"': f"{identity}/read",
        '"ListFederatedCredentials"': f"{identity}/federatedIdentityCredentials/read",
        '"PutFederatedCredential"': f"{identity}/federatedIdentityCredentials/write",
        '"DeleteFederatedCredential"': f"{identity}/federatedIdentityCredentials/delete",
        '"ListRoleAssignments"': "Microsoft.Authorization/roleAssignments/read",
        '"ListRoleDefinitions"': "Microsoft.Authorization/roleDefinitions/read",
        '"GetRoleAssignment"': "Microsoft.Authorization/roleAssignments/read",
        '"CreateRoleAssignment"': "Microsoft.Authorization/roleAssignments/write",
        '"DeleteRoleAssignment"': "Microsoft.Authorization/roleAssignments/delete",
    }
    called = set(re.findall(r'self\._call\(\s*("[A-Za-z]+")', source))
    assert called == set(needed), called ^ set(needed)
    assert {needed[c] for c in called} <= actions
    assert not any("*" in a for a in actions)
    # The condition lets the hub assign only the roles the example's rules name.
    rules = identity_settings(cli.load_config(str(EXAMPLES / "azure/jupyterhub_config.py"))).compiled_rules
    roles = {a["role"] for r in rules.rules if r.azure and r.azure.managed for a in r.azure.managed["role_assignments"]}
    condition = (EXAMPLES / "azure/hub-role-assignment-condition.txt").read_text()
    guids = set(re.findall(r"GuidEquals \{([0-9a-f-]+)\}", condition))
    assert guids == {BUILT_IN_ROLES[r] for r in roles} and len(re.findall("GuidEquals", condition)) == 2
    assert condition.count("PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {'ServicePrincipal'}") == 2


def test_gke_values_unblock_the_metadata_server_workload_identity_needs():
    values = yaml.safe_load((EXAMPLES / "z2jh/values-gke.yaml").read_text())
    assert values["singleuser"]["cloudMetadata"]["blockWithIptables"] is False
    assert values["singleuser"]["networkPolicy"]["egressAllowRules"]["cloudMetadataServer"] is True


def test_gcp_rules_with_the_charts_metadata_block_warn_at_start_up():
    """zero-to-jupyterhub adds the block as an init container named block-cloud-metadata."""
    from kubernetes_asyncio.client.models import V1Container
    from traitlets.config import Config

    from cloudidentity_spawner.startup import blocks_metadata_server

    c = cli.load_config(str(EXAMPLES / "gcp/jupyterhub_config.py"))
    assert not blocks_metadata_server(c)
    c.KubeSpawner.init_containers = [V1Container(name="block-cloud-metadata", image="quay.io/jupyterhub/k8s-network-tools")]
    assert blocks_metadata_server(c)
    assert not blocks_metadata_server(Config())


class GcpHub:
    """What the start-up check sees of a JupyterHub loading the GCP example config."""

    def __init__(self):
        import logging

        self.config = cli.load_config(str(EXAMPLES / "gcp/jupyterhub_config.py"))
        self.log = logging.getLogger("test-hub")

    def exit(self, code):
        raise AssertionError(f"the hub would have exited {code}")


def test_the_warning_is_logged_by_the_start_up_check(caplog):
    from kubernetes_asyncio.client.models import V1Container

    from cloudidentity_spawner.startup import check_hub

    hub = GcpHub()
    hub.config.KubeSpawner.init_containers = [V1Container(name="block-cloud-metadata")]
    check_hub(hub)
    assert any("block the cloud metadata server" in r.getMessage() and "values-gke.yaml" in r.getMessage()
               for r in caplog.records)


def test_cluster_role_for_user_namespaces_covers_every_call():
    docs = list(yaml.safe_load_all((EXAMPLES / "z2jh/rbac-user-namespaces.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    granted = {verb for rule in role["rules"] if "serviceaccounts" in rule["resources"] for verb in rule["verbs"]}
    assert kubernetes_verbs_the_spawner_uses() <= granted
    assert any("namespaces" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}


def test_gcp_waits_longer_than_the_start_timeout_warn_at_start_up(caplog):
    from cloudidentity_spawner.startup import check_hub

    hub = GcpHub()
    check_hub(hub)  # JupyterHub's default start_timeout (60 s) < 60 s + 60 s of waits
    assert any("KubeSpawner.start_timeout is 60 s" in r.getMessage() for r in caplog.records)
    caplog.clear()
    hub.config.KubeSpawner.start_timeout = 300  # zero-to-jupyterhub's
    check_hub(hub)
    assert not any("start_timeout" in r.getMessage() for r in caplog.records)


def test_a_team_made_elsewhere_does_not_get_the_experiments_role(capsys):
    """mallory's eduTEAMS team 'escape:atlas' is not ESCAPE IAM's atlas: the shipped rules give her
    her own role, not the atlas group's."""
    mallory = plan_json(EXAMPLES / "jupyterhub_config.py", "--user", "mallory", "--claims",
                        str(EXAMPLES / "claims/escape-iam-mallory.json"), capsys=capsys)
    assert mallory["rule"] == "escape-members" and mallory["scope"] == "user"
