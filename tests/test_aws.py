"""Hub-managed IRSA roles against moto in server mode, through the real spawn path."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import pytest

boto3 = pytest.importorskip("boto3", reason="the aws extra is not installed")

from botocore.exceptions import ClientError  # noqa: E402

from cloudidentity_spawner import CloudIdentitySpawner  # noqa: E402
from cloudidentity_spawner.providers import _backends, backend_for  # noqa: E402
from cloudidentity_spawner.providers.aws import scratch_prefix_policy, tag_value  # noqa: E402
from cloudidentity_spawner.providers.aws_iam import ManagedRoles  # noqa: E402
from cloudidentity_spawner.config import identity_settings  # noqa: E402
from cloudidentity_spawner.errors import SpawnRefused  # noqa: E402
from cloudidentity_spawner.provisioner import revoke_identity  # noqa: E402

from .aws_policy import problems  # noqa: E402
from .kubehelpers import (  # noqa: E402
    SpawnUser, another_namespace, create_service_account, delete_service_account, hub_accounts, make_spawner, oidc_state,
    read, spawner_config, user_namespaces, with_saved_servers,
)

ACCOUNT = "123456789012"  # moto's default account
ISSUER = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
PROVIDER_ARN = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER}"
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/jupyterhub-boundary"
BUCKET = "scratch"
SCRATCH_POLICY = scratch_prefix_policy(BUCKET)  # the shipped template, as operators use it


@pytest.fixture(scope="session")
def policies(moto_endpoint):
    """The operator's boundary policy and an extra managed policy, as they exist in a real account."""
    client = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    allow_s3 = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    arns = {}
    for name in ("jupyterhub-boundary", "notebook-extras"):
        try:
            arns[name] = client.create_policy(PolicyName=name, PolicyDocument=allow_s3)["Policy"]["Arn"]
        except client.exceptions.EntityAlreadyExistsException:
            arns[name] = f"arn:aws:iam::{ACCOUNT}:policy/{name}"
    assert arns["jupyterhub-boundary"] == BOUNDARY
    return arns


@pytest.fixture
def hub(policies):
    """A hub name of its own per test, so role names and caches never collide across tests."""
    _backends.clear()
    return "hub" + uuid.uuid4().hex[:6]


EXTRA_POLICY = f"arn:aws:iam::{ACCOUNT}:policy/notebook-extras"


def managed_rules(hub, **managed):
    return [{
        "name": "members",
        "match": {"groups": ["/escape"]},
        "aws": {"managed": {
            "oidc_provider_arn": PROVIDER_ARN,
            "role_path": f"/jupyterhub/{hub}/",
            "permissions_boundary": BOUNDARY,
            "inline_policy": SCRATCH_POLICY,
            **managed,
        }},
    }]


def aws_spawner(namespace, moto_endpoint, hub, name, rules=None, **extra):
    c = spawner_config(
        namespace, rules or managed_rules(hub),
        hub_name=hub, aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
        aws_role_propagation_seconds=0, **extra,
    )
    return make_spawner(CloudIdentitySpawner, c, SpawnUser(name, oidc_state(**{"wlcg.groups": ["/escape"]})))


def iam(moto_endpoint):
    return boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")


def backend(moto_endpoint) -> ManagedRoles:
    [b] = _backends.values()
    return b


def iam_calls(moto_endpoint) -> list[str]:
    """The IAM operations the hub's backend made so far (its recent-calls log), oldest first."""
    return list(backend(moto_endpoint).calls.recent)


async def spawn(spawner):
    await spawner.start()
    await spawner.stop()


async def test_role_created_with_exact_trust_path_boundary_and_tags(namespace, moto_endpoint, hub):
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "alice"))
    role = iam(moto_endpoint).get_role(RoleName=f"{hub}-alice")["Role"]
    assert role["Path"] == f"/jupyterhub/{hub}/"
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY
    assert role["AssumeRolePolicyDocument"] == {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": PROVIDER_ARN},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                f"{ISSUER}:sub": f"system:serviceaccount:{namespace}:jupyter-alice",
                f"{ISSUER}:aud": "sts.amazonaws.com",
            }},
        }],
    }
    tags = {t["Key"]: t["Value"] for t in role["Tags"]}
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert tags == {"app.kubernetes.io/managed-by": "cloudidentity-spawner",
                    "cloudidentity-spawner/hub": hub, "cloudidentity-spawner/owner": "user:alice",
                    "cloudidentity-spawner/person": sa["metadata"]["annotations"]["cloudidentity-spawner/person"]}
    policy = iam(moto_endpoint).get_role_policy(RoleName=f"{hub}-alice", PolicyName="cloudidentity-spawner")
    assert policy["PolicyDocument"]["Statement"][0]["Resource"] == f"arn:aws:s3:::{BUCKET}/alice/*"
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role["Arn"]


WRITES = {"CreateRole", "PutRolePolicy", "AttachRolePolicy", "DetachRolePolicy", "UpdateAssumeRolePolicy",
          "PutRolePermissionsBoundary", "UpdateRole", "TagRole", "DeleteRolePolicy", "DeleteRole"}


