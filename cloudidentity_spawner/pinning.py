"""Pin the pod to its plan: the ServiceAccount, token mount, environment, and what the plan's
provider adds (:meth:`.providers.base.Provider.pin`: projected tokens, labels, variables).

Profiles, ``kubespawner_override`` and the operator's own hooks all run before
KubeSpawner's ``modify_pod_hook``; the hook made here runs last and sets what the
plan says, so nothing the user submits can choose another account.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, MutableMapping
from typing import Any

from .errors import SpawnRefused
from .plan import RULE_LABEL, SCOPE_LABEL, IdentityPlan
from .providers import provider_for


def apply_plan(spawner: Any, plan: IdentityPlan, automount: bool) -> None:
    """Set the spawner's ServiceAccount, token mount, environment and labels from *plan*."""
    spawner.service_account = plan.service_account.name
    spawner.automount_service_account_token = automount
    spawner.environment = {**spawner.environment, **planned_env(plan)}
    spawner.extra_labels = {
        **spawner.extra_labels,
        SCOPE_LABEL: plan.service_account.labels[SCOPE_LABEL],
        RULE_LABEL: plan.service_account.labels[RULE_LABEL],
        **provider_pod_labels(plan),
    }


def provider_pod_labels(plan: IdentityPlan) -> dict[str, str]:
    """The labels the plan's provider needs on the pod (AKS's webhook selects pods by one)."""
    provider = provider_for(plan.cloud.provider) if plan.cloud is not None else None
    return provider.pod_labels(plan) if provider is not None else {}


def planned_env(plan: IdentityPlan) -> dict[str, str]:
    """The environment the plan gives the notebook: the rule's env, and where dask clusters
    started from the notebook find the ServiceAccount (``cloudidentity_spawner.dask``)."""
    return {
        **plan.env,
        "CLOUDIDENTITY_SERVICE_ACCOUNT": plan.service_account.name,
        "CLOUDIDENTITY_NAMESPACE": plan.service_account.namespace,
    }


# KubeSpawner turns the pod's containers into client models but leaves what is inside them as the
# operator gave it: z2jh's singleuser.initContainers / extraContainers arrive with env and
# volumeMounts as plain dicts (camelCase keys), and a container itself may be a dict. These read
# and write either.
_KEYS = {"env": "env", "volume_mounts": "volumeMounts"}


def _get(obj: Any, field: str) -> Any:
    return obj.get(_KEYS[field]) if isinstance(obj, Mapping) else getattr(obj, field)


def _set(obj: Any, field: str, value: Any) -> None:
    if isinstance(obj, MutableMapping):
        obj[_KEYS[field]] = value
    else:
        setattr(obj, field, value)


def _name(item: Any) -> Any:
    return item.get("name") if isinstance(item, Mapping) else getattr(item, "name", None)


def set_env(container: Any, env: dict[str, str]) -> None:
    """*env* in *container*, replacing what it had under those names (the rest stays as it was).
    For a provider's :meth:`~.providers.base.Provider.pin`: a container may be a client model or,
    as z2jh's extra containers arrive, a plain dict."""
    from kubernetes_asyncio.client.models import V1EnvVar

    kept = [e for e in (_get(container, "env") or []) if _name(e) not in env]
    _set(container, "env", kept + [V1EnvVar(name=k, value=v) if not isinstance(container, Mapping) else {"name": k, "value": v}
                                   for k, v in env.items()])


def pin_storage_token(pod: Any, secret: str, rucio: bool = False) -> None:
    """The server's storage token (:mod:`.token_keeper`): its Secret mounted read-only as a
    directory (the kubelet then updates the file in place when the hub renews it) and
    ``BEARER_TOKEN_FILE`` naming it, where WLCG token discovery looks first."""
    from kubernetes_asyncio.client.models import V1SecretVolumeSource, V1Volume, V1VolumeMount

    from .storage_tokens import MOUNT_PATH, RUCIO_FILE, SECRET_ENV, TOKEN_FILE, VOLUME

    volume = V1Volume(name=VOLUME, secret=V1SecretVolumeSource(secret_name=secret, default_mode=0o444))
    pod.spec.volumes = [v for v in (pod.spec.volumes or []) if _name(v) != VOLUME] + [volume]
    container = pod.spec.containers[0]
    mounts = [m for m in (_get(container, "volume_mounts") or []) if _name(m) != VOLUME]
    _set(container, "volume_mounts", mounts + [V1VolumeMount(name=VOLUME, mount_path=MOUNT_PATH, read_only=True)])
    set_env(container, {"BEARER_TOKEN_FILE": TOKEN_FILE, SECRET_ENV: secret, **({"RUCIO_CONFIG": RUCIO_FILE} if rucio else {})})


