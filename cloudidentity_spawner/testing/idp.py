"""A real OpenID provider with RFC 8693 token exchange, for tests: IdentityPython's ``idpyoidc``
server, configured like ESCAPE IAM for a hub's client (token exchange and refresh grants, an
exchange policy with allowed audiences and storage paths per user), served on 127.0.0.1.

The provider is idpyoidc's own: sessions, grants, JWT access tokens, the token endpoint, client
authentication, refresh and exchange rules. Only the HTTP framing and the policy (what ESCAPE
IAM's scope policies decide) are written here:

- an exchanged token's audience must be one of *audiences*;
- a ``storage.*:<path>`` scope is granted only under ``<root>/<user>`` of one of *storage_roots*
  (alice may get ``/escape/users/alice/...``, never ``/escape/users/bob``);
- other scopes only as the login had them; ``offline_access`` never.

``login(user)`` makes a user's login tokens in process (what the authorization-code flow at
login leaves in JupyterHub's ``auth_state``); ``revoke_login`` revokes its refresh token.
"""

from __future__ import annotations

import base64
import json
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from aiohttp import web

CLIENT_ID, CLIENT_SECRET = "jupyterhub", "hub-client-secret"
_CRYPT = {"kwargs": {"keys": {"key_defs": [{"type": "OCT", "use": ["enc"], "kid": "password"},
                                           {"type": "OCT", "use": ["enc"], "kid": "salt"}]}, "iterations": 1}}


def _exchange_policy(request: Any, context: Any, subject_token: Any, audiences: Sequence[str] = (),
                     storage_roots: Sequence[str] = ()) -> Any:
    """What ESCAPE IAM's exchange policy decides, for idpyoidc's token-exchange helper."""
    from idpyoidc.message.oidc import TokenErrorResponse

    user = context.session_manager.get_session_info_by_token(subject_token.value, handler_key="access_token")["user_id"]
    if not request.get("audience") or not set(request["audience"]) <= set(audiences):
        return TokenErrorResponse(error="invalid_target", error_description="audience not allowed for this client")
    for scope in request.get("scope", []):
        if scope.startswith("storage."):
            path = scope.partition(":")[2]
            if not any(path == f"{root}/{user}" or path.startswith(f"{root}/{user}/") for root in storage_roots):
                return TokenErrorResponse(error="invalid_scope", error_description=f"{scope} is not {user}'s to have")
        elif scope == "offline_access" or scope not in subject_token.scope:
            return TokenErrorResponse(error="invalid_scope", error_description=f"{scope} not allowed")
    return request


