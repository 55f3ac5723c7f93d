"""Traffic between pods from sockets opened inside their namespaces by this one
process (no process per packet): an ICMP echo, a UDP datagram and its answer, a TCP
handshake, or an ARP who-has sent from a packet socket.

Each exchange is tagged (ICMP echo id, the client's UDP/TCP port) so its hops can be
picked out of everything the probes saw. A Prober starts exchanges together and waits
for their answers together (a wave pays the answer timeout once), keeping its sockets,
one per pod and purpose, for as many exchanges as it is asked for. Whatever the kernel
refuses on the way is recorded in the exchange, never raised.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import selectors
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial

from dataplane.bpf.packet import ETH_P_ARP
from dataplane.cluster import netns
from dataplane.cluster.plan import PodPlan
from dataplane.names import ARP_REQUEST, SERVICE_PORT, Proto, format_mac
from dataplane.records import Exchange, Flow

# Where the destination pod listens for UDP and TCP: SERVICE_PORT, and SERVICE_PORT + k for
# the k-th of a run's workers (verify/workers.py), each with its own listeners in every pod
SERVICE_PORTS = range(SERVICE_PORT, SERVICE_PORT + 256)
# The echo id of the k-th worker's ping sockets, the same in every pod (the kernel numbers
# ping sockets per namespace: two workers' sockets in two pods would share ids, and one's
# echoes to a pod would look like the other's): out of the service and ephemeral ports,
# whose tag bits the probes share
PING_IDS = range(20000, 20000 + len(SERVICE_PORTS))
# Seconds to wait for an answer: only a failing exchange waits it out. Emulated machines
# (the VM lane runs under QEMU's TCG, many times slower) raise it through the environment.
TIMEOUT = float(os.environ.get("DATAPLANE_ANSWER_TIMEOUT", "0.5"))
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14  # linux/in.h: always set DF
UDP_IP_HEADERS = 28
UDP_BUFFER = 1 << 20  # bytes: a wave's datagrams queued at one pod's socket
MAX_WAITS = 10  # a wave waits at most this many answer timeouts, however much arrives
SEND_BACKOFF = (0.001, 0.01, 0.05, 0.2, None)  # pauses between tries of a send on a full queue


Watch = Callable[[Flow], None]  # told of a flow before its first packet is sent


def _no_watch(flow: Flow) -> None:
    pass


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


def _send(sock: socket.socket, data: bytes, *address) -> None:
    """Send, waiting out a full queue (ENOBUFS, EAGAIN) for a while: the probes must not
    be the cause of their own failures. A refusal that lasts is raised."""
    for pause in SEND_BACKOFF:
        try:
            sock.sendto(data, *address) if address else sock.send(data)
            return
        except OSError as err:
            if err.errno not in (errno.ENOBUFS, errno.EAGAIN) or pause is None:
                raise
        time.sleep(pause)


@dataclass
class Pending:
    """An exchange on its way: its request sent, its answer awaited."""

    src: PodPlan
    dst: PodPlan
    proto: Proto
    size: int | None = None
    tag: int = 0
    token: bytes | int = b""  # what the answer carries: a payload, an echo sequence
    client: socket.socket | None = None  # a TCP exchange's own socket
    done: bool = False
    answered: bool = False
    refused_mtu: int | None = None
    answer_mac: str | None = None
    error: str | None = None
    sent: bool = True
    port: int = SERVICE_PORT  # the destination's, for UDP and TCP

    def exchange(self) -> Exchange:
        return Exchange(self.src, self.dst, self.proto, self.tag, self.answered, self.size,
                        self.refused_mtu, self.answer_mac, self.error, self.sent, self.port)

    def close(self, answered: bool = False, error: str | None = None,
              sent: bool = True) -> None:
        self.done, self.answered, self.error, self.sent = True, answered, error, sent
        if self.client is not None:
            self.client.close()
            self.client = None


class Prober:
    """Exchanges between pods, started together and finished together (a wave pays the
    answer timeout once), reusing one socket per pod and purpose."""

    def __init__(self, worker: int | None = None) -> None:
        """worker: the k-th of a run's workers, with its own ports and echo id."""
        self.port = SERVICE_PORT if worker is None else SERVICE_PORTS[worker]
        self.ping_id = 0 if worker is None else PING_IDS[worker]  # 0: the kernel's choice
        self._sockets: dict[tuple[str, str], socket.socket] = {}
        self._tags: dict[socket.socket, int] = {}  # client sockets' ports (_client)
        self._sequence = itertools.count(1)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._tags.clear()

    def __enter__(self) -> "Prober":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _socket(self, pod: PodPlan, purpose: str) -> socket.socket:
        """A bound, non-blocking socket of pod's: "ping", "udp-client", "udp-server",
        "tcp-server", "arp" or "udp-df-SIZE" (one per size: each size is a flow of its own)."""
        key = (pod.netns, purpose)
        if key not in self._sockets:
            with _step(f"{purpose} socket in {pod.ref}"):
                self._sockets[key] = _open(pod, purpose, self.ping_id if purpose == "ping"
                                           else self.port)
        return self._sockets[key]

    def planned(self, src: PodPlan, dst: PodPlan, proto: Proto,
                size: int | None = None) -> Flow | None:
        """The flow start() will tell watch of, where its tag is known before it sends:
        ICMP and UDP tag by the source's socket (opened here if need be); None for TCP (a
        socket per exchange) and ARP, or when the socket cannot be opened (start() records
        why)."""
        if proto not in ("icmp", "udp"):
            return None
        try:
            return Flow(src.ip_str, dst.ip_str, proto, self._client(src, proto, size)[1])
        except OSError:
            return None

    def _client(self, pod: PodPlan, proto: Proto, size: int | None) -> tuple[socket.socket, int]:
        """pod's ICMP or UDP client socket and the tag its packets carry (its port, bound
        once: asked once)."""
        sock = self._socket(pod, "ping" if proto == "icmp" else _udp_purpose(size))
        if sock not in self._tags:
            self._tags[sock] = sock.getsockname()[1]
        return sock, self._tags[sock]

    def exchange(self, src: PodPlan, dst: PodPlan, proto: Proto, watch: Watch = _no_watch,
                 size: int | None = None) -> Exchange:
        """One exchange, finished before this returns."""
        return self.finish([self.start(src, dst, proto, watch, size)])[0]

    def start(self, src: PodPlan, dst: PodPlan, proto: Proto, watch: Watch = _no_watch,
              size: int | None = None) -> Pending:
        """Send an exchange's request (a DF UDP probe of IP length size, if given).
        Whatever the kernel refuses on the way (no route, no address, no buffer space, a
        namespace gone) is recorded in it, never raised: on a broken network that refusal
        is the evidence."""
        pending = Pending(src, dst, proto, size, port=self.port)
        starts = {"icmp": self._icmp, "udp": self._udp, "tcp": self._tcp, "arp": self._arp}
        try:
            starts[proto](pending, watch)
        except OSError as err:
            what = _describe(err) if isinstance(err, ProbeError) \
                else f"{src.ref} -> {dst.ref}: {_describe(err)}"
            pending.close(error=what, sent=False)
        return pending

    def finish(self, pending: list[Pending]) -> list[Exchange]:
        """Wait for the answers of the started exchanges, echoing UDP at the servers,
        until all are in or the answer timeout has passed with nothing arriving."""
        handlers = self._handlers(pending)
        with selectors.DefaultSelector() as selector:
            for sock, (events, _) in handlers.items():
                selector.register(sock, events)
            now = time.monotonic()
            deadline, cap = now + TIMEOUT, now + TIMEOUT * MAX_WAITS
            while not all(p.done for p in pending):
                # Past the deadline, one last look: what has arrived by then counts.
                left = max(min(deadline, cap) - time.monotonic(), 0)
                ready = selector.select(left)
                for key, _ in ready:
                    handlers[key.fileobj][1]()
                if not left:
                    break
                if ready:  # still coming in: a slow (loaded) machine must not cut answers off
                    deadline = time.monotonic() + TIMEOUT
        for p in pending:
            if not p.done:
                p.close()
        return [p.exchange() for p in pending]

    def _handlers(self, pending: list[Pending]) -> dict[socket.socket, tuple[int, Callable]]:
        """What to do when each socket of the wave is ready."""
        open_ = [p for p in pending if not p.done]
        # what each answer is looked up by: a wave's answers would otherwise each be
        # compared with every exchange of the wave
        echoes = {(p.token, p.dst.ip_str): p for p in open_ if p.proto == "icmp"}
        datagrams = {p.token: p for p in open_ if p.proto == "udp"}
        asking: dict[tuple[bytes, str], list[Pending]] = defaultdict(list)
        for p in open_:
            if p.proto == "arp":
                asking[p.token, p.src.ip_str].append(p)
        handlers: dict[socket.socket, tuple[int, Callable]] = {}
        for p in open_:
            if p.proto == "icmp":
                sock = self._socket(p.src, "ping")
                handlers[sock] = (selectors.EVENT_READ, partial(_on_echo, sock, echoes))
            elif p.proto == "udp":
                client = self._socket(p.src, _udp_purpose(p.size))
                handlers[client] = (selectors.EVENT_READ,
                                    partial(_on_udp_answer, client, datagrams))
                server = self._socket(p.dst, "udp-server")
                handlers[server] = (selectors.EVENT_READ, partial(_on_udp_request, server))
            elif p.proto == "tcp":
                handlers[p.client] = (selectors.EVENT_WRITE, partial(_on_connect, p))
                server = self._socket(p.dst, "tcp-server")
                handlers[server] = (selectors.EVENT_READ, partial(_on_accept, server))
            else:
                sock = self._socket(p.src, "arp")
                handlers[sock] = (selectors.EVENT_READ, partial(_on_arp, sock, asking))
        return handlers

    def _icmp(self, p: Pending, watch: Watch) -> None:
        """An echo from a ping socket: the kernel sets its id (the socket's port) and
        checksum; replies are told apart by peer and sequence number."""
        sock, p.tag = self._client(p.src, "icmp", None)
        watch(Flow(p.src.ip_str, p.dst.ip_str, "icmp", p.tag))
        p.token = next(self._sequence) & 0xFFFF
        with _step(f"send from {p.src.ref}"):
            _send(sock, struct.pack("!BBHHH", 8, 0, 0, 0, p.token) + b"dataplane",
                  (p.dst.ip_str, 0))

    def _udp(self, p: Pending, watch: Watch) -> None:
        """A datagram answered in kind; with a size, of that IP length with DF set: sizes
        around the MTU show where a path refuses, fragments or drops."""
        client, p.tag = self._client(p.src, "udp", p.size)
        self._socket(p.dst, "udp-server")
        watch(Flow(p.src.ip_str, p.dst.ip_str, "udp", p.tag))
        p.token = b"dataplane %d " % next(self._sequence)
        if p.size is not None:
            p.token = p.token.ljust(p.size - UDP_IP_HEADERS, b".")
        try:
            with _step(f"send from {p.src.ref}"):
                _send(client, p.token, (p.dst.ip_str, self.port))
        except ProbeError as err:
            if err.errno != errno.EMSGSIZE:
                raise
            p.refused_mtu = _route_mtu(p.src, p.dst)
            p.close(sent=False)

    def _tcp(self, p: Pending, watch: Watch) -> None:
        """A handshake from a socket of its own (its port is the tag), connecting in the
        background; the server accepts whatever arrives."""
        self._socket(p.dst, "tcp-server")
        with _step(f"tcp client socket in {p.src.ref}"):
            p.client = netns.socket_in(p.src.netns, socket.AF_INET, socket.SOCK_STREAM)
            p.client.setblocking(False)
            p.client.bind((p.src.ip_str, 0))
        p.tag = p.client.getsockname()[1]
        watch(Flow(p.src.ip_str, p.dst.ip_str, "tcp", p.tag))
        with _step(f"connect from {p.src.ref}"):
            err = p.client.connect_ex((p.dst.ip_str, self.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))

    def _arp(self, p: Pending, watch: Watch) -> None:
        """A who-has, as a pod's kernel would send it, from a packet socket on its eth0."""
        target = p.exchange().target
        sock = self._socket(p.src, "arp")
        watch(Flow(p.src.ip_str, target, "arp", 0))
        p.token = target.encode()
        with _step(f"send from {p.src.ref}"):
            _send(sock, who_has(p.src.mac, p.src.ip_str, target))


