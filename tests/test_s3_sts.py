"""The s3_sts provider against a real Ceph RADOS Gateway (Debian's 16.2 daemons on 127.0.0.1).

The gateway decides everything here itself: it fetches the emulated cluster's issuer discovery
document and keys, checks each token's signature, expiry and audience, evaluates the role's
trust conditions and the S3 policy. The notebook side runs as a notebook would: a Python
process with only the pod's environment and its projected token file, using boto3's own
credential chain (no keys given).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import pytest

boto3 = pytest.importorskip("boto3", reason="the aws extra is not installed")

from botocore.exceptions import ClientError  # noqa: E402

from cloudidentity_spawner import CloudIdentitySpawner, ConfigError  # noqa: E402
from cloudidentity_spawner.claims import Claims  # noqa: E402
from cloudidentity_spawner.providers import _backends  # noqa: E402
from cloudidentity_spawner.providers import s3_sts  # noqa: E402
from cloudidentity_spawner.providers.aws import scratch_prefix_policy  # noqa: E402
from cloudidentity_spawner.rules import IdentityRules  # noqa: E402
from cloudidentity_spawner.testing import ceph  # noqa: E402

from .kubehelpers import SpawnUser, make_spawner, oidc_state, read, spawner_config  # noqa: E402

AUDIENCE = "sts.ceph.example.org"
BUCKET = "escape-scratch"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    assert ceph.available(), "Ceph's daemons are missing: make test installs them (scripts/install-ceph.sh)"
    gw = ceph.CephGateway(tmp_path_factory.mktemp("ceph")).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def store(gateway, kube_server):
    """The store set up as an operator would: the cluster's issuer registered as an OIDC
    provider (its audience the client id) and the scratch bucket with bob's file in it."""
    iam = boto3.client("iam", **gateway.admin_kwargs())
    issuer = kube_server.url
    iam.create_open_id_connect_provider(Url=issuer, ClientIDList=[AUDIENCE], ThumbprintList=["0" * 40])
    s3 = boto3.client("s3", **gateway.admin_kwargs())
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="bob/secret.txt", Body=b"bob's")
    s3.put_object(Bucket=BUCKET, Key="alice2/notes.txt", Body=b"another user's")
    return {"provider_arn": f"arn:aws:iam:::oidc-provider/{urlsplit(issuer).netloc}", "iam": iam, "s3": s3}


@pytest.fixture
def hub():
    _backends.clear()
    return "hub" + uuid.uuid4().hex[:6]


def managed_rules(gateway, store, hub, **managed):
    return [{
        "name": "members",
        "match": {"groups": ["/escape"]},
        "s3_sts": {"endpoint": gateway.url, "audience": AUDIENCE, "allow_http": True, "managed": {
            "oidc_provider_arn": store["provider_arn"],
            "role_path": f"/jupyterhub/{hub}/",
            "inline_policy": scratch_prefix_policy(BUCKET),  # the shipped policy, as operators use it
            **managed,
        }},
    }]


def store_spawner(namespace, gateway, hub, name, rules, groups=("/escape",)):
    c = spawner_config(namespace, rules, hub_name=hub, s3_sts_client_kwargs=gateway.admin_kwargs())
    return make_spawner(CloudIdentitySpawner, c, SpawnUser(name, oidc_state(**{"wlcg.groups": list(groups)})))


def pod_env(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0].get("env", []) if "value" in e}


NOTEBOOK = r"""
import json, sys
import boto3
from botocore.exceptions import ClientError

def status(call):
    try:
        call()
        return 200
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]

s3 = boto3.client("s3")
out = {"caller": None}
if len(sys.argv) > 1:  # who the store says the session is (it has no GetCallerIdentity): what boto3 asks
    import os
    out["caller"] = boto3.client("sts").assume_role_with_web_identity(
        RoleArn=os.environ["AWS_ROLE_ARN"], RoleSessionName=os.environ["AWS_ROLE_SESSION_NAME"],
        WebIdentityToken=open(os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"]).read())["AssumedRoleUser"]["Arn"]
for step in json.load(sys.stdin):
    kind, arg = step
    if kind == "put":
        out[f"put {arg}"] = status(lambda: s3.put_object(Bucket="%(bucket)s", Key=arg, Body=b"x"))
    elif kind == "get":
        out[f"get {arg}"] = status(lambda: s3.get_object(Bucket="%(bucket)s", Key=arg)["Body"].read())
    elif kind == "list":
        out[f"list {arg!r}"] = status(lambda: s3.list_objects_v2(Bucket="%(bucket)s", Prefix=arg))
print(json.dumps(out))
""" % {"bucket": BUCKET}


