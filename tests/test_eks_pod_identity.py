"""EKS Pod Identity: one association per ServiceAccount, made by the hub through the real boto3
EKS client against the strict local EKS API (checked against botocore's own service model)."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests

boto3 = pytest.importorskip("boto3", reason="the aws extra is not installed")

from botocore.exceptions import ClientError  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cloudidentity_spawner import CloudIdentitySpawner, ConfigError  # noqa: E402
from cloudidentity_spawner import names  # noqa: E402
from cloudidentity_spawner.claims import Claims  # noqa: E402
from cloudidentity_spawner.errors import SpawnRefused  # noqa: E402
from cloudidentity_spawner.providers import _backends  # noqa: E402
from cloudidentity_spawner.providers.aws import pod_identity_tag_policy, scratch_prefix_policy  # noqa: E402
from cloudidentity_spawner.rules import IdentityRules  # noqa: E402
from cloudidentity_spawner.testing.eks import EKSPodIdentity  # noqa: E402
from cloudidentity_spawner.testing.kubernetes import KubernetesAPIServer  # noqa: E402

from .aws_policy import problems  # noqa: E402
from .kubehelpers import (  # noqa: E402
    SpawnUser, delete_service_account, make_spawner, oidc_state, read, run_gc, spawner_config, user_namespaces,
    with_saved_servers,
)
from .test_aws_policy_semantics import list_prefixes_allowed, probes, reveals, string_like  # noqa: E402

CLUSTER = "escape-eks"
ROLE = "arn:aws:iam::123456789012:role/jupyterhub/notebooks"


@pytest.fixture(scope="module")
def eks_server():
    server = KubernetesAPIServer(api=EKSPodIdentity(clusters=(CLUSTER,))).start()
    yield server
    server.stop()


@pytest.fixture
def eks(eks_server, moto_endpoint):  # moto_endpoint: test credentials in the environment
    _backends.clear()
    state = eks_server.api
    state.throttle_share, state.delay, state.association_limit = 0.0, 0.0, 5000
    state.calls.clear()
    return eks_server


def client(eks):
    return boto3.client("eks", endpoint_url=eks.url, region_name="eu-west-1")


def rules(session_policy=True, **extra):
    block = {"cluster": CLUSTER, "role_arn": ROLE, **extra}
    if session_policy:
        block["session_policy"] = scratch_prefix_policy("escape-scratch")
    return [{"name": "everyone", "match": {}, "scope": "user", "aws": {"pod_identity": block}}]


def spawner(namespace, eks, name, rule_list=None, **extra):
    extra.setdefault("hub_name", "hub1")
    c = spawner_config(namespace, rule_list or rules(), aws_eks_client_kwargs={"endpoint_url": eks.url, "region_name": "eu-west-1"},
                       **extra)
    return make_spawner(CloudIdentitySpawner, c, SpawnUser(name, oidc_state()))


async def spawn(s):
    await s.start()
    await s.stop()


def association(eks, namespace, account):
    return eks.api.association_for(CLUSTER, namespace, account)


def test_plan_json_shows_the_association():
    plan = IdentityRules.from_config(rules()).resolve(Claims("alice", ()), "jhub").to_dict()
    cloud = plan["cloud"]
    assert cloud["provider"] == "aws" and cloud["mode"] == "pod_identity" and cloud["identity"] == ROLE
    a = cloud["association"]
    assert {k: a[k] for k in ("clusterName", "namespace", "serviceAccount", "roleArn", "disableSessionTags")} == {
        "clusterName": CLUSTER, "namespace": "jhub", "serviceAccount": "jupyter-alice", "roleArn": ROLE,
        "disableSessionTags": True}
    assert json.loads(a["policy"])["Statement"][0]["Resource"] == "arn:aws:s3:::escape-scratch/alice/*"
    assert not any(k.startswith("eks.amazonaws.com/") for k in plan["service_account"]["annotations"])
    without = IdentityRules.from_config(rules(session_policy=False)).resolve(Claims("alice", ()), "jhub").to_dict()
    assert without["cloud"]["association"]["disableSessionTags"] is False and without["cloud"]["association"]["policy"] is None


@pytest.mark.parametrize("block,message", [
    ({"role_arn": ROLE}, "missing required key 'cluster'"),
    ({"cluster": "bad name!", "role_arn": ROLE}, "cluster"),
    ({"cluster": CLUSTER, "role_arn": "arn:aws:iam::12:role/x"}, "12 digits"),
    ({"cluster": CLUSTER, "role_arn": ROLE,
      "session_policy": {"Version": "2012-10-17", "Statement": [
          {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::b/{{username}}/{i}/*"} for i in range(12)]}},
     "EKS allows 2048"),
])
def test_bad_pod_identity_blocks_are_refused_at_start_up(block, message):
    with pytest.raises(ConfigError, match=message) as e:
        IdentityRules.from_config([{"name": "everyone", "match": {}, "aws": {"pod_identity": block}}])
    assert "identity_rules[0] ('everyone').aws.pod_identity" in str(e.value)


async def test_spawn_makes_one_tagged_association_and_pins_the_pod(namespace, eks):
    s = spawner(namespace, eks, "alice")
    await s.start()
    a = association(eks, namespace, "jupyter-alice")
    assert a["roleArn"] == ROLE and a["disableSessionTags"] is True
    planned = IdentityRules.from_config(rules()).resolve(Claims("alice", ()), namespace).cloud.resources["association"]
    assert a["policy"] == planned["policy"] and "arn:aws:s3:::escape-scratch/alice/*" in a["policy"]
    assert a["tags"]["app.kubernetes.io/managed-by"] == "cloudidentity-spawner" and a["tags"]["cloudidentity-spawner/owner"] == "user:alice"
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert not any(k.startswith("eks.amazonaws.com/") for k in sa["metadata"].get("annotations", {}))
    pod = await read("pod", namespace, s.pod_name)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://169.254.170.23/v1/credentials"
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"].endswith("/eks-pod-identity-token")
    assert env["CLOUDIDENTITY_AWS_ROLE_ARN"] == ROLE  # for the credentials endpoint to name
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "eks-pod-identity-token"]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pods.eks.amazonaws.com"
    await s.stop()


@pytest.mark.parametrize("cache_seconds,expected", [(3600, {}), (0, {"ListPodIdentityAssociations": 1, "DescribePodIdentityAssociation": 1})])
async def test_a_warm_spawn_makes_no_eks_write(namespace, eks, cache_seconds, expected):
    await spawn(spawner(namespace, eks, "bob", cloud_cache_seconds=cache_seconds))
    eks.api.calls.clear()
    await spawn(spawner(namespace, eks, "bob", cloud_cache_seconds=cache_seconds))
    assert dict(eks.api.calls) == expected


async def test_drift_is_repaired_and_a_foreign_association_is_never_touched(namespace, eks):
    await spawn(spawner(namespace, eks, "carol", cloud_cache_seconds=0))
    a = association(eks, namespace, "jupyter-carol")
    client(eks).update_pod_identity_association(clusterName=CLUSTER, associationId=a["associationId"],
                                                roleArn="arn:aws:iam::123456789012:role/admin", policy="")
    await spawn(spawner(namespace, eks, "carol", cloud_cache_seconds=0))
    repaired = association(eks, namespace, "jupyter-carol")
    assert repaired["roleArn"] == ROLE and "escape-scratch/carol/" in repaired["policy"]

    client(eks).create_pod_identity_association(clusterName=CLUSTER, namespace=namespace, serviceAccount="jupyter-dave",
                                                roleArn="arn:aws:iam::123456789012:role/admin")
    with pytest.raises(SpawnRefused, match="does not manage for you"):
        await spawner(namespace, eks, "dave").start()
    assert association(eks, namespace, "jupyter-dave")["roleArn"] == "arn:aws:iam::123456789012:role/admin"
    await spawner(namespace, eks, "dave").delete_forever()
    assert association(eks, namespace, "jupyter-dave") is not None  # not ours: kept


async def test_deleting_the_user_deletes_their_association(namespace, eks):
    await spawn(spawner(namespace, eks, "erin"))
    await spawner(namespace, eks, "erin").delete_forever()
    assert association(eks, namespace, "jupyter-erin") is None
    assert await read("serviceaccount", namespace, "jupyter-erin") is None


async def test_a_server_in_a_new_namespace_deletes_the_old_namespaces_association(namespace, eks):
    """User namespaces, the template changed: the old namespace's account and its association go."""
    old, new = f"{namespace}-a-fay", f"{namespace}-b-fay"
    async with user_namespaces(old, new):
        for template in (f"{namespace}-a-{{username}}", f"{namespace}-b-{{username}}"):
            s = spawner(namespace, eks, "fay", KubeSpawner__enable_user_namespaces=True,
                        KubeSpawner__user_namespace_template=template)
            await spawn(with_saved_servers(s, default=None))
        assert association(eks, new, "jupyter-fay") is not None
        assert association(eks, old, "jupyter-fay") is None
        assert await read("serviceaccount", old, "jupyter-fay") is None