@pytest.mark.parametrize("cache_seconds,expected_calls", [(3600, []), (0, ["GetRole", "GetRolePolicy", "ListAttachedRolePolicies"])])
async def test_warm_spawn_makes_no_iam_writes(namespace, moto_endpoint, hub, cache_seconds, expected_calls):
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "bob", cloud_cache_seconds=cache_seconds))
    calls = iam_calls(moto_endpoint)
    assert calls[0] == "GetRole" and "CreateRole" in calls
    first = len(calls)
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "bob", cloud_cache_seconds=cache_seconds))
    later = iam_calls(moto_endpoint)[first:]
    assert later == expected_calls
    assert not WRITES & set(later)


async def test_template_change_updates_the_policy(namespace, moto_endpoint, hub):
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "carol"))
    changed = json.loads(json.dumps(SCRATCH_POLICY).replace('"s3:DeleteObject", ', ''))
    rules = managed_rules(hub, inline_policy=changed, policy_arns=[EXTRA_POLICY])
    first = len(iam_calls(moto_endpoint))
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "carol", rules=rules))
    later = iam_calls(moto_endpoint)[first:]
    assert {"PutRolePolicy", "AttachRolePolicy"} <= set(later)
    assert "CreateRole" not in later
    doc = iam(moto_endpoint).get_role_policy(RoleName=f"{hub}-carol", PolicyName="cloudidentity-spawner")["PolicyDocument"]
    assert "s3:DeleteObject" not in doc["Statement"][0]["Action"]


async def test_foreign_role_is_never_touched(namespace, moto_endpoint, hub):
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    iam(moto_endpoint).create_role(RoleName=f"{hub}-dave", Path=f"/jupyterhub/{hub}/", AssumeRolePolicyDocument=json.dumps(trust))
    with pytest.raises(SpawnRefused, match="not managed by this hub"):
        await aws_spawner(namespace, moto_endpoint, hub, "dave").start()
    role = iam(moto_endpoint).get_role(RoleName=f"{hub}-dave")["Role"]
    assert role["AssumeRolePolicyDocument"] == trust
    assert "PermissionsBoundary" not in role
    assert set(iam_calls(moto_endpoint)) == {"GetRole"}
    assert await read("serviceaccount", namespace, "jupyter-dave") is None


async def test_delete_forever_removes_only_our_user_role(namespace, moto_endpoint, hub):
    spawner = aws_spawner(namespace, moto_endpoint, hub, "erin",
                          rules=managed_rules(hub, policy_arns=[EXTRA_POLICY]))
    await spawn(spawner)
    await spawner.delete_forever()
    with pytest.raises(ClientError, match="NoSuchEntity"):
        iam(moto_endpoint).get_role(RoleName=f"{hub}-erin")
    calls = iam_calls(moto_endpoint)
    assert calls.index("DeleteRolePolicy") < calls.index("DeleteRole")
    assert calls.index("DetachRolePolicy") < calls.index("DeleteRole")
    assert await read("serviceaccount", namespace, "jupyter-erin") is None


