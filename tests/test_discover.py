"""discover: a pod network built by hand (tests/foreign.sh, ip -batch) is found, verified
clean and left exactly as it was; a fault made by hand is caught at its place; what is
not a pod network is refused in one line; a cluster `up` made is found as its own plan."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from dataplane.cluster import discover, lifecycle, netns, state
from dataplane.cluster.nodefiles import NODES_DIR

from .conftest import DEFAULT, ROOT, dp, one_line_error

pytestmark = pytest.mark.needs_root

RUN = f"dsc{os.getpid()}"
_serial = itertools.count()
VTEP_MAC = "0e:42:00:00:00:{:02x}".format  # as tests/foreign.sh gives node n its VTEP's MAC


def _remove(prefix: str) -> None:
    for name in netns.listed(prefix):
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def foreign():
    """The 3x3 network of tests/foreign.sh, named P-*; its record forgotten and its
    namespaces deleted afterwards, failures included."""
    prefix = f"{RUN}-f{next(_serial)}"
    try:
        subprocess.run(["bash", str(ROOT / "tests" / "foreign.sh"), prefix], check=True)
        yield prefix
    finally:
        if (state.STATE_ROOT / prefix).exists():
            dp("down", prefix, "--force")
        _remove(f"{prefix}-")


def _ip_json(*argv: str) -> list:
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return _configured(json.loads(done.stdout or "[]"))


def _configured(value):
    """value without what the kernel changes on its own: timers, and an oper state that
    settles a moment after a link comes up."""
    if isinstance(value, dict):
        return {k: _configured(v) for k, v in value.items()
                if k != "operstate" and not k.endswith("_timer")}
    if isinstance(value, list):
        return [_configured(v) for v in value]
    return value


def kernel_state(name: str) -> dict:
    """What a namespace is configured with, by iproute2 and sysctl: links, IPv4 addresses,
    routes and rules, permanent neighbours and FDB entries, IPv4 sysctls. What traffic
    teaches the kernel (learnt neighbours and bridge entries) and what it changes on its
    own are left out."""
    fdb = _ip_json("bridge", "-n", name, "-j", "fdb", "show")
    sysctls = subprocess.run(["ip", "netns", "exec", name, "sysctl", "-e", "-a", "-r",
                              r"^net\.ipv4\.(conf\.|ip_forward|ping_group_range)"],
                             capture_output=True, text=True, check=True).stdout
    return {
        "links": _ip_json("ip", "-n", name, "-j", "-d", "link", "show"),
        "addresses": _ip_json("ip", "-n", name, "-4", "-j", "addr", "show"),
        "routes": _ip_json("ip", "-n", name, "-4", "-j", "route", "show", "table", "all"),
        "rules": _ip_json("ip", "-n", name, "-4", "-j", "rule", "show"),
        "neighbours": _ip_json("ip", "-n", name, "-j", "neigh", "show", "nud", "permanent"),
        "fdb": [e for e in fdb if e.get("state") in ("permanent", "static")],
        "sysctls": sorted(sysctls.splitlines()),
    }


def test_a_network_built_by_hand_is_discovered_verified_clean_and_left_as_it_was(foreign):
    names = netns.listed(f"{foreign}-")
    before = {name: kernel_state(name) for name in names}
    done = dp("discover", "--prefix", f"{foreign}-", "--cluster-cidr", "10.42.0.0/16",
              "--name", foreign, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)
    assert found["unplaced"] == [] and found["drift"] == []
    assert found["backend"] == {"type": "vxlan", "vni": 42, "port": 4789, "mtu": 1450}
    assert found["underlay"] == {"netns": f"{foreign}-net", "bridge": "sw0",
                                 "subnet": "192.168.77.0/24", "mtu": 1500}
    assert found["cluster_cidr"] == {"cidr": "10.42.0.0/16", "from": "from --cluster-cidr"}
    assert [(n["name"], n["netns"], n["bridge"], n["vtep"], n["pod_cidr"], n["vtep_mac"])
            for n in found["nodes"]] == [
        (f"n{i}", f"{foreign}-n{i}", "podbr", "vx42", f"10.42.{i}.0/24", VTEP_MAC(i))
        for i in (1, 2, 3)]
    assert [(p["name"], p["netns"], p["ip"], p["host_veth"]) for p in found["nodes"][0]["pods"]] \
        == [(pod, f"{foreign}-n1-{pod}", f"10.42.1.{i}", f"veth-n1-{pod}")
            for i, pod in enumerate(("web", "api", "db"), start=2)]

    done = dp("verify", "--running", foreign, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0, [f for f in report["flows"] if f["verdict"] != "PASS"][:3]
    assert report["summary"]["pass"] == len(report["flows"]) == 9 * 8 * 7
    assert report["caches_reset"] is False
    status = dp("status", foreign)
    assert status.returncode == 0 and "up (attached)" in status.stdout, status.stdout

    assert {name: kernel_state(name) for name in names} == before
    done = dp("down", foreign)
    assert done.returncode == 0 and "forgotten" in done.stdout, done.stderr
    assert not (state.STATE_ROOT / foreign).exists()
    assert netns.listed(f"{foreign}-") == names  # forgotten, not removed
    assert {name: kernel_state(name) for name in names} == before


def test_a_fault_made_by_hand_is_caught_at_its_place(foreign):
    """n1 loses its FDB entry for n3's VTEP: the flows between n1 and n3 fail with that
    entry as their cause, every other flow passes."""
    if not (state.STATE_ROOT / foreign).exists():
        assert dp("discover", "--prefix", f"{foreign}-", "--name", foreign).returncode == 0
    subprocess.run(["bridge", "-n", f"{foreign}-n1", "fdb", "del", VTEP_MAC(3), "dev", "vx42",
                    "dst", "192.168.77.13"], check=True)
    done = dp("verify", "--running", foreign, "--proto", "icmp", "--no-mtu", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    lost = {"at": "n1", "device": "vx42", "what": f"fdb {VTEP_MAC(3)}",
            "expected": "dst 192.168.77.13", "found": "missing"}
    assert report["drift"] == [lost]
    for flow in report["flows"]:
        nodes = {flow["src"].split("/")[0], flow["dst"].split("/")[0]}
        if nodes == {"n1", "n3"}:
            assert flow["verdict"] == "FAIL" and flow["cause"] == [lost], flow["diagnosis"]
        else:
            assert flow["verdict"] == "PASS", flow["diagnosis"]


def test_a_node_on_another_vxlan_port_is_reported_not_learned(foreign):
    """Rediscovered with n2's VTEP made again on UDP 8472: the port is still 4789 (the
    other nodes'), and n2's is drift."""
    n2 = f"{foreign}-n2"
    subprocess.run(["ip", "-n", n2, "-batch", "-"], check=True, text=True, input="\n".join([
        "link del vx42",
        f"link add vx42 address {VTEP_MAC(2)} type vxlan id 42 local 192.168.77.12 dev ens4 "
        "dstport 8472 nolearning",
        "addr add 10.42.2.0/32 dev vx42", "link set vx42 up"]) + "\n")
    done = dp("discover", "--prefix", f"{foreign}-", "--cluster-cidr", "10.42.0.0/16",
              "--json")
    assert done.returncode == 1, done.stderr
    found = json.loads(done.stdout)
    assert found["backend"]["port"] == 4789
    assert {"at": "n2", "device": "vx42", "what": "vxlan port", "expected": "4789",
            "found": "8472"} in found["drift"]


def test_a_pod_outside_its_nodes_podcidr_breaks_the_rules(foreign):
    plan = discover.discover(netns.listed(f"{foreign}-")).plan
    node = plan.nodes[2]
    moved = replace(node.pods[0], ip=IPv4Address("10.42.7.2"))
    broken = discover.rules(replace(plan, nodes=plan.nodes[:2] + (
        replace(node, pods=(moved,) + node.pods[1:]),)))
    assert [str(d) for d in broken] == [
        "n3/web eth0: address: expected in podCIDR 10.42.3.0/24, found 10.42.7.2"]


def test_namespaces_without_a_pod_network_are_refused_in_one_line():
    prefix = f"{RUN}-x{next(_serial)}"
    try:
        subprocess.run(["ip", "-batch", "-"], check=True, text=True,
                       input=f"netns add {prefix}-a\nnetns add {prefix}-b\n")
        subprocess.run(["ip", "-n", f"{prefix}-a", "-batch", "-"], check=True, text=True, input=(
            "link add br0 type bridge\n"
            f"link add veth0 master br0 type veth peer name eth0 netns {prefix}-b\n"))
        line = one_line_error(dp("discover", "--netns", f"{prefix}-a", f"{prefix}-b"))
        assert re.search(r"no pod network in .*: no namespace holds a VXLAN device", line), line
        line = one_line_error(dp("discover", "--prefix", f"{prefix}-nothing"))
        assert "no network namespace" in line, line
    finally:
        _remove(f"{prefix}-")


def test_a_cluster_made_by_up_is_discovered_as_the_plan_up_recorded():
    name = f"{RUN}-up{next(_serial)}"
    done = dp("up", str(DEFAULT), "--name", name)
    assert done.returncode == 0, done.stderr
    try:
        made = lifecycle.attach(name)
        found = discover.discover(netns.listed(f"{made.plan.prefix}."), name=name,
                                  node_files=made.record.dir / NODES_DIR)
        assert found.unplaced == [] and found.broken == []
        assert found.sources == {"cluster CIDR": "from subnet.env"}
        assert replace(found.plan, built=True) == made.plan  # built: ours, not discovered
    finally:
        dp("down", name, "--force")
