"""Hub-managed Google service accounts, with the real google-cloud clients against a local server."""

from __future__ import annotations

import asyncio
import uuid

import pytest

pytest.importorskip("google.cloud.iam_admin_v1", reason="the gcp extra is not installed")

from google.api_core import exceptions as gexc  # noqa: E402

from cloudidentity_spawner import CloudIdentitySpawner  # noqa: E402
from cloudidentity_spawner.providers import _backends  # noqa: E402
from cloudidentity_spawner.config import identity_settings  # noqa: E402
from cloudidentity_spawner.errors import SpawnRefused  # noqa: E402
from cloudidentity_spawner.provisioner import revoke_identity  # noqa: E402

from .kubehelpers import SpawnUser, another_namespace, delete_service_account, hub_accounts, make_spawner, oidc_state, read, run_gc, spawner_config  # noqa: E402

PROJECT = "my-project"


@pytest.fixture
def hub(gcp_server):
    _backends.clear()
    gcp_server.state.fail_next_set_with_conflict = 0
    gcp_server.state.visibility_delay = 0.0
    return "h" + uuid.uuid4().hex[:5]


def rules(hub, **managed):
    return [{
        "name": "staff",
        "match": {"groups": ["/staff"]},
        "gcp": {"managed": {
            "project": PROJECT,
            "account_id": f"{hub}-{{username}}",
            "project_roles": ["roles/serviceusage.serviceUsageConsumer"],
            "bucket_roles": [{"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": "{username}"}],
            **managed,
        }},
    }]


def gcp_spawner(namespace, gcp_server, hub, name, rule_list=None, **extra):
    extra.setdefault("gcp_activation_seconds", 0)  # the activation tests set these
    extra.setdefault("gcp_annotation_settle_seconds", 0)
    c = spawner_config(namespace, rule_list or rules(hub), hub_name=hub, gcp_client_factory=gcp_server.client_factory(), **extra)
    return make_spawner(CloudIdentitySpawner, c, SpawnUser(name, oidc_state(groups=["/staff"])))


def backend():
    [b] = _backends.values()
    return b


def policy(gcp_server, resource):
    key = resource.split("/serviceAccounts/")[-1]
    return gcp_server.state.policies.get(key)


def members(gcp_server, resource, role):
    return {m for b in policy(gcp_server, resource)["bindings"] if b["role"] == role for m in b["members"]}


def waits(spawner) -> list[str]:
    """The spawn page's messages about waits (without the line saying who the server runs as)."""
    return [m for m in spawner._identity_progress if not m.startswith("Your server will run as")]


async def spawn(spawner):
    await spawner.start()
    await spawner.stop()


