"""What each namespace of a fresh build holds, derived from the plan. Pure.

Besides what the plan defines (names, addresses, MACs, routes, neighbour and
FDB entries, VXLAN attributes, sysctls), it holds what the kernel gives a fresh
build and a broken node changes: link states, bridge port flags, a few bridge
and VXLAN options, per-device forwarding, offloads, the default policy rules.

A cluster wired by the CNI plugins differs where the plugins legitimately do:
its host veths are in hairpin mode (flannel's hairpinMode), each pod has a route
to the cluster CIDR via its gateway (host-local's route from FLANNEL_NETWORK), and
its MACs, host veth names and cni0's MAC are those the plugins returned (the plan
adopts them, dataplane/cluster/cni/wiring.py). Nothing else: the bridge masquerades nothing
(ipMasq is off while subnet.env says flanneld does it) and leaves promiscuity off.
The user's own node configuration (dataplane/cluster/nodeconfig.py) is expected too: its
sysctls at their values, the firewall chains that can drop it left behind.
"""

from __future__ import annotations

from ipaddress import IPv4Interface

from dataplane.cluster import nodeconfig
from dataplane.cluster.netstate import NetState, sysctl_key
from dataplane.cluster.plan import NodePlan, Plan, PodPlan

LOOPBACK_MTU = 65536
# The kernel's defaults for a bridge port, as `ip -d link` names them.
PORT_FLAGS: dict[str, object] = {
    "state": "forwarding", "learning": True, "flood": True, "mcast_flood": True,
    "bcast_flood": True, "hairpin": False, "isolated": False, "guard": False,
    "root_block": False, "proxy_arp": False, "proxy_arp_wifi": False,
    "neigh_suppress": False, "locked": False, "mab": False, "vlan_tunnel": False,
    "mcast_to_unicast": False,
}
BRIDGE_OPTIONS: dict[str, object] = {"stp_state": 0, "vlan_filtering": 0}
# VXLAN options a build leaves at the kernel's default (the rest come from the plan).
VXLAN_DEFAULTS: dict[str, object] = {
    "udp_csum": True, "ttl": 0, "tos": 0, "df": "unset", "proxy": False, "rsc": False,
    "l2miss": False, "l3miss": False, "ageing": 300, "limit": 0, "remote": "none",
}
# Offloads (ethtool's names) a fresh build has on: flannel users turned the VTEP's
# checksum offload off to get around kernel bugs, and a node can be left that way.
VTEP_OFFLOADS = ("tx-checksumming", "rx-checksumming", "scatter-gather",
                 "generic-segmentation-offload")
VETH_OFFLOADS = ("tx-checksumming", "rx-checksumming")
# ip rule's defaults: lookup local, main, default.
DEFAULT_RULES = {0: "from all lookup local", 32766: "from all lookup main",
                 32767: "from all lookup default"}


def state(plan: Plan) -> dict[str, NetState]:
    """Namespace -> what it holds after a fresh build."""
    states = {plan.underlay_netns: _underlay(plan)}
    for node in plan.nodes:
        states[node.netns] = _node(plan, node)
        states.update({pod.netns: _pod(plan, pod) for pod in node.pods})
    return states


def _common(plan: Plan, netns: str, lo_up: bool = True) -> NetState:
    s = NetState()
    s.link("lo", "loopback", admin="up" if lo_up else "down",
           oper="unknown" if lo_up else "down", mtu=LOOPBACK_MTU)
    if lo_up:
        s.address("lo", "127.0.0.1", 8)  # the kernel adds it when lo comes up
    for key, value in plan.sysctls(netns).items():
        s.sysctl(key, value)
    for priority, text in DEFAULT_RULES.items():
        s.rule(priority, text)
    return s


