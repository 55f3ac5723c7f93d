"""Hops as a pcapng file: one interface per place a packet was seen (named like
node-0/flannel.1), one packet per hop, so Wireshark shows a packet at each hop.
Pure: hops in, bytes out. Format: the pcapng specification (IETF draft)."""

from __future__ import annotations

import struct
import time

from dataplane.records import Hop

LINKTYPE_ETHERNET = 1
OPT_COMMENT, IF_NAME, IF_TSRESOL = 1, 2, 9
TSRESOL_NS = 9  # timestamps in nanoseconds


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def interface_name(hop: Hop) -> str:
    return f"{hop.at}/{hop.device}"


class Writer:
    """A pcapng file made piece by piece: its header, then the blocks of more hops,
    declaring each interface the first time a hop is seen there. Timestamps are
    CLOCK_MONOTONIC (bpf_ktime_get_ns); clock_offset_ns turns them into wall-clock
    time (by default: the offset now)."""

    def __init__(self, clock_offset_ns: int | None = None):
        if clock_offset_ns is None:
            clock_offset_ns = time.time_ns() - time.monotonic_ns()
        self._offset = clock_offset_ns
        self._interfaces: dict[str, int] = {}

    @staticmethod
    def header() -> bytes:
        return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
                      + _option(OPT_COMMENT, b"dataplane hops") + _option(0, b""))

    def blocks(self, hops: list[Hop]) -> bytes:
        """The packets of hops in time order, whatever the order given."""
        blocks = []
        for hop in sorted(hops, key=lambda h: h.ts):
            if not hop.raw:
                continue  # an FDB learning event carries no packet
            name = interface_name(hop)
            if name not in self._interfaces:
                self._interfaces[name] = len(self._interfaces)
                blocks.append(_block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 262144)
                                     + _option(IF_NAME, name.encode())
                                     + _option(IF_TSRESOL, bytes([TSRESOL_NS]))
                                     + _option(0, b"")))
            stamp = hop.ts + self._offset
            note = f"{hop.dir} {hop.func}" + (f" {hop.drop_reason}" if hop.drop_reason else "")
            body = struct.pack("<IIIII", self._interfaces[name], stamp >> 32,
                               stamp & 0xFFFFFFFF, len(hop.raw), max(hop.length, len(hop.raw)))
            body += hop.raw + b"\0" * (-len(hop.raw) % 4)
            body += _option(OPT_COMMENT, note.encode()) + _option(0, b"")
            blocks.append(_block(6, body))
        return b"".join(blocks)


def write(hops: list[Hop], clock_offset_ns: int | None = None) -> bytes:
    """A whole file of hops."""
    writer = Writer(clock_offset_ns)
    return writer.header() + writer.blocks(hops)
