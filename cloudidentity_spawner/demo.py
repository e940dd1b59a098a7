"""``cloudidentity-spawner demo``: the whole thing on one laptop, on 127.0.0.1 only.

Starts the Kubernetes API emulator (whose kubelet runs each pod's
``jupyterhub-singleuser`` as a local process on the pod's own loopback address),
moto for AWS, a local OpenID Connect provider with demo users in different
groups, and JupyterHub with CloudIdentitySpawner. Each demo user gets a
different ServiceAccount and IAM role; AWS calls from their notebook reach moto
as that role. Ctrl-C stops everything it started.

Needs the ``demo`` extra (``pip install 'cloudidentity-spawner[demo]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .providers import s3_sts
from .providers.gcp import TOKEN_FILE as GCP_TOKEN_FILE
from .providers.gcp import TOKEN_VOLUME as GCP_TOKEN_VOLUME

ACCOUNT = "123456789012"
NAMESPACE = "demo"
DEMO_USERS = {
    "alice": {"wlcg.groups": ["/escape", "/escape/atlas"], "name": "Alice (ATLAS)"},
    "amir": {"wlcg.groups": ["/escape", "/escape/atlas"], "name": "Amir (ATLAS)"},
    "carol": {"wlcg.groups": ["/escape"], "name": "Carol (ESCAPE member)"},
    "bob": {"wlcg.groups": [], "name": "Bob (no groups)"},
}
DEMO_PROFILES = [
    {"display_name": "Standard notebook", "slug": "standard", "default": True,
     "description": "The notebook image of your choice",
     "profile_options": {"image": {"display_name": "Image", "choices": {
         "base": {"display_name": "Base", "kubespawner_override": {"image": "quay.io/jupyter/base-notebook:latest"}},
         "root": {"display_name": "ROOT analysis", "allowed_groups": ["/escape/atlas"],
                  "kubespawner_override": {"image": "rootproject/root:latest"}}}}}},
    {"display_name": "Personal analysis with a role of your own", "slug": "personal",
     "description": "For /escape/atlas members: your own scratch prefix instead of the group's role.",
     "allowed_groups": ["/escape/atlas"], "identity_rule": "escape-members"},
]
ISSUER_PATH = "oidc.eks.us-east-1.amazonaws.com/id/DEMO0CLUSTER0OIDC"


CLUSTER = "demo-eks"
GCP_PROJECT, GCP_PROJECT_NUMBER, GCP_BUCKET = "demo-project", "424242424242", "demo-scratch"
GCP_CLUSTER = f"https://container.googleapis.com/v1/projects/{GCP_PROJECT}/locations/europe-west4/clusters/demo"
NOTEBOOK_ROLE = f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/notebooks"
AZURE_SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
AZURE_ISSUER = "https://demo.oic.prod-aks.azure.com/72f988bf-86f1-41af-91ab-2d7cd011db47/0d3e5f7a-demo/"
AZURE_SCRATCH = (f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/demo-data/providers/Microsoft.Storage/"
                 "storageAccounts/demoscratch/blobServices/default/containers/scratch")


CEPH_AUDIENCE = "sts.demo.ceph"
CEPH_BUCKET = "demo-scratch"


def demo_rules(pod_identity: bool = False, azure: bool = False, gcp: bool = False,
               ceph: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The demo's rules; *ceph* is the gateway's URL and the cluster issuer's provider ARN there."""
    if ceph is not None:  # on-premises: roles at a Ceph RADOS Gateway, assumed with the pods' own tokens
        store = {"endpoint": ceph[0], "audience": CEPH_AUDIENCE, "allow_http": True}
        managed = {"oidc_provider_arn": ceph[1], "role_path": "/jupyterhub/demo/"}
        return [
            {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
             "s3_sts": {**store, "managed": {**managed, "inline_policy": scratch_prefix_policy(CEPH_BUCKET, "groups/atlas")}}},
            {"name": "escape-members", "match": {"groups": ["/escape"]}, "scope": "user",
             "s3_sts": {**store, "managed": {**managed, "inline_policy": scratch_prefix_policy(CEPH_BUCKET, "users/{username}")}},
             "env": {"SCRATCH_PREFIX": f"s3://{CEPH_BUCKET}/users/{{username}}/"}},
        ]
    if gcp:  # GKE: grants to each ServiceAccount's own Workload Identity Federation principal
        principal = {"project": GCP_PROJECT, "project_number": GCP_PROJECT_NUMBER}
        return [
            {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
             "gcp": {"cluster": GCP_CLUSTER, "principal": {**principal, "bucket_roles": [
                 {"bucket": GCP_BUCKET, "role": "roles/storage.objectUser", "prefix": "groups/atlas"}]}}},
            {"name": "escape-members", "match": {"groups": ["/escape"]}, "scope": "user",
             "gcp": {"cluster": GCP_CLUSTER, "principal": {**principal, "bucket_roles": [
                 {"bucket": GCP_BUCKET, "role": "roles/storage.objectUser", "prefix": "users/{username}"}]}},
             "env": {"SCRATCH_PREFIX": f"gs://{GCP_BUCKET}/users/{{username}}/"}},
        ]
    if azure:  # AKS: a managed identity for the ATLAS group, and one per other ESCAPE member
        managed = {"subscription_id": AZURE_SUBSCRIPTION, "resource_group": "jupyterhub-identities",
                   "location": "westeurope", "oidc_issuer": AZURE_ISSUER}
        return [
            {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
             "azure": {"managed": {**managed, "identity_name": "{hub}-atlas"}}},
            {"name": "escape-members", "match": {"groups": ["/escape"]}, "scope": "user",
             "azure": {"managed": {**managed, "role_assignments": [{"scope": AZURE_SCRATCH, "role": "Storage Blob Data Contributor"}]}},
             "env": {"SCRATCH_CONTAINER": "https://demoscratch.blob.core.windows.net/scratch/{username}"}},
        ]
    atlas = {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
             "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/escape-atlas"}}
    if pod_identity:  # one shared role; each member's association narrows it to their prefix
        return [atlas, {"name": "escape-members", "match": {"groups": ["/escape"]}, "scope": "user",
                        "aws": {"pod_identity": {"cluster": CLUSTER, "role_arn": NOTEBOOK_ROLE,
                                                 "session_policy": _scratch_policy()}},
                        "env": {"SCRATCH_BUCKET": "s3://demo-scratch/{username}"}}]
    return [
        atlas,
        {"name": "escape-members", "match": {"groups": ["/escape"]}, "scope": "user",
         "aws": {"managed": {
             "oidc_provider_arn": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER_PATH}",
             "role_path": "/jupyterhub/demo/",
             "permissions_boundary": f"arn:aws:iam::{ACCOUNT}:policy/jupyterhub-user-boundary",
             "inline_policy": _scratch_policy(),
         }},
         "env": {"SCRATCH_BUCKET": "s3://demo-scratch/{username}"}},
    ]


