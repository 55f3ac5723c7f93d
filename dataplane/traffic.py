"""Traffic between pods from sockets opened inside their namespaces (no process
per packet): an ICMP echo, a UDP datagram and its answer, or a TCP handshake.

Each exchange is tagged (ICMP id, UDP/TCP source port) so its hops can be
picked out of everything the probes saw.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from dataplane import netns
from dataplane.plan import PodPlan

PROTOCOLS = ("icmp", "udp", "tcp")
SERVICE_PORT = 7777  # where the destination pod listens for UDP and TCP


@dataclass(frozen=True)
class Flow:
    """What identifies an exchange's packets, in the request's direction."""

    src: str
    dst: str
    proto: str
    tag: int  # ICMP echo id, or the client's UDP/TCP port


Watch = Callable[[Flow], None]  # told of a flow before its first packet is sent


def _no_watch(flow: Flow) -> None:
    pass


@dataclass(frozen=True)
class Exchange:
    """One request and its answer between two pods, and how to recognise them."""

    src: PodPlan
    dst: PodPlan
    proto: str
    tag: int  # ICMP echo id, or the client's UDP/TCP source port
    answered: bool

    def matches(self, frame) -> bool:
        """Whether a decoded pod-to-pod frame belongs to this exchange, either way."""
        if frame is None or frame.proto != self.proto:
            return False
        pair = {frame.src, frame.dst}
        if pair != {str(self.src.ip), str(self.dst.ip)}:
            return False
        if self.proto == "icmp":
            return frame.icmp_id == self.tag
        return self.tag in (frame.sport, frame.dport)


def _wait(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def icmp_echo(src: PodPlan, dst: PodPlan, watch: Watch = _no_watch,
              timeout: float = 1.0) -> Exchange:
    """An echo from a ping socket: the kernel picks its id and checksums it."""
    with netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as s:
        s.bind((str(src.ip), 0))
        tag = s.getsockname()[1]  # a ping socket's port is its echo id
        watch(Flow(str(src.ip), str(dst.ip), "icmp", tag))
        s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"dataplane", (str(dst.ip), 0))
        answered = _wait(s, timeout) and s.recv(2048)[0] == 0  # echo reply
    return Exchange(src, dst, "icmp", tag, answered)


def udp_roundtrip(src: PodPlan, dst: PodPlan, watch: Watch = _no_watch,
                  timeout: float = 1.0) -> Exchange:
    with netns.socket_in(dst.netns, socket.AF_INET, socket.SOCK_DGRAM) as server, \
            netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind((str(dst.ip), SERVICE_PORT))
        client.bind((str(src.ip), 0))
        tag = client.getsockname()[1]
        watch(Flow(str(src.ip), str(dst.ip), "udp", tag))
        client.sendto(b"dataplane", (str(dst.ip), SERVICE_PORT))
        answered = False
        if _wait(server, timeout):
            data, peer = server.recvfrom(2048)
            server.sendto(data, peer)
            answered = _wait(client, timeout) and client.recv(2048) == data
    return Exchange(src, dst, "udp", tag, answered)


def tcp_handshake(src: PodPlan, dst: PodPlan, watch: Watch = _no_watch,
                  timeout: float = 1.0) -> Exchange:
    with netns.socket_in(dst.netns, socket.AF_INET, socket.SOCK_STREAM) as server, \
            netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_STREAM) as client:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((str(dst.ip), SERVICE_PORT))
        server.listen(1)
        client.bind((str(src.ip), 0))
        tag = client.getsockname()[1]
        watch(Flow(str(src.ip), str(dst.ip), "tcp", tag))
        client.settimeout(timeout)
        try:
            client.connect((str(dst.ip), SERVICE_PORT))
            answered = True
        except OSError:
            answered = False
    return Exchange(src, dst, "tcp", tag, answered)


SENDERS = {"icmp": icmp_echo, "udp": udp_roundtrip, "tcp": tcp_handshake}


def exchange(src: PodPlan, dst: PodPlan, proto: str, watch: Watch = _no_watch) -> Exchange:
    return SENDERS[proto](src, dst, watch)
