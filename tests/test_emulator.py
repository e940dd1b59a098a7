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


# -- admission and lifecycle rules every cluster applies -----------------------------------------


def pod(name, account=None, **spec):
    spec = {"containers": [{"name": "notebook", "image": "jupyter/base:1"}], **spec}
    if account is not None:
        spec["serviceAccountName"] = account
    return {"metadata": {"name": name}, "spec": spec}


async def wait_for(http, path, gone=True, seconds=5.0):
    for _ in range(int(seconds / 0.02)):
        status, body = await call(http, "GET", path)
        if (status == 404) == gone:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} did not {'go away' if gone else 'appear'}")


async def test_a_pod_needs_an_existing_service_account(http, namespace):
    """Real clusters (ServiceAccount admission plugin): 403, not a pod under a missing account."""
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/pods", pod("p", "jupyter-gone"))
    assert status == 403
    assert_status(body, 403, "Forbidden")
    assert body["message"] == (f'pods "p" is forbidden: error looking up service account {namespace}/jupyter-gone: '
                               'serviceaccount "jupyter-gone" not found')
    assert (await call(http, "GET", f"/api/v1/namespaces/{namespace}/pods/p"))[0] == 404


async def test_every_namespace_has_the_default_account_and_pods_without_one_use_it(http, namespace):
    """The ServiceAccount controller makes "default"; admission fills in spec.serviceAccountName."""
    status, _ = await call(http, "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
    assert status == 200
    status, created = await call(http, "POST", f"/api/v1/namespaces/{namespace}/pods", pod("p"))
    assert status == 201 and created["spec"]["serviceAccountName"] == "default"


@pytest.mark.parametrize("key", ["a/b/c", "-bad", "x" * 64, "example.com/", "/name", "exa_mple.com/x"])
async def test_annotation_keys_must_be_qualified_names(http, namespace, key):
    """Real clusters: 422 for a key that is not [DNS-subdomain/]name with a name of at most 63 characters."""
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                              {"metadata": {"name": "x", "annotations": {key: "v"}}})
    assert status == 422
    assert_status(body, 422, "Invalid")
    assert "a qualified name must consist of alphanumeric characters" in body["message"]
    assert body["details"]["causes"][0]["field"] == "metadata.annotations"


async def test_annotation_keys_that_are_valid_pass(http, namespace):
    # The API server lower-cases annotation keys before validating them: an upper-case prefix passes.
    good = {"eks.amazonaws.com/role-arn": "arn", "cloudidentity-spawner/owner": "user:a", "plain_Key.1": "v",
            "Example.COM/key": "v"}
    status, _ = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                           {"metadata": {"name": "x", "annotations": good}})
    assert status == 201


async def test_annotations_over_256_kib_are_refused(http, namespace):
    """Real clusters: the total size of annotations (keys and values) is at most 262144 bytes."""
    big = {"example.com/a": "x" * (256 * 1024 - len("example.com/a"))}
    base = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    assert (await call(http, "POST", base, {"metadata": {"name": "fits", "annotations": big}}))[0] == 201
    big["example.com/b"] = "y"
    status, body = await call(http, "POST", base, {"metadata": {"name": "too-big", "annotations": big}})
    assert status == 422
    assert "Too long: must have at most 262144 bytes" in body["message"]
    status, body = await call(http, "PATCH", f"{base}/fits", {"metadata": {"annotations": {"example.com/b": "y"}}},
                              "application/merge-patch+json")
    assert status == 422


async def test_annotation_size_counts_utf8_bytes(http, namespace):
    """262144 bytes, not characters: 'é' is two."""
    base = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    chars = 256 * 1024 - len("example.com/a")
    assert (await call(http, "POST", base, {"metadata": {"name": "ascii", "annotations": {"example.com/a": "x" * chars}}}))[0] == 201
    status, body = await call(http, "POST", base, {"metadata": {"name": "utf8", "annotations": {"example.com/a": "é" * chars}}})
    assert status == 422 and "Too long" in body["message"]


@pytest.mark.parametrize("name", ["DONNÉES", "x²", "1ST", "A=B", ""])
async def test_invalid_env_names_in_a_pod_are_422(http, namespace, name):
    spec = pod("p")
    spec["spec"]["containers"][0]["env"] = [{"name": "OK_1.a-b", "value": "1"}, {"name": name, "value": "v"}]
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/pods", spec)
    assert status == 422, body
    assert body["details"]["causes"][0]["field"] == "spec.containers[0].env[1].name"


