"""Operator templates such as ``arn:aws:iam::123456789012:role/jh/{username}``.

Templates use Python's ``str.format`` field syntax with a fixed vocabulary:
``{username}``, ``{safe_username}``, ``{group}``, ``{safe_group}``,
``{namespace}``, ``{hub}``, ``{rule}`` and claim values as ``{claims[key]}``.
Every value is passed through an *escape* function chosen for the target
(an ARN, an e-mail, a JSON policy, a Kubernetes name), so a user name can never
inject syntax into the thing being rendered.

Each value is made safe once, for where it lands. ``{safe_username}`` and ``{safe_group}``
are the name as a Kubernetes name (lower case ``[a-z0-9-]``, with a hash when it had to
change): inside an ARN, a prefix, a policy or an e-mail they are used as they are (escaping
them again would hash the hash); in a name the hub encodes as a whole afterwards (escape
:func:`raw`: ServiceAccounts, role names, account ids) they are the plain name, like
``{username}``, and the whole name is encoded once.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any

from .claims import lookup

FIELDS = frozenset({"username", "safe_username", "group", "safe_group", "namespace", "hub", "rule"})
SAFE_FIELDS = {"safe_username": "username", "safe_group": "group"}
"""Fields whose value is already safe for every escape, and the plain field they are made from."""

_formatter = string.Formatter()


class TemplateError(ValueError):
    """A template is malformed, or a value it needs is missing."""


def fields(template: str) -> set[str]:
    """The field names *template* uses (``claims[x]`` is reported as ``claims[x]``).

    Raises :class:`TemplateError` for a malformed template, an unknown field,
    or a conversion/format spec (``{username!r}``, ``{username:>10}``), which
    would bypass escaping.
    """
    if not isinstance(template, str):
        raise TemplateError(f"expected a string template, got {type(template).__name__}")
    try:
        parsed = list(_formatter.parse(template))
    except ValueError as e:
        raise TemplateError(f"malformed template {template!r}: {e}") from None
    found = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise TemplateError(f"template {template!r}: format specs and conversions are not allowed in {{{name}}}")
        if name.startswith("claims[") and name.endswith("]") and len(name) > len("claims[]"):
            found.add(name)
        elif name in FIELDS:
            found.add(name)
        else:
            allowed = ", ".join(f"{{{f}}}" for f in sorted(FIELDS)) + ", {claims[key]}"
            raise TemplateError(f"template {template!r}: unknown field {{{name}}}; allowed: {allowed}")
    return found


def render(template: str, context: Mapping[str, Any], escape: Callable[[str], str]) -> str:
    """Render *template*, passing every substituted value through *escape*.

    *context* maps field names to values; ``context["claims"]`` is the claims
    mapping. A field whose value is ``None`` (e.g. ``{group}`` for a user matched
    by name) is an error, not an empty string.
    """
    out = []
    for literal, name, _spec, _conversion in _formatter.parse(template):
        out.append(literal)
        if name is None:
            continue
        if name.startswith("claims["):
            key = name[len("claims[") : -1]
            value = lookup(context.get("claims") or {}, key)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise TemplateError(
                    f"template {template!r} needs claim {key!r}, which is "
                    + ("missing" if value is None else f"a {type(value).__name__}, not a string")
                )
            value = str(value)
        else:
            if name in SAFE_FIELDS and escape is raw:
                name = SAFE_FIELDS[name]  # the whole rendering is encoded once, afterwards
            value = context.get(name)
            if value is None:
                raise TemplateError(f"template {template!r} needs {{{name}}}, which is not known for this user")
            if name in SAFE_FIELDS:
                out.append(value)  # safe already, for every target: escaping it again would hash the hash
                continue
        out.append(escape(value))
    return "".join(out)


def raw(value: str) -> str:
    """The escape for targets that validate the whole result afterwards."""
    return value


class _SampleClaims(Mapping):
    """Every claim a start-up check asks for has a plausible value."""

    def __getitem__(self, key: str) -> str:
        return "sample-claim"

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return True


SAMPLE_CONTEXT = {
    "username": "sample-user",
    "safe_username": "sample-user",
    "group": "sample-group",
    "safe_group": "sample-group",
    "namespace": "jupyterhub",
    "hub": "jupyterhub",
    "rule": "sample-rule",
    "claims": _SampleClaims(),
}
"""A plausible context for rendering a template at start-up, to check what it renders
is valid (an ARN, an e-mail, a prefix) before any user logs in."""
