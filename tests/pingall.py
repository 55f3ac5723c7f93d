"""Kernel-stack ping between every ordered pod pair of a running cluster.

The independent reachability oracle: iputils ping run inside each pod's
namespace with `ip netns exec`. Also `python -m tests.pingall NAME`.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from dataplane.cluster.plan import Plan, PodPlan


def ping(src: PodPlan, dst: PodPlan) -> bool:
    done = subprocess.run(["ip", "netns", "exec", src.netns, "ping", "-c1", "-W2", "-q",
                           str(dst.ip)], capture_output=True)
    return done.returncode == 0


def ping_all(plan: Plan) -> list[str]:
    """'src -> dst' for every ordered pair whose ping failed."""
    pairs = [(s, d) for s in plan.pods() for d in plan.pods() if s != d]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda pair: ping(*pair), pairs))
    return [f"{s.ref} -> {d.ref}" for (s, d), ok in zip(pairs, results) if not ok]


def main(name: str) -> int:
    from dataplane.cluster import lifecycle

    plan = lifecycle.attach(name).plan
    failed = ping_all(plan)
    total = len(plan.pods()) * (len(plan.pods()) - 1)
    for pair in failed:
        print(f"FAIL {pair}")
    print(f"{total - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
