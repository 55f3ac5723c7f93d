"""Read what the kernel holds in each namespace of a plan, in the audit's words.

A thread enters the namespaces in turn (netns.each); in each one, netlink
dumps through a socket opened there, sysctls and offloads read from there, and
the nftables ruleset listed by libnftables from there. Nothing is changed.
"""

from __future__ import annotations

import json
import socket

from dataplane.cluster import ethtool, firewall, netns
from dataplane.cluster.netstate import NetState
from dataplane.cluster.rtdump import dump
from dataplane.cluster.rtlayout import IFADDR, IFINFO, NEIGHBOUR, NFGEN, ROUTE, RULE
from dataplane.cluster.rtnl import (AF_BRIDGE, NETLINK_GET_STRICT_CHK, NUD_PERMANENT, RTM_GETADDR,
                                    RTM_GETLINK, RTM_GETNEIGH, RTM_GETROUTE, RTM_GETRULE,
                                    RTNH_F_ONLINK, RT_TABLE_MAIN, SOL_NETLINK)

IFF_UP, IFF_LOOPBACK = 0x1, 0x8
RTEXT_FILTER_SKIP_STATS = 1 << 3  # link dumps without counters: less to decode
NETLINK_NETFILTER = 12
NFT_GET_TABLES = (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETTABLE
LEGACY_TABLES = ("ip_tables_names", "arp_tables_names")
PORT_STATES = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}
ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable",
               8: "prohibit", 9: "throw"}
RULE_ACTIONS = {2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
TABLES = {255: "local", 254: "main", 253: "default"}
NUD_STATES = {0x80: "permanent", 0x40: "noarp", 0x02: "reachable", 0x04: "stale",
              0x08: "delay", 0x10: "probe", 0x20: "failed", 0x01: "incomplete"}
# IFLA_BRPORT_* -> the name `ip -d link` gives the flag
PORT_FLAGS = {"LEARNING": "learning", "UNICAST_FLOOD": "flood", "MCAST_FLOOD": "mcast_flood",
              "BCAST_FLOOD": "bcast_flood", "MODE": "hairpin", "ISOLATED": "isolated",
              "GUARD": "guard", "PROTECT": "root_block", "PROXYARP": "proxy_arp",
              "PROXYARP_WIFI": "proxy_arp_wifi", "NEIGH_SUPPRESS": "neigh_suppress",
              "LOCKED": "locked", "MAB": "mab", "VLAN_TUNNEL": "vlan_tunnel",
              "MCAST_TO_UCAST": "mcast_to_unicast"}
VXLAN_FLAGS = {"LEARNING": "learning", "UDP_CSUM": "udp_csum", "PROXY": "proxy", "RSC": "rsc",
               "L2MISS": "l2miss", "L3MISS": "l3miss"}
VXLAN_NUMBERS = {"ID": "vni", "PORT": "port", "TTL": "ttl", "TOS": "tos", "AGEING": "ageing",
                 "LIMIT": "limit"}
VXLAN_DF = {0: "unset", 1: "set", 2: "inherit"}
# the attributes read of each kind of entry, nested ones included (discover's scan.py
# reads links too)
LINK_ATTRS = ("IFLA_IFNAME", "IFLA_LINKINFO", "IFLA_OPERSTATE", "IFLA_MTU", "IFLA_ADDRESS",
              "IFLA_MASTER", "IFLA_LINK", "IFLA_LINK_NETNSID", "IFLA_INFO_KIND",
              "IFLA_INFO_DATA", "IFLA_INFO_SLAVE_KIND", "IFLA_INFO_SLAVE_DATA",
              *(f"IFLA_VXLAN_{attr}" for attr in (*VXLAN_NUMBERS, *VXLAN_FLAGS, "LOCAL",
                                                  "GROUP", "LINK", "DF")),
              "IFLA_BR_STP_STATE", "IFLA_BR_VLAN_FILTERING",
              *(f"IFLA_BRPORT_{attr}" for attr in (*PORT_FLAGS, "STATE")))
ROUTE_ATTRS = ("RTA_TABLE", "RTA_DST", "RTA_OIF", "RTA_GATEWAY", "RTA_PREFSRC", "RTA_PRIORITY")
RULE_ATTRS = ("FRA_SRC", "FRA_DST", "FRA_IIFNAME", "FRA_OIFNAME", "FRA_FWMARK", "FRA_TABLE",
              "FRA_PRIORITY")
NEIGHBOUR_ATTRS = ("NDA_DST", "NDA_LLADDR", "NDA_PORT", "NDA_VNI")


def snapshot(wanted: dict[str, NetState]) -> dict[str, NetState | None]:
    """Namespace -> what it holds (None: gone), reading the sysctls and offloads
    that wanted, the expectation, names for it."""
    return netns.each(wanted, lambda name: read(wanted[name]))


def read(want: NetState) -> NetState:
    """The calling thread's namespace."""
    s = NetState()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0) as sock:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)  # so dumps honour filters
        names, vxlans = _links(sock, s)
        _addresses(sock, s, names)
        _routes(sock, s, names)
        _rules(sock, s)
        _neighbours(sock, s, names)
        if vxlans:
            _fdb(sock, s, vxlans)
    for key in want.sysctl_keys():
        value = netns.read_sysctl(key)
        if value is not None:
            s.sysctl(key, value)
    _offloads(s, want.offload_keys())
    _firewall(s)
    return s