async def test_a_rule_without_pod_identity_revokes_the_association_first(namespace, eks):
    await spawn(spawner(namespace, eks, "fay"))
    existing_role = [{"name": "everyone", "match": {}, "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/fay"}}]
    await spawn(spawner(namespace, eks, "fay", rule_list=existing_role))
    assert association(eks, namespace, "jupyter-fay") is None
    sa = await read("serviceaccount", namespace, "jupyter-fay")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/jupyterhub/fay")


async def test_the_association_quota_is_a_clear_message(namespace, eks, caplog):
    eks.api.association_limit = len([a for a in eks.api.associations.values() if a["clusterName"] == CLUSTER])
    with pytest.raises(SpawnRefused, match="Pod Identity association quota is reached"):
        await spawner(namespace, eks, "gus").start()
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for gus" in r.getMessage()]
    assert "5,000 associations by default" in line


async def test_a_throttled_surge_makes_each_association_once(namespace, eks):
    eks.api.throttle_share = 0.2
    users = [f"surge-{i}" for i in range(16)] + ["surge-0"]  # and a double click
    await asyncio.gather(*(spawner(namespace, eks, u)._provisioner().prepare(namespace) for u in users))
    made = [a for a in eks.api.associations.values() if a["namespace"] == namespace and a["serviceAccount"].startswith("jupyter-surge-")]
    assert len(made) == 16 == len({a["serviceAccount"] for a in made})
    assert eks.api.throttled > 0


