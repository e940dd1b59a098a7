"""Helpers for the Kubernetes scenario tests: a JupyterHub-like user, spawner
construction, and reads of what the cluster now holds."""

from __future__ import annotations

import os
from typing import Any

from jupyterhub.objects import Hub
from kubernetes_asyncio import client, config
from traitlets.config import Config


class FakeGroup:
    def __init__(self, name: str):
        self.name = name


class SpawnUser:
    """The part of jupyterhub.user.User a spawner uses."""

    def __init__(self, name: str, auth_state: Any = None, groups=(), admin: bool = False, roles=()):
        self.name = name
        self.admin = admin
        self.roles = [FakeGroup(r) for r in roles]  # JupyterHub's roles are objects with a name too
        self.id = abs(hash(name)) % 100000
        self.url = f"/user/{name}/"
        self.server = None
        self.progress_url = f"/hub/api/users/{name}/server/progress"
        self.auth_state = auth_state
        self.groups = [FakeGroup(g) for g in groups]

    async def get_auth_state(self):
        return self.auth_state

    async def save_auth_state(self, auth_state):
        self.auth_state = auth_state


def spawner_config(namespace: str, rules: list[dict], **extra: Any) -> Config:
    c = Config()
    c.KubeSpawner.namespace = namespace
    c.KubeSpawner.start_timeout = 30
    c.KubeSpawner.http_timeout = 30
    c.KubeSpawner.image = "quay.io/jupyter/base-notebook:latest"
    c.CloudIdentitySpawner.identity_rules = rules
    c.CloudIdentitySpawner.identity_api_backoff = 0.01
    # Waits for cloud propagation are tested where they are the subject (test_gcp).
    c.CloudIdentitySpawner.gcp_annotation_settle_seconds = 0
    c.CloudIdentitySpawner.aws_pod_identity_propagation_seconds = 0
    for key, value in extra.items():
        section, _, trait = key.rpartition("__")
        c[section or "CloudIdentitySpawner"][trait] = value
    return c


class OrmSpawner:
    """The database row JupyterHub gives a spawner (name and server)."""

    def __init__(self, name: str):
        self.name = name
        self.display_name = name
        self.server = None
        self.last_activity = None


def make_spawner(cls, c: Config, user: SpawnUser, server_name: str = ""):
    return cls(
        config=c,
        user=user,
        hub=Hub(),
        orm_spawner=OrmSpawner(server_name),
        api_token="test-token",
        oauth_client_id=f"jupyterhub-user-{user.name}",
        _mock=True,
    )


async def read(kind: str, namespace: str, name: str) -> dict | None:
    """An object as the cluster has it now (plain JSON), or None."""
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        api = client.CoreV1Api(api_client)
        reader = {"serviceaccount": api.read_namespaced_service_account, "pod": api.read_namespaced_pod,
                  "secret": api.read_namespaced_secret}[kind]
        try:
            obj = await reader(name, namespace)
        except client.exceptions.ApiException as e:
            if e.status == 404:
                return None
            raise
        return api_client.sanitize_for_serialization(obj)


async def create_service_account(namespace: str, body: dict) -> None:
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).create_namespaced_service_account(namespace, body)


def oidc_state(**claims) -> dict:
    return {"access_token": "token", "oauth_user": {"sub": claims.pop("sub", "s"), **claims}}


async def list_events(namespace: str) -> list[dict]:
    """The namespace's Events as the cluster has them now (plain JSON)."""
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        events = await client.CoreV1Api(api_client).list_namespaced_event(namespace)
        return api_client.sanitize_for_serialization(events)["items"]


class HubWith:
    """The hub's users as ``status``/``gc`` read them (name -> stored login), without a hub."""

    def __init__(self, users: dict[str, Any]):
        self.known = users

    async def names(self) -> set[str]:
        return set(self.known)

    async def users(self, names: list[str]) -> dict[str, Any]:
        from cloudidentity_spawner.hubusers import HubUser

        return {n: HubUser(n, (), self.known[n], True) if n in self.known else None for n in names}


async def run_gc(c: Config, namespace: str, users: dict[str, Any], apply: bool = True, min_age: float = 0.0,
                 role_paths: tuple[str, ...] = (), principal_grants: bool = False):
    """``gc`` as the command runs it (survey, the clouds' hub-made identities, cleanup), in process."""
    from cloudidentity_spawner import cleanup
    from cloudidentity_spawner.config import identity_settings
    from cloudidentity_spawner.inventory import survey
    from cloudidentity_spawner.kube import ServiceAccounts

    settings = identity_settings(c)
    hub = HubWith(users)
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        accounts = ServiceAccounts(client.CoreV1Api(api_client))
        found = await survey(settings, c, accounts, hub, namespace)
        actions = await cleanup.plan_cleanup(settings, found, accounts, min_age, role_paths, principal_grants, namespace)
        if apply:
            await cleanup.apply(actions, settings, accounts, hub, namespace)
    return found, actions


async def hub_accounts(namespace: str, hub: str) -> list[dict]:
    """The ServiceAccounts *hub* made in *namespace* (plain JSON), by its hub label."""
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        found = await client.CoreV1Api(api_client).list_namespaced_service_account(
            namespace, label_selector=f"cloudidentity-spawner/hub={hub}")
        return [api_client.sanitize_for_serialization(a) for a in found.items]


async def delete_service_account(namespace: str, name: str) -> None:
    """What ``kubectl delete serviceaccount`` does."""
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).delete_namespaced_service_account(name, namespace)


class another_namespace:
    """``async with another_namespace(name)``: a second namespace for a test (user namespaces),
    deleted afterwards with KubeSpawner's watches on it."""

    def __init__(self, name: str):
        self.name = name

    async def __aenter__(self) -> str:
        api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
        async with api_client:
            await client.CoreV1Api(api_client).create_namespace({"metadata": {"name": self.name}})
        return self.name

    async def __aexit__(self, *exc: Any) -> None:
        from kubespawner import KubeSpawner

        for key in [k for k in KubeSpawner.reflectors if k[1] == self.name]:
            await KubeSpawner.reflectors.pop(key).stop()
        api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
        async with api_client:
            await client.CoreV1Api(api_client).delete_namespace(self.name)


class user_namespaces:
    """``async with user_namespaces(*names)``: namespaces user-namespace spawns make (KubeSpawner
    creates them), deleted afterwards with the hub's cluster-wide watches."""

    def __init__(self, *names: str):
        self.names = names

    async def __aenter__(self) -> tuple[str, ...]:
        return self.names

    async def __aexit__(self, *exc: Any) -> None:
        from kubespawner import KubeSpawner

        for key in [k for k in KubeSpawner.reflectors if k[1] is None or k[1] in self.names]:
            await KubeSpawner.reflectors.pop(key).stop()
        api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
        async with api_client:
            api = client.CoreV1Api(api_client)
            for name in self.names:
                try:
                    await api.delete_namespace(name)
                except client.exceptions.ApiException as e:
                    if e.status != 404:
                        raise


def with_saved_servers(spawner: Any, **namespaces: str | None) -> Any:
    """Give the spawner's user JupyterHub's record of their servers: name -> the namespace its
    saved state holds (None: never started); ``default`` is the default server ``""``."""
    from types import SimpleNamespace

    servers = {("" if name == "default" else name): SimpleNamespace(state={"namespace": ns} if ns else {})
               for name, ns in namespaces.items()}
    spawner.user.orm_user = SimpleNamespace(orm_spawners=servers)
    return spawner
