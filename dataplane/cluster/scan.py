"""The links of a set of namespaces as discovery needs them: kinds, masters, IPv4
addresses, VXLAN options, and where each veth's peer is (which namespace of
the set, which device). Read-only, like the audit's reader (dataplane/cluster/live.py).

A veth names its peer by index and by the peer namespace's id as seen from its
own namespace (IFLA_LINK_NETNSID); each namespace is asked which id it gives
each other namespace of the set (RTM_GETNSID by file), which turns ids into names.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Interface

from dataplane.cluster import netns
from dataplane.cluster.live import LINK_ATTRS, IFF_UP, RTEXT_FILTER_SKIP_STATS, vxlan_options
from dataplane.cluster.rtdump import dump
from dataplane.cluster.rtlayout import IFADDR, IFINFO
from dataplane.cluster.rtmessages import nsidmsg
from dataplane.cluster.rtnl import RTM_GETADDR, RTM_GETLINK, RTM_GETNSID, NetlinkError, get


@dataclass
class Link:
    name: str
    kind: str  # veth, bridge, vxlan, loopback, ...
    mac: str | None
    mtu: int
    up: bool
    master: str | None
    peer: tuple[str, str] | None = None  # a veth's other end: (namespace, device); None outside
    vxlan: dict[str, object] = field(default_factory=dict)  # vni, port, local, link, ...
    addresses: list[IPv4Interface] = field(default_factory=list)


@dataclass
class Space:
    """One namespace's links, by name."""

    name: str
    links: dict[str, Link]

    def of_kind(self, kind: str) -> list[Link]:
        return [link for link in self.links.values() if link.kind == kind]

    def ports(self, bridge: str) -> list[Link]:
        return [link for link in self.links.values() if link.master == bridge]


@dataclass
class _Raw:
    """A namespace's links before peers are named: (peer nsid or None, peer index)."""

    links: dict[int, Link]
    peers: dict[str, tuple[int | None, int]]
    ids: dict[int, str]  # nsid -> namespace name, for the namespaces of the set


def read(names: list[str]) -> dict[str, Space | None]:
    """Namespace -> its links (None: it does not exist)."""
    raw = netns.each(names, lambda name: _read_here(names))
    return {name: _named(name, r, raw) if r else None for name, r in raw.items()}


def _read_here(names: list[str]) -> _Raw:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0) as sock:
        links, peers = _links(sock)
        for a in dump(sock, IFADDR, RTM_GETADDR, ["IFA_LOCAL"], {"family": socket.AF_INET}):
            if a["index"] in links:
                links[a["index"]].addresses.append(
                    IPv4Interface(f"{a.get('IFA_LOCAL')}/{a['prefixlen']}"))
        ids = _nsids(sock, names) if any(nsid is not None for nsid, _ in peers.values()) else {}
    return _Raw(links, peers, ids)


def _links(sock: socket.socket) -> tuple[dict[int, Link], dict[str, tuple[int | None, int]]]:
    found = dump(sock, IFINFO, RTM_GETLINK, LINK_ATTRS,
                 attrs=[("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)])
    names = {link["index"]: link.get("IFLA_IFNAME") for link in found}
    links, peers = {}, {}
    for link in found:
        name, info = names[link["index"]], link.get("IFLA_LINKINFO", {})
        kind = info.get("IFLA_INFO_KIND") or ("loopback" if name == "lo" else "unknown")
        links[link["index"]] = Link(
            name, kind, mac=link.get("IFLA_ADDRESS"), mtu=link.get("IFLA_MTU"),
            up=bool(link["flags"] & IFF_UP), master=names.get(link.get("IFLA_MASTER") or 0),
            vxlan=vxlan_options(info.get("IFLA_INFO_DATA", {}), names) if kind == "vxlan" else {})
        if kind == "veth" and link.get("IFLA_LINK"):
            peers[name] = (link.get("IFLA_LINK_NETNSID"), link.get("IFLA_LINK"))
    return links, peers


def _nsids(sock: socket.socket, names: list[str]) -> dict[int, str]:
    """The id the calling thread's namespace gives each namespace of names that has one."""
    ids = {}
    for name in names:
        try:
            fd = os.open(netns.path(name), os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            request = nsidmsg()
            request["attrs"] = [("NETNSA_FD", fd)]
            nsid = get(sock, request, RTM_GETNSID).get_attr("NETNSA_NSID")
        except NetlinkError:
            continue
        finally:
            os.close(fd)
        if nsid is not None and nsid >= 0:  # -1: none assigned, so no link points there
            ids[nsid] = name
    return ids


def _named(name: str, raw: _Raw, everyone: dict[str, _Raw | None]) -> Space:
    """The namespace's links with each veth's peer named: (namespace, device)."""
    for link in raw.links.values():
        if link.name not in raw.peers:
            continue
        nsid, index = raw.peers[link.name]
        where = name if nsid is None else raw.ids.get(nsid)
        there = everyone.get(where) if where else None
        if there and index in there.links:
            link.peer = (where, there.links[index].name)
    return Space(name, {link.name: link for link in raw.links.values()})
