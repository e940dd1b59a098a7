"""CloudIdentitySpawner through KubeSpawner's real start()/stop(), against a Kubernetes API.

Every scenario runs on the emulator by default; with --kubeconfig they run
against a real cluster (scenarios that need fault injection are skipped there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as kube_config
from kubespawner import KubeSpawner

from cloudidentity_spawner import CloudIdentitySpawner, pre_spawn_hook
from cloudidentity_spawner.errors import SpawnRefused

from .kubehelpers import SpawnUser, create_service_account, list_events, make_spawner, oidc_state, read, spawner_config

ROLE = "arn:aws:iam::123456789012:role/jupyterhub/user-{username}"
RULES = [
    {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
     "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/atlas"}},
    {"name": "members", "match": {"groups": ["/escape"]}, "aws": {"role_arn": ROLE},
     "env": {"SCRATCH_BUCKET": "s3://scratch/{username}"}},
]


def spawner_for(namespace, name, groups, rules=RULES, server_name="", cls=CloudIdentitySpawner, **extra):
    user = SpawnUser(name, oidc_state(**{"wlcg.groups": list(groups)}))
    return make_spawner(cls, spawner_config(namespace, rules, **extra), user, server_name)


async def start_and_stop(spawner):
    url = await spawner.start()
    pod = await read("pod", spawner.namespace, spawner.pod_name)
    await spawner.stop()
    return url, pod


async def test_first_spawn_creates_annotated_account_and_pod_runs_under_it(namespace, caplog):
    caplog.set_level(logging.INFO)
    spawner = spawner_for(namespace, "alice", ["/escape"])
    url, pod = await start_and_stop(spawner)
    assert url.startswith("http://")

    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/jupyterhub/user-alice"
    assert sa["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "cloudidentity-spawner"
    assert sa["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == "jupyter-alice"
    assert pod["spec"]["automountServiceAccountToken"] is False
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["SCRATCH_BUCKET"] == "s3://scratch/alice"

    [audit] = [r for r in caplog.records if r.getMessage().startswith("cloudidentity audit")]
    record = json.loads(audit.getMessage().split(" ", 2)[2])
    assert record["user"] == "alice"
    assert record["rule"] == "members"
    assert record["service_account"] == f"{namespace}/jupyter-alice"
    assert record["cloud_identity"].endswith("role/jupyterhub/user-alice")
    assert record["service_account_change"] == "created"


@pytest.mark.emulator_only
@pytest.mark.parametrize("cache,expected", [(True, ["POST"]), (False, ["GET", "POST"])], ids=["watch-cache", "no-cache"])
async def test_cold_spawn_costs_one_request_with_a_synced_cache(namespace, emulator, cache, expected):
    """Absence from a synced watch cache is an answer: only the create is sent."""
    spawner = spawner_for(namespace, "cora", ["/escape"], service_account_cache=cache)
    if cache:
        await spawner._service_account_cache()  # the hub's cache is running before the first spawn
    base = len(emulator.requests)
    await spawner._provisioner().prepare(namespace, await spawner._service_account_cache())
    # The cache's own list/watch requests serve all spawns; count what this spawn asked for.
    sa_requests = [m for m, p, q in emulator.requests[base:] if "/serviceaccounts/" in p or (m != "GET" and p.endswith("/serviceaccounts"))]
    assert sa_requests == expected


@pytest.mark.emulator_only
@pytest.mark.parametrize("cache,expected", [(True, 0), (False, 1)], ids=["watch-cache", "no-cache"])
async def test_warm_spawn_writes_nothing(namespace, emulator, cache, expected):
    await start_and_stop(spawner_for(namespace, "bob", ["/escape"], service_account_cache=cache))
    before = await read("serviceaccount", namespace, "jupyter-bob")
    base = len(emulator.requests)
    await start_and_stop(spawner_for(namespace, "bob", ["/escape"], service_account_cache=cache))
    # The cache's own list/watch requests serve all spawns; count what this spawn asked for.
    sa_requests = [
        (m, p) for m, p, q in emulator.requests[base:]
        if "/serviceaccounts/" in p or (m != "GET" and p.endswith("/serviceaccounts"))
    ]
    assert sa_requests == [("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/jupyter-bob")] * expected
    after = await read("serviceaccount", namespace, "jupyter-bob")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_rule_change_patches_only_our_annotation(namespace):
    await start_and_stop(spawner_for(namespace, "carol", ["/escape"]))
    # Someone else annotates the account; we must leave their key alone.
    from kubernetes_asyncio import client, config
    import os

    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).patch_namespaced_service_account(
            "jupyter-carol", namespace, {"metadata": {"annotations": {"team.example.org/cost-centre": "42"}}},
        )
    rules = [dict(RULES[1], aws={"role_arn": "arn:aws:iam::123456789012:role/v2/{username}"})]
    await start_and_stop(spawner_for(namespace, "carol", ["/escape"], rules=rules))
    annotations = (await read("serviceaccount", namespace, "jupyter-carol"))["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/v2/carol"
    assert annotations["team.example.org/cost-centre"] == "42"

    # Moving the rule to GCP removes the AWS annotation we owned.
    gcp_rules = [{"name": "members", "match": {"groups": ["/escape"]},
                  "gcp": {"service_account": "nb-{username}@my-project.iam.gserviceaccount.com"}}]
    await start_and_stop(spawner_for(namespace, "carol", ["/escape"], rules=gcp_rules))
    annotations = (await read("serviceaccount", namespace, "jupyter-carol"))["metadata"]["annotations"]
    assert "eks.amazonaws.com/role-arn" not in annotations
    assert annotations["iam.gke.io/gcp-service-account"] == "nb-carol@my-project.iam.gserviceaccount.com"
    assert annotations["team.example.org/cost-centre"] == "42"


async def test_group_scope_shares_one_account(namespace):
    _, pod_a = await start_and_stop(spawner_for(namespace, "amir", ["/escape", "/escape/atlas"]))
    _, pod_b = await start_and_stop(spawner_for(namespace, "anna", ["/escape/atlas"]))
    assert pod_a["spec"]["serviceAccountName"] == pod_b["spec"]["serviceAccountName"]
    sa = await read("serviceaccount", namespace, pod_a["spec"]["serviceAccountName"])
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/jupyterhub/atlas")
    assert sa["metadata"]["annotations"]["cloudidentity-spawner/owner"] == "group:/escape/atlas"


async def test_racing_spawns_for_one_new_account_both_succeed(namespace, kube_server):
    spawners = [spawner_for(namespace, name, ["/escape/atlas"]) for name in ("r1", "r2", "r3")]
    if kube_server is not None:  # slow answers: every spawn reads "missing" before any create lands
        kube_server.api.latency = 0.05
    try:
        plans = await asyncio.gather(*(s._provisioner().prepare(namespace) for s in spawners))
    finally:
        if kube_server is not None:
            kube_server.api.latency = 0.0
    assert len({p.service_account.name for p in plans}) == 1
    assert await read("serviceaccount", namespace, plans[0].service_account.name) is not None
    if kube_server is not None:
        creates = kube_server.api.count("POST", f"/namespaces/{namespace}/serviceaccounts$")
        assert creates >= 2, "the race did not happen: only one create was attempted"
        ours = [sa for sa in kube_server.api.list("serviceaccounts", namespace) if sa["metadata"]["name"] != "default"]
        assert len(ours) == 1


@pytest.mark.emulator_only
async def test_api_500_is_retried_then_spawn_succeeds(namespace, emulator):
    emulator.fail("GET", f"/namespaces/{namespace}/serviceaccounts/jupyter-dan$", 500, count=2)
    emulator.fail("POST", f"/namespaces/{namespace}/serviceaccounts$", 503, count=1)
    url, pod = await start_and_stop(spawner_for(namespace, "dan", ["/escape"], service_account_cache=False))
    assert pod["spec"]["serviceAccountName"] == "jupyter-dan"
    assert emulator.count("GET", "serviceaccounts/jupyter-dan$") == 3
    assert emulator.count("POST", f"/namespaces/{namespace}/serviceaccounts$") == 2


@pytest.mark.emulator_only
async def test_api_down_fails_the_spawn_clearly_and_creates_no_pod(namespace, emulator, caplog):
    emulator.fail("*", f"/namespaces/{namespace}/serviceaccounts", 503, count=1000)
    spawner = spawner_for(namespace, "erin", ["/escape"])
    try:
        with pytest.raises(SpawnRefused) as e:
            await spawner.start()
    finally:
        emulator.faults.clear()
    assert "cluster did not answer" in e.value.jupyterhub_message
    assert "Traceback" not in e.value.jupyterhub_message
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for erin" in r.getMessage()]
    assert "rule members" in line and "503" in line
    assert await read("pod", namespace, spawner.pod_name) is None


async def test_no_matching_rule_is_a_clear_spawn_failure(namespace, caplog):
    spawner = spawner_for(namespace, "bob", ["/other"])
    with pytest.raises(SpawnRefused) as e:
        await spawner.start()
    assert e.value.jupyterhub_message == (
        "No cloud identity is configured for user 'bob' (group /other); ask your hub admin."
    )
    assert any("no identity rule matches user 'bob'" in r.getMessage() for r in caplog.records)
    assert await read("pod", namespace, spawner.pod_name) is None


async def test_missing_auth_state_fails_the_spawn(namespace):
    spawner = make_spawner(CloudIdentitySpawner, spawner_config(namespace, RULES), SpawnUser("frank", None))
    with pytest.raises(SpawnRefused, match="log in again"):
        await spawner.start()


PROFILES = [
    {"display_name": "Default", "slug": "default", "default": True},
    {
        "display_name": "Evil",
        "slug": "evil",
        "kubespawner_override": {
            "service_account": "hub",
            "automount_service_account_token": True,
            "extra_pod_config": {"serviceAccountName": "hub", "serviceAccount": "hub"},
            "namespace": None,
        },
    },
]


async def test_hostile_form_post_cannot_change_the_account(namespace):
    PROFILES[1]["kubespawner_override"]["namespace"] = namespace
    spawner = spawner_for(namespace, "gina", ["/escape"], KubeSpawner__profile_list=PROFILES)
    form = {"profile": ["evil"], "service_account": ["hub"], "automount_service_account_token": ["true"],
            "extra_annotations": ['{"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/admin"}']}
    spawner.user_options = spawner.options_from_form(form)
    spawner.user_options["service_account"] = "hub"  # as if posted straight to the REST API
    _, pod = await start_and_stop(spawner)
    assert pod["spec"]["serviceAccountName"] == "jupyter-gina"
    assert pod["spec"].get("serviceAccount") in (None, "jupyter-gina")
    assert pod["spec"]["automountServiceAccountToken"] is False
    sa = await read("serviceaccount", namespace, "jupyter-gina")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/jupyterhub/user-gina")
    assert await read("serviceaccount", namespace, "hub") is None


async def test_operator_can_still_mount_a_token_on_purpose(namespace):
    spawner = spawner_for(namespace, "hank", ["/escape"], KubeSpawner__automount_service_account_token=True)
    _, pod = await start_and_stop(spawner)
    assert pod["spec"]["automountServiceAccountToken"] is True


async def test_foreign_account_is_not_taken_over(namespace):
    await create_service_account(namespace, {"metadata": {"name": "jupyter-ivan", "annotations": {"x": "1"}}})
    with pytest.raises(SpawnRefused, match=f"ServiceAccount {namespace}/jupyter-ivan already exists"):
        await spawner_for(namespace, "ivan", ["/escape"]).start()
    sa = await read("serviceaccount", namespace, "jupyter-ivan")
    assert sa["metadata"]["annotations"] == {"x": "1"}


async def test_adopted_account_is_updated_but_never_deleted(namespace):
    await create_service_account(namespace, {"metadata": {"name": "jupyter-jo", "annotations": {"x": "1"}}})
    rules = [dict(RULES[1], adopt=True)]
    spawner = spawner_for(namespace, "jo", ["/escape"], rules=rules)
    await start_and_stop(spawner)
    sa = await read("serviceaccount", namespace, "jupyter-jo")
    assert sa["metadata"]["annotations"]["x"] == "1"
    assert sa["metadata"]["annotations"]["cloudidentity-spawner/adopted"] == "true"
    await spawner.delete_forever()
    assert await read("serviceaccount", namespace, "jupyter-jo") is not None


async def test_two_owners_never_share_an_account(namespace):
    # A badly chosen template maps every user to one name: the second user is refused.
    rules = [{"name": "bad", "match": {}, "service_account": "jupyter-shared"}]
    await start_and_stop(spawner_for(namespace, "kim", [], rules=rules))
    with pytest.raises(SpawnRefused, match="belongs to someone else"):
        await spawner_for(namespace, "lee", [], rules=rules).start()


async def test_delete_forever_removes_only_the_users_own_account(namespace):
    alice = spawner_for(namespace, "mia", ["/escape", "/escape/atlas"])
    await start_and_stop(alice)  # group account (atlas)
    personal = spawner_for(namespace, "mia", ["/escape"])
    await start_and_stop(personal)  # user account
    named = spawner_for(namespace, "mia", ["/escape"], server_name="gpu")
    await start_and_stop(named)
    assert named.service_account == "jupyter-mia"  # named servers share the user's account

    await named.delete_forever()
    assert await read("serviceaccount", namespace, "jupyter-mia") is not None

    await personal.delete_forever()
    assert await read("serviceaccount", namespace, "jupyter-mia") is None
    group_sa = alice.service_account
    assert await read("serviceaccount", namespace, group_sa) is not None


async def test_pre_spawn_hook_for_stock_kubespawner(namespace):
    user = SpawnUser("nora", oidc_state(**{"wlcg.groups": ["/escape"]}))
    c = spawner_config(namespace, [])
    c.CloudIdentity.identity_rules = RULES
    c.KubeSpawner.profile_list = [dict(PROFILES[1], default=True, kubespawner_override={"service_account": "hub"})]
    seen = []
    c.KubeSpawner.modify_pod_hook = lambda spawner, pod: seen.append(pod.spec.service_account_name) or pod
    spawner = make_spawner(KubeSpawner, c, user)
    await pre_spawn_hook(spawner)
    _, pod = await start_and_stop(spawner)
    assert pod["spec"]["serviceAccountName"] == "jupyter-nora"
    assert seen == ["hub"]  # the operator's own hook still ran, before the pin
    sa = await read("serviceaccount", namespace, "jupyter-nora")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("/user-nora")


async def test_bad_rules_fail_when_the_spawner_is_built(namespace):
    with pytest.raises(Exception, match=r"identity_rules\[0\] \('x'\)\.scope"):
        spawner_for(namespace, "olga", [], rules=[{"name": "x", "match": {}, "scope": "galaxy"}])


async def test_decisions_are_counted_in_prometheus_metrics(namespace):
    from prometheus_client import REGISTRY

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ok = value("cloudidentity_spawn_decisions_total", outcome="ok", scope="user", provider="aws")
    refused = value("cloudidentity_spawn_decisions_total", outcome="refused", scope="", provider="")
    created = value("cloudidentity_service_account_changes_total", change="created")
    await start_and_stop(spawner_for(namespace, "pia", ["/escape"]))
    with pytest.raises(SpawnRefused):
        await spawner_for(namespace, "quin", ["/nothing"]).start()
    assert value("cloudidentity_spawn_decisions_total", outcome="ok", scope="user", provider="aws") == ok + 1
    assert value("cloudidentity_spawn_decisions_total", outcome="refused", scope="", provider="") == refused + 1
    assert value("cloudidentity_service_account_changes_total", change="created") == created + 1
    assert value("cloudidentity_identity_step_seconds_count", outcome="ok") >= 1


async def test_unreachable_api_server_fails_the_spawn_clearly(namespace, caplog):
    import socket

    from kubernetes_asyncio import client

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{closed}"
    api_client = client.ApiClient(configuration)
    try:
        provisioner = spawner_for(namespace, "ursula", ["/escape"])._provisioner()
        provisioner.accounts.api = client.CoreV1Api(api_client)
        with pytest.raises(SpawnRefused) as e:
            await provisioner.prepare(namespace)
    finally:
        await api_client.close()
    assert e.value.status_code == 503
    assert "cluster did not answer" in e.value.jupyterhub_message
    retries = [r for r in caplog.records if "retry" in r.getMessage() and "ServiceAccount" in r.getMessage()]
    assert len(retries) == 4  # 5 attempts in all
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for ursula" in r.getMessage()]
    assert "rule members" in line


# -- what an admin does behind the hub's back ------------------------------------------------------


async def cluster_api():
    api_client = await kube_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    return api_client, k8s.CoreV1Api(api_client)


async def until(condition, seconds=10.0):
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the watch cache never caught up")


async def test_account_deleted_behind_the_watch_cache_is_made_again(namespace, kube_server):
    """`kubectl delete sa` between spawns: the cache still holds the account, the cluster refuses
    the pod (no such ServiceAccount); the spawn makes the account again and the pod starts.
    On the emulator the watch is held back so the cache really is stale; on a real cluster the
    test runs unchanged (the cache may or may not have caught up - either way the spawn works)."""
    await start_and_stop(spawner_for(namespace, "gil", ["/escape"]))
    if kube_server is not None:
        kube_server.api.watch_delays["serviceaccounts"] = 3.0
    try:
        api_client, api = await cluster_api()
        async with api_client:
            await api.delete_namespaced_service_account("jupyter-gil", namespace)
        pods_before = kube_server.api.count("POST", f"/namespaces/{namespace}/pods$") if kube_server else 0
        url, pod = await start_and_stop(spawner_for(namespace, "gil", ["/escape"]))
    finally:
        if kube_server is not None:
            kube_server.api.watch_delays.clear()
    assert pod["spec"]["serviceAccountName"] == "jupyter-gil"
    sa = await read("serviceaccount", namespace, "jupyter-gil")
    assert sa["metadata"]["annotations"]["cloudidentity-spawner/owner"] == "user:gil"
    if kube_server is not None:  # the stale path really ran: refused once, then created
        assert kube_server.api.count("POST", f"/namespaces/{namespace}/pods$") - pods_before == 2


async def test_hand_edited_annotation_is_put_back_at_the_next_spawn(namespace):
    """An admin points the account at another role by hand; the next spawn restores the plan's
    role (and keeps annotations that are not ours)."""
    spawner = spawner_for(namespace, "hal", ["/escape"])
    await start_and_stop(spawner)
    api_client, api = await cluster_api()
    async with api_client:
        await api.patch_namespaced_service_account("jupyter-hal", namespace, {"metadata": {"annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::999999999999:role/someone-else",
            "team.example.org/note": "edited by hand",
        }}})
    cache = await spawner._service_account_cache()
    key = f"{namespace}/jupyter-hal"
    await until(lambda: "999999999999" in str((cache.get(key) or {}).get("metadata", {}).get("annotations")))
    url, pod = await start_and_stop(spawner_for(namespace, "hal", ["/escape"]))
    annotations = (await read("serviceaccount", namespace, "jupyter-hal"))["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/jupyterhub/user-hal"
    assert annotations["team.example.org/note"] == "edited by hand"
    assert pod["spec"]["serviceAccountName"] == "jupyter-hal"


# -- the pin is last, whatever runs after it -------------------------------------------------------


def hostile_hook(spawner, pod):
    """An operator's (or a profile's) hook that tries to change what the plan decided."""
    from kubernetes_asyncio.client.models import V1EnvVar

    pod.spec.service_account_name = "hub"
    pod.spec.automount_service_account_token = True
    pod.spec.containers[0].env = [V1EnvVar(name="SCRATCH_BUCKET", value="s3://scratch/everyone")]
    return pod


def env_of(pod):
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}


@pytest.mark.parametrize("where", ["operator", "profile"])
async def test_hooks_after_the_manifest_cannot_change_the_pin(namespace, where):
    extra = {"KubeSpawner__modify_pod_hook": hostile_hook} if where == "operator" else {
        "KubeSpawner__profile_list": [{"display_name": "p", "slug": "p", "default": True,
                                       # callables in overrides are called with the spawner first
                                       "kubespawner_override": {"modify_pod_hook": lambda spawner: hostile_hook}}]}
    _, pod = await start_and_stop(spawner_for(namespace, "ola", ["/escape"], **extra))
    assert pod["spec"]["serviceAccountName"] == "jupyter-ola"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert env_of(pod)["SCRATCH_BUCKET"] == "s3://scratch/ola"
    assert env_of(pod)["CLOUDIDENTITY_SERVICE_ACCOUNT"] == "jupyter-ola"


def hook_spawner(namespace, name, profile_list):
    user = SpawnUser(name, oidc_state(**{"wlcg.groups": ["/escape"]}))
    c = spawner_config(namespace, [])
    c.CloudIdentity.identity_rules = RULES
    c.KubeSpawner.profile_list = profile_list
    return make_spawner(KubeSpawner, c, user)


async def test_hook_pins_the_plans_env_over_a_profiles(namespace):
    profile = {"display_name": "p", "slug": "p", "default": True,
               "kubespawner_override": {"environment": {"SCRATCH_BUCKET": "s3://scratch/everyone"}}}
    spawner = hook_spawner(namespace, "pat", [profile])
    await pre_spawn_hook(spawner)
    _, pod = await start_and_stop(spawner)
    assert env_of(pod)["SCRATCH_BUCKET"] == "s3://scratch/pat"


@pytest.mark.parametrize("profile,fragment", [
    ({"kubespawner_override": {"modify_pod_hook": hostile_hook}}, "sets modify_pod_hook"),
    ({"allowed_groups": ["/escape/atlas"]}, "uses allowed_groups"),
    ({"identity_rule": "atlas"}, "uses identity_rule"),
    ({"profile_options": {"image": {"display_name": "i", "choices": {
        "x": {"display_name": "x", "allowed_groups": ["/staff"], "kubespawner_override": {}}}}}}, "choice 'x' uses allowed_groups"),
])
async def test_hook_refuses_profiles_it_cannot_enforce(namespace, caplog, profile, fragment):
    """Fail closed, not open: the hook runs before KubeSpawner applies the profile."""
    from traitlets.config import Config

    from cloudidentity_spawner.startup import check_hook_profiles
    from cloudidentity_spawner.errors import ConfigError

    profiles = [{"display_name": "p", "slug": "p", "default": True, **profile}]
    with pytest.raises(SpawnRefused, match="cannot enforce"):
        await pre_spawn_hook(hook_spawner(namespace, "quinn", profiles))
    assert any(fragment in r.getMessage() for r in caplog.records)
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.KubeSpawner.pre_spawn_hook = pre_spawn_hook
    c.KubeSpawner.profile_list = profiles
    with pytest.raises(ConfigError, match=fragment):
        check_hook_profiles(c)  # and the hub would not start


# -- smaller defects -------------------------------------------------------------------------------


async def test_a_resolver_plan_gets_our_markers_and_spawns_twice(namespace):
    from cloudidentity_spawner.plan import IdentityPlan, ServiceAccountPlan

    def resolver(spawner, claims):
        return IdentityPlan(user=claims.username, groups=claims.groups, rule="resolver", scope="user",
                            owner=f"user:{claims.username}", service_account=ServiceAccountPlan("sa-rosa", namespace))

    for _ in range(2):  # the second spawn must find the account it made its own
        _, pod = await start_and_stop(spawner_for(namespace, "rosa", [], identity_resolver=resolver))
    assert pod["spec"]["serviceAccountName"] == "sa-rosa"
    sa = await read("serviceaccount", namespace, "sa-rosa")
    assert sa["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "cloudidentity-spawner"
    assert sa["metadata"]["annotations"]["cloudidentity-spawner/owner"] == "user:rosa"


async def test_a_stopped_watch_cache_is_not_trusted(namespace):
    spawner = spawner_for(namespace, "sam", ["/escape"])
    await start_and_stop(spawner)
    reflector = KubeSpawner.reflectors[("serviceaccounts", namespace)]
    await reflector.stop()  # e.g. the watch gave up after API errors
    api_client, api = await cluster_api()
    async with api_client:
        await api.patch_namespaced_service_account("jupyter-sam", namespace, {"metadata": {"annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::999999999999:role/someone-else"}}})
    await start_and_stop(spawner_for(namespace, "sam", ["/escape"]))
    annotations = (await read("serviceaccount", namespace, "jupyter-sam"))["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/jupyterhub/user-sam"


@pytest.mark.emulator_only
async def test_missing_rbac_names_the_permission_for_the_admin(namespace, emulator, caplog):
    emulator.fail("POST", f"/namespaces/{namespace}/serviceaccounts$", 403, reason="Forbidden")
    with pytest.raises(SpawnRefused, match="not allowed to manage it"):
        await spawner_for(namespace, "tia", ["/escape"]).start()
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for tia" in r.getMessage()]
    assert "Kubernetes permissions" in line and "injected failure 403 for POST" in line and "rbac.yaml" in line
    assert "did not answer" not in line


# -- enable_user_namespaces ------------------------------------------------------------------------


async def test_user_namespaces_first_spawn_makes_the_namespace_then_the_account(namespace):
    """A new user's namespace does not exist yet: it is made before their ServiceAccount."""
    spawner = spawner_for(namespace, "uma", ["/escape"], KubeSpawner__enable_user_namespaces=True,
                          KubeSpawner__user_namespace_template=f"{namespace}-{{username}}")
    user_ns = f"{namespace}-uma"
    try:
        _, pod = await start_and_stop(spawner)
        assert spawner.namespace == user_ns
        assert pod["metadata"]["namespace"] == user_ns and pod["spec"]["serviceAccountName"] == "jupyter-uma"
        sa = await read("serviceaccount", user_ns, "jupyter-uma")
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("/user-uma")
        # the cluster-wide watch cache serves the next spawn
        cache = await spawner._service_account_cache()
        assert f"{user_ns}/jupyter-uma" in cache
    finally:
        for key in [k for k in KubeSpawner.reflectors if k[1] is None]:
            await KubeSpawner.reflectors.pop(key).stop()
        api_client, api = await cluster_api()
        async with api_client:
            await api.delete_namespace(user_ns)