def _scratch_policy() -> dict[str, Any]:
    return scratch_prefix_policy("demo-scratch")


def scratch_prefix_policy(bucket: str, prefix: str = "{username}") -> dict[str, Any]:
    from .providers.aws import scratch_prefix_policy

    return scratch_prefix_policy(bucket, prefix)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False


def _wait_for_hub(url: str, timeout: float, process: subprocess.Popen | None = None) -> bool:
    """True once JupyterHub answers through its proxy (the port opens before the hub route exists);
    False at once if its *process* exits."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def pod_environment(pod: dict[str, Any], service_account: dict[str, Any] | None, moto_url: str, token_dir: str,
                    agent: PodIdentityAgent | None = None, entra: Any = None,
                    metadata: GkeMetadataServer | None = None) -> dict[str, str]:
    """What a pod's process sees: its container env plus what EKS's IRSA webhook injects
    for a ServiceAccount annotated with a role (pointed at moto instead of AWS), what the
    Pod Identity webhook injects for an associated ServiceAccount (pointed at the local agent),
    or what AKS's Workload Identity webhook injects into a labelled pod (pointed at the local
    Entra token endpoint)."""
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container.get("env", []) if "value" in e}
    annotations = ((service_account or {}).get("metadata") or {}).get("annotations") or {}
    meta = pod["metadata"]
    account = pod["spec"].get("serviceAccountName", "")
    labels = meta.get("labels") or {}
    if metadata is not None:  # GKE: every pod reaches the node's metadata server
        host = metadata.register(meta["namespace"], account)
        env.update(GCE_METADATA_HOST=host, GCE_METADATA_IP=host, GOOGLE_CLOUD_PROJECT=metadata.project)
        return env
    if entra is not None and labels.get("azure.workload.identity/use") == "true" and \
            annotations.get("azure.workload.identity/client-id"):
        token = Path(token_dir) / f"{meta['namespace']}-{meta['name']}.azure-identity-token"
        token.write_text(entra.register(meta["namespace"], account))
        env.update(AZURE_CLIENT_ID=annotations["azure.workload.identity/client-id"],
                   AZURE_TENANT_ID=annotations.get("azure.workload.identity/tenant-id", entra.arm.tenant_id),
                   AZURE_FEDERATED_TOKEN_FILE=str(token), AZURE_AUTHORITY_HOST=entra.url + "/")
        return env
    if agent is not None and (env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                              or agent.eks.association_for(agent.cluster, meta["namespace"], account)):
        token = Path(token_dir) / f"{meta['namespace']}-{meta['name']}.pod-identity-token"
        token.write_text(agent.register(meta["namespace"], account, meta["name"]))
        env.update(AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.url, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token),
                   AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=moto_url)
        return env
    role_arn = annotations.get("eks.amazonaws.com/role-arn")
    if role_arn:
        token = Path(token_dir) / f"{pod['metadata']['namespace']}-{pod['metadata']['name']}.token"
        token.write_text(f"demo-projected-token-for-{pod['spec'].get('serviceAccountName')}")
        env.update(
            AWS_ROLE_ARN=role_arn,
            AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_STS_REGIONAL_ENDPOINTS="regional",
            AWS_ENDPOINT_URL=moto_url,
        )
    return env


class PodIdentityAgent:
    """The node's EKS Pod Identity agent, on 127.0.0.1: for a pod's projected token it looks up
    the pod's association (in the local EKS API) and hands out credentials for the associated
    role from moto's STS - with the association's session policy, or with session tags."""

    def __init__(self, eks: Any, moto_url: str, cluster: str = CLUSTER):
        self.eks, self.moto_url, self.cluster = eks, moto_url, cluster
        self._tokens: dict[str, tuple[str, str, str]] = {}
        self.url = ""

    def register(self, namespace: str, service_account: str, pod: str) -> str:
        """A projected token for one pod (what the kubelet writes into the pod)."""
        token = "demo-pod-identity-" + secrets.token_urlsafe(24)
        self._tokens[token] = (namespace, service_account, pod)
        return token

    def app(self):
        from aiohttp import web

        async def credentials(request):
            pod = self._tokens.get(request.headers.get("Authorization", ""))
            if pod is None:
                return web.json_response({"message": "invalid token"}, status=401)
            association = self.eks.association_for(self.cluster, pod[0], pod[1])
            if association is None:
                return web.json_response({"message": f"no Pod Identity association for {pod[0]}/{pod[1]}"}, status=400)
            return web.json_response(await asyncio.to_thread(self._assume, association, pod))

        app = web.Application()
        app.router.add_get("/v1/credentials", credentials)
        return app

    def _assume(self, association: dict[str, Any], pod: tuple[str, str, str]) -> dict[str, Any]:
        import boto3

        sts = boto3.client("sts", endpoint_url=self.moto_url, region_name="us-east-1")
        request: dict[str, Any] = {"RoleArn": association["roleArn"], "RoleSessionName": f"eks-{self.cluster}-{pod[2]}"[:64]}
        if association.get("policy"):
            request["Policy"] = association["policy"]
        if not association.get("disableSessionTags"):
            request["Tags"] = [{"Key": "kubernetes-namespace", "Value": pod[0]},
                               {"Key": "kubernetes-service-account", "Value": pod[1]},
                               {"Key": "eks-cluster-name", "Value": self.cluster}]
        creds = sts.assume_role(**request)["Credentials"]
        return {"AccessKeyId": creds["AccessKeyId"], "SecretAccessKey": creds["SecretAccessKey"],
                "Token": creds["SessionToken"], "Expiration": creds["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                "AccountId": ACCOUNT}


class GkeMetadataServer:
    """GKE's metadata server for the demo's pods, on 127.0.0.1. The real one knows a pod by its
    IP; here each pod's ``GCE_METADATA_HOST`` carries a path of its own. A pod whose
    ServiceAccount names a Google account (``iam.gke.io/gcp-service-account``) gets that
    account's token only if IAM lets the ServiceAccount act as it (Workload Identity); any
    other pod gets a federated token for its ServiceAccount's own principal."""

    def __init__(self, state: Any, kube: Any, project: str):
        self.state, self.kube, self.project = state, kube, project
        self._pods: dict[str, tuple[str, str]] = {}
        self.url = ""

    def register(self, namespace: str, service_account: str) -> str:
        """The host:port/path a pod's ``GCE_METADATA_HOST`` names."""
        path = "pod-" + secrets.token_urlsafe(16)
        self._pods[path] = (namespace, service_account)
        return f"{self.url.removeprefix('http://')}/{path}"

    def app(self):
        from aiohttp import web

        async def token(request):
            if request.headers.get("Metadata-Flavor") != "Google":
                return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
            pod = self._pods.get(request.match_info["pod"])
            if pod is None:
                return web.Response(status=404, text="not a pod of this node")
            namespace, account = pod
            sa = self.kube.get("serviceaccounts", namespace, account) or {}
            email = ((sa.get("metadata") or {}).get("annotations") or {}).get("iam.gke.io/gcp-service-account")
            try:
                if email:
                    pool = f"{self.project}.svc.id.goog"
                    issued = self.state.exchange_token(f"serviceAccount:{pool}[{namespace}/{account}]")
                else:
                    issued = self.state.federated_token(namespace, account, self.project)
            except PermissionError as e:
                return web.Response(status=403, text=str(e))
            return web.json_response({"access_token": issued, "expires_in": 3599, "token_type": "Bearer"})

        async def ping(request):
            return web.Response(text="ok", headers={"Metadata-Flavor": "Google"})

        app = web.Application()
        app.router.add_get("/{pod}/computeMetadata/v1/instance/service-accounts/default/token", token)
        app.router.add_get("/{pod}", ping)
        app.router.add_get("/{pod}/", ping)
        return app


