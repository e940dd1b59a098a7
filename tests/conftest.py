"""Shared fixtures: one Kubernetes API for the whole session (the emulator on
127.0.0.1, or a real cluster given with --kubeconfig / CLOUDIDENTITY_TEST_KUBECONFIG)."""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest
from kubernetes_asyncio.config import kube_config

from cloudidentity_spawner.testing.kubernetes import KubernetesAPIServer

_server: KubernetesAPIServer | None = None


def pytest_addoption(parser):
    parser.addoption(
        "--kubeconfig",
        default=os.environ.get("CLOUDIDENTITY_TEST_KUBECONFIG"),
        help="run the Kubernetes scenario tests against this real cluster instead of the emulator",
    )


def pytest_configure(config):
    global _server
    os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)
    config.addinivalue_line("markers", "emulator_only: needs the emulator's fault injection or kubelet control")
    path = config.getoption("--kubeconfig")
    if not path:
        # Started before anything loads kube config, so KubeSpawner's (cached) config points here.
        _server = KubernetesAPIServer().start()
        path = os.path.join(tempfile.mkdtemp(prefix="cloudidentity-kube-"), "kubeconfig")
        _server.write_kubeconfig(path)
    os.environ["KUBECONFIG"] = path
    # kubernetes_asyncio reads $KUBECONFIG once, at import; point its default at ours.
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path


SESSION_MARK = "CLOUDIDENTITY_TEST_SESSION"
"""Set for the session, so every process a test starts carries it in its environment."""


def leftover_processes(grace: float = 10.0) -> list[str]:
    """Processes started during this session (they carry its mark) that still run, other than
    this one: a hub, proxy, service or notebook server a test did not stop. Each gets *grace*
    seconds to finish stopping, then is killed (so nothing outlives the suite) and reported."""
    import psutil

    mark, me = os.environ.get(SESSION_MARK), os.getpid()
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != me and process.environ().get(SESSION_MARK) == mark:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    _, alive = psutil.wait_procs(found, timeout=grace)
    described = []
    for process in alive:
        try:
            ports = sorted({c.laddr.port for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN})
            described.append(f"{process.pid} {' '.join(process.cmdline())[:200]} (listening on {ports or 'nothing'})")
            process.kill()
        except psutil.Error:
            continue
    return described


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves nothing running: a process a test started and did not stop fails it."""
    if os.environ.get(SESSION_MARK) is None or hasattr(session.config, "workerinput"):
        return
    left = leftover_processes()
    if left:
        session.config.get_terminal_writer().line(
            "\nprocesses the tests started are still running (killed now):\n  " + "\n  ".join(left), red=True)
        session.exitstatus = 1


def pytest_unconfigure(config):
    if _server is not None:
        _server.stop()


def pytest_collection_modifyitems(config, items):
    if _server is None:
        skip = pytest.mark.skip(reason="needs the Kubernetes API emulator (fault injection); a real cluster was given")
        for item in items:
            if "emulator_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def kube_server():
    """The emulator server, or None when running against a real cluster."""
    return _server


@pytest.fixture
def emulator(kube_server):
    if kube_server is None:
        pytest.skip("needs the Kubernetes API emulator; a real cluster was given")
    api = kube_server.api
    api.faults.clear()
    api.latency = 0.0
    return api


@pytest.fixture
async def namespace():
    """A fresh namespace per test, created through the API (works on a real cluster too)."""
    from kubernetes_asyncio import client, config

    name = "t-" + uuid.uuid4().hex[:10]
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).create_namespace({"metadata": {"name": name}})
    yield name
    # KubeSpawner keeps a pod (and our ServiceAccount) watch per namespace for the life of
    # the process; a hub has one namespace, a test session hundreds: stop this one's.
    from kubespawner import KubeSpawner

    for key in [k for k in KubeSpawner.reflectors if k[1] == name]:
        await KubeSpawner.reflectors.pop(key).stop()
    api_client = await config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    async with api_client:
        await client.CoreV1Api(api_client).delete_namespace(name)


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto in server mode on 127.0.0.1 (IAM, STS, S3), with fake credentials for boto3."""
    moto_server = pytest.importorskip("moto.server", reason="the aws test extra (moto) is not installed")
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def gcp_server():
    """The local Google Cloud IAM server (gRPC IAM Admin, REST Resource Manager and Storage)."""
    gcp = pytest.importorskip("cloudidentity_spawner.testing.gcp", reason="the gcp extra is not installed")
    server = gcp.GoogleCloudServer(gcp.GoogleCloudState(projects=("my-project",), quota=100, buckets=("lab-scratch",))).start()
    yield server
    server.stop()
