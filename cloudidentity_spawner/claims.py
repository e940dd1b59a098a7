"""Read a user's groups out of what their identity provider said at login.

OAuthenticator stores the provider's userinfo / id-token claims in the user's
``auth_state`` under a provider-specific key (``oauth_user`` for the generic
authenticator, ``user`` for Azure AD, ``github_user`` for GitHub, ...). This
module finds those claims and turns the many ways providers spell group
membership into one ordered, de-duplicated list of group names:

* ``groups``: Okta, Keycloak (full paths such as ``/staff/admins``), Azure AD
  (object ids), INDIGO IAM (``escape/atlas``);
* ``wlcg.groups``: WLCG-profile tokens (``/escape/atlas``);
* ``eduperson_entitlement``: AARC-G002 group URNs
  (``urn:mace:egi.eu:group:escape:atlas:role=member#iam.escape.eu`` → ``/escape/atlas``) - only
  from an authority the operator trusts (default: the login's own issuer). Any other keeps its
  namespace and authority (``urn:geant:eduteams.org:service:eduteams:group:escape:atlas#eduteams.org``):
  a team someone made elsewhere and called ``escape:atlas`` is another group;
* GitHub teams stored by ``populate_teams_in_auth_state`` (``org:team``);
* JupyterHub's own groups for the user (when the authenticator manages groups).

Everything here but :func:`user_claims` (which reads the stored login) is pure: no I/O,
easy to test with recorded samples.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.parse
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ClaimsError

# Where OAuthenticator's authenticators keep the userinfo claims in auth_state.
DEFAULT_CLAIMS_KEYS = (
    "oauth_user",
    "user",
    "github_user",
    "gitlab_user",
    "google_user",
    "cilogon_user",
    "auth0_user",
    "globus_user",
    "bitbucket_user",
)
DEFAULT_GROUP_CLAIMS = ("groups", "wlcg.groups", "eduperson_entitlement")

_AARC_GROUP_URN = re.compile(
    r"^urn:(?P<nid>[^:#]+):(?P<ns>[^#]+?):group:(?P<path>[^#]+?)(?::role=(?P<role>[^:#]+))?(?:#(?P<authority>.*))?$"
)


@dataclass(frozen=True)
class Claims:
    """What we know about a user at spawn time.

    ``values`` are the raw provider claims, available to templates as
    ``{claims[key]}``; ``groups`` is the normalised group list rules match on.
    """

    username: str
    groups: tuple[str, ...]
    values: Mapping[str, Any] = field(default_factory=dict)
    person: str | None = None
    """Who logged in, for good: a digest of the login's issuer and subject (:func:`person_digest`),
    or None when the login names no subject."""
    admin: bool = False
    """Whether the user is a JupyterHub admin (rules can match ``"admin": true``)."""
    roles: tuple[str, ...] = ()
    """The user's JupyterHub roles (rules can match ``"roles": [...]``)."""


def person_digest(values: Mapping[str, Any], issuer: str | None) -> str | None:
    """Who logged in: ``<subject digest>.<issuer digest>`` - the subject (``sub``; GitHub and
    GitLab logins: the numeric ``id``) and the issuer (:func:`login_issuer`; empty when the login
    shows none, e.g. after a refresh that brought no ID token). The same for every login of one
    person, different for anyone else; None without a subject. :func:`.plan.other_person` compares two."""
    subject = values.get("sub", values.get("id"))
    if isinstance(subject, bool) or not isinstance(subject, (str, int)) or subject == "":
        return None

    def digest(text: str, length: int) -> str:
        return base64.b32encode(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()).decode().lower()[:length]

    return f"{digest(str(subject), 26)}.{digest(issuer, 10) if issuer else ''}"


