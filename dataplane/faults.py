"""Faults to inject into a running cluster, each a mistake seen on real flannel
nodes, so the verifier can be shown to catch it and name the right place."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from dataplane import build, netns
from dataplane.errors import UsageError
from dataplane.plan import NodePlan, Plan, PodPlan
from dataplane.rtnl import Batch


@dataclass(frozen=True)
class Target:
    node: NodePlan
    pod: PodPlan | None
    peer: NodePlan | None


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    inject: Callable[[Plan, Target], str]  # returns what was done, for the user


def _batch(netns_name: str) -> Batch:
    sock = netns.socket_in(netns_name, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    return Batch(sock, netns_name)


def _send(b: Batch) -> None:
    try:
        b.send()
    finally:
        b.sock.close()


def vni_mismatch(plan: Plan, t: Target) -> str:
    """The kernel cannot change a VXLAN device's VNI: remake it, as flanneld would."""
    vni = plan.spec.vni % 16777215 + 1
    b = _batch(t.node.netns)
    b.link_del(build.VTEP)
    build.vtep(plan, t.node, b, vni)
    _send(b)
    return f"{t.node.name}'s {plan.spec.vtep_name} now uses VNI {vni}, not {plan.spec.vni}"


def missing_fdb(plan: Plan, t: Target) -> str:
    peer = next(p for p in t.node.peers if p.node == t.peer.name)
    b = _batch(t.node.netns)
    b.fdb_del(build.VTEP, peer.vtep_mac, peer.underlay_ip)
    _send(b)
    return (f"removed {t.node.name}'s FDB entry {peer.vtep_mac} dst {peer.underlay_ip} "
            f"({peer.node}) from {plan.spec.vtep_name}")


def veth_detached(plan: Plan, t: Target) -> str:
    b = _batch(t.node.netns)
    b.link_set(t.pod.host_veth, master=0)
    _send(b)
    return f"took {t.pod.ref}'s host veth {t.pod.host_veth} out of cni0 on {t.node.name}"


def no_ip_forward(plan: Plan, t: Target) -> str:
    netns.run_in(t.node.netns, lambda: netns.write_sysctl("net.ipv4.ip_forward", "0"))
    return f"net.ipv4.ip_forward=0 on {t.node.name}"


def pod_mtu(plan: Plan, t: Target) -> str:
    mtu = plan.spec.underlay_mtu
    b = _batch(t.pod.netns)
    b.link_set("eth0", mtu=mtu)
    _send(b)
    return f"{t.pod.ref}'s eth0 MTU is {mtu}, above {plan.spec.vtep_name}'s {plan.spec.vtep_mtu}"


FAULTS = {f.name: f for f in (
    Fault("vni-mismatch", "one node's flannel.1 uses another VNI (--node)", vni_mismatch),
    Fault("missing-fdb", "a node's FDB entry for a peer removed (--node, --peer)", missing_fdb),
    Fault("veth-detached", "a pod's host veth taken out of cni0 (--pod)", veth_detached),
    Fault("no-ip-forward", "net.ipv4.ip_forward=0 on a node (--node)", no_ip_forward),
    Fault("pod-mtu", "a pod's MTU above flannel.1's (--pod)", pod_mtu),
)}


def target(plan: Plan, node: str | None, pod: str | None, peer: str | None) -> Target:
    """Defaults: the first node, its first pod, the next node as the peer."""
    if pod:
        chosen_pod = plan.pod(pod if "/" in pod else f"{node or plan.nodes[0].name}/{pod}")
        chosen_node = plan.node(chosen_pod.node)
    else:
        chosen_node = plan.node(node) if node else plan.nodes[0]
        chosen_pod = chosen_node.pods[0]
    if len(plan.nodes) < 2 and peer is None:
        return Target(chosen_node, chosen_pod, None)
    others = [n for n in plan.nodes if n.name != chosen_node.name]
    chosen_peer = plan.node(peer) if peer else others[0]
    if chosen_peer.name == chosen_node.name:
        raise UsageError(f"--peer {peer} is the faulty node itself; name another node")
    return Target(chosen_node, chosen_pod, chosen_peer)


def inject(plan: Plan, name: str, node: str | None = None, pod: str | None = None,
           peer: str | None = None) -> str:
    if name not in FAULTS:
        raise UsageError(f"no fault named {name!r}; `dataplane fault list` shows them")
    return FAULTS[name].inject(plan, target(plan, node, pod, peer))
