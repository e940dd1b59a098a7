"""The credentials endpoint in a real jupyter_server, against moto's STS and a metadata server."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
from aiohttp import web

boto3 = pytest.importorskip("boto3", reason="the aws test extra is not installed")

from cloudidentity_spawner.testing.kubernetes import KubernetesAPIServer  # noqa: E402

EXTENSION = "--ServerApp.jpserver_extensions={'cloudidentity_spawner.creds': True}"
TOKEN = secrets.token_hex(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Metadata:
    """The GKE metadata server's token endpoint; like the real one it insists on the header."""

    def app(self):
        async def token(request):
            if request.headers.get("Metadata-Flavor") != "Google":
                return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
            return web.json_response({"access_token": "ya29.local-token", "expires_in": 3599, "token_type": "Bearer"})

        app = web.Application()
        app.router.add_get("/computeMetadata/v1/instance/service-accounts/default/token", token)
        return app


class _Entra:
    """Microsoft Entra's token endpoint for a workload identity: it accepts exactly the
    client-credentials grant with the projected token as client assertion."""

    def app(self):
        async def token(request):
            form = await request.post()
            want = {"grant_type": "client_credentials", "client_id": AZURE_CLIENT,
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": "projected-service-account-token"}
            if request.match_info["tenant"] != AZURE_TENANT or any(form.get(k) != v for k, v in want.items()):
                return web.json_response({"error": "invalid_client", "error_description":
                                          "AADSTS70021: No matching federated identity record found for presented assertion."}, status=400)
            if form.get("scope") != "https://storage.azure.com/.default":
                return web.json_response({"error": "invalid_scope", "error_description": "AADSTS1002012: scope not valid."}, status=400)
            return web.json_response({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": "eyJ.azure"})

        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
        return app


AZURE_CLIENT, AZURE_TENANT = "6a1f0c9e-3b8d-4f2a-9e7c-5d4b3a2c1e0f", "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.fixture(scope="module")
def entra():
    server = KubernetesAPIServer(api=_Entra()).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def metadata():
    server = KubernetesAPIServer(api=_Metadata()).start()
    yield server.url.removeprefix("http://")
    server.stop()


def start_server(tmp_path, env_extra: dict[str, str]):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GCE_", "AZURE_"))}
    env.update(env_extra)
    log = open(tmp_path / f"server-{port}.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.open_browser=False", "--allow-root", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={tmp_path}", EXTENSION],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(url + "/api", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    return process, url, Path(log.name)


def identity_env(tmp: Path, role: str, moto_endpoint: str, metadata: str, entra: str) -> tuple[dict[str, str], str]:
    """What the pod of a server with an AWS role (made in moto), a Google and an Azure identity
    has in its environment (as the webhooks set it), and the role's ARN."""
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Federated": "x"}, "Action": "sts:AssumeRoleWithWebIdentity"}]}
    try:
        arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        arn = iam.get_role(RoleName=role)["Role"]["Arn"]
    token = tmp / "token"
    token.write_text("projected-service-account-token")
    return {"AWS_ROLE_ARN": arn, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token), "AWS_ENDPOINT_URL": moto_endpoint,
            "AWS_REGION": "us-east-1", "GCE_METADATA_HOST": metadata, "AZURE_CLIENT_ID": AZURE_CLIENT,
            "AZURE_TENANT_ID": AZURE_TENANT, "AZURE_FEDERATED_TOKEN_FILE": str(token),
            "AZURE_AUTHORITY_HOST": entra + "/"}, arn


@pytest.fixture(scope="module")
def with_identity(tmp_path_factory, moto_endpoint, metadata, entra):
    tmp = tmp_path_factory.mktemp("creds")
    env, arn = identity_env(tmp, "notebook-creds", moto_endpoint, metadata, entra)
    process, url, log = start_server(tmp, env)
    yield url, log, arn
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def without_identity(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nocreds")
    process, url, log = start_server(tmp, {"GCE_METADATA_HOST": f"127.0.0.1:{free_port()}"})
    yield url
    process.terminate()
    process.wait(10)


def auth():
    return {"Authorization": f"token {TOKEN}"}


def test_unauthenticated_requests_are_refused(with_identity):
    url, _, _ = with_identity
    for path in ("/api/cloudcreds/aws", "/api/cloudcreds/gcp", "/api/cloudcreds/azure?resource=https://storage.azure.com"):
        assert requests.get(url + path, timeout=10).status_code == 403
        assert requests.get(url + path, headers={"Authorization": "token wrong"}, timeout=10).status_code == 403


def test_aws_credentials_are_the_servers_role_and_work(with_identity, moto_endpoint):
    url, log, arn = with_identity
    r = requests.get(url + "/api/cloudcreds/aws", headers=auth(), timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    creds = r.json()
    assert creds["RoleArn"] == arn and creds["Expiration"]
    assert "assumed-role/notebook-creds/jupyter-" in creds["AssumedRoleArn"]
    sts = boto3.client("sts", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                       aws_session_token=creds["SessionToken"])
    assert sts.get_caller_identity()["Arn"] == creds["AssumedRoleArn"]
    time.sleep(0.2)
    assert creds["SecretAccessKey"] not in log.read_text()
    assert creds["SessionToken"] not in log.read_text()


def test_aws_credential_process_and_env_formats(with_identity):
    url, _, _ = with_identity
    process = requests.get(url + "/api/cloudcreds/aws?format=credential_process", headers=auth(), timeout=30).json()
    assert set(process) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert process["Version"] == 1
    env = requests.get(url + "/api/cloudcreds/aws?format=env", headers=auth(), timeout=30).text
    assert env.startswith("export AWS_ACCESS_KEY_ID=") and "export AWS_SESSION_TOKEN=" in env
    assert requests.get(url + "/api/cloudcreds/aws?format=yaml", headers=auth(), timeout=30).status_code == 400


def test_gcp_token_with_expiry(with_identity):
    url, _, _ = with_identity
    token = requests.get(url + "/api/cloudcreds/gcp", headers=auth(), timeout=30).json()
    assert token["access_token"] == "ya29.local-token"
    assert token["expires_in"] == 3599 and token["expiry"].endswith("Z")


def test_azure_token_for_the_resource_the_caller_names(with_identity):
    url, log, _ = with_identity
    r = requests.get(url + "/api/cloudcreds/azure?resource=https://storage.azure.com/", headers=auth(), timeout=30)
    assert r.status_code == 200, r.text
    token = r.json()
    assert token["access_token"] == "eyJ.azure" and token["expires_in"] == 3599 and token["expiry"].endswith("Z")
    assert token["resource"] == "https://storage.azure.com/"
    refused = requests.get(url + "/api/cloudcreds/azure?resource=https://vault.azure.net", headers=auth(), timeout=30)
    assert refused.status_code == 502 and "AADSTS1002012" in refused.json()["error"]
    assert requests.get(url + "/api/cloudcreds/azure", headers=auth(), timeout=30).status_code == 400
    time.sleep(0.2)
    assert "eyJ.azure" not in log.read_text()


def test_missing_identity_is_a_clear_json_error(without_identity):
    aws = requests.get(without_identity + "/api/cloudcreds/aws", headers=auth(), timeout=30)
    assert aws.status_code == 404
    assert "AWS_ROLE_ARN" in aws.json()["error"]
    gcp = requests.get(without_identity + "/api/cloudcreds/gcp", headers=auth(), timeout=30)
    assert gcp.status_code == 404
    assert "no Google identity" in gcp.json()["error"]
    azure = requests.get(without_identity + "/api/cloudcreds/azure?resource=https://storage.azure.com", headers=auth(), timeout=30)
    assert azure.status_code == 404 and "no Azure identity" in azure.json()["error"]
    storage = requests.get(without_identity + "/api/cloudcreds/token", headers=auth(), timeout=30)
    assert storage.status_code == 404 and "no storage token" in storage.json()["error"]


def test_the_storage_token_as_the_hub_keeps_it_and_why_its_renewal_failed(tmp_path):
    """The Secret's files as the kubelet mounts them (token, expires_at, error): the notebook
    sees its token, when it expires, and - after a failed renewal - why, as the hub wrote it."""
    import datetime

    folder = tmp_path / "storage"
    folder.mkdir()
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (folder / "token").write_text("eyJ.storage.token")
    (folder / "expires_at").write_text(later)
    (folder / "error").write_text("")
    process, url, _ = start_server(tmp_path, {"BEARER_TOKEN_FILE": str(folder / "token")})
    try:
        assert requests.get(url + "/api/cloudcreds/token", timeout=30).status_code == 403
        answer = requests.get(url + "/api/cloudcreds/token", headers=auth(), timeout=30).json()
        assert (answer["access_token"], answer["expires_at"], answer["error"], answer["expired"]) == (
            "eyJ.storage.token", later, None, False)
        assert 500 < answer["expires_in"] <= 600
        (folder / "error").write_text("Your login has expired or was revoked, so your storage token cannot be renewed; log out and log in again.")
        assert "log in again" in requests.get(url + "/api/cloudcreds/token", headers=auth(), timeout=30).json()["error"]
    finally:
        process.terminate()
        process.wait(10)


def test_wheel_enables_the_extension_by_default(tmp_path):
    root = Path(__file__).parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
                   check=True, timeout=300, capture_output=True)
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    [config] = [n for n in names if n.endswith("etc/jupyter/jupyter_server_config.d/cloudidentity_spawner.json")]
    data = json.loads(zipfile.ZipFile(wheel).read(config))
    assert data == {"ServerApp": {"jpserver_extensions": {"cloudidentity_spawner.creds": True}}}


# A real JupyterHub with JupyterHub's own "read-only" setup: custom scopes checked by a granular
# Authorizer in the single-user server, a viewer with `access:servers` and read scopes on the
# owner's server, the owner with execute on their own.
GRANULAR_SERVER_CONFIG = '''
import os
from jupyterhub.singleuser.extension import JupyterHubAuthorizer

class GranularAuthorizer(JupyterHubAuthorizer):
    def is_authorized(self, handler, user, action, resource):
        owner, server = os.environ["JUPYTERHUB_USER"], os.environ["JUPYTERHUB_SERVER_NAME"]
        wanted = {f"custom:jupyter_server:{action}:{r}{f}" for r in (resource, "*")
                  for f in (f"!user={owner}", f"!server={owner}/{server}")}
        return bool(self.hub_auth.check_scopes(wanted, user.hub_user))

c = get_config()
c.ServerApp.authorizer_class = GranularAuthorizer
'''

GRANULAR_HUB_CONFIG = '''
import sys
c = get_config()
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"owner", "viewer"}}
c.JupyterHub.spawner_class = "simple"
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.proxy_class = "jupyterhub.proxy.ConfigurableHTTPProxy"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [sys.executable.rsplit("/", 1)[0] + "/configurable-http-proxy"]
c.SimpleLocalProcessSpawner.home_dir_template = {home!r}
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root", "--config={server_config}",
                  "--ServerApp.jpserver_extensions={{'cloudidentity_spawner.creds': True}}"]
c.Spawner.environment = {env!r}
c.Spawner.oauth_client_allowed_scopes = ["access:servers!server", "custom:jupyter_server:read:*!server",
                                         "custom:jupyter_server:execute:*!server"]
c.JupyterHub.custom_scopes = {{
    "custom:jupyter_server:read:*": {{"description": "read-only access to a server"}},
    "custom:jupyter_server:execute:*": {{"description": "run code on a server",
                                         "subscopes": ["custom:jupyter_server:read:*"]}},
}}
c.JupyterHub.services = [{{"name": "setup", "api_token": {service_token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "custom:jupyter_server:execute:*!user"]}},
    {{"name": "read-only-owner", "users": ["viewer"],
      "scopes": ["access:servers!user=owner", "read:users!user=owner", "read:servers!user=owner",
                 "custom:jupyter_server:read:*!user=owner"]}},
    {{"name": "setup", "services": ["setup"], "scopes": ["admin:users", "admin:servers", "tokens"]}},
]
'''


@pytest.fixture(scope="module")
def granular_hub(tmp_path_factory, moto_endpoint, metadata, entra):
    tmp = tmp_path_factory.mktemp("granular")
    env, _ = identity_env(tmp, "notebook-owner", moto_endpoint, metadata, entra)
    (tmp / "server_config.py").write_text(GRANULAR_SERVER_CONFIG)
    (tmp / "home").mkdir()
    service_token = secrets.token_hex(16)
    port = free_port()
    (tmp / "jupyterhub_config.py").write_text(GRANULAR_HUB_CONFIG.format(
        port=port, hub_port=free_port(), proxy_api_port=free_port(), home=str(tmp / "home" / "{username}"),
        server_config=tmp / "server_config.py", env=env, service_token=service_token))
    log = open(tmp / "hub.log", "w")
    hub = subprocess.Popen([sys.executable, "-m", "jupyterhub", "--config", "jupyterhub_config.py"], cwd=tmp,
                           env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GCE_", "AZURE_"))},
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    api = {"Authorization": f"token {service_token}"}
    try:
        for _ in range(300):
            try:
                if requests.get(url + "/hub/api/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert hub.poll() is None, (tmp / "hub.log").read_text()
            time.sleep(0.1)
        for user in ("owner", "viewer"):
            requests.post(url + f"/hub/api/users/{user}", headers=api, timeout=10)
        started = requests.post(url + "/hub/api/users/owner/server", headers=api, timeout=60)
        assert started.status_code in (201, 202), started.text
        for _ in range(300):
            if requests.get(url + "/hub/api/users/owner", headers=api, timeout=10).json()["servers"].get("", {}).get("ready"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the owner's server did not start:\n" + (tmp / "hub.log").read_text())
        tokens = {user: requests.post(url + f"/hub/api/users/{user}/tokens", headers=api, json={"note": "test"},
                                      timeout=10).json()["token"] for user in ("owner", "viewer")}
        yield url + "/user/owner", tokens
    finally:
        requests.delete(url + "/hub/api/users/owner/server", headers=api, timeout=30)
        os.killpg(hub.pid, 15)
        hub.wait(30)


CREDENTIAL_ROUTES = ("/api/cloudcreds/aws", "/api/cloudcreds/aws?format=credential_process",
                     "/api/cloudcreds/gcp", "/api/cloudcreds/azure?resource=https://storage.azure.com")


def test_a_read_only_viewer_gets_no_credentials_and_the_owner_does(granular_hub):
    server, tokens = granular_hub
    viewer, owner = ({"Authorization": f"token {tokens[u]}"} for u in ("viewer", "owner"))
    # The setup is JupyterHub's read-only one: the viewer reads the server, cannot run code in it.
    assert requests.get(server + "/api/contents", headers=viewer, timeout=30).status_code == 200
    assert requests.post(server + "/api/kernels", headers=viewer, timeout=30).status_code == 403
    for route in CREDENTIAL_ROUTES:
        refused = requests.get(server + route, headers=viewer, timeout=30)
        assert refused.status_code == 403, (route, refused.text)
        assert "AccessKeyId" not in refused.text and "access_token" not in refused.text
        allowed = requests.get(server + route, headers=owner, timeout=30)
        assert allowed.status_code == 200, (route, allowed.text)


@pytest.mark.parametrize("endpoint,region", [("https://sts.amazonaws.com/", "eu-west-1"),
                                             ("https://sts.eu-west-1.amazonaws.com/", "eu-west-1"),
                                             ("http://127.0.0.1:5000/", "us-east-1")])
def test_the_caller_identity_request_is_signed_as_botocore_signs_it(endpoint, region, monkeypatch):
    """The endpoint asks STS who Pod Identity credentials are without an AWS SDK in the image:
    its Signature Version 4 must be the one botocore makes for the same request."""
    import datetime

    from botocore import auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from cloudidentity_spawner.creds import signed_caller_identity_request

    now = datetime.datetime(2026, 12, 3, 5, 6, 7, tzinfo=datetime.timezone.utc)
    credentials = {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "wJalr/EXAMPLEKEY+x", "SessionToken": "FwoG/tok+en=="}
    url, headers = signed_caller_identity_request(endpoint, region, credentials, now)
    signing_region = "us-east-1" if "//sts.amazonaws.com" in endpoint else region
    request = AWSRequest(method="GET", url=url)
    monkeypatch.setattr(auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    auth.SigV4Auth(Credentials("ASIAEXAMPLE", "wJalr/EXAMPLEKEY+x", "FwoG/tok+en=="), "sts", signing_region).add_auth(request)
    assert headers["Authorization"] == request.headers["Authorization"]
    assert headers["x-amz-security-token"] == request.headers["X-Amz-Security-Token"]