async def test_delete_forever_keeps_an_existing_role_it_did_not_create(namespace, moto_endpoint, hub):
    trust = {"Version": "2012-10-17", "Statement": []}
    arn = iam(moto_endpoint).create_role(RoleName=f"ext-{hub}-frank", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    rules = managed_rules(hub) + [{"name": "existing", "match": {}, "aws": {"role_arn": arn.replace("frank", "{username}")}}]
    user = make_spawner(CloudIdentitySpawner, spawner_config(
        namespace, rules, hub_name=hub, aws_client_kwargs={"endpoint_url": moto_endpoint}, aws_role_propagation_seconds=0,
    ), SpawnUser("frank", oidc_state()))
    await spawn(user)
    await user.delete_forever()
    assert iam(moto_endpoint).get_role(RoleName=f"ext-{hub}-frank")["Role"]["Arn"] == arn


async def test_odd_and_long_user_names_get_valid_distinct_roles(namespace, moto_endpoint, hub):
    names = ["Zoë O'Brien", "z" * 200, "Zoe"]
    for name in names:
        await spawn(aws_spawner(namespace, moto_endpoint, hub, name))
    roles = iam(moto_endpoint).list_roles(PathPrefix=f"/jupyterhub/{hub}/")["Roles"]
    role_names = {r["RoleName"] for r in roles}
    assert len(role_names) == 3
    assert all(len(n) <= 64 for n in role_names)
    owners = set()
    for r in roles:
        tags = iam(moto_endpoint).list_role_tags(RoleName=r["RoleName"])["Tags"]
        owners |= {t["Value"] for t in tags if t["Key"] == "cloudidentity-spawner/owner"}
    assert owners == {tag_value(f"user:{n}") for n in names}
    assert f"user:{'z' * 200}" in owners and "user:Zoe" in owners  # valid values are kept as they are
    # and each of them is deleted with its user, whatever its name
    for name in names:
        s = aws_spawner(namespace, moto_endpoint, hub, name)
        await s.delete_forever()
    assert iam(moto_endpoint).list_roles(PathPrefix=f"/jupyterhub/{hub}/")["Roles"] == []


class PeakConcurrency:
    """Counts how many calls run at once on an SDK client (each call runs in a worker thread)."""

    def __init__(self):
        self.running = self.highest = 0
        self._lock = threading.Lock()

    def watch(self, client):
        peak = self

        class Watched:
            def __getattr__(self, name):
                method = getattr(client, name)
                if not callable(method) or name.startswith("get_waiter"):
                    return method

                def call(*args, **kwargs):
                    with peak._lock:
                        peak.running += 1
                        peak.highest = max(peak.highest, peak.running)
                    try:
                        time.sleep(0.02)  # long enough for calls that could overlap to do so
                        return method(*args, **kwargs)
                    finally:
                        with peak._lock:
                            peak.running -= 1
                return call

        return Watched()


async def test_surge_of_first_logins_is_bounded_and_creates_each_role_once(namespace, moto_endpoint, hub):
    spawners = [aws_spawner(namespace, moto_endpoint, hub, f"class-{i}", aws_max_concurrent_calls=3) for i in range(12)]
    spawners += [aws_spawner(namespace, moto_endpoint, hub, "class-0", aws_max_concurrent_calls=3)]  # a double click
    peak = PeakConcurrency()
    b = backend_for(spawners[0], "aws")  # the one backend every spawn here uses
    b.iam = peak.watch(b.iam)
    await asyncio.gather(*(s._provisioner().prepare(namespace) for s in spawners))
    assert 2 <= peak.highest <= 3  # concurrent, and never more than the limit reached the IAM client
    assert iam_calls(moto_endpoint).count("CreateRole") == 12
    roles = iam(moto_endpoint).list_roles(PathPrefix=f"/jupyterhub/{hub}/")["Roles"]
    assert len(roles) == 12


async def test_role_quota_is_a_clear_message_for_user_and_admin(namespace, moto_endpoint, hub, caplog, monkeypatch):
    spawner = aws_spawner(namespace, moto_endpoint, hub, "gus")
    original = ManagedRoles._call

    async def quota_reached(self, operation, **kwargs):
        if operation == "CreateRole":
            # What IAM answers when the account's role quota is reached.
            raise ClientError({"Error": {"Code": "LimitExceeded", "Message": "Cannot exceed quota for RolesPerAccount: 1000"}}, "CreateRole")
        return await original(self, operation, **kwargs)

    monkeypatch.setattr(ManagedRoles, "_call", quota_reached)
    with pytest.raises(SpawnRefused) as e:
        await spawner.start()
    assert "IAM role quota is reached" in e.value.jupyterhub_message
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for gus" in r.getMessage()]
    assert "RolesPerAccount" in line and "group scope or existing roles" in line


async def test_bob_cannot_read_alices_prefix(namespace, moto_endpoint, hub):
    """Isolation, proven by moto's IAM policy evaluation of the roles the hub made."""
    from moto.core.authorization import enable_iam_authentication

    for user in ("alice", "bob"):
        await spawn(aws_spawner(namespace, moto_endpoint, hub, user))
    s3_admin = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    try:
        s3_admin.create_bucket(Bucket=BUCKET)
    except s3_admin.exceptions.BucketAlreadyOwnedByYou:
        pass
    for user in ("alice", "bob"):
        s3_admin.put_object(Bucket=BUCKET, Key=f"{user}/notes.txt", Body=f"{user}'s notes".encode())

    def session_for(user):
        role_arn = iam(moto_endpoint).get_role(RoleName=f"{hub}-{user}")["Role"]["Arn"]
        creds = boto3.client("sts", endpoint_url=moto_endpoint, region_name="us-east-1").assume_role_with_web_identity(
            RoleArn=role_arn, RoleSessionName=f"jupyter-{user}", WebIdentityToken="projected-service-account-token",
        )["Credentials"]
        return boto3.client(
            "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
            aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    alice, bob = session_for("alice"), session_for("bob")
    with enable_iam_authentication():
        assert alice.get_object(Bucket=BUCKET, Key="alice/notes.txt")["Body"].read() == b"alice's notes"
        alice.put_object(Bucket=BUCKET, Key="alice/results.csv", Body=b"1,2,3")
        with pytest.raises(ClientError) as denied:
            bob.get_object(Bucket=BUCKET, Key="alice/notes.txt")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as denied:
            bob.put_object(Bucket=BUCKET, Key="alice/planted.txt", Body=b"x")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        assert bob.get_object(Bucket=BUCKET, Key="bob/notes.txt")["Body"].read() == b"bob's notes"
    # moto does not evaluate s3:prefix on ListBucket: test_aws_policy_semantics evaluates the
    # shipped template's StringLike; here, the role carries exactly that template, rendered for bob.
    doc = iam(moto_endpoint).get_role_policy(RoleName=f"{hub}-bob", PolicyName="cloudidentity-spawner")["PolicyDocument"]
    listing = [s for s in doc["Statement"] if s["Action"] == "s3:ListBucket"][0]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["bob/", "bob/*"]}}