def who_has(mac: str, ip: str, target: str) -> bytes:
    """A broadcast ARP request (RFC 826) for target from (mac, ip): built with struct,
    not scapy, whose import would be most of a short verify run's start (bench_verify)."""
    sender = bytes.fromhex(mac.replace(":", ""))
    return (b"\xff" * 6 + sender + struct.pack("!HHHBBH", ETH_P_ARP, 1, 0x0800, 6, 4, ARP_REQUEST)
            + sender + socket.inet_aton(ip) + b"\0" * 6 + socket.inet_aton(target))


def _udp_purpose(size: int | None) -> str:
    return "udp-client" if size is None else f"udp-df-{size}"


# A classic BPF socket filter: ARP replies only (opcode 2 at byte 20). The pod's packet
# socket would otherwise queue every who-has its node floods, and its own, and a wave of
# them overflows it, dropping the replies it waits for (PACKET_SOCK_ERROR).
SO_ATTACH_FILTER = 26
ARP_REPLIES = (
    (0x28, 0, 0, 20),  # ldh [20]: the ARP opcode
    (0x15, 0, 1, 2),  # jeq #2, next, drop
    (0x06, 0, 0, 0xFFFF),  # ret: the whole frame
    (0x06, 0, 0, 0),  # ret 0: dropped
)


