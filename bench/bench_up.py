"""Benchmark: `dataplane up` / `dataplane down` as whole processes against the same
cluster built by two shell scripts of iproute2:
- per operation: one `ip` process per operation, as most scripts are written;
- batched: the strongest shell a user would write: one `ip -batch` for every namespace
  and veth pair (both ends made straight in their namespaces, sysctls through
  `netns exec`), then one `ip -n NS -batch` per namespace (and one `bridge -batch`
  per node for its FDB), all namespaces at once.
Builds alternate within each run; the first run checks that the three give the same
cluster (links, addresses, routes, neighbours and FDB of every namespace, normalised).

Prints the medians, the median of the runs' ratios against each script, the peak RSS
of `dataplane up`, and the time of a 16 nodes x 32 pods `up`. Targets: up >= 3x faster
than the per-operation script and at least as fast as the batched one, peak RSS
< 100 MB, 16x32 up < 2 s; exit 1 when one is missed. Run as root: `make bench`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DP, ROOT, Targets, ms, timed  # noqa: E402
from dataplane.cluster import spec
from dataplane.cluster.plan import Plan, make_plan  # noqa: E402

BIG = ROOT / "topologies" / "flannel-vxlan-4x8.toml"
RUNS = 9
SETTLE = 3.0  # let the kernel finish freeing the last run's namespaces
PREFIX = os.environ.get("BENCH_PREFIX", "bench")  # cluster names: PREFIX<pid>...


def sysctl_command(plan: Plan, ns: str) -> str:
    return "sysctl -qw " + " ".join(shlex.quote(f"{k}={v}") for k, v in plan.sysctls(ns).items())


def node_links(plan: Plan, node) -> list[str]:
    """A node's own devices, addresses, routes and neighbours, as `ip` arguments."""
    s = plan.spec
    cmds = [
        "link set lo up",
        "link set eth0 up",
        f"addr add {node.underlay_ip}/{node.underlay_prefixlen} dev eth0",
        f"link add cni0 address {node.cni0_mac} mtu {s.vtep_mtu} type bridge",
        "link set cni0 up",
        f"addr add {node.gateway}/{node.pod_cidr.prefixlen} dev cni0",
        f"link add {s.vtep_name} address {node.vtep_mac} mtu {s.vtep_mtu} type vxlan "
        f"id {s.vni} dstport {s.port} local {node.underlay_ip} dev eth0 nolearning",
        f"link set {s.vtep_name} up",
        f"addr add {node.vtep_ip}/32 dev {s.vtep_name}",
    ]
    for peer in node.peers:
        cmds += [f"neigh add {peer.vtep_ip} lladdr {peer.vtep_mac} dev {s.vtep_name} "
                 "nud permanent",
                 f"route add {peer.pod_cidr} via {peer.vtep_ip} dev {s.vtep_name} onlink"]
    return cmds


def node_fdb(plan: Plan, node) -> list[str]:
    return [f"fdb append {peer.vtep_mac} dev {plan.spec.vtep_name} dst {peer.underlay_ip}"
            for peer in node.peers]


def pod_links(pod) -> list[str]:
    return ["link set lo up", "link set eth0 up", f"addr add {pod.ip}/{pod.prefixlen} dev eth0",
            f"route add default via {pod.gateway} dev eth0"]


def ip_script(plan: Plan) -> str:
    """The cluster `dataplane up` builds, one process per operation."""
    s, ul = plan.spec, plan.underlay_netns
    cmds = ["set -e"]
    for ns in plan.namespaces():
        cmds += [f"ip netns add {ns}", f"ip netns exec {ns} {sysctl_command(plan, ns)}"]
    cmds += [f"ip -n {ul} link add br0 mtu {s.underlay_mtu} type bridge",
             f"ip -n {ul} link set br0 up"]
    for node in plan.nodes:
        n = node.netns
        cmds.append(f"ip -n {n} link add eth0 address {node.eth0_mac} mtu {s.underlay_mtu} "
                    f"type veth peer name {node.underlay_port} netns {ul} mtu {s.underlay_mtu}")
        cmds.append(f"ip -n {ul} link set {node.underlay_port} master br0 up")
        cmds += [f"ip -n {n} {c}" for c in node_links(plan, node)]
        cmds += [f"bridge -n {n} {c}" for c in node_fdb(plan, node)]
        for pod in node.pods:
            cmds.append(f"ip -n {n} link add {pod.host_veth} mtu {pod.mtu} type veth peer name "
                        f"eth0 netns {pod.netns} address {pod.mac} mtu {pod.mtu}")
            cmds.append(f"ip -n {n} link set {pod.host_veth} master cni0 up")
            cmds += [f"ip -n {pod.netns} {c}" for c in pod_links(pod)]
    return "\n".join(cmds) + "\n"


