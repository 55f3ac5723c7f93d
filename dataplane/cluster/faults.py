"""Faults to inject into a running cluster, each a mistake seen on real flannel
nodes, so the verifier can be shown to catch it and name the right place.

Each fault names the options it takes and how to tell, from the live state of
the namespace it breaks, that it is already in place (injecting it again then
says so instead of failing on what is already gone). `down` undoes them all.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

from dataplane.cluster import build, expected, live, netns
from dataplane.cluster.netstate import NetState
from dataplane.cluster.plan import (NODE_IFNAME, POD_IFNAME, VTEP_OUI, NodePlan, Plan, PodPlan,
                                    mac_from_ip)
from dataplane.cluster.rtnl import Batch
from dataplane.errors import UsageError

NODE, POD, PEER = "node", "pod", "peer"
UNDERLAY_MTU_SHORTFALL = 40  # GCE's 1460 where 1500 was planned


@dataclass(frozen=True)
class Target:
    node: NodePlan
    pod: PodPlan | None
    peer: NodePlan | None


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    takes: frozenset[str]  # the options it uses (node, pod, peer)
    on_pod: bool  # it breaks the pod's namespace, else the node's
    inject: Callable[[Plan, Target], str]  # returns what was done, for the user
    in_place: Callable[[Plan, Target, NetState], bool]  # on that namespace's live state
    repair: Callable[[Plan, Target], str]  # puts back what the plan says, returns what it did

    def netns(self, t: Target) -> str:
        return t.pod.netns if self.on_pod else t.node.netns


def _batch(netns_name: str) -> Batch:
    sock = netns.socket_in(netns_name, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    return Batch(sock, netns_name)


def _send(b: Batch) -> None:
    try:
        b.send()
    finally:
        b.sock.close()


def _edit(netns_name: str, edit: Callable[[Batch], object]) -> None:
    b = _batch(netns_name)
    edit(b)
    _send(b)


def _remake_vtep(plan: Plan, node: NodePlan, vni: int) -> None:
    """The kernel cannot change a VXLAN device's VNI, local address or (for flannel)
    MAC in place: delete it and make it again with everything that hangs off it."""
    b = _batch(node.netns)
    b.link_del(build.VTEP)
    build.vtep(plan, node, b, vni)
    _send(b)


def _vtep_attr(plan: Plan, s: NetState, what: str) -> str | None:
    return s.attrs.get((plan.spec.vtep_name, what))


def _other_vni(plan: Plan) -> int:
    return plan.spec.vni % 16777215 + 1


def vni_mismatch(plan: Plan, t: Target) -> str:
    vni = _other_vni(plan)
    _remake_vtep(plan, t.node, vni)
    return f"{t.node.name}'s {plan.spec.vtep_name} now uses VNI {vni}, not {plan.spec.vni}"


def _peer(t: Target):
    if t.peer is None:
        raise UsageError("this fault needs a peer node, and the cluster has one node only")
    return next(p for p in t.node.peers if p.node == t.peer.name)


def missing_fdb(plan: Plan, t: Target) -> str:
    peer = _peer(t)
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
    b.link_set(POD_IFNAME, mtu=mtu)
    _send(b)
    return f"{t.pod.ref}'s eth0 MTU is {mtu}, above {plan.spec.vtep_name}'s {plan.spec.vtep_mtu}"


def vtep_local(plan: Plan, t: Target) -> str:
    """As when every node's flanneld picked the same (NAT) interface: the VTEP sends from
    an address the node has, but not the one its peers know it by. Here: cni0's."""
    _remake_vtep(plan, replace(t.node, underlay_ip=t.node.gateway), plan.spec.vni)
    return (f"{t.node.name}'s {plan.spec.vtep_name} now sends from {t.node.gateway} (cni0's "
            f"address), not its node IP {t.node.underlay_ip}")


def _stale_mac(node: NodePlan) -> str:
    """A MAC the peers never learnt, as a rebooted node's flanneld makes a new one."""
    return mac_from_ip((VTEP_OUI[0], VTEP_OUI[1] ^ 0x01), node.underlay_ip)


