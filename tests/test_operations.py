"""`status` and `gc` as an operator runs them: the command, a hub database JupyterHub made,
the Kubernetes emulator and moto. Users spawn through the real spawn path first."""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3", reason="the aws extra is not installed")

from botocore.exceptions import ClientError  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from jupyterhub import orm  # noqa: E402
from kubernetes_asyncio import client, config  # noqa: E402

from cloudidentity_spawner import CloudIdentitySpawner  # noqa: E402
from cloudidentity_spawner.cleanup import Action, apply, cleanup_actions  # noqa: E402
from cloudidentity_spawner.config import identity_settings  # noqa: E402
from cloudidentity_spawner.errors import NoMatchingRule  # noqa: E402
from cloudidentity_spawner.hubusers import HubDatabase  # noqa: E402
from cloudidentity_spawner.inventory import Account, Entry, Survey, judge, survey  # noqa: E402
from cloudidentity_spawner.kube import ServiceAccounts  # noqa: E402
from cloudidentity_spawner.providers import _backends  # noqa: E402
from cloudidentity_spawner.rules import IdentityRules  # noqa: E402

from .kubehelpers import (  # noqa: E402
    SpawnUser, another_namespace, delete_service_account, make_spawner, oidc_state, read, run_gc, spawner_config,
)
from .test_aws import BOUNDARY, PROVIDER_ARN, SCRATCH_POLICY, policies  # noqa: E402,F401

ROOT = Path(__file__).parent.parent


def members_rule(hub: str) -> dict:
    return {"name": "members", "match": {"groups": ["/escape"]},
            "aws": {"managed": {"oidc_provider_arn": PROVIDER_ARN, "role_path": f"/jupyterhub/{hub}/",
                                "permissions_boundary": BOUNDARY, "inline_policy": SCRATCH_POLICY}}}


STAFF_RULE = {"name": "staff", "match": {"groups": ["/escape/staff"]}, "scope": "group",
              "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/escape-staff"}}


def write_config(path: Path, namespace: str, hub: str, moto: str, db: Path, rules: list[dict]) -> Path:
    path.write_text(
        f"c.JupyterHub.db_url = {f'sqlite:///{db}'!r}\n"
        "c.JupyterHub.spawner_class = 'cloudidentity'\n"
        f"c.KubeSpawner.namespace = {namespace!r}\n"
        f"c.CloudIdentitySpawner.hub_name = {hub!r}\n"
        f"c.CloudIdentitySpawner.aws_client_kwargs = {{'endpoint_url': {moto!r}, 'region_name': 'us-east-1'}}\n"
        f"c.CloudIdentitySpawner.identity_rules = {rules!r}\n"
    )
    return path


CRYPT_KEY = os.urandom(32).hex()


def sealed(auth_state: dict) -> bytes:
    """auth_state as JupyterHub stores it: JSON, Fernet-encrypted with JUPYTERHUB_CRYPT_KEY."""
    key = base64.urlsafe_b64encode(bytes.fromhex(CRYPT_KEY))
    return Fernet(key).encrypt(json.dumps(auth_state).encode())


def hub_database(path: Path, members: dict[str, list[str]]) -> None:
    """A hub database as JupyterHub makes it (its own schema), with these users, their stored
    logins (the provider's groups) and the same JupyterHub groups."""
    db = orm.new_session_factory(f"sqlite:///{path}")()
    groups: dict[str, orm.Group] = {}
    for name, user_groups in members.items():
        user = orm.User(name=name, encrypted_auth_state=sealed(oidc_state(**{"wlcg.groups": user_groups})))
        db.add(user)
        for g in user_groups:
            if g not in groups:
                groups[g] = orm.Group(name=g)
                db.add(groups[g])
            groups[g].users.append(user)
    db.commit()
    db.close()


def drop_user(path: Path, name: str) -> None:
    db = orm.new_session_factory(f"sqlite:///{path}")()
    db.delete(db.query(orm.User).filter_by(name=name).one())
    db.commit()
    db.close()


def command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("cloudidentity-spawner", path=os.path.dirname(sys.executable))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}, **(env or {})}
    env["JUPYTERHUB_CRYPT_KEY"] = CRYPT_KEY
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)


