"""pytest plugin: dataplane checks as ordinary tests (`sudo pytest`).

Registered through the pytest11 entry point, so it is active once the package
is installed. A test reads:

    def test_cross_node_udp(dataplane_verify):
        r = dataplane_verify("node-0/pod-0", "node-1/pod-1", proto="udp")
        assert r.passed, r.diagnosis

Fixtures: dataplane_cluster (built from a topology, torn down after its scope),
dataplane_clusters (a factory: more clusters, each torn down after the test),
dataplane_tracer (every hop while the test runs), dataplane_verify, dataplane_send
(any scapy packet from a pod, to an outcome). Markers: dataplane_topology(path),
needs_root, needs_probes, needs_kprobes, needs_btf. A failed test's report carries the
hop table of every flow it verified and every packet it sent.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Literal, get_args

import pytest

from dataplane import resources
from dataplane.bpf import btf, kernel
from dataplane.names import Proto
from dataplane.records import Hop

ROOT_REASON = "needs root: run sudo pytest"
CLUSTER_PREFIX = f"pt{os.getpid()}-"  # the clusters this session builds: pt<pid>-0, ...
_clusters = itertools.count()
_FLOWS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dataplane", "pod network verification")
    group.addoption("--dataplane-topology", metavar="FILE",
                    help="topology for dataplane_cluster (default: the marker, the "
                         "dataplane_topology ini option, or the shipped flannel-vxlan.toml)")
    group.addoption("--dataplane-keep", action="store_true",
                    help="leave a cluster up when a test using it failed, and print its name")
    group.addoption("--dataplane-pcap", metavar="DIR",
                    help="write a pcapng of each failed test's flows to DIR")
    parser.addini("dataplane_topology", "topology file for dataplane_cluster")
    parser.addini("dataplane_scope", "scope of dataplane_cluster: module (default) or session",
                  default="module")


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "dataplane_topology(path): the topology dataplane_cluster builds for this module",
        "needs_root: skip unless root (network namespaces and eBPF need it)",
        "needs_probes: skip unless the eBPF probes can run here (root, bcc, headers, BTF)",
        "needs_kprobes: skip unless the kernel has kprobes",
        "needs_btf: skip unless the kernel has BTF (/sys/kernel/btf/vmlinux)",
    ):
        config.addinivalue_line("markers", line)


Need = Literal["root", "probes", "btf", "kprobes"]
NEEDS: tuple[Need, ...] = get_args(Need)


def missing(need: Need) -> str | None:
    """Why a capability a test needs is missing here, with the fix; None when present."""
    if os.geteuid() != 0 and need in ("root", "probes"):
        return ROOT_REASON
    if need == "probes":
        for fact in kernel.facts():
            if not fact.ok:
                return f"probes cannot run: {fact.name} is {fact.value}; {fact.fix}"
    if need == "btf" and not btf.VMLINUX.exists():
        return "needs BTF: boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    if need == "kprobes" and not kernel.kprobes_available():
        return "needs kprobes: this kernel has none (CONFIG_KPROBES unset); use a VM with a " \
               "stock distribution kernel"
    return None


def skip_unless(*needs: Need) -> None:
    """Skip the running test, with the reason, unless every capability is here: the one
    skip helper, behind the needs_* markers and the fixtures alike."""
    for need in needs:
        reason = missing(need)
        if reason:
            pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    skip_unless(*(need for need in NEEDS if item.get_closest_marker(f"needs_{need}")))


def _scope(fixture_name: str, config: pytest.Config) -> str:
    scope = config.getini("dataplane_scope") or "module"
    if scope not in ("module", "session"):
        raise pytest.UsageError(f"dataplane_scope = {scope}: use module or session")
    return scope


def _topology(request: pytest.FixtureRequest) -> Path:
    """The topology the first of marker, option and ini names (a path, or a shipped
    topology's name), else the shipped default. A relative path is looked for beside
    what named it (the test file, the invocation directory, the ini file), then in
    pytest's rootdir."""
    config = request.config
    marker = request.node.get_closest_marker("dataplane_topology")
    rootdir = config.rootpath
    for chosen, base in (
        (marker.args[0] if marker else None, request.node.path.parent),
        (config.getoption("--dataplane-topology"), config.invocation_params.dir),
        (config.getini("dataplane_topology"), config.inipath.parent if config.inipath
         else rootdir),
    ):
        if chosen:
            return resources.topology(chosen, bases=list(dict.fromkeys([base, rootdir])))
    return resources.topology(None)


def _up(topology: Path, **options: str | None):
    """A cluster named after this process, or the test fails with the one-line reason."""
    from dataplane.cluster import lifecycle
    from dataplane.errors import UsageError

    try:
        return lifecycle.up(topology, name=f"{CLUSTER_PREFIX}{next(_clusters)}", **options)
    except UsageError as err:
        problem = str(err)  # failed outside the handler, so it is reported once
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope=_scope)
def dataplane_cluster(request: pytest.FixtureRequest):
    """A cluster built for this module (or session), torn down after it, failures included."""
    from dataplane.cluster import lifecycle, state

    skip_unless("root")
    made = _up(_topology(request))
    failures_before = request.session.testsfailed
    yield made
    if request.config.getoption("--dataplane-keep") and \
            request.session.testsfailed > failures_before:
        state.release(made.name)  # left for inspection; `dataplane down` removes it
        print(f"\ndataplane: kept cluster {made.name} up after a failure "
              f"(dataplane status {made.name}; dataplane down {made.name})")
    else:
        lifecycle.down(made.name)


