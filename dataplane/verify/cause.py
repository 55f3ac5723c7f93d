"""Root causes: which drift explains a failing flow, or else where the evidence points. Pure.

A drift item explains a flow when it sits on the flow's expected path (a device
its packets cross either way, the bridges that forward them, a whole namespace
they pass through, or anything of its two pods) and is not about a node the flow
never involves (a peer's FDB entry on a VTEP that the flow crosses). Where no
drift explains a failure, the evidence names the place: the node whose ARP went
unanswered, not the node that asked; the device that dropped; the first hop missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from dataplane.cluster.plan import Plan, PodPlan
from dataplane.records import FAIL, Drift, FlowResult, Hop
from dataplane.verify.paths import places

NEIGH_FAILED = "SKB_DROP_REASON_NEIGH_FAILED"
SENDER_SIDE_RULES = ("vxlan-port", "vxlan-vni", "outer-addresses", "outer-mac", "outer-ttl",
                     "outer-df", "outer-checksum", "outer-length", "inner-mac",
                     "outer-source-port")


@dataclass(frozen=True)
class Owners:
    """What names each node of the plan in a drift item's text, and each pod by address."""

    plan: Plan
    pods: dict[str, PodPlan]  # pod IP -> pod
    _named: dict[Drift, frozenset[str]] = field(default_factory=dict, compare=False)

    def named(self, item: Drift) -> frozenset[str]:
        """The nodes a drift item's text names (looked up once per item: every flow it
        may explain asks)."""
        if item not in self._named:
            text = f"{item.what} {item.expected} {item.found}"
            self._named[item] = frozenset(node for node, mark in self.marks.items()
                                          if mark.search(text))
        return self._named[item]

    @cached_property
    def marks(self) -> dict[str, re.Pattern]:
        """node -> its addresses and MACs, as one pattern; compiled when first needed (a
        run whose every flow passes never needs them)."""
        marks = {}
        for node in self.plan.nodes:
            idents = [str(node.underlay_ip), str(node.vtep_ip), str(node.pod_cidr),
                      str(node.gateway), node.vtep_mac, node.eth0_mac, node.cni0_mac]
            idents += [pod.ip_str for pod in node.pods] + [pod.mac for pod in node.pods]
            marks[node.name] = re.compile("|".join(rf"(?<![\w.:]){re.escape(i)}(?![\w:]|\.\d)"
                                                   for i in idents))
        return marks


def owners(plan: Plan) -> Owners:
    return Owners(plan, {pod.ip_str: pod for pod in plan.pods()})


def explaining(plan: Plan, flow: FlowResult, drift: list[Drift], known: Owners) -> list[Drift]:
    """The drift items that explain flow; [] unless it FAILed. Its hops are not needed."""
    if flow.verdict != FAIL:
        return []
    src, dst = plan.pod(flow.src), plan.pod(flow.dst)
    crossed = places(plan, src, dst, flow.proto)
    spaces = {at for at, _ in crossed}
    involved = {src.node, dst.node}
    return [d for d in drift
            if ((d.at, d.device) in crossed or d.at in (src.ref, dst.ref)
                or (d.device is None and d.at in spaces))
            and not _about_others(d, involved, known)]


def evidence(plan: Plan, flow: FlowResult, known: Owners) -> list[Drift]:
    """Where flow's hops point, as a drift item; [] unless it FAILed. Taken where the hops
    are (a verify worker), before the drift is known. A flow's cause is explaining(), else this."""
    return [_evidence(plan, flow, known)] if flow.verdict == FAIL else []


def _about_others(item: Drift, involved: set[str], known: Owners) -> bool:
    """Whether the item names only nodes the flow does not involve (a peer's entry)."""
    named = known.named(item)
    return bool(named) and not named & involved


