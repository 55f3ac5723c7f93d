"""A pod network that dataplane did not build, read from the live kernel as a Plan.

What is found names the parts: a node is a namespace with a VXLAN device and a
bridge whose ports are veths into other namespaces (its pods); the underlay is
the bridge the nodes' VXLAN links are ports of. Names, addresses and MACs are
taken as found. What the parts must hold is not: it follows from flannel's
rules, as for our own clusters (each node's VTEP at its podCIDR's .0, a route,
neighbour and FDB entry per peer, one VNI, port and MTU for all, pods inside
their node's podCIDR), so the audit of the plan reports what breaks them. The
numbers all nodes share are the ones most nodes have; the cluster CIDR, which
no kernel holds, comes from the caller or from a node's subnet.env.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from dataplane.cluster import scan
from dataplane.cluster.nodefiles import HOST_LOCAL_DIR, SUBNET_ENV
from dataplane.cluster.plan import NodePlan, PeerPlan, Plan, PodPlan
from dataplane.cluster.spec import Spec
from dataplane.errors import UsageError
from dataplane.records import Drift

SEPARATORS = ".-"  # what joins a run prefix, a node's name and a pod's in namespace names


@dataclass(frozen=True)
class Discovery:
    plan: Plan
    sources: dict[str, str]  # fact -> where it came from, e.g. "cluster CIDR" -> "subnet.env"
    unplaced: list[str]  # what could not be placed in the network, and why
    broken: list[Drift]  # flannel's rules broken in ways the audit of the plan cannot see


@dataclass
class _Node:
    """A node as found, before the plan is made."""

    space: scan.Space
    vtep: scan.Link
    bridge: scan.Link
    uplink: scan.Link  # the VXLAN device's link, on the underlay
    address: IPv4Interface  # the VXLAN source address, on uplink
    pods: list[tuple[scan.Link, scan.Space, scan.Link]]  # (host veth, pod namespace, its link)
    env: dict[str, str]  # subnet.env, when there is one


def discover(names: Sequence[str], name: str | None = None,
             cluster_cidr: IPv4Network | None = None,
             node_files: Path | None = None) -> Discovery:
    """The pod network in namespaces names; node_files: where each node's files are
    (NODE/run/flannel/subnet.env). UsageError when they hold no pod network."""
    spaces = scan.read(list(names))
    gone = [ns for ns, space in spaces.items() if space is None]
    if gone:
        raise UsageError(f"no network namespace {gone[0]}; `ip netns list` shows those there are")
    found: dict[str, scan.Space] = {ns: s for ns, s in spaces.items() if s}
    unplaced: list[str] = []
    nodes = _nodes(found, unplaced)
    underlay_ns, underlay_bridge = _underlay(nodes, found)
    prefix = _prefix(list(found))
    for node in nodes:
        node.env = _subnet_env(node_files, _short(node.space.name, prefix))
    placed = {underlay_ns} | {n.space.name for n in nodes} | {p.name for n in nodes
                                                               for _, p, _ in n.pods}
    unplaced += [f"{ns}: neither a node (VXLAN device and a bridge of pod veths), a pod of "
                 "one, nor the underlay" for ns in found if ns not in placed]
    return _Planner(nodes, prefix, name, cluster_cidr, node_files, unplaced).discovery(
        underlay_ns, underlay_bridge)


def _nodes(spaces: dict[str, scan.Space], unplaced: list[str]) -> list[_Node]:
    nodes = []
    for space in spaces.values():
        vteps = sorted(space.of_kind("vxlan"), key=lambda link: link.name)
        if not vteps:
            continue
        bridge = _pod_bridge(space)
        if bridge is None:
            unplaced.append(f"{space.name}: VXLAN device {vteps[0].name} but no bridge with "
                            "veths into other namespaces (pods)")
            continue
        vtep = vteps[0]
        unplaced += [f"{space.name}: a second VXLAN device {v.name}" for v in vteps[1:]]
        uplink, address = _uplink(space, vtep)
        if uplink is None:
            unplaced.append(f"{space.name}: {vtep.name} has no link device nor local address "
                            "on one: its underlay cannot be told")
            continue
        nodes.append(_Node(space, vtep, bridge, uplink, address, [], {}))
    if not nodes:
        shown = ", ".join(list(spaces)[:3]) + (", ..." if len(spaces) > 3 else "")
        raise UsageError(f"no pod network in {shown}: no namespace holds a VXLAN "
                         "device beside a bridge of pod veths (a flannel node); name the "
                         "nodes' and pods' namespaces with --prefix or --netns")
    _claim_pods(nodes, spaces, unplaced)
    return nodes


def _pod_bridge(space: scan.Space) -> scan.Link | None:
    """The bridge with the most veth ports into other namespaces."""
    counts = {b.name: sum(1 for port in space.ports(b.name)
                          if port.peer and port.peer[0] != space.name)
              for b in space.of_kind("bridge")}
    best = max(counts, key=lambda b: counts[b], default=None)
    return space.links[best] if best and counts[best] else None


def _uplink(space: scan.Space, vtep: scan.Link) -> tuple[scan.Link | None, IPv4Interface | None]:
    """The device the VTEP sends from, and its address: the VTEP's link, else the
    device that holds its local address."""
    local = vtep.vxlan.get("local")
    for link in space.links.values():
        named = link.name == vtep.vxlan.get("link")
        holding = [a for a in link.addresses if str(a.ip) == local]
        if named or holding:
            address = (holding or link.addresses or [None])[0]
            return (link, address) if address else (None, None)
    return None, None


def _claim_pods(nodes: list[_Node], spaces: dict[str, scan.Space], unplaced: list[str]) -> None:
    """Each bridge port that is a veth into another namespace of the set is a pod's."""
    node_spaces = {n.space.name for n in nodes}
    owner: dict[str, str] = {}
    for node in nodes:
        for port in node.space.ports(node.bridge.name):
            if port.kind != "veth" or not port.peer or port.peer[0] == node.space.name:
                continue
            pod_ns, ifname = port.peer
            if pod_ns in node_spaces or pod_ns in owner:
                unplaced.append(f"{node.space.name} {port.name}: leads to {pod_ns}, "
                                f"{'a node' if pod_ns in node_spaces else 'a pod of ' + owner[pod_ns]}")
                continue
            pod_link = spaces[pod_ns].links[ifname]
            if not pod_link.addresses:
                unplaced.append(f"{pod_ns}: {ifname} (port {port.name} of {node.space.name} "
                                f"{node.bridge.name}) has no IPv4 address")
                continue
            owner[pod_ns] = node.space.name
            node.pods.append((port, spaces[pod_ns], pod_link))


