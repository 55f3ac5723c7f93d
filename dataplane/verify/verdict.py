"""Verdicts: a flow's observed hops against its expected legs and the VXLAN rules.

Pure: takes the plan, the exchange and its hops, and returns a FlowResult. Fails
closed: a flow starts INCONCLUSIVE and is a PASS only when every check that applies
to it ran and held; lost events or a missing probe make it INCONCLUSIVE, and a check
that cannot judge (an error in it) never lets a flow pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from operator import attrgetter

from dataplane.cluster.plan import Plan
from dataplane.cluster.spec import VXLAN_OVERHEAD
from dataplane.records import FAIL, INCONCLUSIVE, PASS, Exchange, FlowResult, Hop, Verdict
from dataplane.verify.paths import Leg, Step, arp_legs, in_order, legs, off_bridge

OUTER_TTL = 64  # flannel leaves flannel.1's TTL unset: the kernel's default, IPDEFTTL
PLACED = ("tx", "rx")  # hops at a device; drops, kprobe functions and FDB events are not


@dataclass(frozen=True)
class Problem:
    """One check that did not hold: its rule, what was seen, and where."""

    rule: str  # e.g. "path", "vxlan-vni", "send"
    diagnosis: str
    hop: Hop | None = None
    verdict: Verdict = FAIL


def judge(plan: Plan, exchange: Exchange, hops: list[Hop], lost: int = 0,
          missing_probes: str | None = None, table_fulls: int = 0) -> FlowResult:
    """table_fulls: how often the kernel's ARP table (one for every namespace, so other
    processes' too) was found full while this flow was probed: a failure then may be
    the machine's, not the network's, so it is INCONCLUSIVE."""
    result = FlowResult(exchange.src.ref, exchange.dst.ref, exchange.proto, INCONCLUSIVE,
                        rule="unjudged", hops=hops, size=exchange.size, error=exchange.error)
    note = ""
    try:
        problem = next(_problems(plan, exchange, hops, lost, missing_probes), None)
        note = _icmp_error(hops) if problem else ""
    except Exception as err:  # a check that breaks cannot vouch for the flow
        problem = Problem("judge", f"the verdict could not be reached: {err!r}",
                          verdict=INCONCLUSIVE)
    if problem is None:
        result.verdict, result.rule = PASS, None
        return result
    if problem.verdict == FAIL and table_fulls:
        problem = Problem("neighbour-table", f"{problem.rule}: {problem.diagnosis}; meanwhile "
                          f"the kernel's ARP table (gc_thresh3, shared by every namespace) was "
                          f"full {table_fulls} times: not judged", problem.hop, INCONCLUSIVE)
    return _failed(result, problem, exchange, note)


def _problems(plan: Plan, exchange: Exchange, hops: list[Hop], lost: int,
              missing_probes: str | None) -> Iterator[Problem]:
    """Every problem with the flow, most telling first; none means every check held."""
    src, dst = exchange.src, exchange.dst
    if missing_probes:
        yield Problem("probes", f"a needed probe is missing: {missing_probes}",
                      verdict=INCONCLUSIVE)
    if lost:
        yield Problem("lost-events", f"{lost} events were lost: the trail may be incomplete",
                      verdict=INCONCLUSIVE)
    if exchange.error and not exchange.sent and \
            not any(h.place == (src.ref, src.ifname, "tx") for h in hops):
        yield Problem("send", f"{src.ref} could not probe {dst.ref}: {exchange.error}")
    if exchange.size is not None and exchange.size > plan.spec.vtep_mtu:
        yield from _oversize(plan, exchange, hops)
        return
    if exchange.proto == "arp":
        yield from _arp(plan, exchange, hops)
        return
    request, answer = legs(plan, src, dst)
    yield from _leg(plan, request, hops, "")
    if exchange.answered or _sent_by(hops, answer.sender.ip_str):
        yield from _leg(plan, answer, hops, "answer ")
    if not exchange.answered:
        yield _undelivered(src.ref, hops, f"no answer reached {src.ref}'s socket")


# Drops at a socket that is full: at the source pod, the prober's own socket, whose limit
# is the machine's, not the network's
OWN_SOCKET_FULL = ("SKB_DROP_REASON_SOCKET_RCVBUFF", "SKB_DROP_REASON_PACKET_SOCK_ERROR")


def _undelivered(src: str, hops: list[Hop], what: str) -> Problem:
    """An answer that never reached the prober: the network's failure (delivery), unless
    the answer reached the source pod and its own socket, full, dropped it."""
    full = next((h for h in hops if h.dir == "drop" and h.at == src
                 and h.drop_reason in OWN_SOCKET_FULL), None)
    if full is not None:
        return Problem("socket", f"{what}: the prober's socket in {src} was full "
                       f"({full.drop_reason}): not judged", full, INCONCLUSIVE)
    return Problem("delivery", what, hops[-1] if hops else None)


def _failed(result: FlowResult, problem: Problem, exchange: Exchange, note: str) -> FlowResult:
    result.verdict, result.rule, result.diagnosis = problem.verdict, problem.rule, \
        problem.diagnosis
    if problem.hop is not None:
        result.last_hop = {"at": problem.hop.at, "device": problem.hop.device}
    drops = [h for h in result.hops if h.dir == "drop"]
    if drops:
        result.drop_reason = drops[-1].drop_reason
        result.diagnosis += f"; dropped at {drops[-1].at} {drops[-1].device}: " \
                            f"{drops[-1].drop_reason}"
    if exchange.error and problem.rule != "send":
        result.diagnosis += f"; the kernel said: {exchange.error}"
    result.diagnosis += note
    return result


def _icmp_error(hops: list[Hop]) -> str:
    """The first ICMP error about the flow's packets, as a note to its diagnosis."""
    error = next((h for h in hops if h.dir in PLACED and h.frame is not None
                  and h.frame.quoted is not None), None)
    if error is None:
        return ""
    f = error.frame
    what = ICMP_ERRORS.get((f.icmp_type, f.icmp_code), f"type {f.icmp_type} code {f.icmp_code}")
    return f"; ICMP {what} from {f.src}, seen at {error.at} {error.device}"


