"""Packaging promises: optional SDKs stay optional, the entry point resolves."""

import subprocess
import sys
from importlib.metadata import entry_points

CLOUD_SDKS = ("boto3", "botocore", "google.cloud", "google.api_core")


def test_package_imports_without_cloud_sdks():
    # Make the cloud SDKs unimportable, then import the package and plan with it.
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('boto3', 'botocore') or name.startswith('google.cloud'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import cloudidentity_spawner
from cloudidentity_spawner import CloudIdentitySpawner
from cloudidentity_spawner.rules import IdentityRules
from cloudidentity_spawner.claims import Claims
r = IdentityRules.from_config([{{"match": {{}}, "aws": {{"role_arn": "arn:aws:iam::123456789012:role/{{username}}"}}}}])
print(r.resolve(Claims("alice", ()), "ns").cloud.identity)
print(sorted(m for m in sys.modules if m.startswith({CLOUD_SDKS!r})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["arn:aws:iam::123456789012:role/alice", "[]"]


def test_jupyterhub_spawner_entry_point():
    from cloudidentity_spawner import CloudIdentitySpawner

    [ep] = [ep for ep in entry_points(group="jupyterhub.spawners") if ep.name == "cloudidentity"]
    assert ep.load() is CloudIdentitySpawner


def test_spawner_class_resolves_through_jupyterhub():
    from jupyterhub.app import JupyterHub

    from cloudidentity_spawner import CloudIdentitySpawner

    app = JupyterHub()
    app.spawner_class = "cloudidentity"
    assert app.spawner_class is CloudIdentitySpawner


def test_spawner_reads_identity_settings_from_its_own_config_section():
    from traitlets.config import Config

    from cloudidentity_spawner import CloudIdentity, CloudIdentitySpawner

    c = Config()
    c.CloudIdentitySpawner.hub_name = "myhub"
    c.CloudIdentity.claim_groups_keys = ["roles"]
    assert issubclass(CloudIdentitySpawner, CloudIdentity)
    # Instantiating KubeSpawner needs a cluster; the class-level traits are what we check.
    traits = CloudIdentitySpawner.class_traits(config=True)
    assert {"identity_rules", "identity_resolver", "hub_name", "auth_state_claims_key", "claim_groups_keys"} <= set(traits)
    for name in ("identity_rules", "identity_resolver", "hub_name", "auth_state_claims_key", "claim_groups_keys"):
        assert traits[name].help.strip(), name


def test_a_refusal_message_reads_the_same_through_both_jupyterhub_apis():
    from cloudidentity_spawner.errors import SpawnRefused

    message = "The server profile '50% GPU' is not available to you."
    refused = SpawnRefused(message)
    assert refused.jupyterhub_message == message  # JupyterHub 6's API and every spawn page
    assert refused.log_message % refused.args == message  # JupyterHub 5's REST API formats this
    assert refused.status_code == 403