def _underlay(nodes: list[_Node], spaces: dict[str, scan.Space]) -> tuple[str, str]:
    """The namespace and bridge whose ports are every node's VXLAN link's peers."""
    joined = set()
    for node in nodes:
        peer = node.uplink.peer
        master = spaces[peer[0]].links[peer[1]].master if peer else None
        if master is None:
            raise UsageError(f"{node.space.name} {node.uplink.name} (its {node.vtep.name}'s "
                             "link) is not a veth into a bridge of the namespaces given: the "
                             "underlay cannot be placed; name its namespace too (--netns)")
        joined.add((peer[0], master))
    if len(joined) > 1:
        raise UsageError(f"the nodes' underlay links end on different bridges "
                         f"({', '.join(f'{ns} {b}' for ns, b in sorted(joined))}): one bridge "
                         "must join them; name the namespaces of one pod network")
    return joined.pop()


def _prefix(names: list[str]) -> str:
    """What every name starts with, up to and with its last separator."""
    common = os.path.commonprefix(names)
    cut = max(common.rfind(sep) for sep in SEPARATORS)
    return common[:cut + 1]


def _short(netns: str, prefix: str) -> str:
    return netns[len(prefix):] or netns


def _pod_name(pod_ns: str, node_ns: str, prefix: str) -> str:
    """n1-web on node n1 is pod web (dp-x.node-0.pod-1: pod-1); else the namespace's name."""
    if len(pod_ns) > len(node_ns) + 1 and pod_ns.startswith(node_ns) \
            and pod_ns[len(node_ns)] in SEPARATORS:
        return pod_ns[len(node_ns) + 1:]
    return _short(pod_ns, prefix)


