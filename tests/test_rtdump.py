"""rtdump's lean decoding against pyroute2's own, on the same dump bytes from a built
cluster's node: every attribute the audit reads, header fields, link kinds' data; and
rtlayout's layouts and rtdump's requests against pyroute2's (rtdump uses no pyroute2)."""

from __future__ import annotations

import socket
import struct

import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg  # the rules' layout: the audit alone reads them

from dataplane.cluster import live, netns, rtdump, rtlayout
from dataplane.cluster.rtmessages import ifaddrmsg, ifinfmsg, ndmsg, nfgen_msg, rtmsg
from dataplane.cluster.rtnl import (AF_BRIDGE, NLM_F_DUMP, NLM_F_REQUEST, RTM_GETADDR, RTM_GETLINK,
                                    RTM_GETNEIGH, RTM_GETROUTE, RTM_GETRULE, ask, replies, request)

KINDS = [(ifinfmsg, socket.AF_UNSPEC, RTM_GETLINK, live.LINK_ATTRS),
         (ifaddrmsg, socket.AF_INET, RTM_GETADDR, ("IFA_LOCAL",)),
         (rtmsg, socket.AF_INET, RTM_GETROUTE, live.ROUTE_ATTRS),
         (fibmsg, socket.AF_INET, RTM_GETRULE, live.RULE_ATTRS),
         (ndmsg, socket.AF_INET, RTM_GETNEIGH, live.NEIGHBOUR_ATTRS),
         (ndmsg, AF_BRIDGE, RTM_GETNEIGH, live.NEIGHBOUR_ATTRS)]
LAYOUTS = {ifinfmsg: rtlayout.IFINFO, ifaddrmsg: rtlayout.IFADDR, rtmsg: rtlayout.ROUTE,
           fibmsg: rtlayout.RULE, ndmsg: rtlayout.NEIGHBOUR, nfgen_msg: rtlayout.NFGEN}
DUMP = NLM_F_REQUEST | NLM_F_DUMP


def both_ways(message_class, family: int, kind: int, names) -> list[tuple[dict, object]]:
    """Each entry of one dump, decoded by rtdump and by pyroute2, in the calling thread's
    namespace (the same bytes: the dump is read once)."""
    found = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0) as sock:
        asked = message_class()
        asked["family"] = family
        ask(sock, asked, kind, DUMP)
        for data, offset, length in replies(sock, str(kind)):
            lean = rtdump.decode(data, offset, length, LAYOUTS[message_class], names)
            full = message_class(data[offset:offset + length])
            full.decode()
            found.append((lean, full))
    return found


def nested_as_pyroute2(nla) -> dict:
    return {name: value for name, value in nla["attrs"]} if nla else {}


@pytest.mark.needs_root
@pytest.mark.parametrize("message_class,family,kind,names", KINDS,
                         ids=["links", "addresses", "routes", "rules", "neighbours", "fdb"])
def test_lean_decoding_matches_pyroute2(dataplane_clusters, message_class, family, kind, names):
    plan = dataplane_clusters().plan
    entries = netns.each([plan.nodes[0].netns],
                         lambda _: both_ways(message_class, family, kind, names))
    (decoded,) = entries.values()
    assert decoded, "the dump gave no entry"
    for lean, full in decoded:
        for field, _ in message_class.fields:
            if not field.startswith("__"):
                assert lean[field] == full[field], field
        for name in names:
            if name == "IFLA_LINKINFO":
                continue
            assert lean.get(name) == full.get_attr(name), name
    if message_class is ifinfmsg:
        links_info(decoded)


def links_info(decoded: list) -> None:
    """IFLA_LINKINFO: the kinds, and each value of their data that is read."""
    kinds = set()
    for lean, full in decoded:
        info, theirs = lean.get("IFLA_LINKINFO", {}), full.get_attr("IFLA_LINKINFO")
        assert bool(info) == (theirs is not None)
        if not info:
            continue
        kinds.add(info.get("IFLA_INFO_KIND"))
        for name in ("IFLA_INFO_KIND", "IFLA_INFO_SLAVE_KIND"):
            assert info.get(name) == theirs.get_attr(name)
        for name in ("IFLA_INFO_DATA", "IFLA_INFO_SLAVE_DATA"):
            ours, wanted = info.get(name, {}), nested_as_pyroute2(theirs.get_attr(name))
            read = {k: v for k, v in wanted.items() if k in live.LINK_ATTRS}
            assert ours == read, name
    assert {"bridge", "vxlan", "veth"} <= kinds  # a node's bridge, its ports, its VTEP