async def spawn(namespace, moto, hub, user, groups, rules):
    c = spawner_config(namespace, rules, hub_name=hub, aws_role_propagation_seconds=0,
                       aws_client_kwargs={"endpoint_url": moto, "region_name": "us-east-1"})
    spawner = make_spawner(CloudIdentitySpawner, c, SpawnUser(user, oidc_state(**{"wlcg.groups": groups})))
    await spawner.start()
    await spawner.stop()


def role_exists(moto, name: str) -> bool:
    try:
        boto3.client("iam", endpoint_url=moto, region_name="us-east-1").get_role(RoleName=name)
    except ClientError:
        return False
    return True


@pytest.fixture
def hub(policies):  # noqa: F811
    _backends.clear()
    return "ops" + uuid.uuid4().hex[:6]


async def test_status_and_gc_after_a_user_left_while_the_hub_was_down_and_a_rule_change(
        namespace, moto_endpoint, hub, tmp_path):
    db = tmp_path / "jupyterhub.sqlite"
    hub_database(db, {"alice": ["/escape"], "dave": ["/escape"], "erin": ["/escape", "/escape/staff"], "frank": ["/escape"]})
    rules = [members_rule(hub)]
    for user in ("alice", "dave", "erin", "frank"):
        await spawn(namespace, moto_endpoint, hub, user, ["/escape"] + (["/escape/staff"] if user == "erin" else []), rules)
    # frank's account is deleted by hand (kubectl delete sa): his role stays behind, recorded nowhere.
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).delete_namespaced_service_account("jupyter-frank", namespace)
    # While the hub was down, dave was removed from its database; then the rules changed:
    # staff now share a group role, so erin's own account and managed role are no longer planned.
    drop_user(db, "dave")
    cfg = write_config(tmp_path / "jupyterhub_config.py", namespace, hub, moto_endpoint, db, [STAFF_RULE, members_rule(hub)])

    out = command("status", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_account = {a["service_account"]: a for a in report["accounts"]}
    assert set(by_account) == {f"{namespace}/jupyter-{u}" for u in ("alice", "dave", "erin")}
    alice, dave, erin = (by_account[f"{namespace}/jupyter-{u}"] for u in ("alice", "dave", "erin"))
    assert (alice["state"], alice["rule"], alice["owner"]) == ("ok", "members", "user:alice")
    assert alice["identity"] == f"aws:arn:aws:iam::123456789012:role/jupyterhub/{hub}/{hub}-alice"
    assert dave["state"] == "orphaned" and dave["problems"] == ["user dave is no longer on the hub"]
    assert erin["state"] == "orphaned" and erin["problems"] == ["rule 'members' no longer applies to erin (rule 'staff' does)"]
    assert report["counts"] == {"ok": 1, "drift": 0, "orphaned": 2, "unknown": 0}

    human = command("status", "--config", str(cfg))
    assert human.returncode == 0, human.stderr
    assert "3 ServiceAccounts of this hub (all namespaces): 1 ok, 0 drift, 2 orphaned, 0 unknown" in human.stdout
    assert "- user dave is no longer on the hub" in human.stdout

    dry = command("gc", "--config", str(cfg), "--min-age", "0")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete: ServiceAccount {namespace}/jupyter-dave and arn:aws:iam::123456789012:role/jupyterhub/{hub}/{hub}-dave: " \
           "user dave is no longer on the hub" in dry.stdout
    assert f"would delete: arn:aws:iam::123456789012:role/jupyterhub/{hub}/{hub}-frank: made by this hub; " \
           "no ServiceAccount records it" in dry.stdout
    assert "3 to clean up; nothing was changed (dry run)" in dry.stdout
    assert all(role_exists(moto_endpoint, f"{hub}-{u}") for u in ("dave", "erin", "frank"))
    assert await read("serviceaccount", namespace, "jupyter-dave") is not None

    # A role the operator made under the same path, tagged as someone else's: never touched.
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    iam.create_role(RoleName=f"{hub}-operator", Path=f"/jupyterhub/{hub}/", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": []}), Tags=[{"Key": "cloudidentity-spawner/hub", "Value": "another-hub"},
                                                            {"Key": "app.kubernetes.io/managed-by", "Value": "cloudidentity-spawner"}])
    done = command("gc", "--config", str(cfg), "--min-age", "0", "--apply", "--json")
    assert done.returncode == 0, done.stderr
    actions = json.loads(done.stdout)["actions"]
    assert sorted((a["action"], a["identity"].rsplit("/", 1)[1], a["done"]) for a in actions) == [
        ("delete-account", f"{hub}-dave", True), ("delete-account", f"{hub}-erin", True),
        ("delete-identity", f"{hub}-frank", True)]
    assert not any(role_exists(moto_endpoint, f"{hub}-{u}") for u in ("dave", "erin", "frank"))
    assert role_exists(moto_endpoint, f"{hub}-alice") and role_exists(moto_endpoint, f"{hub}-operator")
    assert await read("serviceaccount", namespace, "jupyter-dave") is None
    assert await read("serviceaccount", namespace, "jupyter-erin") is None
    assert await read("serviceaccount", namespace, "jupyter-alice") is not None

    again = command("gc", "--config", str(cfg), "--min-age", "0")
    assert "nothing to clean up" in again.stdout, again.stdout

    # A managed role that went missing is drift, for the owner's next spawn to repair.
    iam.delete_role_policy(RoleName=f"{hub}-alice", PolicyName="cloudidentity-spawner")
    iam.delete_role(RoleName=f"{hub}-alice")
    [alice] = json.loads(command("status", "--config", str(cfg), "--json").stdout)["accounts"]
    assert alice["state"] == "drift" and alice["problems"] == [
        f"arn:aws:iam::123456789012:role/jupyterhub/{hub}/{hub}-alice is missing in the cloud (the owner's next spawn re-creates it)"]