# -- revocation: what a user no longer plans, they can no longer reach ------------------------------


def trusts(moto_endpoint, role_name, namespace, account):
    try:
        doc = iam(moto_endpoint).get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
    except ClientError as e:
        assert e.response["Error"]["Code"] == "NoSuchEntity"
        return False
    return f"system:serviceaccount:{namespace}:{account}" in json.dumps(doc)


def named_rule(hub, name, **managed):
    [rule] = managed_rules(hub, role_name=f"{{hub}}-{name}-{{username}}", **managed)
    return [{**rule, "name": name}]


async def test_a_plan_change_revokes_the_old_managed_role_before_the_new_pod(namespace, moto_endpoint, hub, caplog):
    """alice spawns under managed rule A; the operator moves her to managed rule B: role A no
    longer trusts her ServiceAccount (it is deleted) and her pod runs under role B."""
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "alice", rules=named_rule(hub, "a")))
    assert trusts(moto_endpoint, f"{hub}-a-alice", namespace, "jupyter-alice")
    caplog.set_level("INFO")
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "alice", rules=named_rule(hub, "b")))
    assert not trusts(moto_endpoint, f"{hub}-a-alice", namespace, "jupyter-alice")
    assert trusts(moto_endpoint, f"{hub}-b-alice", namespace, "jupyter-alice")
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(f"/{hub}-b-alice")
    [audit] = [r.getMessage() for r in caplog.records if "cloudidentity audit" in r.getMessage() and "revoked" in r.getMessage()]
    assert f"{hub}-a-alice" in audit


async def test_moving_to_an_existing_role_revokes_the_managed_one_and_never_touches_the_operators(namespace, moto_endpoint, hub):
    client = iam(moto_endpoint)
    operator_role = client.create_role(
        RoleName=f"{hub}-operator", Path="/operators/",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    existing = [{"name": "existing", "match": {"groups": ["/escape"]}, "aws": {"role_arn": operator_role}}]
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "ivy", rules=named_rule(hub, "a")))
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "ivy", rules=existing))
    assert not trusts(moto_endpoint, f"{hub}-a-ivy", namespace, "jupyter-ivy")
    # ... and back to a managed rule: the operator's role is left exactly as it was.
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "ivy", rules=named_rule(hub, "b")))
    assert client.get_role(RoleName=f"{hub}-operator")["Role"]["Arn"] == operator_role


async def test_a_failed_revocation_fails_the_spawn_closed(namespace, moto_endpoint, hub, monkeypatch, caplog):
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "jon", rules=named_rule(hub, "a")))
    spawner = aws_spawner(namespace, moto_endpoint, hub, "jon", rules=named_rule(hub, "b"))
    roles = backend(moto_endpoint)

    async def denied(*args, **kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "DeleteRole")

    monkeypatch.setattr(roles, "delete", denied)
    with pytest.raises(SpawnRefused, match="previous cloud identity could not be revoked"):
        await spawner.start()
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for jon" in r.getMessage()]
    assert f"{hub}-a-jon" in line and "AccessDenied" in line
    assert trusts(moto_endpoint, f"{hub}-a-jon", namespace, "jupyter-jon")  # nothing half-done silently


async def test_a_shared_role_trusts_each_members_namespace_without_flapping(namespace, moto_endpoint, hub):
    """With user namespaces, each member's copy of the group account lives in their namespace."""
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config as kube_config
    import os

    other = namespace + "-b"
    api_client = await kube_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        await k8s.CoreV1Api(api_client).create_namespace({"metadata": {"name": other}})
    group_rule = [{"name": "team", "match": {"groups": ["/escape"]}, "scope": "group",
                   "aws": {"managed": {"oidc_provider_arn": PROVIDER_ARN, "role_path": f"/jupyterhub/{hub}/",
                                       "permissions_boundary": BOUNDARY}}}]
    try:
        await spawn(aws_spawner(namespace, moto_endpoint, hub, "wes", rules=group_rule))
        await spawn(aws_spawner(other, moto_endpoint, hub, "xia", rules=group_rule))
        await spawn(aws_spawner(namespace, moto_endpoint, hub, "wes", rules=group_rule, cloud_cache_seconds=0))
    finally:
        async with (await kube_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])) as api_client:
            await k8s.CoreV1Api(api_client).delete_namespace(other)
    [role] = [r for r in iam(moto_endpoint).list_roles(PathPrefix=f"/jupyterhub/{hub}/")["Roles"]]
    [statement] = role["AssumeRolePolicyDocument"]["Statement"]
    subjects = statement["Condition"]["StringEquals"][f"{ISSUER}:sub"]
    account = subjects[0].rsplit(":", 1)[1]
    assert subjects == sorted([f"system:serviceaccount:{namespace}:{account}", f"system:serviceaccount:{other}:{account}"])


