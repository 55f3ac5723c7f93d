"""Every public fault, verified as a user would: `verify` exits 1, the flows the fault
touches FAIL with a cause naming the broken node and device, every other flow PASSes,
five runs in a row give the same verdicts, and `status` shows the drift."""

import json

import pytest

from dataplane.cluster import faults
from dataplane.verify import audit, verifier

from .conftest import dp

pytestmark = pytest.mark.needs_root

NODE, POD, PEER = "node-0", "node-0/pod-0", "node-1"


def _vtep(plan):
    return plan.spec.vtep_name


def _host_veth(plan):
    return plan.pod(POD).host_veth


# fault -> (where its cause is: (at, device) from the plan, whether it breaks a pod)
CASES = {
    "vni-mismatch": (lambda plan: (NODE, _vtep(plan)), False),
    "missing-fdb": (lambda plan: (NODE, _vtep(plan)), False),
    "veth-detached": (lambda plan: (NODE, _host_veth(plan)), True),
    "no-ip-forward": (lambda plan: (NODE, None), False),
    "pod-mtu": (lambda plan: (POD, "eth0"), True),
    "vtep-local": (lambda plan: (NODE, _vtep(plan)), False),
    "stale-vtep-mac": (lambda plan: (NODE, _vtep(plan)), False),
    "underlay-mtu": (lambda plan: (NODE, "eth0"), False),
    "pod-no-route": (lambda plan: (POD, "eth0"), True),
}


def test_every_public_fault_has_a_case():
    assert set(CASES) == set(faults.FAULTS)


def touched(flow, breaks_pod: bool) -> bool:
    """Whether a flow has the broken pod, or the broken node, at one of its ends."""
    ends = (flow.src, flow.dst)
    if breaks_pod:
        return POD in ends
    return any(end.split("/")[0] == NODE for end in ends)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.needs_probes
def test_fault_fails_its_flows_with_the_right_cause(dataplane_clusters, name):
    made = dataplane_clusters()
    plan = made.plan
    place, breaks_pod = CASES[name]
    where = place(plan)
    options = {"node": NODE, "peer": PEER} if name == "missing-fdb" else \
        {"pod": POD} if breaks_pod else {"node": NODE}
    faults.inject(plan, name, **options)

    runs = [verifier.run(plan) for _ in range(5)]
    verdicts = [{(f.src, f.dst, f.proto, f.size): (f.verdict, f.rule) for f in r.flows}
                for r in runs]
    assert all(v == verdicts[0] for v in verdicts), f"{name}: verdicts changed between runs"
    report = runs[0]
    assert any((d.at, d.device) == where for d in report.drift), report.drift
    failed = [f for f in report.flows if not f.passed]
    assert failed, f"{name}: no flow failed"
    for flow in report.flows:
        label = f"{name}: {flow.proto}/{flow.size} {flow.src}->{flow.dst}"
        if not touched(flow, breaks_pod):
            assert flow.passed, f"{label} should pass: {flow.diagnosis}"
        elif not flow.passed:
            assert flow.verdict == "FAIL", f"{label}: {flow.diagnosis}"
            assert where in {(c.at, c.device) for c in flow.cause}, f"{label}: {flow.cause}"

    done = dp("verify", "--running", made.name, "--json")
    assert done.returncode == 1, done.stderr
    shown = json.loads(done.stdout)
    assert shown["summary"]["fail"] == len(failed)
    assert all(f["cause"] for f in shown["flows"] if f["verdict"] == "FAIL")
    status = dp("status", made.name, "--json")
    assert status.returncode == 1
    assert [where[0], where[1]] in [[d["at"], d["device"]] for d in json.loads(status.stdout)["drift"]]


def test_repair_undoes_every_fault_on_one_cluster(dataplane_clusters):
    """As the VM lane uses it: one cluster, each fault injected then repaired, and the
    audit (an independent read of the kernel's state) clean again before the next."""
    plan = dataplane_clusters().plan
    assert "not in place" in faults.repair(plan, "missing-fdb")
    for name in faults.FAULTS:
        faults.inject(plan, name)
        assert audit.audit(plan), f"{name}: the audit saw no drift"
        faults.repair(plan, name)
        assert audit.audit(plan) == [], f"{name}: drift left after the repair"