class OpenIDProvider:
    """An idpyoidc authorization server with one client (the hub's)."""

    def __init__(self, users: Sequence[str], audiences: Sequence[str] = ("https://wlcg.cern.ch/jwt/v1/any",),
                 storage_roots: Sequence[str] = ("/escape/users", "/escape/scratch"), token_lifetime: int = 600):
        from idpyoidc.server import Server
        from idpyoidc.server.authz import AuthzHandling
        from idpyoidc.server.client_authn import verify_client
        from idpyoidc.server.configure import ASConfiguration
        from idpyoidc.server.user_authn.authn_context import INTERNETPROTOCOLPASSWORD
        from idpyoidc.server.user_info import UserInfo

        self.users, self.url = list(users), ""
        self._lock = threading.Lock()
        self._folder = tempfile.TemporaryDirectory(prefix="idp-")
        self.requests: list[dict[str, str]] = []
        """Every token request's grant type and (for an exchange) audience and scope."""
        jwt = {"class": "idpyoidc.server.token.jwt_token.JWTToken", "kwargs": {"lifetime": token_lifetime, "alg": "RS256"}}
        conf = {
            "issuer": "http://127.0.0.1",  # the JWT issuer; the URL it is served at comes later
            "httpc_params": {"verify": False, "timeout": 5},
            "keys": {"uri_path": "jwks.json", "key_defs": [{"type": "RSA", "use": ["sig"]}]},
            "endpoint": {"token": {"path": "token", "class": "idpyoidc.server.oauth2.token.Token",
                                   "kwargs": {"client_authn_method": ["client_secret_basic"]}}},
            "authentication": {"anon": {"acr": INTERNETPROTOCOLPASSWORD, "class": "idpyoidc.server.user_authn.user.NoAuthn",
                                        "kwargs": {"user": self.users[0]}}},
            "userinfo": {"class": UserInfo, "kwargs": {"db": {u: {"sub": u} for u in self.users}}},
            "client_authn": verify_client,
            "authz": {"class": AuthzHandling, "kwargs": {"grant_config": {"usage_rules": {
                "authorization_code": {"supports_minting": ["access_token", "refresh_token"], "max_usage": 1},
                "access_token": {"supports_minting": ["access_token"], "expires_in": token_lifetime},
                "refresh_token": {"supports_minting": ["access_token", "refresh_token"], "expires_in": 86400}},
                "expires_in": 86400}}},
            "token_handler_args": {
                "key_conf": {"key_defs": [{"type": "RSA", "use": ["sig"]}]},
                "code": {"lifetime": 600, "kwargs": {"crypt_conf": _CRYPT}},
                "token": jwt,
                "refresh": {**jwt, "kwargs": {"lifetime": 86400, "alg": "RS256"}},
            },
            "session_params": {"encrypter": _CRYPT},
        }
        self.server = Server(ASConfiguration(conf=conf, base_path=self._folder.name), cwd=self._folder.name)
        context = self.server.context
        context.map_supported_to_preferred()
        storage = [f"storage.{verb}:{root}/{user}" for verb in ("read", "modify", "create", "stage")
                   for root in storage_roots for user in self.users]
        context.cdb[CLIENT_ID] = {
            "client_secret": CLIENT_SECRET, "client_salt": "salt", "redirect_uris": [("http://127.0.0.1/hub/oauth_callback", None)],
            "token_endpoint_auth_method": "client_secret_basic", "response_types": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"],
            # Storage scopes of every user are this client's to ask for; the policy decides whose.
            "allowed_scopes": ["openid", "profile", "offline_access", *storage],
            "token_exchange": {
                "subject_token_types_supported": ["urn:ietf:params:oauth:token-type:access_token"],
                "requested_token_types_supported": ["urn:ietf:params:oauth:token-type:access_token"],
                "policy": {"": {"function": _exchange_policy,
                                "kwargs": {"audiences": list(audiences), "storage_roots": list(storage_roots)}}},
            },
        }
        self.token_endpoint = self.server.get_endpoint("token")

    # -- in process -----------------------------------------------------------------

    def login(self, user: str, scope: Sequence[str] = ("openid", "offline_access")) -> dict[str, str]:
        """The tokens a login by *user* leaves (access and refresh token), as the code flow gives them."""
        from idpyoidc.message.oidc import AuthorizationRequest
        from idpyoidc.server.authn_event import create_authn_event

        with self._lock:
            context = self.server.context
            request = AuthorizationRequest(client_id=CLIENT_ID, redirect_uri="http://127.0.0.1/hub/oauth_callback",
                                           scope=list(scope), state="state", response_type="code")
            manager = context.session_manager
            session = manager.create_session(create_authn_event(user), request, user, client_id=CLIENT_ID)
            grant = context.authz(session, request)
            code = grant.mint_token(session_id=session, context=context, token_class="authorization_code",
                                    token_handler=manager.token_handler["authorization_code"],
                                    usage_rules=grant.usage_rules.get("authorization_code", {}))
            parsed = self.token_endpoint.parse_request(
                {"grant_type": "authorization_code", "code": code.value, "redirect_uri": request["redirect_uri"],
                 "state": "state"}, http_info={"headers": {"authorization": self._basic()}})
            answer = self.token_endpoint.process_request(parsed)
            return {k: answer["response_args"][k] for k in ("access_token", "refresh_token")}

    def revoke_login(self, refresh_token: str) -> None:
        """Revoke a login's refresh token (the user logged out everywhere, or an admin did it)."""
        with self._lock:
            manager = self.server.context.session_manager
            info = manager.get_session_info_by_token(refresh_token, handler_key="refresh_token")
            manager.find_token(info["branch_id"], refresh_token).revoked = True

    def jwks(self) -> dict[str, Any]:
        """The keys access tokens are signed with."""
        return self.server.context.keyjar.export_jwks(issuer_id="")

    @staticmethod
    def _basic() -> str:
        return "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()

    # -- over HTTP --------------------------------------------------------------------

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            from idpyoidc.message import Message

            form = dict(await request.post())
            self.requests.append({k: str(form[k]) for k in ("grant_type", "audience", "scope") if k in form})
            headers = {"authorization": request.headers.get("Authorization", "")}
            with self._lock:
                try:
                    parsed = self.token_endpoint.parse_request(form, http_info={"headers": headers})
                    if isinstance(parsed, Message) and "error" in parsed:
                        return web.json_response(parsed.to_dict(), status=400 if parsed["error"] != "invalid_client" else 401)
                    answer = self.token_endpoint.process_request(parsed)
                except Exception as e:  # idpyoidc raises for some bad tokens (ToOld: expired)
                    return web.json_response({"error": "invalid_grant", "error_description": f"{type(e).__name__}: {e}"},
                                             status=400)
                if isinstance(answer, Message) and "error" in answer:
                    return web.json_response(answer.to_dict(), status=400)
                if "error" in answer:
                    return web.json_response({k: answer[k] for k in ("error", "error_description") if k in answer}, status=400)
                response = self.token_endpoint.do_response(**answer)
            return web.Response(text=response["response"], content_type="application/json")

        app = web.Application()
        app.router.add_post("/token", token)
        return app


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's claims, unchecked (to look at what a token says)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
