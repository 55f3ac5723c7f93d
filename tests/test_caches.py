"""caches.reset against the kernel: what earlier traffic taught it is gone, what the
plan defines stays. iproute2 is the oracle."""

from __future__ import annotations

import json
import subprocess

import pytest

from dataplane.cluster import faults
from dataplane.verify import caches

from .conftest import ip_json, sh

pytestmark = pytest.mark.needs_root


def ping(netns: str, ip: str, size: int = 56, df: bool = False) -> None:
    """One echo; an oversize DF one fails, which is the point of sending it."""
    argv = ["ip", "netns", "exec", netns, "ping", "-c2", "-i0.2", "-W2", "-s", str(size)]
    subprocess.run([*argv, *(["-M", "do"] if df else []), ip], capture_output=True)


def cached_mtu(netns: str, ip: str) -> int | None:
    (route,) = ip_json(netns, "route", "get", ip)
    return next((m["mtu"] for m in route.get("metrics", []) if "mtu" in m), None)


def learnt_fdb(netns: str) -> list:
    """What a bridge of netns learnt: its entries that are not permanent."""
    return [e for e in json.loads(sh(netns, "bridge", "-j", "fdb", "show") or "[]")
            if e.get("master") and e.get("state") != "permanent"]


def test_reset_forgets_pmtu_neighbours_fdb_and_conntrack(dataplane_clusters):
    plan = dataplane_clusters().plan
    src, dst = plan.pod("node-0/pod-0"), plan.pod("node-1/pod-0")
    node = plan.node("node-0").netns
    # conntrack tracks forwarded flows once a rule uses it
    sh(node, "nft", "add", "table", "ip", "track")
    sh(node, "nft", "add", "chain", "ip", "track", "FORWARD",
       "{ type filter hook forward priority 0; }")
    sh(node, "nft", "add", "rule", "ip", "track", "FORWARD", "ct", "state", "new", "accept")
    faults.inject(plan, "pod-mtu", pod=src.ref)
    ping(src.netns, str(dst.ip), size=1451 - 28, df=True)  # node-0 answers: mtu 1450
    ping(src.netns, str(dst.ip))
    assert cached_mtu(src.netns, str(dst.ip)) == plan.spec.vtep_mtu
    assert [n for n in ip_json(src.netns, "neigh") if "PERMANENT" not in n["state"]]
    assert learnt_fdb(plan.underlay_netns) and learnt_fdb(node)
    assert f"src={src.ip} " in sh(node, "cat", "/proc/net/nf_conntrack")

    caches.reset(plan)

    assert cached_mtu(src.netns, str(dst.ip)) is None
    for ns in plan.namespaces():
        assert all("PERMANENT" in n["state"] for n in ip_json(ns, "neigh")), ns
        assert not learnt_fdb(ns), ns
    # the pods' flows are forgotten (the node may have sent an IGMP report since)
    tracked = sh(node, "cat", "/proc/net/nf_conntrack")
    assert f"src={src.ip} " not in tracked and f"dst={src.ip} " not in tracked, tracked
    # what the plan defines stays: flannel.1's neighbour and FDB entry for its peer
    peer = plan.node("node-0").peers[0]
    (neigh,) = ip_json(node, "neigh", "show", "dev", "flannel.1")
    assert (neigh["dst"], neigh["lladdr"], neigh["state"]) == \
        (str(peer.vtep_ip), peer.vtep_mac, ["PERMANENT"])
    fdb = json.loads(sh(node, "bridge", "-j", "fdb", "show", "dev", "flannel.1"))
    assert [(e["mac"], e["dst"]) for e in fdb] == [(peer.vtep_mac, str(peer.underlay_ip))]
    ping(src.netns, str(dst.ip))  # and the cluster still works
    assert ip_json(src.netns, "neigh")