def run_in_pod(gateway, tmp_path, env: dict[str, str], token: str, steps: list, caller: bool = False) -> dict:
    """Run boto3 as the notebook would: only the pod's variables, its token at the mounted path
    (here a file of the test's), no keys anywhere."""
    token_file = tmp_path / f"token-{uuid.uuid4().hex[:6]}"
    token_file.write_text(token)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    clean.update(env)
    clean["AWS_WEB_IDENTITY_TOKEN_FILE"] = str(token_file)
    clean["AWS_CONFIG_FILE"] = clean["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    done = subprocess.run([sys.executable, "-c", NOTEBOOK, *(["caller"] if caller else [])], input=json.dumps(steps),
                          capture_output=True, text=True, env=clean, timeout=60)
    assert done.returncode == 0, done.stderr[-1500:] + "\n" + gateway.logs(15)
    return json.loads(done.stdout)


def assume(gateway, role_arn: str, token: str) -> int:
    """The gateway's answer to AssumeRoleWithWebIdentity (HTTP status: it names no error code)."""
    sts = boto3.client("sts", endpoint_url=gateway.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    try:
        sts.assume_role_with_web_identity(RoleArn=role_arn, RoleSessionName="test", WebIdentityToken=token)
        return 200
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]


async def start(spawner):
    await spawner.start()
    return await read("pod", spawner.namespace, spawner.pod_name)


async def test_alices_notebook_reaches_her_prefix_only(namespace, gateway, store, hub, emulator, tmp_path):
    spawner = store_spawner(namespace, gateway, hub, "alice", managed_rules(gateway, store, hub))
    pod = await start(spawner)
    try:
        env = pod_env(pod)
        role_arn = f"arn:aws:iam:::role/jupyterhub/{hub}/{hub}-alice"
        assert {k: env[k] for k in env if k.startswith("AWS_")} == {
            "AWS_ROLE_ARN": role_arn, "AWS_WEB_IDENTITY_TOKEN_FILE": s3_sts.TOKEN_FILE, "AWS_ROLE_SESSION_NAME": "alice",
            "AWS_ENDPOINT_URL_STS": gateway.url, "AWS_ENDPOINT_URL_S3": gateway.url,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
        token = emulator.projected_token(namespace, pod["metadata"]["name"], s3_sts.TOKEN_VOLUME)
        result = run_in_pod(gateway, tmp_path, env, token, [
            ["put", "alice/data.csv"], ["get", "alice/data.csv"], ["list", "alice/"],
            ["get", "bob/secret.txt"], ["put", "bob/planted.txt"], ["list", "bob/"],
            ["list", ""], ["list", "al"], ["list", "alice"], ["get", "alice2/notes.txt"],
        ], caller=True)
    finally:
        await spawner.stop()
    # The store names the role with its path (AWS leaves the path out) and the user's session.
    assert result.pop("caller") == f"arn:aws:sts:::assumed-role/jupyterhub/{hub}/{hub}-alice/alice"
    assert result == {
        "put alice/data.csv": 200, "get alice/data.csv": 200, "list 'alice/'": 200,
        "get bob/secret.txt": 403, "put bob/planted.txt": 403, "list 'bob/'": 403,
        "list ''": 403, "list 'al'": 403, "list 'alice'": 403, "get alice2/notes.txt": 403,
    }
    assert [o["Key"] for o in store["s3"].list_objects_v2(Bucket=BUCKET, Prefix="bob/")["Contents"]] == ["bob/secret.txt"]
    # A second judge of the same policy: AWS's evaluation logic (iam-simulate) agrees request by request.
    policy = store["iam"].get_role_policy(RoleName=f"{hub}-alice", PolicyName="cloudidentity-spawner")["PolicyDocument"]
    assert judged(policy, result) == {step: ("Allowed" if status == 200 else "ImplicitlyDenied") for step, status in result.items()}


def judged(policy: dict, steps) -> dict[str, str]:
    """What ``@cloud-copilot/iam-simulate`` decides for each step (``put <key>``, ``get <key>``,
    ``list '<prefix>'``) under *policy*."""
    from .iam_judge import Request, decide

    requests = []
    for step in steps:
        kind, _, arg = step.partition(" ")
        if kind == "list":
            requests.append(Request("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": arg.strip("'")}))
        else:
            requests.append(Request({"put": "s3:PutObject", "get": "s3:GetObject"}[kind], f"arn:aws:s3:::{BUCKET}/{arg}"))
    return {step: r["decision"] for step, r in zip(steps, decide(requests, [policy]))}


