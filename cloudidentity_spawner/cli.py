"""The ``cloudidentity-spawner`` command.

``plan`` loads a ``jupyterhub_config.py`` the way JupyterHub does, resolves one
user's identity with the same code the spawner runs, and prints the plan, so an
operator can review names, annotations, trust policies and bindings before
anything exists. ``status`` lists what the hub has made and how it differs from what the
rules plan now; ``gc`` removes what nobody plans any more. ``gcp-hub-condition`` prints the IAM condition that bounds
which roles the hub's own Google Cloud role may grant, for those rules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

# Only the standard library here: ``credentials`` runs on a laptop with nothing but this package
# (pip install --no-deps); the hub-side commands import what they need when they run.


class _PlanUser:
    """The slice of a JupyterHub user that planning reads."""

    def __init__(self, name: str, groups: Sequence[str], auth_state: Any, admin: bool = False, roles: Sequence[str] = ()):
        self.name = name
        self.groups = list(groups)
        self.admin = admin
        self.roles = list(roles)
        self._auth_state = auth_state

    async def get_auth_state(self) -> Any:
        return self._auth_state


def load_config(path: str):
    """Load a JupyterHub config file as JupyterHub does (``c = get_config()`` included).

    What the file prints goes to stderr (zero-to-jupyterhub's config prints "Loading ..."
    lines), so ``--json`` output on stdout stays one JSON object."""
    from traitlets.config.loader import ConfigFileNotFound, PyFileConfigLoader

    from .errors import ConfigError

    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    directory, filename = os.path.split(os.path.abspath(path))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return PyFileConfigLoader(filename, path=directory).load_config()
    except ConfigFileNotFound:
        raise ConfigError(f"config file not found: {path}") from None
    except Exception as e:  # the operator's Python: report it in one line
        raise ConfigError(f"cannot load {path}: {type(e).__name__}: {e}") from None


def _read_claims(path: str | None, user: str) -> Any:
    from .errors import ConfigError

    if path is None:
        # No recorded login: plan from the name and --group alone.
        return {"oauth_user": {"sub": user}}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read --claims file: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--claims file {path} is not valid JSON: {e}") from None
    return data


class _PlanSpawner:
    """What an ``identity_resolver`` sees of the spawner when run by ``plan``."""

    def __init__(self, user: _PlanUser, namespace: str):
        self.user = user
        self.name = ""
        self.namespace = namespace


POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _configured_namespace(config: Any) -> str:
    """The namespace KubeSpawner would use: from the most specific section that sets it, else
    (as KubeSpawner) the namespace of the pod this runs in, else ``default``."""
    for section in ("CloudIdentitySpawner", "KubeSpawner"):
        if section in config and "namespace" in config[section]:
            return config[section]["namespace"]
    try:
        with open(POD_NAMESPACE_FILE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


async def plan_command(args: argparse.Namespace) -> dict[str, Any]:
    from .claims import user_claims
    from .config import identity_settings
    from .rules import plan_for

    config = load_config(args.config)
    settings = identity_settings(config)
    namespace = args.namespace or _configured_namespace(config)
    user = _PlanUser(args.user, args.group, _read_claims(args.claims, args.user), args.admin, args.role)
    claims = await user_claims(settings, user)
    plan = await plan_for(settings, _PlanSpawner(user, namespace), claims, namespace)
    return plan.to_dict()


def _print_plan(plan: dict[str, Any]) -> None:
    sa = plan["service_account"]
    print(f"user:            {plan['user']}")
    print(f"groups:          {', '.join(plan['groups']) or '(none)'}")
    print(f"rule:            {plan['rule']} (scope: {plan['scope']}, owner: {plan['owner']})")
    print(f"service account: {sa['namespace']}/{sa['name']}")
    for key, value in sa["annotations"].items():
        print(f"  annotation     {key}: {value}")
    if plan["cloud"] and plan["cloud"]["provider"] == "azure" and plan["cloud"]["mode"] == "managed":
        print("  annotation     azure.workload.identity/client-id, tenant-id: of the identity, once Azure has made it")
    for key, value in sa["labels"].items():
        print(f"  label          {key}: {value}")
    for key, value in plan["env"].items():
        print(f"env:             {key}={value}")
    cloud = plan["cloud"]
    if cloud is None:
        print("cloud:           none (ServiceAccount only)")
        return
    print(f"cloud:           {cloud['provider']} {cloud['mode']}: {cloud['identity']}")
    extra = {k: v for k, v in cloud.items() if k not in ("provider", "mode", "identity")}
    if extra:
        print("would create:")
        print("  " + json.dumps(extra, indent=2, sort_keys=True).replace("\n", "\n  "))


class Progress:
    """A one-line progress bar on a terminal (stderr), nothing otherwise: the caller prints its
    plain result lines either way."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.live or total < 1:
            return
        width = 30
        filled = width * done // total
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{step}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
        self.stream.flush()


