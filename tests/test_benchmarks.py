"""The benchmarks stay runnable (their figures are read by people, not asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_spawn_overhead_benchmark_runs_and_reports():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/spawn_overhead.py"), "--users", "2", "--latency", "0.001"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("spawn overhead: 2 users per kind")
    assert any(l.startswith("cold: API requests per spawn 1.0 plain, 2.0 ours (+1.0)") for l in lines), out.stdout
    assert any(l.startswith("warm: API requests per spawn 1.0 plain") for l in lines), out.stdout


def test_scale_benchmark_runs_and_warm_spawns_cost_nothing():
    out = subprocess.run(
        [sys.executable, "scale.py", "--sizes", "5", "50", "--spawns", "4"],
        capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    for mode in ("pod_identity", "principal"):
        for size in (5, 50):
            assert any(l.startswith(f"{mode} with {size} existing users: watch cache first list") for l in lines), out.stdout
    warm = [l for l in lines if l.strip().startswith("warm:")]
    assert len(warm) == 4 and all("0.0 Kubernetes requests, 0.0 cloud calls per spawn" in l for l in warm), out.stdout
    cold = [l for l in lines if l.strip().startswith("cold:")]
    assert all("1.0 Kubernetes requests" in l for l in cold), out.stdout


def test_surge_benchmark_runs_and_nothing_fails_or_is_made_twice():
    out = subprocess.run(
        [sys.executable, "surge.py", "--users", "25"],
        capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(l.startswith("plain KubeSpawner: 25 first logins at once") and "0 failed spawns" in l for l in lines), out.stdout
    results = [l for l in lines if "first logins at once" in l and not l.startswith("plain")]
    assert len(results) == 2, out.stdout
    assert len([l for l in lines if "against plain KubeSpawner: wall" in l]) == 2, out.stdout
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[-3000:]
    for line in results:
        assert "0 failed spawns; 25 ServiceAccounts (0 duplicate), 25 cloud identities for 25 accounts (0 duplicate)" in line, out.stdout
    throttled = [l for l in out.stdout.splitlines() if "cloud calls throttled" in l]
    assert len(throttled) == 2 and not any(", 0 cloud calls throttled" in l for l in throttled), out.stdout


def test_token_refresh_benchmark_runs_and_renews_before_expiry():
    out = subprocess.run(
        [sys.executable, "token_refresh.py", "--servers", "5", "--lifetime", "4", "--window", "8"],
        capture_output=True, text=True, timeout=300, cwd=ROOT / "benchmarks",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "token refresh: 5 running servers, tokens of 4 s, 8 s measured", out.stdout
    assert any(l.startswith("renewals: ") and " per minute; hub CPU " in l for l in lines), out.stdout
    assert any(l.startswith("renewed before expiry:") and l.endswith("; 0 after it") for l in lines), out.stdout
