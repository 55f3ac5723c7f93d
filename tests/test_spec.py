"""Topology validation: every rule gives a one-line error naming the key and the fix."""

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from dataplane import resources
from dataplane.cluster import spec
from dataplane.errors import UsageError

from .conftest import BIG, DEFAULT

GOOD = """
[cluster]
name = "c1"
nodes = 2
pods_per_node = 2
"""


def error_of(text: str) -> str:
    with pytest.raises(UsageError) as caught:
        spec.parse(text, source="t.toml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("t.toml: ")
    return message


def test_defaults_are_flannels():
    s = spec.parse(GOOD)
    assert s.cluster_cidr == IPv4Network("10.244.0.0/16") and s.node_mask == 24
    assert (s.vni, s.port, s.underlay_mtu, s.vtep_mtu) == (1, 8472, 1500, 1450)
    assert s.vtep_name == "flannel.1"
    assert s.nodes == ("node-0", "node-1") and s.pods == ("pod-0", "pod-1")


def test_shipped_topologies_load():
    assert len(spec.load(DEFAULT).nodes) == 2 and len(spec.load(DEFAULT).pods) == 2
    big = spec.load(BIG)
    assert len(big.nodes) == 4 and len(big.pods) == 8


def test_names_given_as_lists():
    s = spec.parse('[cluster]\nname = "c"\nnodes = ["alpha", "beta"]\npods_per_node = ["web"]\n')
    assert s.nodes == ("alpha", "beta") and s.pods == ("web",)


def test_name_override():
    assert spec.parse(GOOD, name="other").name == "other"
    with pytest.raises(UsageError, match="--name"):
        spec.parse(GOOD, name="Bad_Name")


@pytest.mark.parametrize("text, key, words", [
    ("[cluster]\nname='c'\ncolour='red'\n", "cluster.colour", "unknown key"),
    ("[cluster]\nname='c'\n[extra]\n", "extra", "unknown table"),
    ("[cluster]\nname='c'\ncidr='10.244.0.0/33'\n", "cluster.cidr", "not an IPv4 CIDR"),
    ("[cluster]\nname='c'\ncidr='10.244.0.1/16'\n", "cluster.cidr", "host bits"),
    ("[cluster]\nname='c'\ncidr=5\n", "cluster.cidr", "CIDR string"),
    ("[cluster]\nname='c'\ncidr='10.244.0.0/23'\nnodes=3\n", "cluster.cidr", "holds 2"),
    ("[cluster]\nname='c'\nnode_mask=29\npods_per_node=6\n", "cluster.node_mask", "holds 5"),
    ("[cluster]\nname='c'\nnode_mask=8\n", "cluster.node_mask", "outside 16..30"),
    ("[cluster]\nname='c'\n[underlay]\nsubnet='10.0.0.0/8'\n", "underlay.subnet", "overlaps"),
    ("[cluster]\nname='c'\n[underlay]\nsubnet='172.30.0.0/31'\nmtu=1500\n",
     "underlay.subnet", "no room"),
    ("[cluster]\nname='c'\nnodes=['a','b','a']\n", "cluster.nodes", "duplicate names a"),
    ("[cluster]\nname='c'\npods_per_node=['x','x']\n", "cluster.pods_per_node", "duplicate"),
    ("[cluster]\nname='c'\nnodes=['Node_1']\n", "cluster.nodes[0]", "cannot name"),
    ("[cluster]\nname='c'\nnodes=['a/b']\n", "cluster.nodes[0]", "cannot name"),
    ("[cluster]\nname='c'\nnodes=['node-with-long-name']\n", "cluster.nodes[0]",
     "longer than 15 bytes"),
    ("[cluster]\nname='c'\nnodes=['underlay']\n", "cluster.nodes", "reserved"),
    ("[cluster]\nname='c'\nnodes=[]\n", "cluster.nodes", "empty"),
    ("[cluster]\nname='c'\nnodes=0\n", "cluster.nodes", "outside 1..4096"),
    ("[cluster]\nname='c'\nnodes='two'\n", "cluster.nodes", "neither a count"),
    ("[cluster]\nname='c'\nnodes=true\n", "cluster.nodes", "neither a count"),
    ("[cluster]\nname='my cluster'\n", "cluster.name", "cannot name"),
    ("[cluster]\nname='" + "x" * 33 + "'\n", "cluster.name", "longer than 32"),
    ("[cluster]\nnodes=2\n", "cluster.name", "missing"),
    ("[cluster]\nname='c'\n[backend]\nvni=0\n", "backend.vni", "outside 1..16777215"),
    ("[cluster]\nname='c'\n[backend]\nvni=16777216\n", "backend.vni", "outside 1..16777215"),
    ("[cluster]\nname='c'\n[backend]\nvni=12345678\n", "backend.vni", "longer than 15"),
    ("[cluster]\nname='c'\n[backend]\nport=0\n", "backend.port", "outside 1..65535"),
    ("[cluster]\nname='c'\n[backend]\nport=65536\n", "backend.port", "outside 1..65535"),
    ("[cluster]\nname='c'\n[backend]\ntype='host-gw'\n", "backend.type", "not supported"),
    ("[cluster]\nname='c'\n[underlay]\nmtu=1279\n", "underlay.mtu", "outside 1280..9000"),
    ("[cluster]\nname='c'\n[underlay]\nmtu=9001\n", "underlay.mtu", "outside 1280..9000"),
    ("[cluster]\nname='c'\n[underlay]\nmtu='1500'\n", "underlay.mtu", "not an integer"),
    ("cluster = 3\n", "cluster", "must be a table"),
    ("[cluster]\nname='c'\n[underlay]\nsubnet='127.0.0.0/24'\n", "underlay.subnet", "loopback"),
    ("[cluster]\nname='c'\n[underlay]\nsubnet='0.0.0.0/24'\n", "underlay.subnet", "unspecified"),
    ("[cluster]\nname='c'\n[underlay]\nsubnet='169.254.1.0/24'\n", "underlay.subnet",
     "link-local"),
    ("[cluster]\nname='c'\n[underlay]\nsubnet='255.255.255.0/24'\n", "underlay.subnet",
     "reserved"),
    ("[cluster]\nname='c'\ncidr='224.0.0.0/16'\n", "cluster.cidr", "multicast"),
    ("[cluster]\nname='c'\ncidr='127.0.0.0/16'\n", "cluster.cidr", "loopback"),
    ("[cluster]\nname='c'\ncidr='240.0.0.0/16'\n", "cluster.cidr", "reserved"),
    ("[cluster]\nname='c'\ncidr='0.0.0.0/0'\n", "cluster.cidr", "unspecified"),
])
def test_each_rule(text, key, words):
    message = error_of(text)
    assert f": {key}: " in message and words in message
    assert ";" in message  # the fix follows the problem


@pytest.mark.parametrize("cidr, subnet", [
    ("10.244.0.0/16", "10.244.3.0/24"), ("172.16.0.0/12", "172.30.0.0/24"),
    ("10.0.0.0/8", "10.1.0.0/16"), ("192.168.0.0/16", "192.168.0.0/16"),
])
def test_overlap_suggests_a_free_subnet(cidr, subnet):
    message = error_of(f"[cluster]\nname='c'\ncidr='{cidr}'\nnode_mask=24\n"
                       f"[underlay]\nsubnet='{subnet}'\n")
    assert "overlaps cluster.cidr" in message
    suggested = message.split('subnet = "')[1].rstrip('"')
    fixed = spec.parse(f"[cluster]\nname='c'\ncidr='{cidr}'\nnode_mask=24\n"
                       f"[underlay]\nsubnet='{suggested}'\n")
    assert fixed.underlay_subnet.prefixlen == IPv4Network(subnet).prefixlen
    assert not fixed.underlay_subnet.overlaps(fixed.cluster_cidr)


def test_not_toml_names_the_line():
    message = error_of("[cluster]\nname = 'c'\nnodes = = 2\n")
    assert "not valid TOML" in message and "line 3" in message


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read topology file"):
        spec.load(tmp_path / "nope.toml")


def test_shipped_topologies_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the checkout
    assert resources.topology(None).samefile(DEFAULT)
    assert resources.topology("flannel-vxlan").samefile(DEFAULT)
    assert resources.topology("flannel-vxlan-4x8.toml").samefile(BIG)


def test_a_file_beats_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flannel-vxlan.toml").write_text(GOOD)
    assert resources.topology("flannel-vxlan.toml") == Path("flannel-vxlan.toml")


def test_relative_paths_tried_against_each_base(tmp_path):
    first, second = tmp_path / "tests", tmp_path
    (second / "mine.toml").write_text(GOOD)
    assert resources.topology("mine.toml", [first, second]) == second / "mine.toml"
    (first / "mine.toml").parent.mkdir()
    (first / "mine.toml").write_text(GOOD)
    assert resources.topology("mine.toml", [first, second]) == first / "mine.toml"
    with pytest.raises(UsageError) as caught:
        resources.topology("sub/nope.toml", [first, second])
    assert str(caught.value) == (f"sub/nope.toml: no such topology file (looked in {first}, "
                                 f"{second}); pass an existing file or a shipped topology by "
                                 "name: flannel-vxlan, flannel-vxlan-4x8, flannel-vxlan-cni")


def test_boundaries_accepted():
    s = spec.parse("[cluster]\nname='c'\nnode_mask=29\npods_per_node=5\n"
                   "[backend]\nvni=9999999\nport=65535\n[underlay]\nmtu=9000\n")
    assert s.vtep_name == "flannel.9999999" and s.vtep_mtu == 8950
