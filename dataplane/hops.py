"""A packet's hops: picked out of everything recorded, and shown to a person or a machine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dataplane import traffic
from dataplane.tracer import Hop


def trail(hops: list[Hop]) -> list[Hop]:
    """An exchange's hops (picked out by its keys) in time order, without backlog hops."""
    return without_backlog(sorted(hops, key=lambda h: h.ts))


def without_backlog(hops: list[Hop]) -> list[Hop]:
    """hops without each netif_rx that a netif_receive_skb of the same skb and device
    follows (the packet queued to a backlog, then received)."""
    received = {(h.skb, h.netns, h.ifindex) for h in hops if h.func == "netif_receive_skb"}
    return [h for h in hops
            if not (h.func == "netif_rx" and (h.skb, h.netns, h.ifindex) in received)]


def hop_dict(hop: Hop) -> dict[str, Any]:
    f = hop.frame
    vxlan = None
    if f is not None and f.vni is not None:
        vxlan = {"vni": f.vni, "port": f.dport, "outer_src": f.src, "outer_dst": f.dst,
                 "inner_src": f.inner.src if f.inner else None,
                 "inner_dst": f.inner.dst if f.inner else None}
    return {"at": hop.at, "netns": hop.netns, "device": hop.device, "dir": hop.dir,
            "func": hop.func, "len": hop.length, "src": f.src if f else None,
            "dst": f.dst if f else None, "proto": f.proto if f else None, "vxlan": vxlan,
            "drop_reason": hop.drop_reason}


def describe(frame) -> str:
    if frame is None:
        return "?"
    if frame.src is None:  # neither IPv4 nor ARP
        return f"{frame.eth_src} > {frame.eth_dst} ethertype 0x{frame.ethertype:04x}"
    text = f"{frame.src} > {frame.dst} {frame.proto}"
    if frame.vlans:
        text = f"vlan {'.'.join(map(str, frame.vlans))} {text}"
    if frame.fragment:
        more = "+" if frame.more_fragments else ""
        text += f" frag id {frame.ip_id} offset {frame.frag_offset}{more}"
    if frame.icmp_type is not None:
        text += f" type {frame.icmp_type} id {frame.icmp_id}"
    elif frame.sport is not None:
        text += f" {frame.sport} > {frame.dport}"
        if frame.tcp_flags is not None:
            text += " [" + "".join(c for bit, c in zip(range(6), "FSRP.U")
                                   if frame.tcp_flags >> bit & 1) + "]"
    if frame.vni is not None:
        text += f" vxlan vni {frame.vni} [{describe(frame.inner)}]"
    return text


ICMP_ECHO_REQUEST = 8
ARP_REQUEST = 1


def direction(frame, sender_ip: str | None = None) -> str:
    """request or reply, told by the packet itself (echo or echo reply, who-has or is-at,
    to or from the service port), so a pod's exchange with itself reads right; other
    packets by their source address: sender_ip's are requests."""
    if frame is None:
        return "?"
    if frame.icmp_type is not None:  # an ICMP error, like a reply, goes back to the sender
        return "request" if frame.icmp_type == ICMP_ECHO_REQUEST else "reply"
    if frame.arp_op is not None:
        return "request" if frame.arp_op == ARP_REQUEST else "reply"
    if traffic.SERVICE_PORT in (frame.sport, frame.dport):
        return "request" if frame.dport == traffic.SERVICE_PORT else "reply"
    return "request" if frame.src == sender_ip else "reply"


def hop_table(hops: list[Hop], sender_ip: str | None = None,
              leg: Callable[[Hop], str] | None = None) -> list[str]:
    """Numbered rows, one per hop, each with its packet's direction (see direction()),
    or what leg(hop) names it."""
    row = "{:>3}  {:<7} {:<14} {:<14} {:<5} {:<19} {:>5}  {}"
    lines = [row.format("#", "PACKET", "AT", "DEVICE", "DIR", "FUNC", "LEN", "HEADERS")]
    for i, hop in enumerate(hops, 1):
        name = leg(hop) if leg else direction(hop.flow_frame(), sender_ip)
        headers = describe(hop.frame)
        if hop.drop_reason:
            headers += f"  DROPPED: {hop.drop_reason}"
        lines.append(row.format(i, name, hop.at, hop.device, hop.dir, hop.func, hop.length,
                                headers))
    return lines