def lookup(claims: Mapping[str, Any], path: str) -> Any:
    """Find *path* in *claims*: a literal key first (``wlcg.groups`` is one key), then a dotted path.

    Returns ``None`` when nothing is there.
    """
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def find_user_claims(auth_state: Mapping[str, Any] | None, claims_key: str | None = None) -> Mapping[str, Any]:
    """Return the provider claims stored in *auth_state*.

    With *claims_key* set, only that key is used. Otherwise the known
    OAuthenticator keys are tried in order; an auth_state that already *is* a
    claims mapping (it has ``sub`` or ``groups``) is used as it is.
    """
    if auth_state is None:
        raise ClaimsError(
            "Your login did not keep the information needed to choose a cloud identity; "
            "log out and log in again, or ask your hub admin.",
            "no auth_state for this user: set c.Authenticator.enable_auth_state = True "
            "(and JUPYTERHUB_CRYPT_KEY) so group claims survive login",
        )
    if not isinstance(auth_state, Mapping):
        raise ClaimsError(
            "Your login information has an unexpected format; ask your hub admin.",
            f"auth_state is a {type(auth_state).__name__}, expected a mapping",
        )
    keys = (claims_key,) if claims_key else DEFAULT_CLAIMS_KEYS
    for key in keys:
        value = auth_state.get(key)
        if isinstance(value, Mapping):
            return value
        if value is not None:
            raise ClaimsError(
                "Your login information has an unexpected format; ask your hub admin.",
                f"auth_state[{key!r}] is a {type(value).__name__}, expected a mapping of claims",
            )
    if claims_key is None and ("sub" in auth_state or "groups" in auth_state):
        return auth_state
    raise ClaimsError(
        "Your login did not include the claims needed to choose a cloud identity; ask your hub admin.",
        f"auth_state has no claims under {', '.join(map(repr, keys))} "
        f"(keys present: {sorted(map(str, auth_state))}); set CloudIdentitySpawner.auth_state_claims_key",
    )


def _string_list(value: Any, source: str) -> list[str]:
    if value is None:
        raise ClaimsError(
            "Your login's group information is missing; ask your hub admin.",
            f"claim {source!r} is null; expected a list of strings",
        )
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ClaimsError(
            "Your login's group information has an unexpected format; ask your hub admin.",
            f"claim {source!r} is a {type(value).__name__} ({value!r:.80}); expected a list of strings",
        )
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ClaimsError(
                "Your login's group information has an unexpected format; ask your hub admin.",
                f"claim {source!r} item {index} is a {type(item).__name__} ({item!r:.80}); expected a string",
            )
        item = item.strip()
        if item:
            out.append(item)
    return out


def entitlement_group(urn: str, authorities: Collection[str] = ()) -> str | None:
    """The group an AARC-G002 group entitlement URN names.

    From a trusted authority - an entry of *authorities* that is the URN's authority (the part
    after ``#``) or ``<namespace>#<authority>`` (``urn:mace:egi.eu#aai.egi.eu``) - the group's
    path: ``/group/subgroup``. From any other, the URN itself without its role part, so that it
    can never equal a trusted group's path. Entitlements that are not group URNs (they can name
    other rights) give ``None``. The role part (``:role=member``) is not part of the group name.
    """
    match = _AARC_GROUP_URN.match(urn)
    if not match:
        return None
    parts = [part for part in match["path"].split(":") if part]
    if not parts:
        return None
    namespace, authority = f"urn:{match['nid']}:{match['ns']}", match["authority"]
    if authority and (authority in authorities or f"{namespace}#{authority}" in authorities):
        return "/" + "/".join(parts)
    return f"{namespace}:group:{':'.join(parts)}" + ("" if authority is None else f"#{authority}")


def login_issuer(claims: Mapping[str, Any], auth_state: Mapping[str, Any] | None = None) -> str | None:
    """The login's issuer: the claims' ``iss``, or the ``iss`` of the ID token OAuthenticator stored."""
    issuer = claims.get("iss")
    if not isinstance(issuer, str) and auth_state is not None:
        issuer = _id_token_issuer(auth_state.get("id_token"))
    return issuer if isinstance(issuer, str) else None


def login_authorities(claims: Mapping[str, Any], auth_state: Mapping[str, Any] | None = None,
                      issuer: str | None = None) -> tuple[str, ...]:
    """The entitlement authority a login vouches for by default: its issuer's host name, or none
    (*issuer*, when the caller has read it already: :func:`login_issuer`)."""
    issuer = issuer or login_issuer(claims, auth_state)
    host = urllib.parse.urlparse(issuer).hostname if issuer else None
    return (host,) if host else ()