async def test_pods_are_deleted_gracefully(http, namespace):
    """Real clusters: DELETE sets deletionTimestamp; the pod stays readable (Terminating) and its
    name stays taken until its containers stop; gracePeriodSeconds=0 deletes at once."""
    base = f"/api/v1/namespaces/{namespace}/pods"
    await call(http, "POST", base, pod("g", terminationGracePeriodSeconds=30))
    status, answer = await call(http, "DELETE", f"{base}/g", {"kind": "DeleteOptions", "gracePeriodSeconds": 1})
    assert status == 200
    assert answer["metadata"]["deletionTimestamp"] and answer["metadata"]["deletionGracePeriodSeconds"] == 1
    status, still = await call(http, "GET", f"{base}/g")
    assert status == 200 and still["metadata"]["deletionTimestamp"]
    status, body = await call(http, "POST", base, pod("g"))
    assert status == 409 and body["reason"] == "AlreadyExists"
    await wait_for(http, f"{base}/g")
    assert (await call(http, "POST", base, pod("g")))[0] == 201
    status, _ = await call(http, "DELETE", f"{base}/g", {"gracePeriodSeconds": 0})
    assert status == 200 and (await call(http, "GET", f"{base}/g"))[0] == 404


async def test_a_terminating_namespace_refuses_new_objects_then_goes(http):
    """Real clusters (NamespaceLifecycle): 403 while the namespace is being deleted."""
    name = "doomed-" + __import__("uuid").uuid4().hex[:6]
    await call(http, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    await call(http, "POST", f"/api/v1/namespaces/{name}/configmaps", {"metadata": {"name": "kept"}})
    status, answer = await call(http, "DELETE", f"/api/v1/namespaces/{name}")
    assert status == 200 and answer["status"]["phase"] == "Terminating"
    status, body = await call(http, "POST", f"/api/v1/namespaces/{name}/configmaps", {"metadata": {"name": "new"}})
    assert status == 403
    assert_status(body, 403, "Forbidden")
    assert body["message"] == (f'configmaps "new" is forbidden: unable to create new content in namespace {name} '
                               "because it is being terminated")
    await wait_for(http, f"/api/v1/namespaces/{name}")
    assert (await call(http, "GET", f"/api/v1/namespaces/{name}/configmaps/kept"))[0] == 404


async def test_deletecollection_deletes_what_the_selector_selects(http, namespace):
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    for name, team in (("a", "x"), ("b", "x"), ("c", "y")):
        await call(http, "POST", base, {"metadata": {"name": name, "labels": {"team": team}}})
    status, body = await call(http, "DELETE", f"{base}?labelSelector=team%3Dx")
    assert status == 200 and body["kind"] == "ConfigMapList"
    assert sorted(i["metadata"]["name"] for i in body["items"]) == ["a", "b"]
    _, left = await call(http, "GET", base)
    assert [i["metadata"]["name"] for i in left["items"]] == ["c"]


async def test_token_requests_are_signed_like_the_api_servers_and_checkable_with_its_published_keys(http, namespace):
    """TokenRequest gives an RS256 token for an existing account; the issuer's discovery document
    and JWKS (with x5c, which Ceph RGW needs) verify it - as a relying party outside the cluster does."""
    import jwt

    status, _ = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                           {"metadata": {"name": "reader"}})
    assert status == 201
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/reader/token",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                               "spec": {"audiences": ["sts.example.org"], "expirationSeconds": 600}})
    assert status == 201 and body["kind"] == "TokenRequest"
    status, missing = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/nobody/token", {"spec": {}})
    assert status == 404
    status, short = await call(http, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/reader/token",
                               {"spec": {"expirationSeconds": 60}})
    assert status == 422
    _, discovery = await call(http, "GET", "/.well-known/openid-configuration")
    _, keys = await call(http, "GET", "/openid/v1/jwks")
    [key] = keys["keys"]
    assert key["x5c"] and key["alg"] == "RS256"
    public = jwt.PyJWK(key).key
    claims = jwt.decode(body["status"]["token"], public, algorithms=["RS256"], audience="sts.example.org",
                        issuer=discovery["issuer"])
    assert claims["sub"] == f"system:serviceaccount:{namespace}:reader"
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == "reader"
    assert claims["exp"] - claims["iat"] == 600
    assert discovery["jwks_uri"].endswith("/openid/v1/jwks")


async def test_a_secrets_string_data_is_stored_as_data_and_bad_base64_is_refused(http, namespace):
    """As the API server: stringData is write-only, merged into data base64-encoded; data that is
    not base64 is a 400."""
    status, secret = await call(http, "POST", f"/api/v1/namespaces/{namespace}/secrets",
                                {"metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"b": "y"}})
    assert status == 201 and secret["data"] == {"a": "eA==", "b": "eQ=="} and "stringData" not in secret
    status, body = await call(http, "POST", f"/api/v1/namespaces/{namespace}/secrets",
                              {"metadata": {"name": "t"}, "data": {"a": "not base64!"}})
    assert status == 400 and "illegal base64" in body["message"]
