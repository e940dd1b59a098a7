"""What keeping storage tokens fresh costs the hub: N running servers whose tokens (lifetime L
seconds) the hub renews at a real OpenID provider (idpyoidc, RFC 8693 token exchange, login
renewals with refresh tokens) and writes to their Secrets in the Kubernetes API emulator.

The provider and the emulator run in another process, so the CPU time measured is the hub's
own (the token keeper: its tasks, HTTP to the issuer, JSON, Kubernetes writes). Prints the
renewals per minute, the hub's CPU per renewal and as a share of one core, and how late the
renewals were against each token's expiry.

    python benchmarks/token_refresh.py --servers 1000 --lifetime 60 --window 120
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMESPACE = "bench"


def serve(servers: int, lifetime: int) -> None:
    """The other process: the provider and the emulator; prints their URLs and each user's login."""
    from cloudidentity_spawner.testing.idp import OpenIDProvider
    from cloudidentity_spawner.testing.kubernetes import KubernetesAPI, KubernetesAPIServer

    logging.disable(logging.WARNING)
    users = [f"user{i}" for i in range(servers)]
    op = OpenIDProvider(users, token_lifetime=lifetime)
    op_server = KubernetesAPIServer(op).start()
    kube = KubernetesAPIServer(KubernetesAPI(namespaces=(NAMESPACE,))).start()
    path = os.path.join(tempfile.mkdtemp(prefix="token-bench-"), "kubeconfig")
    kube.write_kubeconfig(path, NAMESPACE)
    logins = {u: op.login(u) for u in users}
    print(json.dumps({"token_url": op_server.url + "/token", "kubeconfig": path, "logins": logins}), flush=True)
    sys.stdin.read()  # until the benchmark is done
    op_server.stop()
    kube.stop()


class User:
    def __init__(self, name: str, state: dict):
        self.name, self.state = name, state

    async def get_auth_state(self):
        return self.state

    async def save_auth_state(self, state):
        self.state = state


async def measure(info: dict, servers: int, lifetime: int, window: float) -> None:
    from kubernetes_asyncio import client, config

    from cloudidentity_spawner.testing.idp import CLIENT_ID, CLIENT_SECRET
    from cloudidentity_spawner.token_keeper import TokenKeeper

    log = logging.getLogger("bench")
    log.setLevel(logging.WARNING)
    settings = SimpleNamespace(storage_token_url=info["token_url"], storage_token_client_id=CLIENT_ID,
                               storage_token_client_secret=CLIENT_SECRET, storage_token_max_concurrent_refreshes=8,
                               hub_name="bench", log=log)
    keeper = TokenKeeper(settings)
    writes: list[tuple[float, float]] = []  # (when, seconds before the old token expired)
    expiry: dict[str, float] = {}
    originals = {"_create": keeper._create, "_patch": keeper._patch}

    def counting(kind):
        async def counted(api, body, timeout):
            await originals[kind](api, body, timeout)
            record(body)
        return counted

    def record(body):
        name = body["metadata"]["name"]
        now = time.time()
        if name in expiry:
            writes.append((now, expiry[name] - now))
        expiry[name] = calendar.timegm(time.strptime(body["metadata"]["annotations"]["cloudidentity-spawner/expires-at"],
                                                     "%Y-%m-%dT%H:%M:%SZ"))

    keeper._create, keeper._patch = counting("_create"), counting("_patch")
    api_client = await config.new_client_from_config(config_file=info["kubeconfig"])
    api = client.CoreV1Api(api_client)
    tokens = {"audience": "https://wlcg.cern.ch/jwt/v1/any", "scope": ""}
    spawners = []
    for name, login in info["logins"].items():
        spawners.append(SimpleNamespace(**vars(settings), user=User(name, dict(login)), name="", namespace=NAMESPACE,
                                        pod_name=f"jupyter-{name}", authenticator=None))
    start_cpu, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.gather(*(keeper.start(s, api, SimpleNamespace(tokens={**tokens, "scope": f"storage.read:/escape/users/{s.user.name}"}),
                                        30) for s in spawners))
    first = time.monotonic() - started
    issued_cpu = resource.getrusage(resource.RUSAGE_SELF)
    writes.clear()
    window_start, cpu_before = time.monotonic(), issued_cpu
    await asyncio.sleep(window)
    cpu_after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - window_start
    for task in keeper.tasks.values():
        task.cancel()
    await api_client.close()

    def cpu(a, b):
        return (b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)

    renewals = len(writes)
    margins = sorted(m for _, m in writes)
    print(f"token refresh: {servers} running servers, tokens of {lifetime} s, {window:.0f} s measured")
    print(f"first tokens: {servers} in {first:.1f} s ({servers / first * 60:.0f} per minute), hub CPU {cpu(start_cpu, issued_cpu):.2f} s")
    if renewals:
        per = cpu(cpu_before, cpu_after) / renewals
        print(f"renewals: {renewals} in {elapsed:.0f} s = {renewals / elapsed * 60:.0f} per minute; hub CPU "
              f"{cpu(cpu_before, cpu_after):.2f} s = {per * 1000:.1f} ms per renewal, "
              f"{cpu(cpu_before, cpu_after) / elapsed * 100:.1f} % of one core")
        print(f"renewed before expiry: min {margins[0]:.1f} s, median {margins[len(margins) // 2]:.1f} s; "
              f"{sum(1 for m in margins if m < 0)} after it")
    else:
        print("renewals: none in the window (lengthen --window)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--lifetime", type=int, default=60, help="token lifetime, seconds")
    parser.add_argument("--window", type=float, default=120.0, help="seconds of renewals measured")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.servers, args.lifetime)
        return 0
    other = subprocess.Popen([sys.executable, __file__, "--serve", "--servers", str(args.servers), "--lifetime",
                              str(args.lifetime)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(other.stdout.readline())
        asyncio.run(measure(info, args.servers, args.lifetime, args.window))
    finally:
        other.stdin.close()
        other.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
