"""Storage bearer tokens, the I/O half: get the user's token from the issuer, keep it in a
Kubernetes Secret the pod mounts, and renew it while the server runs.

At spawn the hub exchanges the user's login token (kept in the encrypted ``auth_state``) for
one with the rule's audience and scopes (RFC 8693 token exchange at the issuer's token
endpoint, as ESCAPE IAM offers it), and writes it to a Secret owned by the hub, one per server,
which the notebook pod mounts read-only with ``BEARER_TOKEN_FILE`` pointing at it (the WLCG
token discovery order). The kubelet updates a mounted Secret in place, so a renewed token
reaches the running notebook without a restart.

While the server runs, one task per server renews the token in the last quarter of its life
(spread with jitter, at most ``storage_token_max_concurrent_refreshes`` requests at once). When
the login token has expired, the hub renews it with the login's refresh token first and saves
the new login tokens in ``auth_state``. A failed renewal leaves the old token in place until
it expires, and says why in the Secret's ``error`` file (the notebook's credentials endpoint
serves it at ``/api/cloudcreds/token``) and in the hub's log; a revoked login stops the
renewals. The refresh token never leaves the hub: only the exchanged access token is written.
Stopping the server deletes its Secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import random
import re
import time
import urllib.parse
import weakref
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from . import names
from .claims import jwt_claims
from .errors import IdentityError
from .plan import HUB_LABEL, MANAGED_BY, MANAGED_BY_LABEL, PREFIX, USER_LABEL, thaw
from .retry import describe
from .storage_tokens import rucio_config

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
KIND_LABEL = PREFIX + "kind"
KIND = "storage-token"
SERVER_ANNOTATION = PREFIX + "server"
POD_ANNOTATION = PREFIX + "pod"
EXPIRES_ANNOTATION = PREFIX + "expires-at"
WRITTEN_ANNOTATION = PREFIX + "written-at"
_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")
MAX_LIFETIME = 7 * 86400
"""A longer lifetime than a week is taken for a broken answer (and never stamped)."""


class LoginExpired(IdentityError):
    """The user's login cannot give tokens any more (refresh token expired or revoked)."""


def secret_name(pod_name: str) -> str:
    """The Secret of a server's storage token (a pod name is at most 63 characters)."""
    return f"{pod_name}-storage-token"


class Issuer:
    """The issuer's token endpoint, as the hub's client there."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, timeout: float = 30.0):
        self.token_url, self.client_id, self.client_secret, self.timeout = token_url, client_id, client_secret, timeout

    async def _post(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        import aiohttp

        # RFC 6749 2.3.1: the client id and secret form-encoded, then Basic.
        pair = f"{urllib.parse.quote(self.client_id, safe='')}:{urllib.parse.quote(self.client_secret, safe='')}"
        headers = {"Accept": "application/json", "Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
                async with session.post(self.token_url, data=form, headers=headers) as response:
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        body = {}
                    return response.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise IdentityError("Your storage token could not be renewed: the identity provider did not answer; "
                                "try again in a minute.", f"token endpoint {self.token_url}: {describe(e)}") from None

    async def exchange(self, subject_token: str, audience: str, scope: str) -> tuple[int, dict[str, Any]]:
        """RFC 8693: the login's access token for one with *audience* and *scope*."""
        return await self._post({"grant_type": EXCHANGE_GRANT, "subject_token": subject_token,
                                 "subject_token_type": ACCESS_TOKEN_TYPE, "requested_token_type": ACCESS_TOKEN_TYPE,
                                 "audience": audience, "scope": scope})

    async def refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        """The login's tokens renewed with its refresh token."""
        return await self._post({"grant_type": "refresh_token", "refresh_token": refresh_token})


def issuer_for(settings: Any, authenticator: Any) -> Issuer:
    """The token endpoint and client: the hub's settings, else its authenticator's."""
    url = settings.storage_token_url or getattr(authenticator, "token_url", "") or ""
    client_id = settings.storage_token_client_id or getattr(authenticator, "client_id", "") or ""
    secret = settings.storage_token_client_secret or getattr(authenticator, "client_secret", "") or ""
    if not url or not client_id:
        raise IdentityError("Your storage token could not be made; ask your hub admin.",
                            "rules with 'tokens' need the issuer's token endpoint and the hub's client there: set "
                            "c.CloudIdentitySpawner.storage_token_url and storage_token_client_id (and _secret), or "
                            "use an OAuthenticator with token_url and client_id")
    return Issuer(url, client_id, secret)


