"""AKS Workload Identity: existing and hub-managed Azure identities, through the real spawn path,
with the real Azure SDK clients against the local ARM server."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

pytest.importorskip("azure.mgmt.msi", reason="the azure extra is not installed")

from azure.core.exceptions import HttpResponseError  # noqa: E402

from cloudidentity_spawner import CloudIdentitySpawner, ConfigError  # noqa: E402
from cloudidentity_spawner.claims import Claims  # noqa: E402
from cloudidentity_spawner.errors import IdentityError, SpawnRefused  # noqa: E402
from cloudidentity_spawner.providers import _backends, backend_for  # noqa: E402
from cloudidentity_spawner.rules import IdentityRules  # noqa: E402
from cloudidentity_spawner.testing.azure import AzureResourceManager  # noqa: E402
from cloudidentity_spawner.testing.kubernetes import KubernetesAPIServer  # noqa: E402

from .kubehelpers import SpawnUser, another_namespace, delete_service_account, make_spawner, oidc_state, read, run_gc, spawner_config  # noqa: E402

SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
GROUP = "jupyterhub-identities"
ISSUER = "https://westeurope.oic.prod-aks.azure.com/72f988bf-86f1-41af-91ab-2d7cd011db47/1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d/"
SCRATCH = f"/subscriptions/{SUB}/resourceGroups/data/providers/Microsoft.Storage/storageAccounts/labdata/blobServices/default/containers/scratch"
EXISTING = "6a1f0c9e-3b8d-4f2a-9e7c-5d4b3a2c1e0f"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.fixture(scope="module")
def arm_server():
    server = KubernetesAPIServer(AzureResourceManager({SUB: (GROUP, "data")})).start()
    yield server
    server.stop()


@pytest.fixture
def arm(arm_server):
    _backends.clear()
    state = arm_server.api
    state.throttle_share, state.conflicts = 0.0, 0
    state.calls.clear()
    arm_server.factory = AzureResourceManager.client_factory(arm_server.url)  # one per hub process
    return arm_server


@pytest.fixture
def hub():
    return "az" + uuid.uuid4().hex[:6]


def managed_rules(hub: str, scope: str = "user", **extra) -> list[dict]:
    rule = {"name": "members", "match": {"groups": ["/escape*"]}, "scope": scope,
            "azure": {"managed": {"subscription_id": SUB, "resource_group": GROUP, "location": "westeurope",
                                  "oidc_issuer": ISSUER, "role_assignments": [{"scope": SCRATCH, "role": "Storage Blob Data Contributor"}],
                                  **extra}}}
    if scope == "group":
        rule["azure"]["managed"]["identity_name"] = "{hub}-{safe_group}"
    return [rule]


def azure_spawner(namespace, arm, hub, name, rules=None, groups=("/escape",), **extra):
    c = spawner_config(namespace, rules or managed_rules(hub), hub_name=hub,
                       azure_client_factory=arm.factory, **extra)
    return make_spawner(CloudIdentitySpawner, c, SpawnUser(name, oidc_state(**{"wlcg.groups": list(groups)})))


async def spawn(spawner):
    await spawner.start()
    await spawner.stop()


def writes(arm) -> int:
    return sum(n for call, n in arm.api.calls.items() if call.split()[0] in ("PUT", "DELETE"))


async def test_an_escape_user_gets_their_own_identity_with_exactly_one_federated_credential(namespace, arm, hub):
    spawner = azure_spawner(namespace, arm, hub, "alice")
    await spawner.start()
    rid = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{hub}-alice"
    identity = arm.api.identity(rid)
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert identity["tags"] == {"managed-by": "cloudidentity-spawner", "cloudidentity-spawner.hub": hub,
                                "cloudidentity-spawner.owner": "user:alice",
                                "cloudidentity-spawner.person": sa["metadata"]["annotations"]["cloudidentity-spawner/person"]}
    [credential] = arm.api.credentials_of(rid)
    assert credential["properties"] == {"issuer": ISSUER, "subject": f"system:serviceaccount:{namespace}:jupyter-alice",
                                        "audiences": ["api://AzureADTokenExchange"]}
    [grant] = arm.api.assignments_of(identity["properties"]["principalId"])
    assert grant["properties"]["scope"] == SCRATCH
    assert grant["properties"]["roleDefinitionId"].endswith("/roleDefinitions/ba92f5b4-2d11-453d-a403-e96b0029c9fe")
    sa = await read("serviceaccount", namespace, "jupyter-alice")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == identity["properties"]["clientId"]
    assert sa["metadata"]["annotations"]["azure.workload.identity/tenant-id"] == identity["properties"]["tenantId"]
    assert sa["metadata"]["annotations"]["cloudidentity-spawner/managed-identity"] == f"azure:{rid}"
    pod = await read("pod", namespace, spawner.pod_name)
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == "jupyter-alice"
    await spawner.stop()

    # A warm spawn writes nothing to Azure.
    before = writes(arm)
    await spawn(azure_spawner(namespace, arm, hub, "alice"))
    assert writes(arm) == before
    # bob gets another identity, and alice's still has exactly her one credential.
    await spawn(azure_spawner(namespace, arm, hub, "bob"))
    assert [c["properties"]["subject"] for c in arm.api.credentials_of(rid)] == [f"system:serviceaccount:{namespace}:jupyter-alice"]


async def test_writes_to_one_shared_identity_are_serialised_and_its_credential_limit_is_clear(arm, hub):
    rules = IdentityRules.from_config(managed_rules(hub, scope="group"), hub)
    backend = backend_for(_settings(arm, hub), "azure")
    plans = [rules.resolve(Claims(f"u{i}", ("/escape",)), f"lab-{i}") for i in range(6)]
    outcomes = await asyncio.gather(*(backend.ensure(p) for p in plans))
    assert sorted(outcomes)[0] == "created" and arm.api.conflicts == 0
    rid = plans[0].cloud.identity
    assert len(arm.api.credentials_of(rid)) == 6

    # The server refuses concurrent writes as Azure does: unserialised, they collide.
    msi, _ = backend.clients(SUB)
    name = rid.rsplit("/", 1)[1]

    def put(i):
        return msi.federated_identity_credentials.create_or_update(
            GROUP, name, f"raw-{i}", {"issuer": ISSUER, "subject": f"system:serviceaccount:raw:{i}", "audiences": ["api://AzureADTokenExchange"]})
    results = await asyncio.gather(*(asyncio.to_thread(put, i) for i in range(4)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, HttpResponseError)]
    assert refused and all(r.status_code == 409 and r.error.code == "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity"
                           for r in refused)

    for i in range(20 - len(arm.api.credentials_of(rid))):
        await asyncio.to_thread(put, 100 + i)
    with pytest.raises(IdentityError) as full:
        await backend.ensure(rules.resolve(Claims("late", ("/escape",)), "lab-late"))
    assert "most federated credentials Azure allows" in full.value.user_message
    assert "has 20 federated credentials, Azure's limit is 20" in full.value.admin_detail


def _settings(arm, hub):
    from traitlets.config import Config

    from cloudidentity_spawner.config import identity_settings

    c = Config()
    c.CloudIdentitySpawner.hub_name = hub
    c.CloudIdentitySpawner.azure_client_factory = arm.factory
    return identity_settings(c)


async def test_a_foreign_identity_is_never_used_and_deletion_removes_only_ours(namespace, arm, hub):
    msi, _ = AzureResourceManager.client_factory(arm.url)(SUB)
    msi.user_assigned_identities.create_or_update(GROUP, f"{hub}-carol", {"location": "westeurope", "tags": {"team": "ops"}})
    with pytest.raises(SpawnRefused, match="this hub does not manage it for you"):
        await azure_spawner(namespace, arm, hub, "carol").start()
    assert arm.api.credentials_of(f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/"
                                  f"userAssignedIdentities/{hub}-carol") == []

    spawner = azure_spawner(namespace, arm, hub, "dave")
    await spawn(spawner)
    rid = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{hub}-dave"
    principal = arm.api.identity(rid)["properties"]["principalId"]
    await spawner.delete_forever()
    assert arm.api.identity(rid) is None and arm.api.assignments_of(principal) == []
    assert await read("serviceaccount", namespace, "jupyter-dave") is None


async def test_moving_to_an_existing_identity_revokes_the_managed_one(namespace, arm, hub):
    await spawn(azure_spawner(namespace, arm, hub, "erin"))
    rid = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{hub}-erin"
    principal = arm.api.identity(rid)["properties"]["principalId"]
    existing = [{"name": "members", "match": {"groups": ["/escape*"]}, "azure": {"client_id": EXISTING, "tenant_id": TENANT}}]
    await spawn(azure_spawner(namespace, arm, hub, "erin", rules=existing))
    assert arm.api.identity(rid) is None and arm.api.assignments_of(principal) == []
    annotations = (await read("serviceaccount", namespace, "jupyter-erin"))["metadata"]["annotations"]
    assert annotations["azure.workload.identity/client-id"] == EXISTING
    assert annotations["azure.workload.identity/tenant-id"] == TENANT
    assert "cloudidentity-spawner/managed-identity" not in annotations


async def test_gc_removes_the_identity_of_a_user_gone_and_one_no_account_records_and_a_new_spawn_starts_afresh(
        namespace, arm, hub):
    for user in ("frank", "gina", "hal"):
        await spawn(azure_spawner(namespace, arm, hub, user))
    await delete_service_account(namespace, "jupyter-gina")
    c = azure_spawner(namespace, arm, hub, "x").config
    found, actions = await run_gc(c, namespace, {"hal": oidc_state(**{"wlcg.groups": ["/escape"]})})
    # A healthy account is ok: the client and tenant ids Azure chose are what its plan has too.
    [hal] = [e for e in found.entries if e.account.user == "hal"]
    assert (hal.state, hal.problems) == ("ok", [])
    prefix = f"azure:/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
    assert sorted((a.kind, a.identity, a.done) for a in actions) == [
        ("delete-account", f"{prefix}{hub}-frank", True), ("delete-identity", f"{prefix}{hub}-gina", True)]
    remaining = {i["name"] for i in arm.api.identities.values() if i["tags"].get("cloudidentity-spawner.hub") == hub}
    assert remaining == {f"{hub}-hal"}
    # gina's role assignment went with her identity (no account recorded it), and her next spawn
    # makes a new identity whose assignment replaces nothing stale.
    assert not [a for a in arm.api.assignments.values() if a["properties"]["principalId"] not in
                {i["properties"]["principalId"] for i in arm.api.identities.values()}]
    await spawn(azure_spawner(namespace, arm, hub, "gina"))
    [gina] = [i for i in arm.api.identities.values() if i["name"] == f"{hub}-gina"]
    assert len(arm.api.assignments_of(gina["properties"]["principalId"])) == 1


async def test_role_assignments_wait_for_a_new_principal_to_replicate(namespace, arm, hub):
    arm.api.replication_seconds = 1.0
    try:
        await spawn(azure_spawner(namespace, arm, hub, "jo"))
    finally:
        arm.api.replication_seconds = 0.0
    [jo] = [i for i in arm.api.identities.values() if i["name"] == f"{hub}-jo"]
    assert len(arm.api.assignments_of(jo["properties"]["principalId"])) == 1
    assert arm.api.calls["PUT RoleAssignment"] >= 2  # refused with PrincipalNotFound first


async def test_a_shared_identity_loses_one_accounts_credential_and_goes_with_the_last(namespace, arm, hub):
    async with another_namespace(namespace + "-b") as other:
        group = managed_rules(hub, scope="group")
        for ns, user in ((namespace, "kim"), (other, "lee")):
            await spawn(azure_spawner(ns, arm, hub, user, rules=group))
        [shared] = [i for i in arm.api.identities.values() if i["tags"].get("cloudidentity-spawner.hub") == hub]
        assert len(arm.api.credentials_of(shared["id"])) == 2
        existing = [{"name": "members", "match": {"groups": ["/escape*"]}, "scope": "group",
                     "azure": {"client_id": EXISTING}}]
        await spawn(azure_spawner(namespace, arm, hub, "kim", rules=existing))
        [left] = arm.api.credentials_of(shared["id"])  # lee's namespace still uses the identity
        assert left["properties"]["subject"].startswith(f"system:serviceaccount:{other}:")
        assert arm.api.identity(shared["id"]) is not None
        assert len(arm.api.assignments_of(shared["properties"]["principalId"])) == 1
        await spawn(azure_spawner(other, arm, hub, "lee", rules=existing))
        assert arm.api.identity(shared["id"]) is None
        assert arm.api.assignments_of(shared["properties"]["principalId"]) == []


@pytest.mark.parametrize("block, message", [
    ({"client_id": "not-a-guid"}, "azure.client_id: expected a GUID"),
    ({"client_id": EXISTING, "tenant_id": "x"}, "azure.tenant_id: expected a GUID"),
    ({"managed": {"subscription_id": SUB, "resource_group": GROUP, "location": "westeurope",
                  "oidc_issuer": "http://insecure/"}}, "azure.managed.oidc_issuer: expected the cluster's OIDC issuer URL"),
    ({"managed": {"subscription_id": SUB, "resource_group": GROUP, "location": "westeurope", "oidc_issuer": ISSUER,
                  "role_assignments": [{"scope": "/storage/x", "role": "Reader"}]}}, "role_assignments[0].scope: expected an Azure resource id"),
    ({"client_id": EXISTING, "managed": {}}, "give exactly one of 'client_id'"),
])
def test_bad_azure_blocks_are_refused_at_start_up(block, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        IdentityRules.from_config([{"name": "r", "match": {}, "azure": block}], "jh")


def test_plan_json_shows_the_identity_the_hub_would_make(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "jupyterhub_config.py"
    config.write_text(f"c.JupyterHub.spawner_class = 'cloudidentity'\nc.KubeSpawner.namespace = 'jupyterhub'\n"
                      f"c.CloudIdentitySpawner.identity_rules = {managed_rules('escape-hub')!r}\n")
    out = subprocess.run([sys.executable, "-m", "cloudidentity_spawner.cli", "plan", "--config", str(config), "--user", "alice",
                          "--group", "/escape", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cloud = json.loads(out.stdout)["cloud"]
    assert (cloud["provider"], cloud["mode"]) == ("azure", "managed")
    assert cloud["identity"].endswith("/userAssignedIdentities/jupyterhub-alice")  # hub_name unset: jupyterhub
    assert cloud["managed_identity"]["tags"]["cloudidentity-spawner.owner"] == "user:alice"
    assert cloud["federated_credential"]["subject"] == "system:serviceaccount:jupyterhub:jupyter-alice"
    assert cloud["role_assignments"] == [{"scope": SCRATCH, "role": "Storage Blob Data Contributor",
                                          "name": cloud["role_assignments"][0]["name"]}]
    uuid.UUID(cloud["role_assignments"][0]["name"])


async def test_a_dropped_role_assignment_is_taken_away_from_the_same_identity(namespace, arm, hub):
    reader = f"/subscriptions/{SUB}/resourceGroups/data"
    both = managed_rules(hub)
    both[0]["azure"]["managed"]["role_assignments"].append({"scope": reader, "role": "Reader"})
    await spawn(azure_spawner(namespace, arm, hub, "ivy", rules=both))
    rid = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{hub}-ivy"
    principal = arm.api.identity(rid)["properties"]["principalId"]
    assert sorted(a["properties"]["scope"] for a in arm.api.assignments_of(principal)) == sorted([SCRATCH, reader])
    await spawn(azure_spawner(namespace, arm, hub, "ivy"))  # the rule no longer grants Reader
    assert [a["properties"]["scope"] for a in arm.api.assignments_of(principal)] == [SCRATCH]
    assert arm.api.identity(rid) is not None