async def test_a_shared_role_stops_trusting_one_namespace_and_goes_with_the_last(namespace, moto_endpoint, hub):
    """One namespace's account moving to another role must not take the role from the others' pods."""
    group_rule = [{"name": "team", "match": {"groups": ["/escape"]}, "scope": "group",
                   "aws": {"managed": {"oidc_provider_arn": PROVIDER_ARN, "role_path": f"/jupyterhub/{hub}/",
                                       "permissions_boundary": BOUNDARY}}}]
    moved = [{"name": "team", "match": {"groups": ["/escape"]}, "scope": "group",
              "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/operators/team"}}]
    async with another_namespace(namespace + "-b") as other:
        await spawn(aws_spawner(namespace, moto_endpoint, hub, "wes", rules=group_rule))
        await spawn(aws_spawner(other, moto_endpoint, hub, "xia", rules=group_rule))
        [role] = iam(moto_endpoint).list_roles(PathPrefix=f"/jupyterhub/{hub}/")["Roles"]
        await spawn(aws_spawner(namespace, moto_endpoint, hub, "wes", rules=moved))
        trust = iam(moto_endpoint).get_role(RoleName=role["RoleName"])["Role"]["AssumeRolePolicyDocument"]
        subject = trust["Statement"][0]["Condition"]["StringEquals"][f"{ISSUER}:sub"]
        assert subject.startswith(f"system:serviceaccount:{other}:")  # the other namespace's pods keep it
        assert problems(trust) == []  # still keys STS really sends for web identity (AWS's service reference)
        await spawn(aws_spawner(other, moto_endpoint, hub, "xia", rules=moved))
        with pytest.raises(ClientError, match="NoSuchEntity"):
            iam(moto_endpoint).get_role(RoleName=role["RoleName"])


async def test_a_changed_role_gets_the_propagation_wait_too(namespace, moto_endpoint, hub, monkeypatch):
    """moto is immediately consistent, so the wait is checked at the call boundary."""
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "ora"))
    settled = []

    async def settle(self, name):
        settled.append(name)

    monkeypatch.setattr(ManagedRoles, "_settle", settle)
    changed = json.loads(json.dumps(SCRATCH_POLICY).replace('"s3:DeleteObject", ', ''))
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "ora", rules=managed_rules(hub, inline_policy=changed)))
    assert settled == [f"{hub}-ora"]
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "ora", rules=managed_rules(hub, inline_policy=changed),
                            cloud_cache_seconds=0))
    assert settled == [f"{hub}-ora"]  # unchanged: no wait


async def test_revocation_is_not_skipped_when_the_cache_missed_the_account(namespace, moto_endpoint, hub):
    """An empty (lagging) cache makes the create meet 409: the account found is revoked from too."""
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "pam", rules=named_rule(hub, "a")))
    spawner = aws_spawner(namespace, moto_endpoint, hub, "pam", rules=named_rule(hub, "b"))
    await spawner._provisioner().prepare(namespace, {})  # a synced-looking cache that has not seen it
    assert not trusts(moto_endpoint, f"{hub}-a-pam", namespace, "jupyter-pam")
    assert trusts(moto_endpoint, f"{hub}-b-pam", namespace, "jupyter-pam")


async def test_a_running_server_under_the_account_blocks_revocation(namespace, moto_endpoint, hub):
    """One account carries one identity: the user's other server keeps its role until it stops."""
    first = aws_spawner(namespace, moto_endpoint, hub, "quo", rules=named_rule(hub, "a"))
    await first.start()
    try:
        c = spawner_config(namespace, named_rule(hub, "b"), hub_name=hub, aws_role_propagation_seconds=0,
                           aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
        second = make_spawner(CloudIdentitySpawner, c, SpawnUser("quo", oidc_state(**{"wlcg.groups": ["/escape"]})), "gpu")
        with pytest.raises(SpawnRefused, match="another server runs under the same account"):
            await second.start()
        assert trusts(moto_endpoint, f"{hub}-a-quo", namespace, "jupyter-quo")
    finally:
        await first.stop()
    await spawn(make_spawner(CloudIdentitySpawner, c, SpawnUser("quo", oidc_state(**{"wlcg.groups": ["/escape"]})), "gpu"))
    assert not trusts(moto_endpoint, f"{hub}-a-quo", namespace, "jupyter-quo")


async def test_a_hand_set_marker_cannot_make_the_hub_delete_an_operators_role(namespace, moto_endpoint, hub):
    client = iam(moto_endpoint)
    operator_role = client.create_role(
        RoleName=f"{hub}-ops", Path="/operators/", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "rex", rules=named_rule(hub, "a")))
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config as kube_config
    import os

    async with (await kube_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])) as api_client:
        await k8s.CoreV1Api(api_client).patch_namespaced_service_account("jupyter-rex", namespace, {"metadata": {
            "annotations": {"cloudidentity-spawner/managed-identity": f"aws:{operator_role}"}}})
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "rex", rules=named_rule(hub, "b"), service_account_cache=False))
    assert client.get_role(RoleName=f"{hub}-ops")["Role"]["Arn"] == operator_role  # untagged: never deleted


