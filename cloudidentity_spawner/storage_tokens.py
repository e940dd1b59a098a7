"""Storage bearer tokens (WLCG tokens from ESCAPE IAM and the like), the pure half: a rule's
``tokens`` block, and the audience and scopes it gives one user.

ESCAPE storage (dCache, EOS, StoRM, XRootD, Rucio) takes bearer tokens whose scopes name paths:
``storage.read:/escape/alice``. A rule says which, with the same templates as the clouds'
policies, and the hub gets such a token for the user from the issuer that logged them in
(:mod:`.token_keeper`). A scope path is rendered with the user's name as one escaped segment
(:func:`.names.resource_part`), so a name like ``..`` or ``*`` cannot widen it, and a path
must be absolute, without ``..``, wildcards or empty segments - checked at start-up with a
sample user, and again for each user.

Every rule's paths together must keep users apart: a path whose segment depends on the user
may not sit beside a literal segment of another path (:func:`check_disjoint`). Example::

    "tokens": {"audience": "https://wlcg.cern.ch/jwt/v1/any",
               "scope": "storage.read:/escape/users/{username} storage.modify:/escape/scratch/{username}"}
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from . import names
from .errors import ConfigError, IdentityError
from .providers._common import check_keys, check_template
from .templates import SAMPLE_CONTEXT, TemplateError, fields, raw, render

VOLUME = "storage-token"
MOUNT_PATH = "/var/run/secrets/cloudidentity/storage"
TOKEN_FILE = f"{MOUNT_PATH}/token"
SECRET_ENV = "CLOUDIDENTITY_STORAGE_TOKEN_SECRET"
"""Names the server's token Secret in the notebook, so its Dask pods mount the same one."""

RUCIO_FILE = f"{MOUNT_PATH}/rucio.cfg"

_KEYS = {"audience", "scope", "rucio"}
_RUCIO_KEYS = {"host", "auth_host", "account", "allow_http"}
_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")
_RUCIO_ACCOUNT = re.compile(r"[a-z0-9_-]{1,25}")
_STORAGE = re.compile(r"storage\.(read|modify|create|stage):(?P<path>.*)", re.DOTALL)
_PLAIN_SCOPE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,99}")
_PATH = re.compile(r"(/[^/\s*?\[\]{}\\]+)+")
_AUDIENCE = re.compile(r"[\x21-\x7e]{1,255}")
NEVER = {"offline_access"}
"""Scopes a pod's token must not carry: a refresh token never reaches a pod."""


@dataclass(frozen=True)
class TokenSettings:
    """A rule's validated ``tokens`` block."""

    audience: str
    scope: tuple[str, ...]
    """Scope templates, one per scope."""
    rucio: Mapping[str, str] | None = None
    """``host``, ``auth_host`` and the ``account`` template of a ``rucio.cfg`` beside the token."""


def parse(block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str] = ()) -> TokenSettings:
    """Validate a rule's ``tokens`` block at start-up (ConfigError names *where* and the key)."""
    check_keys(block, _KEYS, where, {"audience", "scope"})
    audience = block["audience"]
    if not isinstance(audience, str) or not _AUDIENCE.fullmatch(audience) or "{" in audience:
        raise ConfigError(f"{where}.audience: expected the storage's audience, e.g. https://wlcg.cern.ch/jwt/v1/any "
                          f"(no spaces, no templates), got {audience!r}")
    scope = block["scope"]
    if not isinstance(scope, str) or not scope.split():
        raise ConfigError(f"{where}.scope: expected space-separated scopes, e.g. 'storage.read:/escape/{{username}}'")
    for item in scope.split():
        _check_scope(item, f"{where}.scope", forbidden, trusted_claims)
    rucio = None
    if "rucio" in block:
        rucio = dict(check_keys(block["rucio"], _RUCIO_KEYS, f"{where}.rucio", {"host"}))
        allow_http = rucio.pop("allow_http", False)
        if not isinstance(allow_http, bool):
            raise ConfigError(f"{where}.rucio.allow_http: expected true or false, got {allow_http!r}")
        for key in ("host", "auth_host"):
            if key in rucio and (not isinstance(rucio[key], str) or not _URL.fullmatch(rucio[key])):
                raise ConfigError(f"{where}.rucio.{key}: expected the Rucio server's URL, e.g. https://rucio.example.org, "
                                  f"got {rucio[key]!r}")
            if key in rucio and rucio[key].startswith("http:") and not allow_http:
                raise ConfigError(f"{where}.rucio.{key}: {rucio[key]} is plain http: the Rucio client would send the "
                                  "user's token in the clear; use https (or allow_http: true on a network you trust)")
        rucio.setdefault("auth_host", rucio["host"])
        rucio["account"] = check_template(rucio.get("account", "{username}"), f"{where}.rucio.account", forbidden,
                                          trusted_claims)
        if not fields(rucio["account"]) and not _RUCIO_ACCOUNT.fullmatch(rucio["account"]):
            raise ConfigError(f"{where}.rucio.account: {rucio['account']!r} is not a Rucio account name "
                              "(1-25 of a-z, 0-9, '_', '-')")
    return TokenSettings(audience=audience, scope=tuple(scope.split()), rucio=rucio)


