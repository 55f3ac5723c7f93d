"""Benchmark: `dataplane verify` at scale and on a broken network, whole processes.

- 16 nodes x 32 pods, `--pairs all`, ICMP: 261,632 flows. Targets: < 120 s, peak RSS
  < 400 MB (memory must not grow with the flows' hops).
- 4x8, every protocol and the MTU probes: 6944 flows. Targets: < 8 s, peak RSS < 200 MB.
- 4x8 with node-1's flannel.1 down against a healthy 4x8, built side by side, verified
  alternately (median of per-run ratios). Target: broken < 2x healthy (a wave pays the
  answer timeout once, not each unanswered flow).
Each prints flows/s and where the time went (verify's own `time:` line: audit, caches,
probes, send, answers, events, judge). Run as root: `make bench` (or SCALE_RUNS=1 for
fewer alternations).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DP, ROOT, Run, Targets, median_ratio, summary_line, timed  # noqa: E402
from dataplane.cluster import lifecycle

BIG = ROOT / "topologies" / "flannel-vxlan-4x8.toml"
RUNS = int(os.environ.get("SCALE_RUNS", "3"))
PREFIX = os.environ.get("BENCH_PREFIX", "bench")


def sized(folder: str, name: str, nodes: int, pods: int) -> Path:
    path = Path(folder, f"{name}.toml")
    path.write_text(f'[cluster]\nname = "{name}"\nnodes = {nodes}\npods_per_node = {pods}\n')
    return path


def flows_of(run: Run) -> int:
    found = re.search(r"(\d+) flows: ", run.stdout)
    return int(found.group(1)) if found else 0


def report(targets: Targets, label: str, run: Run, seconds: float, rss_mb: int) -> None:
    flows = flows_of(run)
    targets.check(f"{label}: {run.seconds:.1f} s (target < {seconds} s), "
                  f"{flows / run.seconds:.0f} flows/s, peak RSS (its workers included) "
                  f"{run.peak_rss_kb / 1024:.0f} MB "
                  f"(target < {rss_mb} MB)",
                  run.seconds < seconds and run.peak_rss_kb < rss_mb * 1024)
    summary = summary_line(run.stdout)
    targets.check(f"    {summary} (target: every flow passes)",
                  " 0 failed, 0 inconclusive" in summary)


def broken_against_healthy(targets: Targets, base: str) -> None:
    healthy, broken = lifecycle.up(BIG, name=f"{base}-ok"), lifecycle.up(BIG, name=f"{base}-bad")
    try:
        node = broken.plan.node("node-1")
        subprocess.run(["ip", "-n", node.netns, "link", "set", broken.plan.spec.vtep_name,
                        "down"], check=True)
        times: dict[str, list[float]] = {"ok": [], "bad": []}
        for _ in range(RUNS):
            for key, made in (("ok", healthy), ("bad", broken)):
                done = timed([*DP, "verify", "--running", made.name, "--proto", "icmp",
                              "--no-mtu"], check=False)
                times[key].append(done.seconds)
                last = done
        print(f"4x8 ICMP, node-1's flannel.1 down, against healthy, {RUNS} alternating runs:")
        print(f"    broken: {summary_line(last.stdout)}")
        ratio = median_ratio(times["bad"], times["ok"])
        targets.check(f"  broken / healthy = {ratio:.2f}x (median of per-run ratios; "
                      f"healthy {min(times['ok']):.2f} s, broken {min(times['bad']):.2f} s; "
                      "target < 2x)", ratio < 2)
    finally:
        lifecycle.down(healthy.name, force=True)
        lifecycle.down(broken.name, force=True)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_scale: needs root; run it as root (make bench)")
        return 2
    base = f"{PREFIX}{os.getpid()}"
    targets = Targets()
    with tempfile.TemporaryDirectory() as folder:
        every = timed([*DP, "verify", str(sized(folder, f"{base}-48", 4, 8))], check=False)
        report(targets, "4x8, every protocol + MTU probes (6944 flows), whole process",
               every, 8, 200)
        broken_against_healthy(targets, base)
        huge = timed([*DP, "verify", str(sized(folder, f"{base}-1632", 16, 32)), "--pairs",
                      "all", "--proto", "icmp", "--no-mtu"], check=False)
        report(targets, "16x32, --pairs all, ICMP (261632 flows), whole process", huge,
               120, 400)
    return targets.exit_status("bench_scale")


if __name__ == "__main__":
    sys.exit(main())