def test_every_attribute_read_is_in_a_layout():
    """A name the audit reads that no layout has would be read as absent, silently."""
    layouts = [rtlayout.IFINFO.attrs, rtlayout.LINK_INFO, *rtlayout.LINK_DATA.values(),
               *rtlayout.PORT_DATA.values(), rtlayout.IFADDR.attrs, rtlayout.ROUTE.attrs,
               rtlayout.RULE.attrs, rtlayout.NEIGHBOUR.attrs]
    known = {name for attrs in layouts for name, _ in attrs.values()}
    wanted = {*live.LINK_ATTRS, *live.ROUTE_ATTRS, *live.RULE_ATTRS, *live.NEIGHBOUR_ATTRS,
              "IFA_LOCAL"}
    assert wanted - known == set()


def numbered(nla_class) -> dict[int, tuple[str, str]]:
    """pyroute2's attributes of a class: number -> (name, format)."""
    found = {}
    for number, entry in enumerate(nla_class.nla_map):
        number, name, form = entry if len(entry) == 3 else (number, *entry)
        found[number] = (name, form)
    return found


def test_layouts_are_pyroute2s():
    """Each header as pyroute2's class has it, each attribute under pyroute2's number and
    format, the link kinds' data included."""
    info = ifinfmsg.ifinfo
    for message_class, layout in LAYOUTS.items():
        assert layout.header == tuple(message_class.fields), layout.name
        assert layout.name == message_class.__name__
    pairs = [(ours.attrs, theirs) for theirs, ours in LAYOUTS.items()]
    pairs += [(rtlayout.LINK_INFO, info), (rtlayout.PORT_DATA["bridge"], info.bridge_slave_data)]
    pairs += [(attrs, info.data_map[kind]) for kind, attrs in rtlayout.LINK_DATA.items()]
    for ours, theirs in pairs:
        known = numbered(theirs)
        for number, entry in ours.items():
            assert known.get(number) == entry, (theirs.__name__, number, entry)


@pytest.mark.parametrize("layout,kind,fields,attrs,theirs", [
    (rtlayout.IFINFO, RTM_GETLINK, {}, [("IFLA_EXT_MASK", 8)], [("IFLA_EXT_MASK", 8)]),
    (rtlayout.IFINFO, RTM_GETLINK, {}, [("IFLA_LINKINFO", [("IFLA_INFO_KIND", "bridge")])],
     [("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})]),
    (rtlayout.IFADDR, RTM_GETADDR, {"family": socket.AF_INET}, [], []),
    (rtlayout.ROUTE, RTM_GETROUTE, {"family": socket.AF_INET, "table": 254}, [], []),
    (rtlayout.RULE, RTM_GETRULE, {"family": socket.AF_INET}, [], []),
    (rtlayout.NEIGHBOUR, RTM_GETNEIGH, {"family": AF_BRIDGE}, [], []),
    (rtlayout.NFGEN, live.NFT_GET_TABLES, {"res_id": 0x1234}, [], []),
], ids=["links", "bridges", "addresses", "routes", "rules", "fdb", "nftables"])
def test_requests_are_encoded_as_pyroute2_encodes_them(layout, kind, fields, attrs, theirs):
    message_class = next(c for c, found in LAYOUTS.items() if found is layout)
    msg = message_class()
    for name, value in fields.items():
        msg[name] = value
    if theirs:
        msg["attrs"] = theirs
    request(msg, kind, DUMP)["header"]["sequence_number"] = 1
    msg.encode()
    assert rtdump.request(layout, kind, DUMP, fields, attrs) == bytes(msg.data)


def test_a_payload_too_short_for_its_format_is_left_out():
    """As a zero-length pad the kernel puts before a 64-bit value on some machines."""
    known = {1: ("A", rtdump.DECODERS["uint64"]), 2: ("B", rtdump.DECODERS["uint32"])}
    data = struct.pack("=HH", 4, 1) + struct.pack("=HHI", 8, 2, 7)
    assert rtdump.attributes(data, 0, len(data), known) == {"B": 7}


def test_a_header_field_in_network_byte_order_is_read_so():
    """nfgen_msg's res_id ("!H"), beside fields in the host's order."""
    body = struct.pack("=BB", 2, 0) + struct.pack("!H", 0x1234)
    message = struct.pack("=IHHII", 16 + len(body), 0, 0, 1, 0) + body
    entry = rtdump.decode(message, 0, len(message), rtlayout.NFGEN)
    assert entry == {"nfgen_family": 2, "version": 0, "res_id": 0x1234}
