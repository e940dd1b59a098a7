"""``cloudidentity-spawner credentials``: the notebook's cloud credentials, from any computer.

A laptop or an HPC login node asks the user's running server on the hub for what its
credentials endpoint (:mod:`.creds`) gives the notebook - temporary AWS keys of the user's role,
an Azure or Google access token, or for google-auth a credentials.json whose executable is this
command (the pod's token for its GKE cluster's pool, exchanged by Google's STS) - with a JupyterHub API token the user made on the hub's token page
(``<hub>/hub/token``, scope ``access:servers!user=<name>``). So
``credential_process = cloudidentity-spawner credentials --hub ... aws`` in ``~/.aws/config``
gives boto3, s3fs and the AWS CLI credentials that renew themselves, and the cloud's log names
the user's own identity.

Only the standard library: ``pip install --no-deps cloudidentity-spawner`` is enough. The token
comes from ``$JUPYTERHUB_API_TOKEN`` or ``--token-file``, never from the command line (other
users of the machine can read command lines). Every failure is one line on stderr and exit 1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SCOPE_HINT = "access:servers!user={user}"
_VALUE = re.compile(r"[A-Za-z0-9+/=._~:-]{1,8192}")
"""What a key, secret, session token, expiry or access token is made of (no quote, space,
``$``, ``;`` or newline): anything else is refused, never printed into a shell."""
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")


class ClientError(Exception):
    """One line for the person at the terminal."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The hub answers a request to a stopped server with a redirect to its spawn page (a web
    page, 200): follow none, so that is reported as what it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def read_token(token_file: str | None, environ: dict[str, str], hub: str = "") -> str:
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise ClientError(f"cannot read --token-file {token_file}: {e.strerror}") from None
        if not _TOKEN.fullmatch(token):
            raise ClientError(f"--token-file {token_file} does not hold one API token (it should be the token alone, "
                              "one line of printable characters)")
        return token
    token = environ.get("JUPYTERHUB_API_TOKEN", "").strip()
    own_hub = environ.get("JUPYTERHUB_API_URL", "")
    if token and own_hub and hub and _origin(own_hub) != _origin(hub):
        # In a notebook (or a batch job) of another hub, the variable is that hub's server token:
        # it must not be sent to --hub.
        raise ClientError(f"JUPYTERHUB_API_TOKEN here belongs to {_origin(own_hub)} (JUPYTERHUB_API_URL), not to "
                          f"--hub {_origin(hub)}: give the token for {_origin(hub)} with --token-file")
    if not token:
        raise ClientError("no API token: set JUPYTERHUB_API_TOKEN or give --token-file; make one on the hub's token "
                          "page (<hub>/hub/token) with scope access:servers!user=<your name>")
    if not _TOKEN.fullmatch(token):
        raise ClientError("JUPYTERHUB_API_TOKEN does not hold one API token (printable characters, no spaces)")
    return token


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _get(url: str, token: str, timeout: float) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}", "Accept": "application/json"})
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace"), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), dict(e.headers or {})
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ClientError(f"cannot reach the hub at {url.split('/hub/')[0].split('/user/')[0]}: {reason}") from None


def _said(body: str) -> str:
    """What the hub or the server said, in one line."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    message = data.get("error") or data.get("message") if isinstance(data, dict) else None
    # one line, without control characters (a terminal must not take escapes from a server)
    return "".join(c for c in " ".join(str(message).split()) if c.isprintable())[:300] if message else ""


def whoami(hub: str, token: str, timeout: float) -> str:
    """The name of the token's owner (any valid token may ask)."""
    status, body, _ = _get(f"{hub}/hub/api/user", token, timeout)
    if status == 200:
        try:
            return json.loads(body)["name"]
        except (ValueError, KeyError):
            raise ClientError(f"{hub}/hub/api/user did not answer as a JupyterHub does") from None
    if status in (401, 403):
        raise ClientError("the hub refused the API token (expired, revoked or mistyped): make a new one on its token "
                          "page (<hub>/hub/token)")
    raise ClientError(f"the hub answered {status} to who the token belongs to{': ' + _said(body) if _said(body) else ''}")


def _check_name(value: str, what: str) -> None:
    if value in (".", "..") or (what == "user" and not value):
        raise ClientError(f"{value!r} is not a {what} name")


