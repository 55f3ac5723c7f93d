"""Benchmark: `dataplane up` of the 4x8 topology with its pods wired by the real CNI plugins
(`--cni plugins`: loopback, then flannel's step and the bridge + host-local plugins, two
plugin processes and a host-local one per pod) against the built-in netlink wiring, as
whole processes, alternating within each run. `dataplane down` too: with the plugins it
runs DEL for every pod first.

Prints the medians and the median of the runs' ratios. The plugins are expected to be
slower (a process per plugin call); this measures by how much, and is why built-in
stays the default. Target: a plugin-wired 4x8 up within 5 s. Run as root: `make bench`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DP, ROOT, Targets, median_ratio, ms, timed  # noqa: E402

BIG = ROOT / "topologies" / "flannel-vxlan-4x8.toml"
RUNS = 7
SETTLE = 2.0  # let the kernel finish freeing the last run's namespaces
PREFIX = os.environ.get("BENCH_PREFIX", "bench")
MODES = ("builtin", "plugins")


def main() -> int:
    if os.geteuid() != 0:
        print("bench_cni needs root: run it as root (sudo make bench)")
        return 2
    up: dict[str, list[float]] = {mode: [] for mode in MODES}
    down: dict[str, list[float]] = {mode: [] for mode in MODES}
    for run in range(RUNS):
        order = MODES if run % 2 == 0 else MODES[::-1]  # neither always goes first
        for mode in order:
            name = f"{PREFIX}{os.getpid()}-{mode}"
            up[mode].append(timed([*DP, "up", str(BIG), "--name", name, "--cni", mode]).seconds)
            down[mode].append(timed([*DP, "down", name]).seconds)
            time.sleep(SETTLE)
    targets = Targets()
    print(f"4x8 (32 pods), median of {RUNS} runs, wiring alternating:")
    print(f"  up   --cni builtin {ms(up['builtin'])}")
    targets.check(f"  up   --cni plugins {ms(up['plugins'])}   (target < 5000 ms)",
                  sorted(up["plugins"])[RUNS // 2] < 5)
    print(f"  down --cni builtin {ms(down['builtin'])}")
    print(f"  down --cni plugins {ms(down['plugins'])}   (DEL for every pod first)")
    print(f"  ratio up plugins / builtin = {median_ratio(up['plugins'], up['builtin']):.2f}x, "
          f"down {median_ratio(down['plugins'], down['builtin']):.2f}x (median of per-run "
          "ratios; slower is expected, built-in stays the default)")
    return targets.exit_status("bench_cni")


if __name__ == "__main__":
    sys.exit(main())
