"""The built cluster, checked with iproute2 as an independent oracle, and pinged."""

import subprocess
import time

import pytest

from .conftest import BIG, DEFAULT, ip_json, sh
from .pingall import ping_all

pytestmark = pytest.mark.needs_root


def link(netns, name):
    (found,) = ip_json(netns, "-d", "link", "show", "dev", name)
    return found


def test_vtep_as_flannel_makes_it(dataplane_cluster):
    plan = dataplane_cluster.plan
    for node in plan.nodes:
        vtep = link(node.netns, "flannel.1")
        data = vtep["linkinfo"]["info_data"]
        assert vtep["linkinfo"]["info_kind"] == "vxlan"
        assert (data["id"], data["port"], data["local"]) == (1, 8472, str(node.underlay_ip))
        assert data["learning"] is False and data["link"] == "eth0"
        assert vtep["mtu"] == 1450 and vtep["address"] == node.vtep_mac
        assert "UP" in vtep["flags"]
        addrs = ip_json(node.netns, "addr", "show", "dev", "flannel.1")[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [(str(node.vtep_ip), 32)]


def test_per_peer_route_neighbour_fdb(dataplane_cluster):
    n0, n1 = dataplane_cluster.plan.nodes
    (route,) = ip_json(n0.netns, "route", "show", str(n1.pod_cidr))
    assert route["gateway"] == str(n1.vtep_ip) and route["dev"] == "flannel.1"
    assert "onlink" in route["flags"]
    (neigh,) = ip_json(n0.netns, "neigh", "show", "dev", "flannel.1")
    assert neigh["dst"] == str(n1.vtep_ip) and neigh["lladdr"] == n1.vtep_mac
    assert "PERMANENT" in neigh["state"]
    out = sh(n0.netns, "bridge", "fdb", "show", "dev", "flannel.1")
    assert f"{n1.vtep_mac} dst {n1.underlay_ip} self permanent" in out


def test_node_basics(dataplane_cluster):
    for node in dataplane_cluster.plan.nodes:
        eth0 = link(node.netns, "eth0")
        assert eth0["mtu"] == 1500 and eth0["address"] == node.eth0_mac
        addrs = ip_json(node.netns, "addr", "show", "dev", "eth0")[0]["addr_info"]
        assert [a["local"] for a in addrs] == [str(node.underlay_ip)]
        cni0 = ip_json(node.netns, "addr", "show", "dev", "cni0")[0]
        assert [(a["local"], a["prefixlen"]) for a in cni0["addr_info"]] == [(str(node.gateway), 24)]
        assert sh(node.netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
        ports = {p["ifname"] for p in ip_json(node.netns, "link", "show", "master", "cni0")}
        assert ports == {p.host_veth for p in node.pods}


def test_underlay_bridge_joins_every_node(dataplane_cluster):
    plan = dataplane_cluster.plan
    ports = {p["ifname"] for p in ip_json(plan.underlay_netns, "link", "show", "master", "br0")}
    assert ports == {n.name for n in plan.nodes}


def test_pods(dataplane_cluster):
    for pod in dataplane_cluster.plan.pods():
        eth0 = link(pod.netns, "eth0")
        assert eth0["mtu"] == 1450 and eth0["address"] == pod.mac and "UP" in eth0["flags"]
        addrs = ip_json(pod.netns, "addr", "show", "dev", "eth0")[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [(str(pod.ip), 24)]
        (default,) = ip_json(pod.netns, "route", "show", "default")
        assert default["gateway"] == str(pod.gateway) and default["dev"] == "eth0"
        assert "UP" in link(pod.netns, "lo")["flags"]


def test_node_files_written(dataplane_cluster):
    base = dataplane_cluster.record.dir / "nodes" / "node-0"
    assert "FLANNEL_SUBNET=10.244.0.1/24" in (base / "run/flannel/subnet.env").read_text()
    records = base / "var/lib/cni/networks/cbr0"
    assert sorted(p.name for p in records.iterdir()) == ["10.244.0.2", "10.244.0.3",
                                                         "last_reserved_ip.0"]


def test_cross_node_ping_is_vxlan_on_the_underlay(dataplane_cluster):
    """tcpdump-style check: a cross-node ping crosses br0 as UDP/8472 with VNI 1."""
    plan = dataplane_cluster.plan
    src, dst = plan.pod("node-0/pod-0"), plan.pod("node-1/pod-1")
    cap = subprocess.Popen(["ip", "netns", "exec", plan.underlay_netns, "tshark", "-l", "-i",
                            "br0", "-c", "1", "-a", "duration:10", "-f", "udp port 8472",
                            "-d", "udp.port==8472,vxlan", "-T", "fields", "-e", "ip.src",
                            "-e", "ip.dst", "-e", "vxlan.vni", "-e", "ip.len"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # ping until tshark has started and seen one
            sh(src.netns, "ping", "-c1", "-W1", str(dst.ip))
            if cap.poll() is not None:
                break
            time.sleep(0.25)
        out, err = cap.communicate(timeout=15)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    assert out.strip(), f"tshark saw no VXLAN packet: {err}"
    # each field lists the outer header's value, then the inner one's
    srcs, dsts, vni, lengths = (f.split(",") for f in out.strip().split("\t"))
    assert srcs == [str(plan.node(src.node).underlay_ip), str(src.ip)]
    assert dsts == [str(plan.node(dst.node).underlay_ip), str(dst.ip)]
    assert vni == ["1"]
    assert int(lengths[0]) == int(lengths[1]) + 50


@pytest.mark.parametrize("topology", [DEFAULT, BIG], ids=["2x2", "4x8"])
def test_every_pod_pair_pings(dataplane_clusters, topology):
    made = dataplane_clusters(topology)
    assert ping_all(made.plan) == []
