"""The admin page: a JupyterHub service at ``/services/cloudidentity/`` listing who runs as what.

Built from the same survey as ``cloudidentity-spawner status`` (:mod:`.inventory`): every
ServiceAccount of the hub with its owner, rule, scope, cloud identity, drift and latest Event,
plus what the rules decide now for hub users without an account yet; a search box narrows
both. Reads only. Visitors log in through the hub (HubOAuth); only those granted
``access:services!service=cloudidentity`` get in (hub admins have it). In the hub's config::

    from cloudidentity_spawner.admin import admin_roles, admin_service
    c.JupyterHub.services.append(admin_service(__file__))
    c.JupyterHub.load_roles += admin_roles(groups=["/escape/admins"])

Run by the hub as ``python -m cloudidentity_spawner.admin --config <jupyterhub_config.py>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from tornado import web
from tornado.escape import xhtml_escape

SERVICE = "cloudidentity"
SERVICE_SCOPES = ["list:users", "read:users", "admin:auth_state"]
"""What the service's own token needs: the users, their groups, and their stored logins
(identity rules are planned from the login's claims)."""
PASSED_ENVIRONMENT = ("KUBERNETES_", "KUBECONFIG", "AWS_", "GOOGLE_", "CLOUDSDK_")
"""Environment the hub's own cluster and cloud access comes from; JupyterHub starts services
with a clean environment, so these are handed on explicitly."""
USERS_SHOWN = 50


def admin_service(config_file: str, *, name: str = SERVICE, port: int = 10101, environment: dict[str, str] | None = None) -> dict[str, Any]:
    """The hub-managed service definition (for ``c.JupyterHub.services``): the page on
    127.0.0.1:*port*, reading the hub's config file *config_file* (``__file__`` in the config)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENVIRONMENT)}
    env.update(environment or {})
    return {
        "name": name,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", "cloudidentity_spawner.admin", "--config", os.path.abspath(config_file)],
        "environment": env,
        "oauth_no_confirm": True,
        "display": True,
        "info": {"description": "Who runs as which cloud identity"},
    }


def admin_roles(*, name: str = SERVICE, groups: Sequence[str] = (), users: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The roles (for ``c.JupyterHub.load_roles``): the service's own token scopes, and who may
    open the page (besides hub admins): these JupyterHub *groups* and *users*."""
    roles: list[dict[str, Any]] = [{"name": f"{name}-service", "services": [name], "scopes": SERVICE_SCOPES}]
    if groups or users:
        roles.append({"name": f"{name}-viewers", "scopes": [f"access:services!service={name}"],
                      "groups": list(groups), "users": list(users)})
    return roles


STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 1.5em 1.5em; color: #222; }
nav { display: flex; gap: 1.2em; align-items: baseline; padding: 0.7em 0; border-bottom: 1px solid #ddd; }
nav a { color: #2c5d8f; text-decoration: none; } nav .brand { font-weight: bold; color: #222; margin-right: auto; }
td, td code { overflow-wrap: anywhere; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { text-align: left; padding: 0.35em 0.6em; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; }
.ok { color: #176117; } .drift { color: #8a5a00; } .orphaned { color: #a11; } .unknown { color: #555; }
.state { font-weight: bold; } .muted { color: #666; font-size: 0.9em; } code { font-size: 0.95em; }
form { margin: 1em 0; } ul { margin: 0; padding-left: 1.1em; min-width: 16em; } input[type=search] { width: 24em; padding: 0.3em; }
"""


def _matches(row: dict[str, Any], query: str) -> bool:
    return not query or any(query in str(v).lower() for v in row.values() if v)


def render_page(report: dict[str, Any], decisions: list[dict[str, Any]], query: str, more_users: int,
                hub_prefix: str = "/hub/") -> str:
    """The page's HTML (every value escaped), under links back to the hub's own pages."""
    e = xhtml_escape
    total = len(report["accounts"])
    counts = ", ".join(f"{n} {state}" for state, n in report["counts"].items())
    rows = []
    for a in report["accounts"]:
        identity = (a["identity"] or "no cloud identity").split(":", 1)[-1]
        planned = a["planned_identity"]
        problems = "".join(f"<li>{e(p)}</li>" for p in a["problems"])
        event = a.get("last_event")
        last = f"{e(event['reason'])}<div class=muted>{e(event['time'])}<br>{e(event['message'])}</div>" if event else ""
        pods = f"<div class=muted>pods: {e(', '.join(a['pods']))}</div>" if a["pods"] else ""
        rows.append(
            f"<tr data-account='{e(a['service_account'])}'><td class='state {e(a['state'])}'>{e(a['state'])}</td>"
            f"<td><code>{e(a['service_account'])}</code>{pods}</td><td>{e(a['owner'])}</td>"
            f"<td>{e(a['rule'])} <span class=muted>({e(a['scope'])})</span></td><td><code>{e(identity)}</code>"
            + (f"<div class=muted>planned: {e(planned.split(':', 1)[-1])}</div>" if planned and planned != a["identity"] else "")
            + f"</td><td><ul>{problems}</ul></td><td>{last}</td></tr>"
        )
    user_rows = "".join(
        f"<tr data-user='{e(d['user'])}'><td>{e(d['user'])}</td><td>{e(', '.join(d['groups']))}</td><td>{e(d['decision'])}</td></tr>"
        for d in decisions
    )
    more = f"<p class=muted>{more_users} more: narrow the search.</p>" if more_users else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cloud identities</title><style>{STYLE}</style></head>
<body><nav><span class="brand">JupyterHub</span><a href="{e(hub_prefix)}home">Home</a><a href="{e(hub_prefix)}token">Token</a>
<a href="{e(hub_prefix)}admin">Admin</a><a href="{e(hub_prefix)}logout">Logout</a></nav>
<h1>Cloud identities of this hub</h1>
<form method="get"><input type="search" name="q" value="{e(query)}" placeholder="user, group, rule, ServiceAccount or identity" aria-label="search">
<button type="submit">Search</button></form>
<p id="summary">{total} ServiceAccount{'' if total == 1 else 's'}{' matching' if query else ''} ({e(report['searched'])}): {e(counts)}</p>
<p class=muted>Whether hub-made roles and Google accounts still exist in the cloud is not checked here: <code>cloudidentity-spawner status</code> does.</p>
<table id="accounts"><thead><tr><th>State</th><th>ServiceAccount</th><th>Owner</th><th>Rule</th><th>Cloud identity</th>
<th>Drift</th><th>Last event</th></tr></thead><tbody>{''.join(rows)}</tbody></table>
<h2>Hub users without an account of their own: what their next spawn gets</h2>
<table id="users"><thead><tr><th>User</th><th>Groups</th><th>What their next spawn gets</th></tr></thead>
<tbody>{user_rows}</tbody></table>{more}
</body></html>"""


def make_app(settings: Any, config: Any, accounts: Any, hub_users: Any, namespace: str, prefix: str) -> web.Application:
    from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated

    from .inventory import survey, user_decisions

    class AccountsPage(HubOAuthenticated, web.RequestHandler):
        @web.authenticated
        async def get(self) -> None:
            query = self.get_argument("q", "").strip().lower()
            # Cloud existence is not asked on every page view (a call per hub-made identity): `status` does.
            found = await survey(settings, config, accounts, hub_users, namespace, check_cloud=False)
            report = found.to_dict()
            report["accounts"] = [a for a in report["accounts"] if _matches(a, query)]
            report["counts"] = {s: sum(a["state"] == s for a in report["accounts"]) for s in report["counts"]}
            with_account = {a["user"] for a in found.to_dict()["accounts"] if a["user"]}
            names = sorted(n for n in await hub_users.names() if n not in with_account and (not query or query in n.lower()))
            decisions = await user_decisions(settings, hub_users, names[:USERS_SHOWN], namespace)
            if query:  # a group or a rule named in the search narrows the users too
                decisions = [d for d in decisions if _matches(d, query)]
            self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
            hub_prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/hub/"
            self.finish(render_page(report, decisions, query, max(0, len(names) - USERS_SHOWN), hub_prefix))

    class StatusAPI(HubOAuthenticated, web.RequestHandler):
        """The same survey as ``status --json``."""

        @web.authenticated
        async def get(self) -> None:
            found = await survey(settings, config, accounts, hub_users, namespace, check_cloud=False)
            self.finish(found.to_dict())

    return web.Application(
        [(prefix, AccountsPage), (prefix + "api/status", StatusAPI), (prefix + "oauth_callback", HubOAuthCallbackHandler)],
        cookie_secret=os.urandom(32),
    )


async def serve(config_file: str) -> None:
    from kubernetes_asyncio import client as kube_client

    from .cli import _configured_namespace, load_config, load_kube_config_of
    from .config import identity_settings
    from .hubusers import HubAPI
    from .kube import ServiceAccounts

    config = load_config(config_file)
    settings = identity_settings(config)
    load_kube_config_of(config)
    hub_users = HubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE}/")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    async with kube_client.ApiClient() as api:
        accounts = ServiceAccounts(kube_client.CoreV1Api(api), request_timeout=30.0)
        app = make_app(settings, config, accounts, hub_users, _configured_namespace(config), prefix)
        server = app.listen(url.port or 80, url.hostname or "127.0.0.1")
        # JupyterHub stops a service with SIGINT, then SIGTERM after 10 s: answer both at once, even
        # when started with SIGINT ignored (a hub run as a background job passes that on).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudidentity_spawner.admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="path to the hub's jupyterhub_config.py")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
