"""How the packets of one send are told apart from every other packet, in the kernel
and afterwards.

traffic/craft.py filled what the user left unset with the send's tag (IP id, source port, ICMP
echo id); whatever the user fixed stays, and the packet is recognised by what it
carries. Each frame, as it leaves the pod, is decoded (VLAN tags too) and:
- ARP is watched by its sender and target addresses (proto 0, tag 0), both ways;
- option-less IPv4 ICMP/UDP/TCP by its addresses and tag (bytes 4-5 of ICMP, the
  UDP/TCP source port), both ways: its answers, and ICMP errors quoting it, are
  recorded too;
- a fragment also by its addresses and IP id (a key of its own in the same map): past
  the first, a fragment carries no ports;
- anything the in-kernel filter cannot tell (a VLAN tag, IP options, another protocol
  or ethertype): every packet in the cluster's namespaces is recorded for the short
  time of the send, and kept afterwards when it is one of ours by the same identities,
  or, for a frame with neither IPv4 nor ARP inside, by its first bytes after the
  Ethernet header.

Each hop kept gets a leg: `sent` (a sent packet: the same addresses, protocol and IP id,
or ARP operation), `answer` (a packet of its flow heading back to its source: a reply,
a RST, an ICMP error), `flow` (another packet of the flow, e.g. the sender's kernel
resetting an unexpected SYN-ACK), `resolve` (the pod resolving its next hop first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from dataplane.bpf import packet
from dataplane.bpf.tracer import Tracer
from dataplane.names import IP_PROTOCOLS
from dataplane.records import Flow, Frame, Hop, frame_keys

LegName = Literal["sent", "answer", "flow", "resolve"]  # what a kept hop is to the send
SENT, ANSWER, FLOW, RESOLVE = get_args(LegName)
SIGNATURE = 40  # bytes after the Ethernet header that name a frame of no known protocol


def untagged(raw: bytes) -> bytes:
    """The frame without its VLAN tags, as a bridge hands it on (the tag out of band)."""
    while int.from_bytes(raw[12:14], "big") in packet.VLAN_TYPES:
        raw = raw[:12] + raw[16:]
    return raw


@dataclass(frozen=True)
class Sent:
    """A frame as it left the pod, and what identifies it at every hop."""

    raw: bytes
    summary: str  # scapy's one line
    frame: Frame

    @classmethod
    def of(cls, raw: bytes, summary: str) -> "Sent":
        return cls(raw, summary, packet.decode(raw))

    @property
    def known(self) -> bool:
        """IPv4 or ARP inside: identified by its headers, not by its bytes."""
        return self.frame.src is not None

    @property
    def ip_protocol(self) -> int:
        return untagged(self.raw)[23]

    @property
    def header_length(self) -> int:
        return (untagged(self.raw)[14] & 0x0F) * 4

    @property
    def in_kernel(self) -> bool:
        """Whether the probes' filter recognises it as it is (see the module's docstring)."""
        f, raw = self.frame, self.raw
        if raw[12:14] != b"\x08\x00":
            return f.proto == "arp" and raw[12:14] == b"\x08\x06"
        return raw[14] == 0x45 and (f.fragment or f.proto in IP_PROTOCOLS)

    def watch(self, tracer: Tracer) -> None:
        f = self.frame
        if f.proto == "arp":
            tracer.watch(Flow(f.src, f.dst, "arp", 0))
            return
        if f.fragment:
            tracer.watch_fragments(f.src, f.dst, self.ip_protocol, f.ip_id)
        tag = f.icmp_id if f.proto == "icmp" else f.sport
        if tag is not None and f.proto in IP_PROTOCOLS:
            tracer.watch(Flow(f.src, f.dst, f.proto, tag))

    @property
    def signature(self) -> bytes:
        """The first bytes after its Ethernet header and tags (the header, if nothing
        follows): in a hop's capture whether the tag is in band or not."""
        frame = untagged(self.raw)
        return frame[14:14 + SIGNATURE] or frame[:14]

    def seen_in(self, hop: Hop) -> bool:
        """Whether hop shows this frame (routed, bridged, encapsulated or not)."""
        if not self.known:
            return self.signature in hop.raw
        f, mine = hop.flow, self.frame
        if f is None:
            return False
        if mine.proto == "arp":
            return (f.proto, f.src, f.dst, f.arp_op) == ("arp", mine.src, mine.dst, mine.arp_op)
        return (f.src, f.dst, f.proto, f.ip_id) == (mine.src, mine.dst, mine.proto, mine.ip_id)


@dataclass
class Matcher:
    """The legs of a send's hops; None for a hop of someone else's."""

    sent: list[Sent] = field(default_factory=list)
    resolving: set[tuple] = field(default_factory=set)  # ARP keys of next-hop resolution

    def resolve(self, src: str, ip: str, tracer: Tracer) -> None:
        """Watch the ARP exchange of src resolving its next hop ip."""
        self.resolving.add((src, ip, "arp", 0))
        tracer.watch(Flow(src, ip, "arp", 0))

    def watch(self, tracer: Tracer) -> bool:
        """Watch every sent frame; False when some can only be found by recording all."""
        for s in self.sent:
            if s.in_kernel:
                s.watch(tracer)
        return all(s.in_kernel for s in self.sent)

    def leg(self, hop: Hop) -> LegName | None:
        if any(s.seen_in(hop) for s in self.sent):
            return SENT
        f = hop.flow
        if f is None or f.src is None:
            return None
        keys = set(frame_keys(f))
        known = [s.frame for s in self.sent if s.known]
        if any(key in keys for frame in known for key in frame_keys(frame)):
            return ANSWER if any(f.dst == frame.src for frame in known) else FLOW
        return RESOLVE if keys & self.resolving else None