async def test_the_role_trusts_exactly_this_account_and_is_tagged(namespace, gateway, store, hub):
    spawner = store_spawner(namespace, gateway, hub, "alice", managed_rules(gateway, store, hub))
    await spawner.start()
    await spawner.stop()
    role = store["iam"].get_role(RoleName=f"{hub}-alice")["Role"]
    issuer = store["provider_arn"].split("oidc-provider/", 1)[1]
    assert role["Path"] == f"/jupyterhub/{hub}/"
    assert role["AssumeRolePolicyDocument"]["Statement"] == [{
        "Effect": "Allow", "Principal": {"Federated": [store["provider_arn"]]}, "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
        "Condition": {"StringEquals": {f"{issuer}:sub": f"system:serviceaccount:{namespace}:jupyter-alice",
                                       f"{issuer}:aud": AUDIENCE}}}]
    from cloudidentity_spawner.providers.aws_iam import _tags

    tags = _tags(role["Tags"])
    assert {k: tags[k] for k in ("app.kubernetes.io/managed-by", "cloudidentity-spawner/hub", "cloudidentity-spawner/owner")} == {
        "app.kubernetes.io/managed-by": "cloudidentity-spawner", "cloudidentity-spawner/hub": hub,
        "cloudidentity-spawner/owner": "user:alice"}
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert sa["metadata"]["annotations"]["cloudidentity-spawner/managed-identity"] == f"s3_sts:{role['Arn']}"


async def test_tokens_the_role_must_refuse(namespace, gateway, store, hub, emulator):
    """bob's own token for alice's role (the trust's sub), a token for another audience, one
    signed by another key, and an expired one: the gateway refuses each; alice's own is taken."""
    rules = managed_rules(gateway, store, hub)
    alice, bob = (store_spawner(namespace, gateway, hub, n, rules) for n in ("alice", "bob"))
    alice_pod, bob_pod = await start(alice), await start(bob)
    try:
        role = pod_env(alice_pod)["AWS_ROLE_ARN"]
        own = emulator.projected_token(namespace, alice_pod["metadata"]["name"], s3_sts.TOKEN_VOLUME)
        bobs = emulator.projected_token(namespace, bob_pod["metadata"]["name"], s3_sts.TOKEN_VOLUME)
        account = emulator.get("serviceaccounts", namespace, "jupyter-alice")
        other_audience, _ = emulator.issuer.issue(namespace, account, ["sts.elsewhere.example.org"], 3600)
        from cloudidentity_spawner.testing.tokens import TokenIssuer

        forger = TokenIssuer(emulator.issuer.issuer)
        forger.kid = emulator.issuer.kid  # the same key id and claims, another key
        forged, _ = forger.issue(namespace, account, [AUDIENCE], 3600)
        expired = expired_token(emulator, namespace, account)
        assert assume(gateway, role, own) == 200
        assert {name: assume(gateway, role, token) for name, token in
                (("bob's", bobs), ("other audience", other_audience), ("forged", forged), ("expired", expired))} == {
            "bob's": 403, "other audience": 403, "forged": 403, "expired": 403}
    finally:
        await alice.stop()
        await bob.stop()


