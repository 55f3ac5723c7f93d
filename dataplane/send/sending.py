"""`dataplane send`: any packet a user crafts with scapy (traffic/craft.py), sent from a pod's
eth0 and followed hop by hop by the probes `trace` uses (send/follow.py tells its packets
apart), to an outcome (send/outcome.py).

A packet given from the IP layer down is framed as the pod's kernel would frame it
(traffic/nexthop.py: its route, then its neighbour table, resolving the next hop if it must); a
packet given from Ethernet is sent as it is, with an unset destination MAC filled the
same way (broadcast when it carries no IPv4). Frames leave from a packet socket on the
pod's eth0. The pod's live state is used as it is: unlike `verify`, a send resets no
cache, so a neighbour it must resolve shows in the hops.

After sending, hops are gathered until the outcome is known and nothing new came for
QUIET_SECONDS, or until the deadline (the kernel gives up on a next hop that never
answers only after its ARP retries, and its drop comes then).
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from dataplane.bpf.tracer import Tracer
from dataplane.bpf.trails import without_backlog
from dataplane.cluster import netns
from dataplane.cluster.plan import POD_IFNAME, Plan, PodPlan
from dataplane.names import Expectation
from dataplane.records import Hop
from dataplane.report.hoptable import hop_dict, hop_table
from dataplane.send.follow import LegName, Matcher, Sent
from dataplane.send.outcome import LOST, Drop, Outcome, Place, judge
from dataplane.traffic import nexthop

WAIT_SECONDS = 5.0
QUIET_SECONDS = 0.3
POLL_MS = 50


@dataclass
class SendResult:
    src: PodPlan
    sent: list[Sent]
    count: int
    hops: list[Hop]
    legs: dict[Hop, LegName]
    judged: Outcome
    in_kernel: bool  # matched by the probes' filter, or by recording every packet
    lost_events: int
    backends: list[str]

    @property
    def outcome(self) -> str:
        return self.judged.outcome

    @property
    def delivered_to(self) -> list[Place]:
        return self.judged.delivered_to

    @property
    def answers(self) -> list:
        """The answers as scapy packets (their first bytes, as the probes captured them)."""
        return [dissect(h) for h in self.judged.answers]

    @property
    def dropped(self) -> bool:
        return self.outcome == "dropped"

    @property
    def drop_reason(self) -> str | None:
        return self.judged.drops[0].reason if self.judged.drops else None

    def matches(self, expect: Expectation) -> bool:
        """The outcome is expect, and no event was lost (a lost one could change it)."""
        return self.lost_events == 0 and self.judged.matches(expect)


def dissect(hop: Hop):
    from scapy.layers.l2 import Ether

    return Ether(hop.raw)


def run(plan: Plan, src_ref: str, packets: list, count: int = 1,
        wait: float = WAIT_SECONDS) -> SendResult:
    """Send packets (traffic/craft.py made them) count times from pod src_ref and follow them."""
    src = plan.pod(src_ref)
    matcher = Matcher()
    with Tracer(plan, record_all=False) as tracer:
        refused = []
        for p in packets:
            framed, why = _frame(src, p, lambda ip: matcher.resolve(str(src.ip), ip, tracer))
            if framed is None:
                refused.append(Drop(src.ref, POD_IFNAME, f"not sent: {why}"))
            else:
                matcher.sent.append(Sent.of(bytes(framed), framed.summary()))
        in_kernel = matcher.watch(tracer)
        tracer.record_everything(not in_kernel)
        refused += _transmit(src, [s.raw for s in matcher.sent], count)
        hops, legs = _collect(tracer, matcher, wait,
                              lambda hops, legs: judge(plan, matcher.sent, count, hops, legs,
                                                       refused))
        return SendResult(src, matcher.sent, count, hops, legs,
                          judge(plan, matcher.sent, count, hops, legs, refused), in_kernel,
                          tracer.lost, tracer.loaded.backends)


def _frame(src: PodPlan, packet, resolving) -> tuple[Any, str | None]:
    """The frame packet leaves src as, or None and why src's kernel would not send it."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    if isinstance(packet, Ether) and "dst" in packet.fields:
        return packet, None
    ip = packet.getlayer(IP)
    hop = nexthop.next_hop(src, ip.dst, resolving) if ip is not None \
        else nexthop.NextHop("", nexthop.BROADCAST)
    if hop.mac is None:
        return None, hop.why
    framed = packet.copy() if isinstance(packet, Ether) else Ether(src=src.mac) / packet
    framed.dst = hop.mac
    return framed, None