def jwt_claims(token: Any) -> Mapping[str, Any] | None:
    """A JWT's claims, read but not verified (the issuer or the cluster verified it; only its
    ``iss`` or ``exp`` is read here), or None if it is not one."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None
    return data if isinstance(data, Mapping) else None


def _id_token_issuer(token: Any) -> str | None:
    """``iss`` of a stored ID token (verified by the authenticator at login; only read here)."""
    data = jwt_claims(token) or {}
    return data.get("iss") if isinstance(data.get("iss"), str) else None


def _azure_overage(claims: Mapping[str, Any], key: str) -> bool:
    names = claims.get("_claim_names")
    return isinstance(names, Mapping) and key in names


def groups_from_claims(claims: Mapping[str, Any], group_claims: Iterable[str] = DEFAULT_GROUP_CLAIMS,
                       authorities: Collection[str] | None = None) -> list[str]:
    """Collect the user's groups from every configured claim that is present.

    A claim that is absent is skipped (providers only send some of them); a claim
    that is present but malformed is an error, never silently ignored. Entitlements
    become group paths only from *authorities* (None: :func:`login_authorities`).
    """
    if authorities is None:
        authorities = login_authorities(claims)
    groups: list[str] = []
    for key in group_claims:
        value = lookup(claims, key)
        if value is None and key not in claims:
            if _azure_overage(claims, key.split(".")[-1]):
                raise ClaimsError(
                    "You are in too many groups for your login token to list them; ask your hub admin.",
                    f"Azure AD group overage: the token has no {key!r} claim but a _claim_names entry for it. "
                    "Configure the app registration to emit only groups assigned to the application "
                    "(groupMembershipClaims: ApplicationGroup) or read groups from Microsoft Graph.",
                )
            continue
        items = _string_list(value, key)
        if key.split(".")[-1] == "eduperson_entitlement":
            items = [g for g in (entitlement_group(urn, authorities) for urn in items) if g]
        groups.extend(items)
    return groups


def github_team_groups(auth_state: Mapping[str, Any]) -> list[str]:
    """``org:team`` names from the teams GitHubOAuthenticator stores with ``populate_teams_in_auth_state``."""
    teams = auth_state.get("teams")
    if teams is None:
        return []
    if not isinstance(teams, list):
        raise ClaimsError(
            "Your login's team information has an unexpected format; ask your hub admin.",
            f"auth_state['teams'] is a {type(teams).__name__}; expected a list of GitHub teams",
        )
    out = []
    for index, team in enumerate(teams):
        try:
            out.append(f"{team['organization']['login']}:{team['slug']}")
        except (KeyError, TypeError):
            raise ClaimsError(
                "Your login's team information has an unexpected format; ask your hub admin.",
                f"auth_state['teams'] item {index} lacks organization.login or slug",
            ) from None
    return out


def unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def claims_from_auth_state(
    username: str,
    auth_state: Mapping[str, Any] | None,
    hub_groups: Iterable[str] = (),
    *,
    claims_key: str | None = None,
    group_claims: Iterable[str] = DEFAULT_GROUP_CLAIMS,
    authorities: Collection[str] | None = None,
    admin: bool = False,
    roles: Iterable[str] = (),
) -> Claims:
    """Build the :class:`Claims` a spawn is planned from. Entitlements count as group paths only
    from *authorities* (None: the login's own issuer)."""
    values = find_user_claims(auth_state, claims_key)
    issuer = login_issuer(values, auth_state)
    if authorities is None:
        authorities = login_authorities(values, issuer=issuer)
    groups = groups_from_claims(values, group_claims, authorities)
    groups += github_team_groups(auth_state or {})
    groups += _string_list(list(hub_groups), "JupyterHub groups")
    return Claims(username=username, groups=unique(groups), values=values, person=person_digest(values, issuer),
                  admin=bool(admin), roles=unique(_string_list(list(roles), "JupyterHub roles")))


def hub_groups(user: Any) -> list[str]:
    """The names of a JupyterHub user's JupyterHub groups."""
    return [getattr(g, "name", g) for g in (getattr(user, "groups", None) or [])]


def claims_with_settings(settings: Any, username: str, auth_state: Mapping[str, Any] | None,
                         groups: Iterable[str], admin: bool = False, roles: Iterable[str] = ()) -> Claims:
    """:func:`claims_from_auth_state`, read the way *settings* (a ``CloudIdentity``) say."""
    return claims_from_auth_state(username, auth_state, groups, claims_key=settings.auth_state_claims_key,
                                  group_claims=settings.claim_groups_keys, authorities=settings.entitlement_authorities,
                                  admin=admin, roles=roles)


def hub_roles(user: Any) -> list[str]:
    """The names of a JupyterHub user's JupyterHub roles."""
    return [getattr(r, "name", r) for r in (getattr(user, "roles", None) or [])]


async def user_claims(settings: Any, user: Any) -> Claims:
    """Claims of a JupyterHub user: their stored login (``auth_state``) plus their
    JupyterHub groups, read the way *settings* (a ``CloudIdentity``) say."""
    return claims_with_settings(settings, user.name, await user.get_auth_state(), hub_groups(user),
                                bool(getattr(user, "admin", False)), hub_roles(user))
