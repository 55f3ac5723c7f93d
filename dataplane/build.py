"""Make a Plan real with netlink, in the cluster's namespaces only.

Every request goes through a socket that was opened inside its namespace (see
netns.Creation), so nothing here can touch the root namespace. One batch per
namespace, sent in the order underlay, nodes, pods: each veth is created from
the side that is already built, with its peer made up, addressed and indexed
straight in the next namespace, so no batch waits on a later one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Network

from dataplane import netns
from dataplane.plan import CNI_BRIDGE, NODE_IFNAME, POD_IFNAME, UNDERLAY_BRIDGE, NodePlan, Plan
from dataplane.rtnl import Batch

# Fixed interface indexes inside our namespaces (lo is always 1).
LO = 1
ETH0 = 2  # a node's eth0 and a pod's eth0
CNI0 = 3
VTEP = 4
FIRST_POD_VETH = 5  # a node's host-side veths, in pod order
BR0 = 2  # the underlay bridge
FIRST_NODE_PORT = 3  # its ports, in node order
DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")


def build(plan: Plan, socket_of: Callable[[str], socket.socket]) -> None:
    """Configure the namespaces of plan, which start out empty.

    socket_of(name) gives a netlink socket opened in namespace name, waiting
    until that namespace exists: the namespaces may still be being made.
    """
    with _NamespaceFds(socket_of) as fds:
        _underlay(plan, Batch(socket_of(plan.underlay_netns), plan.underlay_netns), fds)
        for node in plan.nodes:
            _node(plan, node, Batch(socket_of(node.netns), node.netns), fds)
        for pod in plan.pods():
            b = Batch(socket_of(pod.netns), pod.netns)
            b.link_up(LO)
            b.link_up(ETH0)
            b.addr_add(ETH0, pod.ip, pod.prefixlen)
            b.route_add(DEFAULT_ROUTE, pod.gateway, ETH0)
            b.send()


def _underlay(plan: Plan, b: Batch, fds: "_NamespaceFds") -> None:
    mtu = plan.spec.underlay_mtu
    b.link_add(BR0, UNDERLAY_BRIDGE, "bridge", mtu=mtu)
    for i, node in enumerate(plan.nodes):
        b.veth_add(FIRST_NODE_PORT + i, node.underlay_port, mtu=mtu, master=BR0,
                   peer_ifname=NODE_IFNAME, peer_index=ETH0, peer_netns_fd=fds[node.netns],
                   peer_address=node.eth0_mac)
    b.send()


def _node(plan: Plan, node: NodePlan, b: Batch, fds: "_NamespaceFds") -> None:
    spec = plan.spec
    b.link_up(LO)
    b.link_up(ETH0)
    b.addr_add(ETH0, node.underlay_ip, node.underlay_prefixlen)
    b.link_add(CNI0, CNI_BRIDGE, "bridge", mtu=spec.vtep_mtu, address=node.cni0_mac)
    b.addr_add(CNI0, node.gateway, node.pod_cidr.prefixlen)
    vtep(plan, node, b, plan.spec.vni)
    for i, pod in enumerate(node.pods):  # what the CNI bridge plugin does per pod
        b.veth_add(FIRST_POD_VETH + i, pod.host_veth, mtu=pod.mtu, master=CNI0,
                   peer_ifname=POD_IFNAME, peer_index=ETH0, peer_netns_fd=fds[pod.netns],
                   peer_address=pod.mac)
    b.send()
    fds.close_all()  # the pods' fds are needed by this batch only


def vtep(plan: Plan, node: NodePlan, b: Batch, vni: int) -> None:
    """flannel.<vni> with its address, and per peer node what flannel's vxlan backend
    programs for a remote lease: a permanent neighbour, an FDB entry and a route."""
    spec = plan.spec
    b.link_add(VTEP, spec.vtep_name, "vxlan", mtu=spec.vtep_mtu, address=node.vtep_mac, data=[
        ("IFLA_VXLAN_ID", vni), ("IFLA_VXLAN_LOCAL", str(node.underlay_ip)),
        ("IFLA_VXLAN_LINK", ETH0), ("IFLA_VXLAN_PORT", spec.port), ("IFLA_VXLAN_LEARNING", 0)])
    b.addr_add(VTEP, node.vtep_ip, 32)
    for peer in node.peers:
        b.neigh_add(VTEP, peer.vtep_ip, peer.vtep_mac)
        b.fdb_append(VTEP, peer.vtep_mac, peer.underlay_ip)
        b.route_add(peer.pod_cidr, peer.vtep_ip, VTEP, onlink=True)


class _NamespaceFds(dict):
    """Open fds of namespace files, opened on first use (once the namespace
    exists), closed in bulk."""

    def __init__(self, socket_of: Callable[[str], socket.socket]):
        super().__init__()
        self._ready = socket_of

    def __missing__(self, name: str) -> int:
        self._ready(name)
        self[name] = os.open(netns.path(name), os.O_RDONLY)
        return self[name]

    def close_all(self) -> None:
        for fd in self.values():
            os.close(fd)
        self.clear()

    def __enter__(self) -> "_NamespaceFds":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()
