"""What a spawn costs the hub with 10, 1,000 and 10,000 users who spawned before.

For each mode without a cloud principal per user (EKS Pod Identity associations; GCP grants
to the ServiceAccount's own principal on managed folders), the Kubernetes API emulator and the
local clouds are loaded with N users' ServiceAccounts and cloud side, then a hub starts (its
ServiceAccount watch cache lists them all) and spawns:

* cold: a new user (nothing exists yet);
* warm, first: an existing user's first spawn since the hub started (its cloud cache is empty);
* warm: the same user again (everything cached).

Printed per kind: Kubernetes requests and cloud calls per spawn, identity step p50/p99; per N:
the watch cache's first list at hub start and its memory (tracemalloc) per cached account.

    python benchmarks/scale.py                   # N = 10, 1000, 10000
    python benchmarks/scale.py --sizes 10 100 --spawns 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import subprocess
import sys
import time
import tracemalloc

from _local import MODES, NAMESPACE, LocalStack


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10000], help="existing users (default 10 1000 10000)")
    parser.add_argument("--spawns", type=int, default=40, help="spawns measured per kind (default 40)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)  # one run, in a process of its own
    return parser.parse_args(argv)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def stop(reflector) -> None:
    try:
        await reflector.stop()
    except asyncio.CancelledError:  # its watch task, cancelled by stop() itself
        pass


async def measure(mode: str, size: int, spawns: int) -> dict:
    from cloudidentity_spawner import CloudIdentitySpawner
    from cloudidentity_spawner.kube import ServiceAccountReflector
    from cloudidentity_spawner.providers import _backends

    stack = LocalStack(mode)
    try:
        stack.preload(size)
        _backends.clear()
        CloudIdentitySpawner.reflectors.clear()
        # Memory of the watch cache: a reflector of its own, traced from start to first load.
        probe = stack.spawner("probe")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        reflector = ServiceAccountReflector(parent=probe, namespace=NAMESPACE)
        await reflector.start()
        await reflector.first_load_future
        gc.collect()
        memory = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        cached = len(reflector.resources)
        await stop(reflector)
        # The hub starting: the first spawn's cache lists every ServiceAccount (timed without tracing).
        t0 = time.perf_counter()
        cache = await stack.spawner("hub-start")._service_account_cache()
        first_list = time.perf_counter() - t0
        assert cache is not None and len(cache) >= size

        # The hub makes its cloud client on first use: once, not per spawn, so not measured.
        await stack.spawner("warm-up")._provisioner().prepare(NAMESPACE, cache)
        results = {}
        existing = [f"user-{i * size // min(spawns, size)}" for i in range(min(spawns, size))]  # spread, distinct
        kinds = (("cold", [f"new-{i}" for i in range(spawns)]), ("warm, first", existing), ("warm", existing))
        for kind, users in kinds:
            kube, cloud, times = [], [], []
            for name in users:
                s = stack.spawner(name)
                cache = await s._service_account_cache()
                k0, c0 = len(stack.kube.requests), stack.cloud_calls()
                t0 = time.perf_counter()
                await s._provisioner().prepare(NAMESPACE, cache)
                times.append(time.perf_counter() - t0)
                kube.append(stack.kube_requests(k0))
                cloud.append(stack.cloud_calls() - c0)
            results[kind] = (statistics.mean(kube), statistics.mean(cloud), percentile(times, 50), percentile(times, 99))
        for reflector in list(CloudIdentitySpawner.reflectors.values()):
            await stop(reflector)
        CloudIdentitySpawner.reflectors.clear()
        return {"first_list": first_list, "memory": memory, "cached": cached, "spawns": results}
    finally:
        stack.stop()


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.one:
        report(args.one[0], int(args.one[1]), args.spawns)
        return
    started = time.perf_counter()
    print(f"scale: {args.spawns} spawns per kind; identity step = resolve, cloud side and ServiceAccount (no pod)", flush=True)
    for mode in args.modes:
        for size in args.sizes:
            # A process per run: a fresh hub (its Kubernetes client, caches and memory) each time.
            subprocess.run([sys.executable, __file__, "--one", mode, str(size), "--spawns", str(args.spawns)], check=True)
    print(f"total {time.perf_counter() - started:.0f} s")


def report(mode: str, size: int, spawns: int) -> None:
    r = asyncio.run(measure(mode, size, spawns))
    print(f"{mode} with {size} existing users: watch cache first list {r['first_list'] * 1000:.0f} ms, "
          f"{r['memory'] / max(1, r['cached']) / 1024:.1f} KiB per cached account ({r['cached']} cached)")
    for kind, (kube, cloud, p50, p99) in r["spawns"].items():
        print(f"  {kind + ':':13} {kube:.1f} Kubernetes requests, {cloud:.1f} cloud calls per spawn; "
              f"identity step p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