def check_hub(hub: str, insecure_http: bool = False) -> str:
    """The hub's URL: https, or plain http to this computer (or with --insecure-http)."""
    parts = urllib.parse.urlsplit(hub)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment:
        raise ClientError(f"--hub must be the hub's URL, like https://hub.example.org, got {hub!r}")
    if parts.scheme == "http" and not insecure_http and not _loopback(parts.hostname):
        raise ClientError(f"--hub {hub} is plain http: the token and the credentials would cross the network in the "
                          "clear. Use the hub's https URL (or --insecure-http on a network you trust)")
    return hub.rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_url(hub: str, user: str, server: str) -> str:
    _check_name(user, "user")
    _check_name(server, "server")
    path = f"/user/{urllib.parse.quote(user, safe='')}/"
    if server:
        path += f"{urllib.parse.quote(server, safe='')}/"
    return hub + path


def fetch(hub: str, token: str, kind: str, *, user: str | None = None, server: str = "",
          query: dict[str, str] | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """The server's ``api/cloudcreds/<kind>`` answer (a JSON object), or ClientError saying why not."""
    owner = whoami(hub, token, timeout) if not user else None
    user = user or owner
    base = server_url(hub, user, server)
    url = f"{base}api/cloudcreds/{kind}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    status, body, headers = _get(url, token, timeout)
    name = f"{user}'s server" + (f" {server!r}" if server else "")
    said = _said(body)
    if status == 200:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "json" not in headers.get("Content-Type", ""):
            raise ClientError(f"{url} did not answer as a credentials endpoint does (no JSON object): is --hub the hub?")
        return answer
    if 300 <= status < 400:
        where = headers.get("Location", "")
        raise ClientError(f"{name} is not running, or the hub is behind a login page (redirected to {where[:200]}): "
                          f"start it at {hub}/hub/home, then try again")
    if status in (424, 503):
        raise ClientError(f"{name} is not running: start it at {hub}/hub/home, then try again")
    if status in (401, 403):
        if owner is None:  # --user: the server is someone's, the token may be another's
            raise ClientError(f"the hub or {name} refused the token: only {user}'s own tokens with scope "
                              f"{SCOPE_HINT.format(user=user)}, or tokens of those given access to it, are taken")
        raise ClientError(f"the hub or {name} refused the token: it needs scope {SCOPE_HINT.format(user=user)}")
    if status == 404 and not said:
        raise ClientError(f"{name} has no credentials endpoint (not started by CloudIdentitySpawner, or the "
                          "cloudidentity_spawner.creds extension is off in its image)")
    raise ClientError(f"{name} answered {status}" + (f": {said}" if said else ""))


def credentials_command(args: Any, environ: dict[str, str] | None = None, out: Any = None) -> int:
    """Run ``cloudidentity-spawner credentials``; print what was asked for, or one line on stderr."""
    environ = dict(os.environ if environ is None else environ)
    out = out or sys.stdout
    try:
        hub = check_hub(args.hub, args.insecure_http)
        token = read_token(args.token_file, environ, hub)
        if args.format in ("executable", "external-account") and args.cloud != "gcp":
            raise ClientError(f"--format {args.format} is for gcp")
        if args.cloud == "aws":
            answer = fetch(hub, token, "aws", user=args.user, server=args.server, query={"format": "json"})
            body = _aws_output(answer, args.format or "credential_process")
        elif args.cloud == "azure":
            if not args.resource:
                raise ClientError("azure needs --resource, e.g. --resource https://storage.azure.com")
            answer = fetch(hub, token, "azure", user=args.user, server=args.server, query={"resource": args.resource})
            body = _token_output(answer, args.format, "AZURE_ACCESS_TOKEN")
        elif args.format in ("executable", "external-account"):
            answer = fetch(hub, token, "gcp", user=args.user, server=args.server, query={"format": "subject_token"})
            body = _google_executable(answer, environ) if args.format == "executable" else _google_external_account(answer, args)
        else:
            answer = fetch(hub, token, "gcp", user=args.user, server=args.server)
            body = _token_output(answer, args.format, "GOOGLE_OAUTH_ACCESS_TOKEN")
    except ClientError as e:
        print(f"cloudidentity-spawner credentials: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback (it could carry the token into a tool's log)
        print(f"cloudidentity-spawner credentials: failed: {type(e).__name__}", file=sys.stderr)
        return 1
    out.write(body if body.endswith("\n") else body + "\n")
    return 0


def _checked(answer: dict[str, Any], *keys: str) -> dict[str, str]:
    """The answer's *keys*, each a plain token-like value (what a shell and a JSON reader take as is)."""
    values = {}
    for key in keys:
        value = answer.get(key)
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise ClientError(f"the server's answer has no usable {key}")
        values[key] = value
    return values


def _aws_output(answer: dict[str, Any], fmt: str) -> str:
    """Made here from the checked values (not the server's text): AWS ``credential_process``
    JSON, ``export`` lines, or the JSON answer."""
    creds = _checked(answer, "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
    if fmt == "env":
        return "".join(f"export {variable}={shlex.quote(creds[key])}\n" for variable, key in (
            ("AWS_ACCESS_KEY_ID", "AccessKeyId"), ("AWS_SECRET_ACCESS_KEY", "SecretAccessKey"),
            ("AWS_SESSION_TOKEN", "SessionToken")))
    if fmt == "json":
        return json.dumps(answer)
    return json.dumps({"Version": 1, **creds})


def _token_output(answer: dict[str, Any], fmt: str | None, variable: str) -> str:
    token = _checked(answer, "access_token")["access_token"]
    if fmt == "json":
        return json.dumps(answer)
    if fmt == "env":
        return f"export {variable}={shlex.quote(token)}\n"
    return token


_JWT = re.compile(r"[A-Za-z0-9_-]{2,4096}\.[A-Za-z0-9_-]{2,8192}\.[A-Za-z0-9_-]{2,4096}")
_GKE_AUDIENCE = re.compile(r"identitynamespace:[a-z][a-z0-9-]{4,28}[a-z0-9]\.svc\.id\.goog:https://container\.googleapis\.com/"
                           r"v1/projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z][a-z0-9-]{1,62}/clusters/[a-z][-a-z0-9]{0,39}")
_GSA = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]\.iam\.gserviceaccount\.com")
SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
GOOGLE_STS = "https://sts.googleapis.com/v1/token"
GOOGLE_IMPERSONATION = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{email}:generateAccessToken"


def _subject(answer: dict[str, Any]) -> tuple[str, int]:
    token, expires = answer.get("subject_token"), answer.get("expiration_time")
    if answer.get("token_type") != SUBJECT_TOKEN_TYPE or not isinstance(token, str) or not _JWT.fullmatch(token):
        raise ClientError("the server's answer has no usable subject_token")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise ClientError("the server's answer has no usable expiration_time")
    return token, expires


def _google_executable(answer: dict[str, Any], environ: dict[str, str]) -> str:
    """google-auth's executable-sourced response (version 1), made from the checked token: the
    pod's token for its cluster's pool, which Google's STS exchanges for the server's identity.
    Run by google-auth (which says what its file names), a file the server's identity no longer
    matches (its rule moved to another cluster or account) is told to be made again."""
    token, expires = _subject(answer)
    audience = environ.get("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE")  # set when google-auth runs it
    email = environ.get("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL") or None
    if audience and (audience != answer.get("audience") or email != (answer.get("service_account") or None)):
        raise ClientError("the credentials file no longer matches your server's identity (its audience or service "
                          "account changed): make it again with --format external-account")
    return json.dumps({"version": 1, "success": True, "token_type": SUBJECT_TOKEN_TYPE, "id_token": token,
                       "expiration_time": expires})


def _google_external_account(answer: dict[str, Any], args: Any) -> str:
    """A ``credentials.json`` (``external_account``) whose executable is this command with
    ``--format executable``: google-auth runs it for a token when it needs one, exchanges it at
    Google's STS for the server's principal, and impersonates the server's Google service account
    if it has one. The API token is not in it (the command reads it as this one did)."""
    _subject(answer)
    audience, email = answer.get("audience"), answer.get("service_account")
    if not isinstance(audience, str) or not _GKE_AUDIENCE.fullmatch(audience):
        raise ClientError("the server's answer has no usable audience")
    if email is not None and (not isinstance(email, str) or not _GSA.fullmatch(email)):
        raise ClientError("the server's answer has no usable service_account")
    program = sys.argv[0] if os.path.basename(sys.argv[0]) == "cloudidentity-spawner" else "cloudidentity-spawner"
    command = [os.path.abspath(program) if os.sep in program else program, "credentials", "--hub", args.hub.rstrip("/")]
    for flag, value in (("--server", args.server), ("--user", args.user), ("--token-file", args.token_file)):
        if value:  # one argument each: a value starting with '-' is not read as a flag
            command.append(f"{flag}={os.path.abspath(os.path.expanduser(value)) if flag == '--token-file' else value}")
    if args.insecure_http:
        command.append("--insecure-http")
    command += ["gcp", "--format", "executable"]
    config = {"type": "external_account", "audience": audience, "subject_token_type": SUBJECT_TOKEN_TYPE,
              "token_url": GOOGLE_STS,
              "credential_source": {"executable": {"command": shlex.join(command), "timeout_millis": 30000}}}
    if email:
        config["service_account_impersonation_url"] = GOOGLE_IMPERSONATION.format(email=email)
    return json.dumps(config, indent=2)