@pytest.fixture
def dataplane_clusters(request: pytest.FixtureRequest):
    """make(topology=None, cni_mode=None) -> another cluster, built from a topology (a path,
    relative ones beside the test file, or a shipped topology's name; None: the one
    dataplane_cluster builds), with the pods wired as cni_mode says (default: the
    topology's); each is torn down after the test, unless the test took it down."""
    from dataplane.cluster import lifecycle

    skip_unless("root")
    made: list = []

    def make(topology: str | Path | None = None, cni_mode: str | None = None):
        path = _topology(request) if topology is None else resources.topology(
            topology, bases=[request.node.path.parent, request.config.rootpath])
        made.append(_up(path, cni_mode=cni_mode))
        return made[-1]

    yield make
    for cluster in made:
        if cluster.record.dir.exists():
            lifecycle.down(cluster.name)


@pytest.fixture
def dataplane_tracer(dataplane_cluster):
    """A Tracer recording every hop in the cluster while the test runs."""
    from dataplane.bpf.tracer import Tracer

    skip_unless("probes")
    with Tracer(dataplane_cluster.plan) as tracer:
        yield tracer


@pytest.fixture(scope=_scope)
def _dataplane_verifier(dataplane_cluster):
    from dataplane.verify.verifier import Verifier

    skip_unless("probes")
    with Verifier(dataplane_cluster.plan) as verifier:
        yield verifier


@pytest.fixture
def dataplane_verify(request: pytest.FixtureRequest, _dataplane_verifier):
    """verify(src, dst, proto="icmp") -> a result with .passed, .verdict, .diagnosis, .hops."""
    flows = request.node.stash.setdefault(_FLOWS, [])

    def verify(src: str, dst: str, proto: Proto = "icmp"):
        from dataplane.report.stream import flow_text

        plan = _dataplane_verifier.plan
        result = _dataplane_verifier.check(src, dst, proto)
        flows.append((lambda: flow_text(plan, result), result.hops))
        return result

    return verify


@pytest.fixture
def dataplane_send(request: pytest.FixtureRequest, dataplane_cluster):
    """send(src, packet, expect=None, count=1) -> a result with .outcome (delivered,
    answered, dropped or lost), .delivered_to, .answers (scapy packets), .dropped,
    .drop_reason, .hops. packet: a scapy packet or a list of them (copied, not changed),
    or an expression as `dataplane send` takes one. With expect, the test fails unless
    that is the outcome (answered counts as delivered)."""
    skip_unless("probes")
    plan = dataplane_cluster.plan
    flows = request.node.stash.setdefault(_FLOWS, [])

    def send(src: str, packet, expect: str | None = None, count: int = 1):
        from dataplane.traffic import craft
        from dataplane.send import sending

        pod, tag = plan.pod(src), craft.new_tag()
        made = craft.evaluate(packet, plan, pod, tag) if isinstance(packet, str) \
            else craft.packets(packet, pod, tag)
        result = sending.run(plan, src, made, count)
        flows.append((lambda: sending.as_text(result), result.hops))
        if expect is not None and not result.matches(expect):
            raise AssertionError(f"send from {src}: expected {expect}, got {result.outcome} "
                                 f"(lost events {result.lost_events}); its hops are in the "
                                 "dataplane flows section")
        return result

    return send


def _hop_rows(value: object) -> list[str] | None:
    """value as a hop table when it is a Hop or a list of them."""
    hops = [value] if isinstance(value, Hop) else value
    if isinstance(hops, (list, tuple)) and hops and all(isinstance(h, Hop) for h in hops):
        from dataplane.report.hoptable import hop_table

        return hop_table(list(hops))
    return None


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: object,
                              right: object) -> list[str] | None:
    """A failed comparison of hops shows them as `dataplane trace` prints them, not as
    dataclass reprs with their raw bytes."""
    tables = _hop_rows(left), _hop_rows(right)
    if tables == (None, None):
        return None
    lines = [f"comparing hops with {op}:"]
    for side, value, table in (("left", left, tables[0]), ("right", right, tables[1])):
        lines += [f"{side}:", *(table or [repr(value)])]
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    flows = item.stash.get(_FLOWS, [])  # (its text, its hops) for each flow and send
    if report.when != "call" or not report.failed or not flows:
        return
    report.sections.append(("dataplane flows", "\n\n".join(text() for text, _ in flows)))
    folder = item.config.getoption("--dataplane-pcap")
    if folder:
        from dataplane.report import pcapng

        Path(folder).mkdir(parents=True, exist_ok=True)
        out = Path(folder) / f"{item.name}.pcapng"
        out.write_bytes(pcapng.write([h for _, hops in flows for h in hops]))
        report.sections.append(("dataplane pcap", str(out)))