def _underlay(plan: Plan) -> NetState:
    s = _common(plan, plan.underlay_netns, lo_up=False)  # a switch: lo as a new namespace has it
    mtu, bridge = plan.spec.underlay_mtu, plan.underlay_bridge
    s.link(bridge, "bridge", admin="up", oper="up", mtu=mtu)
    s.options(bridge, "bridge", BRIDGE_OPTIONS)
    for node in plan.nodes:
        s.link(node.underlay_port, "veth", admin="up", oper="up", mtu=mtu,
               master=bridge)
        s.options(node.underlay_port, "bridge port", PORT_FLAGS)
    return s


def _plugins(plan: Plan) -> bool:
    return plan.spec.cni.mode == "plugins"


def _node(plan: Plan, node: NodePlan) -> NetState:
    spec = plan.spec
    s = _common(plan, node.netns)
    for key, value in nodeconfig.sysctls(spec, node.name).items():
        s.sysctl(key, value)
    for name, what, how in plan.firewall:
        if name == node.name:
            s.firewall(what, how)
    eth0, cni0 = node.ifname, node.bridge
    s.link(eth0, "veth", admin="up", oper="up", mtu=spec.underlay_mtu, mac=node.eth0_mac)
    s.address(eth0, node.underlay_ip, node.underlay_prefixlen)
    s.route(eth0, str(plan.spec.underlay_subnet), src=node.underlay_ip)
    s.link(cni0, "bridge", admin="up", oper="up", mtu=spec.vtep_mtu, mac=node.cni0_mac)
    s.options(cni0, "bridge", BRIDGE_OPTIONS)
    s.address(cni0, node.gateway, node.pod_cidr.prefixlen)
    s.route(cni0, str(node.pod_cidr), src=node.gateway)
    _vtep(plan, node, s)
    for pod in node.pods:
        s.link(pod.host_veth, "veth", admin="up", oper="up", mtu=pod.mtu, master=cni0)
        s.options(pod.host_veth, "bridge port", {**PORT_FLAGS, "hairpin": _plugins(plan)})
    for dev in (eth0, cni0, node.vtep):  # where the node routes
        s.sysctl(sysctl_key(dev, "forwarding"), "1")
        if plan.built:  # pinned by our build; flannel sets no rp_filter
            s.sysctl(sysctl_key(dev, "rp_filter"), "0")
    for feature in VETH_OFFLOADS:
        s.offload(eth0, feature, True)
    return s


def _vtep(plan: Plan, node: NodePlan, s: NetState) -> None:
    spec, vtep = plan.spec, node.vtep
    s.link(vtep, "vxlan", admin="up", oper="unknown", mtu=spec.vtep_mtu, mac=node.vtep_mac)
    s.options(vtep, "vxlan", {"vni": spec.vni, "port": spec.port, "local": node.underlay_ip,
                              "link": node.ifname, "learning": False, **VXLAN_DEFAULTS})
    s.address(vtep, node.vtep_ip, 32)
    for feature in VTEP_OFFLOADS:
        s.offload(vtep, feature, True)
    for peer in node.peers:
        s.route(vtep, str(peer.pod_cidr), via=peer.vtep_ip, onlink=True)
        s.neighbour(vtep, peer.vtep_ip, peer.vtep_mac)
        s.fdb(vtep, peer.vtep_mac, peer.underlay_ip)


def _pod(plan: Plan, pod: PodPlan) -> NetState:
    s = _common(plan, pod.netns)
    eth0 = pod.ifname
    s.link(eth0, "veth", admin="up", oper="up", mtu=pod.mtu, mac=pod.mac)
    s.address(eth0, pod.ip, pod.prefixlen)
    s.route(eth0, "default", via=pod.gateway)
    if _plugins(plan):
        s.route(eth0, str(plan.spec.cluster_cidr), via=pod.gateway)
    s.route(eth0, str(IPv4Interface(f"{pod.ip}/{pod.prefixlen}").network), src=pod.ip)
    for feature in VETH_OFFLOADS:
        s.offload(eth0, feature, True)
    return s

