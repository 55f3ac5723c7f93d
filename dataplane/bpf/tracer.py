"""Hop records from the loaded probes: a context manager that loads, watches the
cluster's namespaces, polls, decodes, counts lost events and always detaches."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import suppress

from dataplane.bpf import compiled, kernel, loader, packet, ringbuf
from dataplane.cluster import netns
from dataplane.cluster.plan import Plan
from dataplane.names import IP_PROTOCOLS, Direction, format_mac
from dataplane.records import Flow, Frame, Hop

# struct hop_event's kind -> (the tracepoint that saw it, direction)
KINDS: dict[int, tuple[str, Direction]] = {
    1: ("net_dev_start_xmit", "tx"), 2: ("netif_receive_skb", "rx"), 3: ("netif_rx", "rx"),
    4: ("kfree_skb", "drop")}
HOP_FUNC = 5  # a kprobe: `reason` holds the index of the function in KPROBE_SYMBOLS
LEARN_KINDS = {6: "br_fdb_update", 7: "br_fdb_add"}  # data: MAC, then VLAN id
PERF_PAGES_PER_CPU = 64
CFG_ALL, CFG_VXLAN_PORT = 0, 1  # enum config_slot in probes/hops.c
QUEUED = "raw_tracepoint:netif_rx"  # recorded only when recording everything
# struct hop_event in probes/hops.c
_EVENT = struct.Struct("<QQIIIIHH16s128s")


def _address(ip: str) -> int:
    """An IPv4 address as the probes' maps hold it (network order, read as a host u32)."""
    return int.from_bytes(socket.inet_aton(ip), sys.byteorder)


def _proto_number(proto: str) -> int:
    """A flow's protocol as the probes' maps key it: its IP protocol number, ARP 0."""
    return IP_PROTOCOLS.get(proto, 0)


def _inodes(plan: Plan) -> dict[int, str]:
    """Namespace inode -> label, for the cluster's namespaces that exist: one deleted by
    hand is the audit's and the flows' finding, not a reason to trace nothing."""
    found = {}
    for name, label in plan.where().items():
        try:
            found[os.stat(netns.path(name)).st_ino] = label
        except FileNotFoundError:
            continue
    return found


