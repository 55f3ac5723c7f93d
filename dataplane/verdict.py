"""Verdicts: a flow's observed hops against its expected legs and the VXLAN rules.

Pure: takes the plan, the exchange and its hops, and returns a FlowResult. Never
PASS on doubt: lost events or a missing probe make a flow INCONCLUSIVE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataplane.paths import Leg, legs
from dataplane.plan import CNI_BRIDGE, NODE_IFNAME, POD_IFNAME, Plan
from dataplane.spec import VXLAN_OVERHEAD
from dataplane.tracer import Hop
from dataplane.traffic import Exchange

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


@dataclass
class FlowResult:
    src: str
    dst: str
    proto: str
    verdict: str
    rule: str | None = None  # what was broken, e.g. "path", "vxlan-vni"
    diagnosis: str = ""
    last_hop: dict[str, str] | None = None  # {"at", "device"}
    drop_reason: str | None = None
    hops: list[Hop] = field(default_factory=list)
    size: int | None = None  # a DF probe's IP length

    @property
    def passed(self) -> bool:
        return self.verdict == PASS


def judge(plan: Plan, exchange: Exchange, hops: list[Hop], lost: int = 0,
          missing_probes: str | None = None) -> FlowResult:
    src, dst = exchange.src, exchange.dst
    result = FlowResult(src.ref, dst.ref, exchange.proto, PASS, hops=hops)
    if missing_probes:
        return _set(result, INCONCLUSIVE, "probes", f"a needed probe is missing: {missing_probes}")
    if lost:
        return _set(result, INCONCLUSIVE, "lost-events",
                    f"{lost} events were lost: the trail may be incomplete")
    if exchange.size is not None and exchange.size > plan.spec.vtep_mtu:
        return _oversize(plan, exchange, result, hops)
    if exchange.proto == "arp":
        return _arp(plan, exchange, result, hops)
    request, answer = legs(plan, src, dst)
    for leg in (request, answer):
        mine = [h for h in hops if _sent_by(h, leg)]
        # What was sent wrongly is named before what then went missing.
        problem = _wrong_pod(plan, leg, mine) or _bridged_only(plan, leg, mine) \
            or (leg.encapsulated and _vxlan(plan, leg, mine)) or _missing_hop(leg, mine, hops)
        if problem and leg is answer:
            problem = (problem[0], "answer " + problem[1], *problem[2:])
        if problem:
            return _set(result, FAIL, *problem[:2], last=problem[2] if len(problem) > 2 else None,
                        hops=hops)
        if leg is request and not exchange.answered and not _answer_seen(answer, hops):
            break  # the request arrived; judge the answer's leg only if one was sent
    if not exchange.answered:
        last = hops[-1] if hops else None
        return _set(result, FAIL, "delivery", f"no answer reached {src.ref}'s socket",
                    last=last, hops=hops)
    return result


def _oversize(plan: Plan, exchange: Exchange, result: FlowResult, hops: list[Hop]) -> FlowResult:
    """A DF packet above the pod MTU must be refused at the source with that MTU."""
    mtu, src = plan.spec.vtep_mtu, exchange.src
    left = [h for h in hops if (h.at, h.device, h.dir) == (src.ref, POD_IFNAME, "tx")]
    too_big = [h for h in hops if h.frame and h.frame.icmp_mtu]
    if left:
        why = (f"a {exchange.size}-byte DF packet left {src.ref} eth0: its MTU is above "
               f"{plan.spec.vtep_name}'s {mtu}")
        if too_big:
            why += f"; {too_big[0].at} answered fragmentation needed, MTU {too_big[0].frame.icmp_mtu}"
        return _set(result, FAIL, "mtu", why, last=hops[-1], hops=hops)
    if exchange.refused_mtu != mtu:
        return _set(result, FAIL, "mtu", f"{src.ref} refused a {exchange.size}-byte DF packet "
                    f"with MTU {exchange.refused_mtu}, not {mtu}")
    return result


def _set(result: FlowResult, verdict: str, rule: str, diagnosis: str,
         last: Hop | None = None, hops: list[Hop] | None = None) -> FlowResult:
    result.verdict, result.rule, result.diagnosis = verdict, rule, diagnosis
    if last is not None:
        result.last_hop = {"at": last.at, "device": last.device}
    drops = [h for h in (hops or []) if h.dir == "drop"]
    if drops:
        result.drop_reason = drops[-1].drop_reason
        result.diagnosis += f"; dropped at {drops[-1].at} {drops[-1].device}: {drops[-1].drop_reason}"
    return result


def _sent_by(hop: Hop, leg: Leg) -> bool:
    frame = hop.flow_frame()
    return frame is not None and frame.src == str(leg.sender.ip) and hop.dir != "drop"


def _answer_seen(answer: Leg, hops: list[Hop]) -> bool:
    return any(_sent_by(h, answer) for h in hops)


def _key(hop: Hop) -> tuple[str, str, str]:
    return hop.at, hop.device, hop.dir


def _missing_hop(leg: Leg, mine: list[Hop], everything: list[Hop]):
    return _first_missing(leg.hops, mine, everything, f"{leg.sender.ref} -> {leg.receiver.ref}")


def _first_missing(wanted, mine: list[Hop], everything: list[Hop], label: str):
    """The first expected hop not seen, in order, with the last one that was."""
    seen = iter(mine)
    last = None
    for want in wanted:
        for hop in seen:
            if _key(hop) == want:
                last = hop
                break
        else:
            where = f"{want[0]} {want[1]} {want[2]}"
            after = f" after {last.at} {last.device} {last.dir}" if last else ""
            return ("path", f"{label}: no hop at {where}{after}",
                    last or (everything[-1] if everything else None))
    return None


def _arp(plan: Plan, exchange: Exchange, result: FlowResult, hops: list[Hop]) -> FlowResult:
    """A who-has from a pod: for a pod on its node it is bridged to that pod and
    answered with its MAC; across nodes it asks for the gateway, answered by cni0.
    Either way ARP never leaves the node's bridge."""
    src, dst = exchange.src, exchange.dst
    node = plan.node(src.node)
    if src.node == dst.node:
        answerer, mac = dst.ref, dst.mac
        request = ((src.ref, POD_IFNAME, "tx"), (node.name, src.host_veth, "rx"),
                   (node.name, dst.host_veth, "tx"), (dst.ref, POD_IFNAME, "rx"))
        answer = ((dst.ref, POD_IFNAME, "tx"), (node.name, dst.host_veth, "rx"),
                  (node.name, src.host_veth, "tx"), (src.ref, POD_IFNAME, "rx"))
    else:
        answerer, mac = f"{node.name} {CNI_BRIDGE}", node.cni0_mac
        request = ((src.ref, POD_IFNAME, "tx"), (node.name, src.host_veth, "rx"),
                   (node.name, CNI_BRIDGE, "rx"))
        answer = ((node.name, CNI_BRIDGE, "tx"), (node.name, src.host_veth, "tx"),
                  (src.ref, POD_IFNAME, "rx"))
    nodes = {n.name for n in plan.nodes}
    for hop in hops:
        if hop.at == "underlay" or (hop.at in nodes and hop.device in
                                    (plan.spec.vtep_name, NODE_IFNAME)):
            return _set(result, FAIL, "arp-scope", f"ARP for {exchange.target} left "
                        f"{node.name}'s bridge: seen at {hop.at} {hop.device}", last=hop, hops=hops)
    label = f"ARP {src.ref} -> {exchange.target}"
    for op, wanted, what in ((1, request, "request"), (2, answer, "reply")):
        mine = [h for h in hops if h.frame is not None and h.frame.arp_op == op]
        problem = _first_missing(wanted, mine, hops, f"{label} {what}")
        if problem:
            return _set(result, FAIL, *problem[:2], last=problem[2], hops=hops)
    if not exchange.answered:
        return _set(result, FAIL, "delivery", f"no ARP reply for {exchange.target} reached "
                    f"{src.ref}", last=hops[-1] if hops else None, hops=hops)
    if exchange.answer_mac != mac:
        return _set(result, FAIL, "arp-mac", f"{exchange.target} answered with "
                    f"{exchange.answer_mac}, not {mac} ({answerer})", hops=hops)
    return result


