"""The Ethernet destination a pod's kernel would give an IPv4 packet: its route to the
destination (on-link, or via the gateway), then the next hop's MAC from its neighbour
table, resolved by the kernel itself when it has no valid entry, as a packet would
have it resolved (RTM_NEWNEIGH with NTF_USE runs the kernel's neighbour_event_send)."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from dataplane.cluster import netns
from dataplane.cluster.plan import PodPlan
from dataplane.cluster.rtmessages import ndmsg, rtmsg
from dataplane.cluster.rtnl import RTM_GETNEIGH, RTM_GETROUTE, Batch, NetlinkError, get
from dataplane.names import format_mac

BROADCAST = "ff:ff:ff:ff:ff:ff"
RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_MULTICAST = 1, 2, 3, 5
ROUTE_KINDS = {2: "the pod's own address", 6: "a blackhole route", 7: "an unreachable route",
               8: "a prohibit route", 9: "a throw route"}
NUD_FAILED = 0x20
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # reachable stale delay probe noarp permanent
# The kernel gives up on a neighbour after mcast_probes (3) who-has a second apart.
RESOLVE_SECONDS = 5.0


@dataclass(frozen=True)
class NextHop:
    """Who the pod sends to (the destination on-link, or its gateway) and at which MAC;
    mac None with why: the pod's kernel would not send the packet."""

    ip: str
    mac: str | None
    why: str | None = None


def next_hop(pod: PodPlan, dst: str,
             resolving: Callable[[str], None] = lambda ip: None) -> NextHop:
    """The next hop of pod's packets to dst, resolved if it must be; resolving(ip) is
    told first which neighbour that is (to watch its ARP exchange)."""
    with netns.socket_in(pod.netns, socket.AF_NETLINK, socket.SOCK_DGRAM,
                         netns.NETLINK_ROUTE) as sock:
        try:
            route = _route(sock, dst)
        except NetlinkError as err:
            return NextHop(dst, None, f"no route in {pod.ref} to {dst}: {err.strerror}")
        kind = route["type"]
        if kind == RTN_BROADCAST:
            return NextHop(dst, BROADCAST)
        if kind == RTN_MULTICAST:
            return NextHop(dst, multicast_mac(dst))
        if kind != RTN_UNICAST:
            what = ROUTE_KINDS.get(kind, f"a route of type {kind}")
            return NextHop(dst, None, f"{pod.ref} does not send to {dst}: {what}")
        via = route.get_attr("RTA_GATEWAY") or dst
        resolving(via)
        return _resolve(sock, pod, route.get_attr("RTA_OIF"), via)


def multicast_mac(ip: str) -> str:
    """01:00:5e and the group's low 23 bits (RFC 1112)."""
    low = int(IPv4Address(ip)) & 0x7FFFFF
    return format_mac(b"\x01\x00\x5e" + low.to_bytes(3, "big"))


def _route(sock: socket.socket, dst: str):
    msg = rtmsg()
    msg["family"], msg["dst_len"] = socket.AF_INET, 32
    msg["attrs"] = [("RTA_DST", dst)]
    return get(sock, msg, RTM_GETROUTE)


def _neighbour(sock: socket.socket, index: int, ip: str):
    msg = ndmsg()
    msg["family"], msg["ifindex"] = socket.AF_INET, index
    msg["attrs"] = [("NDA_DST", ip)]
    try:
        return get(sock, msg, RTM_GETNEIGH)
    except NetlinkError as err:
        if err.errno == errno.ENOENT:
            return None
        raise


def _resolve(sock: socket.socket, pod: PodPlan, index: int, ip: str) -> NextHop:
    """Use the neighbour as a packet does, then wait for the kernel's verdict on it."""
    use = Batch(sock, pod.ref)
    use.neigh_use(index, ip)
    use.send()
    deadline = time.monotonic() + RESOLVE_SECONDS
    while True:
        entry = _neighbour(sock, index, ip)
        state = entry["state"] if entry else 0
        if state & NUD_VALID:
            return NextHop(ip, entry.get_attr("NDA_LLADDR"))
        if state & NUD_FAILED or time.monotonic() > deadline:
            return NextHop(ip, None, f"{pod.ref} could not resolve its next hop {ip} "
                                     "(no answer to who-has)")
        time.sleep(0.01)
