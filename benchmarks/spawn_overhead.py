"""Spawn overhead of CloudIdentitySpawner against plain KubeSpawner.

Spawns N users with both spawners, interleaved in one run, against the
Kubernetes API emulator with a per-request latency, and prints the median
spawn time ratio (ours / plain) for cold spawns (no ServiceAccount yet) and
warm spawns (ServiceAccount already right), and Kubernetes API requests per
spawn (watch streams excluded: they are shared by all spawns).

    python benchmarks/spawn_overhead.py --users 30 --latency 0.005

Targets: warm adds at most 1 request and <= 5% time; cold adds at most 2 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudidentity_spawner.testing.kubernetes import KubernetesAPI, KubernetesAPIServer  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30, help="users per spawner kind (default 30)")
    parser.add_argument("--latency", type=float, default=0.005, help="seconds added to every API request (default 0.005)")
    parser.add_argument("--kubelet-delay", type=float, default=0.05, help="seconds before a pod runs (default 0.05)")
    return parser.parse_args(argv)


async def run(args) -> dict:
    from kubernetes_asyncio.config import kube_config

    api = KubernetesAPI(kubelet_delay=args.kubelet_delay)
    server = KubernetesAPIServer(api).start()
    path = os.path.join(tempfile.mkdtemp(prefix="cloudidentity-bench-"), "kubeconfig")
    server.write_kubeconfig(path)
    os.environ["KUBECONFIG"] = path
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path

    from jupyterhub.objects import Hub
    from kubespawner import KubeSpawner
    from traitlets.config import Config

    from cloudidentity_spawner import CloudIdentitySpawner

    class User:
        def __init__(self, name):
            self.name, self.id, self.url, self.server = name, abs(hash(name)) % 10**6, f"/user/{name}/", None
            self.progress_url, self.groups = "", []

        async def get_auth_state(self):
            return {"oauth_user": {"sub": self.name, "wlcg.groups": ["/bench"]}}

    class OrmSpawner:
        name, display_name, server, last_activity = "", "", None, None

    namespace = "bench"
    api.put("namespaces", "", {"metadata": {"name": namespace}})
    c = Config()
    c.KubeSpawner.namespace = namespace
    c.KubeSpawner.image = "quay.io/jupyter/base-notebook:latest"
    c.KubeSpawner.start_timeout = 60
    c.CloudIdentitySpawner.identity_rules = [
        {"name": "bench", "match": {"groups": ["/bench"]},
         "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/user-{username}"}}
    ]

    def spawner(cls, name):
        return cls(config=c, user=User(name), hub=Hub(), orm_spawner=OrmSpawner(), api_token="t",
                   oauth_client_id=f"jupyterhub-user-{name}", _mock=True)

    def spawn_requests(since: int) -> int:
        # Watches and the reflectors' re-lists serve every spawn at once; not billed to one. The
        # Event on a created or changed ServiceAccount is sent in the background, after the spawn
        # has moved on (it never delays one), and is not counted either.
        return sum(
            1
            for method, path, query in api.requests[since:]
            if "watch=" not in query.lower() and not path.endswith("/events")
            and not (method == "GET" and path.endswith(("/pods", "/serviceaccounts")))
        )

    # Time the identity step itself too: end-to-end times are quantised by
    # KubeSpawner's polling for the pod, the identity step is not.
    from cloudidentity_spawner import provisioner as provisioner_module

    identity_times: list[float] = []
    prepare = provisioner_module.IdentityProvisioner.prepare

    async def timed_prepare(self, namespace, *args):
        t0 = time.perf_counter()
        try:
            return await prepare(self, namespace, *args)
        finally:
            identity_times.append(time.perf_counter() - t0)

    provisioner_module.IdentityProvisioner.prepare = timed_prepare

    async def timed(cls, name):
        s = spawner(cls, name)
        # Let the shared reflectors start first, so they are not billed to one spawn.
        await s._start_watching_pods()
        await s._start_watching_events()
        before = len(api.requests)
        t0 = time.perf_counter()
        await s.start()
        elapsed = time.perf_counter() - t0
        requests = spawn_requests(before)
        pod_created = next(
            api.request_times[i]
            for i in range(before, len(api.requests))
            if api.requests[i][0] == "POST" and api.requests[i][1].endswith("/pods")
        )
        await s.stop()
        identity = identity_times[-1] if cls is CloudIdentitySpawner else 0.0
        return elapsed, requests, identity, pod_created - t0

    await timed(KubeSpawner, "warmup-plain")
    await timed(CloudIdentitySpawner, "warmup-ours")
    api.latency = args.latency
    results = {k: {"t": [], "n": [], "identity": [], "to_pod": []} for k in ("plain-cold", "ours-cold", "plain-warm", "ours-warm")}
    for phase in ("cold", "warm"):
        for i in range(args.users):
            kinds = [("plain", KubeSpawner), ("ours", CloudIdentitySpawner)]
            for kind, cls in kinds if i % 2 else kinds[::-1]:  # alternate who goes first
                elapsed, requests, identity, to_pod = await timed(cls, f"{kind}-user-{i}")
                results[f"{kind}-{phase}"]["to_pod"].append(to_pod)
                results[f"{kind}-{phase}"]["t"].append(elapsed)
                results[f"{kind}-{phase}"]["n"].append(requests)
                results[f"{kind}-{phase}"]["identity"].append(identity)
    server.stop()
    return results


def report(results, args) -> str:
    lines = [f"spawn overhead: {args.users} users per kind, {args.latency * 1000:.1f} ms per API request, "
             f"kubelet delay {args.kubelet_delay * 1000:.0f} ms"]
    for phase in ("cold", "warm"):
        plain, ours = results[f"plain-{phase}"], results[f"ours-{phase}"]
        tp, to = statistics.median(plain["t"]), statistics.median(ours["t"])
        np_, no = statistics.mean(plain["n"]), statistics.mean(ours["n"])
        step = statistics.median(ours["identity"])
        pp, po = statistics.median(plain["to_pod"]), statistics.median(ours["to_pod"])
        lines.append(
            f"{phase}: API requests per spawn {np_:.1f} plain, {no:.1f} ours (+{no - np_:.1f}); "
            f"identity step median {step * 1000:.1f} ms\n"
            f"  start() to pod create request: median {pp * 1000:.1f} ms plain, {po * 1000:.1f} ms ours: "
            f"+{(po - pp) * 1000:.1f} ms added, spawn time ratio {(tp + po - pp) / tp:.3f} "
            f"(plain whole start() + added) / plain\n"
            f"  whole start(): median {tp * 1000:.1f} ms plain, {to * 1000:.1f} ms ours, ratio {to / tp:.3f} "
            f"(noisy: KubeSpawner polls for the running pod with jittered backoff)"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(run(args))
    print(report(results, args))


if __name__ == "__main__":
    main()
