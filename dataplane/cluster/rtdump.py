"""Netlink dumps decoded lean, for the audit, which reads every namespace of a cluster at
each verify. pyroute2's message classes say the layout (header fields, attribute numbers
and formats) and encode the requests; each entry of a reply is decoded here into a plain
dict of its header fields and of the attributes asked for, by name. pyroute2 decodes every
attribute of every entry into objects: that was most of the audit's time.

Formats decoded as pyroute2 does: numbers, strings, IP and link-layer addresses, a link's
oper state; IFLA_LINKINFO's data by the link's kind (and its port's, for a bridge port).
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Callable, Collection
from functools import lru_cache, partial
from ipaddress import IPv4Address
from typing import Any

from dataplane.cluster.rtnl import (HEADER, NLM_F_DUMP, NLM_F_REQUEST, RTM_GETNEIGH,
                                    DumpInterrupted, ask, replies)

Decoder = Callable[[bytes], Any]  # None: a payload too short for its format (not kept)
Table = dict[int, tuple[str, Decoder]]  # attribute number -> (name, decoder)
_NLA = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
OPER_STATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
SLAVE_DATA = {"bridge": "bridge_slave_data"}  # a port's IFLA_INFO_SLAVE_DATA class, by its kind
DUMP_ATTEMPTS = 5  # a table the kernel says changed while dumped: asked again


def _number(layout: str) -> Decoder:
    number = struct.Struct(layout)
    return lambda raw: number.unpack_from(raw)[0] if len(raw) >= number.size else None


def _address(raw: bytes) -> str | None:
    if len(raw) not in (4, 16):
        return None
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def _mac(raw: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in raw)


def _link_layer(raw: bytes) -> str:
    """A MAC, or an IPv4 or IPv6 address (a tunnel's), by its length."""
    return _address(raw) if len(raw) in (4, 16) else _mac(raw)


def _state(raw: bytes) -> str | None:
    if not raw:
        return None
    return OPER_STATES[raw[0]] if raw[0] < len(OPER_STATES) else str(raw[0])


DECODERS: dict[str, Decoder] = {
    "uint8": _number("=B"), "uint16": _number("=H"), "uint32": _number("=I"),
    "uint64": _number("=Q"), "int32": _number("=i"), "be16": _number(">H"),
    "be32": _number(">I"), "asciiz": lambda raw: raw.split(b"\0", 1)[0].decode(errors="replace"),
    "ipaddr": _address, "target": _address, "ip4addr": _address, "l2addr": _mac,
    "lladdr": _link_layer, "flag": lambda raw: True, "state": _state,
    "info_data": bytes, "info_slave_data": bytes,  # decoded by the link's kind: _link_info
}


def table(nla_class: Any, names: Collection[str]) -> Table:
    """The attributes of a pyroute2 class that are named, in a format decoded here (a link's
    IFLA_LINKINFO with the named attributes of its kinds' data)."""
    found: Table = {}
    for number, entry in enumerate(nla_class.nla_map):
        if len(entry) == 3:
            number, name, form = entry
        else:
            name, form = entry
        decoder = partial(_link_info, tuple(names)) if form == "ifinfo" else DECODERS.get(form)
        if decoder and name in names:
            found[number] = (name, decoder)
    return found


def attributes(data: bytes, start: int, end: int, known: Table,
               into: dict[str, Any] | None = None) -> dict[str, Any]:
    """The attributes of known between start and end, by name, added to into."""
    found: dict[str, Any] = {} if into is None else into
    while start + _NLA.size <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < _NLA.size:
            break
        entry = known.get(kind & NLA_TYPE_MASK)
        if entry:
            value = entry[1](data[start + _NLA.size:start + length])
            if value is not None:
                found[entry[0]] = value
        start += (length + 3) & ~3
    return found


@lru_cache(maxsize=None)
def _kind_table(holder: str, kind: str, names: tuple[str, ...]) -> Table:
    """The named attributes of a link kind's IFLA_INFO_DATA (holder "data") or of a port
    kind's IFLA_INFO_SLAVE_DATA (holder "slave"); none for a kind pyroute2 does not know."""
    from dataplane.cluster.rtmessages import ifinfmsg  # here: see neighbours()

    info = ifinfmsg.ifinfo
    nla_class = info.data_map.get(kind) if holder == "data" else \
        getattr(info, SLAVE_DATA.get(kind, ""), None)
    return table(nla_class, names) if nla_class is not None else {}


def _link_info(names: tuple[str, ...], raw: bytes) -> dict[str, Any]:
    """IFLA_LINKINFO: the kinds, and the data of each decoded by its kind's attributes."""
    from dataplane.cluster.rtmessages import ifinfmsg  # here: see neighbours()

    found = attributes(raw, 0, len(raw), _table(ifinfmsg.ifinfo, names))
    kind, port = found.get("IFLA_INFO_KIND"), found.get("IFLA_INFO_SLAVE_KIND")
    for name, holder, by in (("IFLA_INFO_DATA", "data", kind),
                             ("IFLA_INFO_SLAVE_DATA", "slave", port or kind)):
        if name in found:
            data = found[name]
            found[name] = attributes(data, 0, len(data), _kind_table(holder, by or "", names))
    return found


@lru_cache(maxsize=None)
def _header(message_class: Any) -> tuple[struct.Struct, tuple[str, ...],
                                        tuple[tuple[int, int], ...]]:
    """The struct of a message class's fixed header (in host byte order), its fields'
    names (not padding), and (position, size) of those in network byte order ("!H")."""
    forms, names, swapped = [], [], []
    for name, form in message_class.fields:
        forms.append(form.lstrip("!>"))
        if not form.endswith("x"):
            if form[0] in "!>":
                swapped.append((len(names), struct.calcsize("=" + forms[-1])))
            names.append(name)
    return struct.Struct("=" + "".join(forms)), tuple(names), tuple(swapped)


def dump(sock: socket.socket, request: Any, kind: int, names: Collection[str] = ()) -> list[dict]:
    """Every entry a dump request of kind (a pyroute2 message: its fields and attributes
    filter the dump where the kernel allows) gets, decoded (decode()); asked again if the
    table changed while it was dumped."""
    attempts = 1
    while True:
        ask(sock, request, kind, NLM_F_REQUEST | NLM_F_DUMP)
        try:
            return [decode(data, offset, length, type(request), names)
                    for data, offset, length in replies(sock, type(request).__name__)]
        except DumpInterrupted:
            if attempts == DUMP_ATTEMPTS:
                raise
            attempts += 1


def decode(data: bytes, offset: int, length: int, message_class: Any,
           names: Collection[str] = ()) -> dict[str, Any]:
    """The message at offset: its header fields and the attributes named, by name."""
    header, fields, swapped = _header(message_class)
    body = offset + HEADER.size
    values = list(header.unpack_from(data, body))
    for k, size in swapped:
        values[k] = int.from_bytes(values[k].to_bytes(size, sys.byteorder), "big")
    return attributes(data, body + ((header.size + 3) & ~3), offset + length,
                      _table(message_class, tuple(names)), dict(zip(fields, values)))


@lru_cache(maxsize=None)
def _table(message_class: Any, names: tuple[str, ...]) -> Table:
    return table(message_class, names)


def neighbours(sock: socket.socket) -> list[tuple[int, int, IPv4Address]]:
    """(ifindex, state, address) of every IPv4 neighbour entry."""
    # pyroute2's classes are imported where a dump needs them, not with this module: a
    # verify run's own process (forking its workers) needs none unless its waves must
    # make room in the ARP table
    from dataplane.cluster.rtmessages import ndmsg

    request = ndmsg()
    request["family"] = socket.AF_INET
    return [(n["ifindex"], n["state"], IPv4Address(n["NDA_DST"]))
            for n in dump(sock, request, RTM_GETNEIGH, ["NDA_DST"])
            if n["family"] == socket.AF_INET and "NDA_DST" in n]