async def test_a_spawn_between_judging_and_cleaning_wins(namespace, moto_endpoint, hub, tmp_path):
    """The account changed after gc judged it (a spawn patched it): gc leaves it and its role."""
    db = tmp_path / "jupyterhub.sqlite"
    hub_database(db, {"alice": ["/escape"]})
    rules = [members_rule(hub)]
    await spawn(namespace, moto_endpoint, hub, "gus", ["/escape"], rules)  # gus is not in the database
    cfg = write_config(tmp_path / "jupyterhub_config.py", namespace, hub, moto_endpoint, db, rules)
    from cloudidentity_spawner.cli import load_config

    conf = load_config(str(cfg))
    settings = identity_settings(conf)
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        accounts = ServiceAccounts(client.CoreV1Api(api_client))
        users = HubDatabase(f"sqlite:///{db}")
        found = await survey(settings, conf, accounts, users, namespace)
        [action] = cleanup_actions(found, [], 600)
        assert action.kind == "delete-account" and action.reason == "user gus is no longer on the hub"
        await accounts.api.patch_namespaced_service_account(
            "jupyter-gus", namespace, {"metadata": {"annotations": {"example.org/touched": "1"}}},
            _content_type="application/merge-patch+json")
        await apply([action], settings, accounts, users, namespace)
    assert not action.done and action.skipped.startswith("changed since it was judged")
    assert role_exists(moto_endpoint, f"{hub}-gus")
    assert await read("serviceaccount", namespace, "jupyter-gus") is not None


def _account(name="jupyter-alice", owner="user:alice", rule="members", labelled=True, **annotations) -> Account:
    labels = {"app.kubernetes.io/managed-by": "cloudidentity-spawner", "cloudidentity-spawner/scope": "user"}
    if labelled:
        labels["cloudidentity-spawner/hub"] = "jh"
    return Account("jh", name, "uid-1", "7", labels,
                   {"cloudidentity-spawner/owner": owner, "cloudidentity-spawner/rule": rule, **annotations})


