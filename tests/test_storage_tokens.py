"""Storage bearer tokens (rules with ``tokens``) with a real OpenID provider: IdentityPython's
idpyoidc, with RFC 8693 token exchange and refresh tokens, and an exchange policy like ESCAPE
IAM's (allowed audiences; storage paths under the user's own). The spawner exchanges the login
token for the rule's audience and paths, writes it to the server's Secret, mounts it, renews it
while the server runs (renewing the login when its token expired), stops on a revoked login,
and deletes the Secret when the server stops. No refresh token reaches a pod, Secret or log."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time

import pytest

pytest.importorskip("idpyoidc", reason="the test extra is not installed")

from cloudidentity_spawner import CloudIdentitySpawner  # noqa: E402
from cloudidentity_spawner.errors import ConfigError, SpawnRefused  # noqa: E402
from cloudidentity_spawner.rules import IdentityRules  # noqa: E402
from cloudidentity_spawner.testing.idp import CLIENT_ID, CLIENT_SECRET, OpenIDProvider, claims_of  # noqa: E402
from cloudidentity_spawner.testing.kubernetes import KubernetesAPIServer  # noqa: E402

from .kubehelpers import SpawnUser, make_spawner, read, spawner_config  # noqa: E402

WLCG = "https://wlcg.cern.ch/jwt/v1/any"
LIFETIME = 4  # seconds: renewals within a test
TOKENS = {"audience": WLCG, "scope": "storage.read:/escape/users/{username} storage.modify:/escape/scratch/{username}"}


@contextlib.contextmanager
def running_provider():
    """The OpenID provider served on 127.0.0.1 (its ``url`` set), stopped afterwards."""
    op = OpenIDProvider(["alice", "bob", "carol", "dave"], audiences=[WLCG], token_lifetime=LIFETIME)
    server = KubernetesAPIServer(op).start()
    op.url = server.url
    try:
        yield op
    finally:
        server.stop()


@pytest.fixture(scope="module")
def provider():
    with running_provider() as op:
        yield op


def tokens_spawner(namespace: str, provider: OpenIDProvider, user: SpawnUser, tokens: dict = TOKENS):
    rules = [{"name": "escape", "match": {}, "tokens": tokens}]
    c = spawner_config(namespace, rules, hub_name="hub", storage_token_url=provider.url + "/token",
                       storage_token_client_id=CLIENT_ID, storage_token_client_secret=CLIENT_SECRET)
    return make_spawner(CloudIdentitySpawner, c, user)


def secret_files(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


async def wait_for(condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await condition()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError("not in time")


async def test_the_pod_gets_a_token_for_its_users_paths_renewed_while_it_runs(namespace, provider, caplog):
    caplog.set_level(logging.INFO)
    login = provider.login("alice")
    user = SpawnUser("alice", {"access_token": login["access_token"], "refresh_token": login["refresh_token"],
                               "oauth_user": {"sub": "alice"}})
    spawner = tokens_spawner(namespace, provider, user)
    await spawner.start()
    name = f"{spawner.pod_name}-storage-token"
    try:
        secret = await read("secret", namespace, name)
        files = secret_files(secret)
        claims = claims_of(files["token"])
        assert claims["aud"] == [WLCG]
        assert sorted(claims["scope"].split()) == ["storage.modify:/escape/scratch/alice", "storage.read:/escape/users/alice"]
        assert files["error"] == "" and secret["metadata"]["labels"]["cloudidentity-spawner/kind"] == "storage-token"

        # The notebook mounts the Secret as a folder (so the kubelet updates it in place), read-only.
        pod = await read("pod", namespace, spawner.pod_name)
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "storage-token"]
        assert volume["secret"]["secretName"] == name
        [mount] = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "storage-token"]
        assert mount["readOnly"] is True and "subPath" not in mount
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["BEARER_TOKEN_FILE"] == mount["mountPath"] + "/token"
        assert env["CLOUDIDENTITY_STORAGE_TOKEN_SECRET"] == name  # for the notebook's Dask pods

        # Renewed before it expires - after the login's own token expired, so the login was
        # renewed with its refresh token first (and saved).
        first = claims["jti"]

        async def renewed():
            now = secret_files(await read("secret", namespace, name))
            return now if claims_of(now["token"])["jti"] != first else None

        later = await wait_for(renewed, LIFETIME * 3)
        assert claims_of(later["token"])["exp"] > claims["exp"] and later["error"] == ""
        assert user.auth_state["access_token"] != login["access_token"]
        grants = [r["grant_type"] for r in provider.requests]
        assert "refresh_token" in grants and grants.count("urn:ietf:params:oauth:grant-type:token-exchange") >= 2

        # No refresh token in the pod, the Secret or the hub's log (the provider logs its own requests).
        hub_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("idpyoidc", "aiohttp")))
        everything = json.dumps(pod) + json.dumps(secret) + json.dumps(later) + hub_log
        assert login["refresh_token"] not in everything and user.auth_state["refresh_token"] not in everything

        # A revoked login stops the renewals, says so in the Secret, keeps the last token.
        provider.revoke_login(user.auth_state["refresh_token"])
        stuck = claims_of(later["token"])["jti"]

        async def told():
            now = secret_files(await read("secret", namespace, name))
            return now if now["error"] else None

        failed = await wait_for(told, LIFETIME * 4)
        assert "log in again" in failed["error"] and claims_of(failed["token"])["jti"] == stuck
        assert "will not be until a new login" in caplog.text
        await asyncio.sleep(0.1)
        assert keeper_task_done(spawner)
    finally:
        await spawner.stop()
    assert await read("secret", namespace, name) is None  # stopping the server deletes it


async def test_gc_deletes_a_storage_token_secret_whose_server_is_gone(namespace, provider):
    from kubernetes_asyncio import client, config

    from cloudidentity_spawner.token_keeper import secret_body

    from .kubehelpers import run_gc

    login = provider.login("dave")
    spawner = tokens_spawner(namespace, provider, SpawnUser("dave", {**login, "oauth_user": {"sub": "dave"}}))
    await spawner.start()
    try:
        ghost = secret_body("jupyter-ghost-storage-token", namespace, "ghost", "hub", "", "jupyter-ghost", "t", time.time() + 60)
        other_hub = secret_body("jupyter-other-storage-token", namespace, "other", "another-hub", "", "jupyter-other", "t",
                                time.time() + 60)
        api_client = await config.new_client_from_config(config_file=__import__("os").environ["KUBECONFIG"])
        async with api_client:
            for body in (ghost, other_hub):
                await client.CoreV1Api(api_client).create_namespaced_secret(namespace, body)
        c = spawner_config(namespace, [{"name": "escape", "match": {}, "tokens": TOKENS}], hub_name="hub")
        # Just written: its server may be starting (the Secret comes before the pod).
        _, waiting = await run_gc(c, namespace, {"dave": {**login, "oauth_user": {"sub": "dave"}}}, min_age=300)
        [young] = [a for a in waiting if a.kind == "delete-secret"]
        assert "may be starting" in young.skipped and not young.done
        _, actions = await run_gc(c, namespace, {"dave": {**login, "oauth_user": {"sub": "dave"}}})
        secrets = [(a.secret[1], a.done) for a in actions if a.kind == "delete-secret"]
        # Not the running server's, not another hub's.
        assert secrets == [("jupyter-ghost-storage-token", True)]
        assert await read("secret", namespace, "jupyter-ghost-storage-token") is None
        assert await read("secret", namespace, f"{spawner.pod_name}-storage-token") is not None
        assert await read("secret", namespace, "jupyter-other-storage-token") is not None
    finally:
        await spawner.stop()


def keeper_task_done(spawner) -> bool:
    from cloudidentity_spawner.token_keeper import keeper_for

    task = keeper_for(spawner).tasks.get((spawner.user.name, spawner.name))
    return task is None or task.done()


async def test_after_a_hub_restart_a_running_servers_token_is_renewed_from_its_saved_state(namespace, provider):
    login = provider.login("carol")
    auth_state = {**login, "oauth_user": {"sub": "carol"}}
    before = tokens_spawner(namespace, provider, SpawnUser("carol", auth_state))
    await before.start()
    name = f"{before.pod_name}-storage-token"
    state = before.get_state()
    assert state["storage_token"] == {"secret": name, "audience": WLCG,
                                      "scope": "storage.read:/escape/users/carol storage.modify:/escape/scratch/carol"}
    from cloudidentity_spawner.token_keeper import keeper_for

    keeper_for(before).tasks.pop(("carol", "")).cancel()  # the old hub process is gone, with its tasks
    first = claims_of(secret_files(await read("secret", namespace, name))["token"])["jti"]
    after = tokens_spawner(namespace, provider, SpawnUser("carol", auth_state))
    after.load_state(state)
    try:
        assert await after.poll() is None  # still running

        async def renewed():
            now = secret_files(await read("secret", namespace, name))
            return claims_of(now["token"])["jti"] != first

        await wait_for(renewed, LIFETIME * 3)
    finally:
        await after.stop()
    assert await read("secret", namespace, name) is None


async def test_a_rule_cannot_get_another_users_path_and_the_user_is_told(namespace, provider, caplog):
    """The rule's paths are the user's by construction (the name is one escaped segment); a rule
    naming someone else's path outright is refused by the provider's policy, and the spawn says so."""
    login = provider.login("bob")
    user = SpawnUser("bob", {**login, "oauth_user": {"sub": "bob"}})
    spawner = tokens_spawner(namespace, provider, user, {"audience": WLCG, "scope": "storage.read:/escape/users/alice"})
    with pytest.raises(SpawnRefused) as e:
        await spawner.start()
    assert "storage token" in str(e.value) and "alice" not in str(e.value)
    assert "invalid_scope" in caplog.text
    assert await read("secret", namespace, f"{spawner.pod_name}-storage-token") is None
    assert await read("pod", namespace, spawner.pod_name) is None


async def test_without_a_login_token_the_user_is_told_to_log_in_again(namespace, provider):
    spawner = tokens_spawner(namespace, provider, SpawnUser("carol", {"oauth_user": {"sub": "carol"}}))
    with pytest.raises(SpawnRefused, match="log in again"):
        await spawner.start()


def test_a_users_name_cannot_widen_a_path_and_pods_never_get_refresh_tokens():
    rules = IdentityRules.from_config([{"name": "r", "match": {}, "tokens": TOKENS}], "hub")
    from cloudidentity_spawner.claims import Claims

    for name in ("..", "*", "alice/../bob", "a b"):
        plan = rules.resolve(Claims(username=name, groups=()), "ns")
        read, modify = [s.partition(":")[2] for s in plan.tokens["scope"].split()]
        segment = read.removeprefix("/escape/users/")
        assert segment not in ("", ".", "..") and not set(segment) & set("/* ") and modify == f"/escape/scratch/{segment}"
    # A user named like a sibling folder would get it: the rules must keep users' folders apart.
    with pytest.raises(ConfigError, match="a user named 'scratch' would get /escape/scratch"):
        IdentityRules.from_config([{"name": "r", "match": {}, "tokens": {
            "audience": WLCG, "scope": "storage.read:/escape/{username} storage.modify:/escape/scratch/{username}"}}], "h")
    with pytest.raises(ConfigError, match="a user named 'atlas' would get /escape/users/atlas"):
        IdentityRules.from_config([{"name": "atlas", "match": {"groups": ["/atlas"]}, "scope": "group",
                                    "tokens": {"audience": WLCG, "scope": "storage.read:/escape/users/atlas"}},
                                   {"name": "r", "match": {}, "tokens": TOKENS}], "h")
    with pytest.raises(ConfigError, match="refresh token"):
        IdentityRules.from_config([{"name": "r", "match": {}, "tokens": {"audience": WLCG, "scope": "offline_access"}}], "h")
    with pytest.raises(ConfigError, match=r"\('r'\).tokens.audience"):
        IdentityRules.from_config([{"name": "r", "match": {}, "tokens": {"audience": "a b", "scope": "openid"}}], "h")


async def test_the_plain_hook_refuses_a_rule_with_tokens_it_cannot_keep_fresh(namespace, caplog):
    """Renewing a token and deleting its Secret need the spawner's start and stop: with a stock
    KubeSpawner and the hook, such a rule fails the spawn clearly instead of a token that expires."""
    from kubespawner import KubeSpawner

    from cloudidentity_spawner import pre_spawn_hook

    c = spawner_config(namespace, [])
    c.CloudIdentity.identity_rules = [{"name": "escape", "match": {}, "tokens": TOKENS}]
    spawner = make_spawner(KubeSpawner, c, SpawnUser("erin", {"access_token": "x", "oauth_user": {"sub": "erin"}}))
    with pytest.raises(SpawnRefused, match="storage token"):
        await pre_spawn_hook(spawner)
    assert "spawner_class = 'cloudidentity'" in caplog.text


async def test_a_login_renewed_elsewhere_meanwhile_is_used_not_taken_for_a_revoked_one(provider):
    """The authenticator (or a new login) may renew the login while a renewal runs: the hub's
    own refresh then fails on the old refresh token, and the newer login is used instead of
    telling the user to log in again - and the newer login is never overwritten."""
    from cloudidentity_spawner.token_keeper import Issuer, obtain

    old, new = provider.login("alice"), provider.login("alice")
    provider.revoke_login(old["refresh_token"])

    class Racing:
        name = "alice"
        saved: list = []

        def __init__(self):
            self.reads = 0

        async def get_auth_state(self):
            self.reads += 1  # the renewal read the old login; by its refresh, the new one is stored
            return {"access_token": "expired-login-token", "refresh_token": old["refresh_token"]} if self.reads == 1 else dict(new)

        async def save_auth_state(self, state):
            self.saved.append(state)

    user = Racing()
    token, expires = await obtain(Issuer(provider.url + "/token", CLIENT_ID, CLIENT_SECRET), user,
                                  {"audience": WLCG, "scope": "storage.read:/escape/users/alice"})
    assert claims_of(token)["scope"] == "storage.read:/escape/users/alice" and expires > time.time()
    assert user.saved == []


async def test_a_server_that_stops_by_itself_loses_its_token_and_a_gone_secret_is_not_brought_back(namespace, provider):
    from kubernetes_asyncio import client, config

    login = provider.login("bob")
    spawner = tokens_spawner(namespace, provider, SpawnUser("bob", {**login, "oauth_user": {"sub": "bob"}}))
    await spawner.start()
    name = f"{spawner.pod_name}-storage-token"
    api_client = await config.new_client_from_config(config_file=__import__("os").environ["KUBECONFIG"])
    async with api_client:
        api = client.CoreV1Api(api_client)
        # gc (or an admin) deletes the Secret: the renewals end instead of making it again.
        await api.delete_namespaced_secret(name, namespace)
        await wait_for(lambda: _true(keeper_task_done(spawner)), LIFETIME * 3)
        assert await read("secret", namespace, name) is None
        # The pod is deleted behind the hub (evicted): the next poll ends the server's token.
        spawner._storage_token = {"secret": name, "audience": WLCG, "scope": "storage.read:/escape/users/bob"}
        await api.create_namespaced_secret(namespace, {"metadata": {"name": name, "labels": {"x": "y"}}})
        await api.delete_namespaced_pod(spawner.pod_name, namespace, grace_period_seconds=0)

        async def stopped():
            return await spawner.poll() is not None

        await wait_for(stopped, 30)
    assert await read("secret", namespace, name) is None and spawner._storage_token is None


async def _true(value):
    return value


async def test_a_leftover_pod_of_the_same_name_does_not_take_the_new_servers_token(namespace, provider):
    """KubeSpawner stops a leftover pod of the same name before it creates the new one: that
    stop must not delete the Secret the new pod mounts."""
    from kubernetes_asyncio import client, config

    login = provider.login("carol")
    spawner = tokens_spawner(namespace, provider, SpawnUser("carol", {**login, "oauth_user": {"sub": "carol"}}))
    api_client = await config.new_client_from_config(config_file=__import__("os").environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).create_namespaced_pod(namespace, {
            "metadata": {"name": spawner.pod_name}, "spec": {"containers": [{"name": "old", "image": "busybox"}]}})
    await spawner.start()
    try:
        assert await read("secret", namespace, f"{spawner.pod_name}-storage-token") is not None
        pod = await read("pod", namespace, spawner.pod_name)
        assert any(v["name"] == "storage-token" for v in pod["spec"]["volumes"])
    finally:
        await spawner.stop()


async def test_a_secret_of_that_name_that_is_not_this_servers_is_never_overwritten(namespace, provider):
    from kubernetes_asyncio import client, config

    login = provider.login("dave")
    spawner = tokens_spawner(namespace, provider, SpawnUser("dave", {**login, "oauth_user": {"sub": "dave"}}))
    name = f"{spawner.pod_name}-storage-token"
    api_client = await config.new_client_from_config(config_file=__import__("os").environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
            "metadata": {"name": name}, "data": {"password": base64.b64encode(b"the operator's").decode()}})
    with pytest.raises(SpawnRefused, match="could not be stored"):
        await spawner.start()
    assert secret_files(await read("secret", namespace, name)) == {"password": "the operator's"}


class ScriptedIssuer:
    """The token endpoint answering as scripted (what a misbehaving or overloaded issuer says)."""

    token_url = "https://issuer.example.org/token"

    def __init__(self, exchange, refresh=(400, {"error": "invalid_grant"})):
        self._exchange, self._refresh = exchange, refresh

    async def exchange(self, subject, audience, scope):
        return self._exchange

    async def refresh(self, refresh_token):
        return self._refresh


class StoredLogin:
    name = "alice"

    def __init__(self):
        self.state = {"access_token": "login-access", "refresh_token": "login-refresh"}

    async def get_auth_state(self):
        return self.state

    async def save_auth_state(self, state):
        self.state = state


ASKED = {"audience": WLCG, "scope": "storage.read:/escape/users/alice"}


@pytest.mark.parametrize("answer", [
    {"access_token": "eyJ.wider.token", "expires_in": 600, "scope": "storage.read:/escape/users/alice storage.read:/"},
    {"access_token": "login-access", "expires_in": 600},
    {"access_token": "eyJ.id.token", "expires_in": 600, "issued_token_type": "urn:ietf:params:oauth:token-type:id_token"},
    {"access_token": "eyJ.forever", "expires_in": 1e12},
])
async def test_what_the_issuer_answers_beyond_the_rule_never_reaches_a_pod(answer):
    from cloudidentity_spawner.errors import IdentityError
    from cloudidentity_spawner.token_keeper import obtain

    with pytest.raises(IdentityError) as e:
        await obtain(ScriptedIssuer((200, answer)), StoredLogin(), ASKED)
    assert "could not be made" in e.value.user_message


async def test_an_issuer_in_trouble_is_tried_again_a_refused_login_is_final():
    from cloudidentity_spawner.errors import IdentityError
    from cloudidentity_spawner.token_keeper import LoginExpired, obtain

    expired = (400, {"error": "invalid_grant", "error_description": "token expired"})
    for refresh in ((503, {}), (429, {"error": "slow_down"}), (500, {"error": "invalid_grant"})):
        with pytest.raises(IdentityError) as e:
            await obtain(ScriptedIssuer(expired, refresh), StoredLogin(), ASKED)
        assert not isinstance(e.value, LoginExpired), refresh
    with pytest.raises(LoginExpired):
        await obtain(ScriptedIssuer(expired, (400, {"error": "invalid_grant"})), StoredLogin(), ASKED)


async def test_status_names_storage_token_secrets_whose_server_is_gone(namespace, tmp_path):
    from kubernetes_asyncio import client, config

    from cloudidentity_spawner.token_keeper import secret_body

    from .test_operations import command, hub_database

    db = tmp_path / "jupyterhub.sqlite"
    hub_database(db, {"ghost": ["/escape"]})
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(f"c.JupyterHub.db_url = {f'sqlite:///{db}'!r}\n"
                   "c.JupyterHub.spawner_class = 'cloudidentity'\n"
                   f"c.KubeSpawner.namespace = {namespace!r}\n"
                   "c.CloudIdentitySpawner.hub_name = 'hub'\n"
                   f"c.CloudIdentitySpawner.identity_rules = {[{'name': 'escape', 'match': {}, 'tokens': TOKENS}]!r}\n")
    api_client = await config.new_client_from_config(config_file=__import__("os").environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).create_namespaced_secret(namespace, secret_body(
            "jupyter-ghost-storage-token", namespace, "ghost", "hub", "", "jupyter-ghost", "t", time.time() + 60))
    report = command("status", "--config", str(cfg), "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["storage_token_secrets_without_server"] == [f"{namespace}/jupyter-ghost-storage-token"]
    human = command("status", "--config", str(cfg))
    assert "1 storage-token Secrets whose server is gone (gc deletes them)" in human.stdout


class RucioServer:
    """What the test needs of a Rucio server: ``GET /accounts/whoami`` answers with the account
    the client names, and every request's token and account are recorded."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []
        self.url = ""

    def app(self):
        from aiohttp import web

        async def whoami(request):
            self.seen.append((request.headers.get("X-Rucio-Auth-Token", ""), request.headers.get("X-Rucio-Account", "")))
            body = json.dumps({"account": request.headers.get("X-Rucio-Account", ""), "status": "ACTIVE"})
            return web.Response(body=body.encode(), headers={"Content-Type": "application/json"})  # exactly, as Rucio's

        app = web.Application()
        app.router.add_get("/accounts/whoami", whoami)
        return app


