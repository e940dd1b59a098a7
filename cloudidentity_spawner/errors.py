"""Errors with a message for whoever has to act on them."""

from __future__ import annotations


class ConfigError(ValueError):
    """The operator's configuration is wrong.

    Raised at hub start-up (or by ``cloudidentity-spawner plan``); the message
    names the rule (name and index) and the key, so the operator can fix it.
    """


class IdentityError(Exception):
    """A user's spawn cannot get a cloud identity.

    ``user_message`` is safe to show on the spawn page; ``admin_detail`` goes to
    the hub log only (it may name rules, groups and API errors).
    """

    def __init__(self, user_message: str, admin_detail: str | None = None):
        super().__init__(user_message)
        self.user_message = user_message
        self.admin_detail = admin_detail or user_message


class ClaimsError(IdentityError):
    """The login's claims are missing or malformed."""


class NoMatchingRule(IdentityError):
    """No identity rule matches the user; we never fall back to a broader identity."""