def _transmit(src: PodPlan, frames: list[bytes], count: int) -> list[Drop]:
    """Send each frame count times; what the kernel refuses is a drop at the pod. The
    socket's protocol is 0: it receives nothing (a queue of copies would be freed as
    drops), and each frame names its own ethertype."""
    refused = []
    with netns.socket_in(src.netns, socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        for _ in range(count):
            for frame in frames:
                try:
                    sock.sendto(frame, (POD_IFNAME, int.from_bytes(frame[12:14], "big")))
                except OSError as err:
                    refused.append(Drop(src.ref, POD_IFNAME, f"not sent: {err.strerror}"))
    return refused


def _collect(tracer: Tracer, matcher: Matcher, wait: float,
             judging) -> tuple[list[Hop], dict[Hop, str]]:
    """The send's hops and their legs, gathered until its outcome is known and the
    probes are quiet, or until wait seconds have passed."""
    hops: list[Hop] = []
    legs: dict[Hop, LegName] = {}
    start = last = time.monotonic()
    while True:
        for hop in tracer.take(POLL_MS):
            leg = matcher.leg(hop)
            if leg:
                hops.append(hop)
                legs[hop] = leg
                last = time.monotonic()
        now = time.monotonic()
        quiet = now - last >= QUIET_SECONDS
        if now - start >= wait or (quiet and judging(hops, legs).outcome != LOST):
            kept = without_backlog(hops)
            return kept, {h: legs[h] for h in kept}


def _answer_line(hop: Hop) -> str:
    return f"answer: {dissect(hop).summary()}  (received by {hop.at} {hop.device})"


def _fragment_lines(result: SendResult) -> list[str]:
    lines = []
    for f in result.judged.fragments:
        where = ", ".join(f"{place}: {n}" for place, n in f.received.items()) or "none"
        line = f"fragments: ip id {f.ip_id}: {f.sent} sent, {f.length} bytes in all; " \
               f"received by {where}"
        if f.reassembled:
            line += f"; reassembled: seen whole at {', '.join(f.reassembled)}"
        lines.append(line)
    return lines


def _outcome_lines(result: SendResult) -> list[str]:
    o = result.judged
    lines = [f"outcome: {o.outcome}"]
    if o.delivered_to:
        lines.append("delivered to: " + ", ".join(str(p) for p in o.delivered_to))
    lines += [_answer_line(h) for h in o.answers]
    reached = {place.at for place in o.delivered_to}
    lines += [f"dropped at {d.at} {d.device}{' (delivered there)' if d.at in reached else ''}: "
              f"{d.reason}" for d in o.drops]
    lines += _fragment_lines(result)
    if o.outcome == LOST:
        seen = o.last_seen
        lines.append(f"lost: last seen at {seen.at} {seen.device} {seen.dir}" if seen
                     else "lost: never seen")
    return lines


def as_text(result: SendResult) -> str:
    src = result.src
    times = f" x {result.count}" if result.count > 1 else ""
    matched = "in the kernel" if result.in_kernel else "by recording every packet"
    head = (f"send from {src.ref} ({src.ip}): {len(result.sent)} frame(s){times}; "
            f"{result.outcome}; {len(result.hops)} hops; matched {matched}; backends "
            f"{', '.join(result.backends)}; lost events {result.lost_events}")
    return "\n".join([head] + [f"  sent: {s.summary}" for s in result.sent]
                     + hop_table(result.hops, leg=result.legs.get) + _outcome_lines(result))


def as_dict(result: SendResult) -> dict[str, Any]:
    """`trace --json`'s keys, and the outcome's."""
    o = result.judged
    first = result.sent[0].frame if result.sent else None
    return {"src": result.src.ref, "dst": first.dst if first else None,
            "proto": first.proto if first else None,
            "packets": [s.summary for s in result.sent], "count": result.count,
            "answered": o.outcome == "answered",
            "hops": [{**hop_dict(h), "packet": result.legs[h]} for h in result.hops],
            "lost_events": result.lost_events, "backends": result.backends,
            "matched": "kernel" if result.in_kernel else "all",
            "outcome": o.outcome,
            "delivered_to": [asdict(p) for p in o.delivered_to],
            "answers": [_answer_dict(h) for h in o.answers],
            "drops": [asdict(d) for d in o.drops],
            "fragments": [asdict(f) for f in o.fragments]}


def _answer_dict(hop: Hop) -> dict[str, Any]:
    f = hop.flow
    return {"at": hop.at, "device": hop.device, "src": f.src, "dst": f.dst, "proto": f.proto,
            "summary": dissect(hop).summary()}