def _subnet_env(node_files: Path | None, node: str) -> dict[str, str]:
    path = node_files / node / SUBNET_ENV if node_files else None
    if path is None or not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _container_id(node_files: Path | None, node: str, ip: IPv4Address) -> str:
    """The container id host-local recorded for ip ("" when no record is there)."""
    record = node_files / node / HOST_LOCAL_DIR / str(ip) if node_files else None
    return record.read_text().splitlines()[0].strip() if record and record.is_file() else ""


class _Planner:
    """The found nodes as a Plan by flannel's rules, and what breaks them."""

    def __init__(self, nodes: list[_Node], prefix: str, name: str | None,
                 cluster_cidr: IPv4Network | None, node_files: Path | None,
                 unplaced: list[str]):
        self.nodes = sorted(nodes, key=lambda n: n.address.ip)
        self.prefix, self.node_files, self.unplaced = prefix, node_files, unplaced
        self.name = name or prefix.rstrip(SEPARATORS) or "discovered"
        self.cluster_cidr = cluster_cidr
        self.sources: dict[str, str] = {}
        self.broken: list[Drift] = []

    def label(self, node: _Node) -> str:
        return _short(node.space.name, self.prefix)

    def pod_cidr(self, node: _Node) -> IPv4Interface | None:
        """The node's gateway address with its podCIDR's length: subnet.env's
        FLANNEL_SUBNET, else the pod bridge's address."""
        if "FLANNEL_SUBNET" in node.env:
            return IPv4Interface(node.env["FLANNEL_SUBNET"])
        return node.bridge.addresses[0] if node.bridge.addresses else None

    def discovery(self, underlay_ns: str, underlay_bridge: str) -> Discovery:
        cidrs = {}
        for node in list(self.nodes):
            cidr = self.pod_cidr(node)
            if cidr is None:
                self.unplaced.append(f"{node.space.name}: no address on {node.bridge.name} and "
                                     "no subnet.env: its podCIDR cannot be told")
                self.nodes.remove(node)
            else:
                cidrs[node.space.name] = cidr
        if not self.nodes:
            raise UsageError("no node's podCIDR can be told (no address on its bridge, no "
                             "subnet.env); give its bridge its gateway address")
        spec = self.spec(cidrs)
        plans = [self.node_plan(node, cidrs[node.space.name], spec) for node in self.nodes]
        plans = [_with_peers(plan, plans) for plan in plans]
        plan = Plan(spec=spec, name=self.name, prefix=self.prefix.rstrip(SEPARATORS),
                    underlay_netns=underlay_ns, nodes=tuple(plans),
                    underlay_bridge=underlay_bridge, built=False)
        self.broken += rules(plan)
        return Discovery(plan, self.sources, self.unplaced, self.broken)

    def spec(self, cidrs: dict[str, IPv4Interface]) -> Spec:
        vni, port = Counter((n.vtep.vxlan.get("vni"), n.vtep.vxlan.get("port"))
                            for n in self.nodes).most_common(1)[0][0]
        underlay_mtu = Counter(n.uplink.mtu for n in self.nodes).most_common(1)[0][0]
        subnet = Counter(n.address.network for n in self.nodes).most_common(1)[0][0]
        node_mask = Counter(c.network.prefixlen for c in cidrs.values()).most_common(1)[0][0]
        pod_names = [_pod_name(p.name, n.space.name, self.prefix)
                     for n in self.nodes for _, p, _ in sorted(n.pods, key=_pod_ip)]
        return Spec(name=self.name, cluster_cidr=self.cidr(cidrs), node_mask=node_mask,
                    nodes=tuple(self.label(n) for n in self.nodes),
                    pods=tuple(dict.fromkeys(pod_names)), underlay_subnet=subnet,
                    underlay_mtu=underlay_mtu, vni=vni, port=port)

    def cidr(self, cidrs: dict[str, IPv4Interface]) -> IPv4Network:
        """The cluster CIDR: given, else subnet.env's FLANNEL_NETWORK, else assumed."""
        networks = [n.env["FLANNEL_NETWORK"] for n in self.nodes if "FLANNEL_NETWORK" in n.env]
        if self.cluster_cidr is not None:
            self.sources["cluster CIDR"] = "from --cluster-cidr"
            return self.cluster_cidr
        if networks:
            self.sources["cluster CIDR"] = "from subnet.env"
            return IPv4Network(Counter(networks).most_common(1)[0][0])
        self.sources["cluster CIDR"] = ("assumed: the smallest network holding every podCIDR; "
                                        "give --cluster-cidr")
        return _supernet([c.network for c in cidrs.values()])

    def node_plan(self, node: _Node, cidr: IPv4Interface, spec: Spec) -> NodePlan:
        name = self.label(node)
        pods = tuple(self.pod_plan(node, pod, cidr, spec) for pod in sorted(node.pods, key=_pod_ip))
        if node.env.get("FLANNEL_MTU", str(spec.vtep_mtu)) != str(spec.vtep_mtu):
            self.broken.append(Drift(name, None, "subnet.env FLANNEL_MTU", str(spec.vtep_mtu),
                                     node.env["FLANNEL_MTU"]))
        return NodePlan(
            name=name, netns=node.space.name, underlay_ip=node.address.ip,
            underlay_prefixlen=node.address.network.prefixlen,
            underlay_port=node.uplink.peer[1], eth0_mac=node.uplink.mac, pod_cidr=cidr.network,
            gateway=cidr.ip, cni0_mac=node.bridge.mac, vtep_ip=cidr.network.network_address,
            vtep_mac=node.vtep.mac, peers=(), pods=pods, ifname=node.uplink.name,
            bridge=node.bridge.name, vtep=node.vtep.name)


    def pod_plan(self, node: _Node, pod: tuple[scan.Link, scan.Space, scan.Link],
                 cidr: IPv4Interface, spec: Spec) -> PodPlan:
        """A pod as found (address, MAC, names); its prefix, gateway and MTU by the rules."""
        veth, space, link = pod
        ip, name = _pod_ip(pod).ip, self.label(node)
        return PodPlan(node=name, name=_pod_name(space.name, node.space.name, self.prefix),
                       netns=space.name, ip=ip, prefixlen=cidr.network.prefixlen,
                       gateway=cidr.ip, mac=link.mac, mtu=spec.vtep_mtu, host_veth=veth.name,
                       container_id=_container_id(self.node_files, name, ip), ifname=link.name)


