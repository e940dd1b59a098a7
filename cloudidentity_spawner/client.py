"""``cloudidentity-spawner credentials``: the notebook's cloud credentials, from any computer.

A laptop or an HPC login node asks the user's running server on the hub for what its
credentials endpoint (:mod:`.creds`) gives the notebook - temporary AWS keys of the user's role,
an Azure access token - with a JupyterHub API token the user made on the hub's token page
(``<hub>/hub/token``, scope ``access:servers!user=<name>``). So
``credential_process = cloudidentity-spawner credentials --hub ... aws`` in ``~/.aws/config``
gives boto3, s3fs and the AWS CLI credentials that renew themselves, and the cloud's log names
the user's own identity.

Only the standard library: ``pip install --no-deps cloudidentity-spawner`` is enough. The token
comes from ``$JUPYTERHUB_API_TOKEN`` or ``--token-file``, never from the command line (other
users of the machine can read command lines). Every failure is one line on stderr and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SCOPE_HINT = "access:servers!user={user}"


class ClientError(Exception):
    """One line for the person at the terminal."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The hub answers a request to a stopped server with a redirect to its spawn page (a web
    page, 200): follow none, so that is reported as what it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def read_token(token_file: str | None, environ: dict[str, str]) -> str:
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise ClientError(f"cannot read --token-file {token_file}: {e.strerror}") from None
        if not token:
            raise ClientError(f"--token-file {token_file} is empty")
        return token
    token = environ.get("JUPYTERHUB_API_TOKEN", "").strip()
    if not token:
        raise ClientError("no API token: set JUPYTERHUB_API_TOKEN or give --token-file; make one on the hub's token "
                          "page (<hub>/hub/token) with scope access:servers!user=<your name>")
    return token


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
    return " ".join(str(message).split())[:300] if message else ""


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


def server_url(hub: str, user: str, server: str) -> str:
    path = f"/user/{urllib.parse.quote(user, safe='')}/"
    if server:
        path += f"{urllib.parse.quote(server, safe='')}/"
    return hub + path


def fetch(hub: str, token: str, kind: str, *, user: str | None = None, server: str = "",
          query: dict[str, str] | None = None, timeout: float = 60.0) -> str:
    """The body of the server's ``api/cloudcreds/<kind>`` answer, or ClientError saying why not."""
    hub = hub.rstrip("/")
    if not hub.startswith(("https://", "http://")):
        raise ClientError(f"--hub must be the hub's URL, like https://hub.example.org, got {hub!r}")
    user = user or whoami(hub, token, timeout)
    base = server_url(hub, user, server)
    url = f"{base}api/cloudcreds/{kind}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    status, body, headers = _get(url, token, timeout)
    name = f"{user}'s server" + (f" {server!r}" if server else "")
    if status == 200:
        return body
    if 300 <= status < 400 or status in (424, 503):
        raise ClientError(f"{name} is not running: start it at {hub}/hub/home, then try again")
    if status in (401, 403):
        raise ClientError(f"the hub or {name} refused the token: it needs scope {SCOPE_HINT.format(user=user)} "
                          "(and to be yours, or to be given access to it)")
    if status == 404 and "cloudcreds" not in body:
        raise ClientError(f"{name} has no credentials endpoint (not started by CloudIdentitySpawner, or the "
                          "cloudidentity_spawner.creds extension is off in its image)")
    said = _said(body)
    raise ClientError(f"{name} answered {status}" + (f": {said}" if said else ""))


def credentials_command(args: Any, environ: dict[str, str] | None = None, out: Any = None) -> int:
    """Run ``cloudidentity-spawner credentials``; print what was asked for, or one line on stderr."""
    environ = dict(os.environ if environ is None else environ)
    out = out or sys.stdout
    try:
        token = read_token(args.token_file, environ)
        if args.cloud == "aws":
            fmt = {"credential_process": "credential_process", "env": "env", "json": "json"}[args.format or "credential_process"]
            body = fetch(args.hub, token, "aws", user=args.user, server=args.server, query={"format": fmt})
        elif args.cloud == "azure":
            if not args.resource:
                raise ClientError("azure needs --resource, e.g. --resource https://storage.azure.com")
            answer = json.loads(fetch(args.hub, token, "azure", user=args.user, server=args.server,
                                      query={"resource": args.resource}))
            body = _token_output(answer, args.format, "AZURE_ACCESS_TOKEN")
        else:
            answer = json.loads(fetch(args.hub, token, "gcp", user=args.user, server=args.server))
            body = _token_output(answer, args.format, "GOOGLE_OAUTH_ACCESS_TOKEN")
    except ClientError as e:
        print(f"cloudidentity-spawner credentials: {e}", file=sys.stderr)
        return 1
    out.write(body if body.endswith("\n") else body + "\n")
    return 0


def _token_output(answer: dict[str, Any], fmt: str | None, variable: str) -> str:
    token = answer.get("access_token")
    if not token:
        raise ClientError("the server answered without an access token")
    if fmt == "json":
        return json.dumps(answer)
    if fmt == "env":
        return f"export {variable}={token}\n"
    return token
