"""A packet's hops as the tracer recorded them, made into its trail: in time order, each
place once (a packet queued to a backlog is seen twice on receive). Pure."""

from __future__ import annotations

from dataplane.records import Hop


def trail(hops: list[Hop]) -> list[Hop]:
    """An exchange's hops (picked out by its keys) in time order, without backlog hops."""
    return without_backlog(sorted(hops, key=lambda h: h.ts))


def without_backlog(hops: list[Hop]) -> list[Hop]:
    """hops without each netif_rx that a netif_receive_skb of the same skb and device
    follows (the packet queued to a backlog, then received)."""
    received = {(h.skb, h.netns, h.ifindex) for h in hops if h.func == "netif_receive_skb"}
    return [h for h in hops
            if not (h.func == "netif_rx" and (h.skb, h.netns, h.ifindex) in received)]
