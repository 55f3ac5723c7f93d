"""Make a Plan real with pyroute2 netlink calls, in the cluster's namespaces only.

Every call goes through a socket that was opened inside its namespace (see
netns.create), so nothing here can touch the root namespace. Links are made
with explicit interface indexes, each veth from the side whose addresses come
next and with its peer created straight in the other namespace: that saves a
lookup and a move per link.
"""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack
from dataclasses import dataclass

from pyroute2 import IPRoute

from dataplane import netns
from dataplane.plan import CNI_BRIDGE, NODE_IFNAME, POD_IFNAME, UNDERLAY_BRIDGE, NodePlan, Plan, PodPlan

NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x4
# Fixed interface indexes inside our namespaces (lo is always 1).
LO = 1
ETH0 = 2  # a node's eth0 and a pod's eth0
CNI0 = 3
VTEP = 4
BR0 = 2  # the underlay bridge


@dataclass
class Links:
    """Open netlink handles and namespace fds for one build."""

    ipr: dict[str, IPRoute]
    fds: dict[str, int]


def sysctls(node_namespaces: set[str]):
    """The per-namespace sysctls, written from inside each namespace as it is made."""
    def inside(name: str) -> None:
        # No IPv6: its autoconfiguration chatter would mix with the traffic we verify.
        netns.write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        netns.write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        if name in node_namespaces:
            netns.write_sysctl("net.ipv4.ip_forward", "1")
    return inside


def build(plan: Plan, sockets: dict[str, socket.socket]) -> None:
    """Configure the freshly made, empty namespaces of plan."""
    with ExitStack() as stack:
        links = Links(ipr={}, fds={})
        for name, sock in sockets.items():
            links.ipr[name] = stack.enter_context(IPRoute(use_socket=sock))
            links.fds[name] = os.open(netns.path(name), os.O_RDONLY)
            stack.callback(os.close, links.fds[name])
        _underlay(plan, links)
        for node in plan.nodes:
            _node(plan, node, links)
            for pod in node.pods:
                _pod(node, pod, links)


def _underlay(plan: Plan, links: Links) -> None:
    ul = links.ipr[plan.underlay_netns]
    ul.link("add", index=BR0, ifname=UNDERLAY_BRIDGE, kind="bridge", state="up",
            mtu=plan.spec.underlay_mtu)


def _node(plan: Plan, node: NodePlan, links: Links) -> None:
    spec = plan.spec
    ipr = links.ipr[node.netns]
    ipr.link("set", index=LO, state="up")
    ipr.link("add", index=ETH0, ifname=NODE_IFNAME, kind="veth", address=node.eth0_mac,
             mtu=spec.underlay_mtu, state="up",
             peer={"ifname": node.underlay_port, "net_ns_fd": links.fds[plan.underlay_netns],
                   "mtu": spec.underlay_mtu})
    links.ipr[plan.underlay_netns].link("set", ifname=node.underlay_port, master=BR0, state="up")
    ipr.addr("add", index=ETH0, address=str(node.underlay_ip), prefixlen=node.underlay_prefixlen)
    ipr.link("add", index=CNI0, ifname=CNI_BRIDGE, kind="bridge", address=node.cni0_mac,
             mtu=spec.vtep_mtu, state="up")
    ipr.addr("add", index=CNI0, address=str(node.gateway), prefixlen=node.pod_cidr.prefixlen)
    ipr.link("add", index=VTEP, ifname=spec.vtep_name, kind="vxlan", vxlan_id=spec.vni,
             vxlan_port=spec.port, vxlan_local=str(node.underlay_ip), vxlan_link=ETH0,
             vxlan_learning=0, mtu=spec.vtep_mtu, address=node.vtep_mac, state="up")
    ipr.addr("add", index=VTEP, address=str(node.vtep_ip), prefixlen=32)
    for peer in node.peers:  # what flannel's vxlan backend programs per remote lease
        ipr.neigh("add", ifindex=VTEP, dst=str(peer.vtep_ip), lladdr=peer.vtep_mac,
                  state=NUD_PERMANENT)
        ipr.fdb("append", ifindex=VTEP, lladdr=peer.vtep_mac, dst=str(peer.underlay_ip),
                state=NUD_PERMANENT)
        ipr.route("add", dst=str(peer.pod_cidr), gateway=str(peer.vtep_ip), oif=VTEP,
                  flags=RTNH_F_ONLINK)


def _pod(node: NodePlan, pod: PodPlan, links: Links) -> None:
    ipr = links.ipr[pod.netns]
    ipr.link("add", index=ETH0, ifname=POD_IFNAME, kind="veth", address=pod.mac, mtu=pod.mtu,
             state="up", peer={"ifname": pod.host_veth, "net_ns_fd": links.fds[node.netns],
                               "mtu": pod.mtu})
    links.ipr[node.netns].link("set", ifname=pod.host_veth, master=CNI0, state="up")
    ipr.link("set", index=LO, state="up")
    ipr.addr("add", index=ETH0, address=str(pod.ip), prefixlen=pod.prefixlen)
    ipr.route("add", dst="0.0.0.0/0", gateway=str(pod.gateway), oif=ETH0)
