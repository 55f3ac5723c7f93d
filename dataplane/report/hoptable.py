"""A packet's hops shown to a person (a numbered table, a line per hop) or a machine (a
dict per hop), and `dataplane trace`'s result in both forms."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dataplane.names import ARP_REQUEST, ECHO
from dataplane.records import Frame, Hop
from dataplane.traffic import prober

if TYPE_CHECKING:  # only named here: a hop table needs no verifier loaded
    from dataplane.verify.verifier import TraceResult


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


def describe(frame: Frame | None) -> str:
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


def direction(frame: Frame | None, sender_ip: str | None = None) -> str:
    """request or reply, told by the packet itself (echo or echo reply, who-has or is-at,
    to or from the service port), so a pod's exchange with itself reads right; other
    packets by their source address: sender_ip's are requests."""
    if frame is None:
        return "?"
    if frame.icmp_type is not None:  # an ICMP error, like a reply, goes back to the sender
        return "request" if frame.icmp_type == ECHO else "reply"
    if frame.arp_op is not None:
        return "request" if frame.arp_op == ARP_REQUEST else "reply"
    if frame.dport in prober.SERVICE_PORTS:
        return "request"
    if frame.sport in prober.SERVICE_PORTS:
        return "reply"
    return "request" if frame.src == sender_ip else "reply"


def hop_table(hops: list[Hop], sender_ip: str | None = None,
              leg: Callable[[Hop], str] | None = None) -> list[str]:
    """Numbered rows, one per hop, each with its packet's direction (see direction()),
    or what leg(hop) names it."""
    row = "{:>3}  {:<7} {:<14} {:<14} {:<5} {:<19} {:>5}  {}"
    lines = [row.format("#", "PACKET", "AT", "DEVICE", "DIR", "FUNC", "LEN", "HEADERS")]
    for i, hop in enumerate(hops, 1):
        name = leg(hop) if leg else direction(hop.flow, sender_ip)
        headers = describe(hop.frame)
        if hop.drop_reason:
            headers += f"  DROPPED: {hop.drop_reason}"
        lines.append(row.format(i, name, hop.at, hop.device, hop.dir, hop.func, hop.length,
                                headers))
    return lines


def trace_dict(result: TraceResult) -> dict[str, Any]:
    ex = result.exchange
    return {"src": ex.src.ref, "dst": ex.dst.ref, "proto": ex.proto, "answered": ex.answered,
            "error": ex.error, "hops": [hop_dict(h) for h in result.hops],
            "lost_events": result.lost_events, "backends": result.backends,
            "skipped_probes": result.skipped}


def trace_text(result: TraceResult) -> str:
    ex = result.exchange
    outcome = "answered" if ex.answered else "NO ANSWER" + (f" ({ex.error})" if ex.error else "")
    skipped = "".join(f"; skipped {probe}: {why}" for probe, why in result.skipped.items())
    return "\n".join([f"{ex.proto} {ex.src.ref} ({ex.src.ip}) -> {ex.dst.ref} ({ex.dst.ip}): "
                      f"{outcome}; {len(result.hops)} hops; backends "
                      f"{', '.join(result.backends)}{skipped}; lost events {result.lost_events}"]
                     + hop_table(result.hops, str(ex.src.ip)))