def _links(sock: socket.socket, s: NetState) -> tuple[dict[int, str], dict[int, str]]:
    """Every link; returns index -> name, and the same for the VXLAN devices."""
    links = dump(sock, IFINFO, RTM_GETLINK, LINK_ATTRS,
                 attrs=[("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)])
    names = {link["index"]: link.get("IFLA_IFNAME") for link in links}
    vxlans = {}
    for link in links:
        name, info = names[link["index"]], link.get("IFLA_LINKINFO", {})
        kind = info.get("IFLA_INFO_KIND")
        up = link["flags"] & IFF_UP
        s.link(name, kind or ("loopback" if link["flags"] & IFF_LOOPBACK else "unknown"),
               admin="up" if up else "down",
               oper=(link.get("IFLA_OPERSTATE") or "unknown").lower(),
               mtu=link.get("IFLA_MTU"), mac=link.get("IFLA_ADDRESS"),
               master=names.get(link.get("IFLA_MASTER") or 0))
        data = info.get("IFLA_INFO_DATA", {})
        if kind == "vxlan":
            vxlans[link["index"]] = name
            s.options(name, "vxlan", vxlan_options(data, names))
        elif kind == "bridge":
            s.options(name, "bridge", {"stp_state": data.get("IFLA_BR_STP_STATE"),
                                       "vlan_filtering": data.get("IFLA_BR_VLAN_FILTERING")})
        if info.get("IFLA_INFO_SLAVE_KIND") == "bridge":
            s.options(name, "bridge port", _port(info.get("IFLA_INFO_SLAVE_DATA", {})))
    return names, vxlans


def vxlan_options(data: dict, names: dict[int, str]) -> dict[str, object]:
    found: dict[str, object] = {
        option: data[f"IFLA_VXLAN_{attr}"] for attr, option in VXLAN_NUMBERS.items()
        if f"IFLA_VXLAN_{attr}" in data}
    found.update({option: bool(data[f"IFLA_VXLAN_{attr}"]) for attr, option
                  in VXLAN_FLAGS.items() if f"IFLA_VXLAN_{attr}" in data})
    found["local"] = data.get("IFLA_VXLAN_LOCAL") or "none"
    found["remote"] = data.get("IFLA_VXLAN_GROUP") or "none"
    found["link"] = names.get(data.get("IFLA_VXLAN_LINK") or 0, "none")
    if "IFLA_VXLAN_DF" in data:
        found["df"] = VXLAN_DF.get(data["IFLA_VXLAN_DF"], data["IFLA_VXLAN_DF"])
    return found


def _port(data: dict) -> dict[str, object]:
    found: dict[str, object] = {option: bool(data[f"IFLA_BRPORT_{attr}"])
                                for attr, option in PORT_FLAGS.items()
                                if f"IFLA_BRPORT_{attr}" in data}
    if "IFLA_BRPORT_STATE" in data:
        found["state"] = PORT_STATES.get(data["IFLA_BRPORT_STATE"], data["IFLA_BRPORT_STATE"])
    return found


def _addresses(sock: socket.socket, s: NetState, names: dict[int, str]) -> None:
    for a in dump(sock, IFADDR, RTM_GETADDR, ["IFA_LOCAL"], {"family": socket.AF_INET}):
        s.address(names.get(a["index"], str(a["index"])), a.get("IFA_LOCAL"),
                  a["prefixlen"])


def _routes(sock: socket.socket, s: NetState, names: dict[int, str]) -> None:
    asked = {"family": socket.AF_INET, "table": RT_TABLE_MAIN}
    for r in dump(sock, ROUTE, RTM_GETROUTE, ROUTE_ATTRS, asked):
        if r.get("RTA_TABLE") not in (None, RT_TABLE_MAIN):
            continue
        dst = f"{r.get('RTA_DST')}/{r['dst_len']}" if r["dst_len"] else "default"
        oif = r.get("RTA_OIF")
        s.route(names.get(oif, str(oif)) if oif else None, dst, via=r.get("RTA_GATEWAY"),
                onlink=bool(r["flags"] & RTNH_F_ONLINK), src=r.get("RTA_PREFSRC"),
                kind=ROUTE_TYPES.get(r["type"], str(r["type"])),
                metric=r.get("RTA_PRIORITY") or 0)


def _rules(sock: socket.socket, s: NetState) -> None:
    for r in dump(sock, RULE, RTM_GETRULE, RULE_ATTRS, {"family": socket.AF_INET}):
        words = [f"from {r.get('FRA_SRC')}/{r['src_len']}" if r["src_len"] else "from all"]
        words += [f"to {r.get('FRA_DST')}/{r['dst_len']}"] if r["dst_len"] else []
        for attr, word in (("FRA_IIFNAME", "iif"), ("FRA_OIFNAME", "oif"),
                           ("FRA_FWMARK", "fwmark")):
            if r.get(attr):
                words.append(f"{word} {r.get(attr)}")
        table = r.get("FRA_TABLE") or r["table"]
        words.append(f"lookup {TABLES.get(table, table)}" if r["action"] == 1
                     else RULE_ACTIONS.get(r["action"], f"action {r['action']}"))
        s.rule(r.get("FRA_PRIORITY") or 0, " ".join(words))


def _neighbours(sock: socket.socket, s: NetState, names: dict[int, str]) -> None:
    """Permanent entries only: the rest the kernel learns and forgets on its own."""
    for n in dump(sock, NEIGHBOUR, RTM_GETNEIGH, NEIGHBOUR_ATTRS, {"family": socket.AF_INET}):
        if n["state"] & NUD_PERMANENT:
            s.neighbour(names.get(n["ifindex"], str(n["ifindex"])), n.get("NDA_DST"),
                        n.get("NDA_LLADDR"))


def _fdb(sock: socket.socket, s: NetState, vxlans: dict[int, str]) -> None:
    for n in dump(sock, NEIGHBOUR, RTM_GETNEIGH, NEIGHBOUR_ATTRS, {"family": AF_BRIDGE}):
        if n["ifindex"] in vxlans:
            # permanent whether noarp or not (`bridge fdb append` sets both), as bridge(8) reads it
            state = "permanent" if n["state"] & NUD_PERMANENT else \
                NUD_STATES.get(n["state"], hex(n["state"]))
            s.fdb(vxlans[n["ifindex"]], n.get("NDA_LLADDR"), n.get("NDA_DST"), state,
                  n.get("NDA_PORT"), n.get("NDA_VNI"))  # the kernel gives them if not the device's


def _offloads(s: NetState, wanted: list[tuple[str, str]]) -> None:
    if not wanted:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for device, feature in wanted:
            value = ethtool.feature(sock, device, feature)
            if value is not None:
                s.offload(device, feature, value)


def _firewall(s: NetState) -> None:
    if _has_nft_tables():
        for what, how in firewall.dropping(ruleset()).items():
            s.firewall(what, how)
    for names in LEGACY_TABLES:
        try:
            with open(f"/proc/thread-self/net/{names}") as listed:
                tables = listed.read().split()
        except FileNotFoundError:
            tables = []
        for table in tables:
            s.firewall(f"iptables-legacy table {names.split('_')[0]} {table}",
                       "present (its rules are not read: list them with iptables-legacy -S)")


def _has_nft_tables() -> bool:
    """A cheap look before loading libnftables: most namespaces have no table."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_NETFILTER) as sock:
        return bool(dump(sock, NFGEN, NFT_GET_TABLES))


def ruleset() -> dict:
    """The ruleset as nft -j lists it; the context is made here, in the namespace."""
    import nftables  # Debian's python3-nftables (libnftables)

    nft = nftables.Nftables()
    nft.set_json_output(True)
    rc, out, err = nft.cmd("list ruleset")
    if rc != 0:
        raise OSError(f"nft list ruleset failed: {err.strip()}")
    return json.loads(out)