async def test_a_shared_trust_past_iams_length_limit_is_a_clear_error(namespace, moto_endpoint, hub, caplog):
    group_rule = [{"name": "crowd", "match": {"groups": ["/escape"]}, "scope": "group",
                   "aws": {"managed": {"oidc_provider_arn": PROVIDER_ARN, "role_path": f"/jupyterhub/{hub}/",
                                       "permissions_boundary": BOUNDARY}}}]
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "sue", rules=group_rule, cloud_cache_seconds=0))
    [role] = iam(moto_endpoint).list_roles(PathPrefix=f"/jupyterhub/{hub}/")["Roles"]
    doc = role["AssumeRolePolicyDocument"]
    key = f"{ISSUER}:sub"
    account = doc["Statement"][0]["Condition"]["StringEquals"][key].rsplit(":", 1)[1]
    doc["Statement"][0]["Condition"]["StringEquals"][key] = [f"system:serviceaccount:ns-{i:03d}:{account}" for i in range(40)]
    iam(moto_endpoint).update_assume_role_policy(RoleName=role["RoleName"], PolicyDocument=json.dumps(doc))
    with pytest.raises(SpawnRefused, match="cannot trust one more namespace"):
        await aws_spawner(namespace, moto_endpoint, hub, "sue", rules=group_rule, cloud_cache_seconds=0).start()
    assert any("Role trust policy length" in r.getMessage() for r in caplog.records)


async def test_an_account_from_before_the_marker_still_has_its_old_role_revoked(namespace, moto_endpoint, hub):
    """Accounts made by 0.1.0 carry no managed-identity annotation: a role under a managed rule's
    path counts as managed (the role's own tags still decide whether it is deleted)."""
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config as kube_config
    import os

    await spawn(aws_spawner(namespace, moto_endpoint, hub, "sol", rules=named_rule(hub, "a")))
    async with (await kube_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])) as api_client:
        await k8s.CoreV1Api(api_client).patch_namespaced_service_account("jupyter-sol", namespace, {"metadata": {
            "annotations": {"cloudidentity-spawner/managed-identity": None}}})
    await spawn(aws_spawner(namespace, moto_endpoint, hub, "sol", rules=named_rule(hub, "b"), service_account_cache=False))
    assert not trusts(moto_endpoint, f"{hub}-a-sol", namespace, "jupyter-sol")



