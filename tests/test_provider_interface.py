"""A site's own provider, registered through the entry-point group ``cloudidentity_spawner.providers``,
works like a built-in one: its rule block is validated at start-up, planned, described to the
user and pinned into the pod - without changing this package."""

from __future__ import annotations

import textwrap

import pytest

from cloudidentity_spawner import CloudIdentitySpawner, ConfigError
from cloudidentity_spawner import providers
from cloudidentity_spawner.claims import Claims
from cloudidentity_spawner.provisioner import identity_sentence
from cloudidentity_spawner.rules import IdentityRules

from .kubehelpers import SpawnUser, make_spawner, oidc_state, read, spawner_config

SITE_PROVIDER = '''
from cloudidentity_spawner.errors import ConfigError
from cloudidentity_spawner.plan import CloudPlan
from cloudidentity_spawner.providers.base import Provider
from cloudidentity_spawner.templates import render
from cloudidentity_spawner import names


class Settings:
    mode, hub_made = "existing", False

    def __init__(self, bucket):
        self.bucket = bucket


class TapeStore(Provider):
    def parse(self, block, where, forbidden, trusted_claims):
        if not isinstance(block, dict) or set(block) != {"bucket"}:
            raise ConfigError(f"{where}: expected {{'bucket': <template>}}")
        return Settings(block["bucket"])

    def plan(self, settings, context, scope, owner, namespace, service_account):
        bucket = render(settings.bucket, context, names.resource_part)
        return {"tape.example.org/bucket": bucket}, CloudPlan(provider=self.key, mode="existing", identity=bucket)

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


@pytest.fixture
def site_provider(tmp_path, monkeypatch):
    """An installed package of the site's that registers provider ``tape``."""
    (tmp_path / "tape_site.py").write_text(SITE_PROVIDER)
    dist = tmp_path / "tape_site-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tape-site\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [cloudidentity_spawner.providers]
        tape = tape_site:TapeStore
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(providers, "_registered", None)
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
    (tmp_path / "evil_site.py").write_text("class Aws:\n    pass\n")
    dist = tmp_path / "evil_site-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-site\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cloudidentity_spawner.providers]\naws = evil_site:Aws\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(providers, "_registered", None)
    try:
        with pytest.raises(ConfigError) as e:
            providers.registered()
        assert "'aws'" in str(e.value) and "taken" in str(e.value)
    finally:
        providers._registered = None


def test_a_site_provider_cannot_have_the_hub_make_identities_yet(site_provider):
    """Making, revoking and deleting identities needs a backend; only the built-in ones have one,
    so a site's block that asks for it stops the hub at start-up instead of failing each spawn."""
    from traitlets.config import Config

    from cloudidentity_spawner.startup import check_config

    import tape_site

    tape_site.Settings.hub_made = True
    try:
        c = Config()
        c.CloudIdentitySpawner.identity_rules = RULES
        with pytest.raises(ConfigError) as e:
            check_config(c)
        assert "identity_rules[0] ('archive').tape" in str(e.value) and "backends" in str(e.value)
    finally:
        tape_site.Settings.hub_made = False