def test_gc_keeps_what_another_account_uses_and_what_may_be_another_hubs():
    role = "aws:arn:aws:iam::1:role/jh/jh-alice"
    # alice's rule now names her account differently: the old account goes, her role stays.
    renamed = Entry(_account("jupyter-alice-old", **{"cloudidentity-spawner/managed-identity": role}), "orphaned",
                    ["rule 'members' now gives user:alice ServiceAccount jh/jupyter-alice"], stale_identity=role)
    current = Entry(_account(**{"cloudidentity-spawner/managed-identity": role}), "ok", planned_identity=role)
    unlabelled = Entry(_account("jupyter-zoe", "user:zoe", labelled=False), "orphaned", ["user zoe is no longer on the hub"])
    actions = cleanup_actions(Survey([renamed, current, unlabelled], "x", recorded={"aws:arn:elsewhere"}),
                              [{"identity": "aws:arn:elsewhere", "created": None}], 0)
    assert [(a.kind, a.identity, bool(a.skipped)) for a in actions] == [
        ("delete-account", None, False), ("delete-account", None, True)]
    assert actions[0].reason.endswith("its arn:aws:iam::1:role/jh/jh-alice stays (used by jh/jupyter-alice)")
    assert actions[1].skipped.startswith("made before accounts carried the hub label")
    # Searched in one namespace only, or a Google account of unknown age: never deleted as "unrecorded".
    found = [{"identity": "aws:arn:r", "created": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)},
             {"identity": "gcp:a@p.iam.gserviceaccount.com", "created": None}]
    partial = cleanup_actions(Survey([], "namespace jh", complete=False), found, 600)
    assert all(a.skipped.startswith("the hub may not list ServiceAccounts in every namespace") for a in partial)
    aged = cleanup_actions(Survey([], "x"), found, 600)
    assert [bool(a.skipped) for a in aged] == [False, True]
    assert aged[1].skipped.startswith("the cloud does not say when it was made")


def test_profiles_in_a_dict_and_resolvers_are_respected():
    from traitlets.config import Config

    from cloudidentity_spawner.hubusers import HubUser
    from cloudidentity_spawner.inventory import plan_for_account, profile_rules

    c = Config()
    c.KubeSpawner.profile_list = {"a": {"display_name": "A", "identity_rule": "atlas"}}
    assert profile_rules(c) == {"atlas"}
    c.CloudIdentitySpawner.identity_rules = [STAFF_RULE]
    c.CloudIdentitySpawner.identity_resolver = lambda spawner, claims: None
    settings = identity_settings(c)
    group = _account("jupyter-group-x", "group:/escape/staff", "staff")
    assert plan_for_account(settings, group, None, set()) == (
        None, None, "the hub plans with an identity_resolver, which only runs in a spawn")
    assert plan_for_account(settings, _account(), None, set())[1] == "user alice is no longer on the hub"
    assert plan_for_account(settings, _account(), HubUser("alice"), set())[2].startswith("the hub plans with")


def test_nothing_is_taken_from_under_a_running_pod_or_from_an_adopted_account():
    orphan = Entry(_account(), "orphaned", ["user alice is no longer on the hub"], stale_identity="aws:arn:x", pods=["jupyter-alice"])
    adopted = Entry(_account("shared", "user:bob", **{"cloudidentity-spawner/adopted": "true"}), "orphaned",
                    ["user bob is no longer on the hub"])
    actions = cleanup_actions(Survey([orphan, adopted], "x"), [], 600)
    assert [a.skipped for a in actions] == ["pods still run under it (jupyter-alice)",
                                            "adopted by the hub (adopt: true): it is the operator's and never deleted"]


def test_young_cloud_identities_are_left_for_the_spawn_making_them():
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    made = [{"identity": "aws:arn:young", "created": now - datetime.timedelta(seconds=30)},
            {"identity": "aws:arn:old", "created": now - datetime.timedelta(hours=2)},
            {"identity": "gcp:x@p.iam.gserviceaccount.com", "created": None},
            {"identity": "aws:arn:recorded", "created": now - datetime.timedelta(hours=2)}]
    recorded = Entry(_account(**{"cloudidentity-spawner/managed-identity": "aws:arn:recorded"}), "ok")
    actions = cleanup_actions(Survey([recorded], "x"), made, 600, now)
    assert [(a.identity, bool(a.skipped)) for a in actions] == [
        ("aws:arn:young", True), ("aws:arn:old", False), ("gcp:x@p.iam.gserviceaccount.com", True)]
    assert isinstance(actions[0], Action) and "made 30 s ago" in actions[0].skipped


