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
from . import storage_tokens
from .providers import s3_sts
from .errors import IdentityError
from .rules import IdentityRules

SERVICE_ACCOUNT_ENV = "CLOUDIDENTITY_SERVICE_ACCOUNT"
NAMESPACE_ENV = "CLOUDIDENTITY_NAMESPACE"


def _pod_config_with_account(extra: Mapping[str, Any] | None, service_account: str,
                             store: Mapping[str, Any] | None = None) -> dict[str, Any]:
    config = copy.deepcopy(dict(extra or {}))
    config["serviceAccountName"] = service_account
    config.pop("serviceAccount", None)  # the deprecated alias must not say otherwise
    config["automountServiceAccountToken"] = False
    if store is not None:  # an S3-compatible store's token: no webhook adds it there
        volumes = [v for v in config.get("volumes") or [] if v.get("name") != s3_sts.TOKEN_VOLUME]
        config["volumes"] = volumes + [s3_sts.token_volume(store["audience"], store["expiration"])]
    return config


def _container_config_with_token(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    config = copy.deepcopy(dict(extra or {}))
    mounts = [m for m in config.get("volumeMounts") or [] if m.get("name") != s3_sts.TOKEN_VOLUME]
    config["volumeMounts"] = mounts + [dict(s3_sts.TOKEN_MOUNT)]
    return config


def _store_settings(plan: Any) -> Mapping[str, Any] | None:
    cloud = plan.cloud
    return cloud.resources["pod"] if cloud is not None and cloud.provider == s3_sts.PROVIDER else None


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
        store = _store_settings(plan)
        for part in ("scheduler", "worker"):
            key = f"{part}_extra_pod_config"
            result[key] = _pod_config_with_account(result.get(key), plan.service_account.name, store)
            if store is not None:
                key = f"{part}_extra_container_config"
                result[key] = _container_config_with_token(result.get(key))
        environment = dict(result.get("environment") or {})
        environment.update(plan.env)
        if store is not None:
            environment.update(store["env"])
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
    return pin_cluster_spec(make_cluster_spec(name, **make_cluster_spec_kwargs), account, store_from_environment(os.environ),
                            os.environ.get(storage_tokens.SECRET_ENV), os.environ.get("RUCIO_CONFIG") == storage_tokens.RUCIO_FILE)


def store_from_environment(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The notebook's S3-compatible store token settings (audience, lifetime, the AWS SDK
    variables), when its identity is one (``s3_sts``); else None."""
    audience = environ.get(s3_sts.AUDIENCE_ENV)
    if not audience:
        return None
    names = ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_SESSION_NAME", "AWS_ENDPOINT_URL_STS",
             "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", s3_sts.AUDIENCE_ENV, s3_sts.EXPIRATION_ENV)
    return {"audience": audience, "expiration": int(environ.get(s3_sts.EXPIRATION_ENV, "3600")),
            "env": {k: environ[k] for k in names if k in environ}}


def pin_cluster_spec(spec: Mapping[str, Any], service_account: str, store: Mapping[str, Any] | None = None,
                     storage_secret: str | None = None, rucio: bool = False) -> dict[str, Any]:
    """Put the scheduler and worker pods of a ``DaskCluster`` spec under *service_account*
    (and with *store*, give their containers the store's token and variables; with
    *storage_secret*, the notebook's storage-token Secret, which the hub keeps renewed, and with
    *rucio* the ``rucio.cfg`` in it)."""
    pinned = copy.deepcopy(dict(spec))
    for part in ("scheduler", "worker"):
        pod_spec = pinned["spec"][part]["spec"]
        if storage_secret:
            volumes = [v for v in pod_spec.get("volumes") or [] if v.get("name") != storage_tokens.VOLUME]
            pod_spec["volumes"] = volumes + [{"name": storage_tokens.VOLUME,
                                              "secret": {"secretName": storage_secret, "defaultMode": 0o444}}]
            for container in pod_spec.get("containers") or []:
                mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != storage_tokens.VOLUME]
                container["volumeMounts"] = mounts + [{"name": storage_tokens.VOLUME, "mountPath": storage_tokens.MOUNT_PATH,
                                                       "readOnly": True}]
                token_env = {"BEARER_TOKEN_FILE": storage_tokens.TOKEN_FILE,
                             **({"RUCIO_CONFIG": storage_tokens.RUCIO_FILE} if rucio else {})}
                env = [e for e in container.get("env") or [] if e.get("name") not in token_env]
                container["env"] = env + [{"name": k, "value": v} for k, v in token_env.items()]
        pod_spec["serviceAccountName"] = service_account
        pod_spec.pop("serviceAccount", None)
        pod_spec["automountServiceAccountToken"] = False
        if store is not None:
            pod_spec.update({k: v for k, v in _pod_config_with_account(pod_spec, service_account, store).items()
                             if k == "volumes"})
            for container in pod_spec.get("containers") or []:
                container.update(_container_config_with_token(container))
                env = [e for e in container.get("env") or [] if e.get("name") not in store["env"]]
                container["env"] = env + [{"name": k, "value": v} for k, v in store["env"].items()]
    return pinned