def stale_vtep_mac(plan: Plan, t: Target) -> str:
    mac = _stale_mac(t.node)
    _remake_vtep(plan, replace(t.node, vtep_mac=mac), plan.spec.vni)
    return (f"{t.node.name}'s {plan.spec.vtep_name} came back with MAC {mac}; its peers "
            f"still have {t.node.vtep_mac} in their neighbour and FDB entries")


def _short_mtu(plan: Plan) -> int:
    return plan.spec.underlay_mtu - UNDERLAY_MTU_SHORTFALL


def underlay_mtu(plan: Plan, t: Target) -> str:
    mtu = _short_mtu(plan)
    b = _batch(t.node.netns)
    b.link_set(NODE_IFNAME, mtu=mtu)
    _send(b)
    return (f"{t.node.name}'s eth0 MTU is {mtu}, below {plan.spec.vtep_name}'s "
            f"{plan.spec.vtep_mtu} + 50")


def pod_no_route(plan: Plan, t: Target) -> str:
    b = _batch(t.pod.netns)
    b.route_del(build.DEFAULT_ROUTE, build.ETH0)
    _send(b)
    return f"removed {t.pod.ref}'s default route via {t.pod.gateway}"


def _planned_vtep(plan: Plan, t: Target) -> str:
    _remake_vtep(plan, t.node, plan.spec.vni)
    return f"made {t.node.name}'s {plan.spec.vtep_name} again as planned"


def _planned_fdb(plan: Plan, t: Target) -> str:
    peer = _peer(t)
    _edit(t.node.netns, lambda b: b.fdb_append(build.VTEP, peer.vtep_mac, peer.underlay_ip))
    return f"put {t.node.name}'s FDB entry {peer.vtep_mac} dst {peer.underlay_ip} back"


def _planned_master(plan: Plan, t: Target) -> str:
    _edit(t.node.netns, lambda b: b.link_set(t.pod.host_veth, master=build.CNI0))
    return f"put {t.pod.ref}'s host veth {t.pod.host_veth} back into cni0"


def _planned_forwarding(plan: Plan, t: Target) -> str:
    netns.run_in(t.node.netns, lambda: netns.write_sysctl("net.ipv4.ip_forward", "1"))
    return f"net.ipv4.ip_forward=1 on {t.node.name}"


def _planned_pod_mtu(plan: Plan, t: Target) -> str:
    _edit(t.pod.netns, lambda b: b.link_set(POD_IFNAME, mtu=t.pod.mtu))
    return f"{t.pod.ref}'s eth0 MTU is {t.pod.mtu} again"


def _planned_underlay_mtu(plan: Plan, t: Target) -> str:
    _edit(t.node.netns, lambda b: b.link_set(NODE_IFNAME, mtu=plan.spec.underlay_mtu))
    return f"{t.node.name}'s eth0 MTU is {plan.spec.underlay_mtu} again"


def _planned_route(plan: Plan, t: Target) -> str:
    _edit(t.pod.netns, lambda b: b.route_add(build.DEFAULT_ROUTE, t.pod.gateway, build.ETH0))
    return f"put {t.pod.ref}'s default route via {t.pod.gateway} back"


def _fault(name: str, summary: str, takes: tuple[str, ...], inject, in_place, repair,
           breaks: str = NODE) -> Fault:
    """breaks: the namespace the fault changes, the node's or the pod's."""
    return Fault(name, summary, frozenset(takes), breaks == POD, inject, in_place, repair)


