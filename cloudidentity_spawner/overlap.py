"""Can two rules' templates name the same thing for different owners? Checked at start-up.

Names the hub makes (ServiceAccounts, hub-made roles, Google accounts, Azure identities) are
disjoint across scopes by construction (:mod:`.names`). What the operator names is not: an
existing role ``role/jh/{username}`` in one rule and ``role/jh/escape-atlas`` in another give
user ``escape-atlas`` the group's role; a user prefix ``{username}/`` and a group prefix
``{group}/`` give user ``atlas`` group atlas's files. So every pair of templates of the same
kind, from different rules, is checked for a rendering they can share, and the hub refuses to
start if there is one - with an example of the colliding name.

A template is a regular language over what its fields may render to (each field's escape
decides the characters it can produce), so "can these two render the same string" is the
emptiness of the intersection of two small automata: a breadth-first search over pairs of
positions, on one representative character per class of characters that behave alike.
"""

from __future__ import annotations

import string
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from . import names
from .errors import ConfigError

#: What a field's value can render to, by the escape used for the target.
ANY = None  # raw: any character (the whole name is encoded afterwards)
KSA = frozenset(string.ascii_lowercase + string.digits + "-")
RESOURCE = frozenset(string.ascii_letters + string.digits + "._@+=,-")
ESCAPES = {"raw": ANY, "ksa": KSA, "resource_part": RESOURCE}
_ESCAPE_FUNCTIONS: dict[str, Callable[[str], str]] = {"raw": str, "ksa": names.ksa_name, "resource_part": names.resource_part}
OWNER_FIELDS = ("username", "safe_username", "group", "safe_group", "claims[", "namespace")
"""Fields that differ between owners (with user namespaces, ``{namespace}`` does); a template
without any names one thing for everyone."""
_WILDCARDS = "*?"

_formatter = string.Formatter()


@dataclass(frozen=True)
class Named:
    """One template of one rule that names an identity or what it may reach."""

    where: str
    """Where the operator wrote it, e.g. ``identity_rules[1] ('staff').aws.role_arn``."""
    rule: str
    scope: str
    kind: str
    """What it names (compared only with the same kind), e.g. ``IAM role``."""
    template: str
    escape: str
    """How field values are escaped: ``raw``, ``ksa`` or ``resource_part``."""
    scoped: bool = False
    """The hub encodes the rendering with the scope (:mod:`.names`): scopes cannot meet."""
    written: str = ""
    """The template as the operator wrote it, when :attr:`template` is derived from it."""
    covers: bool = False
    """A rendering reaches what lies under it (a prefix, a resource pattern, an Azure scope): one
    that is a prefix of another's - at a '/', or before a '*' or '?' - reaches the other's too."""
    casefold: bool = False
    """Names that compare case-insensitively (IAM role names)."""

    def __str__(self) -> str:
        return f"{self.where} ({(self.written or self.template)!r}, {self.scope} scope)"

    @property
    def per_owner(self) -> bool:
        return bool(self.owners)

    @property
    def owners(self) -> frozenset[str]:
        """Whose names the template is made of: ``user`` (user name, claims), ``group``, ``namespace``."""
        kinds = {"username": "user", "safe_username": "user", "claims[": "user", "group": "group", "safe_group": "group",
                 "namespace": "namespace"}
        return frozenset(kind for field, kind in kinds.items() if f"{{{field}" in self.template)


def _tokens(named: Named, hub: str) -> list[str | frozenset | None]:
    """The template as characters (str) and fields (a character set, or None for any); the hub's
    and the rule's names are known at start-up, so they are characters."""
    charset, escape_literal = ESCAPES[named.escape], _ESCAPE_FUNCTIONS[named.escape]
    out: list[str | frozenset | None] = []
    for literal, field, _, _ in _formatter.parse(named.template):
        out.extend(literal)
        if field is None:
            continue
        if field == "hub":
            out.extend(escape_literal(hub))
        elif field == "rule":
            out.extend(escape_literal(named.rule))
        elif field == "namespace":
            out.append(KSA if charset is ANY else KSA & charset)
        elif field in ("safe_username", "safe_group"):  # the plain name where the whole is encoded later
            out.append(ANY if charset is ANY else KSA & charset)
        else:  # username, group, claims[...]
            out.append(charset)
    if named.casefold:
        out = [t.lower() if isinstance(t, str) else t if t is ANY else frozenset(c.lower() for c in t) for t in out]
    if named.covers:
        wildcard = next((i for i, t in enumerate(out) if isinstance(t, str) and t in _WILDCARDS), None)
        if wildcard is not None:
            out = out[:wildcard]  # reaches every name that starts so
        elif out and out[-1] != "/":
            out.append("/")  # reaches what lies under it, not its longer siblings
    return out