def _pod_ip(pod: tuple[scan.Link, scan.Space, scan.Link]) -> IPv4Interface:
    return pod[2].addresses[0]


def _with_peers(node: NodePlan, nodes: list[NodePlan]) -> NodePlan:
    """What flanneld programs for every other node's lease."""
    return replace(node, peers=tuple(
        PeerPlan(node=p.name, pod_cidr=p.pod_cidr, vtep_ip=p.vtep_ip, vtep_mac=p.vtep_mac,
                 underlay_ip=p.underlay_ip) for p in nodes if p.name != node.name))


def _supernet(networks: list[IPv4Network]) -> IPv4Network:
    net = networks[0]
    while not all(n.subnet_of(net) for n in networks):
        net = net.supernet()
    return net


def rules(plan: Plan) -> list[Drift]:
    """What breaks flannel's rules in the plan itself: podCIDRs of the cluster CIDR's
    node size, inside it and apart, pods inside their node's podCIDR, node addresses
    on one underlay subnet. (What the kernel holds against the plan is the audit's.)"""
    spec, broken = plan.spec, []
    for i, node in enumerate(plan.nodes):
        cidr = node.pod_cidr
        if cidr.prefixlen != spec.node_mask:
            broken.append(Drift(node.name, node.bridge, "podCIDR size", f"/{spec.node_mask}",
                                str(cidr)))
        if not cidr.subnet_of(spec.cluster_cidr):
            broken.append(Drift(node.name, node.bridge, "podCIDR",
                                f"inside cluster CIDR {spec.cluster_cidr}", str(cidr)))
        broken += [Drift(node.name, node.bridge, "podCIDR", f"apart from {other.name}'s "
                         f"{other.pod_cidr}", str(cidr))
                   for other in plan.nodes[i + 1:] if cidr.overlaps(other.pod_cidr)]
        if node.underlay_ip not in spec.underlay_subnet:
            broken.append(Drift(node.name, node.ifname, "underlay address",
                                f"in {spec.underlay_subnet}", str(node.underlay_ip)))
        broken += [Drift(pod.ref, pod.ifname, "address", f"in podCIDR {cidr}", str(pod.ip))
                   for pod in node.pods if pod.ip not in cidr]
    return broken
