"""A site's own provider, registered through the entry-point group ``cloudidentity_spawner.providers``,
works like a built-in one: its rule block is validated at start-up, planned, described to the
user and pinned into the pod; with a backend, the hub makes its identities at spawn, revokes
them when the plan moves on or the user goes, ``status`` and ``gc`` see them; its credentials
route is served in the notebook behind the same checks as the built-in ones - all without
changing this package."""

from __future__ import annotations


import pytest

from cloudidentity_spawner import CloudIdentitySpawner, ConfigError
from cloudidentity_spawner import providers
from cloudidentity_spawner.claims import Claims
from cloudidentity_spawner.provisioner import identity_sentence
from cloudidentity_spawner.rules import IdentityRules

from .kubehelpers import SpawnUser, make_spawner, oidc_state, read, spawner_config

SITE_PROVIDER = '''
import datetime

from cloudidentity_spawner.errors import ConfigError
from cloudidentity_spawner.plan import CloudPlan
from cloudidentity_spawner.providers.base import Provider
from cloudidentity_spawner.templates import render
from cloudidentity_spawner import names


class Settings:
    def __init__(self, bucket, managed=False):
        self.bucket, self.managed = bucket, managed

    mode = property(lambda self: "managed" if self.managed else "existing")
    hub_made = property(lambda self: self.managed)


STORE = {}  # the tape library's accounts: name -> {"hub", "owner", "trusts"}
LONG_AGO = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)


class Library:
    """The site's API for tape accounts, as a backend: makes, lists and deletes them."""

    def __init__(self, hub):
        self.hub = hub

    async def ensure(self, plan, recheck=False):
        if plan.user == "breaker":
            raise RuntimeError("the tape library is offline")
        sa = plan.service_account
        entry = STORE.setdefault(plan.cloud.identity, {"hub": self.hub, "owner": plan.owner, "trusts": set()})
        if (entry["hub"], entry["owner"]) != (self.hub, plan.owner):
            raise RuntimeError("another's tape account")
        if (sa.namespace, sa.name) in entry["trusts"]:
            return "unchanged"
        entry["trusts"].add((sa.namespace, sa.name))
        return "created" if len(entry["trusts"]) == 1 else "updated"

    async def delete(self, name, owner, hub):
        entry = STORE.get(name)
        if entry is None or entry["hub"] != hub or owner not in (None, entry["owner"]):
            return False
        del STORE[name]
        return True

    async def present(self, name):
        return name in STORE

    async def hub_made(self, place, hub):
        # A buggy listing also names another backend's identity: gc must not take it for its own.
        return [{"identity": f"tape:{n}", "created": LONG_AGO} for n, e in STORE.items()
                if e["hub"] == hub and n.startswith(place)] + [{"identity": "aws:" + FOREIGN_ROLE, "created": LONG_AGO}]


FOREIGN_ROLE = "arn:aws:iam::123456789012:role/jupyterhub/h1/h1-alice"
FAIL_SEARCH = []


class TapeStore(Provider):
    backends = ("tape",)

    def parse(self, block, where, forbidden, trusted_claims):
        if not isinstance(block, dict) or not set(block) <= {"bucket", "managed"} or "bucket" not in block:
            raise ConfigError(f"{where}: expected {{'bucket': <template>, 'managed': bool}}")
        return Settings(block["bucket"], bool(block.get("managed")))

    def plan(self, settings, context, scope, owner, namespace, service_account):
        bucket = render(settings.bucket, context, names.resource_part)
        return {"tape.example.org/bucket": bucket}, CloudPlan(provider=self.key, mode=settings.mode, identity=bucket)

    def make_backend(self, settings, kind):
        return Library(settings.hub_name)

    async def revoke(self, backend, kind, name, owner, hub, annotations, account):
        return await backend.delete(name, owner, hub)

    def managed_places(self, settings):
        return ["archive"] if settings.managed else []

    def search_places(self, settings):
        return [("tape", "archive")] if settings.managed else []

    def place_of(self, kind, name):
        return ("tape", "archive") if name.startswith("archive") else None

    async def orphaned_grants(self, blocks, backend, made_here, deleting, namespaces):
        from cloudidentity_spawner.providers.base import Grant

        if FAIL_SEARCH:
            raise RuntimeError("the tape library's grant list is offline")
        # A buggy search names a grant of another backend (a live user's Google binding).
        member = "serviceAccount:jh-alice@my-project.iam.gserviceaccount.com"
        return [(Grant("gcp", "projects/my-project", "roles/viewer", "", member), None, "gone")], []

    def credentials_routes(self):
        from tornado.web import RequestHandler

        class TapeTicket(RequestHandler):  # checks nothing itself
            def get(self):
                self.finish({"ticket": "tape-ticket-for-this-server"})

            def post(self):
                self.finish({"ticket": "posted"})

        class Early(TapeTicket):  # tries to answer before the server's checks, or to be its own judge
            auth_resource = "contents"

            def prepare(self):
                self.finish({"ticket": "answered in prepare"})

            @property
            def current_user(self):
                return "anyone"

        def broken():
            pass

        return [("tape", TapeTicket), ("aws", TapeTicket), ("../x", TapeTicket), ("tape2", broken), ("early", Early)]

    def named_templates(self, settings, where, rule, scope):
        return []

    def describe(self, cloud, plan):
        return f"the tape bucket {cloud.identity}"

    def pin(self, pod, plan, webhook_parts):
        for container in pod.spec.containers:
            container.env = [e for e in container.env or [] if e.name != "TAPE_BUCKET"]
            from kubernetes_asyncio.client.models import V1EnvVar
            container.env.append(V1EnvVar(name="TAPE_BUCKET", value=plan.cloud.identity))
'''


