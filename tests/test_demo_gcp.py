"""`cloudidentity-spawner demo --gcp`: GKE Workload Identity Federation end to end - the hub grants
each ESCAPE member's ServiceAccount its own principal a role on its managed folder (real
google-cloud clients against the local Google server), and the node's metadata server gives the
pod a token for that principal: it reaches the member's folder and nobody else's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

pytest.importorskip("oidc_provider_mock", reason="the demo extra is not installed")
pytest.importorskip("google.cloud.storage", reason="the gcp extra is not installed")

from cloudidentity_spawner.client import GOOGLE_IMPERSONATION  # noqa: E402
from cloudidentity_spawner.demo import (  # noqa: E402
    GCP_BUCKET,
    GCP_CLUSTER,
    GCP_PROJECT_NUMBER,
    NAMESPACE,
    Demo,
    _free_port,
    banner,
)

from .test_demo import credentials, hub_api, login, notebook_credentials, signed_in, user_token, wait_ready  # noqa: E402
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


LAPTOP = """
import json, sys
import google.auth
from google.auth.transport.requests import Request

credentials, _ = google.auth.load_credentials_from_file(sys.argv[1])
credentials.refresh(Request())
print(json.dumps({"token": credentials.token}))
"""


def running_server(demo, user: str) -> requests.Session:
    """A session of *user*, whose default server runs (started if it does not)."""
    try:
        running = hub_api(demo, f"/users/{user}")["servers"].get("")
    except requests.HTTPError:  # not on the hub yet
        running = None
    session = signed_in(demo, user) if running else login(demo, user)
    assert wait_ready(demo, user)["servers"][""]["ready"]
    return session


def laptop_google_credentials(demo, user: str, tmp_path) -> tuple[dict, dict]:
    """google-auth on another computer with the credentials.json ``credentials gcp --format
    external-account`` printed (its Google endpoints pointed at the demo's): the token it gets by
    running the command, and the configuration."""
    session = running_server(demo, user)
    token_file = tmp_path / f"{user}-token"
    token_file.write_text(user_token(session, demo, user, [f"access:servers!user={user}"]))
    printed = credentials(demo, "--token-file", str(token_file), "gcp", "--format", "external-account")
    assert printed.returncode == 0, printed.stderr
    config = json.loads(printed.stdout)
    # What the file holds for Google's real endpoints, pointed at the demo's stand-ins.
    assert config["token_url"] == "https://sts.googleapis.com/v1/token"
    config["token_url"] = demo.google_tokens.url + "/v1/token"
    path = tmp_path / f"{user}-credentials.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "JUPYTERHUB_"))}
    env["GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"] = "1"
    laptop = subprocess.run([sys.executable, "-c", LAPTOP, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert laptop.returncode == 0, laptop.stderr[-3000:]
    return json.loads(laptop.stdout), config


def test_google_auth_on_a_laptop_gets_carols_principal_and_only_her_folder(demo, tmp_path):
    """`credentials gcp --format external-account` prints a credentials.json whose executable is
    the same command: google-auth runs it for the pod's token for the cluster's pool, Google's STS
    checks it against the cluster's keys and answers with carol's own principal - the one the
    rules grant - which reaches her folder and nobody else's."""
    answer, config = laptop_google_credentials(demo, "carol", tmp_path)
    principal = (f"principal://iam.googleapis.com/projects/{GCP_PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
                 f"demo-project.svc.id.goog/subject/ns/{NAMESPACE}/sa/jupyter-carol")
    assert demo.google.tokens[answer["token"]] == principal
    assert config["audience"] == f"identitynamespace:demo-project.svc.id.goog:{GCP_CLUSTER}"
    assert "service_account_impersonation_url" not in config  # a principal: nothing to impersonate
    command = config["credential_source"]["executable"]["command"]
    assert command.endswith("gcp --format executable") and "JUPYTERHUB_API_TOKEN" not in command
    token = answer["token"]
    upload = f"/upload/storage/v1/b/{GCP_BUCKET}/o"
    assert gcs(demo, token, "POST", upload, params={"uploadType": "media", "name": "users/carol/laptop.txt"},
               data=b"from the laptop").status_code == 200
    assert gcs(demo, token, "GET", f"/storage/v1/b/{GCP_BUCKET}/o", params={"prefix": "users/alice/"}).status_code == 403


def test_googles_sts_takes_only_the_clusters_tokens_for_the_pool(demo, tmp_path):
    """The stand-in refuses what Google's STS refuses: a token for another audience, one signed by
    another key, another cluster; so the laptop test above proves the pod's token is the one."""
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    session = running_server(demo, "carol")
    token_file = tmp_path / "carol-token"
    token_file.write_text(user_token(session, demo, "carol", ["access:servers!user=carol"]))
    executable = json.loads(credentials(demo, "--token-file", str(token_file), "gcp", "--format", "executable").stdout)
    assert (executable["version"], executable["success"], executable["token_type"]) == (
        1, True, "urn:ietf:params:oauth:token-type:jwt")
    assert time.time() + 60 < executable["expiration_time"] <= time.time() + 600  # Kubernetes' shortest lifetime
    good = executable["id_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    assert claims["aud"] == ["demo-project.svc.id.goog"] and claims["sub"].endswith(":jupyter-carol")

    def exchange(subject: str, audience: str = f"identitynamespace:demo-project.svc.id.goog:{GCP_CLUSTER}"):
        return requests.post(demo.google_tokens.url + "/v1/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": audience,
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": subject,
            "scope": "https://www.googleapis.com/auth/cloud-platform"}, timeout=30)

    assert exchange(good).status_code == 200
    assert exchange(good, f"identitynamespace:demo-project.svc.id.goog:{GCP_CLUSTER}-other").status_code == 400
    forged = jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256",
                        headers=jwt.get_unverified_header(good))
    assert exchange(forged).json()["error"] == "invalid_grant"
    issuer = demo.kube.api.issuer
    carol = {"metadata": {"name": "jupyter-carol", "uid": "u"}}
    other_audience = issuer.issue(NAMESPACE, carol, ["sts.amazonaws.com"], 600)[0]
    assert exchange(other_audience).json()["error"] == "invalid_grant"
    expired = issuer.issue(NAMESPACE, carol, ["demo-project.svc.id.goog"], -60)[0]
    assert exchange(expired).json()["error"] == "invalid_grant"
    not_hers = jwt.encode({**claims, "sub": f"system:serviceaccount:{NAMESPACE}:jupyter-alice"}, issuer.key,
                          algorithm="RS256", headers={"kid": issuer.kid})
    assert exchange(not_hers).json()["error"] == "invalid_grant"
    assert exchange(good, f"identitynamespace:other-project.svc.id.goog:{GCP_CLUSTER}").status_code == 400



