"""The plan is pure and deterministic, and mirrors flannel's address scheme."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.cluster import nodefiles, spec
from dataplane.cluster.plan import make_plan
from dataplane.errors import UsageError

from .conftest import BIG, DEFAULT


@pytest.fixture
def plan():
    return make_plan(spec.load(DEFAULT, name="p"))


def test_same_spec_same_plan():
    assert make_plan(spec.load(BIG, name="x")) == make_plan(spec.load(BIG, name="x"))


def test_pod_cidrs_carved_in_node_order():
    big = make_plan(spec.load(BIG))
    assert [n.pod_cidr for n in big.nodes] == [IPv4Network(f"10.244.{i}.0/24") for i in range(4)]


def test_host_local_addresses(plan):
    node = plan.nodes[1]
    assert node.gateway == IPv4Address("10.244.1.1")
    assert [p.ip for p in node.pods] == [IPv4Address("10.244.1.2"), IPv4Address("10.244.1.3")]
    assert all(p.gateway == node.gateway and p.prefixlen == 24 for p in node.pods)


def test_underlay_and_vteps(plan):
    n0, n1 = plan.nodes
    assert (n0.underlay_ip, n1.underlay_ip) == (IPv4Address("172.30.0.1"), IPv4Address("172.30.0.2"))
    assert n0.vtep_ip == IPv4Address("10.244.0.0")
    (peer,) = n0.peers
    assert peer.node == "node-1" and peer.pod_cidr == n1.pod_cidr
    assert peer.vtep_ip == n1.vtep_ip and peer.vtep_mac == n1.vtep_mac
    assert peer.underlay_ip == n1.underlay_ip


def test_macs_unique_and_locally_administered():
    big = make_plan(spec.load(BIG))
    macs = [m for n in big.nodes for m in (n.vtep_mac, n.eth0_mac, n.cni0_mac)]
    macs += [p.mac for p in big.pods()]
    assert len(set(macs)) == len(macs)
    assert all(int(m.split(":")[0], 16) & 0b11 == 0b10 for m in macs)  # local, unicast
    assert big.pods()[0].mac == "0a:58:0a:f4:00:02"  # the CNI bridge plugin's scheme


def test_names_carry_the_run_prefix(plan):
    names = plan.namespaces()
    assert len(names) == 1 + 2 + 4 and len(set(names)) == len(names)
    assert all(n.startswith("dp-p.") for n in names)
    assert plan.underlay_netns == "dp-p.underlay"
    assert plan.pod("node-1/pod-0").netns == "dp-p.node-1.pod-0"


def test_host_veths_named_like_cni():
    big = make_plan(spec.load(BIG))
    for node in big.nodes:
        veths = [p.host_veth for p in node.pods]
        assert len(set(veths)) == len(veths)
        assert all(v.startswith("veth") and len(v) == 12 for v in veths)


def test_pod_lookup(plan):
    assert plan.pod("node-0/pod-1").ip == IPv4Address("10.244.0.3")
    with pytest.raises(UsageError, match="NODE/POD"):
        plan.pod("node-0/pod-9")
    with pytest.raises(UsageError, match="no node"):
        plan.pod("pod-1")


def test_subnet_env(plan):
    files = nodefiles.node_files(plan)
    assert files["nodes/node-1/run/flannel/subnet.env"] == (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")


def test_host_local_records(plan):
    files = nodefiles.node_files(plan)
    base = "nodes/node-0/var/lib/cni/networks/cbr0"
    pod = plan.pod("node-0/pod-1")
    assert files[f"{base}/10.244.0.3"] == f"{pod.container_id}\r\neth0"
    assert files[f"{base}/last_reserved_ip.0"] == "10.244.0.3"
    assert len([f for f in files if f.startswith(base)]) == 3


def test_where_labels_every_namespace(plan):
    where = plan.where()
    assert set(where) == set(plan.namespaces())
    assert where["dp-p.underlay"] == "underlay" and where["dp-p.node-1"] == "node-1"
    assert where["dp-p.node-1.pod-0"] == "node-1/pod-0"