def install_site_package(tmp_path, monkeypatch, module: str, source: str, entry: str) -> None:
    """A site's package *module* (its *source*) installed with one provider entry point
    (``<key> = <module>:<object>``), and the registry to be loaded afresh."""
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[cloudidentity_spawner.providers]\n{entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(providers, "_registered", None)


@pytest.fixture
def site_provider(tmp_path, monkeypatch):
    """An installed package of the site's that registers provider ``tape``."""
    install_site_package(tmp_path, monkeypatch, "tape_site", SITE_PROVIDER, "tape = tape_site:TapeStore")
    yield
    providers._registered = None


RULES = [{"name": "archive", "match": {"groups": ["/escape"]}, "tape": {"bucket": "archive-{username}"}}]


def test_a_site_provider_is_validated_planned_and_described(site_provider):
    rules = IdentityRules.from_config(RULES, "h")
    plan = rules.resolve(Claims(username="alice", groups=("/escape",)), "ns")
    assert (plan.cloud.provider, plan.cloud.identity) == ("tape", "archive-alice")
    assert plan.service_account.annotations["tape.example.org/bucket"] == "archive-alice"
    assert "the tape bucket archive-alice" in identity_sentence(plan)
    with pytest.raises(ConfigError) as e:
        IdentityRules.from_config([{"name": "bad", "match": {}, "tape": {"bucket": "x", "extra": 1}}], "h")
    assert "identity_rules[0] ('bad').tape" in str(e.value)


async def test_a_site_providers_pod_gets_what_it_pins(site_provider, namespace):
    c = spawner_config(namespace, RULES)
    c.KubeSpawner.environment = {"TAPE_BUCKET": "someone-elses"}
    spawner = make_spawner(CloudIdentitySpawner, c, SpawnUser("alice", oidc_state(**{"wlcg.groups": ["/escape"]})))
    await spawner.start()
    pod = await read("pod", namespace, spawner.pod_name)
    await spawner.stop()
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["TAPE_BUCKET"] == "archive-alice"


def test_a_site_provider_cannot_take_a_built_in_key(tmp_path, monkeypatch):
    install_site_package(tmp_path, monkeypatch, "evil_site", "class Aws:\n    pass\n", "aws = evil_site:Aws")
    try:
        with pytest.raises(ConfigError) as e:
            providers.registered()
        assert "'aws'" in str(e.value) and "taken" in str(e.value)
    finally:
        providers._registered = None


def test_a_site_provider_without_a_backend_cannot_have_the_hub_make_identities(site_provider):
    """Making, revoking and deleting identities needs a backend: a site's block that asks for it
    of a provider that has none stops the hub at start-up instead of failing each spawn."""
    from traitlets.config import Config

    from cloudidentity_spawner.startup import check_config

    import tape_site

    c = Config()
    c.CloudIdentitySpawner.identity_rules = MANAGED
    check_config(c)  # with its backend: fine
    tape_site.TapeStore.backends = ()
    try:
        with pytest.raises(ConfigError) as e:
            check_config(c)
        assert "identity_rules[0] ('archive').tape" in str(e.value) and "backends" in str(e.value)
    finally:
        tape_site.TapeStore.backends = ("tape",)


MANAGED = [{"name": "archive", "match": {"groups": ["/escape"]}, "tape": {"bucket": "archive-{username}", "managed": True}}]


@pytest.fixture
def library(site_provider):
    import tape_site

    from cloudidentity_spawner.providers import _backends

    tape_site.STORE.clear()
    _backends.clear()
    yield tape_site.STORE
    _backends.clear()


async def test_a_site_providers_identity_is_made_revoked_and_deleted_by_the_hub(library, namespace):
    from .kubehelpers import list_events, run_gc

    def spawner(bucket: str, user: str = "alice"):
        rules = [{**MANAGED[0], "tape": {"bucket": bucket, "managed": True}}]
        return make_spawner(CloudIdentitySpawner, spawner_config(namespace, rules, hub_name="h1"),
                            SpawnUser(user, oidc_state(**{"wlcg.groups": ["/escape"]})))

    first = spawner("archive-{username}")
    await first.start()
    await first.stop()
    assert library["archive-alice"] == {"hub": "h1", "owner": "user:alice", "trusts": {(namespace, first.service_account)}}
    account = await read("serviceaccount", namespace, first.service_account)
    assert account["metadata"]["annotations"]["cloudidentity-spawner/managed-identity"] == "tape:archive-alice"

    # The rule moves on: the old account is revoked before the new pod, and said so.
    second = spawner("archive2-{username}")
    await second.start()
    assert "archive-alice" not in library and "archive2-alice" in library
    await second.stop()
    reasons = [e["reason"] for e in await list_events(namespace)]
    assert "CloudIdentityRevoked" in reasons

    # status sees the identity; gc deletes one this hub made that no account records, and
    # leaves another hub's.
    library["archive-zed"] = {"hub": "h1", "owner": "user:zed", "trusts": set()}
    library["archive-other"] = {"hub": "h2", "owner": "user:other", "trusts": set()}
    c = spawner_config(namespace, [{**MANAGED[0], "tape": {"bucket": "archive2-{username}", "managed": True}}], hub_name="h1")
    found, actions = await run_gc(c, namespace, {"alice": oidc_state(**{"wlcg.groups": ["/escape"]})})
    [entry] = [e for e in found.entries if e.account.user == "alice"]
    assert (entry.state, entry.account.identity) == ("ok", "tape:archive2-alice")
    # Not the other backend's role its listing named, nor the Google grant its search named.
    assert [(a.kind, a.identity, a.done) for a in actions] == [("delete-identity", "tape:archive-zed", True)]
    assert set(library) == {"archive2-alice", "archive-other"}
    import tape_site

    tape_site.FAIL_SEARCH.append(True)
    try:  # a provider's search that fails is reported; the rest of gc goes on
        _, actions = await run_gc(c, namespace, {"alice": oidc_state(**{"wlcg.groups": ["/escape"]})}, apply=False)
    finally:
        tape_site.FAIL_SEARCH.clear()
    [search] = [a for a in actions if a.kind == "search"]
    assert "offline" in search.skipped and "tape" in search.reason

    # The user goes: their identity goes with their account.
    await second.delete_forever()
    assert set(library) == {"archive-other"}
    assert await read("serviceaccount", namespace, second.service_account) is None


async def test_a_site_backends_failure_is_a_clear_refusal(library, namespace, caplog):
    from cloudidentity_spawner.errors import SpawnRefused

    spawner = make_spawner(CloudIdentitySpawner, spawner_config(namespace, MANAGED, hub_name="h1"),
                           SpawnUser("breaker", oidc_state(**{"wlcg.groups": ["/escape"]})))
    with pytest.raises(SpawnRefused) as e:
        await spawner.start()
    assert "could not be set up" in str(e.value) and "offline" not in str(e.value) and "Traceback" not in str(e.value)
    assert "provider 'tape' ensure of archive-breaker failed: RuntimeError: the tape library is offline" in caplog.text


def test_a_site_provider_cannot_take_another_providers_backend(tmp_path, monkeypatch):
    install_site_package(tmp_path, monkeypatch, "grab_site", "from cloudidentity_spawner.providers.base import Provider\n"
                         "class Grab(Provider):\n    backends = ('grab', 'aws')\n", "grab = grab_site:Grab")
    try:
        with pytest.raises(ConfigError) as e:
            providers.registered()
        assert "'grab'" in str(e.value) and "aws" in str(e.value)
    finally:
        providers._registered = None


def test_a_hub_made_identity_is_recorded_under_the_providers_own_backend(site_provider):
    """An account records a hub-made identity as ``<key>:<identity>``: a provider whose
    backends do not include its key could never revoke one, so the hub does not start."""
    from traitlets.config import Config

    from cloudidentity_spawner.startup import check_config

    import tape_site

    c = Config()
    c.CloudIdentitySpawner.identity_rules = MANAGED
    tape_site.TapeStore.backends = ("tape-library",)
    try:
        with pytest.raises(ConfigError, match="backends"):
            check_config(c)
    finally:
        tape_site.TapeStore.backends = ("tape",)


def test_accounts_made_before_the_record_are_judged_by_each_providers_own_places():
    """Before accounts recorded their hub-made identity, a role or Google account in a managed
    place counted as hub-made: every provider is asked, and one newer than the record (an
    S3-compatible store's) never guesses - an operator's role there is not the hub's."""
    from cloudidentity_spawner.kube import hub_made_identity

    places = ["arn:aws:iam::123456789012:role/jupyterhub/", "@my-project.iam.gserviceaccount.com",
              "arn:aws:iam:::role/jupyterhub/h1/"]
    both = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/operator/data",
            "iam.gke.io/gcp-service-account": "jh-alice@my-project.iam.gserviceaccount.com"}
    assert hub_made_identity(both, places) == "gcp:jh-alice@my-project.iam.gserviceaccount.com"
    store = {"cloudidentity-spawner/s3-sts-role-arn": "arn:aws:iam:::role/jupyterhub/h1/operators-own"}
    assert hub_made_identity(store, places) is None


