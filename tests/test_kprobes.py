"""The kprobe backend end to end: run where the kernel has kprobes (the VM lane,
`make vm-test`, boots Debian's stock kernel for it, and fails if any of these skip);
skipped elsewhere with the reason."""


import pytest

from dataplane.bpf import kernel, loader
from dataplane.bpf.tracer import Tracer
from dataplane.cluster import faults
from dataplane.report.hoptable import trace_text
from dataplane.traffic import prober
from dataplane.verify import verifier
from dataplane.verify.paths import in_order

from .conftest import dp

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_kprobes]


def test_doctor_reports_kprobes_and_matching_headers():
    done = dp("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kprobes:         available" in done.stdout
    assert "kernel headers:  matching" in done.stdout
    assert "backends:        kprobes + tracepoints" in done.stdout


@pytest.mark.needs_probes
def test_every_kprobe_the_kernel_has_is_attached_and_fires(dataplane_clusters):
    """A fresh cluster's first exchanges (ARP floods included), same node and across
    nodes, reach every bridge and VXLAN function probed."""
    plan = dataplane_clusters().plan
    with Tracer(plan) as tracer:
        attached = {p.removeprefix("kprobe:") for p in tracer.loaded.attached
                    if p.startswith("kprobe:")}
        for src, dst in (("node-0/pod-0", "node-0/pod-1"), ("node-0/pod-0", "node-1/pod-1")):
            assert prober.exchange(plan.pod(src), plan.pod(dst), "icmp").answered
        fired = {h.func for h in tracer.take(100) if h.dir == "fn"}
    assert attached == kernel.kallsyms(), tracer.loaded.skipped
    assert {"br_handle_frame", "br_forward", "vxlan_xmit", "vxlan_rcv"} <= attached
    assert fired == attached, f"attached but never fired: {sorted(attached - fired)}"


def order(result, wanted):
    """Assert the request's hops hold the wanted (at, device or function) places, in order."""
    keys = [(h.at, h.func if h.dir == "fn" else h.device) for h in result.hops
            if h.flow is not None and h.flow.src == str(result.exchange.src.ip)]
    found = in_order(wanted, keys)
    assert len(found) == len(wanted), (wanted[len(found)], trace_text(result))


@pytest.mark.needs_probes
def test_same_node_hops_include_the_bridge_functions(dataplane_cluster):
    plan = dataplane_cluster.plan
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1")
    result = verifier.trace(plan, a.ref, b.ref, "icmp")
    assert result.exchange.answered and "kprobes" in result.backends
    order(result, [("node-0/pod-0", "eth0"), ("node-0", "br_handle_frame"),
                   ("node-0", "br_forward"), ("node-0", b.host_veth), ("node-0/pod-1", "eth0")])


@pytest.mark.needs_probes
def test_cross_node_hops_include_the_vxlan_functions(dataplane_cluster):
    plan = dataplane_cluster.plan
    result = verifier.trace(plan, "node-0/pod-0", "node-1/pod-1", "udp")
    assert result.exchange.answered
    order(result, [("node-0", "cni0"), ("node-0", "vxlan_xmit"), ("node-0", "eth0"),
                   ("node-1", "vxlan_rcv"), ("node-1", "flannel.1"), ("node-1/pod-1", "eth0")])


@pytest.mark.needs_probes
def test_verify_passes_then_fails_at_the_fault(dataplane_clusters):
    plan = dataplane_clusters().plan
    report = verifier.run(plan)
    assert report.passed, [str(d) for d in report.drift] + \
        [f"{f.proto}/{f.size} {f.src}->{f.dst} [{f.rule}] {f.diagnosis}"
         for f in report.flows if not f.passed]
    faults.inject(plan, "missing-fdb", node="node-0", peer="node-1")
    flow = {(f.src, f.dst): f for f in verifier.run(plan, protos=("icmp",), mtu=False).flows}[
        ("node-0/pod-0", "node-1/pod-1")]
    assert flow.verdict == "FAIL" and flow.last_hop["at"] == "node-0", flow.diagnosis


@pytest.mark.needs_probes
def test_btf_offsets_equal_offsetof_from_the_matching_headers():
    """Compiled against the guest's own headers: each _Static_assert holds."""
    from bcc import BPF

    layout = loader.layout()
    asserts = "".join(f"_Static_assert({expression} == {layout.offsets[macro]}, \"{macro}\");\n"
                      for macro, expression in loader.layout_from_headers("x86_64")
                      .offsets.items())
    BPF(text=(loader.HEADER_PRELUDE + asserts + "int nothing(void *ctx) { return 0; }\n").encode())