def _only_arp_replies(sock: socket.socket) -> None:
    code = b"".join(struct.pack("HBBI", *op) for op in ARP_REPLIES)
    program = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(ARP_REPLIES), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


def _open(pod: PodPlan, purpose: str, port: int) -> socket.socket:
    """port: a server's, or a ping socket's echo id (0: the kernel's choice)."""
    if purpose == "arp":  # ARP frames in and out of the pod's eth0
        sock = netns.socket_in(pod.netns, socket.AF_PACKET, socket.SOCK_RAW,
                               socket.htons(ETH_P_ARP))
        address: tuple = (pod.ifname, 0)
    else:
        kind, proto = {"ping": (socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
                       "tcp-server": (socket.SOCK_STREAM, 0)}.get(purpose,
                                                                 (socket.SOCK_DGRAM, 0))
        sock = netns.socket_in(pod.netns, socket.AF_INET, kind, proto)
        address = (pod.ip_str, port if purpose.endswith("server") or purpose == "ping" else 0)
    try:
        sock.setblocking(False)
        if purpose == "tcp-server":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if purpose.startswith("udp") or purpose == "arp":  # a wave's answers must fit
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        if purpose == "arp":
            _only_arp_replies(sock)
        if purpose.startswith("udp-df"):
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        try:
            sock.bind(address)
        except OSError as err:  # the id taken in this pod (another ping): the kernel's then
            if purpose != "ping" or err.errno != errno.EADDRINUSE:
                raise
            sock.bind((address[0], 0))
        if purpose == "tcp-server":
            sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def _route_mtu(src: PodPlan, dst: PodPlan) -> int:
    """The MTU src's kernel holds for dst: what it refused an oversize DF probe with.
    Asked on a socket of its own, so that the probe's socket stays unconnected."""
    with _step(f"mtu of the route {src.ref} -> {dst.ref}"), \
            netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((dst.ip_str, SERVICE_PORT))
        return sock.getsockopt(socket.IPPROTO_IP, IP_MTU)


def _drain(sock: socket.socket, size: int = 65536):
    """Every datagram (with its sender) waiting on a non-blocking socket."""
    while True:
        try:
            yield sock.recvfrom(size)
        except (BlockingIOError, InterruptedError):
            return


def _on_echo(sock: socket.socket, waiting: dict[tuple[int, str], Pending]) -> None:
    """Echo replies, by sequence number and peer."""
    for reply, (peer, _) in _drain(sock, 2048):
        if reply[0] != 0 or len(reply) < 8:
            continue
        p = waiting.get((struct.unpack_from("!H", reply, 6)[0], peer))
        if p is not None and not p.done:
            p.close(answered=True)


def _on_udp_request(server: socket.socket) -> None:
    """The destination pod's service: echo each probe back to its sender."""
    for data, peer in _drain(server):
        if data.startswith(b"dataplane "):
            with suppress(OSError):  # an echo that cannot go is that exchange's missing answer
                _send(server, data, peer)


def _on_udp_answer(client: socket.socket, waiting: dict[bytes, Pending]) -> None:
    """Echoed datagrams, by their payload."""
    for data, _ in _drain(client):
        p = waiting.get(data)
        if p is not None and not p.done:
            p.close(answered=True)


def _on_connect(p: Pending) -> None:
    """A handshake finished: answered, or refused (an RST, an ICMP error, a local error)."""
    if p.done:
        return
    err = p.client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    p.close(answered=not err, error=f"connect from {p.src.ref}: [Errno {err}] "
            f"{os.strerror(err)}" if err else None)


def _on_accept(server: socket.socket) -> None:
    while True:
        try:
            server.accept()[0].close()
        except (BlockingIOError, InterruptedError):
            return


def _on_arp(sock: socket.socket, asking: dict[tuple[bytes, str], list[Pending]]) -> None:
    """Replies only (the pod's socket also sees every who-has its node floods), by who
    answers whom."""
    for frame, _ in _drain(sock, 2048):
        if len(frame) < 42 or frame[20:22] != b"\x00\x02":  # ARP opcode: reply
            continue
        sender, target = socket.inet_ntoa(frame[28:32]), socket.inet_ntoa(frame[38:42])
        waiting = [p for p in asking.get((sender.encode(), target), ()) if not p.done]
        if waiting:  # one who-has per answer: several may ask for the same gateway
            waiting[0].close(answered=True)
            waiting[0].answer_mac = format_mac(frame[22:28])


def exchange(src: PodPlan, dst: PodPlan, proto: Proto, watch: Watch = _no_watch) -> Exchange:
    """One exchange from sockets opened for it."""
    with Prober() as prober:
        return prober.exchange(src, dst, proto, watch)
