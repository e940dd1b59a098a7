"""Authenticator helpers with the real OAuthenticator, and the auth_state start-up warning."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from oauthenticator.generic import GenericOAuthenticator
from traitlets.config import Config

from cloudidentity_spawner.auth import auth_state_groups, configure_indigo_iam
from cloudidentity_spawner.claims import claims_from_auth_state
from cloudidentity_spawner.errors import ClaimsError

EXAMPLES = Path(__file__).parent.parent / "examples" / "claims"


def indigo_authenticator() -> GenericOAuthenticator:
    c = Config()
    configure_indigo_iam(c, "https://iam-escape.cloud.cnaf.infn.it/", client_id="hub", client_secret="s",
                         callback_url="https://hub.example.org/hub/oauth_callback")
    return GenericOAuthenticator(config=c)


def test_indigo_configuration():
    c = Config()
    configure_indigo_iam(c, "https://iam-escape.cloud.cnaf.infn.it/", client_id="hub", client_secret="s",
                         callback_url="https://hub.example.org/hub/oauth_callback")
    auth = GenericOAuthenticator(config=c)
    assert auth.authorize_url == "https://iam-escape.cloud.cnaf.infn.it/authorize"
    assert auth.token_url == "https://iam-escape.cloud.cnaf.infn.it/token"
    assert auth.userdata_url == "https://iam-escape.cloud.cnaf.infn.it/userinfo"
    assert c.CloudIdentity.entitlement_authorities == ["iam-escape.cloud.cnaf.infn.it"]
    assert "wlcg.groups" in auth.scope
    assert auth.username_claim == "preferred_username"
    assert auth.enable_auth_state and auth.manage_groups and auth.refresh_pre_spawn


async def test_jupyterhub_groups_equal_the_groups_rules_match_on():
    auth_state = json.loads((EXAMPLES / "escape-iam-alice.json").read_text())
    hub_groups = await indigo_authenticator().get_user_groups(auth_state)
    assert set(hub_groups) == set(claims_from_auth_state("alice", auth_state).groups)
    assert "/escape/atlas" in hub_groups


def test_github_teams_become_groups():
    state = {"github_user": {"login": "g"}, "teams": [{"slug": "ops", "organization": {"login": "acme"}}]}
    assert auth_state_groups(state) == ["acme:ops"]


def test_malformed_groups_fail_the_login_clearly():
    with pytest.raises(ClaimsError) as e:
        auth_state_groups({"oauth_user": {"sub": "x", "groups": "admins"}})
    assert "'groups' is a str" in e.value.admin_detail


def test_hub_warns_at_start_up_when_auth_state_is_off(tmp_path):
    (tmp_path / "jupyterhub_config.py").write_text(
        "c = get_config()\n"
        'c.JupyterHub.spawner_class = "cloudidentity"\n'
        'c.CloudIdentitySpawner.identity_rules = [{"match": {}}]\n'
        'c.JupyterHub.authenticator_class = "dummy"\n'
    )
    hub = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "--config", "jupyterhub_config.py", "--ip", "127.0.0.1", "--port", "0",
         "--JupyterHub.hub_port=0", "--JupyterHub.proxy_class=jupyterhub.proxy.ConfigurableHTTPProxy"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = hub.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "auth_state is not enabled" in line:
                break
    finally:
        hub.kill()
        hub.wait()
    warning = [l for l in lines if "auth_state is not enabled" in l]
    assert warning, "".join(lines[-20:])
    assert "enable_auth_state = True" in warning[0]
