"""The audit: the pure comparison on snapshot data, then live clusters, healthy and broken."""

from __future__ import annotations

import copy
import json
import time

import pytest

from dataplane.cluster import expected, faults, firewall, spec
from dataplane.cluster.netstate import NetState, sysctl_device
from dataplane.cluster.plan import make_plan
from dataplane.records import Drift
from dataplane.verify import audit

from .conftest import BIG, DEFAULT, dp, sh



@pytest.fixture
def plan():
    return make_plan(spec.load(DEFAULT, name="a"))


@pytest.fixture
def healthy(plan):
    """A snapshot of a fresh build: what the plan expects, plus what the kernel adds
    that the expectation leaves unchecked (a host veth's random MAC)."""
    snap = copy.deepcopy(expected.state(plan))
    snap[plan.nodes[0].netns].attrs[(plan.nodes[0].pods[0].host_veth, "mac")] = "fe:99:ff:99:1b:fc"
    return snap


# pure: compare() on snapshot data

def test_a_fresh_build_has_no_drift(plan, healthy):
    assert audit.compare(plan, healthy) == []


def test_a_namespace_gone_is_one_item(plan, healthy):
    del healthy[plan.pod("node-1/pod-0").netns]
    healthy[plan.nodes[0].netns] = None
    assert audit.compare(plan, healthy) == [
        Drift("node-0", None, "namespace", "present", "missing"),
        Drift("node-1/pod-0", None, "namespace", "present", "missing")]


def test_a_missing_device_is_one_item_not_each_of_its_parts(plan, healthy):
    node = healthy[plan.nodes[0].netns]
    for key in [k for k in node.items if k[0] == "flannel.1"]:
        del node.items[key]
    assert audit.compare(plan, healthy) == [
        Drift("node-0", "flannel.1", "link", "vxlan", "missing")]


def test_an_extra_device_is_named_with_its_kind(plan, healthy):
    pod = healthy[plan.pod("node-0/pod-1").netns]
    pod.link("nat0", "dummy", admin="up", oper="unknown", mtu=1500)
    pod.address("nat0", "10.0.2.15", 24)
    assert audit.compare(plan, healthy) == [
        Drift("node-0/pod-1", "nat0", "link", "absent", "dummy")]


def test_attributes_routes_and_fdb(plan, healthy):
    node = healthy[plan.nodes[1].netns]
    node.attrs[("flannel.1", "vxlan local")] = "10.244.1.1"
    node.attrs[("cni0", "bridge vlan_filtering")] = "1"
    del node.items[("flannel.1", "fdb 0e:fa:ac:1e:00:01")]
    node.route("flannel.1", "10.244.0.0/24", via="10.244.0.9", onlink=True)
    assert audit.compare(plan, healthy) == [
        Drift("node-1", "cni0", "bridge vlan_filtering", "0", "1"),
        Drift("node-1", "flannel.1", "fdb 0e:fa:ac:1e:00:01", "dst 172.30.0.1", "missing"),
        Drift("node-1", "flannel.1", "route 10.244.0.0/24", "via 10.244.0.0 onlink",
              "via 10.244.0.0 onlink | via 10.244.0.9 onlink"),
        Drift("node-1", "flannel.1", "vxlan local", "172.30.0.2", "10.244.1.1")]


def test_an_attribute_a_kernel_lacks_is_not_drift(plan, healthy):
    del healthy[plan.nodes[0].netns].attrs[(plan.nodes[0].pods[0].host_veth, "bridge port mab")]
    assert audit.compare(plan, healthy) == []


def test_the_same_pod_ip_on_two_pods(plan, healthy):
    healthy[plan.pod("node-1/pod-1").netns].address("eth0", "10.244.0.2", 24)
    drift = audit.compare(plan, healthy)
    assert Drift("node-1/pod-1", "eth0", "duplicate address 10.244.0.2", "only on node-0/pod-0",
                 "on node-0/pod-0 and node-1/pod-1") in drift
    assert Drift("node-1/pod-1", "eth0", "address 10.244.0.2/24", "absent", "present") in drift


