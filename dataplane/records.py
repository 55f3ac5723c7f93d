"""The records the stages hand on (names.py has the names they use). Pure.

A decoded Frame, a Hop (one sighting of a packet by the probes), a Flow (what the
probes watch), an Exchange (one request and its answer between two pods), a FlowResult
(a flow's verdict), a Drift item (one difference between the plan and the kernel).
Nothing here touches a socket, a namespace or the kernel: any stage, the faces and the
tests may import it without loading the probes or opening a socket.

Drift: the audit produces drift items; the verifier ties each failing flow to the drift
on its expected path (its cause); `status` lists them. `at` uses the labels hops carry
(underlay, node-0, node-0/pod-1); `device` is None for what belongs to the whole
namespace (a sysctl, a firewall chain).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, AbstractSet, Any

from dataplane.names import (ARP_REPLY, ARP_REQUEST, ECHO, ECHO_REPLY, SERVICE_PORT, Direction,
                             Proto)

# Records made by the thousand: no per-instance dict (slots came with Python 3.10).
SLOTS: dict[str, bool] = {"slots": True} if sys.version_info >= (3, 10) else {}

if TYPE_CHECKING:  # for type checkers only: an Exchange is made between two planned pods
    from dataplane.cluster.plan import PodPlan


class Verdict(str, Enum):
    """A flow's verdict; written as its value (PASS) in text and JSON (StrEnum's behaviour,
    which came with Python 3.11)."""

    __str__ = str.__str__
    __format__ = str.__format__

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


PASS, FAIL, INCONCLUSIVE = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE


@dataclass(frozen=True)
class Drift:
    at: str
    device: str | None
    what: str  # e.g. "mtu", "vxlan local", "fdb 0e:fa:ac:1e:00:03 dst 172.30.0.3"
    expected: str
    found: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.at} {self.device}" if self.device else self.at
        return f"{where}: {self.what}: expected {self.expected}, found {self.found}"


# Not frozen, yet hashed by value: a frozen dataclass's __init__ sets each field through
# object.__setattr__, several times the cost, and a run decodes a frame per packet seen.
@dataclass(unsafe_hash=True, **SLOTS)
class Frame:
    """The headers of a captured frame, decoded (bpf/packet.py)."""

    eth_src: str
    eth_dst: str
    ethertype: int
    src: str | None = None  # IPv4 (or ARP sender/target) addresses
    dst: str | None = None
    proto: str | None = None  # icmp, udp, tcp, arp, or the IP protocol number
    ttl: int | None = None
    ip_len: int | None = None
    ip_id: int | None = None
    df: bool = False
    more_fragments: bool = False
    frag_offset: int = 0  # bytes; a fragment past the first carries no L4 header
    sport: int | None = None
    dport: int | None = None
    udp_checksum: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    icmp_mtu: int | None = None  # next-hop MTU of a fragmentation-needed message
    tcp_flags: int | None = None
    arp_op: int | None = None  # 1 request, 2 reply
    arp_sender_mac: str | None = None
    vni: int | None = None
    inner: "Frame | None" = None  # the frame a VXLAN packet carries
    quoted: "Frame | None" = None  # the packet an ICMP error quotes (IP header + 8 bytes)
    vlans: tuple[int, ...] = ()  # the VLAN ids of the tags the frame carries in band

    @property
    def fragment(self) -> bool:
        """A piece of a fragmented IPv4 datagram (the first one included)."""
        return self.more_fragments or self.frag_offset > 0


# Not frozen, yet hashed by value, as Frame: a run makes one Hop per event.
@dataclass(unsafe_hash=True, **SLOTS)
class Hop:
    """One sighting of a packet by the probes (bpf/tracer.py)."""

    ts: int  # ns, monotonic
    skb: int
    netns: int
    at: str  # node-0, node-0/pod-1 or underlay
    ifindex: int
    device: str
    func: str
    dir: Direction
    length: int
    frame: Frame | None
    drop_reason: str | None = None
    learned: str | None = None  # FDB events: "MAC vlan N" learned on this device
    raw: bytes = b""  # the captured start of the frame, from its Ethernet header
    # Read many times per hop by a verdict's checks, so made once (__post_init__); not
    # what the probes saw. place: where the hop was, as paths.py names places; flow: the
    # pod-to-pod packet inside (the inner frame of an encapsulated hop).
    place: tuple[str, str, str] = field(init=False, repr=False, compare=False)
    flow: Frame | None = field(init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        """One line, as a hop table row reads (no raw bytes): what assertion output shows."""
        what = f" {self.drop_reason}" if self.drop_reason else ""
        frame = self.flow
        headers = f" {frame.src} > {frame.dst} {frame.proto}" if frame is not None else ""
        return f"Hop({self.at} {self.device} {self.dir} {self.func} len {self.length}" \
               f"{headers}{what})"

    def __post_init__(self) -> None:
        # A hop is not changed once made (replace() makes another, these made anew).
        self.place = (self.at, self.device, self.dir)
        self.flow = self.frame.inner \
            if self.frame is not None and self.frame.inner is not None else self.frame


@dataclass(frozen=True)
class Flow:
    """What identifies an exchange's packets, in the request's direction."""

    src: str
    dst: str
    proto: Proto
    tag: int  # ICMP echo id, or the client's UDP/TCP port


@dataclass(frozen=True)
class Exchange:
    """One request and its answer between two pods, and how to recognise them."""

    src: PodPlan
    dst: PodPlan
    proto: Proto
    tag: int
    answered: bool
    size: int | None = None  # IP length of a DF probe; None for an ordinary exchange
    refused_mtu: int | None = None  # the MTU the sender's kernel refused it with
    answer_mac: str | None = None  # an ARP probe's: who answered
    error: str | None = None  # what the kernel refused while preparing, sending or receiving
    # False: the kernel refused the request before it left the socket (no route, no
    # address, no buffer space); an error that came back later (a failed handshake) is
    # the network's answer, not a probe that could not be sent
    sent: bool = True
    port: int = SERVICE_PORT  # where the destination listened, for UDP and TCP

    @cached_property
    def target(self) -> str:
        """Who the request is for: the destination pod, but for ARP across nodes, the
        source pod's gateway (pods on other nodes are not on its link)."""
        if self.proto == "arp" and self.src.node != self.dst.node:
            return str(self.src.gateway)
        return self.dst.ip_str

    @cached_property
    def key(self) -> tuple[str, str, str, int]:
        """(client, server, protocol, the client's tag): one direction, so that another
        exchange between the same pods whose client port happens to be the same number
        is never taken for this one."""
        return self.src.ip_str, self.target, self.proto, self.tag

    @cached_property
    def end(self) -> tuple[str, str, int, int]:
        """The receiving end, the tag and the port it listened on: what a packet of this
        exchange keeps when NAT rewrote its other address (the source, as a masquerading
        node does)."""
        return self.target, self.proto, self.tag, self.port if self.proto in ("udp", "tcp") else 0

    def matches(self, frame: Frame | None) -> bool:
        """Whether a decoded pod-to-pod frame belongs to this exchange, either way, NATed
        or not."""
        return frame is not None and (self.key in frame_keys(frame)
                                      or self.end in frame_ends(frame))


