"""Authenticator helpers: the same group list for JupyterHub and for identity rules.

For OAuthenticator's ``GenericOAuthenticator`` (oauthenticator >= 16)::

    from cloudidentity_spawner.auth import auth_state_groups, configure_indigo_iam

    configure_indigo_iam(c, "https://iam-escape.cloud.cnaf.infn.it/",
                         client_id="...", client_secret="...",
                         callback_url="https://hub.example.org/hub/oauth_callback")

or, for any provider, ``c.GenericOAuthenticator.auth_state_groups_key = auth_state_groups``
with ``manage_groups = True``: JupyterHub's groups then hold exactly the normalised list the
rules match on (``/escape/atlas``, ``org:team``, ...).
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Collection, Mapping
from typing import Any

from .claims import DEFAULT_GROUP_CLAIMS, find_user_claims, github_team_groups, groups_from_claims, login_authorities, unique


def auth_state_groups(auth_state: Mapping[str, Any], authorities: Collection[str] | None = None) -> list[str]:
    """The user's normalised groups from an OAuthenticator auth_state (for ``auth_state_groups_key``).

    Entitlements become group paths only from *authorities* (None: the login's own issuer), as
    for the rules - give ``functools.partial(auth_state_groups, authorities=[...])`` when the
    spawner's ``entitlement_authorities`` is set. A malformed claim raises ClaimsError, which
    fails the login with a clear log line instead of silently dropping the user's groups.
    """
    claims = find_user_claims(auth_state)
    if authorities is None:
        authorities = login_authorities(claims, auth_state)
    return list(unique(groups_from_claims(claims, DEFAULT_GROUP_CLAIMS, authorities) + github_team_groups(auth_state)))


def configure_indigo_iam(
    c: Any,
    issuer: str,
    *,
    client_id: str,
    client_secret: str,
    callback_url: str,
    extra_scopes: tuple[str, ...] = (),
) -> None:
    """Configure GenericOAuthenticator for an ESCAPE / INDIGO IAM (or WLCG-profile) issuer.

    Sets the endpoints, the scopes (``wlcg.groups`` included), the username
    (``preferred_username``), group management from the normalised claims,
    auth_state (needed by the spawner) and token refresh before each spawn, so a
    user removed from a group loses that group's identity at their next spawn.
    Entitlements count as groups only from this issuer, for JupyterHub's groups and the rules.
    """
    base = issuer.rstrip("/")
    authorities = [urllib.parse.urlparse(base).hostname]
    auth = c.GenericOAuthenticator
    c.JupyterHub.authenticator_class = "generic-oauth"
    auth.client_id = client_id
    auth.client_secret = client_secret
    auth.oauth_callback_url = callback_url
    auth.authorize_url = f"{base}/authorize"
    auth.token_url = f"{base}/token"
    auth.userdata_url = f"{base}/userinfo"
    auth.scope = ["openid", "profile", "email", "wlcg.groups", *extra_scopes]
    auth.username_claim = "preferred_username"
    auth.manage_groups = True
    auth.auth_state_groups_key = functools.partial(auth_state_groups, authorities=authorities)
    c.CloudIdentity.entitlement_authorities = authorities
    auth.enable_auth_state = True
    auth.refresh_pre_spawn = True
    auth.auth_refresh_age = 300
