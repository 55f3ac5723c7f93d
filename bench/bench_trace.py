"""Benchmark: the cost of tracing. The same run, the same cross-node pod pair, a fixed
number of UDP packets sent from a socket in the source pod, with and without the
tracer attached: packets/s both ways and their ratio, events recorded and lost, and
the tracer's load+attach time. Targets (issue 3): traced rate >= 0.8 of untraced,
zero events lost, load+attach < 1 s. Run as root: `make bench`.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataplane import cluster, netns, trace  # noqa: E402
from dataplane.tracer import Tracer  # noqa: E402

PACKETS = 200_000
ROUNDS = 3
PAYLOAD = b"x" * 64
PORT = 9  # discard: nothing listens, the destination drops each packet (NO_SOCKET)


def blast(sock: socket.socket, dst: tuple[str, int]) -> float:
    """Send PACKETS datagrams; packets per second."""
    start = time.perf_counter()
    for _ in range(PACKETS):
        sock.sendto(PAYLOAD, dst)
    return PACKETS / (time.perf_counter() - start)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_trace: needs root; run it as root (make bench)")
        return 2
    made = cluster.up(ROOT / "topologies" / "flannel-vxlan.toml", name=f"bench-trace{os.getpid()}")
    try:
        plan = made.plan
        src, dst = plan.pod("node-0/pod-0"), plan.pod("node-1/pod-1")
        sock = netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM)
        target = (str(dst.ip), PORT)
        blast(sock, target)  # warm up: ARP, caches
        plain, traced, events, lost, loads = [], [], [], [], []
        for _ in range(ROUNDS):
            plain.append(blast(sock, target))
            started = time.perf_counter()
            with Tracer(trace.where_map(plan), plan.spec.port) as tracer:
                loads.append(time.perf_counter() - started)
                traced.append(blast(sock, target))
                events.append(len(tracer.take(settle_ms=200)))
                lost.append(tracer.lost)
        sock.close()
    finally:
        cluster.down(made.name)
    p, t = statistics.median(plain), statistics.median(traced)
    print(f"{PACKETS} UDP packets {src.ref} -> {dst.ref} (cross-node), median of {ROUNDS}:")
    print(f"  untraced (baseline) {p:9.0f} packets/s")
    print(f"  traced              {t:9.0f} packets/s")
    print(f"  ratio traced/untraced = {t / p:.2f} (target >= 0.8)")
    print(f"  events recorded per round {events}, lost {lost} (target 0)")
    print(f"  load+attach {max(loads):.2f} s at worst (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
