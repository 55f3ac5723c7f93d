"""The pytest plugin, run by pytester on test files of its own."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dataplane.cluster import netns

from .conftest import BIG, ROOT, dp

PASSING = '''
def test_cross_node_udp(dataplane_verify):
    r = dataplane_verify("node-0/pod-0", "node-1/pod-1", proto="udp")
    assert r.passed, r.diagnosis
    assert r.verdict == "PASS" and any(h.device == "flannel.1" for h in r.hops)

def test_same_node(dataplane_verify):
    assert dataplane_verify("node-0/pod-0", "node-0/pod-1").passed

def test_tracer_sees_traffic(dataplane_cluster, dataplane_tracer):
    from dataplane.traffic import prober
    plan = dataplane_cluster.plan
    assert prober.exchange(plan.pod("node-0/pod-0"), plan.pod("node-1/pod-0"), "icmp").answered
    assert any(h.at == "node-1/pod-0" for h in dataplane_tracer.take(50))
'''

FAILING = '''
from dataplane.cluster import faults

def test_broken(dataplane_cluster, dataplane_verify):
    faults.inject(dataplane_cluster.plan, "missing-fdb", node="node-0", peer="node-1")
    r = dataplane_verify("node-0/pod-0", "node-1/pod-1")
    assert r.passed, r.diagnosis
'''


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_passing_checks(pytester):
    pytester.makepyfile(test_user=PASSING)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_failure_shows_hops_diagnosis_and_pcap(pytester, tmp_path):
    pytester.makepyfile(test_user=FAILING)
    result = pytester.runpytest("-p", "no:cacheprovider", f"--dataplane-pcap={tmp_path}")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "dataplane flows" in text and "FAIL icmp node-0/pod-0 -> node-1/pod-1 [path]" in text
    assert "SKB_DROP_REASON_NO_TX_TARGET" in text and "net_dev_start_xmit" in text
    assert (tmp_path / "test_broken.pcapng").stat().st_size > 100


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_keep_leaves_the_failed_cluster_up(pytester):
    pytester.makepyfile(test_user=FAILING)
    result = pytester.runpytest("-p", "no:cacheprovider", "--dataplane-keep", "-s")
    result.assert_outcomes(failed=1)
    kept = [line.split()[3] for line in result.stdout.lines if "kept cluster" in line]
    assert kept, result.stdout.str()
    try:
        assert netns.exists(f"dp-{kept[0]}.node-0")
    finally:
        dp("down", kept[0])


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_topology_marker(pytester):
    pytester.makepyfile(test_user=f'''
import pytest
pytestmark = pytest.mark.dataplane_topology({str(BIG)!r})

def test_big(dataplane_cluster, dataplane_verify):
    assert len(dataplane_cluster.plan.nodes) == 4
    assert dataplane_verify("node-3/pod-7", "node-0/pod-0").passed
''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


README_EXAMPLE = '''
import pytest

pytestmark = pytest.mark.dataplane_topology("flannel-vxlan")

def test_cross_node_udp(dataplane_verify):
    r = dataplane_verify("node-0/pod-0", "node-1/pod-1", proto="udp")
    assert r.passed, r.diagnosis
'''


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_the_readme_example_runs_outside_the_repository(pytester):
    assert ROOT not in pytester.path.parents
    pytester.makepyfile(test_user=README_EXAMPLE)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


NODES = '''
import pytest
pytestmark = pytest.mark.dataplane_topology({path!r})

def test_nodes(dataplane_cluster):
    assert [n.name for n in dataplane_cluster.plan.nodes] == {nodes!r}
'''


@pytest.mark.needs_root
def test_marker_paths_beside_the_test_file_then_in_rootdir(pytester):
    (pytester.path / "sub").mkdir()
    (pytester.path / "sub" / "here.toml").write_text(
        '[cluster]\nname = "here"\nnodes = ["near"]\n')
    (pytester.path / "top.toml").write_text('[cluster]\nname = "top"\nnodes = ["far"]\n')
    (pytester.path / "sub" / "test_here.py").write_text(NODES.format(path="here.toml",
                                                                    nodes=["near"]))
    (pytester.path / "sub" / "test_top.py").write_text(NODES.format(path="top.toml",
                                                                   nodes=["far"]))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


@pytest.mark.needs_root
def test_a_bad_topology_is_reported_once(pytester):
    pytester.makepyfile(test_user=NODES.format(path="nope.toml", nodes=[]))
    # -rN: no short summary, which repeats the message in full where CI is set
    result = pytester.runpytest("-p", "no:cacheprovider", "-rN")
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert text.count("nope.toml: no such topology file (looked in") == 1, text
    assert "During handling" not in text


def test_failed_hop_comparisons_show_a_hop_table(pytester):
    pytester.makepyfile(test_user='''
from dataplane.records import Frame, Hop

def test_hops():
    frame = Frame(eth_src="", eth_dst="", ethertype=0x800, src="10.244.0.2",
                  dst="10.244.1.2", proto="icmp", icmp_type=8, icmp_id=3)
    hop = Hop(ts=1, skb=1, netns=1, at="node-0/pod-0", ifindex=2, device="eth0",
              func="net_dev_start_xmit", dir="tx", length=84, frame=frame, raw=b"x" * 64)
    assert [hop] == []
''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*PACKET  AT*DEVICE*DIR*FUNC*LEN*HEADERS*",
        "*1  request node-0/pod-0*eth0*tx*net_dev_start_xmit*84*"
        "10.244.0.2 > 10.244.1.2 icmp type 8 id 3*",
    ])
    assert not [line for line in result.stdout.lines if line.startswith("E ") and "Hop(" in line]


def test_capability_markers_skip_with_the_fix(pytester):
    pytester.makepyfile(test_user='''
import pytest

@pytest.mark.needs_kprobes
def test_kprobes():
    pass

@pytest.mark.needs_btf
def test_btf():
    pass
''')
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    from dataplane.bpf import btf, kernel
    kprobes, has_btf = kernel.kprobes_available(), btf.VMLINUX.exists()
    result.assert_outcomes(passed=kprobes + has_btf, skipped=2 - kprobes - has_btf)
    if not kprobes:
        result.stdout.fnmatch_lines(["*needs kprobes: this kernel has none*"])
    if not has_btf:
        result.stdout.fnmatch_lines(["*needs BTF: boot a kernel built with*"])


def test_without_root_the_fixtures_skip():
    """`pytest` as a normal user: skips with the reason, never an error."""
    with tempfile.TemporaryDirectory() as folder:  # one a normal user may read
        os.chmod(folder, 0o755)
        (Path(folder) / "test_user.py").write_text(PASSING)
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
            if os.geteuid() == 0 else []
        done = subprocess.run([*user, sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               "-rs", folder], cwd=folder, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "HOME": folder})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 skipped" in done.stdout and "needs root: run sudo pytest" in done.stdout


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_the_shipped_example_passes():
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "examples/test_my_network.py"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "5 passed" in done.stdout
