"""rtnetlink requests as pyroute2's message classes make them.

Importing this imports pyroute2's classes, tens of milliseconds: rtnl.py imports it only
when a request has to be encoded by pyroute2 (a shape with no stored template, or a
request that is never templated), and the gets whose replies pyroute2 decodes (the
next-hop lookup of `send`, the discovery's namespace ids) import the classes from here.
Dumps need none of it (rtdump.py, rtlayout.py).

Each maker returns a message with its header's type and flags set, not yet encoded.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from ipaddress import IPv4Address

from dataplane.cluster.rtnl import (AF_BRIDGE, IFF_UP, IPCTNL_MSG_CT_DELETE, NEW, NLM_F_ACK,
                                    NLM_F_CREATE, NLM_F_REQUEST, NTF_SELF, NTF_USE,
                                    NUD_PERMANENT, RT_TABLE_MAIN, RTM_DELLINK, RTM_DELROUTE,
                                    RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE,
                                    RTM_SETLINK, RTN_UNICAST, RTNH_F_ONLINK, RTPROT_BOOT, request)


def _load_message_classes():
    """Import pyroute2's rtnetlink message classes without pyroute2/__init__.py,
    which imports every subsystem it has (ndb, ipdb, conntrack, ...: several times
    the cost of these). The package is left unregistered again,
    so a later `import pyroute2` still runs it in full."""
    hollow = "pyroute2" not in sys.modules
    if hollow:
        found = importlib.util.find_spec("pyroute2")
        if found is None:
            raise ModuleNotFoundError("No module named 'pyroute2'", name="pyroute2")
        sys.modules["pyroute2"] = importlib.util.module_from_spec(found)
    try:
        from pyroute2.netlink import nlmsgerr
        from pyroute2.netlink.nfnetlink import nfgen_msg
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        from pyroute2.netlink.rtnl.ndmsg import ndmsg
        from pyroute2.netlink.rtnl.nsidmsg import nsidmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg
    finally:
        if hollow:
            del sys.modules["pyroute2"]
    return nlmsgerr, nfgen_msg, ifaddrmsg, ifinfmsg, ndmsg, nsidmsg, rtmsg


nlmsgerr, nfgen_msg, ifaddrmsg, ifinfmsg, ndmsg, nsidmsg, rtmsg = _load_message_classes()


def error_text(raw: bytes) -> str | None:
    """The kernel's own words (extended ack) in an NLMSG_ERROR message, if it gave any."""
    msg = nlmsgerr(raw)
    msg.decode()
    return msg.get_attr("NLMSGERR_ATTR_MSG")


# Templated shapes (rtnl.Batch._add_shaped): the values a template copies come last, as
# u32s, IPv4 addresses, MACs or names.

def _link(index: int, ifname: str, kind: str, mtu: int, address: str | None = None,
          master: int | None = None, data: list | None = None):
    """An ifinfmsg creating a link, up, with a fixed index; data is the IFLA_INFO_DATA of
    its kind."""
    info: list = [("IFLA_INFO_KIND", kind)]
    if data:
        info.append(("IFLA_INFO_DATA", {"attrs": data}))
    attrs = [("IFLA_IFNAME", ifname), ("IFLA_MTU", mtu), ("IFLA_LINKINFO", {"attrs": info})]
    if address:
        attrs.append(("IFLA_ADDRESS", address))
    if master:
        attrs.append(("IFLA_MASTER", master))
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["change"], msg["attrs"] = index, IFF_UP, IFF_UP, attrs
    return request(msg, RTM_NEWLINK, NEW)


def bridge(index: int, ifname: str, mtu: int, address: str | None = None):
    return _link(index, ifname, "bridge", mtu, address)


def vxlan(port: int, learning: int, index: int, ifname: str, mtu: int, address: str,
          vni: int, local: IPv4Address, link: int):
    """port and learning (narrower than a u32) are the shape, not values."""
    return _link(index, ifname, "vxlan", mtu, address, data=[
        ("IFLA_VXLAN_ID", vni), ("IFLA_VXLAN_LOCAL", str(local)), ("IFLA_VXLAN_LINK", link),
        ("IFLA_VXLAN_PORT", port), ("IFLA_VXLAN_LEARNING", learning)])


