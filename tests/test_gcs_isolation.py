"""Cloud Storage isolation, proven with the real google-cloud-storage client acting as each
user's Google service account, against the local server that evaluates IAM (conditions in CEL)."""

from __future__ import annotations

import datetime

import pytest

pytest.importorskip("google.cloud.storage", reason="the gcp extra is not installed")

from google.api_core import exceptions as gexc  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage  # noqa: E402
from google.oauth2.credentials import Credentials  # noqa: E402

from cloudidentity_spawner.errors import SpawnRefused  # noqa: E402
from cloudidentity_spawner.testing.iam_conditions import condition_holds  # noqa: E402

from .test_gcp import PROJECT, gcp_spawner, hub, rules, spawn  # noqa: E402,F401

BUCKET = "lab-scratch"


def client(gcp_server, token=None) -> storage.Client:
    credentials = Credentials(token=token) if token else AnonymousCredentials()
    return storage.Client(project=PROJECT, credentials=credentials, client_options={"api_endpoint": gcp_server.rest_url})


def as_user(gcp_server, email) -> storage.Client:
    """What a pod running as *email* (after GKE's Workload Identity exchange) holds."""
    return client(gcp_server, gcp_server.state.access_token(email))


@pytest.fixture
async def users(namespace, gcp_server, hub):
    """alice, alice2 and bob spawned through the real spawn path; each has notes in their prefix."""
    emails = {}
    for name in ("alice", "alice2", "bob"):
        await spawn(gcp_spawner(namespace, gcp_server, hub, name))
        emails[name] = f"{hub}-{name}@{PROJECT}.iam.gserviceaccount.com"
    owner = client(gcp_server).bucket(BUCKET)
    for name in emails:
        owner.blob(f"{name}/notes.txt").upload_from_string(f"{name}'s notes")
    return emails


def names(blobs) -> list[str]:
    return sorted(b.name for b in blobs)


async def test_alice_reads_writes_and_lists_only_her_own_prefix(gcp_server, users):
    alice = as_user(gcp_server, users["alice"]).bucket(BUCKET)
    assert alice.blob("alice/notes.txt").download_as_bytes() == b"alice's notes"
    alice.blob("alice/results.csv").upload_from_string("1,2,3")
    assert names(alice.client.list_blobs(BUCKET, prefix="alice/")) == ["alice/notes.txt", "alice/results.csv"]
    assert names(alice.client.list_blobs(BUCKET, prefix="alice/res")) == ["alice/results.csv"]


@pytest.mark.parametrize("key", ["alice2/notes.txt", "bob/notes.txt"])
async def test_alice_cannot_read_or_write_anyone_elses_objects(gcp_server, users, key):
    alice = as_user(gcp_server, users["alice"]).bucket(BUCKET)
    with pytest.raises(gexc.Forbidden, match="storage.objects.get"):
        alice.blob(key).download_as_bytes()
    with pytest.raises(gexc.Forbidden, match="storage.objects.create"):
        alice.blob(key.replace("notes", "planted")).upload_from_string("x")


@pytest.mark.parametrize("prefix", ["", "alice", "al", "alice2/", "bob/", "b"])
async def test_alice_cannot_list_outside_her_prefix(gcp_server, users, prefix):
    """Not even the names: a bare "alice" would show alice2/'s keys."""
    alice = as_user(gcp_server, users["alice"])
    with pytest.raises(gexc.Forbidden, match="storage.objects.list"):
        list(alice.list_blobs(BUCKET, prefix=prefix))


async def test_no_bucket_level_call_is_granted(gcp_server, users):
    bucket = as_user(gcp_server, users["alice"]).bucket(BUCKET)
    with pytest.raises(gexc.Forbidden, match="storage.buckets.get"):
        bucket.reload()
    with pytest.raises(gexc.Forbidden, match="storage.buckets.getIamPolicy"):
        bucket.get_iam_policy(requested_policy_version=3)
    owner_policy = client(gcp_server).bucket(BUCKET).get_iam_policy(requested_policy_version=3)
    owner_policy.bindings.append({"role": "roles/storage.admin", "members": {f"serviceAccount:{users['alice']}"}})
    with pytest.raises(gexc.Forbidden, match="storage.buckets.setIamPolicy"):
        bucket.set_iam_policy(owner_policy)


async def test_an_unknown_token_is_refused(gcp_server, users):
    import requests

    url = f"{gcp_server.rest_url}/download/storage/v1/b/{BUCKET}/o/alice%2Fnotes.txt?alt=media"
    answer = requests.get(url, headers={"Authorization": "Bearer ya29.forged"}, timeout=10)
    assert answer.status_code == 401 and answer.json()["error"]["message"] == "Invalid Credentials"