def expired_token(emulator, namespace, account) -> str:
    import jwt

    issuer = emulator.issuer
    now = int(time.time())
    claims = {"iss": issuer.issuer, "sub": f"system:serviceaccount:{namespace}:{account['metadata']['name']}",
              "aud": [AUDIENCE], "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}
    return jwt.encode(claims, issuer.key, algorithm="RS256", headers={"kid": issuer.kid})


async def test_a_rule_change_revokes_and_deleting_the_user_deletes_the_role(namespace, gateway, store, hub, emulator):
    """alice's account is pointed at another role: her old role no longer takes her account's
    token before her new pod exists; deleting her deletes the role the hub made, and her account."""
    spawner = store_spawner(namespace, gateway, hub, "alice", managed_rules(gateway, store, hub))
    pod = await start(spawner)
    old_role = pod_env(pod)["AWS_ROLE_ARN"]
    token = emulator.projected_token(namespace, pod["metadata"]["name"], s3_sts.TOKEN_VOLUME)
    assert assume(gateway, old_role, token) == 200
    await spawner.stop()
    renamed = managed_rules(gateway, store, hub, role_name="{hub}-{username}-next")
    moved = store_spawner(namespace, gateway, hub, "alice", renamed)
    pod = await start(moved)
    try:
        new_role = pod_env(pod)["AWS_ROLE_ARN"]
        assert new_role == f"arn:aws:iam:::role/jupyterhub/{hub}/{hub}-alice-next"
        assert assume(gateway, old_role, token) == 403  # the old role is gone, not just unused
        with pytest.raises(ClientError):
            store["iam"].get_role(RoleName=f"{hub}-alice")
        new_token = emulator.projected_token(namespace, pod["metadata"]["name"], s3_sts.TOKEN_VOLUME)
        assert assume(gateway, new_role, new_token) == 200
    finally:
        await moved.stop()
    await store_spawner(namespace, gateway, hub, "alice", renamed).delete_forever()
    assert assume(gateway, new_role, new_token) == 403
    assert f"{hub}-alice-next" not in {r["RoleName"] for r in store["iam"].list_roles(PathPrefix=f"/jupyterhub/{hub}/").get("Roles", [])}
    assert await read("serviceaccount", namespace, "jupyter-alice") is None


async def test_an_existing_role_is_only_pointed_at(namespace, gateway, store, hub, emulator, tmp_path):
    """role_arn mode: the operator made the role (and its trust); the hub creates nothing at the
    store and the pod assumes exactly that role."""
    issuer = store["provider_arn"].split("oidc-provider/", 1)[1]
    name = f"{hub}-operators"
    store["iam"].create_role(RoleName=name, Path="/operators/", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Federated": [store["provider_arn"]]},
                                                "Action": ["sts:AssumeRoleWithWebIdentity"],
                                                "Condition": {"StringEquals": {f"{issuer}:sub": f"system:serviceaccount:{namespace}:jupyter-carol"}}}]},
        separators=(",", ":")))
    rules = [{"name": "carol", "match": {"users": ["carol"]},
              "s3_sts": {"endpoint": gateway.url, "audience": AUDIENCE, "allow_http": True, "role_arn": f"arn:aws:iam:::role/operators/{name}"}}]
    before = {r["RoleName"] for r in store["iam"].list_roles()["Roles"]}
    spawner = store_spawner(namespace, gateway, hub, "carol", rules)
    pod = await start(spawner)
    try:
        token = emulator.projected_token(namespace, pod["metadata"]["name"], s3_sts.TOKEN_VOLUME)
        result = run_in_pod(gateway, tmp_path, pod_env(pod), token, [], caller=True)
    finally:
        await spawner.stop()
    assert result["caller"] == f"arn:aws:sts:::assumed-role/operators/{name}/carol"
    assert {r["RoleName"] for r in store["iam"].list_roles()["Roles"]} == before


# -- pure: the rule block, names, the pod --------------------------------------------------------


def rules_with(block: dict) -> IdentityRules:
    return IdentityRules.from_config([{"name": "r", "match": {}, "s3_sts": block}], "h")


