"""Netlink dumps asked for and decoded lean, for the audit, which reads every namespace of
a cluster at each verify, the reset before it and the discovery. rtlayout.py says each
message's layout (header fields, attribute numbers and formats); a request is encoded
here from it, and each entry of a reply decoded into a plain dict of its header fields and
of the attributes asked for, by name. No pyroute2: it decodes every attribute of every
entry into objects (that was most of the audit's time) and costs tens of milliseconds to
import.

Formats decoded as pyroute2 does: numbers, strings, IP and link-layer addresses, a link's
oper state; IFLA_LINKINFO's data by the link's kind (and its port's, for a bridge port).
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import lru_cache, partial
from ipaddress import IPv4Address
from typing import Any

from dataplane.cluster.rtlayout import (LINK_DATA, LINK_INFO, NEIGHBOUR, PORT_DATA, Attributes,
                                       Message)
from dataplane.cluster.rtnl import (HEADER, NLM_F_DUMP, NLM_F_REQUEST, RTM_GETNEIGH,
                                    DumpInterrupted, replies)

Decoder = Callable[[bytes], Any]  # None: a payload too short for its format (not kept)
Table = dict[int, tuple[str, Decoder]]  # attribute number -> (name, decoder)
_NLA = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
OPER_STATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
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


# pyroute2's names of number formats, as struct formats: decoded, and encoded in requests
NUMBERS = {"uint8": "=B", "uint16": "=H", "uint32": "=I", "uint64": "=Q", "int32": "=i",
           "be16": ">H", "be32": ">I"}
DECODERS: dict[str, Decoder] = {
    **{form: _number(layout) for form, layout in NUMBERS.items()},
    "asciiz": lambda raw: raw.split(b"\0", 1)[0].decode(errors="replace"),
    "ipaddr": _address, "target": _address, "ip4addr": _address, "l2addr": _mac,
    "lladdr": _link_layer, "flag": lambda raw: True, "state": _state,
    "info_data": bytes, "info_slave_data": bytes,  # decoded by the link's kind: _link_info
}


def table(attrs: Attributes, names: Collection[str]) -> Table:
    """The attributes of a layout that are named, in a format decoded here (a link's
    IFLA_LINKINFO with the named attributes of its kinds' data)."""
    found: Table = {}
    for number, (name, form) in attrs.items():
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
    kind's IFLA_INFO_SLAVE_DATA (holder "slave"); none for a kind not read here."""
    return table((LINK_DATA if holder == "data" else PORT_DATA).get(kind, {}), names)


def _link_info(names: tuple[str, ...], raw: bytes) -> dict[str, Any]:
    """IFLA_LINKINFO: the kinds, and the data of each decoded by its kind's attributes."""
    found = attributes(raw, 0, len(raw), _info_table(names))
    kind, port = found.get("IFLA_INFO_KIND"), found.get("IFLA_INFO_SLAVE_KIND")
    for name, holder, by in (("IFLA_INFO_DATA", "data", kind),
                             ("IFLA_INFO_SLAVE_DATA", "slave", port or kind)):
        if name in found:
            data = found[name]
            found[name] = attributes(data, 0, len(data), _kind_table(holder, by or "", names))
    return found


@lru_cache(maxsize=None)
def _info_table(names: tuple[str, ...]) -> Table:
    return table(LINK_INFO, names)


@lru_cache(maxsize=None)
def _header(message: Message) -> tuple[struct.Struct, tuple[str, ...],
                                       tuple[tuple[int, int], ...]]:
    """The struct of a message's fixed header (in host byte order), its fields' names
    (not padding), and (position, size) of those in network byte order ("!H")."""
    forms, names, swapped = [], [], []
    for name, form in message.header:
        forms.append(form.lstrip("!>"))
        if not form.endswith("x"):
            if form[0] in "!>":
                swapped.append((len(names), struct.calcsize("=" + forms[-1])))
            names.append(name)
    return struct.Struct("=" + "".join(forms)), tuple(names), tuple(swapped)


def _swap(value: int, size: int) -> int:
    """A number between network and host byte order."""
    return int.from_bytes(value.to_bytes(size, sys.byteorder), "big")


def request(message: Message, kind: int, flags: int, fields: Mapping[str, int] | None = None,
            attrs: Sequence[tuple[str, Any]] = ()) -> bytes:
    """A request of kind: message's header with fields (the rest zero), then attrs, each
    (name, value): a number (as the attribute's format), a name, or a nested list of
    IFLA_LINKINFO's."""
    header, names, swapped = _header(message)
    values = [(fields or {}).get(name, 0) for name in names]
    for k, size in swapped:
        values[k] = _swap(values[k], size)
    body = header.pack(*values).ljust((header.size + 3) & ~3, b"\0") + \
        _encoded(attrs, message.attrs)
    return HEADER.pack(HEADER.size + len(body), kind, flags, 1, 0) + body


def _encoded(attrs: Sequence[tuple[str, Any]], layout: Attributes) -> bytes:
    numbers = {name: (number, form) for number, (name, form) in layout.items()}
    out = b""
    for name, value in attrs:
        number, form = numbers[name]
        if form == "ifinfo":
            payload = _encoded(value, LINK_INFO)
        elif isinstance(value, str):
            payload = value.encode() + b"\0"
        else:
            payload = struct.pack(NUMBERS[form], value)
        size = _NLA.size + len(payload)
        out += _NLA.pack(size, number) + payload + b"\0" * (-size % 4)
    return out


def dump(sock: socket.socket, message: Message, kind: int, names: Collection[str] = (),
         fields: Mapping[str, int] | None = None,
         attrs: Sequence[tuple[str, Any]] = ()) -> list[dict]:
    """Every entry a dump request of kind gets (its fields and attributes filter the dump
    where the kernel allows; see request()), decoded (decode()); asked again if the table
    changed while it was dumped."""
    asked = request(message, kind, NLM_F_REQUEST | NLM_F_DUMP, fields, attrs)
    attempts = 1
    while True:
        sock.sendall(asked)
        try:
            return [decode(data, offset, length, message, names)
                    for data, offset, length in replies(sock, message.name)]
        except DumpInterrupted:
            if attempts == DUMP_ATTEMPTS:
                raise
            attempts += 1


def decode(data: bytes, offset: int, length: int, message: Message,
           names: Collection[str] = ()) -> dict[str, Any]:
    """The message at offset: its header fields and the attributes named, by name."""
    header, fields, swapped = _header(message)
    body = offset + HEADER.size
    values = list(header.unpack_from(data, body))
    for k, size in swapped:
        values[k] = _swap(values[k], size)
    return attributes(data, body + ((header.size + 3) & ~3), offset + length,
                      _table(message, tuple(names)), dict(zip(fields, values)))


@lru_cache(maxsize=None)
def _table(message: Message, names: tuple[str, ...]) -> Table:
    return table(message.attrs, names)


def neighbours(sock: socket.socket) -> list[tuple[int, int, IPv4Address]]:
    """(ifindex, state, address) of every IPv4 neighbour entry."""
    return [(n["ifindex"], n["state"], IPv4Address(n["NDA_DST"]))
            for n in dump(sock, NEIGHBOUR, RTM_GETNEIGH, ["NDA_DST"],
                          {"family": socket.AF_INET})
            if n["family"] == socket.AF_INET and "NDA_DST" in n]
