"""Benchmark: `dataplane verify` as a whole process against what a user would run instead.

On one built 4x8 cluster (992 ordered pod pairs), in alternating runs:
- `dataplane verify --running N --proto icmp --no-mtu`: every pair over ICMP, hop by hop;
- a parallel `fping` sweep: one `fping -c1 -i1` per pod, all pods at once, each pinging
  every other pod (fails if any ping fails): plain reachability, the fastest a shell
  gets it;
- the ping sweep issue 11 measured verify against: `ip netns exec SRC ping -c1 DST` for
  every pair, one after another (what a reachability-matrix script does), once per run;
- the same exchanges without the tracer: a process sending verify's ICMP exchanges for
  every pair in the same waves from the same sockets, no probes, no verdicts (what the
  tracing and judging cost).
Then, once each: the default `dataplane verify` of the 2x2 topology as `make verify`
runs it (build, every protocol and the MTU probes, teardown), and the same all-protocol
verify of the 4x8 topology, with its peak RSS.

The verify runs load the probes compiled by an earlier run (bpf/compiled.py), as every run
after a machine's first does; one more run compiles them (DATAPLANE_PROBE_CACHE=0), for
what the first run costs.

Targets: verify ahead of the per-pair ping sweep (issue 11: "as today, must stay ahead"),
within 4x of the fping sweep (issue 16; median of the runs' ratios), the default 2x2 verify
< 3 s, peak RSS < 300 MB; exit 1 when one is missed.
Run as root: `make bench`.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DP, ROOT, Run, Targets, median_ratio, summary_line, timed  # noqa: E402
from dataplane.cluster import lifecycle
from dataplane.traffic import prober
from dataplane.verify import verifier
from dataplane.verify import pairs as choose
from dataplane.cluster.plan import Plan  # noqa: E402

BIG = ROOT / "topologies" / "flannel-vxlan-4x8.toml"
DEFAULT = ROOT / "topologies" / "flannel-vxlan.toml"
RUNS = 5
PREFIX = os.environ.get("BENCH_PREFIX", "bench")


def fping_sweep(plan: Plan) -> float:
    """Every pod pings every other at once; seconds until the last fping ends."""
    pods = plan.pods()
    start = time.perf_counter()
    running = [subprocess.Popen(["ip", "netns", "exec", src.netns, "fping", "-c1", "-i1", "-q",
                                 *(str(dst.ip) for dst in pods if dst != src)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for src in pods]
    failed = [p.communicate()[1] for p in running if p.wait() != 0]
    elapsed = time.perf_counter() - start
    if failed:
        raise SystemExit(f"the fping sweep failed:\n{failed[0][-2000:]}")
    return elapsed


def ping_sweep(plan: Plan) -> float:
    """`ping -c1` from every pod to every other, one pair after another."""
    pods = plan.pods()
    start = time.perf_counter()
    for src in pods:
        for dst in pods:
            if dst != src:
                subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-c1", "-W1", "-q",
                                str(dst.ip)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def exchanges_only(name: str) -> int:
    """The child process of the exchanges baseline: verify's ICMP exchanges, untraced."""
    plan = lifecycle.attach(name).plan
    todo = [verifier.Probe(src, dst, "icmp") for src, dst in choose.pairs(plan)]
    with prober.Prober() as probing:
        unanswered = sum(not ex.answered for wave in verifier.waves(plan, todo)
                         for ex in probing.finish([probing.start(p.src, p.dst, p.proto)
                                                   for p in wave]))
    return 1 if unanswered else 0


def renamed(topology: Path, name: str, folder: str) -> Path:
    """A copy of topology whose cluster is called name (verify FILE names its cluster
    after the file's)."""
    copy = Path(folder, topology.name)
    copy.write_text(re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', topology.read_text(), 1))
    return copy


def verdicts(targets: Targets, run: Run) -> None:
    """The run's summary line, and the flows that did not pass."""
    summary = summary_line(run.stdout)
    targets.check(f"    {summary} (target: every flow passes)",
                  " 0 failed, 0 inconclusive" in summary)
    lines = run.stdout.splitlines()
    for line in [line for line in lines if line.startswith(("FAIL", "INCONCLUSIVE"))][:5]:
        print(f"      {line}")


def main() -> int:
    if os.geteuid() != 0:
        print("bench_verify: needs root; run it as root (make bench)")
        return 2
    name = f"{PREFIX}{os.getpid()}"
    made = lifecycle.up(BIG, name=name)
    times: dict[str, list[float]] = {"verify": [], "fping": [], "exchanges": [], "ping": []}
    try:
        pairs = len(choose.pairs(made.plan))
        for _ in range(RUNS):
            done = timed([*DP, "verify", "--running", name, "--proto", "icmp", "--no-mtu"])
            times["verify"].append(done.seconds)
            summary = summary_line(done.stdout)
            times["fping"].append(fping_sweep(made.plan))
            times["exchanges"].append(timed([sys.executable, __file__, "--exchanges-only",
                                             name]).seconds)
            times["ping"].append(ping_sweep(made.plan))
        cold = timed([*DP, "verify", "--running", name, "--proto", "icmp", "--no-mtu"],
                     DATAPLANE_PROBE_CACHE="0")
    finally:
        lifecycle.down(name)
    with tempfile.TemporaryDirectory() as folder:  # a failing flow is a figure too
        default = timed([*DP, "verify", str(renamed(DEFAULT, f"{name}-2x2", folder))],
                        check=False)
        everything = timed([*DP, "verify", str(renamed(BIG, f"{name}-4x8", folder))],
                           check=False)
    targets = Targets()
    print(f"4x8 built once, all {pairs} ordered pod pairs over ICMP, median of {RUNS} "
          "alternating runs:")
    print(f"  dataplane verify --running --proto icmp --no-mtu, whole process "
          f"{statistics.median(times['verify']):6.2f} s")
    print(f"    {summary}")
    print(f"  the same, probes compiled (no cache: a machine's first run) {cold.seconds:6.2f} s")
    print(f"    {summary_line(cold.stdout)}")
    print(f"  fping -c1 -i1 sweep, one per pod, all at once (baseline) "
          f"{statistics.median(times['fping']):6.2f} s")
    print(f"  the same exchanges without the tracer, whole process (baseline) "
          f"{statistics.median(times['exchanges']):6.2f} s")
    print(f"  ping -c1 per pair, one after another (baseline, issue 11) "
          f"{statistics.median(times['ping']):6.2f} s")
    targets.ratio("ping sweep / verify", times["ping"], times["verify"], 1)
    targets.ratio("fping sweep / verify, within 4x", times["fping"], times["verify"], 0.25)
    print(f"  ratio untraced exchanges / verify = "
          f"{median_ratio(times['exchanges'], times['verify']):.2f}x (what tracing and "
          "judging cost; no target)")
    targets.check(f"default 2x2 `dataplane verify` (build, every protocol + MTU probes, "
                  f"teardown), whole process {default.seconds:.2f} s (target < 3 s)",
                  default.seconds < 3)
    verdicts(targets, default)
    targets.check(f"4x8 `dataplane verify` (build, every protocol + MTU probes, teardown), whole "
                  f"process {everything.seconds:.2f} s, peak RSS "
                  f"{everything.peak_rss_kb / 1024:.0f} MB (target < 300 MB)",
                  everything.peak_rss_kb < 300 * 1024)
    verdicts(targets, everything)
    return targets.exit_status("bench_verify")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--exchanges-only"]:
        sys.exit(exchanges_only(sys.argv[2]))
    sys.exit(main())