@pytest.mark.parametrize("block, where", [
    ({"audience": "a", "role_arn": "arn:aws:iam:::role/x"}, "missing required key 'endpoint'"),
    ({"endpoint": "s3.example.org", "audience": "a", "role_arn": "arn:aws:iam:::role/x"}, "s3_sts.endpoint"),
    ({"endpoint": "https://s3.example.org", "audience": "a b", "role_arn": "arn:aws:iam:::role/x"}, "s3_sts.audience"),
    ({"endpoint": "https://s3.example.org", "audience": "a"}, "exactly one of 'role_arn'"),
    ({"endpoint": "https://s3.example.org", "audience": "a", "role_arn": "arn:aws:iam::123456789012:user/x"}, "s3_sts.role_arn"),
    ({"endpoint": "https://s3.example.org", "audience": "a", "managed": {"role_path": "/j/"}}, "oidc_provider_arn"),
    ({"endpoint": "https://s3.example.org", "audience": "a", "managed": {
        "oidc_provider_arn": "arn:aws:iam:::oidc-provider/k8s.example.org", "role_path": "j"}}, "role_path"),
    ({"endpoint": "https://s3.example.org", "audience": "a", "token_expiration": 60, "role_arn": "arn:aws:iam:::role/x"},
     "token_expiration"),
    ({"endpoint": "http://s3.example.org", "audience": "a", "role_arn": "arn:aws:iam:::role/x"}, "plain http"),
    ({"endpoint": "https://s3.example.org", "sts_endpoint": "http://sts.example.org", "audience": "a",
      "role_arn": "arn:aws:iam:::role/x"}, "s3_sts.sts_endpoint"),
    ({"endpoint": "https://s3.example.org", "audience": "sts.amazonaws.com", "role_arn": "arn:aws:iam:::role/x"},
     "another service accepts"),
    ({"endpoint": "https://s3.example.org", "audience": "https://kubernetes.default.svc.cluster.local",
      "role_arn": "arn:aws:iam:::role/x"}, "another service accepts"),
])
def test_a_bad_block_fails_at_start_up_naming_the_key(block, where):
    with pytest.raises(ConfigError) as e:
        rules_with(block)
    assert "identity_rules[0] ('r').s3_sts" in str(e.value) and where in str(e.value)


