"""Forget what earlier traffic taught the kernel, so that no run's verdict depends
on the one before: run in every namespace of a plan before probes are sent.

- route cache and PMTU exceptions: writing net.ipv4.route.flush bumps the
  namespace's exception generation, so a learnt `mtu 1450` is not used again;
- neighbour entries the kernel learnt (the permanent ones a plan defines stay);
- what the bridges (cni0, the underlay's br0) learnt: their static entries stay;
- connection tracking entries, where the kernel has conntrack.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from dataplane.cluster import netns
from dataplane.cluster.plan import Plan
from dataplane.cluster.rtnl import (NETLINK_GET_STRICT_CHK, NUD_DELAY, NUD_INCOMPLETE, NUD_NOARP,
                                    NUD_PERMANENT, NUD_PROBE, RTM_GETLINK, SOL_NETLINK, Batch,
                                    NetlinkError)
from dataplane.cluster.rtdump import dump, neighbours
from dataplane.cluster.rtlayout import IFINFO

NETLINK_NETFILTER = 12
NO_CONNTRACK = (errno.EPROTONOSUPPORT, errno.EOPNOTSUPP, errno.ENOENT)
RESERVED_FDS = 2048  # what a verify needs beside a Forgetter's sockets: a few per pod


def reset(plan: Plan) -> None:
    netns.each(plan.namespaces(), _reset_here)


class Forgetter:
    """Deletes what the kernel learnt of its neighbours in namespaces, asked again and
    again: entries of every namespace count against one table (gc_thresh3), which a big
    run would fill. A netlink socket per namespace, opened the first time, is kept."""

    def __init__(self) -> None:
        self._sockets: dict[str, socket.socket] = {}

    def forget(self, namespaces: Iterable[str]) -> None:
        for name in namespaces:
            _flush_neighbours(Batch(self._socket(name), name))

    def forget_entries(self, entries: dict[str, set[IPv4Address]]) -> None:
        """Delete just these learnt entries (namespace -> addresses), where the kernel is
        not resolving them: a packet may wait on an incomplete entry."""
        for name, addresses in entries.items():
            _flush_neighbours(Batch(self._socket(name), name), addresses)

    def _socket(self, name: str) -> socket.socket:
        if name not in self._sockets:
            netns.allow_fds(len(self._sockets) + RESERVED_FDS)
            self._sockets[name] = netns.socket_in(name, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
        return self._sockets[name]

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()


ARP_STATS = Path("/proc/net/stat/arp_cache")  # the initial namespace's: read, never changed


def neighbour_room() -> int:
    """Entries the kernel's ARP table (one for every namespace) can take before it
    refuses new ones (ENOBUFS on a send, an ARP request left unanswered)."""
    limit = int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
    return limit - _arp_stats()[0]["entries"]


def neighbour_table_fulls() -> int:
    """How often, since boot, the kernel found that table full (summed over CPUs)."""
    return sum(cpu["table_fulls"] for cpu in _arp_stats())


def _arp_stats() -> list[dict[str, int]]:
    head, *cpus = ARP_STATS.read_text().split("\n")
    names = head.split()
    return [dict(zip(names, (int(v, 16) for v in line.split()))) for line in cpus if line]


def _reset_here(name: str) -> None:
    """Run in namespace name's thread."""
    netns.write_sysctl("net.ipv4.route.flush", "1")
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0) as sock:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)  # so the link dump is filtered
        _flush_bridges(Batch(sock, name))
        _flush_neighbours(Batch(sock, name))
    _flush_conntrack(name)


def _flush_bridges(b: Batch) -> None:
    bridges = [("IFLA_LINKINFO", [("IFLA_INFO_KIND", "bridge")])]  # the kernel lists just these
    for link in dump(b.sock, IFINFO, RTM_GETLINK, attrs=bridges):
        b.bridge_fdb_flush(link["index"])
    b.send()


# Entries the kernel is resolving (packets wait on an incomplete one) or confirming: while
# waves are out, one of these may be an exchange's that no prediction named
NUD_IN_USE = NUD_INCOMPLETE | NUD_DELAY | NUD_PROBE


def _flush_neighbours(b: Batch, only: set[IPv4Address] | None = None) -> None:
    """Delete the namespace's learnt entries, or those of only that are not in use."""
    kept = NUD_PERMANENT | NUD_NOARP | (NUD_IN_USE if only is not None else 0)
    for ifindex, state, address in neighbours(b.sock):
        if not state & kept and (only is None or address in only):
            b.neigh_del(ifindex, address)
    try:
        b.send()
    except NetlinkError as err:
        if err.errno != errno.ENOENT:  # an entry that expired since the dump is fine
            raise


def _flush_conntrack(name: str) -> None:
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_NETFILTER) as sock:
            b = Batch(sock, name)
            b.conntrack_flush()
            b.send()
    except OSError as err:
        if err.errno not in NO_CONNTRACK:
            raise