ICMP_ERRORS = {(3, 0): "net unreachable", (3, 1): "host unreachable",
               (3, 3): "port unreachable", (3, 4): "fragmentation needed",
               (3, 13): "administratively prohibited", (11, 0): "TTL exceeded"}


def _sent_by(hops: list[Hop], sender_ip: str) -> list[Hop]:
    """The hops of copies of packets sender_ip sent; an ICMP error quoting one is not one
    (a pod's own stack sends one over lo when its neighbour fails: a consequence, not a
    copy). One comprehension, no call per hop: judged for every leg of every flow."""
    return [h for h in hops if (f := h.flow) is not None and f.src == sender_ip
            and f.quoted is None and h.dir in PLACED]


def _leg(plan: Plan, leg: Leg, hops: list[Hop], label: str) -> Iterator[Problem]:
    mine = _sent_by(hops, leg.sender.ip_str)
    for check in LEG_CHECKS:
        problem = check(plan, leg, mine, hops)
        if problem:
            if problem.rule == "path":
                stray = _wrong_pod(plan, leg, mine, hops) or _extra(plan, leg, mine, hops)
                if stray:
                    problem = replace(problem, diagnosis=f"{problem.diagnosis}; besides, "
                                      f"{stray.diagnosis}")
            yield replace(problem, diagnosis=label + problem.diagnosis)
            return


def _name(leg: Leg) -> str:
    return f"{leg.sender.ref} -> {leg.receiver.ref}"


def _at_other_pod(plan: Plan, leg: Leg, hop: Hop) -> bool:
    return hop.dir == "rx" and "/" in hop.at and hop.at != leg.receiver.ref \
        and hop.device == plan.pod(hop.at).ifname


def _misdelivered(plan: Plan, leg: Leg, mine: list[Hop], everything: list[Hop]) -> Problem | None:
    """Sent to another pod, to its MAC (a neighbour entry that names it, an address
    conflict): not a copy that a bridge flooded."""
    for hop in mine:
        if _at_other_pod(plan, leg, hop) and hop.frame.eth_dst == plan.pod(hop.at).mac:
            return Problem("wrong-pod", f"{_name(leg)} was delivered to {hop.at}, sent to "
                           f"its MAC {hop.frame.eth_dst}", hop)
    return None


