"""The Kubernetes API emulator answers like a real API server, including its errors."""

import asyncio
import json

import aiohttp
import pytest

pytestmark = pytest.mark.emulator_only


@pytest.fixture
async def http(kube_server):
    async with aiohttp.ClientSession(base_url=kube_server.url) as session:
        yield session


async def call(http, method, path, body=None, content_type="application/json"):
    data = None if body is None else json.dumps(body)
    async with http.request(method, path, data=data, headers={"Content-Type": content_type}) as r:
        return r.status, await r.json()


def assert_status(body, code, reason):
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason


async def test_create_fills_server_metadata_and_rejects_duplicates(http, namespace):
    status, sa = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "a"}})
    assert status == 201
    meta = sa["metadata"]
    assert meta["namespace"] == namespace and meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "a"}})
    assert status == 409
    assert_status(body, 409, "AlreadyExists")
    assert body["message"] == 'serviceaccounts "a" already exists'
    assert body["details"] == {"name": "a", "kind": "serviceaccounts"}


@pytest.mark.parametrize("name", ["Alice", "a_b", "-a", "a" * 254, ""])
async def test_invalid_names_are_422(http, namespace, name):
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})
    assert status == 422
    assert_status(body, 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"


async def test_invalid_label_value_is_422(http, namespace):
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                              {"metadata": {"name": "x", "labels": {"user": "alice@example.org"}}})
    assert status == 422
    assert_status(body, 422, "Invalid")


async def test_not_found_cases(http, namespace):
    status, body = await call(http, "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/nope")
    assert status == 404
    assert_status(body, 404, "NotFound")
    assert body["message"] == 'serviceaccounts "nope" not found'
    status, body = await call(http, "GET", f"/api/v1/namespaces/{namespace}/widgets")
    assert status == 404
    status, body = await call(http, "POST", "/api/v1/namespaces/missing-ns/serviceaccounts", {"metadata": {"name": "a"}})
    assert status == 404
    assert body["message"] == 'namespaces "missing-ns" not found'


async def test_namespace_mismatch_is_400(http, namespace):
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                              {"metadata": {"name": "a", "namespace": "other"}})
    assert status == 400
    assert_status(body, 400, "BadRequest")


async def test_patches(http, namespace):
    base = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    await call(http, "POST", base, {"metadata": {"name": "p", "annotations": {"keep": "1", "drop": "2"}}})
    status, sa = await call(http, "PATCH", f"{base}/p", {"metadata": {"annotations": {"drop": None, "new": "3"}}},
                            "application/merge-patch+json")
    assert status == 200
    assert sa["metadata"]["annotations"] == {"keep": "1", "new": "3"}
    status, sa = await call(http, "PATCH", f"{base}/p", {"metadata": {"labels": {"a": "b"}}},
                            "application/strategic-merge-patch+json")
    assert sa["metadata"]["labels"] == {"a": "b"} and sa["metadata"]["annotations"]["keep"] == "1"
    status, sa = await call(http, "PATCH", f"{base}/p", [{"op": "remove", "path": "/metadata/annotations/keep"}],
                            "application/json-patch+json")
    assert "keep" not in sa["metadata"]["annotations"]
    status, body = await call(http, "PATCH", f"{base}/p", {"metadata": {}}, "text/plain")
    assert status == 415
    assert_status(body, 415, "UnsupportedMediaType")


async def test_stale_update_is_409_conflict(http, namespace):
    base = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    _, sa = await call(http, "POST", base, {"metadata": {"name": "u"}})
    stale = json.loads(json.dumps(sa))
    sa["metadata"]["labels"] = {"v": "2"}
    status, _ = await call(http, "PUT", f"{base}/u", sa)
    assert status == 200
    status, body = await call(http, "PUT", f"{base}/u", stale)
    assert status == 409
    assert_status(body, 409, "Conflict")


async def test_lists_carry_resource_version_and_honour_selectors(http, namespace):
    base = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    await call(http, "POST", base, {"metadata": {"name": "l1", "labels": {"team": "a", "tier": "x"}}})
    await call(http, "POST", base, {"metadata": {"name": "l2", "labels": {"team": "b"}}})
    status, listing = await call(http, "GET", f"{base}?labelSelector=team%3Da")
    assert listing["kind"] == "ServiceAccountList" and listing["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in listing["items"]] == ["l1"]
    _, listing = await call(http, "GET", f"{base}?labelSelector=team+in+(a,b),!tier")
    assert [i["metadata"]["name"] for i in listing["items"]] == ["l2"]
    _, listing = await call(http, "GET", f"{base}?fieldSelector=metadata.name%3Dl2")
    assert [i["metadata"]["name"] for i in listing["items"]] == ["l2"]
    status, body = await call(http, "GET", f"{base}?labelSelector=team%3D%3D%3D")
    assert status == 400


@pytest.mark.parametrize("flag", ["true", "True", "1"])
async def test_watch_replays_streams_and_ends_after_timeout(http, namespace, flag):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    _, listing = await call(http, "GET", base)
    since = listing["metadata"]["resourceVersion"]
    await call(http, "POST", base, {"metadata": {"name": "w1"}})

    async def later():
        await asyncio.sleep(0.2)
        await call(http, "DELETE", f"{base}/w1")

    task = asyncio.ensure_future(later())
    async with http.get(f"{base}?watch={flag}&resourceVersion={since}&timeoutSeconds=1") as r:
        lines = [json.loads(line) for line in (await r.text()).splitlines()]
    await task
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "w1"), ("DELETED", "w1")]


async def test_kubelet_runs_pods_with_complete_status(http, namespace):
    pod = {"metadata": {"name": "p1"}, "spec": {"containers": [{"name": "notebook", "image": "jupyter/base:1"}]}}
    status, created = await call(http, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert created["status"]["phase"] == "Pending"
    for _ in range(100):
        _, current = await call(http, "GET", f"/api/v1/namespaces/{namespace}/pods/p1")
        if current["status"]["phase"] == "Running":
            break
        await asyncio.sleep(0.02)
    assert current["status"]["podIP"].startswith("127.0.0.")
    [cs] = current["status"]["containerStatuses"]
    assert {"name", "image", "imageID", "restartCount", "ready", "state"} <= set(cs)
    _, events = await call(http, "GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3Dp1")
    assert {"Scheduled", "Started"} <= {e["reason"] for e in events["items"]}


async def test_injected_faults_answer_then_clear(http, namespace, emulator):
    emulator.fail("GET", "/serviceaccounts/f$", 500, count=1)
    status, body = await call(http, "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/f")
    assert status == 500
    assert_status(body, 500, "InternalError")
    status, _ = await call(http, "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/f")
    assert status == 404