FAULTS = {f.name: f for f in (
    _fault("vni-mismatch", "one node's flannel.1 uses another VNI (--node)", (NODE,),
           vni_mismatch,
           lambda p, t, s: _vtep_attr(p, s, "vxlan vni") == str(_other_vni(p)),
           _planned_vtep),
    _fault("missing-fdb", "a node's FDB entry for a peer removed (--node, --peer)",
           (NODE, PEER), missing_fdb,
           lambda p, t, s: (p.spec.vtep_name, f"fdb {_peer(t).vtep_mac}") not in s.items,
           _planned_fdb),
    _fault("veth-detached", "a pod's host veth taken out of cni0 (--pod)", (NODE, POD),
           veth_detached, lambda p, t, s: s.attrs.get((t.pod.host_veth, "master")) == "none",
           _planned_master),
    _fault("no-ip-forward", "net.ipv4.ip_forward=0 on a node (--node)", (NODE,), no_ip_forward,
           lambda p, t, s: s.attrs.get((None, "sysctl net.ipv4.ip_forward")) == "0",
           _planned_forwarding),
    _fault("pod-mtu", "a pod's MTU above flannel.1's (--pod)", (NODE, POD), pod_mtu,
           lambda p, t, s: s.attrs.get((POD_IFNAME, "mtu")) == str(p.spec.underlay_mtu),
           _planned_pod_mtu, POD),
    _fault("vtep-local", "a node's flannel.1 sends from another of its addresses (--node)",
           (NODE,), vtep_local,
           lambda p, t, s: _vtep_attr(p, s, "vxlan local") == str(t.node.gateway), _planned_vtep),
    _fault("stale-vtep-mac", "a node's flannel.1 has a new MAC its peers do not know (--node)",
           (NODE,), stale_vtep_mac,
           lambda p, t, s: _vtep_attr(p, s, "mac") == _stale_mac(t.node), _planned_vtep),
    _fault("underlay-mtu", "a node's underlay eth0 MTU below flannel.1's + 50 (--node)",
           (NODE,), underlay_mtu,
           lambda p, t, s: s.attrs.get((NODE_IFNAME, "mtu")) == str(_short_mtu(p)),
           _planned_underlay_mtu),
    _fault("pod-no-route", "a pod's default route removed (--pod)", (NODE, POD), pod_no_route,
           lambda p, t, s: (POD_IFNAME, "route default") not in s.items, _planned_route,
           POD),
)}


def fault(name: str) -> Fault:
    if name not in FAULTS:
        raise UsageError(f"no fault named {name!r}; `dataplane fault list` shows them")
    return FAULTS[name]


def check_options(name: str, node: str | None, pod: str | None, peer: str | None) -> None:
    """Refuse an option the fault would not use, rather than ignore it."""
    f = fault(name)
    given = {NODE: node, POD: pod, PEER: peer}
    unused = [option for option, value in given.items() if value and option not in f.takes]
    if unused:
        takes = ", ".join(f"--{o}" for o in sorted(f.takes))
        raise UsageError(f"{name} does not take --{unused[0]} (it takes {takes}); drop it")
    if node and pod and "/" in pod and pod.split("/", 1)[0] != node:
        raise UsageError(f"--pod {pod} is not on --node {node}; give one of them")


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


def _in_place(plan: Plan, f: Fault, t: Target) -> bool:
    where = f.netns(t)
    state = live.snapshot({where: expected.state(plan)[where]})[where]
    if state is None:
        raise UsageError(f"namespace {where} is gone; `dataplane down {plan.name}` and up again")
    return f.in_place(plan, t, state)


def inject(plan: Plan, name: str, node: str | None = None, pod: str | None = None,
           peer: str | None = None) -> str:
    """Inject fault name (options it does not take are ignored here: check_options
    refuses them for the command line); say so if it is already in place."""
    f, t = fault(name), target(plan, node, pod, peer)
    if _in_place(plan, f, t):
        return (f"{name} is already in place on {t.pod.ref if f.on_pod else t.node.name}: "
                "nothing to do")
    return f.inject(plan, t)


def repair(plan: Plan, name: str, node: str | None = None, pod: str | None = None,
           peer: str | None = None) -> str:
    """Undo fault name on the same target (as inject chooses it), so one cluster can be
    verified under one fault after another; say so if it is not in place."""
    f, t = fault(name), target(plan, node, pod, peer)
    if not _in_place(plan, f, t):
        return f"{name} is not in place on {t.pod.ref if f.on_pod else t.node.name}: nothing to do"
    return f.repair(plan, t)
