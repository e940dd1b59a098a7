"""Shared helpers for reading provider blocks of a rule."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ..errors import ConfigError
from ..templates import TemplateError, fields, render


def check_keys(block: Any, allowed: set[str], where: str, required: set[str] = frozenset()) -> Mapping[str, Any]:
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(block).__name__}")
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(block))
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")
    return block


def check_template(
    template: Any, where: str, forbidden: set[str] = frozenset(), trusted_claims: Collection[str] | None = None
) -> str:
    """Validate a template at start-up; *forbidden* fields make no sense for this rule's scope.

    *trusted_claims* is given for templates that decide an identity (names, ARNs,
    prefixes, policies): a ``{claims[key]}`` there must be one the operator listed
    as trusted, because many claims (``name``, often ``email``) are values the user
    can edit at the identity provider. None (descriptions, env) allows any claim.
    """
    try:
        used = fields(template)
    except TemplateError as e:
        raise ConfigError(f"{where}: {e}") from None
    bad = sorted(f for f in used if f in forbidden or ("claims" in forbidden and f.startswith("claims[")))
    if bad:
        raise ConfigError(f"{where}: {{{bad[0]}}} cannot be used here: {forbidden_reason(bad[0])}")
    if trusted_claims is not None:
        untrusted = sorted(f for f in used if f.startswith("claims[") and f[len("claims[") : -1] not in trusted_claims)
        if untrusted:
            key = untrusted[0][len("claims[") : -1]
            raise ConfigError(
                f"{where}: {{{untrusted[0]}}} decides a cloud identity, but claim {key!r} is not in trusted_claims; "
                f"users may be able to edit it at their identity provider. If yours does not let them, add it: "
                f"c.CloudIdentitySpawner.trusted_claims = [{key!r}]"
            )
    return template


def forbidden_reason(name: str) -> str:
    if name in ("username", "safe_username") or name.startswith("claims["):
        return "the identity is shared, so it must not depend on one user"
    return "this rule has no group to fill it (add match.groups or use user scope)"


def check_string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r:.80}")
    return value


def load_json_template(value: Any, where: str) -> Any:
    """An inline policy given as a JSON string or as a dict; string leaves are templates."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a JSON object (a policy document), got {type(value).__name__}")
    return value


def json_template_fields(value: Any, where: str, forbidden: set[str], trusted_claims: Collection[str] | None = None) -> None:
    if isinstance(value, str):
        check_template(value, where, forbidden, trusted_claims)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_template(key, where, forbidden, trusted_claims)
            json_template_fields(item, where, forbidden, trusted_claims)
    elif isinstance(value, list):
        for item in value:
            json_template_fields(item, where, forbidden, trusted_claims)


def render_json_template(value: Any, context: Mapping[str, Any], escape: Callable[[str], str]) -> Any:
    """Render every string (keys and values) of a JSON document; the result is always valid JSON."""
    if isinstance(value, str):
        return render(value, context, escape)
    if isinstance(value, Mapping):
        return {render(k, context, escape): render_json_template(v, context, escape) for k, v in value.items()}
    if isinstance(value, list):
        return [render_json_template(v, context, escape) for v in value]
    return value


def json_strings(value: Any) -> list[str]:
    """Every string (keys and values) of a JSON template, in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (k, *json_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    return []