def _alphabet(a: Sequence, b: Sequence) -> list[str]:
    """The literal characters of both, plus one character of each class no literal stands for."""
    literals = {t for t in (*a, *b) if isinstance(t, str)}
    pools = (KSA, RESOURCE - KSA, frozenset("/*:?{}$ü\x00"))
    extra = [next(iter(sorted(pool - literals)), None) for pool in pools]
    return sorted(literals) + [c for c in extra if c is not None]


def _accepts(token, char: str) -> bool:
    if isinstance(token, str):
        return token == char
    return token is ANY or char in token


def _step(tokens: Sequence, state: tuple[int, bool], char: str) -> list[tuple[int, bool]]:
    """States after *char* from *state* ``(position, inside a field that has a character)``."""
    position, inside = state
    found = []
    if inside:
        if _accepts(tokens[position], char):
            found.append((position, True))  # the field goes on
        position += 1  # or it ends here
    if position < len(tokens) and _accepts(tokens[position], char):
        found.append((position + 1, False) if isinstance(tokens[position], str) else (position, True))
    return found


def _done(tokens: Sequence, state: tuple[int, bool]) -> bool:
    position, inside = state
    return position + inside == len(tokens)


def shared_rendering(a: Sequence, b: Sequence, prefix: bool = False) -> str | None:
    """A string both token sequences can render (with *prefix*: that *a* renders and that starts
    some rendering of *b*), or None if there is none."""
    alphabet = _alphabet(a, b)
    start = ((0, False), (0, False))
    parent: dict = {start: None}
    queue = deque([start])
    while queue:
        pair = queue.popleft()
        if _done(a, pair[0]) and (prefix or _done(b, pair[1])):
            chars = []
            while parent[pair] is not None:
                pair, char = parent[pair]
                chars.append(char)
            return "".join(reversed(chars))
        for char in alphabet:
            for left in _step(a, pair[0], char):
                for right in _step(b, pair[1], char):
                    if (left, right) not in parent:
                        parent[(left, right)] = (pair, char)
                        queue.append((left, right))
    return None


def check_disjoint(named: Iterable[Named], hub: str) -> None:
    """Refuse (ConfigError naming both places) two templates of different rules, of the same
    kind, that can render the same name for different owners.

    Rules are compiled for every new spawner; the search runs once per set of templates in a
    process (at hub start-up), not on every spawn path."""
    overlap = _first_overlap(tuple(named), hub)
    if overlap is not None:
        raise ConfigError(overlap)


@lru_cache(maxsize=64)
def _first_overlap(items: tuple[Named, ...], hub: str) -> str | None:
    """The message for the first pair of *items* that can render alike for different owners."""
    for i, first in enumerate(items):
        for second in items[i + 1:]:
            if first.kind != second.kind:
                continue
            if first.rule == second.rule and (not (first.per_owner and second.per_owner) or first.owners == second.owners):
                continue  # one rule's templates of the same owner: the same person gets both
            if not (first.per_owner or second.per_owner):
                continue  # one fixed name in both: the operator shares it on purpose
            if first.scoped and second.scoped and first.scope != second.scope:
                continue  # the hub names each scope in a space of its own
            if first.scope == second.scope and first.template == second.template and "{rule" not in first.template:
                continue  # the same owner gets the same name from either rule
            a, b = _tokens(first, hub), _tokens(second, hub)
            example = shared_rendering(a, b)
            if example is None and first.covers:
                example = (shared_rendering(a, b, prefix=True) if first.per_owner else None) or (
                    shared_rendering(b, a, prefix=True) if second.per_owner else None)
            if example is not None:
                return (
                    f"{second} and {first} can name the same {first.kind} (or one what lies under the other) for "
                    "different owners, "
                    f"e.g. {example!r}: a user, group or rule name could take another's identity or data. Give each "
                    "a part of its own that the other cannot render, e.g. 'users/{username}' and 'groups/{group}', "
                    "or 'user-{username}' beside fixed names that do not start with 'user-'"
                )
    return None
