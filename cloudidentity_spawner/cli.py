"""The ``cloudidentity-spawner`` command.

``plan`` loads a ``jupyterhub_config.py`` the way JupyterHub does, resolves one
user's identity with the same code the spawner runs, and prints the plan, so an
operator can review names, annotations, trust policies and bindings before
anything exists. ``gcp-hub-condition`` prints the IAM condition that bounds
which roles the hub's own Google Cloud role may grant, for those rules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from traitlets.config.loader import ConfigFileNotFound, PyFileConfigLoader

from .claims import user_claims
from .config import identity_settings
from .errors import ConfigError, IdentityError
from .providers import gcp
from .provisioner import plan_for


class _PlanUser:
    """The slice of a JupyterHub user that planning reads."""

    def __init__(self, name: str, groups: Sequence[str], auth_state: Any):
        self.name = name
        self.groups = list(groups)
        self._auth_state = auth_state

    async def get_auth_state(self) -> Any:
        return self._auth_state


def load_config(path: str):
    """Load a JupyterHub config file as JupyterHub does (``c = get_config()`` included).

    What the file prints goes to stderr (zero-to-jupyterhub's config prints "Loading ..."
    lines), so ``--json`` output on stdout stays one JSON object."""
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


def _configured_namespace(config: Any) -> str:
    """The namespace KubeSpawner would use, from the most specific section that sets it."""
    for section in ("CloudIdentitySpawner", "KubeSpawner"):
        if section in config and "namespace" in config[section]:
            return config[section]["namespace"]
    return "default"


async def plan_command(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    settings = identity_settings(config)
    namespace = args.namespace or _configured_namespace(config)
    user = _PlanUser(args.user, args.group, _read_claims(args.claims, args.user))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudidentity-spawner", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="show the identity a user would get, without touching anything")
    plan.add_argument("--config", required=True, help="path to jupyterhub_config.py")
    plan.add_argument("--user", required=True, help="JupyterHub user name")
    plan.add_argument("--group", action="append", default=[], help="a JupyterHub group of the user (repeatable)")
    plan.add_argument("--claims", help="JSON file with the provider claims (or a whole auth_state)")
    plan.add_argument("--namespace", help="Kubernetes namespace (default: the spawner's)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    condition = commands.add_parser(
        "gcp-hub-condition",
        help="print the IAM condition that limits the hub's own GCP role to the roles its rules grant",
    )
    condition.add_argument("--config", required=True, help="path to jupyterhub_config.py")
    demo = commands.add_parser("demo", help="run JupyterHub, a Kubernetes emulator, moto and an OIDC provider on 127.0.0.1")
    demo.add_argument("--port", type=int, default=8000, help="JupyterHub's port on 127.0.0.1 (default 8000)")
    demo.add_argument("--pod-identity", action="store_true",
                      help="ESCAPE members get EKS Pod Identity associations (one shared role, a session policy each) "
                           "instead of a role each; a local Pod Identity agent hands out their credentials")
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.port, args.pod_identity)
    try:
        if args.command == "gcp-hub-condition":
            rules = identity_settings(load_config(args.config)).compiled_rules
            print(json.dumps(gcp.hub_grant_condition(rules), indent=2))
            return 0
        plan = asyncio.run(plan_command(args))
    except ConfigError as e:
        print(f"cloudidentity-spawner: configuration error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except IdentityError as e:
        print(f"cloudidentity-spawner: {_one_line(e.admin_detail)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan, sort_keys=True))
    else:
        _print_plan(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
