"""The hops a packet between two pods must make, derived from the Plan. Pure.

Same node: bridged by cni0 (pod eth0 -> host veth -> host veth -> pod eth0),
never touching flannel.1, the node's eth0 or the underlay. Cross node: up
through cni0, out flannel.1 and eth0 as VXLAN, across the underlay bridge,
in at the far eth0 and flannel.1, down through cni0 to the pod's veth.
ARP never leaves the node's bridge: a who-has for a pod of the node is bridged
to it, one for a pod elsewhere asks for the gateway and cni0 answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from dataplane.cluster.plan import Plan, PodPlan
from dataplane.names import Direction, Proto

T = TypeVar("T")

Step = tuple[str, str, Direction]  # (at, device, dir): where a hop must be seen, as hops say


@dataclass(frozen=True)
class Leg:
    """One direction of an exchange: sender to receiver."""

    sender: PodPlan
    receiver: PodPlan
    hops: tuple[Step, ...]
    encapsulated: bool


@dataclass(frozen=True)
class ArpLegs:
    """An ARP probe's who-has and its reply, and who must answer with which MAC."""

    request: tuple[Step, ...]
    reply: tuple[Step, ...]
    answerer: str
    mac: str


def leg(plan: Plan, sender: PodPlan, receiver: PodPlan) -> Leg:
    start = ((sender.ref, sender.ifname, "tx"), (sender.node, sender.host_veth, "rx"))
    end = ((receiver.node, receiver.host_veth, "tx"), (receiver.ref, receiver.ifname, "rx"))
    if sender.node == receiver.node:
        return Leg(sender, receiver, start + end, encapsulated=False)
    src, dst = plan.node(sender.node), plan.node(receiver.node)
    middle = (
        (src.name, src.bridge, "rx"), (src.name, src.vtep, "tx"), (src.name, src.ifname, "tx"),
        ("underlay", src.underlay_port, "rx"), ("underlay", dst.underlay_port, "tx"),
        (dst.name, dst.ifname, "rx"), (dst.name, dst.vtep, "rx"), (dst.name, dst.bridge, "tx"),
    )
    return Leg(sender, receiver, start + middle + end, encapsulated=True)


def legs(plan: Plan, src: PodPlan, dst: PodPlan) -> tuple[Leg, Leg]:
    """The request's leg and the answer's."""
    return leg(plan, src, dst), leg(plan, dst, src)


def arp_legs(plan: Plan, src: PodPlan, dst: PodPlan) -> ArpLegs:
    node = plan.node(src.node)
    if src.node == dst.node:
        return ArpLegs(
            request=((src.ref, src.ifname, "tx"), (node.name, src.host_veth, "rx"),
                     (node.name, dst.host_veth, "tx"), (dst.ref, dst.ifname, "rx")),
            reply=((dst.ref, dst.ifname, "tx"), (node.name, dst.host_veth, "rx"),
                   (node.name, src.host_veth, "tx"), (src.ref, src.ifname, "rx")),
            answerer=dst.ref, mac=dst.mac)
    return ArpLegs(
        request=((src.ref, src.ifname, "tx"), (node.name, src.host_veth, "rx"),
                 (node.name, node.bridge, "rx")),
        reply=((node.name, node.bridge, "tx"), (node.name, src.host_veth, "tx"),
               (src.ref, src.ifname, "rx")),
        answerer=f"{node.name} {node.bridge}", mac=node.cni0_mac)


def off_bridge(plan: Plan, at: str, device: str) -> bool:
    """Whether a place lies beyond a node's pod bridge: its VTEP, its eth0, the underlay."""
    return at == "underlay" or (at, device) in plan.beyond_bridges


def places(plan: Plan, src: PodPlan, dst: PodPlan, proto: Proto) -> set[tuple[str, str]]:
    """Every (namespace label, device) a flow's packets cross either way, with the
    bridges they are forwarded by (a bridge that is down forwards nothing)."""
    if proto == "arp":
        arp = arp_legs(plan, src, dst)
        hops = arp.request + arp.reply
    else:
        request, answer = legs(plan, src, dst)
        hops = request.hops + answer.hops
    found = {(at, device) for at, device, _ in hops}
    found |= {(node, plan.node(node).bridge) for node in (src.node, dst.node)}
    if src.node != dst.node and proto != "arp":
        found.add(("underlay", plan.underlay_bridge))
    return found


def in_order(wanted: Sequence[object], seen: Iterable[T],
             key: Callable[[T], object] = lambda item: item) -> list[T]:
    """The items of seen that match wanted one after another (key(item) == want, each
    after the one before it), up to the first wanted that is not found: all of wanted
    was seen in order when the list is as long as wanted."""
    found: list[T] = []
    rest = iter(seen)
    for want in wanted:
        for item in rest:  # a loop, not next() of a generator: judged at every leg
            if key(item) == want:
                found.append(item)
                break
        else:
            break
    return found
