"""A bad rule stops a real JupyterHub process at start-up, with one message naming rule and key."""

import subprocess
import sys

import pytest

BAD_RULES = '[{"name": "gpu", "match": {"groups": ["gpu"]}, "aws": {"role_arn": "arn:aws:iam::12345:role/gpu"}}]'


@pytest.mark.parametrize(
    "config",
    [
        # the spawner named by its entry point: the package is imported after the config is read
        f'c.JupyterHub.spawner_class = "cloudidentity"\nc.CloudIdentitySpawner.identity_rules = {BAD_RULES}\n',
        # the config file imports the package itself, before the config is complete
        "from cloudidentity_spawner import CloudIdentitySpawner\n"
        f"c.JupyterHub.spawner_class = CloudIdentitySpawner\nc.CloudIdentitySpawner.identity_rules = {BAD_RULES}\n",
        # stock KubeSpawner with the pre_spawn_hook
        "from cloudidentity_spawner import pre_spawn_hook\n"
        f'c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"\nc.KubeSpawner.pre_spawn_hook = pre_spawn_hook\n'
        f"c.CloudIdentity.identity_rules = {BAD_RULES}\n",
    ],
    ids=["entry-point", "imported", "pre-spawn-hook"],
)
def test_jupyterhub_refuses_to_start_with_a_bad_rule(tmp_path, config):
    (tmp_path / "jupyterhub_config.py").write_text("c = get_config()\n" + config)
    out = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "--config", "jupyterhub_config.py", "--ip", "127.0.0.1", "--port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    [line] = [l for l in out.stderr.splitlines() if "cloudidentity-spawner: configuration error" in l]
    assert "identity_rules[0] ('gpu').aws.role_arn" in line
    assert "12 digits" in line
    assert "Traceback" not in out.stderr


def test_the_check_runs_once_per_config_load():
    # The hub has imported the spawner (its entry point) but not the hook module; checking
    # a config must not import the hook module and so run the check again, nested.
    code = """
from jupyterhub.app import JupyterHub
from traitlets.config import Config
import cloudidentity_spawner.spawner
app = JupyterHub.instance()
warnings = []
app.log.warning = lambda message, *args: warnings.append(message % args if args else message)
c = Config()
c.JupyterHub.spawner_class = "cloudidentity"
c.CloudIdentitySpawner.identity_rules = [{"match": {}}]
app.update_config(c)
print(sum("auth_state is not enabled" in w for w in warnings))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"


def test_jupyterhub_groups_must_trust_the_same_entitlement_authorities_as_the_rules():
    import functools

    from traitlets.config import Config

    from cloudidentity_spawner.auth import auth_state_groups, configure_indigo_iam
    from cloudidentity_spawner.errors import ConfigError
    from cloudidentity_spawner.startup import check_config

    c = Config()
    c.CloudIdentitySpawner.identity_rules = [{"name": "all", "match": {}}]
    c.CloudIdentitySpawner.entitlement_authorities = ["urn:mace:egi.eu#aai.egi.eu"]
    c.GenericOAuthenticator.auth_state_groups_key = auth_state_groups  # trusts the login issuer instead
    with pytest.raises(ConfigError, match="GenericOAuthenticator.auth_state_groups_key"):
        check_config(c)
    c.GenericOAuthenticator.auth_state_groups_key = functools.partial(auth_state_groups, authorities=["aai.egi.eu"])
    with pytest.raises(ConfigError, match="entitlement_authorities"):
        check_config(c)
    c.GenericOAuthenticator.auth_state_groups_key = functools.partial(auth_state_groups, authorities=["urn:mace:egi.eu#aai.egi.eu"])
    check_config(c)
    indigo = Config()
    indigo.CloudIdentitySpawner.identity_rules = [{"name": "all", "match": {}}]
    configure_indigo_iam(indigo, "https://iam-escape.cloud.cnaf.infn.it/", client_id="hub", client_secret="s",
                         callback_url="https://hub.example.org/hub/oauth_callback")
    check_config(indigo)  # the helper sets both alike


def test_the_entitlement_authority_defaults_to_the_logins_issuer():
    """Unset is None (the login's issuer), not [] (no authority at all)."""
    from cloudidentity_spawner.claims import user_claims  # noqa: F401
    from cloudidentity_spawner.config import CloudIdentity

    assert CloudIdentity().entitlement_authorities is None