def load_kube_config_of(config: Any) -> None:
    """Point kubernetes_asyncio at the cluster the hub's spawner would use: its k8s_api_*
    settings, else in-cluster, else $KUBECONFIG (as KubeSpawner does)."""
    from kubespawner.clients import load_config as load_kube_config

    spawner = config.KubeSpawner if "KubeSpawner" in config else {}
    load_kube_config(spawner.get("k8s_api_host"), spawner.get("k8s_api_ssl_ca_cert"), spawner.get("k8s_api_verify_ssl"))


async def _operations(args: argparse.Namespace, run: Any) -> Any:
    """Load the config, connect to Kubernetes and the hub's users, and run *run* with them."""
    from kubernetes_asyncio import client as kube_client

    from .config import identity_settings
    from .hubusers import hub_users
    from .kube import ServiceAccounts

    config = load_config(args.config)
    settings = identity_settings(config)
    namespace = args.namespace or _configured_namespace(config)
    load_kube_config_of(config)
    hub = config.JupyterHub if "JupyterHub" in config else {}
    users = hub_users(args.hub_url, hub.get("db_url"))
    async with kube_client.ApiClient() as api:
        accounts = ServiceAccounts(kube_client.CoreV1Api(api), request_timeout=30.0)
        return await run(settings, config, accounts, users, namespace)


async def status_command(args: argparse.Namespace) -> dict[str, Any]:
    from .inventory import survey

    async def run(settings, config, accounts, users, namespace):
        from .cleanup import stale_token_secrets

        found = await survey(settings, config, accounts, users, namespace, check_cloud=not args.no_cloud,
                             progress=None if args.json else Progress())
        report = found.to_dict()
        if settings.compiled_rules.storage_tokens:
            namespaces = {namespace} | {e.account.namespace for e in found.entries}
            report["storage_token_secrets_without_server"] = [
                a.describe() if a.kind == "search" else f"{a.secret[0]}/{a.secret[1]}"
                for a in await stale_token_secrets(settings, accounts, namespaces)]
        return report

    return await _operations(args, run)


def _print_status(report: dict[str, Any]) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in report["counts"].items())
    print(f"{len(report['accounts'])} ServiceAccounts of this hub ({report['searched']}): {counts}")
    for a in report["accounts"]:
        identity = (a["identity"] or "no cloud identity").split(":", 1)[-1]
        print(f"{a['state']:9} {a['service_account']:40} {a['owner']:24} rule {a['rule']:12} {identity}")
        for problem in a["problems"]:
            print(f"{'':10}- {problem}")
        if a["pods"]:
            print(f"{'':10}  pods: {', '.join(a['pods'])}")
    stale = report.get("storage_token_secrets_without_server")
    if stale:
        print(f"{len(stale)} storage-token Secrets whose server is gone (gc deletes them): {', '.join(stale)}")


async def gc_command(args: argparse.Namespace) -> dict[str, Any]:
    from . import cleanup
    from .inventory import survey

    async def run(settings, config, accounts, users, namespace):
        progress = None if args.json else Progress()
        found = await survey(settings, config, accounts, users, namespace, check_cloud=False, progress=progress)
        actions = await cleanup.plan_cleanup(settings, found, accounts, args.min_age, args.role_path,
                                             args.principal_grants, namespace)
        if args.apply:
            await cleanup.apply(actions, settings, accounts, users, namespace, progress)
        return {"applied": args.apply, "searched": found.searched, "actions": [a.to_dict() for a in actions],
                "lines": [_gc_line(a, args.apply) for a in actions]}

    return await _operations(args, run)


def _role_path(value: str) -> str:
    if not re.fullmatch(r"/(?:[\x21-\x7e]*/)?", value) or "//" in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IAM role path: it starts and ends with '/', e.g. /jupyterhub/old/")
    return value


def _gc_line(action: Any, applied: bool) -> str:
    verb = {"delete-account": "delete", "revoke": "revoke", "delete-identity": "delete", "remove-grant": "remove",
            "delete-secret": "delete",
            "search": "search"}[action.kind]
    if action.skipped:
        return f"skipped: {verb} {action.describe()} - {action.skipped}"
    if applied:
        return f"{verb.rstrip('e')}ed: {action.describe()}"
    return f"would {verb}: {action.describe()}"


