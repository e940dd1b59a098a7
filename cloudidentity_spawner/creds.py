"""Short-lived credentials for the notebook's own cloud identity, as a Jupyter server extension.

In the user's server (enabled by default when the package is installed):

* ``GET /api/cloudcreds/aws`` - ``sts:AssumeRoleWithWebIdentity`` with the pod's IRSA role
  and projected token (or, with EKS Pod Identity, the node agent's credentials for the pod's
  association); JSON with the credentials and expiry.
  ``?format=credential_process`` gives AWS CLI ``credential_process`` JSON (Version 1),
  ``?format=env`` gives ``export`` lines.
* ``GET /api/cloudcreds/gcp`` - an access token for the pod's Google identity (GKE
  metadata server), with its expiry. ``?format=subject_token``: where the rule names its GKE
  ``cluster``, the pod's token for the cluster's Workload Identity pool, which Google's STS
  exchanges for the same identity (google-auth's executable-sourced credential elsewhere).
* ``GET /api/cloudcreds/token`` - the server's storage token (rules with ``tokens``), its
  expiry, and why the hub's last renewal failed if it did (``error``).
* ``GET /api/cloudcreds/azure?resource=https://storage.azure.com`` - an access token for the
  resource the caller names, for the pod's Azure managed identity: the projected token
  (AKS Workload Identity) exchanged at Microsoft Entra, with its expiry.

Each route is authenticated *and authorized* like the server's own APIs: the caller needs
``execute`` on ``kernels`` from the server's Authorizer (with JupyterHub's granular scopes,
``custom:jupyter_server:execute:*``). Whoever may run code in this server already acts as its
cloud identity; whoever may only read it (a viewer given ``access:servers`` and read scopes) gets
403 here as on ``POST /api/kernels``.
Credentials are never logged. The AWS call is unsigned (web identity needs no keys), so
boto3 is not needed in the user image; ``AWS_ENDPOINT_URL_STS`` / ``AWS_ENDPOINT_URL`` and
``GCE_METADATA_HOST`` and ``AZURE_AUTHORITY_HOST`` are honoured like the SDKs honour them.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import inspect
import json
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .claims import jwt_claims


class CredentialsError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _session_name(user: str) -> str:
    """STS session names: 2-64 of ``[\\w+=,.@-]``; tied to the user so CloudTrail shows who."""
    cleaned = re.sub(r"[^\w+=,.@-]", "-", f"jupyter-{user}")
    return cleaned[:64]


def signed_caller_identity_request(endpoint: str, region: str, credentials: dict[str, str],
                                   now: datetime.datetime) -> tuple[str, dict[str, str]]:
    """The URL and headers of a ``GetCallerIdentity`` GET signed with AWS Signature Version 4
    (signed here: the user image need not have an AWS SDK)."""
    url = urllib.parse.urlsplit(endpoint)
    if url.hostname == "sts.amazonaws.com":  # the global endpoint signs for us-east-1
        region = "us-east-1"
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    query = "Action=GetCallerIdentity&Version=2011-06-15"
    headers = {"host": url.netloc, "x-amz-date": stamp}
    if credentials.get("SessionToken"):
        headers["x-amz-security-token"] = credentials["SessionToken"]
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["GET", url.path or "/", query, *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed,
                           hashlib.sha256(b"").hexdigest()])
    scope = f"{day}/{region}/sts/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + credentials["SecretAccessKey"]).encode()
    for part in (day, region, "sts", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials['AccessKeyId']}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    del headers["host"]
    return f"{url.scheme}://{url.netloc}{url.path or '/'}?{query}", headers


def sts_endpoint(env: dict[str, str]) -> str:
    explicit = env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL")
    if explicit:
        return explicit.rstrip("/") + "/"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region and env.get("AWS_STS_REGIONAL_ENDPOINTS", "regional") == "regional":
        return f"https://sts.{region}.amazonaws.com/"
    return "https://sts.amazonaws.com/"


async def container_credentials(env: dict[str, str]) -> dict[str, Any]:
    """EKS Pod Identity: the node's agent hands out the association's role credentials for the
    pod's projected token (``AWS_CONTAINER_CREDENTIALS_FULL_URI``)."""
    url = env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    headers = {}
    token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                headers["Authorization"] = f.read().strip()
        except OSError as e:
            raise CredentialsError(409, f"The Pod Identity token file cannot be read: {e.strerror}") from None
    try:
        response = await AsyncHTTPClient().fetch(url, headers=headers, request_timeout=20)
    except HTTPClientError as e:
        raise CredentialsError(502, f"the Pod Identity agent refused the request ({e.code})") from None
    except OSError as e:
        raise CredentialsError(502, f"the Pod Identity agent is not reachable: {e}") from None
    data = json.loads(response.body)
    credentials = {
        "AccessKeyId": data["AccessKeyId"],
        "SecretAccessKey": data["SecretAccessKey"],
        "SessionToken": data.get("Token", ""),
        "Expiration": data.get("Expiration", ""),
    }
    # The agent does not say whose they are: STS does (the session EKS named), the hub the role.
    return {**credentials, "AssumedRoleArn": await caller_arn(env, credentials),
            "RoleArn": env.get("CLOUDIDENTITY_AWS_ROLE_ARN") or None}