def _tags(frame: Frame) -> tuple[str, tuple[int, ...]]:
    """The protocol and the tags a frame could carry (a port could be either end's)."""
    if frame.proto == "icmp" and frame.icmp_id is not None:
        return "icmp", (frame.icmp_id,)
    if frame.proto in ("udp", "tcp") and frame.sport is not None:
        return frame.proto, (frame.sport, frame.dport)
    if frame.proto == "arp":
        return "arp", (0,)
    return "", ()


def frame_keys(frame: Frame) -> tuple[tuple[str, str, str, int], ...]:
    """The exchange keys (client, server, protocol, tag) a frame could belong to: sent by
    the client from its tag, or answered to it; an echo, an ARP request or reply says
    which. An ICMP error belongs to the exchange of the packet it quotes."""
    if frame.quoted is not None:
        return frame_keys(frame.quoted)
    proto, tags = _tags(frame)
    forth, back = (frame.src, frame.dst), (frame.dst, frame.src)
    if proto == "icmp" and frame.icmp_type in (ECHO, ECHO_REPLY):
        return ((*(forth if frame.icmp_type == ECHO else back), proto, tags[0]),)
    if proto == "arp" and frame.arp_op in (ARP_REQUEST, ARP_REPLY):
        return ((*(forth if frame.arp_op == ARP_REQUEST else back), proto, 0),)
    if len(tags) == 2:  # from the client's port, or to it
        return (*forth, proto, tags[0]), (*back, proto, tags[1])
    return tuple((*ends, proto, tag) for ends in (forth, back) for tag in tags)


def frame_ends(frame: Frame, pods: AbstractSet[str] = frozenset()) -> \
        tuple[tuple[str, str, int, int], ...]:
    """The exchange ends (server address, protocol, client tag, server port) a frame could
    belong to, going to the server or coming back from it as frame_keys() tells them
    apart: a packet whose other address alone differs (NAT) is the exchange's, but not
    one from the server to a third party that happens to carry the same tag (another
    process's exchange), nor one whose other address is a pod's (pods: the cluster's pod
    addresses): that pod's own exchange, such as a handshake still retransmitted after
    its wave, from a client port this exchange's client picked too."""
    if frame.quoted is not None:
        return frame_ends(frame.quoted, pods)
    proto, tags = _tags(frame)
    if proto == "icmp" and frame.icmp_type in (ECHO, ECHO_REPLY):
        server, other = (frame.dst, frame.src) if frame.icmp_type == ECHO \
            else (frame.src, frame.dst)
        return () if other in pods else ((server, proto, tags[0], 0),)
    if len(tags) == 2:
        return tuple(end for end, other in (((frame.dst, proto, tags[0], tags[1]), frame.src),
                                             ((frame.src, proto, tags[1], tags[0]), frame.dst))
                     if other not in pods)
    return ()  # ARP is never NATed: its pair is its key


# A run keeps one per flow: no per-instance dict.
@dataclass(**SLOTS)
class FlowResult:
    """A flow's verdict, with what broke, where, and why (verify/verdict.py judges it)."""

    src: str
    dst: str
    proto: Proto
    verdict: Verdict
    rule: str | None = None  # what was broken, e.g. "path", "vxlan-vni"
    diagnosis: str = ""
    last_hop: dict[str, str] | None = None  # {"at", "device"}
    drop_reason: str | None = None
    hops: list[Hop] = field(default_factory=list)
    size: int | None = None  # a DF probe's IP length
    error: str | None = None  # what the kernel refused while probing
    cause: list[Drift] = field(default_factory=list)  # why it failed: drift or evidence

    @property
    def passed(self) -> bool:
        return self.verdict == PASS
