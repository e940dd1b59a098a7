"""Dask pods under the user's ServiceAccount: dask-gateway's options handling and dask-kubernetes specs."""

from __future__ import annotations

import pytest

from cloudidentity_spawner import CloudIdentitySpawner
from cloudidentity_spawner.dask import gateway_options_handler, pin_cluster_spec

from .kubehelpers import SpawnUser, make_spawner, oidc_state, read, spawner_config

options_module = pytest.importorskip("dask_gateway_server.options", reason="dask-gateway-server is not installed")
models = pytest.importorskip("dask_gateway_server.models", reason="dask-gateway-server is not installed")

RULES = [
    {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
     "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/atlas"}},
    {"name": "members", "match": {"groups": ["/escape"]},
     "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/user-{username}"},
     "env": {"SCRATCH_BUCKET": "s3://scratch/{username}"}},
]


def gateway_options(**kwargs):
    Options, Integer, String = options_module.Options, options_module.Integer, options_module.String
    return Options(
        Integer("worker_cores", default=1, min=1, max=4),
        String("image", default="ghcr.io/dask/dask:latest"),
        handler=gateway_options_handler(RULES, namespace="jupyterhub", hub_name="escape-hub", **kwargs),
    )


def configure(options, user, requested=None):
    """What dask-gateway-server does with a cluster request: parse, transform, handle."""
    parsed = options.parse_options(requested or {})
    return options.get_configuration(parsed, user)


async def test_gateway_clusters_use_the_same_account_the_spawner_made(namespace):
    # The spawner makes carol's account from her login; the gateway sees only name and groups.
    spawner = make_spawner(CloudIdentitySpawner, spawner_config(namespace, RULES),
                           SpawnUser("carol", oidc_state(**{"wlcg.groups": ["/escape"]})))
    await spawner.start()
    await spawner.stop()
    pod_sa = spawner.service_account
    assert (await read("serviceaccount", namespace, pod_sa)) is not None

    handler = gateway_options_handler(RULES, namespace=namespace, hub_name="jupyterhub")
    config = handler(options_module.FrozenAttrDict({"worker_cores": 2}), models.User("carol", groups=["/escape"]))
    assert config["scheduler_extra_pod_config"]["serviceAccountName"] == pod_sa
    assert config["worker_extra_pod_config"]["serviceAccountName"] == pod_sa
    assert config["environment"]["SCRATCH_BUCKET"] == "s3://scratch/carol"
    assert config["worker_cores"] == 2


def test_group_members_share_the_group_account_on_the_gateway():
    options = gateway_options()
    a = configure(options, models.User("alice", groups=["/escape", "/escape/atlas"]))
    b = configure(options, models.User("amir", groups=["/escape/atlas"]))
    assert a["worker_extra_pod_config"]["serviceAccountName"] == b["worker_extra_pod_config"]["serviceAccountName"]


def test_users_cannot_pick_another_account_through_gateway_options():
    def operator_handler(options, user):
        # An operator who (unwisely) passes user input into pod config.
        return {"worker_cores": options.worker_cores,
                "worker_extra_pod_config": {"serviceAccountName": options.image, "serviceAccount": options.image}}

    options = gateway_options(handler=operator_handler)
    config = configure(options, models.User("carol", groups=["/escape"]), {"image": "jupyter-alice"})
    assert config["worker_extra_pod_config"]["serviceAccountName"] == "jupyter-carol"
    assert "serviceAccount" not in config["worker_extra_pod_config"]
    assert config["worker_cores"] == 1


def test_gateway_user_without_a_matching_rule_gets_a_clear_error():
    with pytest.raises(ValueError, match="No cloud identity is configured for user 'bob'"):
        configure(gateway_options(), models.User("bob", groups=[]))


async def test_notebook_gets_the_account_for_dask_kubernetes(namespace):
    spawner = make_spawner(CloudIdentitySpawner, spawner_config(namespace, RULES),
                           SpawnUser("dina", oidc_state(**{"wlcg.groups": ["/escape"]})))
    await spawner.start()
    pod = await read("pod", namespace, spawner.pod_name)
    await spawner.stop()
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["CLOUDIDENTITY_SERVICE_ACCOUNT"] == "jupyter-dina"
    assert env["CLOUDIDENTITY_NAMESPACE"] == namespace


def test_kubecluster_spec_runs_scheduler_and_workers_under_the_account(monkeypatch):
    operator = pytest.importorskip("dask_kubernetes.operator", reason="dask-kubernetes is not installed")
    from cloudidentity_spawner.dask import kubecluster_spec

    monkeypatch.setenv("CLOUDIDENTITY_SERVICE_ACCOUNT", "jupyter-dina")
    spec = kubecluster_spec("analysis", n_workers=3, image="ghcr.io/dask/dask:latest")
    assert spec["kind"] == "DaskCluster"
    for part in ("scheduler", "worker"):
        assert spec["spec"][part]["spec"]["serviceAccountName"] == "jupyter-dina"
        assert spec["spec"][part]["spec"]["automountServiceAccountToken"] is False
    assert spec["spec"]["worker"]["replicas"] == 3
    # The rest of the spec is dask-kubernetes' own.
    plain = operator.make_cluster_spec("analysis", n_workers=3, image="ghcr.io/dask/dask:latest")
    assert spec["spec"]["worker"]["spec"]["containers"] == plain["spec"]["worker"]["spec"]["containers"]


def test_pin_cluster_spec_overrides_a_foreign_account():
    spec = {"spec": {"scheduler": {"spec": {"serviceAccountName": "admin"}}, "worker": {"spec": {"serviceAccount": "admin"}}}}
    pinned = pin_cluster_spec(spec, "jupyter-eve")
    assert pinned["spec"]["scheduler"]["spec"]["serviceAccountName"] == "jupyter-eve"
    assert "serviceAccount" not in pinned["spec"]["worker"]["spec"]
    assert spec["spec"]["scheduler"]["spec"]["serviceAccountName"] == "admin"  # input untouched