async def test_account_and_exact_bindings_are_created(namespace, gcp_server, hub):
    await spawn(gcp_spawner(namespace, gcp_server, hub, "alice"))
    email = f"{hub}-alice@{PROJECT}.iam.gserviceaccount.com"
    account = gcp_server.state.accounts[email]
    assert account["display_name"] == f"JupyterHub {hub}: user:alice"
    assert "[cloudidentity-spawner hub=" in account["description"]
    assert policy(gcp_server, email)["bindings"] == [
        {"role": "roles/iam.workloadIdentityUser", "members": [f"serviceAccount:{PROJECT}.svc.id.goog[{namespace}/jupyter-alice]"]}
    ]
    assert f"serviceAccount:{email}" in members(gcp_server, f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer")
    # The prefix grant lives on the managed folder alice/, never on the bucket.
    assert ("lab-scratch", "alice/") in gcp_server.state.managed_folders
    folder_bindings = policy(gcp_server, "projects/_/buckets/lab-scratch/managedFolders/alice/")["bindings"]
    assert [b["role"] for b in folder_bindings] == ["roles/storage.objectUser"]
    assert f"serviceAccount:{email}" in folder_bindings[0]["members"] and "condition" not in folder_bindings[0]
    assert not any(f"serviceAccount:{email}" in b["members"] for b in policy(gcp_server, "projects/_/buckets/lab-scratch")["bindings"])
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == email


@pytest.mark.parametrize("cache_seconds", [3600, 0])
async def test_warm_spawn_makes_no_iam_writes(namespace, gcp_server, hub, cache_seconds):
    await spawn(gcp_spawner(namespace, gcp_server, hub, "bob", cloud_cache_seconds=cache_seconds))
    first = len(backend().calls.recent)
    await spawn(gcp_spawner(namespace, gcp_server, hub, "bob", cloud_cache_seconds=cache_seconds))
    later = list(backend().calls.recent)[first:]
    assert not [c for c in later if c.endswith("setIamPolicy") or c.startswith("Create") or c.startswith("Delete")]
    assert later == ([] if cache_seconds else ["GetServiceAccount", "service_account.getIamPolicy", "project.getIamPolicy", "managedFolders.getIamPolicy"])


async def test_concurrent_edits_of_one_policy_all_land(namespace, gcp_server, hub):
    # Another writer changes the project policy between our read and write, twice.
    gcp_server.state.fail_next_set_with_conflict = 2
    spawners = [gcp_spawner(namespace, gcp_server, hub, f"u{i}") for i in range(4)]
    await asyncio.gather(*(s._provisioner().prepare(namespace) for s in spawners))
    got = members(gcp_server, f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer")
    for i in range(4):
        assert f"serviceAccount:{hub}-u{i}@{PROJECT}.iam.gserviceaccount.com" in got
    assert gcp_server.state.fail_next_set_with_conflict == 0  # the conflicts really happened


async def test_delete_removes_our_bindings_and_account_but_keeps_foreign_ones(namespace, gcp_server, hub):
    spawner = gcp_spawner(namespace, gcp_server, hub, "carol")
    await spawn(spawner)
    email = f"{hub}-carol@{PROJECT}.iam.gserviceaccount.com"
    # An admin grants the same GSA something by hand, and someone else the same role.
    state = gcp_server.state
    p = state.policies.get(f"projects/{PROJECT}")
    p["bindings"].append({"role": "roles/bigquery.user", "members": [f"serviceAccount:{email}"]})
    for b in p["bindings"]:
        if b["role"] == "roles/serviceusage.serviceUsageConsumer":
            b["members"].append("user:admin@example.org")
    state.policies.set(f"projects/{PROJECT}", p)

    await spawner.delete_forever()
    assert email not in state.accounts
    project = state.policies.get(f"projects/{PROJECT}")
    consumers = {m for b in project["bindings"] if b["role"] == "roles/serviceusage.serviceUsageConsumer" for m in b["members"]}
    assert f"serviceAccount:{email}" not in consumers
    assert "user:admin@example.org" in consumers
    # The admin's own binding is left alone; IAM shows its member as deleted, as it does for real.
    [by_hand] = [b for b in project["bindings"] if b["role"] == "roles/bigquery.user"]
    assert by_hand["members"][0].startswith(f"deleted:serviceAccount:{email}?uid=")
    folder = state.policies.get("projects/_/buckets/lab-scratch/managedFolders/carol/")
    assert not any(f"serviceAccount:{email}" in b["members"] for b in folder["bindings"])
    assert ("lab-scratch", "carol/") in state.managed_folders  # the folder and its objects stay


async def test_foreign_account_is_not_used(namespace, gcp_server, hub):
    iam, _, _ = gcp_server.clients()
    iam.create_service_account(request={"name": f"projects/{PROJECT}", "account_id": f"{hub}-dora",
                                        "service_account": {"description": "made by hand"}})
    with pytest.raises(SpawnRefused, match="not managed by this hub"):
        await gcp_spawner(namespace, gcp_server, hub, "dora").start()
    assert policy(gcp_server, f"{hub}-dora@{PROJECT}.iam.gserviceaccount.com")["bindings"] == []


async def test_odd_user_names_become_valid_distinct_ids(namespace, gcp_server, hub):
    for name in ["Zoë.O'Brien@lab.example", "z" * 120, "Zoe"]:
        await spawn(gcp_spawner(namespace, gcp_server, hub, name))
    ids = [e.split("@")[0] for e in gcp_server.state.accounts if e.startswith(hub)]
    assert len(ids) == 3
    assert all(6 <= len(i) <= 30 for i in ids)


async def test_quota_is_a_clear_message(namespace, gcp_server, hub, caplog):
    state = gcp_server.state
    old = state.quota
    state.quota = sum(1 for a in state.accounts.values() if a["project_id"] == PROJECT)
    creates = state.calls.count("CreateServiceAccount")
    try:
        with pytest.raises(SpawnRefused) as e:
            await gcp_spawner(namespace, gcp_server, hub, "erik").start()
    finally:
        state.quota = old
    assert "service account quota is reached" in e.value.jupyterhub_message
    assert state.calls.count("CreateServiceAccount") == creates + 1  # a count no wait lowers: asked once
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for erik" in r.getMessage()]
    assert "100 service accounts per project" in line and "group scope" in line


def test_local_server_is_strict(gcp_server):
    iam, projects, _ = gcp_server.clients()
    with pytest.raises(gexc.InvalidArgument):
        iam.create_service_account(request={"name": f"projects/{PROJECT}", "account_id": "Bad_Id"})
    iam.create_service_account(request={"name": f"projects/{PROJECT}", "account_id": "strict-check"})
    with pytest.raises(gexc.AlreadyExists):
        iam.create_service_account(request={"name": f"projects/{PROJECT}", "account_id": "strict-check"})
    with pytest.raises(gexc.NotFound):
        iam.get_service_account(request={"name": f"projects/{PROJECT}/serviceAccounts/nobody@{PROJECT}.iam.gserviceaccount.com"})
    stale = projects.get_iam_policy(request={"resource": f"projects/{PROJECT}"})
    fresh = projects.get_iam_policy(request={"resource": f"projects/{PROJECT}"})
    projects.set_iam_policy(request={"resource": f"projects/{PROJECT}", "policy": fresh})
    with pytest.raises((gexc.Aborted, gexc.Conflict)):
        projects.set_iam_policy(request={"resource": f"projects/{PROJECT}", "policy": stale})
    with pytest.raises(gexc.Forbidden):  # 403 PERMISSION_DENIED
        projects.get_iam_policy(request={"resource": "projects/not-mine"})


# -- revocation -------------------------------------------------------------------------------------


async def test_a_plan_change_revokes_the_old_managed_account_and_its_bindings(namespace, gcp_server, hub):
    rule_a = rules(hub, account_id=f"{hub}-a-{{username}}")
    rule_b = rules(hub, account_id=f"{hub}-b-{{username}}", bucket_roles=[])
    await spawn(gcp_spawner(namespace, gcp_server, hub, "kim", rule_list=rule_a))
    old = f"{hub}-a-kim@{PROJECT}.iam.gserviceaccount.com"
    assert old in gcp_server.state.accounts
    await spawn(gcp_spawner(namespace, gcp_server, hub, "kim", rule_list=rule_b))
    assert old not in gcp_server.state.accounts
    assert f"serviceAccount:{old}" not in members(gcp_server, f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer")
    folder = policy(gcp_server, "projects/_/buckets/lab-scratch/managedFolders/kim/")
    assert not any(f"serviceAccount:{old}" in b["members"] for b in folder["bindings"])
    assert f"{hub}-b-kim@{PROJECT}.iam.gserviceaccount.com" in gcp_server.state.accounts


async def test_a_dropped_bucket_role_is_taken_away_from_the_same_account(namespace, gcp_server, hub):
    await spawn(gcp_spawner(namespace, gcp_server, hub, "lea"))
    email = f"{hub}-lea@{PROJECT}.iam.gserviceaccount.com"
    folder = "projects/_/buckets/lab-scratch/managedFolders/lea/"
    assert any(f"serviceAccount:{email}" in b["members"] for b in policy(gcp_server, folder)["bindings"])
    await spawn(gcp_spawner(namespace, gcp_server, hub, "lea", rule_list=rules(hub, bucket_roles=[])))
    assert email in gcp_server.state.accounts
    assert not any(f"serviceAccount:{email}" in b["members"] for b in policy(gcp_server, folder)["bindings"])


# -- eventual consistency: a new account is unknown to IAM for a while ----------------------------


async def test_first_spawn_waits_while_iam_says_the_new_account_does_not_exist(namespace, gcp_server, hub, caplog):
    caplog.set_level("INFO")
    gcp_server.state.visibility_delay = 1.5
    try:
        await spawn(gcp_spawner(namespace, gcp_server, hub, "mae"))
    finally:
        gcp_server.state.visibility_delay = 0.0
    email = f"{hub}-mae@{PROJECT}.iam.gserviceaccount.com"
    assert policy(gcp_server, email)["bindings"][0]["role"] == "roles/iam.workloadIdentityUser"
    assert any(f"knew new service account {email} after" in r.getMessage() for r in caplog.records)


async def test_a_window_longer_than_the_bound_fails_clearly_and_the_next_spawn_carries_on(namespace, gcp_server, hub, caplog):
    gcp_server.state.visibility_delay = 2.0
    try:
        with pytest.raises(SpawnRefused, match="still setting up your new cloud identity"):
            await gcp_spawner(namespace, gcp_server, hub, "ned", gcp_propagation_seconds=0.5).start()
        [line] = [r.getMessage() for r in caplog.records if "spawn refused for ned" in r.getMessage()]
        assert "does not exist" in line and "gcp_propagation_seconds" in line
        await asyncio.sleep(2.0)
        await spawn(gcp_spawner(namespace, gcp_server, hub, "ned", gcp_propagation_seconds=0.5))
    finally:
        gcp_server.state.visibility_delay = 0.0
    email = f"{hub}-ned@{PROJECT}.iam.gserviceaccount.com"
    assert policy(gcp_server, email)["bindings"][0]["role"] == "roles/iam.workloadIdentityUser"


def test_the_local_server_hides_a_new_account_from_policy_writes(gcp_server):
    """As Google's IAM answers right after CreateServiceAccount."""
    iam, projects, _ = gcp_server.clients()
    gcp_server.state.visibility_delay = 30.0
    try:
        account = iam.create_service_account(request={"name": f"projects/{PROJECT}", "account_id": "just-" + uuid.uuid4().hex[:8]})
        with pytest.raises(gexc.NotFound, match="does not exist"):
            iam.get_iam_policy(request={"resource": account.name})
        current = projects.get_iam_policy(request={"resource": f"projects/{PROJECT}"})
        current.bindings.add(role="roles/viewer", members=[f"serviceAccount:{account.email}"])
        with pytest.raises(gexc.BadRequest, match="does not exist"):
            projects.set_iam_policy(request={"resource": f"projects/{PROJECT}", "policy": current})
    finally:
        gcp_server.state.visibility_delay = 0.0


# -- activation: a new Workload Identity grant takes time to take effect ---------------------------


def ksa_member(namespace, name):
    return f"serviceAccount:{PROJECT}.svc.id.goog[{namespace}/jupyter-{name}]"


def can_exchange(gcp_server, namespace, name):
    try:
        gcp_server.state.exchange_token(ksa_member(namespace, name))
        return True
    except PermissionError:
        return False


async def test_first_spawn_goes_through_both_windows_and_says_so(namespace, gcp_server, hub):
    """IAM first says the new account does not exist, then refuses the pod's token exchange for a
    while; the spawn waits through both, tells the user, and the pod's first call works."""
    gcp_server.state.visibility_delay, gcp_server.state.activation_delay = 1.0, 1.5
    spawner = gcp_spawner(namespace, gcp_server, hub, "ova", gcp_activation_seconds=10,
                          gcp_activation_check=lambda plan: can_exchange(gcp_server, namespace, "ova"))
    try:
        await spawner.start()
        assert can_exchange(gcp_server, namespace, "ova")  # the pod's first cell gets its token
        events = [e async for e in spawner.progress()]
        assert events[0]["message"] == "Creating your cloud identity (a Google service account)."
        assert events[1]["message"].startswith("Your new Google identity is being activated")
        await spawner.stop()
        # A warm spawn does not wait again.
        warm = gcp_spawner(namespace, gcp_server, hub, "ova", gcp_activation_seconds=10,
                           gcp_activation_check=lambda plan: False)
        await spawn(warm)
        assert waits(warm) == []
    finally:
        gcp_server.state.visibility_delay = gcp_server.state.activation_delay = 0.0


async def test_an_activation_longer_than_the_bound_fails_clearly(namespace, gcp_server, hub, caplog):
    gcp_server.state.activation_delay = 30.0
    try:
        with pytest.raises(SpawnRefused, match="not activated your new cloud identity yet"):
            await gcp_spawner(namespace, gcp_server, hub, "pax", gcp_activation_seconds=1.0,
                              gcp_activation_check=lambda plan: can_exchange(gcp_server, namespace, "pax")).start()
    finally:
        gcp_server.state.activation_delay = 0.0
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for pax" in r.getMessage()]
    assert "gcp_activation_seconds" in line


async def test_without_a_check_the_whole_bound_is_waited(namespace, gcp_server, hub):
    gcp_server.state.activation_delay = 0.5
    try:
        await spawn(gcp_spawner(namespace, gcp_server, hub, "rue", gcp_activation_seconds=1.0))
        assert can_exchange(gcp_server, namespace, "rue")
    finally:
        gcp_server.state.activation_delay = 0.0


async def test_a_new_annotation_on_an_existing_google_account_waits_for_gke_too(namespace, gcp_server, hub):
    """Existing accounts need no grant, but GKE's metadata server must see the new annotation."""
    checks = []
    rule = [{"name": "lab", "match": {"groups": ["/staff"]},
             "gcp": {"service_account": f"lab-notebooks@{PROJECT}.iam.gserviceaccount.com"}}]

    def check(plan):
        checks.append(plan.cloud.identity)
        return len(checks) >= 2  # usable on the second look

    first = gcp_spawner(namespace, gcp_server, hub, "tom", rule_list=rule, gcp_annotation_settle_seconds=5,
                        gcp_activation_check=check)
    await spawn(first)
    assert checks == [f"lab-notebooks@{PROJECT}.iam.gserviceaccount.com"] * 2
    assert waits(first) == ["Your server is being connected to its Google identity."]
    warm = gcp_spawner(namespace, gcp_server, hub, "tom", rule_list=rule, gcp_annotation_settle_seconds=5,
                       gcp_activation_check=check)
    await spawn(warm)
    assert len(checks) == 2 and waits(warm) == []  # annotation unchanged: no wait


async def test_a_missing_bucket_is_not_mistaken_for_propagation(namespace, gcp_server, hub, caplog):
    """Only "does not exist" about the new account itself is waited for."""
    rule = rules(hub, bucket_roles=[{"bucket": "no-such-bucket", "role": "roles/storage.objectUser", "prefix": "{username}"}])
    with pytest.raises(SpawnRefused) as refused:
        await gcp_spawner(namespace, gcp_server, hub, "uli", rule_list=rule, gcp_propagation_seconds=30).start()
    assert "still setting up" not in refused.value.jupyterhub_message
    [line] = [r.getMessage() for r in caplog.records if "spawn refused for uli" in r.getMessage()]
    assert "bucket does not exist" in line


async def test_a_failing_or_slow_check_never_breaks_the_spawn(namespace, gcp_server, hub):
    def broken(plan):
        raise ConnectionError("the probe itself is down")

    with pytest.raises(SpawnRefused, match="not activated your new cloud identity yet"):
        await gcp_spawner(namespace, gcp_server, hub, "val", gcp_activation_seconds=0.5, gcp_activation_check=broken).start()


async def test_gc_removes_the_accounts_of_users_gone_and_accounts_no_serviceaccount_records(namespace, gcp_server, hub):
    for user in ("alice", "bob", "carol"):
        await spawn(gcp_spawner(namespace, gcp_server, hub, user))
    await delete_service_account(namespace, "jupyter-bob")  # by hand: bob's Google account stays, recorded nowhere
    iam, _, _ = gcp_server.clients()
    foreign = iam.create_service_account(request={"name": f"projects/{PROJECT}", "account_id": f"{hub}-operator",
                                                  "service_account": {"description": f"made by the operator for {hub}"}})
    c = gcp_spawner(namespace, gcp_server, hub, "x").config
    # alice left the hub; carol stays.
    found, actions = await run_gc(c, namespace, {"carol": oidc_state(groups=["/staff"]), "bob": oidc_state(groups=["/staff"])})
    assert {e.account.name: e.state for e in found.entries} == {"jupyter-alice": "orphaned", "jupyter-carol": "ok"}
    assert sorted((a.kind, a.identity, a.done) for a in actions) == [
        ("delete-account", f"gcp:{hub}-alice@{PROJECT}.iam.gserviceaccount.com", True),
        ("delete-identity", f"gcp:{hub}-bob@{PROJECT}.iam.gserviceaccount.com", True)]
    emails = {a["email"] for a in gcp_server.state.accounts.values()}
    assert f"{hub}-alice@{PROJECT}.iam.gserviceaccount.com" not in emails
    assert f"{hub}-bob@{PROJECT}.iam.gserviceaccount.com" not in emails
    assert {f"{hub}-carol@{PROJECT}.iam.gserviceaccount.com", foreign.email} <= emails
    # alice's bindings went with her account; carol's stay.
    project_members = members(gcp_server, f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer")
    assert f"serviceAccount:{hub}-carol@{PROJECT}.iam.gserviceaccount.com" in project_members
    assert f"serviceAccount:{hub}-alice@{PROJECT}.iam.gserviceaccount.com" not in project_members
    assert await read("serviceaccount", namespace, "jupyter-alice") is None


async def team_account_in_two_namespaces(namespace, other, gcp_server, hub, group):
    """wes (in *namespace*) and xia (in *other*) spawn under group rule *group*: namespace's copy
    of the group account, the Google account they share (a group's: hashed) and its resource."""
    await spawn(gcp_spawner(namespace, gcp_server, hub, "wes", group))
    await spawn(gcp_spawner(other, gcp_server, hub, "xia", group))
    [account] = await hub_accounts(namespace, hub)
    email = account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert email.startswith(f"{hub}-team---")
    return account, email, f"projects/{PROJECT}/serviceAccounts/{email}"


async def test_a_shared_account_stops_trusting_one_namespace_and_goes_with_the_last(namespace, gcp_server, hub):
    group = [{"name": "team", "match": {"groups": ["/staff"]}, "scope": "group",
              "gcp": {"managed": {"project": PROJECT, "account_id": f"{hub}-team"}}}]
    moved = [{"name": "team", "match": {"groups": ["/staff"]}, "scope": "group",
              "gcp": {"service_account": f"operators-team@{PROJECT}.iam.gserviceaccount.com"}}]
    async with another_namespace(namespace + "-b") as other:
        account, email, resource = await team_account_in_two_namespaces(namespace, other, gcp_server, hub, group)
        assert len(members(gcp_server, resource, "roles/iam.workloadIdentityUser")) == 2
        [first, second] = sorted(members(gcp_server, resource, "roles/iam.workloadIdentityUser"))
        await spawn(gcp_spawner(namespace, gcp_server, hub, "wes", moved))
        [left] = members(gcp_server, resource, "roles/iam.workloadIdentityUser")
        assert f"[{other}/" in left and email in {a["email"] for a in gcp_server.state.accounts.values()}
        # As GKE's metadata server would answer each namespace's pods: only the other one still gets a token.
        gone = first if first != left else second
        assert gcp_server.state.exchange_token(left).startswith("ya29.")
        with pytest.raises(PermissionError):
            gcp_server.state.exchange_token(gone)
        await spawn(gcp_spawner(other, gcp_server, hub, "xia", moved))
        assert email not in {a["email"] for a in gcp_server.state.accounts.values()}


async def test_a_revocation_repeated_after_a_partial_failure_leaves_a_shared_account_to_the_other_namespace(
        namespace, gcp_server, hub):
    """What gc runs per account, twice, with the ServiceAccount's deletion failing in between:
    the second revocation finds A's grant gone already and must keep the Google account B uses."""
    group = [{"name": "team", "match": {"groups": ["/staff"]}, "scope": "group",
              "gcp": {"managed": {"project": PROJECT, "account_id": f"{hub}-team"}}}]
    async with another_namespace(namespace + "-b") as other:
        account, email, resource = await team_account_in_two_namespaces(namespace, other, gcp_server, hub, group)
        settings = identity_settings(gcp_spawner(namespace, gcp_server, hub, "wes", group).config)
        leaving = (namespace, account["metadata"]["name"])
        for _ in range(2):  # run 1, the injected failure (the account stays), run 2
            assert await revoke_identity(settings, f"gcp:{email}", "group:/staff", account["metadata"]["annotations"], leaving)
        [left] = members(gcp_server, resource, "roles/iam.workloadIdentityUser")
        assert left.endswith(f"[{other}/{leaving[1]}]")
        assert email in {a["email"] for a in gcp_server.state.accounts.values()}


async def test_a_reused_user_name_with_another_subject_does_not_get_the_earlier_persons_account(namespace, gcp_server, hub):
    """The Google account records whose login it was made for: after the ServiceAccount was
    deleted by hand, another person logging in as 'alice' is still refused it."""
    def alice(subject):
        c = spawner_config(namespace, rules(hub), hub_name=hub, gcp_client_factory=gcp_server.client_factory(),
                           gcp_activation_seconds=0, gcp_annotation_settle_seconds=0)
        return make_spawner(CloudIdentitySpawner, c, SpawnUser("alice", oidc_state(sub=subject, groups=["/staff"])))

    await spawn(alice("first-person"))
    email = f"{hub}-alice@{PROJECT}.iam.gserviceaccount.com"
    assert "person=" in gcp_server.state.accounts[email]["description"]
    await delete_service_account(namespace, "jupyter-alice")
    with pytest.raises(SpawnRefused, match="used on this hub by someone who logged in with another account"):
        await alice("second-person").start()
    assert await read("serviceaccount", namespace, "jupyter-alice") is None
    await spawn(alice("first-person"))  # the first person still gets it


async def test_gc_leaves_no_grant_of_a_deleted_google_account_behind(namespace, gcp_server, hub):
    """dan's Google account was deleted by hand (his ServiceAccount still records it): IAM shows
    deleted: members in the project and his folder, which gc removes. erin's ServiceAccount was
    deleted by hand: gc deletes her Google account and its grants with it, leaving none dead."""
    for user in ("dan", "erin"):
        await spawn(gcp_spawner(namespace, gcp_server, hub, user))
    iam, _, _ = gcp_server.clients()
    dan = f"{hub}-dan@{PROJECT}.iam.gserviceaccount.com"
    iam.delete_service_account(request={"name": f"projects/{PROJECT}/serviceAccounts/{dan}"})
    await delete_service_account(namespace, "jupyter-erin")
    places = [(f"projects/{PROJECT}", "roles/serviceusage.serviceUsageConsumer"),
              ("projects/_/buckets/lab-scratch/managedFolders/dan/", "roles/storage.objectUser"),
              ("projects/_/buckets/lab-scratch/managedFolders/erin/", "roles/storage.objectUser")]

    def left(who):
        return sorted(m for resource, role in places for m in members(gcp_server, resource, role) if f"{hub}-{who}@" in m)

    assert [m.partition("?")[0] for m in left("dan")] == [f"deleted:serviceAccount:{dan}"] * 2
    c = gcp_spawner(namespace, gcp_server, hub, "x").config
    users = {u: oidc_state(groups=["/staff"]) for u in ("dan", "erin")}
    _, actions = await run_gc(c, namespace, users)
    assert sorted((a.kind, a.done) for a in actions) == [("delete-identity", True), ("remove-grant", True), ("remove-grant", True)]
    assert left("dan") == [] and left("erin") == []


async def test_gc_leaves_the_dead_grants_of_an_operators_google_account_alone(namespace, gcp_server, hub):
    """An operator's account (a rule's existing service_account, in the managed rules' project)
    deleted by the operator: its grants stay as IAM keeps them (undeleting the account within 30
    days brings them back) - gc removes only what the hub made."""
    iam, _, _ = gcp_server.clients()
    made = iam.create_service_account(request={"name": f"projects/{PROJECT}", "account_id": f"op-{hub}"})
    existing = [{"name": "ops", "match": {"groups": ["/ops"]}, "gcp": {"service_account": made.email}}]
    c = spawner_config(namespace, existing + rules(hub), hub_name=hub, gcp_client_factory=gcp_server.client_factory(),
                       gcp_activation_seconds=0, gcp_annotation_settle_seconds=0)
    await spawn(make_spawner(CloudIdentitySpawner, c, SpawnUser("gil", oidc_state(groups=["/ops"]))))
    project = f"projects/{PROJECT}"
    policies = gcp_server.state.policies
    policy = policies.get(project)
    policy["bindings"].append({"role": "roles/serviceusage.serviceUsageConsumer", "members": [f"serviceAccount:{made.email}"]})
    policies.set(project, policy)
    iam.delete_service_account(request={"name": f"projects/{PROJECT}/serviceAccounts/{made.email}"})
    _, actions = await run_gc(c, namespace, {"gil": oidc_state(groups=["/ops"])})
    assert [a for a in actions if a.kind == "remove-grant" and made.email in a.grant.member] == []
    assert any(m.startswith(f"deleted:serviceAccount:{made.email}?uid=")
               for m in members(gcp_server, project, "roles/serviceusage.serviceUsageConsumer"))