class LocalKubelet:
    """Runs ``jupyterhub-singleuser`` for each pod on 127.0.0.N:8888, N per pod."""

    def __init__(self, api: Any, moto_url: str, workdir: str, agent: PodIdentityAgent | None = None, entra: Any = None,
                 metadata: GkeMetadataServer | None = None):
        self.api = api
        self.agent = agent
        self.entra = entra
        self.metadata = metadata
        self.moto_url = moto_url
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen] = {}
        self.projected_tokens: Any = None
        """``(namespace, pod, volume) -> token``: the cluster's tokens for projected volumes."""
        self._next = random.randrange(10, 250)  # two demos on one machine (parallel tests) start apart
        self._lock = threading.Lock()

    async def run(self, pod: dict[str, Any]) -> str:
        with self._lock:
            for _ in range(240):  # an address whose port 8888 no other demo's server holds
                ip = f"127.0.0.{self._next}"
                self._next = self._next + 1 if self._next < 250 else 10
                if not _listening(ip, 8888):
                    break
        meta = pod["metadata"]
        sa = self.api.get("serviceaccounts", meta["namespace"], pod["spec"].get("serviceAccountName", ""))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "AWS_", "AZURE_"))}
        env.update(pod_environment(pod, sa, self.moto_url, self.workdir, self.agent, self.entra, self.metadata))
        # What the kubelet does: a projected volume's token, in a file the process reads.
        for variable, path, volume in (("AWS_WEB_IDENTITY_TOKEN_FILE", s3_sts.TOKEN_FILE, s3_sts.TOKEN_VOLUME),
                                       ("CLOUDIDENTITY_GCP_TOKEN_FILE", GCP_TOKEN_FILE, GCP_TOKEN_VOLUME)):
            if self.projected_tokens is not None and env.get(variable) == path:
                token = Path(self.workdir) / f"{meta['namespace']}-{meta['name']}.{volume}"
                token.write_text(self.projected_tokens(meta["namespace"], meta["name"], volume))
                env[variable] = str(token)
        service_url = env.get("JUPYTERHUB_SERVICE_URL", "http://0.0.0.0:8888/")
        env["JUPYTERHUB_SERVICE_URL"] = service_url.replace("0.0.0.0", ip)
        home = Path(self.workdir) / "home" / meta["name"]
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
        command = [sys.executable, "-m", "jupyterhub.singleuser", f"--ip={ip}", "--port=8888", "--allow-root", f"--ServerApp.root_dir={home}",
                   # what the installed package's config file does in a real user image
                   "--ServerApp.jpserver_extensions={'cloudidentity_spawner.creds': True}"]
        log = open(Path(self.workdir) / f"{meta['name']}.log", "ab")
        process = subprocess.Popen(command, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes[meta["uid"]] = process
        await asyncio.to_thread(_wait_for_port, ip, 8888, 60)
        return ip

    def stop(self, pod: dict[str, Any]) -> None:
        process = self.processes.pop(pod["metadata"]["uid"], None)
        if process is not None:
            process.terminate()

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()


def hub_config(*, moto_url: str, oidc_url: str, port: int, hub_port: int, eks_url: str = "", arm_url: str = "",
               operator_token: str = "", gcp: tuple[str, str] | None = None,
               ceph: tuple[str, str, dict[str, Any]] | None = None) -> str:
    """The demo's jupyterhub_config.py (the hub finds the emulator through $KUBECONFIG; *gcp* is the
    local Google server's gRPC target and REST URL)."""
    rules = demo_rules(pod_identity=bool(eks_url), azure=bool(arm_url), gcp=gcp is not None,
                       ceph=None if ceph is None else ceph[:2])
    store = "" if ceph is None else f"c.CloudIdentitySpawner.s3_sts_client_kwargs = {ceph[2]!r}\n"
    gcp_factory = "" if gcp is None else (
        "from cloudidentity_spawner.testing.gcp import client_factory_for\n"
        f"c.CloudIdentitySpawner.gcp_client_factory = client_factory_for{gcp!r}\n"
        "c.CloudIdentitySpawner.gcp_activation_seconds = 0\n")
    azure_factory = "" if not arm_url else (
        "from cloudidentity_spawner.testing.azure import AzureResourceManager\n"
        f"c.CloudIdentitySpawner.azure_client_factory = AzureResourceManager.client_factory({arm_url!r})\n")
    return f"""
from cloudidentity_spawner.admin import admin_roles, admin_service
from cloudidentity_spawner.auth import auth_state_groups
c = get_config()
# The admin page, /services/cloudidentity/ (hub admins: alice).
c.JupyterHub.services = [admin_service(__file__, port={_free_port()})]
c.JupyterHub.load_roles = admin_roles()
# The token `status` and `gc` use from the terminal (operator.env).
c.JupyterHub.services.append({{"name": "demo-operator", "api_token": {operator_token!r}}})
c.JupyterHub.load_roles.append({{"name": "demo-operator", "services": ["demo-operator"],
                                 "scopes": ["list:users", "read:users", "admin:auth_state"]}})
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.hub_connect_ip = "127.0.0.1"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{_free_port()}"
c.JupyterHub.authenticator_class = "generic-oauth"
c.GenericOAuthenticator.client_id = "demo-hub"
c.GenericOAuthenticator.client_secret = "demo-secret"
c.GenericOAuthenticator.oauth_callback_url = "http://127.0.0.1:{port}/hub/oauth_callback"
c.GenericOAuthenticator.authorize_url = "{oidc_url}/oauth2/authorize"
c.GenericOAuthenticator.token_url = "{oidc_url}/oauth2/token"
c.GenericOAuthenticator.userdata_url = "{oidc_url}/userinfo"
c.GenericOAuthenticator.scope = ["openid", "profile", "email"]
c.GenericOAuthenticator.username_claim = "sub"
c.GenericOAuthenticator.login_service = "the demo identity provider"
c.GenericOAuthenticator.allow_all = True
c.GenericOAuthenticator.manage_groups = True
c.GenericOAuthenticator.auth_state_groups_key = auth_state_groups
c.GenericOAuthenticator.enable_auth_state = True
c.Authenticator.admin_users = {{"alice"}}
# Each user's identity is made as they log in, while they read the profile form.
from cloudidentity_spawner.hooks import prepare_at_login
c.Authenticator.post_auth_hook = prepare_at_login
c.JupyterHub.spawner_class = "cloudidentity"
c.KubeSpawner.namespace = "{NAMESPACE}"
c.KubeSpawner.image = "quay.io/jupyter/base-notebook:latest"
c.KubeSpawner.start_timeout = 120
c.KubeSpawner.http_timeout = 60
c.KubeSpawner.profile_list = {DEMO_PROFILES!r}
c.CloudIdentitySpawner.hub_name = "demo"
c.CloudIdentitySpawner.aws_client_kwargs = {{"endpoint_url": "{moto_url}", "region_name": "us-east-1"}}
c.CloudIdentitySpawner.aws_role_propagation_seconds = 0
c.CloudIdentitySpawner.aws_pod_identity_propagation_seconds = 0
c.CloudIdentitySpawner.identity_rules = {rules!r}
c.CloudIdentitySpawner.aws_eks_client_kwargs = {{"endpoint_url": "{eks_url or moto_url}", "region_name": "us-east-1"}}
{azure_factory}{gcp_factory}{store}"""


def _prepare_aws(moto_url: str) -> None:
    """What the operator has already: the boundary policy, the group's role, the bucket.
    Idempotent: moto keeps its state per process."""
    import boto3
    from botocore.exceptions import ClientError

    iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1")
    allow = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER_PATH}"},
        "Action": "sts:AssumeRoleWithWebIdentity"}]}
    pod_identity_trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": ["sts:AssumeRole", "sts:TagSession"]}]}
    steps = [
        lambda: iam.create_policy(PolicyName="jupyterhub-user-boundary", PolicyDocument=allow),
        lambda: iam.create_role(RoleName="escape-atlas", Path="/jupyterhub/", AssumeRolePolicyDocument=json.dumps(trust)),
        lambda: iam.create_role(RoleName="notebooks", Path="/jupyterhub/", AssumeRolePolicyDocument=json.dumps(pod_identity_trust)),
        lambda: iam.put_role_policy(RoleName="notebooks", PolicyName="scratch", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                                                     "Resource": ["arn:aws:s3:::demo-scratch", "arn:aws:s3:::demo-scratch/*"]}]})),
        lambda: boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket="demo-scratch"),
    ]
    for step in steps:
        try:
            step()
        except ClientError as e:
            if e.response["Error"]["Code"] not in ("EntityAlreadyExists", "BucketAlreadyOwnedByYou"):
                raise
    # A demo starts without hub-made roles: one an earlier demo in this process left (its users
    # logged in at another identity provider's address) is not this demo's users'.
    for role in iam.list_roles(PathPrefix="/jupyterhub/demo/")["Roles"]:
        for name in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
            iam.delete_role_policy(RoleName=role["RoleName"], PolicyName=name)
        iam.delete_role(RoleName=role["RoleName"])


