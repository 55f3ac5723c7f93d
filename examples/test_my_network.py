"""A user's own dataplane tests: `sudo pytest examples/test_my_network.py`.

The dataplane plugin is active once the package is installed; the cluster is
built from the marker's topology for this module and torn down after it.
"""

import pytest

pytestmark = pytest.mark.dataplane_topology("my-topology.toml")  # beside this file


def test_web_reaches_the_database_across_nodes(dataplane_verify):
    r = dataplane_verify("edge/web", "db/cache", proto="tcp")
    assert r.passed, r.diagnosis


def test_pods_on_one_node_are_bridged(dataplane_verify):
    r = dataplane_verify("core/api", "core/cache", proto="udp")
    assert r.passed, r.diagnosis
    assert not any(hop.device == "flannel.42" for hop in r.hops)


@pytest.mark.parametrize("src, dst", [("edge/web", "core/api"), ("core/api", "edge/web")])
def test_both_ways(dataplane_verify, src, dst):
    assert dataplane_verify(src, dst).passed


def test_encapsulation_uses_the_configured_vni(dataplane_verify):
    r = dataplane_verify("edge/web", "core/api", proto="udp")
    outer = [hop.frame for hop in r.hops if hop.frame is not None and hop.frame.vni is not None]
    assert outer and all(frame.vni == 42 and frame.dport == 8472 for frame in outer)