STORE_RULES = [{"name": "members", "match": {"groups": ["escape"]}, "s3_sts": {
    "endpoint": "https://s3.example.org", "audience": "sts.example.org",
    "role_arn": "arn:aws:iam:::role/jupyterhub/{username}"}}]


def test_gateway_pods_get_the_stores_token_and_variables():
    """On an S3-compatible store no webhook exists: the scheduler and workers get the same
    projected token (audience) and AWS SDK variables as the notebook, whatever the options say."""
    Options, String = options_module.Options, options_module.String

    def operators(options):
        return {"scheduler_extra_pod_config": {"volumes": [{"name": "cloudidentity-s3-sts-token", "emptyDir": {}}]},
                "worker_extra_container_config": {"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                "environment": {"AWS_ROLE_ARN": "arn:aws:iam:::role/admin", "MINE": "kept"}}

    options = Options(String("image", default="ghcr.io/dask/dask:latest"),
                      handler=gateway_options_handler(STORE_RULES, namespace="jupyterhub", handler=operators))
    config = configure(options, models.User("alice", groups=["escape"]))
    for part in ("scheduler", "worker"):
        [volume] = [v for v in config[f"{part}_extra_pod_config"]["volumes"] if v["name"] == "cloudidentity-s3-sts-token"]
        assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "sts.example.org"
        mounts = config[f"{part}_extra_container_config"]["volumeMounts"]
        assert {"name": "cloudidentity-s3-sts-token", "mountPath": "/var/run/secrets/cloudidentity/s3-sts",
                "readOnly": True} in mounts
    assert {"name": "data", "mountPath": "/data"} in config["worker_extra_container_config"]["volumeMounts"]
    env = config["environment"]
    assert env["AWS_ROLE_ARN"] == "arn:aws:iam:::role/jupyterhub/alice" and env["MINE"] == "kept"
    assert env["AWS_ROLE_SESSION_NAME"] == "alice" and env["AWS_ENDPOINT_URL_S3"] == "https://s3.example.org"


def test_kubecluster_spec_gives_dask_pods_the_notebooks_store_token(monkeypatch):
    pytest.importorskip("dask_kubernetes.operator", reason="dask-kubernetes is not installed")
    from cloudidentity_spawner.dask import kubecluster_spec
    from cloudidentity_spawner.pinning import planned_env
    from cloudidentity_spawner.rules import IdentityRules
    from cloudidentity_spawner.claims import Claims

    plan = IdentityRules.from_config(STORE_RULES, "h").resolve(Claims(username="alice", groups=("escape",)), "jupyterhub")
    for key, value in {**planned_env(plan), **plan.cloud.resources["pod"]["env"]}.items():
        monkeypatch.setenv(key, value)  # the notebook's environment, as the spawner pins it
    spec = kubecluster_spec("analysis", n_workers=1, image="ghcr.io/dask/dask:latest")
    for part in ("scheduler", "worker"):
        pod = spec["spec"][part]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "cloudidentity-s3-sts-token"]
        assert volume["projected"]["sources"][0]["serviceAccountToken"] == {
            "audience": "sts.example.org", "expirationSeconds": 3600, "path": "token"}
        for container in pod["containers"]:
            env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
            assert env["AWS_ROLE_ARN"] == "arn:aws:iam:::role/jupyterhub/alice"
            assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/cloudidentity/s3-sts/token"
            assert any(m["name"] == "cloudidentity-s3-sts-token" for m in container["volumeMounts"])


def test_kubecluster_spec_gives_dask_pods_the_notebooks_storage_token(monkeypatch):
    """The same Secret the hub keeps renewed, so workers read the token the notebook reads."""
    pytest.importorskip("dask_kubernetes.operator", reason="dask-kubernetes is not installed")
    from cloudidentity_spawner.dask import kubecluster_spec

    monkeypatch.setenv("CLOUDIDENTITY_SERVICE_ACCOUNT", "jupyter-alice")
    monkeypatch.setenv("BEARER_TOKEN_FILE", "/var/run/secrets/cloudidentity/storage/token")
    monkeypatch.setenv("CLOUDIDENTITY_STORAGE_TOKEN_SECRET", "jupyter-alice-storage-token")
    monkeypatch.setenv("RUCIO_CONFIG", "/var/run/secrets/cloudidentity/storage/rucio.cfg")
    spec = kubecluster_spec("analysis", n_workers=1, image="ghcr.io/dask/dask:latest")
    for part in ("scheduler", "worker"):
        pod = spec["spec"][part]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "storage-token"]
        assert volume["secret"]["secretName"] == "jupyter-alice-storage-token"
        for container in pod["containers"]:
            [mount] = [m for m in container["volumeMounts"] if m["name"] == "storage-token"]
            assert mount == {"name": "storage-token", "mountPath": "/var/run/secrets/cloudidentity/storage", "readOnly": True}
            assert {"name": "BEARER_TOKEN_FILE", "value": "/var/run/secrets/cloudidentity/storage/token"} in container["env"]
            assert {"name": "RUCIO_CONFIG", "value": "/var/run/secrets/cloudidentity/storage/rucio.cfg"} in container["env"]
    monkeypatch.delenv("CLOUDIDENTITY_STORAGE_TOKEN_SECRET")
    plain = kubecluster_spec("analysis", n_workers=1, image="ghcr.io/dask/dask:latest")
    assert not any(v["name"] == "storage-token" for v in plain["spec"]["worker"]["spec"].get("volumes") or [])