async def caller_arn(env: dict[str, str], credentials: dict[str, str]) -> str | None:
    """``sts:GetCallerIdentity`` with *credentials*: the assumed-role session's ARN, or None if
    STS cannot be asked."""
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    url, headers = signed_caller_identity_request(sts_endpoint(env), region, credentials,
                                                  datetime.datetime.now(datetime.timezone.utc))
    try:
        response = await AsyncHTTPClient().fetch(HTTPRequest(url, headers=headers, request_timeout=20))
    except (HTTPClientError, OSError):
        return None
    arn = ET.fromstring(response.body).find(".//{*}Arn")
    return None if arn is None else arn.text


async def aws_credentials(user: str, env: dict[str, str], duration: int = 3600) -> dict[str, Any]:
    if env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") and not env.get("AWS_ROLE_ARN"):
        return await container_credentials(env)
    role_arn = env.get("AWS_ROLE_ARN")
    token_file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    if not role_arn or not token_file:
        raise CredentialsError(
            404,
            "This server has no AWS identity: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE are not set "
            "(no IRSA role on this server's ServiceAccount), nor AWS_CONTAINER_CREDENTIALS_FULL_URI (no EKS Pod Identity).",
        )
    try:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise CredentialsError(409, f"The web identity token file cannot be read: {e.strerror}") from None
    body = urllib.parse.urlencode({
        "Action": "AssumeRoleWithWebIdentity",
        "Version": "2011-06-15",
        "RoleArn": role_arn,
        # The pod's own session name when the hub set one (s3_sts): the same name in the store's log.
        "RoleSessionName": env.get("AWS_ROLE_SESSION_NAME") or _session_name(user),
        "WebIdentityToken": token,
        "DurationSeconds": str(duration),
    })
    request = HTTPRequest(sts_endpoint(env), method="POST", body=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, request_timeout=20)
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        code = "unknown"
        if e.response is not None and e.response.body:
            match = re.search(rb"<Code>([^<]+)</Code>", e.response.body)
            code = match.group(1).decode() if match else code
        raise CredentialsError(502, f"STS refused AssumeRoleWithWebIdentity for {role_arn}: {code}") from None
    except OSError as e:
        raise CredentialsError(502, f"STS is not reachable: {e}") from None
    root = ET.fromstring(response.body)
    # Any namespace: AWS's (https://sts.amazonaws.com/doc/2011-06-15/), or none (Ceph RGW).
    creds = root.find(".//{*}Credentials")
    assumed = root.find(".//{*}AssumedRoleUser/{*}Arn")
    if creds is None:
        raise CredentialsError(502, "STS answered without credentials")

    def field(name: str) -> str:
        return creds.findtext(f"{{*}}{name}", default="")

    return {
        "AccessKeyId": field("AccessKeyId"),
        "SecretAccessKey": field("SecretAccessKey"),
        "SessionToken": field("SessionToken"),
        "Expiration": field("Expiration"),
        "AssumedRoleArn": None if assumed is None else assumed.text,
        "RoleArn": role_arn,
    }


