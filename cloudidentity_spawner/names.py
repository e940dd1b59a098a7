"""Safe, injective names for every system a cloud identity lives in.

Each encoder here keeps two promises, for *any* Unicode input:

1. **Always valid.** The result satisfies the target system's naming rules
   (Kubernetes object names, IAM role names, Google service account ids, Azure
   managed identity and federated credential names, Kubernetes label values,
   path-like resource parts in policies).
2. **No collisions.** Two different inputs never produce the same output.

A name that is already valid is returned unchanged, so ``alice`` stays
``alice`` and operators can predict their names. Any input that had to be
changed (escaped, lower-cased, truncated) gets a hash of the *original*
input appended after a ``---`` marker. Passed-through names are never allowed
to contain ``--``, and the safe part of a hashed name never contains ``--``,
so a passed-through name can never look like a hashed one; two hashed names
differ because their inputs' hashes differ.

Names of different scopes never meet: a group's or a hub rule's identity is named in a
space of its own. Their names (``scope="group"`` / ``"hub"``) always end in a hash of the
scope *and* the rendered name - the hash input starts with ``\xff``, a byte no UTF-8 text has,
so it can never be a user's input - while a user's name either passes through (never
containing ``--``) or ends in a hash of a plain string. So user ``group-atlas``, whose account
renders like group ``atlas``'s, still gets a name of its own, whatever the templates say.

"Never" rests on the hash being long enough that nobody can *search* for a
second input with a victim's hash: user names are often self-chosen (GitHub,
self-registration), and these names land in trust policies, role names and
storage prefixes. So the suffix is 26 base32 characters of SHA-256 (130 bits)
wherever it fits. A Google service account id has room for 30 characters
only, so its suffix is 16 characters (80 bits); those accounts also carry an
ownership marker that the hub checks before using one, so even a found
collision gives the second user a refused spawn, never the first user's account.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, replace

HASH_LENGTH = 26
"""Base32 characters of SHA-256 appended to a changed name (130 bits)."""
SHORT_HASH_LENGTH = 16
"""The suffix where a name has no room for :data:`HASH_LENGTH` (80 bits; Google service account ids)."""
_MARKER = "---"

__all__ = [
    "HASH_LENGTH",
    "SHORT_HASH_LENGTH",
    "azure_credential_name",
    "azure_identity_name",
    "gsa_account_id",
    "iam_role_name",
    "role_session_name",
    "is_valid_gsa_account_id",
    "is_valid_iam_role_name",
    "is_valid_ksa_name",
    "is_valid_label_value",
    "ksa_name",
    "label_value",
    "resource_part",
]


SCOPES_OF_THEIR_OWN = ("group", "hub")
"""Scopes whose names always carry a hash of the scope (see the module's docstring)."""


def _hash(value: str, length: int, scope: str = "user") -> str:
    """Lower-case base32 (``a-z2-7``: valid in every target) of SHA-256, *length* characters.
    A group or hub scope is hashed in as ``\xff<scope>\xff`` before the value: no UTF-8 text
    (a user's rendered name) starts with the byte ``\xff``."""
    domain = b"" if scope == "user" else b"\xff" + scope.encode() + b"\xff"
    digest = hashlib.sha256(domain + value.encode("utf-8", "surrogatepass")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:length]


def _squeeze(text: str) -> str:
    """Collapse runs of ``-`` and trim anything but letters and digits off both ends."""
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", re.sub(r"-{2,}", "-", text))


@dataclass(frozen=True)
class _Rules:
    """The naming rules of one target system."""

    valid: re.Pattern[str]
    """The whole-name pattern a valid name matches."""
    unsafe_run: re.Pattern[str]
    """A run of characters that must be replaced by a single ``-``."""
    max_length: int
    min_length: int = 1
    must_start_with_letter: bool = False
    hash_length: int = HASH_LENGTH

    def is_valid(self, name: str) -> bool:
        return (
            self.min_length <= len(name) <= self.max_length
            and self.valid.fullmatch(name) is not None
        )

    def encode(self, value: str, scope: str = "user") -> str:
        if not isinstance(value, str):
            raise TypeError(f"names are made from strings, not {type(value).__name__}")
        if scope not in ("user", *SCOPES_OF_THEIR_OWN):
            raise ValueError(f"unknown scope {scope!r}")
        if scope == "user" and "--" not in value and self.is_valid(value):
            return value
        budget = self.max_length - len(_MARKER) - self.hash_length
        # The unsafe-run patterns are ASCII classes, so anything else (including
        # what str.lower() makes of some characters) becomes "-".
        safe = self.unsafe_run.sub("-", value.lower())
        safe = _squeeze(safe)
        if self.must_start_with_letter and safe and not safe[0].isalpha():
            safe = "x-" + safe
        safe = _squeeze(safe[:budget]) or "x"
        return f"{safe}{_MARKER}{_hash(value, self.hash_length, scope)}"


_KSA = _Rules(
    valid=re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"),
    unsafe_run=re.compile(r"[^a-z0-9]+"),
    max_length=63,
)
_IAM_ROLE = _Rules(
    # IAM role names are unique case-insensitively, so only lower case passes
    # through: "Alice" and "alice" must not both map to the same role.
    valid=re.compile(r"[a-z0-9+=,.@_-]+"),
    unsafe_run=re.compile(r"[^a-z0-9+=,.@_]+"),
    max_length=64,
)
_ROLE_SESSION = _Rules(
    # STS role session names: 2-64 of [\w+=,.@-]; the user's name as CloudTrail shows it.
    valid=re.compile(r"[a-z0-9+=,.@_-]+"),
    unsafe_run=re.compile(r"[^a-z0-9+=,.@_]+"),
    max_length=64,
    min_length=2,
)
_GSA_ID = _Rules(
    valid=re.compile(r"[a-z][a-z0-9-]*[a-z0-9]"),
    unsafe_run=re.compile(r"[^a-z0-9]+"),
    max_length=30,
    min_length=6,
    must_start_with_letter=True,
    hash_length=SHORT_HASH_LENGTH,
)
_LABEL = _Rules(
    valid=re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"),
    unsafe_run=re.compile(r"[^a-z0-9_.]+"),
    max_length=63,
    min_length=0,
)
_AZURE_IDENTITY = _Rules(
    # Azure resource names compare case-insensitively, so only lower case passes through.
    valid=re.compile(r"[a-z0-9][a-z0-9_-]*"),
    unsafe_run=re.compile(r"[^a-z0-9_]+"),
    max_length=128,
    min_length=3,
)
_AZURE_CREDENTIAL = replace(_AZURE_IDENTITY, max_length=120)
_RESOURCE_PART = _Rules(
    # One path segment of a bucket key, an ARN resource or a policy value:
    # no "/", no IAM wildcards ("*", "?") and no policy variables ("${"); never
    # only dots ("." and ".." are not valid Cloud Storage folder names).
    valid=re.compile(r"(?=.*[A-Za-z0-9])[A-Za-z0-9._@+=,-]+"),
    unsafe_run=re.compile(r"[^a-z0-9._@+=,]+"),
    max_length=128,
)


def is_valid_ksa_name(name: str) -> bool:
    """A Kubernetes ServiceAccount name: an RFC 1123 DNS label, at most 63 characters."""
    return _KSA.is_valid(name)


def is_valid_iam_role_name(name: str) -> bool:
    """An IAM role name: 1-64 of ``[A-Za-z0-9+=,.@_-]`` (checked here in lower case)."""
    return _IAM_ROLE.is_valid(name)


def is_valid_gsa_account_id(name: str) -> bool:
    """A Google service account id: 6-30 of ``[a-z0-9-]``, starting with a letter."""
    return _GSA_ID.is_valid(name)


def is_valid_label_value(name: str) -> bool:
    """A Kubernetes label value: empty, or up to 63 alphanumerics with ``-_.`` inside."""
    return _LABEL.is_valid(name)


def ksa_name(value: str, scope: str = "user") -> str:
    """Encode *value* as a valid, collision-free Kubernetes ServiceAccount name (a group's or
    hub rule's with *scope*: see the module's docstring)."""
    return _KSA.encode(value, scope)


def role_session_name(username: str) -> str:
    """The STS role session name that names *username* (``assumed-role/<role>/<session>`` in
    CloudTrail and a store's log): valid, at most 64 characters, distinct for distinct users."""
    return _ROLE_SESSION.encode(username)


def iam_role_name(value: str, scope: str = "user") -> str:
    """Encode *value* as a valid, collision-free IAM role name (IAM compares names case-insensitively;
    a group's or hub rule's with *scope*: see the module's docstring)."""
    return _IAM_ROLE.encode(value, scope)


def gsa_account_id(value: str, scope: str = "user") -> str:
    """Encode *value* as a valid, collision-free Google service account id (6-30 characters;
    a group's or hub rule's with *scope*: see the module's docstring)."""
    return _GSA_ID.encode(value, scope)


def azure_identity_name(value: str, scope: str = "user") -> str:
    """Encode *value* as a valid, collision-free Azure managed identity name (3-128 characters;
    a group's or hub rule's with *scope*: see the module's docstring)."""
    return _AZURE_IDENTITY.encode(value, scope)


def azure_credential_name(value: str) -> str:
    """Encode *value* as a valid, collision-free federated identity credential name (3-120 characters)."""
    return _AZURE_CREDENTIAL.encode(value)


def label_value(value: str) -> str:
    """Encode *value* as a valid, collision-free Kubernetes label value."""
    return _LABEL.encode(value)


def resource_part(value: str) -> str:
    """Encode *value* for use as one segment of an ARN, bucket prefix or policy string.

    The result never contains ``/``, ``*``, ``?``, ``$``, ``{`` or ``}``, so a user
    named ``*`` or ``../bob`` can never widen a policy rendered from a template.
    """
    return _RESOURCE_PART.encode(value)
