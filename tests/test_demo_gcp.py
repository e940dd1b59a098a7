"""`cloudidentity-spawner demo --gcp`: GKE Workload Identity Federation end to end - the hub grants
each ESCAPE member's ServiceAccount its own principal a role on its managed folder (real
google-cloud clients against the local Google server), and the node's metadata server gives the
pod a token for that principal: it reaches the member's folder and nobody else's."""

from __future__ import annotations


import pytest
import requests

pytest.importorskip("oidc_provider_mock", reason="the demo extra is not installed")
pytest.importorskip("google.cloud.storage", reason="the gcp extra is not installed")

from cloudidentity_spawner.demo import GCP_BUCKET, GCP_PROJECT_NUMBER, NAMESPACE, Demo, _free_port, banner  # noqa: E402

from .test_demo import login, notebook_credentials, wait_ready  # noqa: E402
from .test_demo_azure import ADMIN  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    with Demo(port=_free_port(), extra_config=ADMIN, gcp=True) as running:
        yield running


def gcs(demo, token: str, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, demo.gcs_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs)


def test_carols_notebook_gets_a_token_that_reaches_only_her_folder(demo):
    assert any("carol" in line and f"gs://{GCP_BUCKET}/users/carol/" in line for line in demo.mapping())
    assert "GKE metadata server" in banner(demo)
    login(demo, "carol")
    assert wait_ready(demo, "carol")["servers"][""]["ready"]
    principal = (f"principal://iam.googleapis.com/projects/{GCP_PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
                 f"demo-project.svc.id.goog/subject/ns/{NAMESPACE}/sa/jupyter-carol")
    folder = demo.google.policies.get(f"projects/_/buckets/{GCP_BUCKET}/managedFolders/users/carol/")
    assert [b["members"] for b in folder["bindings"]] == [[principal]]

    # The notebook's own endpoint asks the node's metadata server, as in GKE.
    token = notebook_credentials(demo, "carol", "gcp")["access_token"]
    assert demo.google.tokens[token] == principal

    upload = f"/upload/storage/v1/b/{GCP_BUCKET}/o"
    assert gcs(demo, token, "POST", upload, params={"uploadType": "media", "name": "users/carol/notes.txt"}, data=b"hi").status_code == 200
    listed = gcs(demo, token, "GET", f"/storage/v1/b/{GCP_BUCKET}/o", params={"prefix": "users/carol/"})
    assert listed.status_code == 200 and [o["name"] for o in listed.json()["items"]] == ["users/carol/notes.txt"]
    for refused in (gcs(demo, token, "POST", upload, params={"uploadType": "media", "name": "users/alice/x.txt"}, data=b"x"),
                    gcs(demo, token, "GET", f"/storage/v1/b/{GCP_BUCKET}/o", params={"prefix": "users/alice/"}),
                    gcs(demo, token, "GET", f"/storage/v1/b/{GCP_BUCKET}/o", params={"prefix": ""})):
        assert refused.status_code == 403, refused.text


def test_the_metadata_server_answers_only_its_pods_and_as_gke_does(demo):
    url = demo.metadata.url + "/pod-unknown/computeMetadata/v1/instance/service-accounts/default/token"
    assert requests.get(url, headers={"Metadata-Flavor": "Google"}, timeout=10).status_code == 404
    host = demo.metadata.register(NAMESPACE, "jupyter-carol")
    token_url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    assert requests.get(token_url, timeout=10).status_code == 403  # without the header, as GKE's
    assert requests.get(token_url, headers={"Metadata-Flavor": "Google"}, timeout=10).json()["token_type"] == "Bearer"
