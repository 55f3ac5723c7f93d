"""Verify at scale: every ordered pair of big clusters, waves that never lose events or
overflow the kernel's tables, samples that cover every node pair and pod, and a ring
buffer too small for the traffic giving INCONCLUSIVE, never PASS."""

import pytest

from dataplane.cluster import spec
from dataplane.cluster.plan import make_plan
from dataplane.verify import verifier
from dataplane.verify import pairs as choose


def topology(tmp_path, nodes, pods):
    path = tmp_path / f"{nodes}x{pods}.toml"
    path.write_text(f'[cluster]\nname = "s{nodes}x{pods}"\nnodes = {nodes}\n'
                    f'pods_per_node = {pods}\n')
    return path


@pytest.mark.needs_root
@pytest.mark.parametrize("nodes, pods", [(4, 16), (8, 16)])
@pytest.mark.needs_probes
def test_every_pair_of_a_big_cluster_passes_without_lost_events(dataplane_clusters,
                                                               tmp_path, nodes, pods):
    plan = dataplane_clusters(topology(tmp_path, nodes, pods)).plan
    report = verifier.run(plan, "all", ("icmp",), mtu=False, keep_hops=False)
    total = nodes * pods
    assert len(report.flows) == total * (total - 1)
    assert report.lost_events == 0
    failed = [f"{f.src}->{f.dst} [{f.rule}] {f.diagnosis}" for f in report.flows if not f.passed]
    assert failed == []
    assert all(f.hops == [] for f in report.flows)  # judged, written out, dropped


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_a_ring_buffer_too_small_is_inconclusive_never_pass(dataplane_cluster):
    report = verifier.run(dataplane_cluster.plan, buffer_pages=1)
    assert report.lost_events > 0
    assert {f.verdict for f in report.flows} == {"INCONCLUSIVE"}
    assert {f.rule for f in report.flows} == {"lost-events"}


def test_the_sample_covers_every_node_pair_and_every_pod_both_ways():
    plan = make_plan(spec.parse('[cluster]\nname = "big"\nnodes = 16\npods_per_node = 32\n'))
    chosen = choose.pairs(plan, "sample")
    assert choose.default_pairs(plan) == "sample" and len(chosen) < 2000
    assert {(s.node, d.node) for s, d in chosen} == {(a.name, b.name) for a in plan.nodes
                                                     for b in plan.nodes}
    assert {s.ref for s, _ in chosen} == {p.ref for p in plan.pods()}
    assert {d.ref for _, d in chosen} == {p.ref for p in plan.pods()}
    assert all(s != d for s, d in chosen) and len(set(chosen)) == len(chosen)


def test_waves_fit_the_ring_buffer_and_the_neighbour_room(tmp_path):
    """Every wave of a 16x32 all-pairs run stays within the events and the ARP entries
    it may cost; a broken 4x8 ICMP run waits the answer timeout once."""
    plan = make_plan(spec.load(topology(tmp_path, 16, 32)))
    todo = verifier.probes(plan, choose.pairs(plan, "all"), ("icmp", "tcp"), mtu=False)
    count = 0
    for wave in verifier.waves(plan, todo):
        count += len(wave)
        assert sum(verifier.EVENTS[p.proto] for p in wave) <= verifier.WAVE_EVENTS
        learnt = set().union(*(verifier.neighbours(plan, p) for p in wave))
        assert len(learnt) <= verifier.NEIGHBOUR_MARGIN and wave.taught == learnt
    assert count == 2 * 512 * 511
    small = make_plan(spec.load(topology(tmp_path, 4, 8)))
    icmp = verifier.probes(small, choose.pairs(small, "all"), ("icmp",), mtu=False)
    assert len(list(verifier.waves(small, icmp))) == 1


def test_an_exchange_teaches_the_neighbours_it_crosses(tmp_path):
    plan = make_plan(spec.load(topology(tmp_path, 2, 2)))
    a, a2, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1"), plan.pod("node-1/pod-0")
    n0, n1 = plan.node("node-0"), plan.node("node-1")
    assert verifier.neighbours(plan, verifier.Probe(a, a2, "icmp")) == {(a.netns, a2.ip),
                                                                        (a2.netns, a.ip)}
    assert verifier.neighbours(plan, verifier.Probe(a, b, "icmp")) == {
        (a.netns, a.gateway), (b.netns, b.gateway), (n0.netns, a.ip), (n1.netns, b.ip),
        (n0.netns, n1.underlay_ip), (n1.netns, n0.underlay_ip)}
