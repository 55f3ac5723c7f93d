"""Benchmark: `dataplane up` / `dataplane down` as whole processes against the same
cluster built by a shell script of `ip` commands (one process per operation).

Prints the medians, the median ratio, the peak RSS of `dataplane up`, and the time
of a 16 nodes x 32 pods `up`. Targets (issue 2): up >= 3x faster than the ip
script, peak RSS < 100 MB, 16x32 up < 2 s. Run as root: `make bench`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataplane import spec  # noqa: E402
from dataplane.plan import Plan, make_plan  # noqa: E402

DP = str(ROOT / ".venv" / "bin" / "dataplane")
BIG = ROOT / "topologies" / "flannel-vxlan-4x8.toml"
RUNS = 9
SETTLE = 3.0  # let the kernel finish freeing the last run's namespaces


def ip_script(plan: Plan) -> str:
    """The same cluster as `dataplane up` builds, as iproute2 commands."""
    s = plan.spec
    ul = plan.underlay_netns
    cmds = ["set -e"]
    for ns in plan.namespaces():
        cmds += [f"ip netns add {ns}",
                 f"ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                 "net.ipv6.conf.default.disable_ipv6=1"]
    cmds.append(f"ip -n {ul} link add br0 mtu {s.underlay_mtu} type bridge")
    cmds.append(f"ip -n {ul} link set br0 up")
    for node in plan.nodes:
        n = node.netns
        cmds += [
            f"ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1",
            f"ip -n {n} link set lo up",
            f"ip -n {n} link add eth0 address {node.eth0_mac} mtu {s.underlay_mtu} type veth "
            f"peer name {node.underlay_port} netns {ul} mtu {s.underlay_mtu}",
            f"ip -n {n} link set eth0 up",
            f"ip -n {ul} link set {node.underlay_port} master br0 up",
            f"ip -n {n} addr add {node.underlay_ip}/{node.underlay_prefixlen} dev eth0",
            f"ip -n {n} link add cni0 address {node.cni0_mac} mtu {s.vtep_mtu} type bridge",
            f"ip -n {n} link set cni0 up",
            f"ip -n {n} addr add {node.gateway}/{node.pod_cidr.prefixlen} dev cni0",
            f"ip -n {n} link add {s.vtep_name} address {node.vtep_mac} mtu {s.vtep_mtu} type vxlan "
            f"id {s.vni} dstport {s.port} local {node.underlay_ip} dev eth0 nolearning",
            f"ip -n {n} link set {s.vtep_name} up",
            f"ip -n {n} addr add {node.vtep_ip}/32 dev {s.vtep_name}",
        ]
        for peer in node.peers:
            cmds += [
                f"ip -n {n} neigh add {peer.vtep_ip} lladdr {peer.vtep_mac} dev {s.vtep_name} "
                "nud permanent",
                f"bridge -n {n} fdb append {peer.vtep_mac} dev {s.vtep_name} dst {peer.underlay_ip}",
                f"ip -n {n} route add {peer.pod_cidr} via {peer.vtep_ip} dev {s.vtep_name} onlink",
            ]
        for pod in node.pods:
            p = pod.netns
            cmds += [
                f"ip -n {n} link add {pod.host_veth} mtu {pod.mtu} type veth peer name eth0 "
                f"netns {p} address {pod.mac} mtu {pod.mtu}",
                f"ip -n {n} link set {pod.host_veth} master cni0 up",
                f"ip -n {p} link set lo up",
                f"ip -n {p} link set eth0 up",
                f"ip -n {p} addr add {pod.ip}/{pod.prefixlen} dev eth0",
                f"ip -n {p} route add default via {pod.gateway} dev eth0",
            ]
    return "\n".join(cmds) + "\n"


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (KB) of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {proc.returncode}")
    return elapsed, usage.ru_maxrss


def remove_namespaces(plan: Plan) -> None:
    for ns in plan.namespaces():
        subprocess.run(["ip", "netns", "del", ns], check=True)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_up: needs root to create namespaces; run it as root (make bench)")
        return 2
    name = f"bench{os.getpid()}"
    plan = make_plan(spec.load(BIG, name=f"{name}-ip"))
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as script:
        script.write(ip_script(plan))
    ups, downs, rss, ips = [], [], [], []
    try:
        for _ in range(RUNS):
            elapsed, peak = timed([DP, "up", str(BIG), "--name", name])
            ups.append(elapsed)
            rss.append(peak)
            time.sleep(SETTLE)
            downs.append(timed([DP, "down", name])[0])
            time.sleep(SETTLE)
            try:
                ips.append(timed(["bash", script.name])[0])
            finally:
                time.sleep(SETTLE)
                remove_namespaces(plan)
            time.sleep(SETTLE)
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as huge:
            huge.write(BIG.read_text().replace("nodes = 4", "nodes = 16")
                       .replace("pods_per_node = 8", "pods_per_node = 32"))
            huge.flush()
            big_up, big_rss = timed([DP, "up", huge.name, "--name", f"{name}-16x32"])
            timed([DP, "down", f"{name}-16x32"])
    finally:
        os.unlink(script.name)
    up, down, ip = (statistics.median(v) for v in (ups, downs, ips))
    # each run's two builds are seconds apart: their ratio is steadier than the medians'
    ratio = statistics.median(i / u for u, i in zip(ups, ips))
    print(f"4x8 ({len(plan.namespaces())} namespaces), median of {RUNS} runs:")
    print(f"  dataplane up      {up * 1000:7.0f} ms   peak RSS {max(rss) / 1024:.0f} MB "
          "(target < 100 MB)")
    print(f"  dataplane down    {down * 1000:7.0f} ms")
    print(f"  ip script (baseline, {ip_script(plan).count(chr(10)) - 1} processes) "
          f"{ip * 1000:7.0f} ms")
    print(f"  ratio ip script / dataplane up = {ratio:.2f}x, median of the {RUNS} runs' ratios "
          "(target >= 3x)")
    print(f"16x32: dataplane up {big_up * 1000:.0f} ms (target < 2000 ms), "
          f"peak RSS {big_rss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
