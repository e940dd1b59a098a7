"""The local stack the scale and surge benchmarks run against: the Kubernetes API emulator,
the local EKS Pod Identity API and the local Google Cloud server, all on 127.0.0.1, and
spawners wired to them as a hub would be."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudidentity_spawner.testing.eks import EKSPodIdentity  # noqa: E402
from cloudidentity_spawner.testing.gcp import GoogleCloudServer, GoogleCloudState  # noqa: E402
from cloudidentity_spawner.testing.kubernetes import KubernetesAPI, KubernetesAPIServer  # noqa: E402

NAMESPACE = "bench"
CLUSTER = "escape-eks"
BUCKET = "lab-scratch"
MODES = ("pod_identity", "principal")


def rules(mode: str) -> list[dict[str, Any]]:
    """One user-scope rule per mode: identities without a cloud principal per user."""
    from cloudidentity_spawner.providers.aws import scratch_prefix_policy

    if mode == "pod_identity":
        block = {"aws": {"pod_identity": {"cluster": CLUSTER, "role_arn": "arn:aws:iam::123456789012:role/jupyterhub/notebooks",
                                          "session_policy": scratch_prefix_policy("escape-scratch")}}}
    else:
        block = {"gcp": {"principal": {"project": "my-project", "project_number": "123456789012",
                                       "bucket_roles": [{"bucket": BUCKET, "role": "roles/storage.objectUser",
                                                         "prefix": "{username}"}]}}}
    return [{"name": "everyone", "match": {}, "scope": "user", **block}]


class LocalStack:
    """Start everything; ``spawner(name)`` makes a CloudIdentitySpawner for user *name*."""

    def __init__(self, mode: str, kubelet_delay: float = 0.0, cloud_delay: float = 0.0, cache_seconds: float = 3600.0):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
        os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        self.mode = mode
        self.kube = KubernetesAPI(kubelet_delay=kubelet_delay, namespaces=(NAMESPACE,))
        self.kube_server = KubernetesAPIServer(self.kube).start()
        path = os.path.join(tempfile.mkdtemp(prefix="cloudidentity-bench-"), "kubeconfig")
        self.kube_server.write_kubeconfig(path)
        os.environ["KUBECONFIG"] = path
        from kubernetes_asyncio.config import kube_config

        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path
        self.eks = EKSPodIdentity(clusters=(CLUSTER,), association_limit=100_000)
        self.eks.delay = cloud_delay
        self.eks_server = KubernetesAPIServer(self.eks).start()
        self.gcp = GoogleCloudState(projects=("my-project",), buckets=(BUCKET,), project_numbers={"my-project": "123456789012"})
        self.gcp_server = GoogleCloudServer(self.gcp).start()
        self.cache_seconds = cache_seconds

    def config(self):
        from traitlets.config import Config

        c = Config()
        c.KubeSpawner.namespace = NAMESPACE
        c.KubeSpawner.image = "quay.io/jupyter/base-notebook:latest"
        c.KubeSpawner.start_timeout = 600
        c.CloudIdentitySpawner.identity_rules = rules(self.mode)
        c.CloudIdentitySpawner.hub_name = "bench"
        c.CloudIdentitySpawner.cloud_cache_seconds = self.cache_seconds
        c.CloudIdentitySpawner.aws_eks_client_kwargs = {"endpoint_url": self.eks_server.url, "region_name": "eu-west-1"}
        c.CloudIdentitySpawner.gcp_client_factory = self.gcp_server.client_factory()
        c.CloudIdentitySpawner.gcp_activation_seconds = 0  # the hub's own cost: no propagation waits
        c.CloudIdentitySpawner.aws_pod_identity_propagation_seconds = 0
        c.CloudIdentitySpawner.gcp_annotation_settle_seconds = 0
        return c

    def spawner(self, name: str, config=None, plain: bool = False):
        """A CloudIdentitySpawner for user *name* (with *plain*: KubeSpawner itself, the baseline)."""
        from jupyterhub.objects import Hub
        from kubespawner import KubeSpawner

        from cloudidentity_spawner import CloudIdentitySpawner

        class User:
            def __init__(self, name):
                self.name, self.id, self.url, self.server = name, abs(hash(name)) % 10**9, f"/user/{name}/", None
                self.progress_url, self.groups = "", []

            async def get_auth_state(self):
                return {"oauth_user": {"sub": self.name}}

        class OrmSpawner:
            name, display_name, server, last_activity = "", "", None, None

        cls = KubeSpawner if plain else CloudIdentitySpawner
        return cls(config=config or self.config(), user=User(name), hub=Hub(), orm_spawner=OrmSpawner(),
                   api_token="t", oauth_client_id=f"jupyterhub-user-{name}", _mock=True)

    def preload(self, count: int) -> None:
        """*count* users who spawned before: their ServiceAccounts and their cloud side, as the
        hub left them (written straight into the local servers' state, not through the hub)."""
        from cloudidentity_spawner.claims import claims_from_auth_state
        from cloudidentity_spawner.kube import service_account_change
        from cloudidentity_spawner.plan import thaw
        from cloudidentity_spawner.rules import IdentityRules

        compiled = IdentityRules.from_config(rules(self.mode), "bench")
        for i in range(count):
            name = f"user-{i}"
            plan = compiled.resolve(claims_from_auth_state(name, {"oauth_user": {"sub": name}}), NAMESPACE)
            self.kube.put("serviceaccounts", NAMESPACE, service_account_change(None, plan).body)
            if self.mode == "pod_identity":
                a = thaw(plan.cloud.resources["association"])
                params = {"clusterName": a["clusterName"], "namespace": a["namespace"], "serviceAccount": a["serviceAccount"],
                          "roleArn": a["roleArn"], "tags": a["tags"], "disableSessionTags": a["disableSessionTags"]}
                if a["policy"]:
                    params["policy"] = a["policy"]
                with self.eks._lock:
                    self.eks._CreatePodIdentityAssociation(params)
            else:
                for b in plan.cloud.resources["bindings"]:
                    folder = b["resource"].split("/managedFolders/", 1)[1]
                    self.gcp.managed_folders[(BUCKET, folder)] = {"created": "2026-01-01T00:00:00Z"}
                    self.gcp.policies.set(b["resource"], {"version": 1, "etag": self.gcp.policies.get(b["resource"])["etag"],
                                                          "bindings": [{"role": b["role"], "members": [b["member"]]}]})

    def cloud_calls(self) -> int:
        return sum(self.eks.calls.values()) if self.mode == "pod_identity" else len(self.gcp.calls)

    def kube_requests(self, since: int) -> int:
        """Kubernetes requests since *since*, without the watch cache's own list and watch and the
        background Event on a created or changed account (it never delays a spawn)."""
        return sum(1 for method, path, query in self.kube.requests[since:]
                   if "watch=" not in query.lower() and not path.endswith("/events")
                   and not (method == "GET" and path.endswith("/serviceaccounts")))

    def stop(self) -> None:
        self.gcp_server.stop()
        self.eks_server.stop()
        self.kube_server.stop()
