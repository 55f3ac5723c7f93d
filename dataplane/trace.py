"""`dataplane trace`: one exchange between two pods and every hop its packets made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataplane import traffic
from dataplane.plan import Plan
from dataplane.tracer import Hop, Tracer

SETTLE_MS = 50  # events of the last packets may still be in flight to the ring buffer


@dataclass
class TraceResult:
    exchange: traffic.Exchange
    hops: list[Hop]
    lost_events: int
    backends: list[str]


def trail(hops: list[Hop], exchange: traffic.Exchange) -> list[Hop]:
    """The exchange's hops in time order. A netif_rx (queued to a backlog) is folded
    into the netif_receive_skb that follows it for the same skb and device."""
    mine = [h for h in hops if exchange.matches(h.flow_frame())]
    received = {(h.skb, h.netns, h.ifindex) for h in mine if h.func == "netif_receive_skb"}
    return [h for h in mine
            if not (h.func == "netif_rx" and (h.skb, h.netns, h.ifindex) in received)]


def run(plan: Plan, src: str, dst: str, proto: str) -> TraceResult:
    with Tracer(plan, record_all=False) as tracer:
        exchange = traffic.exchange(plan.pod(src), plan.pod(dst), proto, watch=tracer.watch)
        hops = trail(tracer.take(SETTLE_MS), exchange)
        return TraceResult(exchange, hops, tracer.lost, tracer.loaded.backends)


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


def as_dict(result: TraceResult) -> dict[str, Any]:
    ex = result.exchange
    return {"src": ex.src.ref, "dst": ex.dst.ref, "proto": ex.proto, "answered": ex.answered,
            "hops": [hop_dict(h) for h in result.hops], "lost_events": result.lost_events,
            "backends": result.backends}


def _describe(frame) -> str:
    if frame is None:
        return "?"
    text = f"{frame.src} > {frame.dst} {frame.proto}"
    if frame.icmp_type is not None:
        text += f" type {frame.icmp_type} id {frame.icmp_id}"
    elif frame.sport is not None:
        text += f" {frame.sport} > {frame.dport}"
        if frame.tcp_flags is not None:
            text += " [" + "".join(c for bit, c in zip(range(6), "FSRP.U")
                                   if frame.tcp_flags >> bit & 1) + "]"
    if frame.vni is not None:
        text += f" vxlan vni {frame.vni} [{_describe(frame.inner)}]"
    return text


def hop_table(hops: list[Hop], sender_ip: str) -> list[str]:
    """Numbered rows, one per hop; a packet from sender_ip is the request, others the reply."""
    row = "{:>3}  {:<7} {:<14} {:<14} {:<5} {:<19} {:>5}  {}"
    lines = [row.format("#", "PACKET", "AT", "DEVICE", "DIR", "FUNC", "LEN", "HEADERS")]
    for i, hop in enumerate(hops, 1):
        flow = hop.flow_frame()
        leg = "request" if flow is not None and flow.src == sender_ip else "reply"
        headers = _describe(hop.frame)
        if hop.drop_reason:
            headers += f"  DROPPED: {hop.drop_reason}"
        lines.append(row.format(i, leg, hop.at, hop.device, hop.dir, hop.func, hop.length,
                                headers))
    return lines


def as_text(result: TraceResult) -> str:
    ex = result.exchange
    return "\n".join([f"{ex.proto} {ex.src.ref} ({ex.src.ip}) -> {ex.dst.ref} ({ex.dst.ip}): "
                      f"{'answered' if ex.answered else 'NO ANSWER'}; {len(result.hops)} hops; "
                      f"backends {', '.join(result.backends)}; lost events {result.lost_events}"]
                     + hop_table(result.hops, str(ex.src.ip)))