class Tracer:
    """Trace every packet in the given namespaces while the context is open.

    Hops carry the plan's labels for where they were seen (node-0, node-0/pod-1, underlay).
    record_all: every packet there (like tcpdump), or only those of the flows
    passed to watch() (the cheap way: everything else is filtered in the kernel).
    A thread drains the buffer every POLL_MS (and when take() asks), keeping each
    event as raw bytes (the hot path), and hands them over between two polls; take()
    decodes them. The buffer must hold a poll period's events: the default ring
    buffer holds ~43000, a verify wave at most WAVE_EVENTS.
    """

    POLL_MS = 10

    def __init__(self, plan: Plan, record_all: bool = True, buffer: loader.Buffer | None = None,
                 pages: int | None = None, recipe: loader.Recipe | None = None):
        self._where_by_inode = _inodes(plan)
        self._vxlan_port = plan.spec.port
        self._record_all = record_all
        self._buffer = buffer
        self._pages = pages  # the ring buffer's size, when not the default
        self._recipe = recipe  # loader.prepare() made by the caller
        self._watched: list[tuple[object, object]] = []  # (map, key) added by watch()
        self._flows: set[Flow] = set()  # watched, their keys in _watched
        self._tagged: set[int] = set()  # tags whose bit is set (a bit is never cleared)
        self._frames: dict[bytes, Frame | None] = {}  # decoded captures, during take()
        self._devices: dict[bytes, str] = {}  # device names as events carry them
        self._raw: list[bytes] = []
        self.loaded: loader.Loaded | None = None
        self._reasons: dict[int, str] = {}
        self._handover = threading.Condition()
        self._wanted = 0  # take() calls waiting for the poller to hand the events over
        self._handed: list[bytes] | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._detacher: threading.Thread | None = None
        self._lost_at_exit: int | None = None
        self._perf_lost = 0  # what the perf buffer reported lost (perf buffers only)
        self._reader: ringbuf.Reader | None = None  # the ring buffer, where read directly

    def __enter__(self) -> "Tracer":
        self.loaded = loader.load(self._buffer, self._pages,
                                  later=() if self._record_all else (QUEUED,), recipe=self._recipe)
        try:
            self._reasons = self.loaded.layout.drop_reasons
            watched = self.loaded.bpf[b"watched"]
            for inode in self._where_by_inode:
                watched[ctypes.c_uint32(inode)] = ctypes.c_uint8(1)
            self.record_everything(self._record_all)
            config = self.loaded.bpf[b"config"]
            config[ctypes.c_int(CFG_VXLAN_PORT)] = ctypes.c_uint32(socket.htons(self._vxlan_port))
            events = self.loaded.bpf[b"events"]
            if self.loaded.buffer == "ring" and ringbuf.usable():
                self._reader = ringbuf.Reader(events.map_fd)
            elif self.loaded.buffer == "ring":
                events.open_ring_buffer(self._on_event)
            else:
                events.open_perf_buffer(self._on_event, page_cnt=PERF_PAGES_PER_CPU,
                                        lost_cb=self._on_perf_lost)
        except BaseException:
            self._close()
            raise
        self._poller = threading.Thread(target=self._poll, name="tracer-poll", daemon=True)
        self._poller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in (self._poller, self._detacher):
            if thread is not None:
                thread.join()
        if self.loaded is not None:
            self._lost_at_exit = self.lost
            self._close()

    def _close(self) -> None:
        try:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        finally:
            self.loaded.close()

    def record_everything(self, on: bool) -> None:
        """Switch between recording every packet and only the watched flows'. A watched
        flow's trail needs no netif_rx hop (its netif_receive_skb follows), so netif_rx
        is attached only while recording everything: detached, a packet queued to a
        backlog (every veth crossing) runs no program that would return at once."""
        self.loaded.bpf[b"config"][ctypes.c_int(CFG_ALL)] = ctypes.c_uint32(int(on))
        attached = QUEUED in self.loaded.attached
        if not on and attached:
            self.loaded.detach(QUEUED)
        elif on and not attached and QUEUED not in self.loaded.skipped:
            try:
                self.loaded.attach(QUEUED)
            except loader.ProbeRefused as err:
                self.loaded.skipped[QUEUED] = str(err)

    def detach_soon(self) -> None:
        """Stop recording: the probes are detached by a thread of their own while the
        caller goes on (a detach waits for the kernel's other users of the tracepoint,
        tens of ms); the maps stay readable (lost, unwatch()) until the context ends."""
        self._stop.set()
        self._detacher = threading.Thread(target=self._detach, name="tracer-detach")
        self._detacher.start()

    def _detach(self) -> None:
        """A probe that fails to detach here is left to the context's end, which detaches
        what is left (and raises what fails again)."""
        with suppress(Exception):  # bcc raises plain Exception
            for probe in self.loaded.attached:
                self.loaded.detach(probe)

    def _tag(self, tag: int) -> None:
        """Let packets carrying tag be looked up (a bit per tag, tested before any hash).
        A pod's ping socket tags all its echoes alike: its bit is set once."""
        if tag in self._tagged:
            return
        self._tagged.add(tag)
        tags = self.loaded.bpf[b"tags"]
        word = ctypes.c_int(tag >> 6)
        tags[word] = ctypes.c_uint64(tags[word].value | 1 << (tag & 63))

    def watch(self, flow: Flow) -> None:
        """Record the packets of flow, both ways (and ICMP errors about them)."""
        self.watch_all([flow])

    def watch_all(self, flows: Iterable[Flow]) -> None:
        """watch() each of flows not watched already, the keys of them all written at
        once (a wave's flows, named before its first packet is sent: Verifier.wave)."""
        table, ends = self.loaded.bpf[b"flows"], self.loaded.bpf[b"ends"]
        keys, end_keys = [], []
        for flow in flows:
            if flow in self._flows:
                continue
            self._flows.add(flow)
            self._tag(flow.tag)
            tag, proto = socket.htons(flow.tag), _proto_number(flow.proto)
            src, dst = _address(flow.src), _address(flow.dst)
            for a, b in ((src, dst), (dst, src)):
                key = table.Key()
                key.saddr, key.daddr, key.tag, key.proto = a, b, tag, proto
                keys.append(key)
            if flow.proto != "arp":  # the receiving end, for packets NATed on the way
                end = ends.Key()
                end.addr, end.tag, end.proto = dst, tag, proto
                end_keys.append(end)
        for where, added in ((table, keys), (ends, end_keys)):
            self._watched += [(where, key) for key in added]  # before: a failure unwatches them
            compiled.update_all(where, added, ctypes.c_uint8(1))

    def watch_fragments(self, src: str, dst: str, proto: int, ip_id: int) -> None:
        """Record every fragment of the datagram (IP protocol number proto) src sends dst
        with IP id ip_id: past the first, a fragment has no ports to match a flow by."""
        flows = self.loaded.bpf[b"flows"]
        self._tag(ip_id)
        key = flows.Key()
        key.saddr, key.daddr = _address(src), _address(dst)
        key.tag, key.proto, key.by_id = socket.htons(ip_id), proto, 1
        flows[key] = ctypes.c_uint8(1)
        self._watched.append((flows, key))

    def unwatch(self) -> None:
        """Stop recording every flow watched so far: the maps stay small however many
        flows a run judges (a tag's bit stays set: it only lets a packet be looked up)."""
        for table, key in self._watched:
            try:
                del table[key]
            except KeyError:
                pass  # shared by two flows (reversed, or to one end): deleted already
        self._watched.clear()
        self._flows.clear()

    def _poll(self) -> None:
        """The only consumer of the buffer."""
        while not self._stop.is_set():
            self._poll_once()
            with self._handover:
                if self._wanted and self._handed is None:
                    self._consume()
                    self._handed, self._raw = self._raw, []
                    self._handover.notify_all()

    def _on_event(self, ctx: object, data: int, size: int) -> None:
        self._raw.append(ctypes.string_at(data, size))

    def _on_perf_lost(self, count: int) -> None:
        self._perf_lost += count

    def _poll_once(self) -> None:
        if self._reader is not None:
            # Woken by the clock or by take(), never by the kernel: woken at each new
            # record, this thread would take the GIL from the sender thousands of times
            # a second. The buffer holds far more than a poll period's events.
            with self._handover:
                self._handover.wait_for(lambda: self._wanted and self._handed is None,
                                        timeout=self.POLL_MS / 1000)
            self._raw += self._reader.take()
        elif self.loaded.buffer == "ring":
            self.loaded.bpf.ring_buffer_poll(timeout=self.POLL_MS)
        else:
            self.loaded.bpf.perf_buffer_poll(timeout=self.POLL_MS)

    def _consume(self) -> None:
        if self._reader is not None:
            self._raw += self._reader.take()
        elif self.loaded.buffer == "ring":
            self.loaded.bpf.ring_buffer_consume()
        else:
            self.loaded.bpf.perf_buffer_consume()

    def take(self, settle_ms: int = 0) -> list[Hop]:
        """Every hop recorded since the last take(), in kernel time order, the events of
        the last packets given settle_ms to arrive (those there are decoded meanwhile)."""
        settled = time.monotonic() + settle_ms / 1000
        self._frames: dict[bytes, Frame | None] = {}
        try:
            hops = [self._decode(r) for r in self._handed_over()]
            time.sleep(max(0.0, settled - time.monotonic()))
            hops += [self._decode(r) for r in self._handed_over()]
            return sorted(hops, key=lambda h: h.ts)
        finally:
            self._frames = {}  # a take's worth at most

    def _handed_over(self) -> list[bytes]:
        """The events the poller read since it last handed some over."""
        with self._handover:
            self._wanted += 1
            self._handover.notify_all()  # a poller reading the memory wakes for it
            handed = self._handover.wait_for(lambda: self._handed is not None, timeout=10)
            self._wanted -= 1
            if not handed:
                raise RuntimeError("the ring buffer poller stopped handing events over")
            raw, self._handed = self._handed, None
        return raw

    def _decode(self, raw: bytes) -> Hop:
        ts, skb, inode, ifindex, length, reason, kind, caplen, dev, data = \
            _EVENT.unpack_from(raw)
        where = self._where_by_inode.get(inode) or str(inode)
        device = self._devices.get(dev)
        if device is None:
            device = self._devices[dev] = dev.split(b"\0", 1)[0].decode(errors="replace")
        if kind in LEARN_KINDS:
            mac = format_mac(data[:6])
            return Hop(ts=ts, skb=0, netns=inode, at=where, ifindex=ifindex, device=device,
                       func=LEARN_KINDS[kind], dir="learn", length=0, frame=None,
                       learned=f"{mac} vlan {int.from_bytes(data[6:8], sys.byteorder)}")
        if kind == HOP_FUNC:
            func, direction = kernel.KPROBE_SYMBOLS[reason], "fn"
        else:
            func, direction = KINDS.get(kind, ("?", "?"))
        capture = data[:caplen]
        dropped = self._reasons.get(reason, str(reason)) if direction == "drop" else None
        # by position (ts, skb, netns, at, ifindex, device, func, dir, length, frame,
        # drop_reason, learned, raw): a call by keyword costs twice as much, once per event
        return Hop(ts, skb, inode, where, ifindex, device, func, direction, length,
                   self._frame(capture), dropped, None, capture)

    def _frame(self, data: bytes) -> Frame | None:
        """Decoded once per distinct capture: a packet is seen unchanged at several hops
        (a veth's two ends, a bridge port, the underlay's ports)."""
        frame = self._frames.get(data)
        if frame is None and data not in self._frames:
            frame = self._frames[data] = packet.decode(data, self._vxlan_port, self._inner)
        return frame

    def _inner(self, data: bytes) -> Frame | None:
        """The frame a VXLAN packet carries: its VTEP's capture decoded it already, unless
        that capture was itself VXLAN on our port (then decoded again, on no port)."""
        frame = self._frames.get(data)
        if frame is None or frame.inner is not None:
            return packet.decode(data)
        return frame

    @property
    def lost(self) -> int:
        """Events that found the buffer full (also readable after the context).

        With a perf buffer the kernel reports its lost records too; they are the same
        failed writes the program counts (the same number, overflowing one-page
        buffers), so the larger is taken: adding them would count each loss twice."""
        if self._lost_at_exit is not None:
            return self._lost_at_exit
        counted = sum(int(v) for v in self.loaded.bpf[b"lost"].getvalue(ctypes.c_int(0)))
        return max(counted, self._perf_lost)
