"""Derive every name, address and MAC of a cluster from its Spec.

Pure and deterministic: the same Spec always gives the same Plan. It mirrors
what a flannel cluster computes: node IPAM carves podCIDRs in node order,
host-local hands pod IPs out from .2 (.1 is the cni0 gateway), and flannel's
vxlan backend gives each node a route, a neighbour and an FDB entry per peer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network

from dataplane.cluster.spec import Spec
from dataplane.errors import UsageError
from dataplane.names import format_mac

NETNS_PREFIX = "dp-"  # every namespace of every run starts with this
UNDERLAY_BRIDGE = "br0"
CNI_BRIDGE = "cni0"
POD_IFNAME = "eth0"
NODE_IFNAME = "eth0"


def mac_from_ip(oui: tuple[int, int], ip: IPv4Address) -> str:
    """A locally administered MAC carrying the IPv4 address, as the CNI bridge plugin makes."""
    return format_mac(bytes((*oui, *ip.packed)))


POD_OUI = (0x0A, 0x58)  # the CNI bridge plugin's prefix for pod and gateway MACs
VTEP_OUI = (0x0E, 0xFA)
NODE_OUI = (0x0E, 0xE0)


@dataclass(frozen=True)
class PodPlan:
    node: str
    name: str
    netns: str
    ip: IPv4Address
    prefixlen: int
    gateway: IPv4Address
    mac: str
    mtu: int
    host_veth: str  # the node-side veth, named as the CNI bridge plugin names it
    container_id: str
    ifname: str  # the pod's interface (eth0 as the CNI plugins make it)

    @cached_property  # verdicts ask for it at every hop
    def ref(self) -> str:
        return f"{self.node}/{self.name}"

    @cached_property  # as decoded frames write it: asked at every exchange and leg
    def ip_str(self) -> str:
        return str(self.ip)


@dataclass(frozen=True)
class PeerPlan:
    """What a node programs on its VTEP for one other node."""

    node: str
    pod_cidr: IPv4Network
    vtep_ip: IPv4Address  # the peer's podCIDR .0, the route's onlink gateway
    vtep_mac: str
    underlay_ip: IPv4Address


@dataclass(frozen=True)
class NodePlan:
    name: str
    netns: str
    underlay_ip: IPv4Address
    underlay_prefixlen: int
    underlay_port: str  # the node's veth end on the underlay bridge
    eth0_mac: str
    pod_cidr: IPv4Network
    gateway: IPv4Address
    cni0_mac: str
    vtep_ip: IPv4Address
    vtep_mac: str
    peers: tuple[PeerPlan, ...]
    pods: tuple[PodPlan, ...]
    ifname: str  # the node's underlay interface, the VTEP's link
    bridge: str  # the pods' bridge (cni0)
    vtep: str  # the VXLAN device (flannel.<vni>)

    @cached_property  # as decoded frames write it: asked at every encapsulated leg
    def underlay_str(self) -> str:
        return str(self.underlay_ip)


@dataclass(frozen=True)
class Plan:
    spec: Spec
    name: str
    prefix: str
    underlay_netns: str
    nodes: tuple[NodePlan, ...]
    underlay_bridge: str
    # Made by our builder, so its choices beyond flannel's rules hold too (IPv6 off,
    # rp_filter pinned, ping sockets allowed); False for a network discovered, not built.
    built: bool = True
    # (node, chain, how it drops): what the user's own node configuration left in the
    # firewall, expected by the audit (dataplane/cluster/nodeconfig.py records it)
    firewall: tuple[tuple[str, str, str], ...] = ()

    @cached_property  # verdicts ask about every hop
    def beyond_bridges(self) -> frozenset[tuple[str, str]]:
        """(node, device) of each node's VTEP and eth0: the places beyond its pod bridge."""
        return frozenset((n.name, device) for n in self.nodes for device in (n.vtep, n.ifname))

    def namespaces(self) -> list[str]:
        """Every namespace of the cluster, in creation order: each one's veth
        peers live in namespaces made before it or right after it."""
        return ([self.underlay_netns] + [node.netns for node in self.nodes]
                + [pod.netns for pod in self.pods()])

    def where(self) -> dict[str, str]:
        """Namespace name -> the label hops carry: underlay, node-0, node-0/pod-1."""
        labels = {self.underlay_netns: "underlay"}
        for node in self.nodes:
            labels[node.netns] = node.name
            labels.update({pod.netns: pod.ref for pod in node.pods})
        return labels

    def sysctls(self, netns: str) -> dict[str, str]:
        """The sysctls of one of our namespaces."""
        if not self.built:  # flannel's one rule: nodes route between the bridge and the VTEP
            return {"net.ipv4.ip_forward": "1"} if self.is_node(netns) else {}
        # No IPv6: its autoconfiguration chatter would mix with the traffic we verify.
        values = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
        if self.is_node(netns):
            values["net.ipv4.ip_forward"] = "1"  # nodes route between cni0 and flannel.1
            # A new namespace copies IPv4 settings from the host's: pinned, so that every
            # build has the same reverse path filter (devices made later copy default).
            values["net.ipv4.conf.all.rp_filter"] = "0"
            values["net.ipv4.conf.default.rp_filter"] = "0"
        elif netns != self.underlay_netns:
            # ICMP "ping sockets" for every group, so echoes are sent and answered
            # without raw sockets (whose clones leave a NO_SOCKET drop behind).
            values["net.ipv4.ping_group_range"] = "0 2147483647"
        return values

    def is_node(self, netns: str) -> bool:
        return any(node.netns == netns for node in self.nodes)

    def pods(self) -> list[PodPlan]:
        return [pod for node in self.nodes for pod in node.pods]

    @cached_property
    def pod_addresses(self) -> frozenset[str]:
        return frozenset(pod.ip_str for pod in self.pods())

    @cached_property
    def _nodes_by_name(self) -> dict[str, NodePlan]:
        return {node.name: node for node in self.nodes}

    def node(self, name: str) -> NodePlan:
        """Looked up for every exchange of a run (waves, neighbours): by name, not by scan."""
        found = self._nodes_by_name.get(name)
        if found is not None:
            return found
        raise UsageError(f"no node {name!r} in cluster {self.name}; "
                         f"known: {', '.join(n.name for n in self.nodes)}")

    def pod(self, ref: str) -> PodPlan:
        """The pod addressed as NODE/POD."""
        node_name, _, pod_name = ref.partition("/")
        for pod in self.node(node_name).pods:
            if pod.name == pod_name:
                return pod
        raise UsageError(f"no pod {ref!r} in cluster {self.name}; address pods as NODE/POD, "
                         f"e.g. {self.nodes[0].pods[0].ref}")


