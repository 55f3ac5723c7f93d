"""Benchmark: the whole `dataplane verify` (build, probe load, traffic, verdicts,
teardown) of the 4x8 topology, all 992 ordered pod pairs over ICMP, against a plain
reachability sweep of `ip netns exec POD ping -c1` per pair on an already-built
cluster, in the same run. Prints both, the ratio and verify's peak RSS.
Targets (issue 4): verify faster than the bare ping sweep, peak RSS < 300 MB.
Run as root: `make bench`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataplane import cluster  # noqa: E402

DP = str(ROOT / ".venv" / "bin" / "dataplane")
BIG = ROOT / "topologies" / "flannel-vxlan-4x8.toml"


def whole_verify() -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.Popen([DP, "verify", str(BIG)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dataplane verify failed:\n{out[-2000:]}")
    return elapsed, usage.ru_maxrss, out.strip().splitlines()[-1]


def ping_sweep(plan) -> tuple[float, int]:
    """One `ip netns exec SRC ping -c1 DST` per ordered pair, one after another."""
    pods = plan.pods()
    start, failed = time.perf_counter(), 0
    for src in pods:
        for dst in pods:
            if src != dst:
                failed += subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-c1",
                                          "-W1", "-q", str(dst.ip)],
                                         stdout=subprocess.DEVNULL).returncode != 0
    return time.perf_counter() - start, failed


def main() -> int:
    if os.geteuid() != 0:
        print("bench_verify: needs root; run it as root (make bench)")
        return 2
    verify_time, rss, summary = whole_verify()
    made = cluster.up(BIG, name=f"bench-ping{os.getpid()}")
    try:
        sweep_time, failed = ping_sweep(made.plan)
    finally:
        cluster.down(made.name)
    print("4x8, all 992 ordered pod pairs, ICMP:")
    print(f"  dataplane verify, whole process     {verify_time:6.2f} s  peak RSS "
          f"{rss / 1024:.0f} MB (target < 300 MB)")
    print(f"    {summary}")
    print(f"  ping sweep on a built cluster (baseline) {sweep_time:6.2f} s  ({failed} failed)")
    print(f"  ratio sweep / verify = {sweep_time / verify_time:.2f}x (target > 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
