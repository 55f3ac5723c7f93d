"""Hop records from the loaded probes: a context manager that loads, watches the
cluster's namespaces, polls, decodes, counts lost events and always detaches."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from dataplane import btf, kernel, netns, packet, probes

# struct hop_event's kind -> (the tracepoint that saw it, direction)
KINDS = {1: ("net_dev_start_xmit", "tx"), 2: ("netif_receive_skb", "rx"),
         3: ("netif_rx", "rx"), 4: ("kfree_skb", "drop")}
HOP_FUNC = 5  # a kprobe: `reason` holds the index of the function in KPROBE_SYMBOLS


@dataclass(frozen=True)
class Hop:
    ts: int  # ns, monotonic
    skb: int
    netns: int
    at: str  # node-0, node-0/pod-1 or underlay
    ifindex: int
    device: str
    func: str
    dir: str
    length: int
    frame: packet.Frame | None
    drop_reason: str | None = None

    def flow_frame(self) -> packet.Frame | None:
        """The pod-to-pod packet inside: the inner frame of an encapsulated hop."""
        if self.frame is not None and self.frame.inner is not None:
            return self.frame.inner
        return self.frame


class Tracer:
    """Trace every packet in the given namespaces while the context is open.

    where: namespace name -> the label hops carry (node-0, node-0/pod-1, underlay).
    """

    def __init__(self, where: dict[str, str], vxlan_port: int):
        self._where_by_inode = {os.stat(netns.path(name)).st_ino: label
                                for name, label in where.items()}
        self._vxlan_port = vxlan_port
        self._hops: list[Hop] = []
        self.loaded: probes.Loaded | None = None
        self._reasons: dict[int, str] = {}

    def __enter__(self) -> "Tracer":
        self.loaded = probes.load()
        try:
            self._reasons = btf.BTF.load().enum("skb_drop_reason")
            watched = self.loaded.bpf[b"watched"]
            for inode in self._where_by_inode:
                watched[ctypes.c_uint32(inode)] = ctypes.c_uint8(1)
            self._events = self.loaded.bpf[b"events"]
            self._events.open_ring_buffer(self._on_event)
        except BaseException:
            self.loaded.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loaded is not None:
            self.loaded.close()

    def _on_event(self, ctx: object, data: int, size: int) -> None:
        e = self._events.event(data)
        if e.kind == HOP_FUNC:
            func, direction = kernel.KPROBE_SYMBOLS[e.reason], "fn"
        else:
            func, direction = KINDS.get(e.kind, ("?", "?"))
        frame = packet.decode(bytes(e.data[:e.caplen]), self._vxlan_port)
        reason = self._reasons.get(e.reason, str(e.reason)) if direction == "drop" else None
        self._hops.append(Hop(ts=e.ts, skb=e.skb, netns=e.netns,
                              at=self._where_by_inode.get(e.netns, str(e.netns)),
                              ifindex=e.ifindex, device=e.dev.decode(errors="replace"),
                              func=func, dir=direction, length=e.len, frame=frame,
                              drop_reason=reason))

    def poll(self, timeout_ms: int = 0) -> None:
        self.loaded.bpf.ring_buffer_poll(timeout=timeout_ms)

    def take(self) -> list[Hop]:
        """Every hop recorded since the last take(), in kernel time order."""
        self.loaded.bpf.ring_buffer_consume()
        hops, self._hops = sorted(self._hops, key=lambda h: h.ts), []
        return hops

    @property
    def lost(self) -> int:
        return sum(int(v) for v in self.loaded.bpf[b"lost"].getvalue(ctypes.c_int(0)))