def test_drift_names_the_identity_the_rules_plan_now():
    rules = IdentityRules.from_config([{"name": "atlas", "match": {"groups": ["/atlas"]}, "scope": "group",
                                        "aws": {"role_arn": "arn:aws:iam::123456789012:role/new"}}], "jh")
    plan = rules.shared_plan("group:/atlas", "atlas", "jh")
    sa = plan.service_account
    account = Account("jh", sa.name, "u", "1", dict(sa.labels),
                      {**sa.annotations, "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/old"})
    entry = judge(account, plan)
    assert entry.state == "drift"
    assert entry.problems == ["runs as arn:aws:iam::123456789012:role/old; the rules now plan arn:aws:iam::123456789012:role/new"]
    same = Account("jh", sa.name, "u", "1", dict(sa.labels), dict(sa.annotations))
    assert judge(same, plan).state == "ok"
    with pytest.raises(NoMatchingRule) as refused:
        rules.shared_plan("group:/cms", "atlas", "jh")
    assert refused.value.admin_detail == "rule 'atlas' no longer matches group /cms"


def test_progress_bar_only_on_a_terminal():
    import io

    from cloudidentity_spawner.cli import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    shown, piped = Terminal(), io.StringIO()
    for stream in (shown, piped):
        bar = Progress(stream)
        for i in range(1, 5):
            bar("judging accounts", i, 4)
    assert shown.getvalue().endswith("\rjudging accounts: [" + "#" * 30 + "] 4/4\n")
    assert "\rjudging accounts: [" + "#" * 7 + "." * 23 + "] 1/4" in shown.getvalue()
    assert piped.getvalue() == ""


def test_status_says_clearly_when_kubernetes_cannot_be_reached(tmp_path):
    db = tmp_path / "jupyterhub.sqlite"
    hub_database(db, {"alice": ["/escape"]})
    cfg = write_config(tmp_path / "jupyterhub_config.py", "jh", "hub", "http://127.0.0.1:9", db, [STAFF_RULE])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "x",
                                      "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:9"}}],
                                      "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
                                      "users": [{"name": "x", "user": {}}]}))
    out = command("status", "--config", str(cfg), env={"KUBECONFIG": str(kubeconfig)})
    assert out.returncode == 1
    assert out.stderr.startswith("cloudidentity-spawner: cannot reach the Kubernetes API or the hub: ")
    assert "Traceback" not in out.stderr


