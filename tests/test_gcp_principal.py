"""GCP principal mode: roles for the Kubernetes ServiceAccount's own Workload Identity Federation
principal, no Google service account. Real google-cloud clients against the local server."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

pytest.importorskip("google.cloud.storage", reason="the gcp extra is not installed")

from google.api_core import exceptions as gexc  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage  # noqa: E402
from google.oauth2.credentials import Credentials  # noqa: E402

from cloudidentity_spawner import ConfigError  # noqa: E402
from cloudidentity_spawner.claims import Claims  # noqa: E402
from cloudidentity_spawner.errors import SpawnRefused  # noqa: E402
from cloudidentity_spawner.providers import _backends, gcp_iam  # noqa: E402
from cloudidentity_spawner.rules import IdentityRules  # noqa: E402

from .kubehelpers import (  # noqa: E402
    SpawnUser, create_service_account, delete_service_account, make_spawner, oidc_state, read, run_gc, spawner_config,
)
from .test_gcp import PROJECT, members  # noqa: E402
from cloudidentity_spawner import CloudIdentitySpawner  # noqa: E402

NUMBER = "123456789012"  # the local server's number for my-project
ROLE = "roles/storage.objectUser"


@pytest.fixture
def bucket(gcp_server):
    _backends.clear()
    name = "wif-" + uuid.uuid4().hex[:8]
    gcp_server.state.add_bucket(name)
    return name


def principal_rules(bucket, **extra):
    return [{
        "name": "staff",
        "match": {"groups": ["/staff"]},
        "scope": "user",
        "gcp": {"principal": {
            "project": PROJECT, "project_number": NUMBER,
            "project_roles": ["roles/serviceusage.serviceUsageConsumer"],
            "bucket_roles": [{"bucket": bucket, "role": ROLE, "prefix": "{username}", "managed_folder": True}],
            **extra,
        }},
    }]


def spawner_for(namespace, gcp_server, name, rule_list):
    c = spawner_config(namespace, rule_list, gcp_client_factory=gcp_server.client_factory(),
                       gcp_activation_seconds=0, gcp_annotation_settle_seconds=0)
    return make_spawner(CloudIdentitySpawner, c, SpawnUser(name, oidc_state(groups=["/staff"])))


async def spawn(spawner):
    await spawner.start()
    await spawner.stop()


def member(namespace, name):
    return (f"principal://iam.googleapis.com/projects/{NUMBER}/locations/global/workloadIdentityPools/"
            f"{PROJECT}.svc.id.goog/subject/ns/{namespace}/sa/jupyter-{name}")


def folder(bucket, prefix):
    return f"projects/_/buckets/{bucket}/managedFolders/{prefix}/"


def storage_as(gcp_server, token=None) -> storage.Client:
    credentials = Credentials(token=token) if token else AnonymousCredentials()
    return storage.Client(project=PROJECT, credentials=credentials, client_options={"api_endpoint": gcp_server.rest_url})


def test_plan_json_names_the_principal_and_its_bindings():
    plan = IdentityRules.from_config(principal_rules("lab-scratch")).resolve(Claims("alice", ("/staff",)), "jhub").to_dict()
    cloud = plan["cloud"]
    assert cloud["provider"] == "gcp" and cloud["mode"] == "principal"
    assert cloud["member"] == cloud["identity"] == member("jhub", "alice")
    assert cloud["bindings"] == [
        {"resource": f"projects/{PROJECT}", "role": "roles/serviceusage.serviceUsageConsumer", "member": member("jhub", "alice")},
        {"resource": folder("lab-scratch", "alice"), "role": ROLE, "member": member("jhub", "alice")},
    ]
    assert "iam.gke.io/gcp-service-account" not in plan["service_account"]["annotations"]


@pytest.mark.parametrize("change,message", [
    ({"project_number": "my-project"}, "project_number"),
    ({"bucket_roles": [{"bucket": "b-1", "role": ROLE, "prefix": "{username}", "managed_folder": False}]}, "managed_folder"),
    ({"project_roles": [], "bucket_roles": []}, "grants nothing"),
    ({"service_account": "x"}, "unknown key 'service_account'"),
])
def test_bad_principal_blocks_are_refused_at_start_up(change, message):
    with pytest.raises(ConfigError, match=message) as e:
        IdentityRules.from_config(principal_rules("lab-scratch", **change))
    assert "identity_rules[0] ('staff').gcp.principal" in str(e.value)


async def test_grants_go_to_the_service_account_itself_and_no_google_account_is_made(namespace, gcp_server, bucket):
    accounts_before = set(gcp_server.state.accounts)
    await spawn(spawner_for(namespace, gcp_server, "alice", principal_rules(bucket)))
    assert set(gcp_server.state.accounts) == accounts_before
    assert members(gcp_server, folder(bucket, "alice"), ROLE) == {member(namespace, "alice")}
    assert member(namespace, "alice") in members(gcp_server, f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer")
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    annotations = sa["metadata"]["annotations"]
    assert "iam.gke.io/gcp-service-account" not in annotations
    assert annotations["cloudidentity-spawner/managed-identity"] == "gcp:" + member(namespace, "alice")
    assert json.loads(annotations["cloudidentity-spawner/gcp-bindings"]) == [
        [f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer", ""], [folder(bucket, "alice"), ROLE, ""],
    ]


@pytest.fixture
async def users(namespace, gcp_server, bucket):
    for name in ("alice", "alice2", "bob"):
        await spawn(spawner_for(namespace, gcp_server, name, principal_rules(bucket)))
    owner = storage_as(gcp_server).bucket(bucket)
    for name in ("alice", "alice2", "bob"):
        owner.blob(f"{name}/notes.txt").upload_from_string(f"{name}'s notes")
    # What GKE's metadata server hands alice's pod: a federated token for her ServiceAccount.
    return storage_as(gcp_server, gcp_server.state.federated_token(namespace, "jupyter-alice", PROJECT))


async def test_alice_reaches_her_prefix_and_nothing_else(gcp_server, bucket, users):
    alice = users.bucket(bucket)
    assert alice.blob("alice/notes.txt").download_as_bytes() == b"alice's notes"
    alice.blob("alice/results.csv").upload_from_string("1,2,3")
    assert sorted(b.name for b in users.list_blobs(bucket, prefix="alice/")) == ["alice/notes.txt", "alice/results.csv"]
    for key in ("alice2/notes.txt", "bob/notes.txt"):
        with pytest.raises(gexc.Forbidden, match="storage.objects.get"):
            alice.blob(key).download_as_bytes()
        with pytest.raises(gexc.Forbidden, match="storage.objects.create"):
            alice.blob(key.replace("notes", "planted")).upload_from_string("x")
    for prefix in ("", "al", "alice", "alice2/", "bob/"):
        with pytest.raises(gexc.Forbidden, match="storage.objects.list"):
            list(users.list_blobs(bucket, prefix=prefix))
    with pytest.raises(gexc.Forbidden, match="storage.buckets.getIamPolicy"):
        alice.get_iam_policy(requested_policy_version=3)


async def test_the_same_name_in_another_namespace_is_another_principal(gcp_server, bucket, users):
    other = storage_as(gcp_server, gcp_server.state.federated_token("other-namespace", "jupyter-alice", PROJECT))
    with pytest.raises(gexc.Forbidden):
        other.bucket(bucket).blob("alice/notes.txt").download_as_bytes()


async def test_deleting_the_user_removes_exactly_their_grants(namespace, gcp_server, bucket, users):
    await spawner_for(namespace, gcp_server, "alice", principal_rules(bucket)).delete_forever()
    assert members(gcp_server, folder(bucket, "alice"), ROLE) == set()
    project_members = members(gcp_server, f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer")
    assert member(namespace, "alice") not in project_members and member(namespace, "bob") in project_members
    assert members(gcp_server, folder(bucket, "bob"), ROLE) == {member(namespace, "bob")}
    with pytest.raises(gexc.Forbidden):
        users.bucket(bucket).blob("alice/notes.txt").download_as_bytes()


async def test_a_changed_rule_revokes_what_it_no_longer_grants(namespace, gcp_server, bucket):
    await spawn(spawner_for(namespace, gcp_server, "carol", principal_rules(bucket)))
    narrower = principal_rules(bucket)
    narrower[0]["gcp"]["principal"]["project_roles"] = []
    await spawn(spawner_for(namespace, gcp_server, "carol", narrower))
    assert member(namespace, "carol") not in members(gcp_server, f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer")
    assert members(gcp_server, folder(bucket, "carol"), ROLE) == {member(namespace, "carol")}
    # and a rule with no cloud identity at all takes every grant back before the pod starts
    await spawn(spawner_for(namespace, gcp_server, "carol", [{"name": "staff", "match": {"groups": ["/staff"]}}]))
    assert members(gcp_server, folder(bucket, "carol"), ROLE) == set()


async def test_a_pool_that_does_not_exist_fails_the_spawn_clearly(namespace, gcp_server, bucket, caplog):
    with pytest.raises(SpawnRefused, match="could not be set up"):
        await spawner_for(namespace, gcp_server, "dan", principal_rules(bucket, project_number="999999999999")).start()
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for dan" in r.getMessage()]
    assert "Identity Pool does not exist" in line


async def test_rate_limited_calls_are_tried_again(namespace, gcp_server, bucket, monkeypatch):
    # Managed-folder calls get no retry from the storage client; the hub tries 429s again itself
    # (every retry of the schedule, without its waits: their length is not what this is about).
    monkeypatch.setattr(gcp_iam, "RATE_LIMIT_BACKOFF", replace(gcp_iam.RATE_LIMIT_BACKOFF, base_delay=0.001, max_delay=0.002))
    gcp_server.state.throttle_share, gcp_server.state.throttled_count = 0.5, 0
    try:
        await spawn(spawner_for(namespace, gcp_server, "hana", principal_rules(bucket)))
    finally:
        gcp_server.state.throttle_share = 0.0
    assert gcp_server.state.throttled_count > 0
    assert members(gcp_server, folder(bucket, "hana"), ROLE) == {member(namespace, "hana")}


async def test_a_name_two_rules_share_gets_no_grant_before_the_owner_check(namespace, gcp_server, bucket):
    """A group's account name held by someone else's account (scopes cannot render each other's
    names, but an account may be there already) must not collect the group's grants before the
    spawn is refused for the name clash."""
    group_rule = principal_rules(bucket)
    group_rule[0].update(scope="group", match={"groups": ["atlas"]})
    group_rule[0]["gcp"]["principal"]["bucket_roles"] = [{"bucket": bucket, "role": "roles/storage.objectViewer", "prefix": "shared"}]
    c = spawner_config(namespace, group_rule, gcp_client_factory=gcp_server.client_factory(), gcp_activation_seconds=0)
    mallory = make_spawner(CloudIdentitySpawner, c, SpawnUser("mallory", oidc_state(groups=["atlas"])))
    name = mallory.compiled_rules.resolve(Claims("mallory", ("atlas",)), namespace).service_account.name
    await create_service_account(namespace, {"metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "cloudidentity-spawner"},
                                                          "annotations": {"cloudidentity-spawner/owner": "user:alice"}}})
    with pytest.raises(SpawnRefused):
        await mallory.start()
    assert gcp_server.state.managed_folders.get((bucket, "shared/")) is None
    assert members(gcp_server, folder(bucket, "shared"), "roles/storage.objectViewer") == set()


async def test_a_user_whose_grants_cannot_be_removed_keeps_the_record(namespace, gcp_server, bucket, caplog, monkeypatch):
    await spawn(spawner_for(namespace, gcp_server, "kim", principal_rules(bucket)))
    # every retry, without their waits (the schedule's own length is not what this test is about)
    monkeypatch.setattr(gcp_iam, "RATE_LIMIT_BACKOFF", replace(gcp_iam.RATE_LIMIT_BACKOFF, base_delay=0.001, max_delay=0.002))
    gcp_server.state.throttle_share = 1.0  # Google refuses every call, past every retry
    try:
        await spawner_for(namespace, gcp_server, "kim", principal_rules(bucket)).delete_forever()
    finally:
        gcp_server.state.throttle_share = 0.0
    assert await read("serviceaccount", namespace, "jupyter-kim") is not None  # still records what to remove
    assert any("could not be removed" in r.getMessage() for r in caplog.records)
    await spawner_for(namespace, gcp_server, "kim", principal_rules(bucket)).delete_forever()
    assert members(gcp_server, folder(bucket, "kim"), ROLE) == set()
    assert await read("serviceaccount", namespace, "jupyter-kim") is None


def grant(gcp_server, resource, role, member_):
    """A grant made outside the hub (by the project's owner)."""
    policies = gcp_server.state.policies
    policy = policies.get(resource)
    policy["bindings"].append({"role": role, "members": [member_]})
    policies.set(resource, policy)


async def test_gc_removes_the_grants_of_a_service_account_deleted_by_hand(namespace, gcp_server, bucket):
    """bob's ServiceAccount was deleted by hand: its principal's grants would reach any new account
    of that name. gc --principal-grants removes exactly those (with --min-age 0); alice's, a grant
    of a role no rule gives, another pool's principal of the same name and a principal in a
    namespace this hub does not use stay."""
    for name in ("alice", "bob"):
        await spawn(spawner_for(namespace, gcp_server, name, principal_rules(bucket)))
    await delete_service_account(namespace, "jupyter-bob")
    gcp_server.state.project_numbers.setdefault("other-project", "999999999999")  # another cluster's pool
    other_pool = member(namespace, "bob").replace(NUMBER, "999999999999").replace(PROJECT, "other-project")
    grant(gcp_server, folder(bucket, "bob"), ROLE, other_pool)
    grant(gcp_server, folder(bucket, "bob"), "roles/storage.objectViewer", member(namespace, "bob"))
    c = spawner_for(namespace, gcp_server, "x", principal_rules(bucket)).config
    users = {n: oidc_state(groups=["/staff"]) for n in ("alice", "bob")}

    def mine(actions):  # the project is shared with other tests' namespaces
        return sorted((a.grant.resource, a.grant.role, a.done, bool(a.skipped)) for a in actions
                      if a.kind == "remove-grant" and f"/ns/{namespace}/" in a.grant.member)

    _, unasked = await run_gc(c, namespace, users, apply=False)
    assert mine(unasked) == []  # only on the operator's word: nothing marks a principal grant as this hub's
    _, waiting = await run_gc(c, namespace, users, apply=False, min_age=600, principal_grants=True)
    assert mine(waiting) == [(folder(bucket, "bob"), ROLE, False, True),
                             (f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer", False, True)]
    # Another cluster's workload in another namespace, granted the same role on the same folder.
    grant(gcp_server, folder(bucket, "bob"), ROLE, member("prod", "bob"))
    _, actions = await run_gc(c, namespace, users, principal_grants=True)
    assert mine(actions) == [(folder(bucket, "bob"), ROLE, True, False),
                             (f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer", True, False)]
    assert members(gcp_server, folder(bucket, "bob"), ROLE) == {other_pool, member("prod", "bob")}
    assert members(gcp_server, folder(bucket, "bob"), "roles/storage.objectViewer") == {member(namespace, "bob")}
    project_members = members(gcp_server, f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer")
    assert member(namespace, "bob") not in project_members and member(namespace, "alice") in project_members
    assert members(gcp_server, folder(bucket, "alice"), ROLE) == {member(namespace, "alice")}