def test_the_local_eks_refuses_what_eks_refuses(eks):
    eks_client = client(eks)
    eks_client.create_pod_identity_association(clusterName=CLUSTER, namespace="ns1", serviceAccount="sa1", roleArn=ROLE)
    with pytest.raises(ClientError) as e:
        eks_client.create_pod_identity_association(clusterName=CLUSTER, namespace="ns1", serviceAccount="sa1", roleArn=ROLE)
    assert e.value.response["Error"]["Code"] == "ResourceInUseException"
    with pytest.raises(eks_client.exceptions.ResourceNotFoundException):
        eks_client.describe_pod_identity_association(clusterName=CLUSTER, associationId="a-00000000000000000")
    with pytest.raises(eks_client.exceptions.ResourceNotFoundException, match="No cluster found"):
        eks_client.list_pod_identity_associations(clusterName="other-cluster")
    with pytest.raises(eks_client.exceptions.InvalidParameterException, match="disableSessionTags"):
        eks_client.create_pod_identity_association(clusterName=CLUSTER, namespace="ns1", serviceAccount="sa2",
                                                   roleArn=ROLE, policy=json.dumps(scratch_prefix_policy("b-1")))
    with pytest.raises(eks_client.exceptions.InvalidParameterException, match="namespace"):
        eks_client.create_pod_identity_association(clusterName=CLUSTER, namespace="Not_DNS", serviceAccount="sa2", roleArn=ROLE)
    # what botocore's client-side checks would catch, sent raw: the model is enforced by the server too
    raw = requests.post(f"{eks.url}/clusters/{CLUSTER}/pod-identity-associations", json={"namespace": "ns1"}, timeout=10)
    assert raw.status_code == 400 and raw.headers["x-amzn-ErrorType"] == "InvalidParameterException"
    assert "Missing required parameter" in raw.json()["message"]