def _wrong_pod(plan: Plan, leg: Leg, mine: list[Hop], everything: list[Hop]) -> Problem | None:
    for hop in mine:
        if _at_other_pod(plan, leg, hop):
            return Problem("wrong-pod", f"{_name(leg)} was delivered to {hop.at}", hop)
    return None


def _bridged(plan: Plan, leg: Leg, mine: list[Hop], everything: list[Hop]) -> Problem | None:
    """A same-node packet is bridged: it never reaches flannel.1, a node's eth0 or the
    underlay, nor the node's own stack through cni0 (that would be routed)."""
    if leg.encapsulated:
        return None
    bridge = plan.node(leg.sender.node).bridge
    for hop in mine:
        if off_bridge(plan, hop.at, hop.device) or \
                (hop.at == leg.sender.node and hop.device == bridge):
            how = "routed through" if hop.device == bridge else "left the bridge: seen at"
            return Problem("bridged", f"same-node {_name(leg)} {how} {hop.at} {hop.device}", hop)
    return None


def _extra(plan: Plan, leg: Leg, mine: list[Hop], everything: list[Hop]) -> Problem | None:
    """No copy off the path (flooded to a third node, leaked to another device), and no
    place seen more often than the sender sent."""
    expected = set(leg.hops)
    for hop in mine:
        if hop.place not in expected:
            return Problem("extra-hop", f"{_name(leg)}: a copy was seen at {hop.at} "
                           f"{hop.device} {hop.dir}, off its path", hop)
    places = [h.place for h in mine]
    if len(set(places)) == len(places) and leg.hops[0] in places:
        return None  # every place once, the first too: a healthy leg, told without counting
    counts = Counter(places)
    sent = counts[leg.hops[0]]
    for place, seen in counts.items():
        if seen > sent:
            hop = next(h for h in reversed(mine) if h.place == place)
            return Problem("duplicate", f"{_name(leg)}: seen {seen} times at {' '.join(place)}, "
                           f"sent {sent} times", hop)
    return None


def _missing_hop(plan: Plan, leg: Leg, mine: list[Hop], everything: list[Hop]) -> Problem | None:
    return _first_missing(leg.hops, mine, everything, _name(leg))


def _first_missing(wanted: tuple[Step, ...], mine: list[Hop], everything: list[Hop],
                   label: str) -> Problem | None:
    """The first expected hop not seen, in order, with the last one that was."""
    found = in_order(wanted, mine, attrgetter("place"))
    if len(found) == len(wanted):
        return None
    last = found[-1] if found else None
    after = f" after {last.at} {last.device} {last.dir}" if last else ""
    return Problem("path", f"{label}: no hop at {' '.join(wanted[len(found)])}{after}",
                   last or (everything[-1] if everything else None))


def _macs(plan: Plan, leg: Leg, mine: list[Hop], everything: list[Hop]) -> Problem | None:
    """A pod sends to its peer's MAC on its node, else to its gateway (cni0); it
    receives from its peer, else from its own node's cni0."""
    s, r = leg.sender, leg.receiver
    same = s.node == r.node
    wanted = {(s.ref, s.ifname, "tx"): (s.mac, r.mac if same else plan.node(s.node).cni0_mac),
              (r.ref, r.ifname, "rx"): (s.mac if same else plan.node(r.node).cni0_mac, r.mac)}
    for hop in mine:
        want = wanted.get(hop.place)
        if want and (found := (hop.frame.eth_src, hop.frame.eth_dst)) != want:
            return Problem("mac", f"{_name(leg)} at {hop.at} {hop.device} {hop.dir}: Ethernet "
                           f"{found[0]} > {found[1]}, not {want[0]} > {want[1]}", hop)
    return None


def _ttl(plan: Plan, leg: Leg, mine: list[Hop], everything: list[Hop]) -> Problem | None:
    """Bridged, a packet keeps its TTL; across nodes it passes two routers."""
    routers = 2 if leg.encapsulated else 0
    sent = [h for h in mine if h.place == leg.hops[0]]
    for hop in mine:
        if hop.place == leg.hops[-1] and hop.frame.ttl != sent[0].frame.ttl - routers:
            return Problem("ttl", f"{leg.receiver.ref} got TTL {hop.frame.ttl}, sent with "
                           f"{sent[0].frame.ttl}: not {routers} routers", hop)
    return None