async def test_a_revocation_repeated_after_a_partial_failure_leaves_a_shared_role_to_the_other_namespace(
        namespace, moto_endpoint, hub):
    """What gc runs per account, twice: run 1 removes namespace A's trust, then deleting A's
    ServiceAccount fails (the account and its record stay); run 2 revokes again and finds A's
    subject gone already - it must not delete the role B's pods run under."""
    group_rule = [{"name": "team", "match": {"groups": ["/escape"]}, "scope": "group",
                   "aws": {"managed": {"oidc_provider_arn": PROVIDER_ARN, "role_path": f"/jupyterhub/{hub}/",
                                       "permissions_boundary": BOUNDARY}}}]
    async with another_namespace(namespace + "-b") as other:
        await spawn(aws_spawner(namespace, moto_endpoint, hub, "wes", rules=group_rule))
        await spawn(aws_spawner(other, moto_endpoint, hub, "xia", rules=group_rule))
        [account] = await hub_accounts(namespace, hub)
        identity = account["metadata"]["annotations"]["cloudidentity-spawner/managed-identity"]
        settings = identity_settings(aws_spawner(namespace, moto_endpoint, hub, "wes", rules=group_rule).config)
        leaving = (namespace, account["metadata"]["name"])
        for _ in range(2):  # run 1, the injected failure (the account stays), run 2
            assert await revoke_identity(settings, identity, "group:/escape", {}, leaving)
        role = iam(moto_endpoint).get_role(RoleName=identity.rsplit("/", 1)[1])["Role"]
        subject = role["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]["StringEquals"][f"{ISSUER}:sub"]
        assert subject == f"system:serviceaccount:{other}:{leaving[1]}"  # B's pods keep their role


async def test_users_named_like_a_group_or_hub_rule_do_not_take_their_names(namespace, moto_endpoint, hub):
    """Users 'group-atlas', 'shared' and '<hub>-atlas' spawn first; then group atlas's first member
    and a user of hub rule 'shared' spawn - each gets an account and role of their own."""
    managed = {"oidc_provider_arn": PROVIDER_ARN, "role_path": f"/jupyterhub/{hub}/", "permissions_boundary": BOUNDARY}
    rules = [{"name": "atlas", "match": {"groups": ["atlas"]}, "scope": "group", "aws": {"managed": managed}},
             {"name": "shared", "match": {"users": ["guest*"]}, "scope": "hub", "aws": {"managed": managed}},
             {"name": "users", "match": {}, "aws": {"managed": managed}}]

    def spawner(name, groups):
        c = spawner_config(namespace, rules, hub_name=hub, aws_role_propagation_seconds=0,
                           aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
        return make_spawner(CloudIdentitySpawner, c, SpawnUser(name, oidc_state(groups=groups)))

    first = [spawner(name, []) for name in ("group-atlas", "shared", f"{hub}-atlas", f"{hub}-group-atlas")]
    then = [spawner("ann", ["atlas"]), spawner("guest1", [])]
    for s in first + then:
        await spawn(s)
    accounts = [s._identity_plan.service_account.name for s in first + then]
    roles = [s._identity_plan.cloud.identity for s in first + then]
    assert len(set(accounts)) == len(accounts) and len(set(roles)) == len(roles)
    for s in first + then:
        assert iam(moto_endpoint).get_role(RoleName=s._identity_plan.cloud.resources["role"]["name"])


async def test_a_reused_user_name_with_another_subject_gets_nothing_of_the_earlier_persons(namespace, moto_endpoint, hub, caplog):
    """'alice' logs in, spawns; later a different person (another subject) logs in as 'alice':
    refused - by the ServiceAccount, and after the account was deleted by hand, by the role."""
    def alice(subject):
        c = spawner_config(namespace, managed_rules(hub), hub_name=hub, aws_role_propagation_seconds=0,
                           aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"})
        state = oidc_state(sub=subject, iss="https://iam.example.org/", **{"wlcg.groups": ["/escape"]})
        return make_spawner(CloudIdentitySpawner, c, SpawnUser("alice", state))

    await spawn(alice("first-person"))
    await spawn(alice("first-person"))  # the same person again: fine
    role = iam(moto_endpoint).get_role(RoleName=f"{hub}-alice")["Role"]
    for attempt in ("account", "role"):
        with pytest.raises(SpawnRefused, match="used on this hub by someone who logged in with another account"):
            await alice("second-person").start()
        [line] = [r.getMessage() for r in caplog.records if "another person" in r.getMessage()]
        assert f"delete the ServiceAccount {namespace}/jupyter-alice" in line and "gc --apply" in line
        caplog.clear()
        if attempt == "account":
            await delete_service_account(namespace, "jupyter-alice")  # the role stays, with its person tag
    assert iam(moto_endpoint).get_role(RoleName=f"{hub}-alice")["Role"]["RoleId"] == role["RoleId"]
    assert await read("serviceaccount", namespace, "jupyter-alice") is None  # nothing was made for the second person


# -- user namespaces: a server in a new namespace leaves nothing behind in the old one -------------


def namespaced_spawner(namespace, moto_endpoint, hub, name, template, server_name="", **saved):
    """A spawner with user namespaces from *template*, whose user's other servers saved *saved*."""
    c = spawner_config(namespace, managed_rules(hub), hub_name=hub, aws_role_propagation_seconds=0,
                       aws_client_kwargs={"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
                       KubeSpawner__enable_user_namespaces=True, KubeSpawner__user_namespace_template=template)
    user = SpawnUser(name, oidc_state(**{"wlcg.groups": ["/escape"]}))
    return with_saved_servers(make_spawner(CloudIdentitySpawner, c, user, server_name), **saved)


async def default_in_old_and_gpu_in_new(namespace, moto_endpoint, hub, name, old):
    """*name*'s default server started under template a- (namespace *old*), then named server
    gpu under template b-, while the default server's state keeps *old*."""
    await spawn(namespaced_spawner(namespace, moto_endpoint, hub, name, f"{namespace}-a-{{username}}", default=None))
    await spawn(namespaced_spawner(namespace, moto_endpoint, hub, name, f"{namespace}-b-{{username}}",
                                   server_name="gpu", default=old, gpu=None))


async def test_a_server_in_a_new_namespace_takes_the_old_accounts_grant_away(namespace, moto_endpoint, hub, caplog):
    """The namespace template changed (or the server's saved namespace was lost): the role stops
    trusting the old namespace's account, and that account goes."""
    old, new = f"{namespace}-a-ava", f"{namespace}-b-ava"
    async with user_namespaces(old, new):
        await spawn(namespaced_spawner(namespace, moto_endpoint, hub, "ava", f"{namespace}-a-{{username}}", default=None))
        assert trusts(moto_endpoint, f"{hub}-ava", old, "jupyter-ava")
        caplog.set_level("INFO")
        await spawn(namespaced_spawner(namespace, moto_endpoint, hub, "ava", f"{namespace}-b-{{username}}", default=None))
        assert trusts(moto_endpoint, f"{hub}-ava", new, "jupyter-ava")
        assert not trusts(moto_endpoint, f"{hub}-ava", old, "jupyter-ava")
        assert await read("serviceaccount", old, "jupyter-ava") is None
        [audit] = [r.getMessage() for r in caplog.records if "cloudidentity.delete" in r.getMessage()]
        assert f"{old}/jupyter-ava" in audit and f"{new} is the namespace now" in audit


async def test_an_old_namespace_another_server_still_uses_keeps_its_account(namespace, moto_endpoint, hub):
    old, new = f"{namespace}-a-bea", f"{namespace}-b-bea"
    async with user_namespaces(old, new):
        # Her default server keeps its saved namespace; a new named server gets the new template's.
        await default_in_old_and_gpu_in_new(namespace, moto_endpoint, hub, "bea", old)
        assert trusts(moto_endpoint, f"{hub}-bea", old, "jupyter-bea") and trusts(moto_endpoint, f"{hub}-bea", new, "jupyter-bea")
        assert await read("serviceaccount", old, "jupyter-bea") is not None
        # Deleting the named server takes only its namespace's grant; the default server's stays.
        await namespaced_spawner(namespace, moto_endpoint, hub, "bea", f"{namespace}-b-{{username}}",
                                 server_name="gpu", default=old, gpu=new).delete_forever()
        assert trusts(moto_endpoint, f"{hub}-bea", old, "jupyter-bea")
        assert not trusts(moto_endpoint, f"{hub}-bea", new, "jupyter-bea")
        assert await read("serviceaccount", new, "jupyter-bea") is None


async def test_deleting_a_user_finds_their_accounts_in_every_namespace(namespace, moto_endpoint, hub):
    old, new = f"{namespace}-a-cal", f"{namespace}-b-cal"
    async with user_namespaces(old, new):
        await default_in_old_and_gpu_in_new(namespace, moto_endpoint, hub, "cal", old)
        # JupyterHub deletes the default server's resources last-known in the template's namespace.
        await namespaced_spawner(namespace, moto_endpoint, hub, "cal", f"{namespace}-b-{{username}}",
                                 default=None, gpu=new).delete_forever()
        with pytest.raises(ClientError, match="NoSuchEntity"):
            iam(moto_endpoint).get_role(RoleName=f"{hub}-cal")
        assert await read("serviceaccount", old, "jupyter-cal") is None
        assert await read("serviceaccount", new, "jupyter-cal") is None


async def test_a_users_role_trusts_only_the_namespaces_their_servers_use(namespace, moto_endpoint, hub):
    """The old namespace's account was deleted by hand, so there is nothing to revoke it from:
    the trust still names only what the user's servers use (a namespace given to someone else
    later must not reach the role)."""
    old, new = f"{namespace}-a-dot", f"{namespace}-b-dot"
    async with user_namespaces(old, new):
        await spawn(namespaced_spawner(namespace, moto_endpoint, hub, "dot", f"{namespace}-a-{{username}}", default=None))
        await delete_service_account(old, "jupyter-dot")
        await spawn(namespaced_spawner(namespace, moto_endpoint, hub, "dot", f"{namespace}-b-{{username}}", default=None))
        doc = iam(moto_endpoint).get_role(RoleName=f"{hub}-dot")["Role"]["AssumeRolePolicyDocument"]
        assert doc["Statement"][0]["Condition"]["StringEquals"][f"{ISSUER}:sub"] == f"system:serviceaccount:{new}:jupyter-dot"


async def test_an_account_without_this_hubs_label_elsewhere_is_left_alone(namespace, moto_endpoint, hub):
    """Another (older) hub's account of a user of the same name, in its own namespace, found in
    the cluster-wide watch cache: a first spawn here must not delete it."""
    other = f"{namespace}-other"
    theirs = {"metadata": {"name": "jupyter-eli", "labels": {
        "app.kubernetes.io/managed-by": "cloudidentity-spawner", "cloudidentity-spawner/scope": "user",
        "cloudidentity-spawner/user": "eli"}, "annotations": {"cloudidentity-spawner/owner": "user:eli"}}}
    async with user_namespaces(f"{namespace}-eli"), another_namespace(other):
        await create_service_account(other, theirs)
        await spawn(namespaced_spawner(namespace, moto_endpoint, hub, "eli", f"{namespace}-{{username}}", default=None))
        assert await read("serviceaccount", other, "jupyter-eli") is not None


@pytest.mark.emulator_only
async def test_deleting_a_user_goes_on_past_an_account_it_cannot_delete(namespace, moto_endpoint, hub, emulator, caplog):
    old, new = f"{namespace}-a-fox", f"{namespace}-b-fox"
    async with user_namespaces(old, new):
        await default_in_old_and_gpu_in_new(namespace, moto_endpoint, hub, "fox", old)
        emulator.fail("DELETE", f"/namespaces/{old}/serviceaccounts/jupyter-fox$", 500, count=50)
        await namespaced_spawner(namespace, moto_endpoint, hub, "fox", f"{namespace}-b-{{username}}",
                                 default=None, gpu=new).delete_forever()
        emulator.faults.clear()
        assert await read("serviceaccount", old, "jupyter-fox") is not None  # left for gc, and said so
        assert await read("serviceaccount", new, "jupyter-fox") is None
        assert any(f"{old}/jupyter-fox could not be deleted" in r.getMessage() for r in caplog.records)