def test_a_dropping_chain_reads_as_nft_writes_it(plan, healthy):
    ruleset = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "ip", "name": "filter"}},
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "type": "filter",
                   "hook": "input", "prio": 0, "policy": "accept"}},
        {"chain": {"family": "ip", "table": "filter", "name": "KUBE-FW"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": 8472}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": None}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "KUBE-FW", "expr": [
            {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "cni0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
            {"xt": {"type": "target", "name": "REJECT"}}]}},
    ]}
    found = firewall.dropping(ruleset)
    assert found == {
        "nftables chain ip filter FORWARD (hook forward)": "policy drop",
        "nftables chain ip filter KUBE-FW": "meta iifname != cni0 ip saddr 10.244.0.0/16 "
                                            "xt target REJECT"}
    for what, how in found.items():
        healthy[plan.nodes[0].netns].firewall(what, how)
    assert Drift("node-0", None, "nftables chain ip filter FORWARD (hook forward)", "no drop",
                 "policy drop") in audit.compare(plan, healthy)


def test_a_sysctl_of_a_device_belongs_to_it():
    assert sysctl_device("net.ipv4.conf.flannel/1.forwarding") == "flannel.1"
    assert sysctl_device("net.ipv4.conf.all.rp_filter") is None
    assert sysctl_device("net.ipv4.ip_forward") is None


def test_several_routes_to_one_place_read_in_order():
    s = NetState()
    for gateway in ("10.0.0.3", "10.0.0.1", "10.0.0.2"):
        s.route("eth0", "default", via=gateway)
    assert s.items[("eth0", "route default")] == "via 10.0.0.1 | via 10.0.0.2 | via 10.0.0.3"


# live

def timed_audit(plan):
    start = time.perf_counter()
    drift = audit.audit(plan)
    return drift, time.perf_counter() - start


@pytest.mark.needs_root
def test_healthy_clusters_have_no_drift(dataplane_clusters):
    small = dataplane_clusters(DEFAULT)
    drift, _ = timed_audit(small.plan)
    assert drift == []
    big = dataplane_clusters(BIG)
    timed_audit(big.plan)  # warm: imports, first sockets
    drift, seconds = timed_audit(big.plan)
    assert drift == []
    assert seconds < 0.6, f"audit of 4x8 took {seconds:.3f} s"  # far less when idle


FAULT_DRIFT = {
    "vni-mismatch": ("node-0", "flannel.1", "vxlan vni"),
    "missing-fdb": ("node-0", "flannel.1", "fdb 0e:fa:ac:1e:00:02"),
    "veth-detached": ("node-0", "HOST VETH", "master"),
    "no-ip-forward": ("node-0", None, "sysctl net.ipv4.ip_forward"),
    "pod-mtu": ("node-0/pod-0", "eth0", "mtu"),
    "vtep-local": ("node-0", "flannel.1", "vxlan local"),
    "stale-vtep-mac": ("node-0", "flannel.1", "mac"),
    "underlay-mtu": ("node-0", "eth0", "mtu"),
    "pod-no-route": ("node-0/pod-0", "eth0", "route default"),
}


def test_every_fault_has_a_drift_case():
    assert set(FAULT_DRIFT) == set(faults.FAULTS)


@pytest.mark.needs_root
@pytest.mark.parametrize("fault", sorted(FAULT_DRIFT))
def test_each_fault_shows_as_drift_at_its_place(dataplane_clusters, fault):
    plan = dataplane_clusters().plan
    faults.inject(plan, fault, node="node-0", pod="node-0/pod-0", peer="node-1")
    at, device, what = FAULT_DRIFT[fault]
    device = plan.pod("node-0/pod-0").host_veth if device == "HOST VETH" else device
    drift = audit.audit(plan)
    assert any((d.at, d.device, d.what) == (at, device, what) for d in drift), drift
    assert all(d.at.startswith("node-0") for d in drift), drift  # nothing elsewhere
    # injecting it again says so and changes nothing
    assert "already in place" in faults.inject(plan, fault, node="node-0",
                                               pod="node-0/pod-0", peer="node-1")
    assert audit.audit(plan) == drift