def batch(argv: str, cmds: list[str], background: bool = True) -> str:
    """argv reading cmds from a here-document."""
    return f"{argv} -batch - <<'EOF'{' &' if background else ''}\n" + "\n".join(cmds) + "\nEOF\n"


def batch_script(plan: Plan) -> str:
    """The same cluster: one `ip -batch` for the namespaces and veth pairs, then one
    batch per namespace, all at once."""
    s, ul = plan.spec, plan.underlay_netns
    first = [f"netns add {ns}" for ns in plan.namespaces()]
    first += [f"netns exec {ns} {sysctl_command(plan, ns)}" for ns in plan.namespaces()]
    for node in plan.nodes:
        first.append(f"link add eth0 netns {node.netns} address {node.eth0_mac} "
                     f"mtu {s.underlay_mtu} type veth peer name {node.underlay_port} netns {ul} "
                     f"mtu {s.underlay_mtu}")
        first += [f"link add {pod.host_veth} netns {node.netns} mtu {pod.mtu} type veth peer "
                  f"name eth0 netns {pod.netns} address {pod.mac} mtu {pod.mtu}"
                  for pod in node.pods]
    script = "set -e\n" + batch("ip", first, background=False)
    script += batch(f"ip -n {ul}", [f"link add br0 mtu {s.underlay_mtu} type bridge",
                                    "link set br0 up"]
                    + [f"link set {node.underlay_port} master br0 up" for node in plan.nodes])
    for node in plan.nodes:
        # the FDB entries need flannel.1: the node's bridge batch follows its ip batch
        links = node_links(plan, node) + [f"link set {pod.host_veth} master cni0 up"
                                          for pod in node.pods]
        script += "{\n" + batch(f"ip -n {node.netns}", links, background=False) \
            + batch(f"bridge -n {node.netns}", node_fdb(plan, node), background=False) + "} &\n"
        for pod in node.pods:
            script += batch(f"ip -n {pod.netns}", pod_links(pod))
    # wait gives the status of none of them: a failed batch shows in the comparison
    return script + "wait\n"


# Fields that differ between two builds of the same cluster: kernel-assigned indexes and
# ids, counters, timers, and MACs the plan leaves to the kernel (host veths, ports, br0).
VOLATILE = {"ifindex", "link_index", "link_netnsid", "stats", "stats64", "bridge_id", "root_id",
            "designated_bridge", "designated_root", "hello_timer", "tcn_timer",
            "topology_change_timer", "gc_timer", "hold_timer", "message_age_timer",
            "forward_delay_timer", "parentbus", "parentdev", "altnames", "ifa_flags"}


