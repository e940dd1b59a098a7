"""Errors with a message for whoever has to act on them."""

from __future__ import annotations

from tornado.web import HTTPError


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


class SpawnRefused(HTTPError):
    """Fails one spawn; JupyterHub shows ``jupyterhub_message`` on the spawn page.

    An HTTPError, because JupyterHub passes those (and their message) through to
    the spawn form when a spawn fails at once; other exceptions become a generic
    "Unhandled error starting server". The message is also the HTTPError's own
    (tornado keeps a ``%`` in it as it is): JupyterHub 5's REST API answers with that one,
    JupyterHub 6's reads ``jupyterhub_message``.
    """

    def __init__(self, user_message: str, status_code: int = 403):
        super().__init__(status_code, user_message)
        self.jupyterhub_message = user_message

    def __str__(self) -> str:
        return self.jupyterhub_message