def test_an_error_without_a_code_is_not_taken_for_a_missing_role():
    """Ceph's IAM errors carry their code where botocore puts S3's (the top of the response):
    DeleteConflict stays DeleteConflict; a 404 without any code (a proxy's page) is not NoSuchEntity."""
    from cloudidentity_spawner.providers.aws_iam import _code

    top = ClientError({"Code": "DeleteConflict", "ResponseMetadata": {"HTTPStatusCode": 409}}, "DeleteRole")
    bare = ClientError({"ResponseMetadata": {"HTTPStatusCode": 404}}, "GetRole")
    aws = ClientError({"Error": {"Code": "NoSuchEntity"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetRole")
    assert (_code(top), _code(bare), _code(aws)) == ("DeleteConflict", "", "NoSuchEntity")


def test_a_user_name_cannot_widen_the_role_or_the_prefix_and_the_session_names_the_user():
    rules = rules_with({"endpoint": "https://s3.example.org", "audience": "a", "managed": {
        "oidc_provider_arn": "arn:aws:iam:::oidc-provider/k8s.example.org", "role_path": "/j/",
        "inline_policy": scratch_prefix_policy(BUCKET)}})
    plan = rules.resolve(Claims(username="*/../bob", groups=()), "ns")
    role = plan.cloud.resources["role"]
    assert "/" not in role["name"] and "*" not in role["name"]
    resources = [s["Resource"] for s in role["inline_policy"]["Statement"]]
    assert all("*/" not in r and "/../" not in r and "bob/" not in r for r in resources), resources
    session = plan.cloud.resources["pod"]["env"]["AWS_ROLE_SESSION_NAME"]
    assert len(session) <= 64 and all(c.isalnum() or c in "+=,.@_-" for c in session)
    long = rules.resolve(Claims(username="x" * 200, groups=()), "ns").cloud.resources["pod"]["env"]["AWS_ROLE_SESSION_NAME"]
    assert 2 <= len(long) <= 64


async def test_what_the_pod_gets_cannot_be_overridden_by_a_profile(namespace, gateway, store, hub):
    """A profile's environment and a pod hook naming another role or token file lose to the plan."""
    rules = managed_rules(gateway, store, hub)
    c = spawner_config(namespace, rules, hub_name=hub, s3_sts_client_kwargs=gateway.admin_kwargs())
    c.KubeSpawner.environment = {"AWS_ROLE_ARN": "arn:aws:iam:::role/admin", "AWS_ENDPOINT_URL_STS": "http://evil"}
    spawner = make_spawner(CloudIdentitySpawner, c, SpawnUser("alice", oidc_state(**{"wlcg.groups": ["/escape"]})))
    pod = await start(spawner)
    await spawner.stop()
    env = pod_env(pod)
    assert env["AWS_ROLE_ARN"] == f"arn:aws:iam:::role/jupyterhub/{hub}/{hub}-alice"
    assert env["AWS_ENDPOINT_URL_STS"] == gateway.url
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == s3_sts.TOKEN_VOLUME]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == AUDIENCE


async def test_status_and_gc_know_the_stores_roles(namespace, gateway, store, hub):
    """status sees alice's role at the store; gc deletes the role of bob, whose account was
    deleted by hand (nothing records it any more), and leaves alone an operator's role under
    the same path that another hub tagged."""
    from .kubehelpers import delete_service_account, run_gc

    rules = managed_rules(gateway, store, hub)
    for name in ("alice", "bob"):
        spawner = store_spawner(namespace, gateway, hub, name, rules)
        await spawner.start()
        await spawner.stop()
    await delete_service_account(namespace, "jupyter-bob")
    store["iam"].create_role(RoleName=f"{hub}-operator", Path=f"/jupyterhub/{hub}/", AssumeRolePolicyDocument=json.dumps(
        s3_sts.trust_policy(store["provider_arn"], AUDIENCE, namespace, "jupyter-operator"), separators=(",", ":")), Tags=[{"Key": "cloudidentity-spawner/hub", "Value": "another-hub"},
                                                          {"Key": "app.kubernetes.io/managed-by", "Value": "cloudidentity-spawner"}])
    c = store_spawner(namespace, gateway, hub, "x", rules).config
    found, actions = await run_gc(c, namespace, {"alice": oidc_state(**{"wlcg.groups": ["/escape"]})})
    [alice] = [e for e in found.entries if e.account.name == "jupyter-alice"]
    assert alice.state == "ok", alice.problems
    assert [(a.kind, a.identity, a.done) for a in actions] == [
        ("delete-identity", f"s3_sts:arn:aws:iam:::role/jupyterhub/{hub}/{hub}-bob", True)], [a.skipped for a in actions]
    left = {r["RoleName"] for r in store["iam"].list_roles(PathPrefix=f"/jupyterhub/{hub}/")["Roles"]}
    assert left == {f"{hub}-alice", f"{hub}-operator"}


def test_managed_roles_without_the_stores_iam_settings_stop_the_hub():
    from traitlets.config import Config

    from cloudidentity_spawner.startup import check_config

    c = Config()
    c.CloudIdentitySpawner.identity_rules = [{"name": "members", "match": {}, "s3_sts": {
        "endpoint": "https://s3.example.org", "audience": "sts.example.org",
        "managed": {"oidc_provider_arn": "arn:aws:iam:::oidc-provider/k8s.example.org", "role_path": "/j/"}}}]
    with pytest.raises(ConfigError) as e:
        check_config(c)
    assert "identity_rules[0] ('members').s3_sts.managed" in str(e.value) and "s3_sts_client_kwargs" in str(e.value)
    c.CloudIdentitySpawner.s3_sts_client_kwargs = {"endpoint_url": "https://s3.example.org"}
    check_config(c)


def test_plan_json_names_the_provider_and_what_the_pod_gets(tmp_path, capsys):
    from cloudidentity_spawner.cli import main

    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "c.CloudIdentitySpawner.hub_name = 'h'\n"
        "c.CloudIdentitySpawner.s3_sts_client_kwargs = {'endpoint_url': 'https://s3.example.org'}\n"
        "c.CloudIdentitySpawner.identity_rules = [{'name': 'members', 'match': {}, 's3_sts': {"
        "'endpoint': 'https://s3.example.org', 'audience': 'sts.example.org', 'managed': {"
        "'oidc_provider_arn': 'arn:aws:iam:::oidc-provider/k8s.example.org', 'role_path': '/jupyterhub/h/'}}}]\n")
    assert main(["plan", "--config", str(config), "--user", "alice", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["cloud"]["provider"] == "s3_sts" and plan["cloud"]["mode"] == "managed"
    assert plan["cloud"]["identity"] == "arn:aws:iam:::role/jupyterhub/h/h-alice"
    assert plan["cloud"]["pod"]["env"]["AWS_ROLE_SESSION_NAME"] == "alice"
    assert plan["cloud"]["role"]["trust_policy"]["Statement"][0]["Condition"]["StringEquals"] == {
        "k8s.example.org:sub": "system:serviceaccount:default:jupyter-alice", "k8s.example.org:aud": "sts.example.org"}


async def test_the_credentials_endpoint_serves_the_stores_credentials(namespace, gateway, store, hub, emulator, tmp_path):
    """What /api/cloudcreds/aws answers in alice's server: the store's temporary credentials for
    her role, with her session name, that reach her prefix only."""
    from cloudidentity_spawner.creds import aws_credentials

    spawner = store_spawner(namespace, gateway, hub, "alice", managed_rules(gateway, store, hub))
    pod = await start(spawner)
    try:
        env = pod_env(pod)
        token_file = tmp_path / "token"
        token_file.write_text(emulator.projected_token(namespace, pod["metadata"]["name"], s3_sts.TOKEN_VOLUME))
        creds = await aws_credentials("alice", {**env, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file)})
    finally:
        await spawner.stop()
    assert creds["RoleArn"] == env["AWS_ROLE_ARN"]
    assert creds["AssumedRoleArn"] == f"arn:aws:sts:::assumed-role/jupyterhub/{hub}/{hub}-alice/alice"
    s3 = boto3.client("s3", **gateway.client_kwargs(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]))
    s3.put_object(Bucket=BUCKET, Key="alice/from-the-endpoint", Body=b"x")
    with pytest.raises(ClientError):
        s3.get_object(Bucket=BUCKET, Key="bob/secret.txt")


async def test_another_clusters_account_of_the_same_name_cannot_reach_alices_objects(namespace, gateway, store, hub, emulator):
    """Two clusters sharing a store both name alice's account system:serviceaccount:<ns>:jupyter-alice.
    The store makes a session's objects its subject's; a role that trusts the other cluster's
    issuer (with no grant on the bucket) must still get nothing of what alice wrote."""
    from cloudidentity_spawner.testing.kubernetes import KubernetesAPIServer

    other = KubernetesAPIServer().start()
    try:
        store["iam"].create_open_id_connect_provider(Url=other.url, ClientIDList=[AUDIENCE], ThumbprintList=["0" * 40])
        other_provider = f"arn:aws:iam:::oidc-provider/{urlsplit(other.url).netloc}"
        name = f"{hub}-other-cluster"
        store["iam"].create_role(RoleName=name, Path="/", AssumeRolePolicyDocument=json.dumps(
            s3_sts.trust_policy(other_provider, AUDIENCE, namespace, "jupyter-alice"), separators=(",", ":")))
        spawner = store_spawner(namespace, gateway, hub, "alice", managed_rules(gateway, store, hub))
        pod = await start(spawner)
        try:
            mine = session(gateway, pod_env(pod)["AWS_ROLE_ARN"],
                           emulator.projected_token(namespace, pod["metadata"]["name"], s3_sts.TOKEN_VOLUME))
            mine.put_object(Bucket=BUCKET, Key="alice/private.txt", Body=b"alice's")
        finally:
            await spawner.stop()
        other.api.put("namespaces", "", {"metadata": {"name": namespace}})
        twin = other.api.put("serviceaccounts", namespace, {"metadata": {"name": "jupyter-alice"}})
        theirs = session(gateway, f"arn:aws:iam:::role/{name}", other.api.issuer.issue(namespace, twin, [AUDIENCE], 3600)[0])
        refused = {}
        for what, call in (("get", lambda: theirs.get_object(Bucket=BUCKET, Key="alice/private.txt")),
                           ("delete", lambda: theirs.delete_object(Bucket=BUCKET, Key="alice/private.txt")),
                           ("read acl", lambda: theirs.get_object_acl(Bucket=BUCKET, Key="alice/private.txt")),
                           ("put", lambda: theirs.put_object(Bucket=BUCKET, Key="alice/planted.txt", Body=b"x"))):
            with pytest.raises(ClientError) as e:
                call()
            refused[what] = e.value.response["ResponseMetadata"]["HTTPStatusCode"]
        assert refused == {"get": 403, "delete": 403, "read acl": 403, "put": 403}
    finally:
        other.stop()


def session(gateway, role_arn: str, token: str):
    """An S3 client with the credentials the store gives *token* for *role_arn*."""
    sts = boto3.client("sts", endpoint_url=gateway.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    c = sts.assume_role_with_web_identity(RoleArn=role_arn, RoleSessionName="alice", WebIdentityToken=token)["Credentials"]
    return boto3.client("s3", **gateway.client_kwargs(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]))