@pytest.mark.emulator_only
async def test_a_watch_that_cannot_start_degrades_to_reads_instead_of_halting_the_hub(namespace, emulator, caplog):
    """KubeSpawner's own cluster-wide reflectors call sys.exit when they cannot start."""
    spawner = spawner_for(namespace, "vic", ["/escape"], KubeSpawner__enable_user_namespaces=True,
                          KubeSpawner__user_namespace_template=f"{namespace}-{{username}}")
    emulator.fail("GET", "^/api/v1/serviceaccounts$", 403, reason="Forbidden")  # e.g. no cluster-wide list
    try:
        assert await spawner._service_account_cache() is None
    finally:
        KubeSpawner.reflectors.pop(("serviceaccounts", None), None)
    assert any("watch cache unavailable" in r.getMessage() for r in caplog.records)


# -- what EKS's webhook would add, added by us ------------------------------------------------------


def webhook_mutation(pod: dict, cached_role: str | None) -> dict:
    """EKS's pod-identity webhook, as its handler documents it: nothing without a role in its
    cache; a container that already has AWS_ROLE_ARN or AWS_WEB_IDENTITY_TOKEN_FILE keeps its
    env; a mount or pod volume named aws-iam-token is not added again."""
    import copy

    pod = copy.deepcopy(pod)
    if not cached_role:
        return pod
    spec = pod["spec"]
    for container in spec["containers"]:
        names = {e["name"] for e in container.get("env", [])}
        if not names & {"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"}:
            container.setdefault("env", []).extend([
                {"name": "AWS_ROLE_ARN", "value": cached_role},
                {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}])
        if not any(m["name"] == "aws-iam-token" for m in container.get("volumeMounts", [])):
            container.setdefault("volumeMounts", []).append(
                {"name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount", "readOnly": True})
    if not any(v["name"] == "aws-iam-token" for v in spec.get("volumes", [])):
        spec.setdefault("volumes", []).append({"name": "aws-iam-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}})
    return pod


@pytest.mark.parametrize("webhook_cache", [None, "arn:aws:iam::123456789012:role/jupyterhub/old-role"],
                         ids=["webhook-missed-the-account", "webhook-has-the-old-role"])
async def test_the_pod_carries_the_plans_irsa_role_whatever_the_webhook_cache_says(namespace, webhook_cache):
    _, pod = await start_and_stop(spawner_for(namespace, "yan", ["/escape"]))
    mutated = webhook_mutation(pod, webhook_cache)
    [container] = mutated["spec"]["containers"]
    env = [(e["name"], e.get("value")) for e in container["env"]]
    assert env.count(("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/jupyterhub/user-yan")) == 1
    assert [n for n, _ in env].count("AWS_ROLE_ARN") == 1
    assert ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token") in env
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "aws-iam-token"]
    assert mount["mountPath"] == "/var/run/secrets/eks.amazonaws.com/serviceaccount" and mount["readOnly"]
    [volume] = [v for v in mutated["spec"]["volumes"] if v["name"] == "aws-iam-token"]
    [source] = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "sts.amazonaws.com"


async def test_irsa_in_the_pod_spec_can_be_left_to_the_webhook(namespace):
    _, pod = await start_and_stop(spawner_for(namespace, "zed", ["/escape"], irsa_pod_spec=False))
    assert "AWS_ROLE_ARN" not in env_of(pod)
    assert not any(v["name"] == "aws-iam-token" for v in pod["spec"].get("volumes", []))
    assert env_of(pod)["AWS_ROLE_SESSION_NAME"] == "zed"  # the webhook sets none: the log still names zed


async def test_the_role_session_names_the_person_also_on_a_groups_role(namespace):
    """CloudTrail shows assumed-role/<role>/<session>: on the ATLAS group's shared role, each
    member's session is their own name (escaped: a name cannot pose as another)."""
    _, pod = await start_and_stop(spawner_for(namespace, "Amy.Lee@cern.ch", ["/escape", "/escape/atlas"]))
    env = env_of(pod)
    assert env["AWS_ROLE_ARN"].endswith("/atlas")
    assert env["AWS_ROLE_SESSION_NAME"] == "amy.lee@cern.ch---" + env["AWS_ROLE_SESSION_NAME"].split("---")[1]
    assert len(env["AWS_ROLE_SESSION_NAME"]) <= 64


@pytest.mark.emulator_only
async def test_a_409_whose_account_is_gone_by_the_re_read_creates_it_again(namespace, emulator):
    """Another spawn's account was deleted between its create and ours: nothing is there."""
    emulator.fail("POST", f"/namespaces/{namespace}/serviceaccounts$", 409, reason="AlreadyExists")
    _, pod = await start_and_stop(spawner_for(namespace, "abe", ["/escape"], service_account_cache=False))
    assert pod["spec"]["serviceAccountName"] == "jupyter-abe"
    assert await read("serviceaccount", namespace, "jupyter-abe") is not None
    assert emulator.count("POST", f"/namespaces/{namespace}/serviceaccounts$") == 2


async def test_the_hook_with_user_namespaces_makes_the_namespace_first(namespace):
    user = SpawnUser("wil", oidc_state(**{"wlcg.groups": ["/escape"]}))
    c = spawner_config(namespace, [])
    c.CloudIdentity.identity_rules = RULES
    c.KubeSpawner.enable_user_namespaces = True
    c.KubeSpawner.user_namespace_template = f"{namespace}-{{username}}"
    spawner = make_spawner(KubeSpawner, c, user)
    try:
        await pre_spawn_hook(spawner)
        assert (await read("serviceaccount", f"{namespace}-wil", "jupyter-wil")) is not None
    finally:
        api_client, api = await cluster_api()
        async with api_client:
            await api.delete_namespace(f"{namespace}-wil")


async def test_kubectl_describe_sa_tells_what_the_hub_did(namespace):
    """An Event on the ServiceAccount for each create, change and revocation (background, best effort)."""
    rules = [{"name": "everyone", "match": {}, "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/user-{username}"}}]
    s = make_spawner(CloudIdentitySpawner, spawner_config(namespace, rules), SpawnUser("olga", oidc_state()))
    await s.start()
    await s.stop()
    moved = [{"name": "moved", "match": {}, "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/other"}}]
    s = make_spawner(CloudIdentitySpawner, spawner_config(namespace, moved), SpawnUser("olga", oidc_state()))
    await s.start()
    await s.stop()
    events = []
    for _ in range(50):
        events = [e for e in (await list_events(namespace))
                  if e["involvedObject"].get("kind") == "ServiceAccount" and e["involvedObject"]["name"] == "jupyter-olga"]
        if len(events) >= 2:
            break
        await asyncio.sleep(0.1)
    by_reason = {e["reason"]: e["message"] for e in events}
    assert "rule 'everyone'" in by_reason["CloudIdentityCreated"] and "role/jupyterhub/user-olga" in by_reason["CloudIdentityCreated"]
    assert "rule 'moved'" in by_reason["CloudIdentityUpdated"] and "role/jupyterhub/other" in by_reason["CloudIdentityUpdated"]
    assert all(e["source"]["component"] == "cloudidentity-spawner" and e["type"] == "Normal" for e in events)