async def test_status_does_not_ask_the_cloud_about_a_principal():
    """A grant to a principal has no object of its own: nothing to look up (and no Google
    client needed for it)."""
    from types import SimpleNamespace

    from cloudidentity_spawner.inventory import cloud_presence

    def no_client():
        raise AssertionError("a Google client was made")

    settings = SimpleNamespace(gcp_client_factory=no_client, cloud_cache_seconds=0, log=None, gcp_max_concurrent_calls=1,
                               gcp_propagation_seconds=0)
    principal = "gcp:principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/ns/a/sa/b"
    assert await cloud_presence(settings, [principal]) == {principal: None}


def test_a_site_providers_credentials_route_is_served_behind_the_endpoints_checks(site_provider, tmp_path):
    """The site's handler checks nothing itself; served, it answers only an authenticated GET,
    cannot take a route another provider has, nor a name that is not a plain one."""
    import os
    import sys

    import requests

    from .test_creds import TOKEN, start_server

    site = next(p for p in sys.path if os.path.exists(os.path.join(p, "tape_site.py")))
    process, url, log = start_server(tmp_path, {"PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")])})
    try:
        auth = {"Authorization": f"token {TOKEN}"}
        assert requests.get(f"{url}/api/cloudcreds/tape", timeout=10).status_code == 403
        # A handler that would answer in its own prepare, or judge the caller itself, is not served.
        assert requests.get(f"{url}/api/cloudcreds/early", headers=auth, timeout=10).status_code == 404
        assert requests.get(f"{url}/api/cloudcreds/tape", headers={"Authorization": "token wrong"}, timeout=10).status_code == 403
        assert requests.head(f"{url}/api/cloudcreds/tape", headers=auth, timeout=10).status_code == 405
        assert requests.options(f"{url}/api/cloudcreds/aws", timeout=10).status_code != 405  # the server's CORS preflight
        answer = requests.get(f"{url}/api/cloudcreds/tape", headers=auth, timeout=10)
        assert (answer.status_code, answer.json()) == (200, {"ticket": "tape-ticket-for-this-server"})
        assert requests.post(f"{url}/api/cloudcreds/tape", headers=auth, timeout=10).status_code == 405
        # "aws" stays the built-in route (a JSON error here: this server has no AWS identity).
        assert "ticket" not in requests.get(f"{url}/api/cloudcreds/aws", headers=auth, timeout=10).text
    finally:
        process.terminate()
        process.wait(10)
    text = log.read_text()
    assert "route 'aws' is taken" in text and "route '../x' is not a plain lower-case name" in text
    assert "route 'tape2' not served" in text
    assert "route 'early' not served: Early redefines auth_resource, current_user, prepare" in text