def pin_pod(pod: Any, plan: IdentityPlan, automount: bool, irsa: bool = True, token_secret: str | None = None) -> None:
    """The last word on the pod's ServiceAccount, token mount and the plan's environment,
    whatever profiles, overrides and hooks said before; then the provider's (with *irsa*, also
    what a cloud's webhook would add)."""
    pod.spec.service_account_name = plan.service_account.name
    pod.spec.service_account = None
    pod.spec.automount_service_account_token = automount
    set_env(pod.spec.containers[0], planned_env(plan))
    labels = provider_pod_labels(plan)
    if labels:
        pod.metadata.labels = {**(pod.metadata.labels or {}), **labels}
    provider = provider_for(plan.cloud.provider) if plan.cloud is not None else None
    if provider is not None:
        provider.pin(pod, plan, irsa)
    if token_secret:
        pin_storage_token(pod, token_secret, bool(plan.tokens and plan.tokens.get("rucio")))


def project_token(pod: Any, volume_name: str, mount_path: str, audience: str, expiration: int,
                  env: dict[str, str], token_path: str = "token") -> None:
    """Add a projected ServiceAccount token volume, its mount and *env* to every container
    (init containers too, as the EKS webhooks do), replacing what was there under those names.
    For a provider's :meth:`~.providers.base.Provider.pin`."""
    from kubernetes_asyncio.client.models import (
        V1ProjectedVolumeSource,
        V1ServiceAccountTokenProjection,
        V1Volume,
        V1VolumeMount,
        V1VolumeProjection,
    )

    token = V1ServiceAccountTokenProjection(audience=audience, expiration_seconds=expiration, path=token_path)
    volume = V1Volume(name=volume_name, projected=V1ProjectedVolumeSource(sources=[V1VolumeProjection(service_account_token=token)]))
    pod.spec.volumes = [v for v in (pod.spec.volumes or []) if _name(v) != volume_name] + [volume]
    for container in [*pod.spec.containers, *(pod.spec.init_containers or [])]:
        set_env(container, env)
        mounts = [m for m in (_get(container, "volume_mounts") or []) if _name(m) != volume_name]
        mount = (V1VolumeMount(name=volume_name, mount_path=mount_path, read_only=True) if not isinstance(container, Mapping)
                 else {"name": volume_name, "mountPath": mount_path, "readOnly": True})
        _set(container, "volume_mounts", mounts + [mount])


def pinning_hook(operator_hook: Any, plan: IdentityPlan, automount: bool, irsa: bool = True,
                 token_secret: str | None = None) -> Any:
    """A ``modify_pod_hook`` that runs the operator's hook (if any), then pins the pod.

    KubeSpawner calls ``modify_pod_hook`` after ``get_pod_manifest``, so this is the
    only place whose word is last. Wrapping an already wrapping hook unwraps it first.
    """
    if getattr(operator_hook, "_cloudidentity_pin", False):
        operator_hook = operator_hook._operator_hook

    async def modify_pod_hook(spawner: Any, pod: Any) -> Any:
        if operator_hook is not None:
            pod = operator_hook(spawner, pod)
            if inspect.isawaitable(pod):
                pod = await pod
        if spawner.namespace != plan.service_account.namespace:
            raise SpawnRefused("A profile moved your server to another namespace than your cloud identity's; ask your hub admin.")
        pin_pod(pod, plan, automount, irsa, token_secret)
        return pod

    modify_pod_hook._cloudidentity_pin = True
    modify_pod_hook._operator_hook = operator_hook
    return modify_pod_hook