async def test_a_spawn_after_gc_re_creates_what_its_cache_still_trusts(namespace, moto_endpoint, hub):
    """gc runs outside the hub: the hub's cache of converged roles must not hide that gc deleted one."""
    rules = [members_rule(hub)]
    await spawn(namespace, moto_endpoint, hub, "alice", ["/escape"], rules)
    await delete_service_account(namespace, "jupyter-alice")  # by hand
    c = spawner_config(namespace, rules, hub_name=hub, aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
    _, actions = await run_gc(c, namespace, {"alice": oidc_state(**{"wlcg.groups": ["/escape"]})})
    assert [(a.kind, a.done) for a in actions] == [("delete-identity", True)]
    assert not role_exists(moto_endpoint, f"{hub}-alice")
    await spawn(namespace, moto_endpoint, hub, "alice", ["/escape"], rules)  # same hub process: a warm cache
    assert role_exists(moto_endpoint, f"{hub}-alice")


async def test_gc_revokes_a_hub_made_role_the_account_records_and_no_longer_plans(namespace, moto_endpoint, hub):
    """alice's rule moves from a hub-made role to the operator's: gc revokes the old role while
    her account stays (it is still planned), and forgets the record."""
    moved = [{"name": "members", "match": {"groups": ["/escape"]},
              "aws": {"role_arn": "arn:aws:iam::123456789012:role/operators/{username}"}}]
    await spawn(namespace, moto_endpoint, hub, "alice", ["/escape"], [members_rule(hub)])
    assert role_exists(moto_endpoint, f"{hub}-alice")
    c = spawner_config(namespace, moved, hub_name=hub, aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
    found, actions = await run_gc(c, namespace, {"alice": oidc_state(**{"wlcg.groups": ["/escape"]})})
    [entry] = found.entries
    assert entry.state == "drift" and entry.stale_identity.endswith(f"role/jupyterhub/{hub}/{hub}-alice")
    assert [(a.kind, a.done, a.skipped) for a in actions] == [("revoke", True, None)]
    assert not role_exists(moto_endpoint, f"{hub}-alice")
    account = await read("serviceaccount", namespace, "jupyter-alice")
    assert "cloudidentity-spawner/managed-identity" not in account["metadata"]["annotations"]
    assert "cloudidentity-spawner/gc-pending" not in account["metadata"]["annotations"]
    _, again = await run_gc(c, namespace, {"alice": oidc_state(**{"wlcg.groups": ["/escape"]})})
    assert again == []  # nothing left to revoke


async def test_without_cloud_credentials_gc_says_so_in_one_line_and_status_does_not_say_ok(namespace, moto_endpoint, hub, tmp_path):
    db = tmp_path / "jupyterhub.sqlite"
    hub_database(db, {"alice": ["/escape"]})
    await spawn(namespace, moto_endpoint, hub, "alice", ["/escape"], [members_rule(hub)])
    cfg = write_config(tmp_path / "jupyterhub_config.py", namespace, hub, moto_endpoint, db, [members_rule(hub)])
    no_credentials = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": os.devnull,
                      "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    gc = command("gc", "--config", str(cfg), env={**env, **no_credentials})
    assert gc.returncode == 1 and "Traceback" not in gc.stderr, gc.stderr
    [line] = gc.stderr.strip().splitlines()
    assert "NoCredentialsError" in line and "gc needs the hub's cloud credentials" in line
    status = command("status", "--config", str(cfg), "--json", env={**env, **no_credentials})
    assert status.returncode == 0, status.stderr
    [alice] = json.loads(status.stdout)["accounts"]
    assert alice["state"] == "unknown" and "could not be checked in the cloud (NoCredentialsError" in alice["problems"][0]


async def test_gc_after_the_hub_moved_namespace_takes_the_old_accounts_grant(namespace, moto_endpoint, hub):
    """The operator changed c.KubeSpawner.namespace: alice's account in the old namespace is
    nobody's plan any more. gc deletes it and takes its subject out of her role's trust; the
    role stays for her account in the new namespace."""
    from .test_aws import ISSUER

    alice = {"alice": oidc_state(**{"wlcg.groups": ["/escape"]})}
    async with another_namespace(namespace + "-new") as new:
        await spawn(namespace, moto_endpoint, hub, "alice", ["/escape"], [members_rule(hub)])
        await spawn(new, moto_endpoint, hub, "alice", ["/escape"], [members_rule(hub)])
        c = spawner_config(new, [members_rule(hub)], hub_name=hub,
                           aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
        found, actions = await run_gc(c, new, alice)
        states = {e.account.where: (e.state, e.problems) for e in found.entries}
        assert states[f"{new}/jupyter-alice"][0] == "ok"
        assert states[f"{namespace}/jupyter-alice"] == (
            "orphaned", [f"rule 'members' now gives user:alice ServiceAccount {new}/jupyter-alice"])
        assert [(a.kind, a.account.where, a.done) for a in actions] == [("delete-account", f"{namespace}/jupyter-alice", True)]
        assert await read("serviceaccount", namespace, "jupyter-alice") is None
        role = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1").get_role(RoleName=f"{hub}-alice")
        condition = role["Role"]["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]["StringEquals"]
        assert condition[f"{ISSUER}:sub"] == f"system:serviceaccount:{new}:jupyter-alice"


def rule_at(hub: str, path: str) -> dict:
    rule = members_rule(hub)
    return {**rule, "aws": {"managed": {**rule["aws"]["managed"], "role_path": path}}}


async def test_gc_finds_hub_made_roles_under_a_role_path_no_rule_names_any_more(namespace, moto_endpoint, hub):
    """The rules moved from role path old/ to new/. alice's account still records her old role,
    so old/ is searched and bob's role there (his account deleted by hand) is found too; carol's
    role under gone/ (no account records anything there) only with --role-path."""
    old, gone, new = f"/jupyterhub/{hub}/old/", f"/jupyterhub/{hub}/gone/", f"/jupyterhub/{hub}/new/"
    for user, path in (("alice", old), ("bob", old), ("carol", gone)):
        await spawn(namespace, moto_endpoint, hub, user, ["/escape"], [rule_at(hub, path)])
    await delete_service_account(namespace, "jupyter-bob")
    await delete_service_account(namespace, "jupyter-carol")
    c = spawner_config(namespace, [rule_at(hub, new)], hub_name=hub,
                       aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
    users = {u: oidc_state(**{"wlcg.groups": ["/escape"]}) for u in ("alice", "bob", "carol")}
    _, actions = await run_gc(c, namespace, users, apply=False)
    assert sorted((a.kind, a.identity.rsplit("/", 1)[1]) for a in actions) == [
        ("delete-identity", f"{hub}-bob"), ("revoke", f"{hub}-alice")]
    _, actions = await run_gc(c, namespace, users, role_paths=(gone,))
    assert sorted((a.kind, a.identity.rsplit("/", 1)[1], a.done) for a in actions) == [
        ("delete-identity", f"{hub}-bob", True), ("delete-identity", f"{hub}-carol", True), ("revoke", f"{hub}-alice", True)]
    assert not any(role_exists(moto_endpoint, f"{hub}-{u}") for u in ("alice", "bob", "carol"))


def test_gc_refuses_a_role_path_iam_would_refuse(tmp_path):
    out = command("gc", "--config", str(tmp_path / "none.py"), "--role-path", "jupyterhub/old")
    assert out.returncode == 2 and "is not an IAM role path" in out.stderr


async def test_a_place_gc_may_not_list_is_reported_and_the_rest_is_done(namespace, moto_endpoint, hub, monkeypatch):
    """The hub's policy covers the rules' role path only (as the example does): a --role-path (or
    a path an account records) that IAM refuses to list is one skipped line, not a failed gc."""
    from cloudidentity_spawner.providers.aws_iam import ManagedRoles

    await spawn(namespace, moto_endpoint, hub, "bob", ["/escape"], [members_rule(hub)])
    await delete_service_account(namespace, "jupyter-bob")
    listed = ManagedRoles.hub_made

    async def refused_outside_the_rules(self, path, hub_name):
        if path == "/denied/":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not on /denied/"}}, "ListRoleTags")
        return await listed(self, path, hub_name)

    monkeypatch.setattr(ManagedRoles, "hub_made", refused_outside_the_rules)
    c = spawner_config(namespace, [members_rule(hub)], hub_name=hub,
                       aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
    _, actions = await run_gc(c, namespace, {"bob": oidc_state(**{"wlcg.groups": ["/escape"]})}, role_paths=("/denied/",))
    assert [(a.kind, a.done) for a in actions if a.kind == "delete-identity"] == [("delete-identity", True)]
    [search] = [a for a in actions if a.kind == "search"]
    assert "/denied/" in search.reason and "AccessDenied" in search.skipped
    assert not role_exists(moto_endpoint, f"{hub}-bob")


async def test_gc_given_a_namespace_without_this_hubs_accounts_judges_none_orphaned(namespace, moto_endpoint, hub):
    """E.g. gc run outside the hub's pod, where the namespace defaults to "default": the accounts
    elsewhere are not judged against it (they would all look orphaned)."""
    await spawn(namespace, moto_endpoint, hub, "alice", ["/escape"], [members_rule(hub)])
    async with another_namespace(namespace + "-wrong") as wrong:
        c = spawner_config(wrong, [members_rule(hub)], hub_name=hub,
                           aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
        found, actions = await run_gc(c, wrong, {"alice": oidc_state(**{"wlcg.groups": ["/escape"]})})
    [entry] = [e for e in found.entries if e.account.namespace == namespace]
    assert entry.state == "unknown" and "--namespace" in entry.problems[0]
    assert [a for a in actions if a.account is not None and a.account.namespace == namespace] == []
    assert role_exists(moto_endpoint, f"{hub}-alice")