def _wrong_pod(plan: Plan, leg: Leg, mine: list[Hop]):
    for hop in mine:
        if hop.dir == "rx" and hop.device == POD_IFNAME and "/" in hop.at \
                and hop.at != leg.receiver.ref:
            return ("wrong-pod", f"{leg.sender.ref} -> {leg.receiver.ref} was delivered to "
                    f"{hop.at}", hop)
    return None


def _bridged_only(plan: Plan, leg: Leg, mine: list[Hop]):
    """A same-node packet must never reach flannel.1, a node's eth0 or the underlay."""
    if leg.encapsulated:
        return None
    nodes = {node.name for node in plan.nodes}
    for hop in mine:
        if hop.at == "underlay" or (hop.at in nodes and hop.device in
                                    (plan.spec.vtep_name, NODE_IFNAME)):
            return ("bridged", f"same-node {leg.sender.ref} -> {leg.receiver.ref} left the "
                    f"bridge: seen at {hop.at} {hop.device}", hop)
    return None


def _vxlan(plan: Plan, leg: Leg, mine: list[Hop]):
    """The encapsulation rules, on the sender node's eth0 and the receiver pod's eth0."""
    spec = plan.spec
    sender_node, receiver_node = plan.node(leg.sender.node), plan.node(leg.receiver.node)
    sent = [h for h in mine if _key(h) == (leg.sender.ref, POD_IFNAME, "tx")]
    inner_tx = [h for h in mine if _key(h) == (leg.sender.node, spec.vtep_name, "tx")]
    outer = [h for h in mine if _key(h) == (leg.sender.node, NODE_IFNAME, "tx")]
    delivered = [h for h in mine if _key(h) == (leg.receiver.ref, POD_IFNAME, "rx")]
    sports = {h.frame.sport for h in outer}
    for hop, original, inner_hop in zip(outer, sent, inner_tx):
        f, at = hop.frame, f"{hop.at} {hop.device}"
        checks = (
            ("vxlan-port", f.proto == "udp" and f.dport == spec.port,
             f"outer {f.proto} port {f.dport}, not udp {spec.port}"),
            ("vxlan-vni", f.vni == spec.vni, f"VNI {f.vni}, not {spec.vni}"),
            ("outer-addresses", (f.src, f.dst) == (str(sender_node.underlay_ip),
                                                   str(receiver_node.underlay_ip)),
             f"outer {f.src} > {f.dst}, not {sender_node.underlay_ip} > "
             f"{receiver_node.underlay_ip}"),
            ("outer-length", hop.length == inner_hop.length + VXLAN_OVERHEAD,
             f"outer {hop.length} bytes for inner {inner_hop.length}, not +{VXLAN_OVERHEAD}"),
            ("inner-addresses", f.inner is not None and (f.inner.src, f.inner.dst) ==
             (str(leg.sender.ip), str(leg.receiver.ip)),
             f"inner {f.inner.src if f.inner else '?'} > {f.inner.dst if f.inner else '?'} "
             f"(NAT?), not {leg.sender.ip} > {leg.receiver.ip}"),
            ("inner-mac", f.inner is not None and f.inner.eth_dst == receiver_node.vtep_mac,
             f"inner destination MAC {f.inner.eth_dst if f.inner else '?'}, not "
             f"{receiver_node.vtep_mac} ({receiver_node.name}'s VTEP)"),
            ("inner-ttl", f.inner is not None and f.inner.ttl == original.frame.ttl - 1,
             f"inner TTL {f.inner.ttl if f.inner else '?'} after one router, sent with "
             f"{original.frame.ttl}"),
            ("outer-source-port", len(sports) == 1,
             f"one flow used outer source ports {sorted(sports)}"),
        )
        for rule, ok, why in checks:
            if not ok:
                return (rule, f"{leg.sender.ref} -> {leg.receiver.ref} at {at}: {why}", hop)
    for hop, original in zip(delivered, sent):
        if hop.frame.ttl != original.frame.ttl - 2:
            return ("inner-ttl", f"{leg.receiver.ref} got TTL {hop.frame.ttl}, sent with "
                    f"{original.frame.ttl}: not two routers", hop)
    return None