def _said(body: Mapping[str, Any]) -> str:
    error = str(body.get("error", "?"))[:100]
    description = " ".join(str(body.get("error_description", "")).split())[:300]
    return f"{error}: {description}" if description else error


async def obtain(issuer: Issuer, user: Any, tokens: Mapping[str, str]) -> tuple[str, float]:
    """The user's storage token and when it expires (epoch seconds): the login's access token
    exchanged; if the issuer no longer takes that one, the login renewed first (and saved)."""
    state = await user.get_auth_state() or {}
    subject = state.get("access_token")
    if not subject:
        raise LoginExpired("Your login holds no token for storage; log out and log in again.",
                           f"{user.name}'s auth_state has no access_token (enable_auth_state, and an OAuthenticator)")
    status, body = (0, {}) if _expiring(subject) else await issuer.exchange(subject, tokens["audience"], tokens["scope"])
    lifetime = body.get("expires_in")
    spent = status == 200 and isinstance(lifetime, (int, float)) and lifetime <= 0  # bound to an expiring login
    rejected = status == 0 or spent or (status != 200 and body.get("error") in ("invalid_request", "invalid_grant", "invalid_token"))
    if rejected and state.get("refresh_token"):
        # The login's access token expired (or is about to): renew the login, then exchange once more.
        used = state["refresh_token"]
        renewed_status, renewed = await issuer.refresh(used)
        latest = await user.get_auth_state() or {}
        if latest.get("refresh_token") not in (None, used):
            # The user logged in again, or the authenticator renewed the login, meanwhile: theirs is newer.
            state = latest
        elif renewed_status == 400 and renewed.get("error") in ("invalid_grant", "invalid_request"):
            raise LoginExpired("Your login has expired or was revoked, so your storage token cannot be renewed; "
                               "log out and log in again.",
                               f"refreshing {user.name}'s login at {issuer.token_url} failed: {renewed_status} {_said(renewed)}")
        elif renewed_status != 200 or not isinstance(renewed.get("access_token"), str):  # the issuer's trouble: try later
            raise IdentityError("Your storage token could not be renewed: the identity provider did not answer as "
                                "expected; it will be tried again.",
                                f"refreshing {user.name}'s login at {issuer.token_url}: {renewed_status} {_said(renewed)}")
        else:
            state = {**latest, "access_token": renewed["access_token"], "refresh_token": renewed.get("refresh_token") or used}
            await user.save_auth_state(state)
        status, body = await issuer.exchange(state["access_token"], tokens["audience"], tokens["scope"])
    if status != 200:
        raise IdentityError("Your storage token could not be made: the identity provider refused it; ask your hub admin.",
                            f"token exchange for {user.name} (audience {tokens['audience']}, scope {tokens['scope']}) "
                            f"at {issuer.token_url}: {status} {_said(body)}")
    token, lifetime = body.get("access_token"), body.get("expires_in")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token) or not isinstance(lifetime, (int, float)) \
            or not 0 < lifetime <= MAX_LIFETIME:
        raise IdentityError("Your storage token could not be made; ask your hub admin.",
                            f"token exchange for {user.name} at {issuer.token_url} answered without a usable "
                            f"access_token and expires_in (at most {MAX_LIFETIME} s)")
    granted = body.get("scope")
    wider = sorted(set(str(granted).split()) - set(tokens["scope"].split())) if granted is not None else []
    if wider or token in (state.get("access_token"), state.get("refresh_token")) or \
            body.get("issued_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        # Never into a pod: more than the rule asked for, or the login's own token.
        raise IdentityError("Your storage token could not be made; ask your hub admin.",
                            f"token exchange for {user.name} at {issuer.token_url} answered with "
                            + (f"scopes the rule did not ask for ({' '.join(wider)})" if wider else
                               "the login's own token or not an access token") + "; not given to the pod")
    return token, time.time() + float(lifetime)


def _expiring(token: str, margin: float = 10.0) -> bool:
    """Whether a JWT login token expires within *margin* seconds (an opaque one: not known)."""
    try:
        return float((jwt_claims(token) or {})["exp"]) < time.time() + margin
    except (KeyError, TypeError, ValueError):
        return False


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _stamp(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_body(name: str, namespace: str, user: str, hub: str, server: str, pod: str, token: str, expires: float,
                error: str = "", rucio: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Secret of one server's token: the token, its expiry, why the last renewal failed
    (empty when it did not), and with *rucio* a ``rucio.cfg``. Labelled as this hub's, so
    ``gc`` finds it."""
    extra = {"rucio.cfg": _b64(rucio_config(rucio))} if rucio else {}
    return {
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {MANAGED_BY_LABEL: MANAGED_BY, KIND_LABEL: KIND, HUB_LABEL: names.label_value(hub),
                                USER_LABEL: names.label_value(user)},
                     "annotations": {SERVER_ANNOTATION: f"{user}/{server}", POD_ANNOTATION: pod,
                                     EXPIRES_ANNOTATION: _stamp(expires), WRITTEN_ANNOTATION: _stamp(time.time())}},
        "type": "Opaque",
        "data": {"token": _b64(token), "expires_at": _b64(_stamp(expires)), "error": _b64(error), **extra},
    }


class TokenKeeper:
    """Gets, stores and renews the storage tokens of this hub's servers (one per process; each
    call takes the issuer and hub name from the spawner it is for, the concurrency limit from
    the *settings* it was made with)."""

    def __init__(self, settings: Any):
        self.log = settings.log
        self.limit = asyncio.Semaphore(max(1, int(settings.storage_token_max_concurrent_refreshes)))
        self.tasks: dict[tuple[str, str], asyncio.Task] = {}
        self.stopped: dict[tuple[str, str], str | None] = {}
        """Servers whose renewals a refused login stopped: the refresh token it refused (a new login
        has another, and renewals start again)."""
        self._users: dict[str, asyncio.Lock] = {}

    async def _obtain(self, issuer: Issuer, user: Any, tokens: Mapping[str, str]) -> tuple[str, float]:
        # One renewal of a user's login at a time (their servers share it), a bounded number overall.
        async with self._users.setdefault(user.name, asyncio.Lock()), self.limit:
            return await obtain(issuer, user, tokens)

    async def _create(self, api: Any, body: dict[str, Any], timeout: float) -> None:
        """Make the server's Secret, or take over the one an earlier start of it left (only ours:
        this hub's, this server's)."""
        meta = body["metadata"]
        try:
            await api.create_namespaced_secret(meta["namespace"], body, _request_timeout=timeout)
            return
        except ApiException as e:
            if e.status != 409:
                raise
        current = await api.read_namespaced_secret(meta["name"], meta["namespace"], _request_timeout=timeout)
        labels, annotations = current.metadata.labels or {}, current.metadata.annotations or {}
        if any(labels.get(k) != v for k, v in meta["labels"].items()) or \
                annotations.get(SERVER_ANNOTATION) != meta["annotations"][SERVER_ANNOTATION]:
            raise IdentityError("Your storage token could not be stored for your server; ask your hub admin.",
                                f"Secret {meta['namespace']}/{meta['name']} exists and is not this hub's for server "
                                f"{meta['annotations'][SERVER_ANNOTATION]}: not overwritten")
        body = {**body, "metadata": {**meta, "resourceVersion": current.metadata.resource_version}}
        await self._patch(api, body, timeout)

    @staticmethod
    async def _patch(api: Any, body: dict[str, Any], timeout: float) -> None:
        """Renew the Secret in place (a merge patch); ApiException 404 if it is gone."""
        meta = body["metadata"]
        await api.patch_namespaced_secret(meta["name"], meta["namespace"], body, _request_timeout=timeout,
                                          _content_type="application/merge-patch+json")

    async def start(self, spawner: Any, api: Any, plan: Any, timeout: float) -> str:
        """Get the user's token and write the server's Secret; its name. IdentityError if not."""
        name = secret_name(spawner.pod_name)
        # The spawner's own settings (each spawner is the hub's settings): the keeper outlives spawners.
        issuer = issuer_for(spawner, getattr(spawner, "authenticator", None))
        token, expires = await self._obtain(issuer, spawner.user, plan.tokens)
        await self._create(api, secret_body(name, spawner.namespace, spawner.user.name, spawner.hub_name, spawner.name,
                                            spawner.pod_name, token, expires, rucio=plan.tokens.get("rucio")), timeout)
        self.stopped.pop((spawner.user.name, spawner.name), None)
        self.log.info("cloudidentity audit %s", json.dumps({
            "event": "cloudidentity.storage_token", "user": spawner.user.name, "server": spawner.name,
            "secret": f"{spawner.namespace}/{name}", "audience": plan.tokens["audience"], "scope": plan.tokens["scope"],
            "expires_at": _stamp(expires)}, sort_keys=True))
        self.keep(spawner, api, plan.tokens, name, expires, timeout)
        return name

    def keep(self, spawner: Any, api: Any, tokens: Mapping[str, str], name: str, expires: float, timeout: float) -> None:
        """Renew the server's token while it runs (one task per server; a new one replaces it).
        Renewals only change the Secret in place: once it is gone, they end."""
        key = (spawner.user.name, spawner.name)
        old = self.tasks.pop(key, None)
        if old is not None:
            old.cancel()
        self.tasks[key] = asyncio.ensure_future(self._renew(spawner, api, thaw(tokens), name, expires, timeout))

    async def _renew(self, spawner: Any, api: Any, tokens: dict[str, str], name: str, expires: float,
                     timeout: float) -> None:
        user, server, namespace = spawner.user, spawner.name, spawner.namespace
        issued, failures = time.time(), 0
        while True:
            if failures == 0:
                # In the last quarter of its life, spread over a tenth of it (many tokens expire together).
                lifetime = max(1.0, expires - issued)
                due = issued + lifetime * (0.75 - random.uniform(0.0, 0.1))
            else:  # again after a quarter of what is left, or (expired) backing off up to 10 minutes
                left = expires - time.time()
                due = time.time() + (left / 4 if left > 4 else min(600.0, 5.0 * 2 ** min(failures, 7)))
            await asyncio.sleep(max(0.5, due - time.time()))
            try:
                issuer = issuer_for(spawner, getattr(spawner, "authenticator", None))
                token, new_expires = await self._obtain(issuer, user, tokens)
                await self._patch(api, secret_body(name, namespace, user.name, spawner.hub_name, server,
                                                   spawner.pod_name, token, new_expires, rucio=tokens.get("rucio")), timeout)
                issued, expires, failures = time.time(), new_expires, 0
                self.log.info("cloudidentity: renewed %s's storage token (server %r), valid until %s", user.name, server,
                              _stamp(expires))
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status == 404:  # the Secret was deleted (the server stopped, or gc): nothing to renew
                    self.log.info("cloudidentity: %s's storage-token Secret %s/%s is gone; renewals end", user.name,
                                  namespace, name)
                    return
                failures += 1
                self.log.error("cloudidentity: %s's storage token (server %r) was renewed but not stored: %s",
                               user.name, server, describe(e))
            except Exception as e:
                failures += 1
                detail = e.admin_detail if isinstance(e, IdentityError) else describe(e)
                message = e.user_message if isinstance(e, IdentityError) else "Your storage token could not be renewed."
                final = isinstance(e, LoginExpired)
                self.log.error("cloudidentity: %s's storage token (server %r) was not renewed%s: %s; the current one "
                               "stays until %s", user.name, server, " and will not be until a new login" if final else "",
                               detail, _stamp(expires))
                await self._record_failure(api, name, namespace, message, timeout)
                if final:
                    state = await user.get_auth_state() or {}
                    self.stopped[(user.name, server)] = state.get("refresh_token")
                    self.tasks.pop((user.name, server), None)
                    return

    def stopped_for_this_login(self, spawner: Any, state: Mapping[str, Any] | None) -> bool:
        """Whether a refused login stopped the server's renewals and no new login came since."""
        key = (spawner.user.name, spawner.name)
        return key in self.stopped and self.stopped[key] == (state or {}).get("refresh_token")

    async def _record_failure(self, api: Any, name: str, namespace: str, message: str, timeout: float) -> None:
        """Say why in the Secret's ``error`` file (the token stays as it was)."""
        try:
            await api.patch_namespaced_secret(name, namespace, {"data": {"error": _b64(message)}},
                                              _request_timeout=timeout, _content_type="application/merge-patch+json")
        except Exception as e:  # the log line above already tells the admin
            self.log.warning("cloudidentity: could not record the failure in Secret %s/%s: %s", namespace, name, describe(e))

    async def stop(self, spawner: Any, api: Any, name: str, timeout: float) -> None:
        """Stop renewing the server's token and delete its Secret (it may be gone already)."""
        key = (spawner.user.name, spawner.name)
        task = self.tasks.pop(key, None)
        self.stopped.pop(key, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):  # its last request ends before the Secret goes
                await task
        try:
            await api.delete_namespaced_secret(name, spawner.namespace, _request_timeout=timeout)
        except ApiException as e:
            if e.status != 404:
                raise


_keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TokenKeeper] = weakref.WeakKeyDictionary()


def keeper_for(settings: Any) -> TokenKeeper:
    """The hub's keeper, shared by its spawners (one per event loop: the hub has one; a loop
    made after another closed - a new id maybe, never its keeper - gets a new one)."""
    loop = asyncio.get_running_loop()
    if loop not in _keepers:
        _keepers[loop] = TokenKeeper(settings)
    return _keepers[loop]