@contextlib.contextmanager
def _running(server: Any):
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Demo:
    """Everything the demo runs; ``start()`` then ``stop()`` (or use it as a context manager)."""

    def __init__(self, port: int = 8000, extra_config: str = "", pod_identity: bool = False, azure: bool = False,
                 gcp: bool = False, ceph: bool = False):
        self.pod_identity = pod_identity
        self.azure = azure
        self.gcp = gcp
        self.ceph = ceph
        self.gateway: Any = None
        self.port = port
        self.extra_config = extra_config
        self.workdir = tempfile.mkdtemp(prefix="cloudidentity-demo-")
        self._stack = ExitStack()
        self.hub: subprocess.Popen | None = None

    def __enter__(self) -> Demo:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> Demo:
        from moto.server import ThreadedMotoServer
        from oidc_provider_mock import User, run_server_in_thread

        from .testing.kubernetes import KubernetesAPI, KubernetesAPIServer

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        self._stack.callback(moto.stop)
        host, moto_port = moto.get_host_and_port()
        self.moto_url = f"http://{host}:{moto_port}"
        _prepare_aws(self.moto_url)

        api = KubernetesAPI(namespaces=("default", NAMESPACE))
        self.eks_url, self.agent = "", None
        if self.pod_identity:
            from .testing.eks import EKSPodIdentity

            eks = self._stack.enter_context(_running(KubernetesAPIServer(EKSPodIdentity(clusters=(CLUSTER,)))))
            self.eks, self.eks_url = eks.api, eks.url
            self.agent = PodIdentityAgent(eks.api, self.moto_url)
            self.agent.url = self._stack.enter_context(_running(KubernetesAPIServer(self.agent))).url + "/v1/credentials"
        self.arm_url, self.entra = "", None
        if self.azure:
            from .testing.azure import AzureResourceManager, EntraTokenEndpoint

            self.arm = AzureResourceManager({AZURE_SUBSCRIPTION: ("jupyterhub-identities", "demo-data")})
            self.arm_url = self._stack.enter_context(_running(KubernetesAPIServer(self.arm))).url
            self.entra = EntraTokenEndpoint(self.arm, AZURE_ISSUER)
            self.entra.url = self._stack.enter_context(_running(KubernetesAPIServer(self.entra))).url
        self.gcs_url, self.metadata = "", None
        if self.gcp:
            from .testing.gcp import GoogleCloudServer, GoogleCloudState, GoogleTokenService

            self.google = GoogleCloudState(projects=(GCP_PROJECT,), buckets=(),
                                           project_numbers={GCP_PROJECT: GCP_PROJECT_NUMBER})
            self.google.add_bucket(GCP_BUCKET, project=GCP_PROJECT)
            google = GoogleCloudServer(self.google).start()
            self._stack.callback(google.stop)
            self.gcs_url, self.gcp_target = google.rest_url, google.grpc_target
            self.metadata = GkeMetadataServer(self.google, api, GCP_PROJECT)
            self.metadata.url = self._stack.enter_context(_running(KubernetesAPIServer(self.metadata))).url
            # Google's STS and IAM Credentials, which know the cluster's token keys (its issuer).
            self.google_tokens = GoogleTokenService(self.google, {GCP_CLUSTER: lambda: (api.issuer.issuer, api.issuer.jwks())})
            self.google_tokens.url = self._stack.enter_context(_running(KubernetesAPIServer(self.google_tokens))).url
        self.kubelet = LocalKubelet(api, self.moto_url, self.workdir, self.agent, self.entra, self.metadata)
        api.pod_runner = self.kubelet.run
        api.pod_stopper = self.kubelet.stop
        self.kube = KubernetesAPIServer(api).start()
        self._stack.callback(self.kube.stop)
        self.kubelet.projected_tokens = self.kube.api.projected_token
        self._stack.callback(self.kubelet.stop_all)
        if self.ceph:
            self._start_ceph()
        kubeconfig = self.kube.write_kubeconfig(os.path.join(self.workdir, "kubeconfig"), NAMESPACE)

        users = [User(sub=name, claims={"preferred_username": name, **claims}) for name, claims in DEMO_USERS.items()]
        oidc = self._stack.enter_context(run_server_in_thread(port=0, user_claims=users))
        self.oidc_url = f"http://localhost:{oidc.server_port}"

        config = Path(self.workdir) / "jupyterhub_config.py"
        self.config_file = str(config)
        operator_token = secrets.token_hex(16)
        config.write_text(hub_config(moto_url=self.moto_url, oidc_url=self.oidc_url, port=self.port, hub_port=_free_port(),
                                     eks_url=self.eks_url, arm_url=self.arm_url, operator_token=operator_token,
                                     gcp=(self.gcp_target, self.gcs_url) if self.gcp else None,
                                     ceph=self.store if self.ceph else None)
                          + self.extra_config)
        # What `status` and `gc` need from a terminal, as the hub has it.
        self.operator_env = str(Path(self.workdir) / "operator.env")
        Path(self.operator_env).write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in {
            "KUBECONFIG": kubeconfig, "JUPYTERHUB_API_URL": f"http://127.0.0.1:{self.port}/hub/api",
            "JUPYTERHUB_API_TOKEN": operator_token, "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
        }.items()))
        env = dict(os.environ)
        env.update(
            KUBECONFIG=kubeconfig,
            JUPYTERHUB_CRYPT_KEY=secrets.token_hex(32),
            OAUTHLIB_INSECURE_TRANSPORT="1",
            PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        )
        self.hub_log = open(Path(self.workdir) / "jupyterhub.log", "w")
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "--config", str(config)],
            cwd=self.workdir, env=env, stdout=self.hub_log, stderr=subprocess.STDOUT,
        )
        self._stack.callback(self._stop_hub)
        if not _wait_for_hub(f"http://127.0.0.1:{self.port}/hub/api", 90, self.hub):
            died = self.hub_died()
            log = died or "JupyterHub did not answer within 90 s; the end of its log:\n" + \
                Path(self.hub_log.name).read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(log)
        self.url = f"http://127.0.0.1:{self.port}/hub/"
        return self

    def _start_ceph(self) -> None:
        """A real Ceph RADOS Gateway, set up as the site's storage team would: the cluster's token
        issuer (the emulator's) registered as an OIDC provider, and the scratch bucket."""
        import boto3

        from .testing import ceph

        if not ceph.available():
            raise RuntimeError("--ceph needs Debian's Ceph daemons (radosgw, ceph-mon, ceph-osd, ceph-common): "
                               "run scripts/install-ceph.sh (as root, or with sudo)")
        self.gateway = ceph.CephGateway(Path(self.workdir) / "ceph").start()
        self._stack.callback(self.gateway.stop)
        admin = self.gateway.admin_kwargs()
        iam = boto3.client("iam", **admin)
        iam.create_open_id_connect_provider(Url=self.kube.url, ClientIDList=[CEPH_AUDIENCE], ThumbprintList=["0" * 40])
        boto3.client("s3", **admin).create_bucket(Bucket=CEPH_BUCKET)
        provider = "arn:aws:iam:::oidc-provider/" + self.kube.url.split("://", 1)[1]
        self.store = (self.gateway.url, provider, admin)

    def _stop_hub(self) -> None:
        if self.hub and self.hub.poll() is None:
            started = _descendants(self.hub.pid)  # its proxy and services (each in a session of its own)
            self.hub.send_signal(signal.SIGTERM)  # the hub stops them, then itself
            try:
                self.hub.wait(15)
            except subprocess.TimeoutExpired:
                self.hub.kill()
                self.hub.wait()
            _stop_all(started)  # whatever the hub did not stop: nothing is left running
        self.hub_log.close()

    def hub_died(self) -> str | None:
        """None while the hub runs; else its exit status and the last lines of its log."""
        if self.hub is None or self.hub.poll() is None:
            return None
        self.hub_log.flush()
        lines = Path(self.hub_log.name).read_text(errors="replace").splitlines()[-20:]
        return f"JupyterHub exited with status {self.hub.returncode}; the last lines of its log:\n" + "\n".join(lines)

    def stop(self) -> None:
        self._stack.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def mapping(self) -> list[str]:
        """Who gets what: the plan of every demo user, as ``plan`` prints it."""
        from .claims import Claims
        from .errors import IdentityError
        from .rules import IdentityRules

        rules = IdentityRules.from_config(
            demo_rules(self.pod_identity, self.azure, self.gcp, self.store[:2] if self.ceph else None), "demo")
        lines = []
        for name, claims in DEMO_USERS.items():
            try:
                plan = rules.resolve(Claims(name, tuple(claims["wlcg.groups"]), claims), NAMESPACE)
                how = " through a Pod Identity association" if plan.cloud.mode == "pod_identity" else ""
                if plan.cloud.provider == "azure":
                    what = f"managed identity {plan.cloud.resources['managed_identity']['name']}"
                elif plan.cloud.provider == "s3_sts":
                    prefix = plan.cloud.resources["role"]["inline_policy"]["Statement"][0]["Resource"].split(":::", 1)[1]
                    what = f"role {plan.cloud.identity} at the Ceph gateway (s3://{prefix})"
                elif plan.cloud.provider == "gcp":
                    what = f"its own principal, {plan.cloud.resources['bindings'][0]['role']} on gs://{GCP_BUCKET}/" + \
                           plan.cloud.resources["bindings"][0]["resource"].split("/managedFolders/", 1)[1]
                else:
                    what = f"role {plan.cloud.identity}"
                lines.append(f"  {name:6} {claims['name']:24} -> ServiceAccount {plan.service_account.name}, "
                             f"{what}{how} ({plan.rule}, {plan.scope} scope)")
            except IdentityError as e:
                lines.append(f"  {name:6} {claims['name']:24} -> no identity: {e.user_message}")
        return lines


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop_all(processes: list[Any], timeout: float = 5.0) -> None:
    """Terminate *processes* (psutil), then kill what is still there after *timeout* seconds."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)


def banner(demo: Demo) -> str:
    """What runs where, who to log in as, and how to look at it as the operator."""
    lines = [f"JupyterHub with CloudIdentitySpawner: {demo.url}",
             f"  Kubernetes API emulator: {demo.kube.url}   moto (AWS): {demo.moto_url}   OIDC: {demo.oidc_url}"]
    if demo.pod_identity:
        lines.append(f"  EKS Pod Identity API: {demo.eks_url}   Pod Identity agent: {demo.agent.url}")
    if demo.azure:
        lines.append(f"  Azure Resource Manager: {demo.arm_url}   Microsoft Entra token endpoint: {demo.entra.url}")
    if demo.gcp:
        lines.append(f"  Google Cloud (IAM, Cloud Storage): {demo.gcs_url}   GKE metadata server: {demo.metadata.url}   "
                     f"STS and IAM Credentials: {demo.google_tokens.url}")
    if demo.ceph:
        lines.append(f"  Ceph RADOS Gateway (S3, STS, IAM): {demo.gateway.url}   its logs: {demo.gateway.folder}")
    lines += ["Log in as any of these (pick the name on the identity provider's page):", *demo.mapping()]
    if demo.azure:
        lines.append("From a notebook: GET /user/<you>/api/cloudcreds/azure?resource=https://storage.azure.com"
                     "  # a token for your identity")
    elif demo.ceph:
        lines.append(f"In a notebook: import boto3; boto3.client('s3').list_objects_v2(Bucket='{CEPH_BUCKET}', "
                     "Prefix='users/<you>/')  # your prefix at the gateway (and nobody else's)")
    elif demo.gcp:
        lines.append("From a notebook: GET /user/<you>/api/cloudcreds/gcp  # a token for your principal; with it, "
                     f"{demo.gcs_url}/storage/v1/b/{GCP_BUCKET}/o?prefix=users/<you>/ lists your folder (and nobody else's)")
    else:
        lines.append("In a notebook: import boto3; boto3.client('sts').get_caller_identity()  # you, as your role")
    lines += [
        f"alice is the hub's admin: the admin page is {demo.url.removesuffix('hub/')}services/cloudidentity/",
        f"Logs: the hub's in {demo.hub_log.name}, each notebook server's in {demo.workdir}/<pod>.log",
        "As the operator, in another terminal:",
        f"  . {demo.operator_env}",
        f"  cloudidentity-spawner status --config {demo.config_file}",
        f"  cloudidentity-spawner gc --config {demo.config_file}        # a dry run; --apply deletes",
        f"  kubectl get serviceaccounts -n {NAMESPACE}                 # if you have kubectl",
        "Ctrl-C stops everything (and deletes the temporary folder).",
    ]
    return "\n".join(lines)


def main(port: int = 8000, pod_identity: bool = False, azure: bool = False, gcp: bool = False, ceph: bool = False) -> int:
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (e.g. as a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        demo = Demo(port, pod_identity=pod_identity, azure=azure, gcp=gcp, ceph=ceph).start()
    except RuntimeError as e:
        print(f"cloudidentity-spawner demo: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    print(banner(demo), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    died = None
    try:
        while not stop.is_set() and died is None:
            stop.wait(0.5)
            died = demo.hub_died()
    except KeyboardInterrupt:
        pass
    finally:
        if died:
            print(died, file=sys.stderr, flush=True)
        print("stopping...", flush=True)
        demo.stop()
    return 1 if died else 0
