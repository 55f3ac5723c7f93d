"""The verifier on networks broken by hand: every flow gets a verdict, never a crash,
and each FAIL names its cause (the node and device that is wrong)."""

import json

import pytest

from dataplane.cluster.plan import PodPlan
from dataplane.traffic import prober
from dataplane.verify import verifier

from .conftest import dp, sh

pytestmark = pytest.mark.needs_root


def verify_json(name, *options):
    done = dp("verify", "--running", name, "--json", *options)
    assert done.stdout, done.stderr  # the full report, whatever broke
    return done.returncode, json.loads(done.stdout)


def causes(flow):
    return {(c["at"], c["device"]) for c in flow["cause"]}


def by_pair(report):
    return {(f["src"], f["dst"], f["proto"], f["size"]): f for f in report["flows"]}


@pytest.mark.needs_probes
def test_a_pod_whose_eth0_is_down(dataplane_clusters):
    made = dataplane_clusters()
    sh(None, "ip", "-n", made.plan.pod("node-1/pod-1").netns, "link", "set", "eth0", "down")
    code, report = verify_json(made.name, "--proto", "icmp", "--no-mtu")
    assert code == 1
    for flow in report["flows"]:
        if "node-1/pod-1" not in (flow["src"], flow["dst"]):
            assert flow["verdict"] == "PASS", flow["diagnosis"]
            continue
        assert flow["verdict"] == "FAIL"
        assert ("node-1/pod-1", "eth0") in causes(flow), flow["cause"]
        if flow["src"] == "node-1/pod-1":
            assert flow["rule"] == "send" and "Errno 101" in flow["diagnosis"]


@pytest.mark.needs_probes
def test_a_pod_whose_address_is_gone(dataplane_clusters):
    made = dataplane_clusters()
    sh(None, "ip", "-n", made.plan.pod("node-1/pod-1").netns, "addr", "flush", "dev", "eth0")
    code, report = verify_json(made.name, "--proto", "udp", "--no-mtu")
    assert code == 1
    for flow in report["flows"]:
        if "node-1/pod-1" in (flow["src"], flow["dst"]):
            assert (flow["verdict"], flow["rule"]) == ("FAIL", "send")
            assert "Errno 99" in flow["diagnosis"] and "node-1/pod-1" in flow["diagnosis"]
            assert ("node-1/pod-1", "eth0") in causes(flow), flow["cause"]
        else:
            assert flow["verdict"] == "PASS", flow["diagnosis"]


@pytest.mark.needs_probes
def test_pod_mtu_gives_the_same_verdicts_five_runs_in_a_row(dataplane_clusters):
    """The first run leaves a path MTU cached in the pod; no later run may turn PASS."""
    from dataplane.cluster import faults

    made = dataplane_clusters()
    faults.inject(made.plan, "pod-mtu", pod="node-0/pod-0")
    runs = []
    for _ in range(5):
        report = verifier.run(made.plan, protos=("udp",))
        runs.append({(f.src, f.dst, f.size): (f.verdict, f.rule) for f in report.flows})
    assert all(run == runs[0] for run in runs)
    failed = {key for key, (verdict, _) in runs[0].items() if verdict == "FAIL"}
    assert failed == {("node-0/pod-0", dst.ref, made.plan.spec.vtep_mtu + 1)
                      for dst in made.plan.pods() if dst.ref != "node-0/pod-0"}


@pytest.mark.needs_probes
def test_a_fault_names_the_same_rule_however_fast_an_arp_fails(dataplane_clusters):
    """A detached pod's neighbours never answer. Whether their ARP fails (3 s) before a
    flow is judged decides what the broken path has left behind (connect's EHOSTUNREACH, an
    ICMP error over lo): as on a slow VM, where the rule used to change with it."""
    from dataplane.cluster import faults

    made = dataplane_clusters()
    faults.inject(made.plan, "veth-detached", pod="node-0/pod-0")
    runs = []
    for retrans_ms in (None, 20):
        if retrans_ms:  # every neighbour of the cluster gives up after 3 x 20 ms
            for ns in made.plan.namespaces():
                sh(ns, "sh", "-c", f"for f in /proc/sys/net/ipv4/neigh/*/retrans_time_ms; "
                   f"do echo {retrans_ms} > $f; done")
        report = verifier.run(made.plan)
        runs.append({(f.src, f.dst, f.proto, f.size): (f.verdict, f.rule)
                     for f in report.flows})
    assert runs[0] == runs[1], {k: (v, runs[1][k]) for k, v in runs[0].items() if v != runs[1][k]}
    failed = {key for key, (verdict, _) in runs[0].items() if verdict == "FAIL"}
    assert failed and {runs[0][key] for key in failed} == {("FAIL", "path")}


@pytest.mark.needs_probes
def test_plain_verify_checks_every_protocol_and_the_mtu(dataplane_clusters):
    from dataplane.cluster import faults

    made = dataplane_clusters()
    faults.inject(made.plan, "pod-mtu", pod="node-0/pod-0")
    code, report = verify_json(made.name)
    assert code == 1
    assert {f["proto"] for f in report["flows"]} == {"icmp", "udp", "tcp", "arp"}
    assert len(report["flows"]) == 12 * 7
    mtu = [f for f in report["flows"] if f["verdict"] == "FAIL"]
    assert mtu and all(f["rule"] == "mtu" and ("node-0/pod-0", "eth0") in causes(f)
                       for f in mtu)


@pytest.mark.needs_probes
def test_an_unreachable_underlay_port_is_blamed_on_the_far_node(dataplane_clusters):
    made = dataplane_clusters()
    sh(None, "ip", "-n", made.plan.underlay_netns, "link", "set", "node-1", "down")
    code, report = verify_json(made.name, "--proto", "icmp", "--no-mtu")
    assert code == 1
    for flow in report["flows"]:
        nodes = {flow["src"].split("/")[0], flow["dst"].split("/")[0]}
        if nodes == {"node-0", "node-1"}:
            assert flow["verdict"] == "FAIL"
            assert {at for at, _ in causes(flow)} <= {"node-1", "underlay"}, flow["cause"]
        else:
            assert flow["verdict"] == "PASS", flow["diagnosis"]


def test_a_namespace_gone_mid_run_is_that_flows_failure(dataplane_clusters):
    made = dataplane_clusters()
    src = made.plan.pod("node-0/pod-0")
    ghost = PodPlan(**{**made.plan.pod("node-1/pod-1").__dict__, "netns": "dp-no-such-ns"})
    with prober.Prober() as sender:
        for proto in ("icmp", "udp", "tcp", "arp"):
            from_ghost = sender.exchange(ghost, src, proto)
            assert not from_ghost.answered
            assert "node-1/pod-1" in from_ghost.error and "Errno 2" in from_ghost.error
        for proto in ("udp", "tcp"):  # the ghost's server socket cannot be opened
            to_ghost = sender.exchange(src, ghost, proto)
            assert not to_ghost.answered and "server socket in node-1/pod-1" in to_ghost.error
        assert sender.exchange(src, made.plan.pod("node-0/pod-1"), "icmp").answered


def test_nothing_to_verify_is_a_usage_error(tmp_path):
    one_node = tmp_path / "one.toml"
    one_node.write_text('[cluster]\nname = "one"\nnodes = 1\n')
    done = dp("verify", str(one_node), "--pairs", "cross-node")
    assert done.returncode == 2, done.stderr
    assert "selects no pod pair" in done.stderr and len(done.stderr.splitlines()) == 1
