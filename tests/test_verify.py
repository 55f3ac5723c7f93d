"""The verifier on live clusters: a healthy one passes, every fault fails at its place."""

import json

import pytest

from dataplane.cluster import faults
from dataplane.report.stream import as_text
from dataplane.verify import verifier

from .conftest import dp

pytestmark = pytest.mark.needs_root


def results(plan, **options):
    report = verifier.run(plan, **options)
    assert report.lost_events == 0
    return {(f.src, f.dst, f.proto, f.size): f for f in report.flows}


@pytest.mark.needs_probes
def test_healthy_cluster_passes_every_protocol_and_size(dataplane_cluster):
    flows = results(dataplane_cluster.plan, protos=("icmp", "udp", "tcp", "arp"), mtu=True)
    assert len(flows) == 12 * 7
    failed = [f"{f.src}->{f.dst} {f.proto}/{f.size}: {f.diagnosis}" for f in flows.values()
              if not f.passed]
    assert failed == []


@pytest.mark.needs_probes
def test_twenty_verifies_in_a_row_without_a_flake(dataplane_cluster):
    for _ in range(20):
        report = verifier.run(dataplane_cluster.plan)
        assert len(report.flows) == 12 * 7 and report.passed, as_text(report)


def crosses(flow, node):
    """Whether a flow has a leg that leaves or enters node across the underlay."""
    ends = {flow.src.split("/")[0], flow.dst.split("/")[0]}
    return len(ends) == 2 and node in ends


@pytest.mark.parametrize("fault, affected, where", [
    ("vni-mismatch", lambda f: crosses(f, "node-0"), {("node-0", "eth0"), ("node-1", "eth0")}),
    ("missing-fdb", lambda f: crosses(f, "node-0"), {("node-0", "flannel.1")}),
    ("no-ip-forward", lambda f: crosses(f, "node-0"),
     {("node-0", "cni0"), ("node-0", "flannel.1")}),
    ("veth-detached", lambda f: "node-0/pod-0" in (f.src, f.dst), None),
])
@pytest.mark.needs_probes
def test_fault_fails_where_it_is(dataplane_clusters, fault, affected, where):
    plan = dataplane_clusters().plan
    faults.inject(plan, fault, node="node-0", pod="node-0/pod-0", peer="node-1")
    for flow in results(plan, protos=("icmp",), mtu=False).values():
        if not affected(flow):
            assert flow.passed, f"{fault} should not touch {flow.src}->{flow.dst}: " \
                                f"{flow.diagnosis}"
            continue
        assert flow.verdict == "FAIL", f"{fault}: {flow.src}->{flow.dst} passed"
        assert any(c.at == "node-0" for c in flow.cause), flow.cause  # the node broken
        if where:
            assert (flow.last_hop["at"], flow.last_hop["device"]) in where, flow.diagnosis


@pytest.mark.needs_probes
def test_arp_stops_at_a_detached_veth(dataplane_clusters):
    plan = dataplane_clusters().plan
    pod = plan.pod("node-0/pod-1")
    faults.inject(plan, "veth-detached", pod=pod.ref)
    for flow in results(plan, protos=("arp",), mtu=False).values():
        # its own probes, and the who-has of its node's other pods for it
        if flow.src == pod.ref or (flow.dst == pod.ref and flow.src.startswith("node-0/")):
            assert (flow.verdict, flow.rule) == ("FAIL", "path"), flow.diagnosis
            assert pod.host_veth in flow.diagnosis or "cni0" in flow.diagnosis
        else:
            assert flow.passed, f"{flow.src}->{flow.dst}: {flow.diagnosis}"


@pytest.mark.needs_probes
def test_vni_mismatch_is_named_at_the_sender(dataplane_clusters):
    plan = dataplane_clusters().plan
    faults.inject(plan, "vni-mismatch", node="node-0")
    flow = results(plan, protos=("icmp",), mtu=False)[("node-0/pod-0", "node-1/pod-1", "icmp", None)]
    assert (flow.rule, flow.last_hop) == ("vxlan-vni", {"at": "node-0", "device": "eth0"})
    assert "VNI 2, not 1" in flow.diagnosis


@pytest.mark.needs_probes
def test_pod_mtu_fails_the_oversize_probe_of_that_pod_only(dataplane_clusters):
    plan = dataplane_clusters().plan
    faults.inject(plan, "pod-mtu", pod="node-0/pod-0")
    for flow in results(plan, protos=("icmp",)).values():
        if flow.src == "node-0/pod-0" and flow.size == plan.spec.vtep_mtu + 1:
            assert (flow.verdict, flow.rule) == ("FAIL", "mtu")
            assert "left node-0/pod-0 eth0" in flow.diagnosis
        else:
            assert flow.passed, f"{flow.src}->{flow.dst} {flow.size}: {flow.diagnosis}"


@pytest.mark.needs_probes
def test_verify_command_json():
    done = dp("verify", "--pairs", "cross-node", "--proto", "icmp", "--no-mtu", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["summary"] == {"pass": 8, "fail": 0, "inconclusive": 0, "drift": 0}
    flow = shown["flows"][0]
    assert {"src", "dst", "proto", "verdict", "rule", "diagnosis", "last_hop", "drop_reason",
            "hops"} <= set(flow)
    encap = [h for h in flow["hops"] if h["vxlan"]]
    assert encap and encap[0]["vxlan"]["vni"] == 1 and encap[0]["vxlan"]["port"] == 8472


@pytest.mark.needs_probes
def test_verify_command_fails_with_exit_1(dataplane_clusters):
    made = dataplane_clusters()
    faults.inject(made.plan, "no-ip-forward", node="node-1")
    done = dp("verify", "--running", made.name, "--proto", "icmp", "--no-mtu")
    assert done.returncode == 1, done.stderr
    assert "8 failed" in done.stdout.splitlines()[-2]  # the summary, above where time went


def test_fault_list_and_bad_name(dataplane_clusters):
    done = dp("fault", "list")
    assert set(faults.FAULTS) <= set(line.split()[0] for line in done.stdout.splitlines())
    made = dataplane_clusters()
    done = dp("fault", "inject", "nope", "--running", made.name)
    assert done.returncode == 2 and "fault list" in done.stderr
