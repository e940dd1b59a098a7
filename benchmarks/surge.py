"""500 first logins at once, with throttling switched on: nothing fails, nothing is made twice,
and how much longer it takes than with plain KubeSpawner.

Every user spawns for the first time at the same moment, through start() to a running pod,
against the Kubernetes API emulator (each request taking --latency) and the local clouds: first
with plain KubeSpawner (the baseline), then with CloudIdentitySpawner in each mode, while a
share of ServiceAccount requests answer 429 TooManyRequests and a share of cloud calls answer
429 (EKS ThrottlingException; Cloud Storage rateLimitExceeded). Printed: failed spawns,
duplicate ServiceAccounts and cloud identities, throttled answers, the peak of concurrent cloud
calls from the hub, the time to a running pod (p50, p99, max), and the ratios of wall time and
of p50 to the baseline's.

    python benchmarks/surge.py                 # 500 users, both modes
    python benchmarks/surge.py --users 50 --modes principal
    python benchmarks/surge.py --think 10      # each user reads the form 10 s; identities made at login
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import subprocess
import sys
import time

from _local import BUCKET, CLUSTER, MODES, NAMESPACE, LocalStack


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=500, help="first logins at once (default 500)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--kube-throttle", type=float, default=0.1, help="share of ServiceAccount requests answered 429 (default 0.1)")
    parser.add_argument("--cloud-throttle", type=float, default=0.2, help="share of cloud calls answered 429 (default 0.2)")
    parser.add_argument("--cloud-delay", type=float, default=0.02, help="seconds each cloud call takes (default 0.02)")
    parser.add_argument("--latency", type=float, default=0.005, help="seconds each Kubernetes request takes (default 0.005)")
    parser.add_argument("--think", type=float, default=0.0,
                        help="seconds from each login to its spawn (the profile form); with it, identities are prepared "
                             "at login (prepare_at_login) and the baseline spawns as late (default 0: all spawn at once)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one mode, in a process of its own
    parser.add_argument("--baseline", help=argparse.SUPPRESS)  # plain KubeSpawner's "wall,p50"
    return parser.parse_args(argv)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def surge(args, mode: str) -> dict:
    from cloudidentity_spawner.metrics import CLOUD_CALLS_IN_FLIGHT

    stack = LocalStack("principal" if mode == "plain" else mode, kubelet_delay=0.05, cloud_delay=args.cloud_delay)
    stack.kube.latency = args.latency
    provider = "eks" if mode == "pod_identity" else "gcp"
    try:
        config = stack.config()
        config.KubeSpawner.start_timeout = 600
        config.KubeSpawner.http_timeout = 600
        spawners = [stack.spawner(f"learner-{i}", config, plain=mode == "plain") for i in range(args.users)]
        await spawners[0]._start_watching_pods()  # the hub's pod watch, before the crowd
        stack.kube.throttle_share = args.kube_throttle
        stack.eks.throttle_share = stack.gcp.throttle_share = args.cloud_throttle
        peak, sampling = [0.0], True

        async def sample():
            gauge = CLOUD_CALLS_IN_FLIGHT.labels(provider)
            while sampling:
                peak[0] = max(peak[0], gauge._value.get())
                await asyncio.sleep(0.002)

        async def start(spawner):
            if args.think:  # logged in now; presses Start after reading the form
                if mode != "plain":
                    preparing = asyncio.ensure_future(spawner.prepare_identity())
                await asyncio.sleep(args.think)
            t0 = time.perf_counter()
            await spawner.start()
            if args.think and mode != "plain":
                await preparing
            return time.perf_counter() - t0

        sampler = asyncio.create_task(sample())
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(start(s) for s in spawners), return_exceptions=True)
        wall = time.perf_counter() - t0
        sampling = False
        await sampler
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        times = [o for o in outcomes if not isinstance(o, BaseException)]
        accounts = [o for o in stack.kube.list("serviceaccounts", NAMESPACE) if o["metadata"]["name"].startswith("jupyter-learner-")]
        if mode == "plain":
            made, throttled = collections.Counter(), 0
        elif mode == "pod_identity":
            made = collections.Counter(a["serviceAccount"] for a in stack.eks.associations.values() if a["clusterName"] == CLUSTER)
            throttled = stack.eks.throttled
        else:
            made = collections.Counter(
                m for (bucket, folder) in stack.gcp.managed_folders if bucket == BUCKET
                for b in stack.gcp.policies.get(f"projects/_/buckets/{bucket}/managedFolders/{folder}")["bindings"] for m in b["members"]
            )
            throttled = stack.gcp.throttled_count
        stack.kube.throttle_share = 0.0
        await asyncio.gather(*(s.stop(now=True) for s in spawners), return_exceptions=True)
        return {"failures": failures, "times": times, "wall": wall, "accounts": len(accounts),
                "distinct_accounts": len({a["metadata"]["name"] for a in accounts}), "identities": sum(made.values()),
                "distinct_identities": len(made), "peak": peak[0], "cloud_throttled": throttled}
    finally:
        stack.stop()


def report(args, mode: str) -> None:
    r = asyncio.run(surge(args, mode))
    times = r["times"] or [float("nan")]
    if mode == "plain":
        print(f"plain KubeSpawner: {args.users} first logins at once in {r['wall']:.1f} s; {len(r['failures'])} failed "
              f"spawns; time to a running pod p50 {percentile(times, 50):.2f} s, p99 {percentile(times, 99):.2f} s, "
              f"max {max(times):.2f} s", flush=True)
        print(f"BASELINE {r['wall']} {percentile(times, 50)}", flush=True)
        return
    print(f"{mode}: {args.users} first logins at once in {r['wall']:.1f} s; {len(r['failures'])} failed spawns; "
          f"{r['accounts']} ServiceAccounts ({r['accounts'] - r['distinct_accounts']} duplicate), "
          f"{r['identities']} cloud identities for {r['distinct_identities']} accounts "
          f"({r['identities'] - r['distinct_identities']} duplicate)", flush=True)
    throttled = f", {r['cloud_throttled']} cloud calls throttled"
    print(f"  peak concurrent cloud calls from the hub {r['peak']:.0f}{throttled}; "
          f"time to a running pod p50 {percentile(times, 50):.2f} s, p99 {percentile(times, 99):.2f} s, max {max(times):.2f} s",
          flush=True)
    if args.baseline:
        wall, p50 = (float(v) for v in args.baseline.split(","))
        print(f"  against plain KubeSpawner: wall {r['wall'] / wall:.2f}x, p50 {percentile(times, 50) / p50:.2f}x", flush=True)
    for failure in r["failures"][:3]:
        print(f"  failure: {type(failure).__name__}: {failure}", flush=True)
    for line in REFUSALS[:3]:
        print(f"  hub log: {line}", flush=True)


REFUSALS: list[str] = []


class _Refusals(logging.Handler):
    """Keeps the hub's "spawn refused" lines, which say why (printed with a failure)."""

    def emit(self, record: logging.LogRecord) -> None:
        if "spawn refused" in record.getMessage():
            REFUSALS.append(record.getMessage())


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    hub_log = logging.getLogger("traitlets")
    hub_log.setLevel(logging.ERROR)
    hub_log.addHandler(_Refusals())
    hub_log.propagate = False
    if args.one:
        report(args, args.one)
        return
    started = time.perf_counter()
    print(f"surge: {args.kube_throttle:.0%} of ServiceAccount requests and {args.cloud_throttle:.0%} of cloud calls answer 429; "
          f"{args.latency * 1000:.0f} ms per Kubernetes request, {args.cloud_delay * 1000:.0f} ms per cloud call; "
          "kubelet 50 ms" + (f"; {args.think:.0f} s from login to spawn, identities prepared at login" if args.think else ""),
          flush=True)
    options = sum(([f"--{k.replace('_', '-')}", str(getattr(args, k))]
                   for k in ("users", "kube_throttle", "cloud_throttle", "cloud_delay", "latency", "think")), [])
    plain = subprocess.run([sys.executable, __file__, "--one", "plain", *options], check=True, capture_output=True, text=True)
    baseline = next(line.split()[1:] for line in plain.stdout.splitlines() if line.startswith("BASELINE "))
    print("\n".join(line for line in plain.stdout.splitlines() if not line.startswith("BASELINE ")), flush=True)
    for mode in args.modes:
        subprocess.run([sys.executable, __file__, "--one", mode, *options, "--baseline", ",".join(baseline)], check=True)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
