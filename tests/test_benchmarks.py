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
