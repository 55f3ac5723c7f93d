"""Make a Plan real with netlink, in the cluster's namespaces only.

Every request goes through a socket that was opened inside its namespace (see
netns.Creation), so nothing here can touch the root namespace. Batches go in
the order the namespaces are made: the underlay (its bridge, then a port per
node), then each node followed by its pods. Each veth is created from the side
that is already built, with its peer made, addressed and indexed straight in
the next namespace, so no batch waits on a later one.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

from dataplane.cluster import netns
from dataplane.cluster.plan import (CNI_BRIDGE, NODE_IFNAME, POD_IFNAME, UNDERLAY_BRIDGE, NodePlan,
                                    Plan)
from dataplane.cluster.rtnl import Batch, Sender

# Fixed interface indexes inside our namespaces (lo is always 1).
LO = 1
ETH0 = 2  # a node's eth0 and a pod's eth0
CNI0 = 3
VTEP = 4
FIRST_POD_VETH = 5  # a node's host-side veths, in pod order
BR0 = 2  # the underlay bridge
FIRST_NODE_PORT = 3  # its ports, in node order
DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")


def build(plan: Plan, socket_of: Callable[[str], socket.socket], pods: bool = True) -> None:
    """Configure the namespaces of plan, which start out empty.

    socket_of(name) gives a netlink socket opened in namespace name, waiting
    until that namespace exists: the namespaces may still be being made.
    Batches are encoded here while a Sender hands the previous ones to the kernel.
    pods=False leaves cni0 and the pods to the CNI plugins, their namespaces empty.
    """
    with Sender() as sender:
        _underlay(plan, sender, socket_of)
        for node in plan.nodes:
            _node(plan, node, sender, socket_of, pods)
            for pod in node.pods:
                if not pods:
                    socket_of(pod.netns)  # made, for the plugins to wire
                    continue
                with sender.batch(socket_of(pod.netns), pod.netns) as b:
                    b.link_up(LO)
                    b.link_up(ETH0)
                    b.addr_add(ETH0, pod.ip, pod.prefixlen)
                    b.route_add(DEFAULT_ROUTE, pod.gateway, ETH0)


def _peer_netns(socket_of: Callable[[str], socket.socket], name: str) -> Path:
    """The file of namespace name, once it exists."""
    socket_of(name)
    return netns.path(name)


def _underlay(plan: Plan, sender: Sender, socket_of: Callable[[str], socket.socket]) -> None:
    """The underlay bridge, then a port per node, each in a batch of its own: a node's
    port needs just that node's namespace made."""
    mtu, where = plan.spec.underlay_mtu, plan.underlay_netns
    sock = socket_of(where)
    with sender.batch(sock, where) as b:
        b.bridge_add(BR0, UNDERLAY_BRIDGE, mtu=mtu)
    for i, node in enumerate(plan.nodes):
        with sender.batch(sock, where) as b:
            b.veth_add(FIRST_NODE_PORT + i, node.underlay_port, mtu=mtu, master=BR0,
                       peer_ifname=NODE_IFNAME, peer_index=ETH0,
                       peer_netns=_peer_netns(socket_of, node.netns),
                       peer_address=node.eth0_mac)


def _node(plan: Plan, node: NodePlan, sender: Sender,
          socket_of: Callable[[str], socket.socket], pods: bool) -> None:
    spec = plan.spec
    with sender.batch(socket_of(node.netns), node.netns) as b:
        b.link_up(LO)
        b.link_up(ETH0)
        b.addr_add(ETH0, node.underlay_ip, node.underlay_prefixlen)
        vtep(plan, node, b, plan.spec.vni)
        if not pods:
            return
        b.bridge_add(CNI0, CNI_BRIDGE, mtu=spec.vtep_mtu, address=node.cni0_mac)
        b.addr_add(CNI0, node.gateway, node.pod_cidr.prefixlen)
        for i, pod in enumerate(node.pods):  # what the CNI bridge plugin does per pod
            b.veth_add(FIRST_POD_VETH + i, pod.host_veth, mtu=pod.mtu, master=CNI0,
                       peer_ifname=POD_IFNAME, peer_index=ETH0,
                       peer_netns=_peer_netns(socket_of, pod.netns), peer_address=pod.mac)


def vtep(plan: Plan, node: NodePlan, b: Batch, vni: int) -> None:
    """flannel.<vni> with its address, and per peer node what flannel's vxlan backend
    programs for a remote lease: a permanent neighbour, an FDB entry and a route."""
    spec = plan.spec
    b.vxlan_add(VTEP, spec.vtep_name, mtu=spec.vtep_mtu, address=node.vtep_mac, vni=vni,
                local=node.underlay_ip, link=ETH0, port=spec.port, learning=False)
    b.addr_add(VTEP, node.vtep_ip, 32)
    for peer in node.peers:
        b.neigh_add(VTEP, peer.vtep_ip, peer.vtep_mac)
        b.fdb_append(VTEP, peer.vtep_mac, peer.underlay_ip)
        b.route_add(peer.pod_cidr, peer.vtep_ip, VTEP, onlink=True)