def _print_gc(report: dict[str, Any]) -> None:
    for line in report["lines"]:
        print(line)
    todo = [a for a in report["actions"] if not a["skipped"]]
    if not report["actions"]:
        print(f"nothing to clean up ({report['searched']})")
    elif report["applied"]:
        print(f"{sum(a['done'] for a in report['actions'])} done, {sum(bool(a['skipped']) for a in report['actions'])} skipped")
    else:
        print(f"{len(todo)} to clean up; nothing was changed (dry run): run again with --apply")


def _add_hub_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", required=True, help="path to the hub's jupyterhub_config.py")
    command.add_argument("--namespace", help="the hub's namespace (default: the spawner's); all namespaces are "
                                             "searched when the Kubernetes permissions allow")
    command.add_argument("--hub-url", help="the hub's REST API, e.g. http://hub:8081/hub/api (token in "
                                           "$JUPYTERHUB_API_TOKEN: list:users, read:users, admin:auth_state); default "
                                           "$JUPYTERHUB_API_URL, else the hub database (JupyterHub.db_url)")
    command.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudidentity-spawner", description=(
        "Plan, survey and clean up the cloud identities CloudIdentitySpawner gives a hub's users; run the local demo."))
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="show the identity a user would get, without touching anything")
    plan.add_argument("--config", required=True, help="path to jupyterhub_config.py")
    plan.add_argument("--user", required=True, help="JupyterHub user name")
    plan.add_argument("--group", action="append", default=[], help="a JupyterHub group of the user (repeatable)")
    plan.add_argument("--admin", action="store_true", help="the user is a JupyterHub admin")
    plan.add_argument("--role", action="append", default=[], help="a JupyterHub role of the user (repeatable)")
    plan.add_argument("--claims", help="JSON file with the provider claims (or a whole auth_state)")
    plan.add_argument("--namespace", help="Kubernetes namespace (default: the spawner's)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    status = commands.add_parser("status", help="list this hub's ServiceAccounts: owner, rule, cloud identity, and "
                                                "drift against what the rules plan now (reads only)")
    _add_hub_options(status)
    status.add_argument("--no-cloud", action="store_true", help="do not ask the clouds whether hub-made identities exist")
    gc = commands.add_parser("gc", help="find (and with --apply, delete) what this hub made and nobody plans any more")
    _add_hub_options(gc)
    gc.add_argument("--apply", action="store_true", help="delete what was found (default: a dry run)")
    gc.add_argument("--min-age", type=float, default=600.0,
                    help="leave cloud identities no account records alone until they are this many seconds old "
                         "(a spawn makes the identity before its account; default 600); Google grants to a "
                         "ServiceAccount that does not exist are only removed with --min-age 0 (IAM keeps no date)")
    gc.add_argument("--principal-grants", action="store_true",
                    help="also remove grants in the rules' places to the Workload Identity Federation principal of a "
                         "ServiceAccount that does not exist, in the hub's namespaces (with --min-age 0). Every "
                         "cluster of a Google project shares its pool and nothing marks a grant as this hub's: use it "
                         "only where no other cluster's workloads in these namespaces are granted these roles")
    gc.add_argument("--role-path", action="append", default=[], metavar="PATH", type=_role_path,
                    help="also look for this hub's IAM roles under PATH (e.g. /jupyterhub/old/), a role_path no rule "
                         "names any more; repeatable. The rules' role paths, and those of the roles accounts "
                         "record, are always searched")
    condition = commands.add_parser(
        "gcp-hub-condition",
        help="print the IAM condition that limits the hub's own GCP role to the roles its rules grant",
    )
    condition.add_argument("--config", required=True, help="path to jupyterhub_config.py")
    creds = commands.add_parser(
        "credentials",
        help="your running server's cloud credentials, from any computer (AWS credential_process JSON, env lines, "
             "or an access token); needs only this package and Python",
        description="Ask your running server on the hub for its cloud credentials. The API token comes from "
                    "$JUPYTERHUB_API_TOKEN or --token-file (make one at <hub>/hub/token with scope "
                    "access:servers!user=<your name>). In ~/.aws/config: credential_process = "
                    "cloudidentity-spawner credentials --hub https://hub.example.org --token-file ~/.jupyterhub-token aws. "
                    "For Google: cloudidentity-spawner credentials --hub ... gcp --format external-account > "
                    "credentials.json, then GOOGLE_APPLICATION_CREDENTIALS=credentials.json and "
                    "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1")
    creds.add_argument("cloud", choices=("aws", "azure", "gcp"), help="which of your server's identities")
    creds.add_argument("--hub", required=True, help="the hub's URL, e.g. https://hub.example.org")
    creds.add_argument("--server", default="", help="a named server of yours (default: the default server)")
    creds.add_argument("--user", help="whose server (default: the token's owner)")
    creds.add_argument("--token-file", help="a file holding the API token (default: $JUPYTERHUB_API_TOKEN)")
    creds.add_argument("--format", choices=("credential_process", "env", "json", "executable", "external-account"),
                       help="aws: credential_process (default), env (export lines) or json; azure and gcp: the bare "
                            "token (default), env or json; gcp also: external-account (a credentials.json for "
                            "google-auth, gcloud and the Google client libraries that runs this command) or executable "
                            "(what that runs: google-auth's executable-sourced response)")
    creds.add_argument("--resource", help="azure: the resource the token is for, e.g. https://storage.azure.com")
    creds.add_argument("--insecure-http", action="store_true",
                       help="allow a plain-http --hub other than this computer (the token and the credentials cross "
                            "the network in the clear)")
    demo = commands.add_parser("demo", help="run JupyterHub, a Kubernetes emulator, moto and an OIDC provider on 127.0.0.1")
    demo.add_argument("--port", type=int, default=8000, help="JupyterHub's port on 127.0.0.1 (default 8000)")
    demo.add_argument("--pod-identity", action="store_true",
                      help="ESCAPE members get EKS Pod Identity associations (one shared role, a session policy each) "
                           "instead of a role each; a local Pod Identity agent hands out their credentials")
    demo.add_argument("--azure", action="store_true",
                      help="an AKS hub: ESCAPE members get hub-made Azure managed identities (a local Azure Resource "
                           "Manager), and a local Microsoft Entra token endpoint exchanges their pods' tokens")
    demo.add_argument("--gcp", action="store_true",
                      help="a GKE hub: ESCAPE members' ServiceAccounts get grants of their own on a managed folder each "
                           "(Workload Identity Federation principals) in a local Google Cloud, and a local GKE metadata "
                           "server gives their pods tokens")
    demo.add_argument("--ceph", action="store_true",
                      help="an on-premises hub: ESCAPE members get a role each at a real Ceph RADOS Gateway (Debian's "
                           "radosgw; scripts/install-ceph.sh), assumed with their pods' own ServiceAccount tokens")
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unreachable(error: Exception) -> str | None:
    """One line for a Kubernetes API or hub that cannot be reached or refuses (``status``, ``gc``)."""
    import aiohttp
    from kubernetes_asyncio.client.exceptions import ApiException
    from kubernetes_asyncio.config import ConfigException

    if isinstance(error, ApiException):
        return f"the Kubernetes API refused: {error.status} {error.reason} ({_one_line(str(error.body or ''))[:300]})"
    if isinstance(error, ConfigException):
        return f"no Kubernetes configuration (in-cluster or $KUBECONFIG): {_one_line(str(error))}"
    if isinstance(error, (aiohttp.ClientError, OSError)):
        return f"cannot reach the Kubernetes API or the hub: {type(error).__name__}: {_one_line(str(error))}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "credentials":
        from .client import credentials_command

        return credentials_command(args)
    from .config import identity_settings
    from .errors import ConfigError, IdentityError
    from .providers import gcp

    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.port, args.pod_identity, args.azure, args.gcp, args.ceph)
    try:
        if args.command == "gcp-hub-condition":
            rules = identity_settings(load_config(args.config)).compiled_rules
            print(json.dumps(gcp.hub_grant_condition(rules), indent=2))
            return 0
        if args.command in ("status", "gc"):
            command, show = (status_command, _print_status) if args.command == "status" else (gc_command, _print_gc)
            report = asyncio.run(command(args))
            if args.json:
                report.pop("lines", None)
                print(json.dumps(report, sort_keys=True, default=str))
            else:
                show(report)
            return 0
        plan = asyncio.run(plan_command(args))
    except ConfigError as e:
        print(f"cloudidentity-spawner: configuration error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except IdentityError as e:
        print(f"cloudidentity-spawner: {_one_line(e.admin_detail)}", file=sys.stderr)
        return 1
    except Exception as e:
        what = _unreachable(e)
        if what is None:
            raise
        print(f"cloudidentity-spawner: {what}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan, sort_keys=True))
    else:
        _print_plan(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
