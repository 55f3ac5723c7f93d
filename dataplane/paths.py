"""The hops a packet between two pods must make, derived from the Plan. Pure.

Same node: bridged by cni0 (pod eth0 -> host veth -> host veth -> pod eth0),
never touching flannel.1, the node's eth0 or the underlay. Cross node: up
through cni0, out flannel.1 and eth0 as VXLAN, across the underlay bridge,
in at the far eth0 and flannel.1, down through cni0 to the pod's veth.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.plan import CNI_BRIDGE, NODE_IFNAME, POD_IFNAME, Plan, PodPlan

Hop = tuple[str, str, str]  # (at, device, dir) as the tracer reports them


@dataclass(frozen=True)
class Leg:
    """One direction of an exchange: sender to receiver."""

    sender: PodPlan
    receiver: PodPlan
    hops: tuple[Hop, ...]
    encapsulated: bool


def leg(plan: Plan, sender: PodPlan, receiver: PodPlan) -> Leg:
    start = ((sender.ref, POD_IFNAME, "tx"), (sender.node, sender.host_veth, "rx"))
    end = ((receiver.node, receiver.host_veth, "tx"), (receiver.ref, POD_IFNAME, "rx"))
    if sender.node == receiver.node:
        return Leg(sender, receiver, start + end, encapsulated=False)
    vtep = plan.spec.vtep_name
    src_node, dst_node = plan.node(sender.node), plan.node(receiver.node)
    middle = (
        (sender.node, CNI_BRIDGE, "rx"), (sender.node, vtep, "tx"), (sender.node, NODE_IFNAME, "tx"),
        ("underlay", src_node.underlay_port, "rx"), ("underlay", dst_node.underlay_port, "tx"),
        (receiver.node, NODE_IFNAME, "rx"), (receiver.node, vtep, "rx"),
        (receiver.node, CNI_BRIDGE, "tx"),
    )
    return Leg(sender, receiver, start + middle + end, encapsulated=True)


def legs(plan: Plan, src: PodPlan, dst: PodPlan) -> tuple[Leg, Leg]:
    """The request's leg and the answer's."""
    return leg(plan, src, dst), leg(plan, dst, src)