# -- the evaluator fails the designs that leak -------------------------------------------------


def grant_on_bucket(gcp_server, email, role, expression, bucket=BUCKET):
    """As the bucket's owner: a conditional binding for *email*."""
    owner = client(gcp_server).bucket(bucket)
    policy = owner.get_iam_policy(requested_policy_version=3)
    policy.version = 3
    policy.bindings.append({"role": role, "members": {f"serviceAccount:{email}"},
                            "condition": {"title": "under test", "expression": expression}})
    owner.set_iam_policy(policy)


def without_our_grants(gcp_server, email):
    owner = client(gcp_server).bucket(BUCKET)
    policy = owner.get_iam_policy(requested_policy_version=3)
    policy.bindings = [b for b in policy.bindings if f"serviceAccount:{email}" not in b["members"]]
    owner.set_iam_policy(policy)


OLD_CONDITION = (
    f'resource.name.startsWith("projects/_/buckets/{BUCKET}/objects/bob/") || '
    f'(resource.type == "storage.googleapis.com/Bucket" && resource.name == "projects/_/buckets/{BUCKET}")'
)


async def test_the_old_bucket_condition_would_leak_every_name_and_the_bucket_policy(gcp_server, users):
    """The condition the hub used to plan: listing became bucket-wide, and with a broad role
    the bucket's own IAM policy was reachable. The evaluator shows both."""
    bob = users["bob"]
    grant_on_bucket(gcp_server, bob, "roles/storage.admin", OLD_CONDITION)
    try:
        as_bob = as_user(gcp_server, bob)
        assert "alice/notes.txt" in names(as_bob.list_blobs(BUCKET, prefix=""))
        as_bob.bucket(BUCKET).get_iam_policy(requested_policy_version=3)  # allowed: the leak
    finally:
        without_our_grants(gcp_server, bob)


async def test_storage_api_attributes_grant_nothing_in_a_role_binding(gcp_server, users):
    """Google: Cloud Storage API attributes work only in Credential Access Boundaries."""
    bob = users["bob"]
    grant_on_bucket(gcp_server, bob, "roles/storage.objectViewer",
                    'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("shared/")')
    try:
        with pytest.raises(gexc.Forbidden):
            list(as_user(gcp_server, bob).list_blobs(BUCKET, prefix="shared/"))
    finally:
        without_our_grants(gcp_server, bob)


def test_conditions_are_evaluated_by_cel():
    resource = {"name": f"projects/_/buckets/{BUCKET}/objects/alice/x", "type": "storage.googleapis.com/Object"}
    assert condition_holds(f'resource.name.startsWith("projects/_/buckets/{BUCKET}/objects/alice/")', resource)
    assert not condition_holds(f'resource.name.startsWith("projects/_/buckets/{BUCKET}/objects/alice2/")', resource)
    assert not condition_holds('request.time < timestamp("2020-01-01T00:00:00Z")', resource)
    later = datetime.datetime(2019, 6, 1, tzinfo=datetime.timezone.utc)
    assert condition_holds('request.time < timestamp("2020-01-01T00:00:00Z")', resource, now=later)
    assert not condition_holds("resource.nmae == 'x'", resource)  # an evaluation error is false


def test_an_invalid_condition_is_refused_when_set(gcp_server):
    with pytest.raises(gexc.BadRequest, match="not valid CEL"):
        grant_on_bucket(gcp_server, "x@example.org", "roles/storage.objectViewer", "resource.name.startsWith(")


# -- uniform bucket-level access is required, and the spawn says so ----------------------------


async def test_prefix_grants_need_uniform_bucket_level_access(namespace, gcp_server, hub, caplog):
    gcp_server.state.add_bucket("legacy-acl-bucket", uniform_access=False)
    rule = rules(hub)
    rule[0]["gcp"]["managed"]["bucket_roles"] = [
        {"bucket": "legacy-acl-bucket", "role": "roles/storage.objectUser", "prefix": "{username}"}
    ]
    with pytest.raises(SpawnRefused):
        await gcp_spawner(namespace, gcp_server, hub, "fiona", rule_list=rule).start()
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for fiona" in r.getMessage()]
    assert "uniform bucket-level access" in line
    with pytest.raises(gexc.PreconditionFailed, match="uniform bucket-level access"):
        grant_on_bucket(gcp_server, "x@example.org", "roles/storage.objectViewer", "true", bucket="legacy-acl-bucket")