# -- isolation: the rendered documents, evaluated with IAM's semantics --------------------------


def session_policy(username: str) -> dict:
    plan = IdentityRules.from_config(rules()).resolve(Claims(username, ()), "jhub")
    return json.loads(plan.cloud.resources["association"]["policy"])


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_no_session_policy_reaches_another_users_prefix(user, victim):
    me, them = names.resource_part(user), names.resource_part(victim)
    document = session_policy(user)
    [objects] = [s for s in document["Statement"] if "s3:GetObject" in s["Action"]]
    assert string_like(objects["Resource"], f"arn:aws:s3:::escape-scratch/{me}/notes")
    patterns = list_prefixes_allowed(document, "escape-scratch")
    if me != them:
        assert not string_like(objects["Resource"], f"arn:aws:s3:::escape-scratch/{them}/notes")
        assert not any(string_like(p, probe) for p in patterns for probe in probes(them) if reveals(probe, them))


def with_session_tags(document: dict, namespace: str, service_account: str) -> dict:
    """The role policy as IAM evaluates it for one session: EKS sets these session tags."""
    text = json.dumps(document)
    text = text.replace("${aws:PrincipalTag/kubernetes-namespace}", namespace)
    text = text.replace("${aws:PrincipalTag/kubernetes-service-account}", service_account)
    return json.loads(text)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_the_session_tag_policy_keeps_each_service_account_to_its_prefix(user, victim):
    me, them = names.ksa_name(user), names.ksa_name(victim)
    document = with_session_tags(pod_identity_tag_policy("escape-scratch"), "jhub", f"jupyter-{me}")
    [objects] = [s for s in document["Statement"] if "s3:GetObject" in s["Action"]]
    assert string_like(objects["Resource"], f"arn:aws:s3:::escape-scratch/jhub/jupyter-{me}/notes")
    patterns = list_prefixes_allowed(document, "escape-scratch")
    if me != them:
        victim_prefix = f"jhub/jupyter-{them}"
        assert not string_like(objects["Resource"], f"arn:aws:s3:::escape-scratch/{victim_prefix}/notes")
        assert not any(string_like(p, probe) for p in patterns for probe in probes(victim_prefix) if reveals(probe, victim_prefix))


def test_the_pod_identity_documents_use_only_keys_their_actions_carry():
    assert problems(session_policy("alice")) == []
    # with the session's tags resolved, as IAM resolves the variables
    assert problems(with_session_tags(pod_identity_tag_policy("escape-scratch"), "jhub", "jupyter-alice")) == []
    assert "${aws:PrincipalTag/kubernetes-service-account}" in json.dumps(pod_identity_tag_policy("escape-scratch"))