def test_google_auth_impersonates_only_a_service_account_that_trusts_the_servers_account(demo, tmp_path):
    """With a Google service account (``service_account``/``managed`` rules) the credentials file
    adds ``service_account_impersonation_url``: google-auth's federated token for carol's
    ServiceAccount gets that account's token only where its ``roles/iam.workloadIdentityUser``
    names her ServiceAccount, as IAM Credentials decides."""
    import time

    _, config = laptop_google_credentials(demo, "carol", tmp_path)
    state = demo.google
    for name, member in (("nb-carol", f"serviceAccount:demo-project.svc.id.goog[{NAMESPACE}/jupyter-carol]"),
                         ("nb-alice", f"serviceAccount:demo-project.svc.id.goog[{NAMESPACE}/jupyter-alice]")):
        email = f"{name}@demo-project.iam.gserviceaccount.com"
        state.accounts[email] = {"email": email, "_created": time.monotonic() - 60}
        state.policies.set(email, {"bindings": [{"role": "roles/iam.workloadIdentityUser", "members": [member]}]})
    outcomes = {}
    for name in ("nb-carol", "nb-alice"):
        email = f"{name}@demo-project.iam.gserviceaccount.com"
        # As the printed file has it for a service_account or managed rule (client.GOOGLE_IMPERSONATION),
        # on the demo's host.
        url = GOOGLE_IMPERSONATION.format(email=email).replace("https://iamcredentials.googleapis.com", demo.google_tokens.url)
        impersonating = {**config, "token_url": demo.google_tokens.url + "/v1/token", "service_account_impersonation_url": url}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(impersonating))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "JUPYTERHUB_"))}
        env["GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"] = "1"
        outcomes[name] = subprocess.run([sys.executable, "-c", LAPTOP, str(path)], capture_output=True, text=True,
                                        env=env, timeout=120)
    assert outcomes["nb-carol"].returncode == 0, outcomes["nb-carol"].stderr[-2000:]
    token = json.loads(outcomes["nb-carol"].stdout)["token"]
    assert state.tokens[token] == "serviceAccount:nb-carol@demo-project.iam.gserviceaccount.com"
    assert outcomes["nb-alice"].returncode != 0 and "iam.serviceAccounts.getAccessToken" in outcomes["nb-alice"].stderr