async def test_containers_given_as_z2jh_gives_them_get_the_irsa_role_too(namespace):
    """z2jh passes singleuser.initContainers / extraContainers as dicts; KubeSpawner turns the
    containers into models but leaves their env and volumeMounts dicts. Pinning must handle them."""
    containers = {
        "KubeSpawner__init_containers": [{"name": "fix-perms", "image": "busybox", "command": ["true"],
                                          "env": [{"name": "MODE", "value": "0700"}],
                                          "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}]}],
        "KubeSpawner__extra_containers": [{"name": "sidecar", "image": "busybox", "command": ["sleep", "1d"],
                                           "env": [{"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::123456789012:role/other"}],
                                           "volumeMounts": [{"name": "home", "mountPath": "/data"}]}],
        "KubeSpawner__volumes": [{"name": "home", "emptyDir": {}}],
    }
    _, pod = await start_and_stop(spawner_for(namespace, "zoe", ["/escape"], **containers))
    role = "arn:aws:iam::123456789012:role/jupyterhub/user-zoe"
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["AWS_ROLE_ARN"] == role, container["name"]  # the sidecar's own value is replaced
        assert {m["name"] for m in container["volumeMounts"]} >= {"aws-iam-token"}
    [init] = pod["spec"]["initContainers"]
    assert {e["name"]: e.get("value") for e in init["env"]}["MODE"] == "0700"
    assert {m["name"] for m in init["volumeMounts"]} == {"home", "aws-iam-token"}


async def test_a_jupyterhub_admin_gets_the_admin_rules_identity(namespace):
    rules = [{"name": "admins", "match": {"admin": True}, "scope": "hub",
              "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/hub-admins"}}, *RULES]
    spawner = make_spawner(CloudIdentitySpawner, spawner_config(namespace, rules),
                           SpawnUser("ada", oidc_state(**{"wlcg.groups": ["/escape"]}), admin=True))
    _, pod = await start_and_stop(spawner)
    sa = await read("serviceaccount", namespace, pod["spec"]["serviceAccountName"])
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/jupyterhub/hub-admins")
    _, member = await start_and_stop(spawner_for(namespace, "ben", ["/escape"], rules=rules))
    assert member["spec"]["serviceAccountName"] == "jupyter-ben"  # not an admin: the members rule


# -- identities made at login ----------------------------------------------------------------------


async def patch_annotation(namespace, name, key, value):
    api_client, api = await cluster_api()
    async with api_client:
        await api.patch_namespaced_service_account(name, namespace, {"metadata": {"annotations": {key: value}}})


class LoginHandler:
    """What prepare_at_login uses of JupyterHub's login handler: the stored users, the log."""

    def __init__(self, users, log):
        self.users, self.log = users, log
        self.authenticator = type("A", (), {"enable_auth_state": True})()

    def find_user(self, name):
        return self.users.get(name)


async def test_the_identity_is_made_at_login_for_the_profile_the_user_last_chose(namespace, caplog):
    from cloudidentity_spawner.hooks import _PREPARING, prepare_at_login

    caplog.set_level("INFO")
    profiles = [{"display_name": "Standard", "slug": "standard", "default": True},
                {"display_name": "Personal", "slug": "personal", "identity_rule": "members"}]
    ann = spawner_for(namespace, "ann", ["/escape", "/escape/atlas"], KubeSpawner__profile_list=profiles)
    ann.user_options = {"profile": "personal"}  # what JupyterHub kept from her last spawn
    bob = spawner_for(namespace, "bob", ["/other"])
    dee = spawner_for(namespace, "dee", ["/escape"])
    await start_and_stop(dee)  # dee's account exists: it is her spawns' to change
    await patch_annotation(namespace, "jupyter-dee", "eks.amazonaws.com/role-arn", "arn:aws:iam::123456789012:role/by-hand")
    users = {name: type("U", (), {"spawner": s, "get_auth_state": s.user.get_auth_state})()
             for name, s in (("ann", ann), ("bob", bob), ("dee", dee))}
    handler = LoginHandler(users, ann.log)
    for name in ("ann", "bob", "dee", "nobody"):
        authentication = {"name": name, "auth_state": {}}
        assert prepare_at_login(None, handler, authentication) is authentication  # at once: the login goes on
    await asyncio.sleep(0.5)
    # Until JupyterHub has stored this login (groups, auth_state), nothing is planned from the last one.
    assert await read("serviceaccount", namespace, "jupyter-ann") is None
    for user in users.values():
        user._auth_refreshed = 1.0  # what JupyterHub's login_user sets once the login is stored
    await asyncio.wait_for(asyncio.gather(*list(_PREPARING.values())), 30)
    account = await read("serviceaccount", namespace, "jupyter-ann")
    assert account["metadata"]["annotations"]["cloudidentity-spawner/rule"] == "members"  # her profile's, not atlas
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == ROLE.format(username="ann")
    assert await read("serviceaccount", namespace, "jupyter-bob") is None  # no rule: nothing, and no error
    dee_account = await read("serviceaccount", namespace, "jupyter-dee")
    assert dee_account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/by-hand")  # not changed
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert any('"event": "cloudidentity.prepare"' in r.getMessage() for r in caplog.records)
