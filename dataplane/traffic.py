"""Traffic between pods from sockets opened inside their namespaces by this one
process (no process per packet): an ICMP echo, a UDP datagram and its answer,
or a TCP handshake.

Each exchange is tagged (ICMP echo id, the client's UDP/TCP port) so its hops
can be picked out of everything the probes saw; a Sender keeps its sockets,
one per pod and purpose, for as many exchanges as it is asked for.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dataplane import netns
from dataplane.plan import PodPlan

SERVICE_PORT = 7777  # where the destination pod listens for UDP and TCP
# Seconds to wait for an answer: only a failing exchange waits it out. Emulated machines
# (the VM lane runs under QEMU's TCG, ~20x slower) raise it through the environment.
TIMEOUT = float(os.environ.get("DATAPLANE_ANSWER_TIMEOUT", "0.5"))
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14  # linux/in.h: always set DF
UDP_IP_HEADERS = 28
ETH_P_ARP = 0x0806


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
    tag: int
    answered: bool
    size: int | None = None  # IP length of a DF probe; None for an ordinary exchange
    refused_mtu: int | None = None  # the MTU the sender's kernel refused it with
    answer_mac: str | None = None  # an ARP probe's: who answered
    error: str | None = None  # what the kernel refused while preparing, sending or receiving

    @property
    def target(self) -> str:
        """Who the request is for: the destination pod, but for ARP across nodes, the
        source pod's gateway (pods on other nodes are not on its link)."""
        if self.proto == "arp" and self.src.node != self.dst.node:
            return str(self.src.gateway)
        return str(self.dst.ip)

    @property
    def key(self) -> tuple[frozenset[str], str, int]:
        return frozenset((str(self.src.ip), self.target)), self.proto, self.tag

    @property
    def end(self) -> tuple[str, str, int]:
        """The receiving end and the tag: what a packet of this exchange keeps when NAT
        rewrote its other address (the source, as a masquerading node does)."""
        return self.target, self.proto, self.tag

    def matches(self, frame) -> bool:
        """Whether a decoded pod-to-pod frame belongs to this exchange, either way, NATed
        or not."""
        return frame is not None and (self.key in frame_keys(frame)
                                      or self.end in frame_ends(frame))


def _tags(frame) -> tuple[str, tuple[int, ...]]:
    """The protocol and the tags a frame could carry (a port could be either end's)."""
    if frame.proto == "icmp" and frame.icmp_id is not None:
        return "icmp", (frame.icmp_id,)
    if frame.proto in ("udp", "tcp") and frame.sport is not None:
        return frame.proto, (frame.sport, frame.dport)
    if frame.proto == "arp":
        return "arp", (0,)
    return "", ()


def frame_keys(frame) -> tuple[tuple[frozenset[str], str, int], ...]:
    """The exchange keys a frame could belong to; an ICMP error belongs to the exchange
    of the packet it quotes."""
    if frame.quoted is not None:
        return frame_keys(frame.quoted)
    proto, tags = _tags(frame)
    return tuple((frozenset((frame.src, frame.dst)), proto, tag) for tag in tags)


def frame_ends(frame) -> tuple[tuple[str, str, int], ...]:
    """The exchange ends (address, protocol, tag) a frame could belong to."""
    if frame.quoted is not None:
        return frame_ends(frame.quoted)
    proto, tags = _tags(frame)
    if proto == "arp":  # ARP is never NATed: its pair is its key
        return ()
    return tuple((address, proto, tag) for address in (frame.src, frame.dst) for tag in tags)


class ProbeError(OSError):
    """A kernel refusal, named by the step and the pod it happened in."""

    def __str__(self) -> str:
        return self.strerror


