"""Netlink messages of one shape encoded by pyroute2 once, then copied with new values.

Building a cluster sends hundreds of messages that differ only in a few fixed-width
values (an index, an address, a MAC, a name of the same length). pyroute2's nested
encoder costs far more per message than copying bytes, so each shape is encoded once
with a placeholder per value, and later messages of that shape are the template's bytes
with their values written where the placeholders landed (a value may go in more than one
field). A shape whose placeholders cannot all be found, or whose copy differs from
pyroute2's own encoding of the first real values, is never templated: its messages are
encoded by pyroute2 each time. A Store keeps templates in a file for later runs, so that a
run whose shapes are all stored needs no pyroute2 at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Union

_U32 = struct.Struct("=I")
_SEQUENCE = 8  # offset of nlmsghdr's sequence number
HEADER_SIZE = 16  # struct nlmsghdr


class Mac(str):
    """A MAC address given as text, encoded as its six bytes."""


# an int is encoded as a native u32, an IPv4Address as its four bytes, a str (a name)
# as its bytes and a NUL, so a name's length is part of its message's shape
Value = Union[int, IPv4Address, Mac, str]


def _raw(value: Value) -> bytes:
    if isinstance(value, IPv4Address):
        return value.packed
    if isinstance(value, Mac):
        return bytes.fromhex(value.replace(":", ""))
    if isinstance(value, str):
        return value.encode() + b"\0"
    return _U32.pack(value)


def _placeholder(value: Value, k: int) -> Value:
    """A stand-in for the k-th value, unlikely to occur anywhere else in a message."""
    if isinstance(value, IPv4Address):
        return IPv4Address(f"198.51.100.{200 + k}")
    if isinstance(value, Mac):
        return Mac(f"02:fe:5a:fe:5a:{k:02x}")
    if isinstance(value, str):
        return chr(ord("A") + k) * len(value)
    return 0x5AFE0000 + k


@dataclass(frozen=True)
class Template:
    data: bytes
    offsets: tuple[tuple[int, ...], ...]  # where each value goes

    def fill(self, values: tuple[Value, ...], sequence: int) -> bytes:
        """ValueError if a value does not fit where the template puts it (a template that
        is not this shape's): a slice assignment would have grown the message instead."""
        out = bytearray(self.data)
        for offsets, value in zip(self.offsets, values):
            raw = _raw(value)
            for offset in offsets:
                out[offset:offset + len(raw)] = raw
        if len(out) != len(self.data):
            raise ValueError("a value does not fit its place in the template")
        _U32.pack_into(out, _SEQUENCE, sequence)
        return bytes(out)

    def sound(self) -> bool:
        """Whether it could be one of ours: a whole netlink message (its header's length
        is its own), every place inside it."""
        return len(self.data) >= HEADER_SIZE and _U32.unpack_from(self.data)[0] == len(self.data) \
            and all(isinstance(o, int) and 0 <= o < len(self.data)
                    for places in self.offsets for o in places)


def encode(make: Callable[..., Any], values: tuple[Value, ...], sequence: int) -> bytes:
    """The message make(*values) builds (a pyroute2 message, its header's type and flags
    set), encoded by pyroute2, with this sequence number."""
    msg = make(*values)
    msg["header"]["sequence_number"] = sequence
    msg.encode()
    return bytes(msg.data)


def template(make: Callable[..., Any], values: tuple[Value, ...]) -> Template | None:
    """make's messages as a Template, checked against pyroute2 on these values; None
    when they cannot be templated."""
    stand_ins = tuple(_placeholder(v, k) for k, v in enumerate(values))
    try:
        data = encode(make, stand_ins, 0)
        offsets = tuple(_places(data, _raw(stand_in)) for stand_in in stand_ins)
        if not all(offsets):
            return None
        found = Template(data, offsets)
        same = found.fill(values, 1) == encode(make, values, 1)
    except (struct.error, ValueError):  # a field narrower than a u32, or a value longer
        return None  # than its stand-in at the end: pyroute2 encodes these each time
    return found if same else None


def _places(data: bytes, raw: bytes) -> tuple[int, ...]:
    """Where raw occurs in data, not overlapping."""
    found, start = [], data.find(raw)
    while start >= 0:
        found.append(start)
        start = data.find(raw, start + len(raw))
    return tuple(found)


class Store:
    """Templates by key, kept in the file at path: read at the first get(), written again
    at each put(), with a checksum. The file's name should change with whatever made its
    templates (see rtnl.py). A file that cannot be read, fails its checksum or holds
    anything but sound templates is an empty store; one that cannot be written (not root,
    a read-only file system) keeps nothing."""

    def __init__(self, path: Path):
        self.path = path
        self._kept: dict[str, Template] | None = None

    def _templates(self) -> dict[str, Template]:
        if self._kept is None:
            try:
                self._kept = _loaded(json.loads(self.path.read_text()))
            except (OSError, ValueError, TypeError, AttributeError, KeyError):
                self._kept = {}
        return self._kept

    def get(self, key: str) -> Template | None:
        return self._templates().get(key)

    def put(self, key: str, found: Template) -> None:
        kept = self._templates()
        kept[key] = found
        templates = {k: [t.data.hex(), t.offsets] for k, t in kept.items()}
        text = json.dumps({"crc32": _checksum(templates), "templates": templates})
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            tmp.rename(self.path)  # atomic: another run reads all of it or none
        except OSError:
            with contextlib.suppress(OSError):  # a read-only file system refuses this too
                tmp.unlink(missing_ok=True)


def _checksum(templates: dict) -> int:
    """Against a file damaged on disk, not a signature: whoever may write it may run code."""
    return zlib.crc32(json.dumps(templates, sort_keys=True).encode())


def _loaded(kept: dict) -> dict[str, Template]:
    """The templates of a store's file; ValueError (or a TypeError, AttributeError or
    KeyError from a file of another shape) if it is damaged or holds one not sound."""
    if kept["crc32"] != _checksum(kept["templates"]):
        raise ValueError("checksum")
    found = {key: Template(bytes.fromhex(data), tuple(tuple(places) for places in offsets))
             for key, (data, offsets) in kept["templates"].items()}
    if not all(t.sound() for t in found.values()):
        raise ValueError("not a template")
    return found