async def test_the_real_rucio_client_uses_the_servers_rucio_cfg_and_token(namespace, provider, tmp_path):
    """With a rucio block, the Secret also holds a rucio.cfg (auth_type oidc, the user's account)
    and the pod gets RUCIO_CONFIG: the Rucio client finds the token itself (WLCG token discovery)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("rucio.client", reason="the test extra is not installed")
    rucio = RucioServer()
    server = KubernetesAPIServer(rucio).start()
    rucio.url = server.url
    try:
        login = provider.login("bob")
        tokens = {**TOKENS, "rucio": {"host": rucio.url, "account": "{username}", "allow_http": True}}
        spawner = tokens_spawner(namespace, provider, SpawnUser("bob", {**login, "oauth_user": {"sub": "bob"}}), tokens)
        await spawner.start()
        try:
            files = secret_files(await read("secret", namespace, f"{spawner.pod_name}-storage-token"))
            pod = await read("pod", namespace, spawner.pod_name)
        finally:
            await spawner.stop()
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["RUCIO_CONFIG"] == "/var/run/secrets/cloudidentity/storage/rucio.cfg"
        assert "account = bob\n" in files["rucio.cfg"] and "auth_type = oidc\n" in files["rucio.cfg"]
        # The mounted folder, as the kubelet writes it, and the pod's variables pointing into it.
        for key, value in files.items():
            (tmp_path / key).write_text(value)
        run = {k: v for k, v in os.environ.items() if not k.startswith(("RUCIO_", "BEARER_", "X509_"))}
        run.update(RUCIO_CONFIG=str(tmp_path / "rucio.cfg"), BEARER_TOKEN_FILE=str(tmp_path / "token"), HOME=str(tmp_path))
        who = subprocess.run([sys.executable, "-c", "from rucio.client import Client; print(Client().whoami()['account'])"],
                             capture_output=True, text=True, env=run, timeout=120)
        assert who.returncode == 0, who.stderr[-2000:]
        assert who.stdout.strip() == "bob" and rucio.seen == [(files["token"], "bob")]
    finally:
        server.stop()
    for rucio_block, key in (({"host": "https://x\n[evil]"}, "host"), ({"host": "http://rucio.example.org"}, "host"),
                             ({"host": "https://rucio.example.org", "account": "Ops"}, "account")):
        with pytest.raises(ConfigError, match=rf"tokens.rucio.{key}"):  # injected, in the clear, never an account
            IdentityRules.from_config([{"name": "r", "match": {}, "tokens": {**TOKENS, "rucio": rucio_block}}], "h")


async def test_each_spawn_asks_the_issuer_its_own_settings_name(namespace, provider):
    """The keeper outlives the spawner it was first made for: a later spawn with other settings
    (another issuer URL after a config change, another test's provider) uses its own."""
    from cloudidentity_spawner.token_keeper import keeper_for

    login = provider.login("dave")
    first = tokens_spawner(namespace, provider, SpawnUser("dave", {**login, "oauth_user": {"sub": "dave"}}))
    first.storage_token_url = "http://127.0.0.1:9/token"  # nothing listens there
    keeper_for(first)  # made for this one
    with pytest.raises(SpawnRefused, match="did not answer"):
        await first.start()
    second = tokens_spawner(namespace, provider, SpawnUser("dave", {**login, "oauth_user": {"sub": "dave"}}))
    await second.start()
    await second.stop()