@pytest.fixture(scope="module")
def broken(dataplane_cluster):
    """The default cluster broken by hand, the way an operator would."""
    plan = dataplane_cluster.plan
    sh(plan.pod("node-0/pod-1").netns, "ip", "link", "set", "eth0", "down")
    sh(plan.pod("node-1/pod-0").netns, "ip", "addr", "flush", "dev", "eth0")
    sh(plan.pod("node-1/pod-1").netns, "ip", "addr", "add", "10.244.0.2/24", "dev", "eth0")
    sh(plan.underlay_netns, "ip", "link", "set", "node-1", "down")
    node = plan.node("node-1").netns
    sh(node, "nft", "add", "table", "ip", "filter")
    sh(node, "nft", "add", "chain", "ip", "filter", "FORWARD",
       "{ type filter hook forward priority 0; policy drop; }")
    sh(node, "nft", "add", "rule", "ip", "filter", "FORWARD", "udp", "dport", "8472", "reject")
    peer = plan.node("node-1")  # node-0's entry for it sent to another port and VNI
    sh(plan.node("node-0").netns, "bridge", "fdb", "replace", peer.vtep_mac, "dev", "flannel.1",
       "dst", str(peer.underlay_ip), "port", "4789", "vni", "7", "self", "permanent")
    return audit.audit(plan)


@pytest.mark.needs_root
@pytest.mark.parametrize("item", [
    Drift("node-0/pod-1", "eth0", "admin state", "up", "down"),
    Drift("node-1/pod-0", "eth0", "address 10.244.1.2/24", "present", "missing"),
    Drift("node-1/pod-0", "eth0", "route default", "via 10.244.1.1", "missing"),
    Drift("node-1/pod-1", "eth0", "duplicate address 10.244.0.2", "only on node-0/pod-0",
          "on node-0/pod-0 and node-1/pod-1"),
    Drift("underlay", "node-1", "admin state", "up", "down"),
    Drift("node-1", "eth0", "oper state", "up", "down"),  # its peer is down
    Drift("node-1", None, "nftables chain ip filter FORWARD (hook forward)", "no drop",
          "policy drop; udp dport 8472 reject"),
    Drift("node-0", "flannel.1", "fdb 0e:fa:ac:1e:00:02", "dst 172.30.0.2",
          "dst 172.30.0.2 port 4789 vni 7"),
])
def test_hand_made_breakage(broken, item):
    assert item in broken, "\n".join(map(str, broken))


@pytest.mark.needs_root
def test_a_deleted_namespace_is_drift_not_a_crash(dataplane_clusters):
    plan = dataplane_clusters().plan
    sh(None, "ip", "netns", "delete", plan.pod("node-1/pod-1").netns)
    assert Drift("node-1/pod-1", None, "namespace", "present", "missing") in audit.audit(plan)


def dataplane(*argv):
    return dp(*argv)


@pytest.mark.needs_root
def test_status_exit_code_and_json(dataplane_clusters):
    made = dataplane_clusters()
    clean = dataplane("status", made.name, "--json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["drift"] == []
    assert "drift: none" in dataplane("status", made.name).stdout
    assert dataplane("fault", "inject", "pod-no-route", "--running", made.name,
                     "--pod", "node-1/pod-1").returncode == 0
    shown = dataplane("status", made.name, "--json")
    assert shown.returncode == 1
    assert json.loads(shown.stdout)["drift"] == [
        {"at": "node-1/pod-1", "device": "eth0", "what": "route default",
         "expected": "via 10.244.1.1", "found": "missing"}]
    text = dataplane("status", made.name)
    assert text.returncode == 1
    assert "node-1/pod-1 eth0: route default: expected via 10.244.1.1, found missing" in text.stdout
    repaired = dataplane("fault", "repair", "pod-no-route", "--running", made.name,
                         "--pod", "node-1/pod-1")
    assert repaired.returncode == 0 and "route via 10.244.1.1 back" in repaired.stdout
    assert dataplane("status", made.name).returncode == 0
    again = dataplane("fault", "repair", "pod-no-route", "--running", made.name,
                      "--pod", "node-1/pod-1")
    assert again.returncode == 0 and "not in place" in again.stdout


@pytest.mark.needs_root
def test_fault_options_and_repeats(dataplane_clusters):
    made = dataplane_clusters()
    both = dataplane("fault", "inject", "no-ip-forward", "--running", made.name,
                     "--node", "node-1", "--pod", "node-0/pod-1")
    assert both.returncode == 2 and len(both.stderr.splitlines()) == 1
    assert "does not take --pod" in both.stderr
    first = dataplane("fault", "inject", "missing-fdb", "--running", made.name)
    again = dataplane("fault", "inject", "missing-fdb", "--running", made.name)
    assert first.returncode == again.returncode == 0, again.stderr
    assert "already in place" in again.stdout and not again.stderr