def test_the_hubs_eks_policy_allows_every_call_it_makes_and_only_with_its_tags():
    import re
    from pathlib import Path

    from cloudidentity_spawner.providers import eks_pod_identity

    source = Path(eks_pod_identity.__file__).read_text()
    made = set(re.findall(r'_call\(\s*"(\w+)"', source))
    assert made == {"ListPodIdentityAssociations", "DescribePodIdentityAssociation", "CreatePodIdentityAssociation",
                    "UpdatePodIdentityAssociation", "DeletePodIdentityAssociation"}
    policy = json.loads((Path(__file__).parent.parent / "examples/aws/hub-eks-pod-identity-policy.json").read_text())
    allowed = {}
    for statement in policy["Statement"]:
        for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
            allowed[action] = statement
    for operation in made:
        assert f"eks:{operation}" in allowed, operation
    plan_tags = IdentityRules.from_config(rules(), "escape-hub").resolve(Claims("alice", ()), "jhub").cloud.resources["association"]["tags"]
    create = allowed["eks:CreatePodIdentityAssociation"]["Condition"]["StringEquals"]
    change = allowed["eks:DeletePodIdentityAssociation"]["Condition"]["StringEquals"]
    for key, value in create.items():
        assert plan_tags[key.removeprefix("aws:RequestTag/")] == value
    for key, value in change.items():
        assert plan_tags[key.removeprefix("aws:ResourceTag/")] == value
    assert allowed["iam:PassRole"]["Condition"]["StringEquals"]["iam:PassedToService"] == "pods.eks.amazonaws.com"


async def test_a_new_association_gets_time_to_take_effect(namespace, eks):
    import time

    timings = []
    for _ in range(2):
        s = spawner(namespace, eks, "ivy", aws_pod_identity_propagation_seconds=0.6)
        t0 = time.perf_counter()
        await s._provisioner().prepare(namespace)
        timings.append(time.perf_counter() - t0)
    assert timings[0] >= 0.6 > timings[1]  # created: waited; unchanged: not


async def test_removing_a_session_policy_makes_the_association_again(namespace, eks):
    await spawn(spawner(namespace, eks, "jon", cloud_cache_seconds=0))
    before = association(eks, namespace, "jupyter-jon")
    await spawn(spawner(namespace, eks, "jon", rule_list=rules(session_policy=False), cloud_cache_seconds=0))
    after = association(eks, namespace, "jupyter-jon")
    assert "policy" not in after and after["disableSessionTags"] is False
    assert after["associationId"] != before["associationId"] and after["tags"] == before["tags"]


async def test_the_spawn_page_says_what_the_long_steps_are_doing(namespace, eks):
    s = spawner(namespace, eks, "lea", aws_pod_identity_propagation_seconds=0.2)
    await s.start()
    events = []
    async for event in s.progress():
        events.append(event["message"])
        if len(events) >= 3:
            break
    await s.stop()
    assert events[:3] == ["Creating your cloud identity (an EKS Pod Identity association).",
                          "Waiting 0.2 s for EKS to apply your cloud identity.",
                          f"Your server will run as {ROLE} through an EKS Pod Identity association (rule everyone, your own)."]


async def test_gc_removes_associations_of_users_gone_and_of_accounts_deleted_by_hand(namespace, eks):
    hub = "gc-" + namespace  # the cluster holds other tests' associations, of hub "hub1"
    for user in ("alice", "bob", "carol"):
        await spawn(spawner(namespace, eks, user, hub_name=hub))
    await delete_service_account(namespace, "jupyter-bob")
    client(eks).create_pod_identity_association(clusterName=CLUSTER, namespace=namespace, serviceAccount="operator",
                                                roleArn="arn:aws:iam::123456789012:role/admin")
    c = spawner(namespace, eks, "x", hub_name=hub).config
    _, young = await run_gc(c, namespace, {"carol": oidc_state(), "bob": oidc_state()}, apply=False, min_age=600)
    [left] = [a for a in young if a.kind == "delete-identity"]
    assert left.skipped.startswith("made ") and "a spawn may still be setting it up" in left.skipped
    found, actions = await run_gc(c, namespace, {"carol": oidc_state(), "bob": oidc_state()})
    assert sorted((a.kind, a.identity, a.done) for a in actions) == [
        ("delete-account", f"eks:{CLUSTER}/{namespace}/jupyter-alice", True),
        ("delete-identity", f"eks:{CLUSTER}/{namespace}/jupyter-bob", True)]
    assert association(eks, namespace, "jupyter-alice") is None and association(eks, namespace, "jupyter-bob") is None
    assert association(eks, namespace, "jupyter-carol") is not None
    assert association(eks, namespace, "operator") is not None  # not ours