def _evidence(plan: Plan, flow: FlowResult, known: Owners) -> Drift:
    """The most specific place the hops point to, as an item of the same shape."""
    src, dst = plan.pod(flow.src), plan.pod(flow.dst)
    drops = [h for h in flow.hops if h.dir == "drop"]
    if flow.rule == "send":
        return Drift(src.ref, src.ifname, "probe refused by the kernel", "sent", flow.error or "")
    if flow.rule == "mtu":
        return Drift(src.ref, src.ifname, "mtu", f"at most {plan.spec.vtep_mtu}", flow.diagnosis)
    if flow.rule == "wrong-pod" and flow.last_hop:
        stray = plan.pod(flow.last_hop["at"])
        bridge = plan.node(stray.node).bridge
        return _misdelivery(plan, flow, stray, known) or Drift(
            stray.node, bridge, f"a copy forwarded to {stray.ref}",
            f"{dst.ref}'s packets to its port only", flow.diagnosis)
    if drops and drops[-1].drop_reason == NEIGH_FAILED:
        neighbour = _neighbour(plan, drops[-1], known)
        if neighbour:
            at, device, address = neighbour
            return Drift(at, device, f"no ARP answer for {address}",
                         f"{at} answers {drops[-1].at}'s ARP", f"unanswered: "
                         f"{drops[-1].at} {drops[-1].device} dropped the packet ({NEIGH_FAILED})")
    why = flow.diagnosis.split("; ")[0].rsplit(": ", 1)[-1]  # the rule's finding alone
    if flow.rule in SENDER_SIDE_RULES and flow.last_hop:
        return Drift(flow.last_hop["at"], plan.node(flow.last_hop["at"]).vtep, f"encapsulation ({flow.rule})",
                     "flannel's VXLAN rules", why)
    if flow.rule in ("inner-addresses", "inner-ttl") and flow.last_hop:
        return Drift(flow.last_hop["at"], None, f"forwarding ({flow.rule}: NAT or routing)",
                     "pod packets forwarded unchanged", why)
    missing = re.search(r"no hop at (\S+) (\S+) (\w+)", flow.diagnosis)
    if missing:
        at, device, direction = missing.groups()
        return Drift(at, device, f"no {direction} hop", "the flow's packet",
                     "not seen" + (f" (last at {flow.last_hop['at']} {flow.last_hop['device']})"
                                   if flow.last_hop else ""))
    if drops:
        return Drift(drops[-1].at, drops[-1].device, "packet dropped", "forwarded",
                     drops[-1].drop_reason or "?")
    where = flow.last_hop or {"at": src.ref, "device": src.ifname}
    return Drift(where["at"], where["device"], flow.rule or "failure", "flannel's rules hold",
                 why)


def _misdelivery(plan: Plan, flow: FlowResult, stray: PodPlan, known: Owners) -> Drift | None:
    """A packet sent to stray's MAC: the neighbour entry that named it, held by the
    sending pod on stray's node, else by that node (it routed the packet to its bridge)."""
    hop = next((h for h in flow.hops if h.place == (stray.ref, stray.ifname, "rx")
                and h.frame is not None and h.frame.eth_dst == stray.mac), None)
    frame = hop.flow if hop else None
    sender, meant = (known.pods.get(frame.src), known.pods.get(frame.dst)) if frame else (None,
                                                                                          None)
    if sender is None or meant is None:
        return None
    at, device = (sender.ref, sender.ifname) if sender.node == stray.node else \
        (stray.node, plan.node(stray.node).bridge)
    return Drift(at, device, f"neighbour {meant.ip}", f"{meant.mac} ({meant.ref})",
                 f"{stray.mac} ({stray.ref})")


def _neighbour(plan: Plan, drop: Hop, known: Owners) -> tuple[str, str, str] | None:
    """(holder, device, address) of the neighbour a NEIGH_FAILED drop was resolving: the
    next hop of the dropped packet on that device."""
    frame = drop.flow
    pod = known.pods.get(frame.dst) if frame is not None else None
    if pod is None:
        return None
    if "/" in drop.at:  # a pod resolves a pod of its node, else its gateway
        sender = plan.pod(drop.at)
        if sender.node == pod.node:
            return pod.ref, pod.ifname, str(pod.ip)
        return sender.node, plan.node(sender.node).bridge, str(sender.gateway)
    node = next((n for n in plan.nodes if n.name == drop.at), None)  # else the underlay
    peer = plan.node(pod.node)
    if node and drop.device == node.ifname:  # the underlay address of the node hosting the pod
        return peer.name, peer.ifname, str(peer.underlay_ip)
    if node and drop.device == node.vtep:  # flannel programs these: missing on this node
        return drop.at, drop.device, str(peer.vtep_ip)
    return pod.ref, pod.ifname, str(pod.ip)