def _partner(hop: Hop, candidates: list[Hop]) -> Hop | None:
    """The candidate that is the same packet (skb), else the last one before hop."""
    same = [c for c in candidates if c.skb == hop.skb and c.ts <= hop.ts]
    before = same or [c for c in candidates if c.ts <= hop.ts]
    return before[-1] if before else None


def _vxlan(plan: Plan, leg: Leg, mine: list[Hop], everything: list[Hop]) -> Problem | None:
    """The encapsulation rules, on every packet leaving the sender node's eth0."""
    if not leg.encapsulated:
        return None
    spec = plan.spec
    s_node, r_node = plan.node(leg.sender.node), plan.node(leg.receiver.node)
    # This leg's packets on the sender node, by place: NAT may have rewritten the
    # source address that makes them `mine`.
    receiver, node, vtep, eth0 = leg.receiver.ip_str, s_node.name, s_node.vtep, s_node.ifname
    inner_tx, outer = [], []  # one pass over the flow's hops (judged for every leg)
    for h in everything:
        if h.at == node and h.dir == "tx" and (f := h.flow) is not None and f.quoted is None \
                and f.src != receiver:
            if h.device == vtep:
                inner_tx.append(h)
            elif h.device == eth0 and h.frame.vni is not None:
                outer.append(h)
    sent = [h for h in mine if h.place == leg.hops[0]]
    # TCP may move to another port after a retransmission timeout (Linux rehashes the
    # flow then); a datagram exchange is one packet each way and keeps its port
    sports = {h.frame.sport for h in outer if h.flow.proto != "tcp"}
    outer_ips = (s_node.underlay_str, r_node.underlay_str)
    inner_ips = (leg.sender.ip_str, receiver)
    for hop in outer:
        f, inner = hop.frame, hop.flow
        before = _partner(hop, inner_tx)
        # (rule, whether it holds, its message: made only when it does not)
        checks = (
            ("vxlan-port", f.proto == "udp" and f.dport == spec.port,
             lambda: f"outer {f.proto} port {f.dport}, not udp {spec.port}"),
            ("vxlan-vni", f.vni == spec.vni, lambda: f"VNI {f.vni}, not {spec.vni}"),
            ("outer-addresses", (f.src, f.dst) == outer_ips,
             lambda: f"outer {f.src} > {f.dst}, not {s_node.underlay_ip} > "
             f"{r_node.underlay_ip}"),
            ("outer-mac", (f.eth_src, f.eth_dst) == (s_node.eth0_mac, r_node.eth0_mac),
             lambda: f"outer Ethernet {f.eth_src} > {f.eth_dst}, not {s_node.eth0_mac} > "
             f"{r_node.eth0_mac}"),
            ("outer-ttl", f.ttl == OUTER_TTL, lambda: f"outer TTL {f.ttl}, not {OUTER_TTL}"),
            ("outer-df", not f.df, lambda: "outer DF set: flannel.1 leaves it unset"),
            ("outer-checksum", f.udp_checksum != 0,
             lambda: "outer UDP checksum zero: flannel.1 computes it"),
            ("outer-length", before is not None and hop.length == before.length + VXLAN_OVERHEAD,
             lambda: f"outer {hop.length} bytes for inner {before.length if before else '?'}, "
             f"not +{VXLAN_OVERHEAD}"),
            ("inner-addresses", (inner.src, inner.dst) == inner_ips,
             lambda: f"inner {inner.src} > {inner.dst} (NAT?), not {leg.sender.ip} > "
             f"{leg.receiver.ip}"),
            ("inner-mac", (inner.eth_src, inner.eth_dst) == (s_node.vtep_mac, r_node.vtep_mac),
             lambda: f"inner Ethernet {inner.eth_src} > {inner.eth_dst}, not "
             f"{s_node.vtep_mac} > {r_node.vtep_mac} (the VTEPs of {s_node.name} and "
             f"{r_node.name})"),
            ("inner-ttl", bool(sent) and inner.ttl == sent[0].frame.ttl - 1,
             lambda: f"inner TTL {inner.ttl} after one router, sent with "
             f"{sent[0].frame.ttl if sent else '?'}"),
            ("outer-source-port", len(sports) <= 1,
             lambda: f"one flow used outer source ports {sorted(sports)}"),
        )
        for rule, ok, why in checks:
            if not ok:
                return Problem(rule, f"{_name(leg)} at {hop.at} {hop.device}: {why()}", hop)
    return None