def prefix_for(name: str) -> str:
    return f"{NETNS_PREFIX}{name}"


def make_plan(spec: Spec) -> Plan:
    prefix = prefix_for(spec.name)
    # node IPAM: podCIDRs in node order; node IPs from the underlay's first host address
    leases = list(zip(spec.nodes, spec.cluster_cidr.subnets(new_prefix=spec.node_mask),
                      spec.underlay_subnet.hosts()))
    nodes = []
    for name, cidr, underlay_ip in leases:
        peers = tuple(
            PeerPlan(node=p_name, pod_cidr=p_cidr, vtep_ip=p_cidr.network_address,
                     vtep_mac=mac_from_ip(VTEP_OUI, p_ip), underlay_ip=p_ip)
            for p_name, p_cidr, p_ip in leases if p_name != name
        )
        gateway = cidr.network_address + 1
        nodes.append(NodePlan(
            name=name, netns=f"{prefix}.{name}", underlay_ip=underlay_ip,
            underlay_prefixlen=spec.underlay_subnet.prefixlen, underlay_port=name,
            eth0_mac=mac_from_ip(NODE_OUI, underlay_ip), pod_cidr=cidr,
            gateway=gateway, cni0_mac=mac_from_ip(POD_OUI, gateway),
            vtep_ip=cidr.network_address, vtep_mac=mac_from_ip(VTEP_OUI, underlay_ip),
            peers=peers, pods=_pods(spec, prefix, name, cidr),
            ifname=NODE_IFNAME, bridge=CNI_BRIDGE, vtep=spec.vtep_name,
        ))
    return Plan(spec=spec, name=spec.name, prefix=prefix,
                underlay_netns=f"{prefix}.underlay", nodes=tuple(nodes),
                underlay_bridge=UNDERLAY_BRIDGE)


def _pods(spec: Spec, prefix: str, node: str, cidr: IPv4Network) -> tuple[PodPlan, ...]:
    pods = []
    for index, name in enumerate(spec.pods):
        ip = cidr.network_address + 2 + index  # host-local: first free address after the gateway
        # Deterministic stand-in for a runtime's random 64-hex id (hashlib's OpenSSL import
        # alone would be a visible part of `dataplane up`).
        container_id = f"{random.Random(f'{spec.name}/{node}/{name}').getrandbits(256):064x}"
        pods.append(PodPlan(
            node=node, name=name, netns=f"{prefix}.{node}.{name}", ip=ip,
            prefixlen=cidr.prefixlen, gateway=cidr.network_address + 1,
            mac=mac_from_ip(POD_OUI, ip), mtu=spec.vtep_mtu,
            host_veth=f"veth{container_id[:8]}", container_id=container_id, ifname=POD_IFNAME,
        ))
    return tuple(pods)