def veth(index: int, ifname: str, mtu: int, peer_index: int, peer_ifname: str,
         peer_address: str, peer_fd: int, master: int | None = None):
    peer = {"index": peer_index, "attrs": [
        ("IFLA_IFNAME", peer_ifname), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", peer_address),
        ("IFLA_NET_NS_FD", peer_fd)]}
    return _link(index, ifname, "veth", mtu, master=master, data=[("VETH_INFO_PEER", peer)])


def link_up(index: int):
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = index, IFF_UP, IFF_UP
    return request(msg, RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK)


def addr(prefixlen: int, index: int, address: IPv4Address):
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = socket.AF_INET, prefixlen, index
    msg["attrs"] = [("IFA_LOCAL", str(address)), ("IFA_ADDRESS", str(address))]
    return request(msg, RTM_NEWADDR, NEW)


def route(dst_len: int, onlink: bool, gateway: IPv4Address, oif: int,
          dst: IPv4Address | None = None):
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"] = socket.AF_INET, dst_len, RT_TABLE_MAIN
    msg["proto"], msg["type"] = RTPROT_BOOT, RTN_UNICAST  # as `ip route add` sets them
    msg["flags"] = RTNH_F_ONLINK if onlink else 0
    msg["attrs"] = [("RTA_GATEWAY", str(gateway)), ("RTA_OIF", oif)]
    if dst is not None:
        msg["attrs"].append(("RTA_DST", str(dst)))
    return request(msg, RTM_NEWROUTE, NEW)


def neigh(kind: int, flags: int, index: int, dst: IPv4Address):
    msg = ndmsg()
    msg["family"], msg["ifindex"] = socket.AF_INET, index
    msg["attrs"] = [("NDA_DST", str(dst))]
    return request(msg, kind, flags)


def permanent_neigh(index: int, dst: IPv4Address, lladdr: str):
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"] = socket.AF_INET, index, NUD_PERMANENT
    msg["attrs"] = [("NDA_DST", str(dst)), ("NDA_LLADDR", lladdr)]
    return request(msg, RTM_NEWNEIGH, NEW)


def fdb(kind: int, flags: int, index: int, lladdr: str, dst: IPv4Address):
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"] = AF_BRIDGE, index, NUD_PERMANENT
    msg["flags"] = NTF_SELF
    msg["attrs"] = [("NDA_LLADDR", lladdr), ("NDA_DST", str(dst))]
    return request(msg, kind, flags)


def bridge_fdb_flush(index: int):
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = [("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "bridge"),
        ("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_FDB_FLUSH", None)]})]})]
    return request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)


def conntrack_flush():
    msg = nfgen_msg()
    msg["nfgen_family"] = socket.AF_INET
    return request(msg, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK)


# Requests encoded by pyroute2 each time: made where something is repaired.

def link_set(ifname: str, master: int | None = None, mtu: int | None = None):
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", ifname)]
    if master is not None:
        msg["attrs"].append(("IFLA_MASTER", master))
    if mtu is not None:
        msg["attrs"].append(("IFLA_MTU", mtu))
    return request(msg, RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK)


def link_del(index: int):
    msg = ifinfmsg()
    msg["index"] = index
    return request(msg, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK)


def route_del(dst_len: int, oif: int, dst: IPv4Address | None):
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"] = socket.AF_INET, dst_len, RT_TABLE_MAIN
    msg["attrs"] = [("RTA_OIF", oif)]
    if dst is not None:
        msg["attrs"].append(("RTA_DST", str(dst)))
    return request(msg, RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK)


def neigh_use(index: int, dst: str):
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["flags"] = socket.AF_INET, index, NTF_USE
    msg["attrs"] = [("NDA_DST", dst)]
    return request(msg, RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
