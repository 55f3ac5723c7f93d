"""What became of a send's packets, judged from their hops and legs (send/follow.py):

- answered: an answer from a destination (the IPv4 destination, the ARP target) was
  received by a pod: a reply, a RST, an ICMP error the destination itself sent;
- dropped: a sent packet was dropped (where, and the kernel's reason), or never left the
  pod (no route, no next hop); an ICMP error from a node on the way is listed with the
  answers, but it is a drop's echo, not the destination's answer;
- delivered: a sent packet was received by a pod, or by a node it was addressed to (one
  of its addresses, or a broadcast or multicast MAC);
- lost: none of these by the deadline (the last place a sent packet was seen is named).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from dataplane.cluster.plan import Plan
from dataplane.names import EXPECTABLE, Expectation
from dataplane.records import Hop
from dataplane.send.follow import ANSWER, SENT, LegName, Sent

OutcomeName = Literal[Expectation, "lost"]
DELIVERED, ANSWERED, DROPPED = EXPECTABLE
LOST: OutcomeName = "lost"


@dataclass(frozen=True)
class Place:
    at: str  # node-0, node-1/pod-1
    device: str

    def __str__(self) -> str:
        return f"{self.at} {self.device}"


@dataclass(frozen=True)
class Drop:
    at: str
    device: str
    reason: str  # the kernel's drop reason, or why the pod did not send it


@dataclass(frozen=True)
class Fragments:
    """A datagram sent in fragments, and where they arrived."""

    ip_id: int
    sent: int
    length: int  # the whole datagram's IP length
    received: dict[str, int]  # place -> fragments received there
    reassembled: list[str]  # where the whole datagram was seen (a drop, an answer's quote)


@dataclass
class Outcome:
    outcome: OutcomeName
    delivered_to: list[Place]
    answers: list[Hop]  # answers as a pod received them
    drops: list[Drop]
    fragments: list[Fragments]
    last_seen: Hop | None  # the last hop of a sent packet

    def matches(self, expect: Expectation) -> bool:
        """An answered packet was delivered too."""
        return self.outcome == expect or (expect == DELIVERED and self.outcome == ANSWERED)


def judge(plan: Plan, sent: list[Sent], count: int, hops: list[Hop], legs: dict[Hop, LegName],
          refused: list[Drop]) -> Outcome:
    """sent: the frames sent, count times each; refused: those the pod could not send."""
    mine = [h for h in hops if legs.get(h) == SENT]
    delivered = [h for h in mine if _delivery(plan, h)]
    answers = [h for h in hops if legs.get(h) == ANSWER and h.dir == "rx" and "/" in h.at]
    drops = refused + [Drop(h.at, h.device, h.drop_reason or "?") for h in mine
                       if h.dir == "drop"]
    destinations = {s.frame.dst for s in sent if s.known}
    if any(h.flow.src in destinations for h in answers):
        outcome = ANSWERED
    elif drops:
        outcome = DROPPED
    else:
        outcome = DELIVERED if delivered else LOST
    return Outcome(outcome, list(dict.fromkeys(Place(h.at, h.device) for h in delivered)),
                   answers, drops, _fragments(sent, count, mine, delivered, answers),
                   mine[-1] if mine else None)


def _delivery(plan: Plan, hop: Hop) -> bool:
    """A pod received it, or a node's own stack it was addressed to (not a bridge port,
    not a tunnel packet to open, not one to forward)."""
    if hop.dir != "rx" or hop.frame is None or hop.frame.inner is not None:
        return False
    if "/" in hop.at:
        return True
    node = next((n for n in plan.nodes if n.name == hop.at), None)
    if node is None or hop.device in {pod.host_veth for pod in node.pods}:
        return False
    group = int(hop.frame.eth_dst[:2], 16) & 1  # broadcast or multicast
    return bool(group) or hop.frame.dst in {str(node.gateway), str(node.vtep_ip),
                                             str(node.underlay_ip)}


def _fragments(sent: list[Sent], count: int, mine: list[Hop], delivered: list[Hop],
               answers: list[Hop]) -> list[Fragments]:
    datagrams: dict[int, list[Sent]] = {}
    for s in sent:
        if s.frame.fragment:
            datagrams.setdefault(s.frame.ip_id, []).append(s)
    found = []
    for ip_id, pieces in datagrams.items():
        length = max(p.frame.frag_offset + p.frame.ip_len - p.header_length for p in pieces) \
            + pieces[0].header_length
        received = Counter(str(Place(h.at, h.device)) for h in delivered
                           if h.flow.ip_id == ip_id and h.flow.fragment)
        found.append(Fragments(ip_id, len(pieces) * count, length, dict(received),
                               _reassembled(ip_id, length, mine, answers)))
    return found


def _reassembled(ip_id: int, length: int, mine: list[Hop], answers: list[Hop]) -> list[str]:
    """Where the datagram was seen whole: a hop of it at its receiver (freed there, say),
    and the receiver of an answer quoting it (the quote is of the whole datagram)."""
    def whole(f) -> bool:
        return f is not None and f.ip_id == ip_id and f.ip_len == length and not f.fragment

    places = [h.at for h in mine if whole(h.flow)]
    places += [f"in the answer from {h.flow.src}" for h in answers
               if whole(h.flow.quoted)]
    return list(dict.fromkeys(places))