def normalised(value, planned_macs: set[str]):
    if isinstance(value, dict):
        return {k: normalised(v, planned_macs) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return sorted((normalised(v, planned_macs) for v in value), key=json.dumps)
    if isinstance(value, str) and len(value) == 17 and value.count(":") == 5 \
            and value not in planned_macs and not value.startswith(("33:33", "01:00:5e", "ff:ff")):
        return "kernel-chosen MAC"
    return value


def snapshot(plan: Plan) -> dict[str, object]:
    """Every namespace's links, addresses, routes, neighbours and FDB, normalised; after
    a second, as the kernel settles operational states (linkwatch) up to a second late."""
    time.sleep(1)
    macs = {m for node in plan.nodes for m in (node.eth0_mac, node.cni0_mac, node.vtep_mac)}
    macs |= {pod.mac for pod in plan.pods()}
    queries = [("ip", "-d", "-j", "link"), ("ip", "-j", "addr"), ("ip", "-j", "route"),
               ("ip", "-j", "neigh"), ("bridge", "-j", "fdb")]
    return {f"{ns} {' '.join(q)}": normalised(json.loads(subprocess.run(
        [q[0], "-n", ns, *q[1:]], capture_output=True, text=True, check=True).stdout or "[]"),
        {m.lower() for m in macs}) for ns in plan.namespaces() for q in queries}


def differences(a: dict, b: dict) -> list[str]:
    return [f"{key}:\n    {json.dumps(a[key])}\n    {json.dumps(b.get(key))}"
            for key in a if a[key] != b.get(key)]


def remove_namespaces(plan: Plan) -> None:
    subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n"
                                                        for ns in plan.namespaces()),
                   text=True, check=True)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_up: needs root to create namespaces; run it as root (make bench)")
        return 2
    name = f"{PREFIX}{os.getpid()}"
    plan = make_plan(spec.load(BIG, name=name))  # all three builds make these namespaces
    scripts = {"per-op": ip_script(plan), "batch": batch_script(plan)}
    times: dict[str, list[float]] = {"up": [], "down": [], "per-op": [], "batch": []}
    rss, built = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for kind, text in scripts.items():
            Path(folder, kind).write_text(text)
        for run in range(RUNS):
            done = timed([*DP, "up", str(BIG), "--name", name])
            times["up"].append(done.seconds)
            rss.append(done.peak_rss_kb)
            if run == 0:
                built["dataplane up"] = snapshot(plan)
            time.sleep(SETTLE)
            times["down"].append(timed([*DP, "down", name]).seconds)
            for kind in scripts:
                time.sleep(SETTLE)
                try:
                    times[kind].append(timed(["bash", str(Path(folder, kind))]).seconds)
                    if run == 0:
                        built[f"{kind} script"] = snapshot(plan)
                finally:
                    remove_namespaces(plan)
            time.sleep(SETTLE)
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as huge:
            huge.write(BIG.read_text().replace("nodes = 4", "nodes = 16")
                       .replace("pods_per_node = 8", "pods_per_node = 32"))
            huge.flush()
            big = timed([*DP, "up", huge.name, "--name", f"{name}-16x32"])
            timed([*DP, "down", f"{name}-16x32"])
    targets = Targets()
    processes = {kind: sum(1 for line in text.splitlines() if line.startswith(("ip ", "bridge ")))
                 for kind, text in scripts.items()}
    print(f"4x8 ({len(plan.namespaces())} namespaces), median of {RUNS} runs, builds alternating:")
    targets.check(f"  dataplane up      {ms(times['up'])}   peak RSS {max(rss) / 1024:.0f} MB "
                  "(target < 100 MB)", max(rss) < 100 * 1024)
    print(f"  dataplane down    {ms(times['down'])}")
    print(f"  ip per operation  {ms(times['per-op'])}   (baseline, {processes['per-op']} "
          "processes, one after another)")
    print(f"  ip -batch         {ms(times['batch'])}   (baseline, {processes['batch']} ip/bridge "
          f"processes + {len(plan.namespaces())} sysctl, per namespace at once)")
    targets.ratio("ip per operation / dataplane up", times["per-op"], times["up"], 3)
    targets.ratio("ip -batch / dataplane up", times["batch"], times["up"], 1)
    reference = built.pop("dataplane up")
    for kind, found in built.items():
        diff = differences(reference, found)
        targets.check(f"  {kind} builds the same cluster as dataplane up (links, addresses, "
                      f"routes, neighbours, FDB of {len(plan.namespaces())} namespaces): "
                      f"{'yes' if not diff else f'no, {len(diff)} differ'}", not diff)
        for line in diff[:5]:
            print(f"    {line}")
    targets.check(f"16x32: dataplane up {big.seconds * 1000:.0f} ms (target < 2000 ms), "
                  f"peak RSS {big.peak_rss_kb / 1024:.0f} MB", big.seconds < 2)
    return targets.exit_status("bench_up")


if __name__ == "__main__":
    sys.exit(main())