# What was sent wrongly (bridged or encapsulated against the rules, or to another pod's
# MAC) is named first; then where the packet stopped short of its receiver, if it did:
# copies strayed on the way (flooded by a bridge that no longer knew the receiver) come
# with it or not depending on what the kernel still knew then, so they are told beside
# it, not instead; then what reached the receiver besides or wrongly.
LEG_CHECKS = (_bridged, _vxlan, _misdelivered, _missing_hop, _wrong_pod, _extra, _macs, _ttl)


def _oversize(plan: Plan, exchange: Exchange, hops: list[Hop]) -> Iterator[Problem]:
    """A DF packet above the pod MTU must be refused at the source with that MTU."""
    mtu, src = plan.spec.vtep_mtu, exchange.src
    left = [h for h in hops if h.place == (src.ref, src.ifname, "tx")]
    too_big = [h for h in hops if h.frame and h.frame.icmp_mtu]
    if left:
        why = (f"a {exchange.size}-byte DF packet left {src.ref} {src.ifname}: its MTU is "
               f"above {plan.node(src.node).vtep}'s {mtu}")
        if too_big:
            why += f"; {too_big[0].at} answered fragmentation needed, MTU {too_big[0].frame.icmp_mtu}"
        yield Problem("mtu", why, hops[-1])
    elif exchange.refused_mtu != mtu:
        yield Problem("mtu", f"{src.ref} refused a {exchange.size}-byte DF packet with MTU "
                      f"{exchange.refused_mtu}, not {mtu}")


def _arp(plan: Plan, exchange: Exchange, hops: list[Hop]) -> Iterator[Problem]:
    """A who-has from a pod, answered by the right MAC only, never leaving the node."""
    src, target = exchange.src, exchange.target
    arp = arp_legs(plan, src, exchange.dst)
    node = src.node
    for hop in hops:
        if hop.dir in PLACED and off_bridge(plan, hop.at, hop.device):
            yield Problem("arp-scope", f"ARP for {target} left {node}'s bridge: seen at "
                          f"{hop.at} {hop.device}", hop)
    label = f"ARP {src.ref} -> {target}"
    replies = [h for h in hops if h.frame is not None and h.frame.arp_op == 2
               and h.frame.src == target and h.dir in PLACED]
    macs = {h.frame.arp_sender_mac for h in replies}
    others = sorted(macs - {arp.mac})
    if others and arp.mac in macs:  # two answerers; a wrong one alone is a path or MAC fault
        hop = next(h for h in replies if h.frame.arp_sender_mac == others[0])
        yield Problem("arp-conflict", f"{target} is answered by {', '.join(others)} besides "
                      f"{arp.mac} ({arp.answerer}): an address conflict", hop)
    for op, wanted, what in ((1, arp.request, "request"), (2, arp.reply, "reply")):
        mine = [h for h in hops if h.frame is not None and h.frame.arp_op == op
                and h.dir in PLACED]
        problem = _first_missing(wanted, mine, hops, f"{label} {what}")
        if problem:
            yield problem
    off_path = [h for h in replies if h.place not in set(arp.reply)]
    if off_path:
        hop = off_path[0]
        yield Problem("extra-hop", f"{label} reply: a copy was seen at {hop.at} {hop.device} "
                      f"{hop.dir}, off its path", hop)
    if not exchange.answered:
        yield _undelivered(src.ref, hops, f"no ARP reply for {target} reached {src.ref}")
    elif exchange.answer_mac != arp.mac:
        yield Problem("arp-mac", f"{target} answered with {exchange.answer_mac}, not {arp.mac} "
                      f"({arp.answerer})")
