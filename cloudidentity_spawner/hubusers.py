"""Who the hub has: its users, their JupyterHub groups and stored logins (``status``, ``gc``,
the admin page).

Two sources, so a clean-up also works while the hub is down: the hub's REST API (a token
with ``list:users`` and ``read:users``, plus ``admin:auth_state`` to plan from the stored
logins), or the hub's database (``JupyterHub.db_url``; stored logins are decrypted with
``JUPYTERHUB_CRYPT_KEY`` when it is set).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from .errors import ConfigError

PAGE = 200


@dataclass(frozen=True)
class HubUser:
    """A user as the hub knows them. ``auth_state_known`` says whether ``auth_state`` could be
    read (then None means none is stored); without it, plans see the JupyterHub groups only."""

    name: str
    groups: tuple[str, ...] = ()
    auth_state: Any = None
    auth_state_known: bool = False
    admin: bool = False
    roles: tuple[str, ...] = ()


class HubAPI:
    """The hub's REST API (``/hub/api``) with a token."""

    def __init__(self, url: str, token: str, concurrency: int = 8):
        if not token:
            raise ConfigError("the hub's REST API needs a token: set JUPYTERHUB_API_TOKEN (scopes list:users, read:users)")
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"token {token}", "Accept": "application/jupyterhub-pagination+json"}
        self._slots = asyncio.Semaphore(concurrency)
        self._checked = False

    async def _get(self, session: aiohttp.ClientSession, path: str) -> Any:
        async with self._slots, session.get(self.url + path, headers=self.headers) as r:
            if r.status == 404:
                return None
            if r.status in (401, 403):
                raise ConfigError(f"the hub's REST API refused {path.split('?')[0]} ({r.status}): the token needs the "
                                  "scopes list:users and read:users (and admin:auth_state to see stored logins)")
            r.raise_for_status()
            return json.loads(await r.text())

    async def _check(self, session: aiohttp.ClientSession) -> None:
        """Refuse a URL that is not the hub's REST API, or a token that cannot see every user: the
        API answers 404 for users a filtered scope hides, which must never read as "deleted"."""
        if self._checked:
            return
        root = await self._get(session, "/")
        if not isinstance(root, dict) or "version" not in root:
            raise ConfigError(f"{self.url} is not a JupyterHub REST API (expected e.g. http://hub:8081/hub/api)")
        scopes = set((await self._get(session, "/user") or {}).get("scopes", []))
        missing = sorted({"list:users", "read:users"} - scopes)
        if missing:
            raise ConfigError(f"the token for {self.url} lacks the scopes {', '.join(missing)} (unfiltered: every "
                              "user must be visible, or users would look deleted)")
        self._checked = True

    async def names(self) -> set[str]:
        """Every user's name (paginated)."""
        names: set[str] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await self._check(session)
            offset = 0
            while True:
                page = await self._get(session, f"/users?offset={offset}&limit={PAGE}")
                if page is None:
                    raise ConfigError(f"{self.url}/users was not found: is this the hub's REST API?")
                items = page["items"] if isinstance(page, dict) else page
                names.update(u["name"] for u in items)
                following = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
                if not following or not items:
                    return names
                offset = following["offset"]

    async def users(self, names: list[str]) -> dict[str, HubUser | None]:
        """These users (None for one the hub does not have), with groups and, if the token may, auth_state."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await self._check(session)
            models = await asyncio.gather(*(self._get(session, f"/users/{quote(n, safe='')}") for n in names))
        return {
            name: None if model is None else HubUser(
                name, tuple(model.get("groups") or ()), model.get("auth_state"), "auth_state" in model,
                bool(model.get("admin")), tuple(model.get("roles") or ()))
            for name, model in zip(names, models)
        }


class HubDatabase:
    """The hub's database, read only (the hub may be down)."""

    def __init__(self, db_url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        url = make_url(db_url)
        if url.drivername.startswith("sqlite"):
            path = url.database or ""
            if not path or path == ":memory:" or not os.path.isfile(path):
                raise ConfigError(f"the hub database {db_url} does not exist here (run where the hub runs, "
                                  "or give --hub-url to ask the running hub)")
            url = url.set(database=f"file:{os.path.abspath(path)}?mode=ro", query={"uri": "true"})
        self.engine = create_engine(url)

    def _read(self, names: list[str] | None) -> dict[str, tuple[tuple[str, ...], Any, bool, tuple[str, ...]]]:
        from sqlalchemy import text

        with self.engine.connect() as db:
            rows = db.execute(text("SELECT id, name, encrypted_auth_state, admin FROM users")).all()
            groups: dict[int, list[str]] = {}
            for user_id, group in db.execute(text(
                "SELECT m.user_id, g.name FROM user_group_map m JOIN groups g ON g.id = m.group_id"
            )):
                groups.setdefault(user_id, []).append(group)
            roles: dict[int, list[str]] = {}
            for user_id, role in db.execute(text(
                "SELECT m.user_id, r.name FROM user_role_map m JOIN roles r ON r.id = m.role_id"
            )):
                roles.setdefault(user_id, []).append(role)
        wanted = None if names is None else set(names)
        return {name: (tuple(sorted(groups.get(uid, ()))), state, bool(admin), tuple(sorted(roles.get(uid, ()))))
                for uid, name, state, admin in rows if wanted is None or name in wanted}

    async def names(self) -> set[str]:
        return set(await asyncio.to_thread(self._read, None))

    async def users(self, names: list[str]) -> dict[str, HubUser | None]:
        rows = await asyncio.to_thread(self._read, names)
        found: dict[str, HubUser | None] = {}
        for name in names:
            if name not in rows:
                found[name] = None
                continue
            groups, encrypted, admin, roles = rows[name]
            state, known = await _decrypt(encrypted)
            found[name] = HubUser(name, groups, state, known, admin, roles)
        return found


async def _decrypt(encrypted: Any) -> tuple[Any, bool]:
    """A stored login (``users.encrypted_auth_state``), if JUPYTERHUB_CRYPT_KEY can open it."""
    if encrypted is None:
        return None, True
    if not os.environ.get("JUPYTERHUB_CRYPT_KEY"):
        return None, False
    from jupyterhub.crypto import decrypt

    try:
        return await decrypt(encrypted), True
    except Exception:
        return None, False


def hub_users(hub_url: str | None, db_url: str | None) -> HubAPI | HubDatabase:
    """The hub's REST API if a URL is given (or ``JUPYTERHUB_API_URL`` is set, as in a hub
    service), else the database."""
    url = hub_url or os.environ.get("JUPYTERHUB_API_URL")
    if url:
        return HubAPI(url, os.environ.get("JUPYTERHUB_API_TOKEN", ""))
    return HubDatabase(db_url or "sqlite:///jupyterhub.sqlite")