def rucio_config(rucio: Mapping[str, str]) -> str:
    """The ``rucio.cfg`` of a server (the Rucio client reads the token through WLCG token
    discovery: ``BEARER_TOKEN_FILE``, with ``auth_type = oidc``)."""
    return (f"[client]\nrucio_host = {rucio['host']}\nauth_host = {rucio['auth_host']}\nauth_type = oidc\n"
            f"account = {rucio['account']}\n")


def _check_scope(item: str, where: str, forbidden: set[str], trusted_claims: Collection[str]) -> None:
    storage = _STORAGE.fullmatch(item)
    if storage is None:
        if item in NEVER:
            raise ConfigError(f"{where}: {item!r} would give pods a refresh token; the hub keeps tokens fresh itself")
        if not _PLAIN_SCOPE.fullmatch(item):
            raise ConfigError(f"{where}: {item!r} is neither a storage scope (storage.read|modify|create|stage:/path) "
                              "nor a plain scope name")
        return
    check_template(storage["path"], f"{where} ({item})", forbidden, trusted_claims)
    try:
        sample = render(storage["path"], SAMPLE_CONTEXT, names.resource_part)
    except TemplateError as e:
        raise ConfigError(f"{where} ({item}): {e}") from None
    if not safe_path(sample):
        raise ConfigError(f"{where} ({item}): the path must be absolute, with no '..', '.', wildcards or empty "
                          f"segments, e.g. /escape/{{username}}; with a sample user it is {sample!r}")


def check_disjoint(paths: list[tuple[str, str]]) -> None:
    """No user's path may name another's area: where one path template has a segment that
    depends on the user and another has a literal segment at the same depth under the same
    literal parent, a user named like that segment would get the other area
    (``/escape/{username}`` beside ``/escape/scratch/{username}``: user ``scratch`` would get
    everyone's scratch). *paths*: ``(where, path template)`` of every rule's storage scopes."""
    split = [(where, path.strip("/").split("/")) for where, path in paths]
    for where, segments in split:
        for depth, segment in enumerate(segments):
            if "{" not in segment:
                continue
            for other_where, other in split:
                if len(other) > depth and "{" not in other[depth] and other[:depth] == segments[:depth]:
                    parent = "/" + "/".join(segments[:depth])
                    raise ConfigError(
                        f"{where}: a user named {other[depth]!r} would get {parent}/{other[depth]}, which "
                        f"{other_where} names: give the users' folders a parent of their own, e.g. "
                        f"{parent}/users/{segment}")
            break  # below a user's own segment, the area is theirs


def storage_paths(settings: TokenSettings, where: str) -> list[tuple[str, str]]:
    """``(where, path template)`` of a block's storage scopes (for :func:`check_disjoint`)."""
    return [(f"{where}.scope ({item})", m["path"]) for item in settings.scope if (m := _STORAGE.fullmatch(item))]


def safe_path(path: str) -> bool:
    """Whether a rendered scope path names exactly one place: absolute, no ``.``/``..``
    segment, no wildcard, no empty segment, no whitespace."""
    return bool(_PATH.fullmatch(path)) and not any(part in (".", "..") for part in path.split("/"))


def plan(settings: TokenSettings, context: Mapping[str, Any]) -> dict[str, Any]:
    """The audience and scope (one space-separated string) for one user. IdentityError if a
    rendered path is not a safe one (a name that only the real user has could still make it so)."""
    scopes = []
    for item in settings.scope:
        storage = _STORAGE.fullmatch(item)
        if storage is None:
            scopes.append(item)
            continue
        path = render(storage["path"], context, names.resource_part)
        if not safe_path(path):
            raise IdentityError("Your storage token's scope could not be made from your account's names; ask your hub admin.",
                                f"tokens scope {item!r} renders to the unsafe path {path!r}")
        scopes.append(f"storage.{storage[1]}:{path}")
    planned: dict[str, Any] = {"audience": settings.audience, "scope": " ".join(scopes)}
    if settings.rucio is not None:
        account = render(settings.rucio["account"], context, raw)
        if not _RUCIO_ACCOUNT.fullmatch(account):
            raise IdentityError("Your Rucio account name cannot be made from your login; ask your hub admin.",
                                f"tokens.rucio.account renders to {account!r}, not a Rucio account name "
                                "(1-25 of a-z, 0-9, '_', '-')")
        planned["rucio"] = {"host": settings.rucio["host"], "auth_host": settings.rucio["auth_host"], "account": account}
    return planned