async def gcp_token(env: dict[str, str]) -> dict[str, Any]:
    host = env.get("GCE_METADATA_HOST", "metadata.google.internal")
    url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    try:
        response = await AsyncHTTPClient().fetch(url, headers={"Metadata-Flavor": "Google"}, request_timeout=10)
    except HTTPClientError as e:
        raise CredentialsError(502, f"the metadata server refused the token request ({e.code})") from None
    except OSError:
        raise CredentialsError(
            404, "This server has no Google identity: the GKE metadata server is not reachable (no Workload Identity)."
        ) from None
    data = json.loads(response.body)
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(data["expires_in"]))
    return {
        "access_token": data["access_token"],
        "token_type": data.get("token_type", "Bearer"),
        "expires_in": int(data["expires_in"]),
        "expiry": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def gcp_subject_token(env: dict[str, str]) -> dict[str, Any]:
    """The pod's token for its cluster's Workload Identity pool (the rule names its ``cluster``),
    what Google's STS exchanges for the pod's identity: for google-auth's executable-sourced
    credential elsewhere, with the STS audience and the account to impersonate (if any)."""
    path, audience = env.get("CLOUDIDENTITY_GCP_TOKEN_FILE"), env.get("CLOUDIDENTITY_GCP_STS_AUDIENCE")
    if not path or not audience:
        raise CredentialsError(404, "This server's Google identity cannot be used elsewhere: its rule names no GKE "
                                    "'cluster' (ask your hub admin).")
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        expires = int((jwt_claims(token) or {})["exp"])
    except (OSError, KeyError, TypeError, ValueError):
        raise CredentialsError(502, "the pod's Workload Identity token is missing or unreadable") from None
    return {"token_type": SUBJECT_TOKEN_TYPE, "subject_token": token, "expiration_time": expires, "audience": audience,
            "service_account": env.get("CLOUDIDENTITY_GCP_SERVICE_ACCOUNT") or None}


def storage_token(env: dict[str, str]) -> dict[str, Any]:
    """The server's storage token as the hub keeps it renewed (``BEARER_TOKEN_FILE`` and the
    ``expires_at`` and ``error`` files beside it, from the hub's Secret), with its expiry, and
    why the last renewal failed, if it did."""
    path = env.get("BEARER_TOKEN_FILE")
    if not path:
        raise CredentialsError(404, "This server has no storage token: its rule has no 'tokens' (ask your hub admin).")
    folder = os.path.dirname(path)

    def read(name: str) -> str:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return f.read().strip()

    try:
        token, expires_at = read(os.path.basename(path)), read("expires_at")
        error = read("error")
    except OSError:
        raise CredentialsError(502, "the storage token's files are missing (the Secret is not mounted)") from None
    try:
        when = datetime.datetime.strptime(expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise CredentialsError(502, "the storage token's expiry is unreadable") from None
    left = int((when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
    return {"access_token": token, "token_type": "Bearer", "expires_at": expires_at, "expires_in": max(0, left),
            "expired": left <= 0, "error": error or None}


_RESOURCE = re.compile(r"(https://[A-Za-z0-9.-]+(:[0-9]+)?(/[\w./-]*)?|api://[\w.-]+(/[\w.-]*)?)")


async def azure_token(env: dict[str, str], resource: str) -> dict[str, Any]:
    """An access token for *resource* (``https://storage.azure.com``), for the managed identity the
    Workload Identity webhook configured (client id, tenant, projected token file): the
    client-credentials grant with the projected token as the client assertion, as azure-identity's
    WorkloadIdentityCredential makes it."""
    token_file, client, tenant = (env.get(k) for k in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"))
    if not (token_file and client and tenant):
        raise CredentialsError(404, "This server has no Azure identity: AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID and "
                                    "AZURE_TENANT_ID are not set (no AKS Workload Identity for its ServiceAccount).")
    if not _RESOURCE.fullmatch(resource or ""):
        raise CredentialsError(400, "give the resource to get a token for, e.g. ?resource=https://storage.azure.com")
    authority = env.get("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/").rstrip("/")
    if "://" not in authority:  # as azure-identity: a bare host means https
        authority = "https://" + authority
    parsed = urllib.parse.urlparse(authority)
    if parsed.scheme != "https" and parsed.hostname not in ("127.0.0.1", "localhost"):
        raise CredentialsError(500, f"AZURE_AUTHORITY_HOST must be https, got {authority!r}")
    try:
        with open(token_file, encoding="utf-8") as f:
            assertion = f.read().strip()
    except OSError:
        raise CredentialsError(500, "the projected ServiceAccount token cannot be read") from None
    body = urllib.parse.urlencode({
        "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_id": client,
        "grant_type": "client_credentials",
        "scope": resource.rstrip("/") + "/.default",
    })
    request = HTTPRequest(f"{authority}/{urllib.parse.quote(tenant)}/oauth2/v2.0/token", method="POST", body=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, request_timeout=20)
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        detail = ""
        if e.response is not None and e.response.body:
            try:
                detail = json.loads(e.response.body).get("error_description", "").splitlines()[0]
            except (ValueError, AttributeError, IndexError):
                detail = ""
        raise CredentialsError(502, f"Microsoft Entra refused the token request ({e.code}){': ' + detail if detail else ''}") from None
    except OSError as e:
        raise CredentialsError(502, f"Microsoft Entra did not answer: {e}") from None
    data = json.loads(response.body)
    lifetime = int(data.get("expires_in", 3600))
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lifetime)
    return {"access_token": data["access_token"], "token_type": data.get("token_type", "Bearer"), "expires_in": lifetime,
            "expiry": expires.strftime("%Y-%m-%dT%H:%M:%SZ"), "resource": resource}


#: Credentials are worth exactly what running code in the server is worth: code in a kernel can
#: read the projected token and exchange it itself. So the routes ask the Authorizer for the
#: action and resource that gate kernels, and any authorizer that limits execution limits these.
CREDENTIALS_ACTION, CREDENTIALS_RESOURCE = "execute", "kernels"


class _CredentialsHandler(APIHandler):
    auth_resource = CREDENTIALS_RESOURCE

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    def _fail(self, error: CredentialsError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": str(error)}))

    async def _answer(self, make: Any) -> None:
        """Finish with what *make* (a call, maybe a coroutine) answers as JSON, or its error."""
        try:
            answer = make()
            if inspect.isawaitable(answer):
                answer = await answer
        except CredentialsError as e:
            return self._fail(e)
        self.finish(json.dumps(answer))

    def _user_name(self) -> str:
        user = self.current_user
        return getattr(user, "username", None) or getattr(user, "name", None) or str(user)


class AWSCredentialsHandler(_CredentialsHandler):
    @web.authenticated
    @authorized(CREDENTIALS_ACTION)
    async def get(self) -> None:
        fmt = self.get_argument("format", "json")
        if fmt not in ("json", "credential_process", "env"):
            return self._fail(CredentialsError(400, "format must be json, credential_process or env"))
        try:
            creds = await aws_credentials(self._user_name(), dict(os.environ), self.settings.get("cloudcreds_duration", 3600))
        except CredentialsError as e:
            return self._fail(e)
        if fmt == "env":
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            return self.finish(
                f"export AWS_ACCESS_KEY_ID={creds['AccessKeyId']}\n"
                f"export AWS_SECRET_ACCESS_KEY={creds['SecretAccessKey']}\n"
                f"export AWS_SESSION_TOKEN={creds['SessionToken']}\n"
            )
        if fmt == "credential_process":
            creds = {"Version": 1, **{k: creds[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")}}
        self.finish(json.dumps(creds))


class GCPTokenHandler(_CredentialsHandler):
    @web.authenticated
    @authorized(CREDENTIALS_ACTION)
    async def get(self) -> None:
        if self.get_argument("format", "") == "subject_token":
            return await self._answer(lambda: gcp_subject_token(dict(os.environ)))
        await self._answer(lambda: gcp_token(dict(os.environ)))


class StorageTokenHandler(_CredentialsHandler):
    @web.authenticated
    @authorized(CREDENTIALS_ACTION)
    async def get(self) -> None:
        await self._answer(lambda: storage_token(dict(os.environ)))


class AzureTokenHandler(_CredentialsHandler):
    @web.authenticated
    @authorized(CREDENTIALS_ACTION)
    async def get(self) -> None:
        await self._answer(lambda: azure_token(dict(os.environ), self.get_argument("resource", "")))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "cloudidentity_spawner.creds"}]


class _Guard(_CredentialsHandler):
    """What a served credentials route keeps whatever its handler defines: the server's own
    request checks, who the caller is and what they may do, and which methods are answered."""

    SUPPORTED_METHODS = ("GET", "OPTIONS")  # OPTIONS: the server's CORS preflight, no credentials
    auth_resource = CREDENTIALS_RESOURCE

    async def prepare(self) -> None:
        # The server's own (host, origin, who the caller is); never the handler's, which could
        # answer before any of it.
        await APIHandler.prepare(self)


# The handler comes after the guard in the method order: these stay the server's.
for _name in ("current_user", "get_current_user", "authorizer", "identity_provider", "check_host", "check_origin",
              "check_xsrf_cookie", "_execute", "options", "set_default_headers"):
    if _name not in _Guard.__dict__:
        setattr(_Guard, _name, next(vars(c)[_name] for c in _CredentialsHandler.__mro__ if _name in vars(c)))


_SERVER_CLASSES = set(_CredentialsHandler.__mro__)
_SERVER_STEPS = {"prepare", "current_user", "get_current_user", "authorizer", "identity_provider", "check_host",
                 "check_origin", "check_xsrf_cookie", "_execute", "auth_resource", "options", "set_default_headers"}


def guarded(handler: type) -> type:
    """*handler* serving GET only (and the server's CORS preflight), and only to a caller the
    server authenticates and its Authorizer allows to execute code (as the built-in routes):
    a provider's route cannot skip either, nor answer another method."""
    if not (isinstance(handler, type) and issubclass(handler, web.RequestHandler)) or not callable(getattr(handler, "get", None)):
        raise TypeError(f"{handler!r} is not a tornado RequestHandler with a get method")
    # The server's checks run in the request's prepare chain, which reaches a handler's own
    # prepare; a handler that redefines any step of them could answer before them.
    own = {name for c in handler.__mro__ if c not in _SERVER_CLASSES for name in vars(c)}
    redefined = sorted(own & _SERVER_STEPS)
    if redefined:
        raise TypeError(f"{handler.__name__} redefines {', '.join(redefined)}: a credentials route defines get "
                        "(and helpers of its own) only")

    class Guarded(_Guard, handler):  # type: ignore[misc, valid-type]
        @web.authenticated
        @authorized(CREDENTIALS_ACTION, CREDENTIALS_RESOURCE)
        async def get(self, *args: Any, **kwargs: Any) -> None:
            result = handler.get(self, *args, **kwargs)
            if result is not None and hasattr(result, "__await__"):
                await result

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{handler.__name__}"
    return Guarded


_ROUTE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def credentials_routes(log: Any) -> list[tuple[str, type]]:
    """``(name, handler)`` for ``/api/cloudcreds/<name>``: each provider's
    (:meth:`.providers.base.Provider.credentials_routes`), the first to claim a name keeps it.
    A site's provider that cannot be loaded costs its own routes only (logged)."""
    from .providers import registered
    from .providers.builtin import BUILTIN

    try:
        providers = list(registered().values())
    except Exception as e:  # a site's broken entry point: the built-in routes still work
        log.error("cloudidentity-spawner: site providers not loaded (%s); serving the built-in credentials routes", e)
        providers = list(BUILTIN)
    routes: dict[str, type] = {"token": guarded(StorageTokenHandler)}  # storage tokens: any rule's, not a provider's
    for provider in providers:
        try:
            offered = [(name, handler) for name, handler in provider.credentials_routes()]
        except Exception as e:  # one provider's mistake costs its own routes only
            log.error("cloudidentity-spawner: provider %r's credentials routes not served: %s: %s", provider.key,
                      type(e).__name__, e)
            continue
        for name, handler in offered:
            if not isinstance(name, str) or not _ROUTE.fullmatch(name) or name in routes:
                log.error("cloudidentity-spawner: provider %r's credentials route %r is %s; not served", provider.key,
                          name, "taken" if name in routes else "not a plain lower-case name")
                continue
            try:
                routes[name] = guarded(handler)
            except TypeError as e:
                log.error("cloudidentity-spawner: provider %r's credentials route %r not served: %s", provider.key, name, e)
    return list(routes.items())


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from jupyter_server.utils import url_path_join

    base = serverapp.web_app.settings["base_url"]
    routes = credentials_routes(serverapp.log)
    serverapp.web_app.add_handlers(".*$", [(url_path_join(base, f"/api/cloudcreds/{name}"), h) for name, h in routes])
    serverapp.log.info("cloudidentity-spawner: %s enabled", ", ".join(f"/api/cloudcreds/{name}" for name, _ in routes))