def _describe(err: OSError) -> str:
    if isinstance(err, ProbeError) or not err.errno:
        return str(err)
    return f"[Errno {err.errno}] {err.strerror}"


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Name the step and the pod in a kernel refusal ("udp-server socket in node-1/pod-1:
    [Errno 99] Cannot assign requested address"), keeping its errno."""
    try:
        yield
    except (ProbeError, TimeoutError):
        raise
    except OSError as err:
        raise ProbeError(err.errno, f"{what}: {_describe(err)}") from None


def _wait(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


class Sender:
    """Exchanges between pods, reusing one socket per pod and purpose."""

    def __init__(self) -> None:
        self._sockets: dict[tuple[str, str], socket.socket] = {}
        self._sequence = itertools.count(1)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _socket(self, pod: PodPlan, purpose: str) -> socket.socket:
        """A bound socket of pod's: "ping", "udp-client", "udp-server", "tcp-server", or
        "udp-df-SIZE" (one per size, so that each size of probe is a flow of its own)."""
        key = (pod.netns, purpose)
        if key not in self._sockets:
            with _step(f"{purpose} socket in {pod.ref}"):
                self._sockets[key] = self._open(pod, purpose)
        return self._sockets[key]

    @staticmethod
    def _open(pod: PodPlan, purpose: str) -> socket.socket:
        if purpose == "arp":  # ARP frames in and out of the pod's eth0
            sock = netns.socket_in(pod.netns, socket.AF_PACKET, socket.SOCK_RAW,
                                   socket.htons(ETH_P_ARP))
            address: tuple = ("eth0", 0)
        else:
            kind, proto = {"ping": (socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
                           "tcp-server": (socket.SOCK_STREAM, 0)}.get(purpose,
                                                                     (socket.SOCK_DGRAM, 0))
            sock = netns.socket_in(pod.netns, socket.AF_INET, kind, proto)
            address = (str(pod.ip), SERVICE_PORT if purpose.endswith("server") else 0)
        try:
            if purpose == "tcp-server":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if purpose.startswith("udp-df"):
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            sock.bind(address)
            if purpose == "tcp-server":
                sock.listen(64)
        except OSError:
            sock.close()
            raise
        return sock

    def exchange(self, src: PodPlan, dst: PodPlan, proto: str,
                 watch: Watch = _no_watch) -> Exchange:
        """An exchange; whatever the kernel refuses on the way (no route, no address, no
        buffer space, a namespace gone) is recorded in it, never raised: on a broken
        network that refusal is the evidence."""
        senders = {"icmp": self._icmp, "udp": self._udp, "tcp": self._tcp, "arp": self._arp}
        return self._guarded(src, dst, proto, None, lambda w: senders[proto](src, dst, w), watch)

    def sized(self, src: PodPlan, dst: PodPlan, size: int, watch: Watch = _no_watch) -> Exchange:
        """A UDP datagram of IP length size with DF set, answered in kind: sizes around
        the MTU show where a path refuses, fragments or drops."""
        return self._guarded(src, dst, "udp", size, lambda w: self._sized(src, dst, size, w),
                             watch)

    def _guarded(self, src: PodPlan, dst: PodPlan, proto: str, size: int | None,
                 send: Callable[[Watch], Exchange], watch: Watch) -> Exchange:
        flows: list[Flow] = []

        def noted(flow: Flow) -> None:
            flows.append(flow)
            watch(flow)

        try:
            return send(noted)
        except OSError as err:
            tag = flows[-1].tag if flows else 0
            what = _describe(err) if isinstance(err, ProbeError) \
                else f"{src.ref} -> {dst.ref}: {_describe(err)}"
            return Exchange(src, dst, proto, tag, False, size, error=what)

    def _icmp(self, src: PodPlan, dst: PodPlan, watch: Watch) -> Exchange:
        """An echo from a ping socket: the kernel sets its id (the socket's port)
        and checksum; replies are told apart by sequence number."""
        sock = self._socket(src, "ping")
        tag = sock.getsockname()[1]
        watch(Flow(str(src.ip), str(dst.ip), "icmp", tag))
        seq = next(self._sequence) & 0xFFFF
        with _step(f"send from {src.ref}"):
            sock.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, seq) + b"dataplane", (str(dst.ip), 0))
        answered = False
        while not answered and _wait(sock, TIMEOUT):
            reply, (peer, _) = sock.recvfrom(2048)
            answered = reply[0] == 0 and peer == str(dst.ip) and \
                struct.unpack_from("!H", reply, 6)[0] == seq
        return Exchange(src, dst, "icmp", tag, answered)

    def _sized(self, src: PodPlan, dst: PodPlan, size: int, watch: Watch) -> Exchange:
        client = self._socket(src, f"udp-df-{size}")
        try:
            return self._udp(src, dst, watch, client, size)
        except ProbeError as err:
            if err.errno != errno.EMSGSIZE:
                raise
            client.connect((str(dst.ip), SERVICE_PORT))  # IP_MTU needs a route to ask about
            mtu = client.getsockopt(socket.IPPROTO_IP, IP_MTU)
            return Exchange(src, dst, "udp", client.getsockname()[1], False, size, mtu)

    def _udp(self, src: PodPlan, dst: PodPlan, watch: Watch, client: socket.socket | None = None,
             size: int | None = None) -> Exchange:
        client = client or self._socket(src, "udp-client")
        server = self._socket(dst, "udp-server")
        tag = client.getsockname()[1]
        watch(Flow(str(src.ip), str(dst.ip), "udp", tag))
        payload = b"dataplane %d " % next(self._sequence)
        if size is not None:
            payload = payload.ljust(size - UDP_IP_HEADERS, b".")
        with _step(f"send from {src.ref}"):
            client.sendto(payload, (str(dst.ip), SERVICE_PORT))
        answered = False
        while _wait(server, TIMEOUT):
            data, peer = server.recvfrom(65536)
            if data == payload:  # the one we just sent, not a late earlier one
                server.sendto(data, peer)
                break
        while not answered and _wait(client, TIMEOUT):
            answered = client.recv(65536) == payload
        return Exchange(src, dst, "udp", tag, answered, size)

    def _tcp(self, src: PodPlan, dst: PodPlan, watch: Watch) -> Exchange:
        server = self._socket(dst, "tcp-server")
        with netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_STREAM) as client:
            client.bind((str(src.ip), 0))
            tag = client.getsockname()[1]
            watch(Flow(str(src.ip), str(dst.ip), "tcp", tag))
            client.settimeout(TIMEOUT)
            try:
                with _step(f"connect from {src.ref}"):
                    client.connect((str(dst.ip), SERVICE_PORT))
                answered = True
            except TimeoutError:  # unanswered; a refusal (RST, ICMP error, local) is raised
                answered = False
        if answered and _wait(server, TIMEOUT):
            server.accept()[0].close()
        return Exchange(src, dst, "tcp", tag, answered)

    def _arp(self, src: PodPlan, dst: PodPlan, watch: Watch) -> Exchange:
        """A who-has crafted with scapy, sent on the pod's eth0 from a packet socket."""
        from scapy.layers.l2 import ARP, Ether  # only ARP probes pay for importing scapy

        probe = Exchange(src, dst, "arp", 0, False)
        target = probe.target
        sock = self._socket(src, "arp")
        watch(Flow(str(src.ip), target, "arp", 0))
        with _step(f"send from {src.ref}"):
            sock.send(bytes(Ether(src=src.mac, dst="ff:ff:ff:ff:ff:ff")
                            / ARP(op=1, hwsrc=src.mac, psrc=str(src.ip), pdst=target)))
        while _wait(sock, TIMEOUT):
            frame = sock.recv(2048)
            reply = ARP(frame[14:])
            if reply.op == 2 and reply.psrc == target and reply.pdst == str(src.ip):
                return Exchange(src, dst, "arp", 0, True, answer_mac=reply.hwsrc)
        return probe


def exchange(src: PodPlan, dst: PodPlan, proto: str, watch: Watch = _no_watch) -> Exchange:
    """One exchange from sockets opened for it."""
    with Sender() as sender:
        return sender.exchange(src, dst, proto, watch)
