"""Dask pods under the user's own identity.

**dask-gateway** (daskhub): the gateway's options handler gets dask-gateway's
``User`` (name and JupyterHub groups, from its JupyterHub authenticator) but no
auth_state, so the plan is recomputed from the name and groups with the same
rules the spawner uses; rules that need other claims give a clear error. With
``manage_groups`` the JupyterHub groups are the same normalised list the spawner
matched on, so both find the same ServiceAccount::

    # dask-gateway-server config (gateway.extraConfig in the daskhub chart)
    from cloudidentity_spawner.dask import gateway_options_handler
    from dask_gateway_server.options import Options, Integer
    c.Backend.cluster_options = Options(
        Integer("worker_cores", default=1, min=1, max=4),
        handler=gateway_options_handler(
            identity_rules=[...],          # the same rules as the hub
            namespace="jupyterhub", hub_name="escape-hub",
        ),
    )

The handler sets ``serviceAccountName`` on the scheduler and worker pods last,
after any handler of the operator's, so no option a user sends can choose
another account.

**dask-kubernetes** (``KubeCluster`` started from the notebook): the spawner puts
``CLOUDIDENTITY_SERVICE_ACCOUNT`` in the notebook's environment;
:func:`kubecluster_spec` builds a cluster spec that runs the scheduler and
workers under it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from typing import Any

from .claims import Claims
from .errors import IdentityError
from .rules import IdentityRules

SERVICE_ACCOUNT_ENV = "CLOUDIDENTITY_SERVICE_ACCOUNT"
NAMESPACE_ENV = "CLOUDIDENTITY_NAMESPACE"


def _pod_config_with_account(extra: Mapping[str, Any] | None, service_account: str) -> dict[str, Any]:
    config = copy.deepcopy(dict(extra or {}))
    config["serviceAccountName"] = service_account
    config.pop("serviceAccount", None)  # the deprecated alias must not say otherwise
    config["automountServiceAccountToken"] = False
    return config


def gateway_options_handler(
    identity_rules: list[dict[str, Any]],
    namespace: str,
    hub_name: str = "jupyterhub",
    handler: Callable[..., Mapping[str, Any]] | None = None,
) -> Callable[[Any, Any], dict[str, Any]]:
    """An options handler for dask-gateway-server's Kubernetes backend.

    *handler* is the operator's own ``handler(options, user)`` (or ``handler(options)``),
    whose result is kept; the identity is applied after it.
    """
    rules = IdentityRules.from_config(identity_rules, hub_name)

    def options_handler(options: Any, user: Any) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if handler is not None:
            try:
                result = dict(handler(options, user))
            except TypeError:
                result = dict(handler(options))
        else:
            result = dict(options)
        plan = plan_for_gateway_user(rules, user, namespace)
        for key in ("scheduler_extra_pod_config", "worker_extra_pod_config"):
            result[key] = _pod_config_with_account(result.get(key), plan.service_account.name)
        environment = dict(result.get("environment") or {})
        environment.update(plan.env)
        result["environment"] = environment
        return result

    return options_handler


def plan_for_gateway_user(rules: IdentityRules, user: Any, namespace: str):
    """The plan for dask-gateway's ``User``: from its name and JupyterHub groups only."""
    claims = Claims(username=user.name, groups=tuple(sorted(user.groups)), values={})
    try:
        return rules.resolve(claims, namespace)
    except IdentityError as e:
        # dask-gateway reports a ValueError from the handler to the client.
        raise ValueError(e.user_message) from None


def kubecluster_spec(name: str, *, service_account: str | None = None, **make_cluster_spec_kwargs: Any) -> dict[str, Any]:
    """A dask-kubernetes ``DaskCluster`` spec whose scheduler and workers run under this
    notebook's ServiceAccount (``CLOUDIDENTITY_SERVICE_ACCOUNT``)::

        from dask_kubernetes.operator import KubeCluster
        from cloudidentity_spawner.dask import kubecluster_spec
        cluster = KubeCluster(custom_cluster_spec=kubecluster_spec("analysis", n_workers=4))
    """
    from dask_kubernetes.operator import make_cluster_spec

    account = service_account or os.environ.get(SERVICE_ACCOUNT_ENV)
    if not account:
        raise RuntimeError(
            f"{SERVICE_ACCOUNT_ENV} is not set: this notebook was not started by CloudIdentitySpawner; "
            "pass service_account= explicitly"
        )
    return pin_cluster_spec(make_cluster_spec(name, **make_cluster_spec_kwargs), account)


def pin_cluster_spec(spec: Mapping[str, Any], service_account: str) -> dict[str, Any]:
    """Put the scheduler and worker pods of a ``DaskCluster`` spec under *service_account*."""
    pinned = copy.deepcopy(dict(spec))
    for part in ("scheduler", "worker"):
        pod_spec = pinned["spec"][part]["spec"]
        pod_spec["serviceAccountName"] = service_account
        pod_spec.pop("serviceAccount", None)
        pod_spec["automountServiceAccountToken"] = False
    return pinned
