"""Safety: nothing in the root namespace, teardown on every failure, `clean` after SIGKILL."""

import os
import signal
import subprocess
import threading
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from dataplane.cluster import build, lifecycle, netns, state
from dataplane.errors import UsageError

from .conftest import BIG, DEFAULT, dp, dp_start, leftovers, one_line_error, sh, unique_name
from .pingall import ping_all

pytestmark = pytest.mark.needs_root


def root_snapshot() -> dict[str, str]:
    """Root namespace links, addresses, routes, rules, neighbours and forwarding."""
    return {
        "links": sh(None, "ip", "-o", "link", "show"),
        "addrs": sh(None, "ip", "-o", "addr", "show"),
        "routes": sh(None, "ip", "route", "show", "table", "all"),
        "rules": sh(None, "ip", "rule", "show"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


def test_root_namespace_untouched_by_up_and_down():
    before = root_snapshot()
    name = unique_name("root")
    made = lifecycle.up(BIG, name=name)
    during = root_snapshot()
    lifecycle.down(made.name)
    after = root_snapshot()
    assert during == before and after == before
    assert leftovers(name) == []


def test_two_clusters_side_by_side(dataplane_clusters):
    first, second = dataplane_clusters(DEFAULT), dataplane_clusters(DEFAULT)
    assert not set(first.plan.namespaces()) & set(second.plan.namespaces())
    assert ping_all(first.plan) == [] and ping_all(second.plan) == []
    lifecycle.down(first.name)
    assert ping_all(second.plan) == []


def test_exception_mid_build_tears_down(monkeypatch):
    name = unique_name("boom")
    real_node = build._node

    def failing_node(plan, node, *rest):
        if node.name == "node-2":
            raise RuntimeError("injected failure")
        real_node(plan, node, *rest)

    monkeypatch.setattr(build, "_node", failing_node)
    with pytest.raises(RuntimeError, match="injected"):
        lifecycle.up(BIG, name=name)
    assert leftovers(name) == []


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_kernel_refusal_mid_build_names_it_and_tears_down(monkeypatch):
    """A request the kernel refuses (here a route whose gateway is off-link) fails in
    the sending thread: the error names it and its namespace, and nothing is left,
    no namespace file held open and no thread running."""
    name = unique_name("refused")
    real_vtep = build.vtep

    def refused_route(plan, node, b, vni):
        real_vtep(plan, node, b, vni)
        if node.name == "node-0":  # the batches made after it find the failure
            b.route_add(IPv4Network("192.0.2.0/24"), IPv4Address("198.51.100.1"), build.VTEP)

    monkeypatch.setattr(build, "vtep", refused_route)
    fds, threads = open_fds(), threading.active_count()
    with pytest.raises(OSError, match=rf"route add 192.0.2.0/24 via 198.51.100.1 in "
                                      rf"dp-{name}.node-0 failed"):
        lifecycle.up(BIG, name=name)
    assert leftovers(name) == []
    assert open_fds() == fds and threading.active_count() == threads


def test_build_leaves_no_fd_or_thread_behind():
    fds, threads = open_fds(), threading.active_count()
    made = lifecycle.up(BIG, name=unique_name("fds"))
    try:
        assert open_fds() == fds and threading.active_count() == threads
    finally:
        lifecycle.down(made.name)


def test_same_name_twice_refused(dataplane_clusters):
    made = dataplane_clusters(DEFAULT)
    with pytest.raises(UsageError, match="already up"):
        lifecycle.up(DEFAULT, name=made.name)
    assert ping_all(made.plan) == []  # the first one is untouched


def test_leftover_namespace_refused_and_kept():
    name = unique_name("taken")
    sh(None, "ip", "netns", "add", f"dp-{name}.node-1")
    try:
        with pytest.raises(UsageError, match="already exists"):
            lifecycle.up(DEFAULT, name=name)
        assert netns.exists(f"dp-{name}.node-1")  # not ours: left alone
        assert not (state.STATE_ROOT / name).exists()
    finally:
        sh(None, "ip", "netns", "del", f"dp-{name}.node-1")


def huge_topology(tmp_path) -> Path:
    """16 nodes x 32 pods: a build long enough to interrupt."""
    path = tmp_path / "huge.toml"
    path.write_text(BIG.read_text().replace("nodes = 4", "nodes = 16")
                    .replace("pods_per_node = 8", "pods_per_node = 32"))
    return path


def start_up_and_wait_for_namespaces(topology: Path, name: str) -> subprocess.Popen:
    """Start `dataplane up` and return once it has made some namespaces, still building."""
    proc = dp_start("up", str(topology), "--name", name, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        made = [p for p in netns.NETNS_RUN.glob(f"dp-{name}.*")]
        if len(made) >= 20:
            break
        time.sleep(0.002)
    record = state.read(name)
    assert record.phase == "building" and proc.poll() is None, "the build ended too soon"
    return proc


@pytest.mark.parametrize("command", ["down", "clean", "status"])
def test_what_cannot_name_a_cluster_is_refused_and_nothing_removed(private_state, tmp_path,
                                                                   command):
    """A name is a folder of the state root: "", a path or a ".." would make `down` or
    `clean` remove the state root, a folder anywhere, or another cluster's record."""
    (private_state / "kept").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("", str(elsewhere), "kept/../kept", ".."):
        assert "cannot name a cluster" in one_line_error(dp(command, name))
    assert (private_state / "kept").is_dir() and elsewhere.is_dir()


def test_sigkill_mid_up_then_clean(private_state, tmp_path):
    name = unique_name("kill")
    proc = start_up_and_wait_for_namespaces(huge_topology(tmp_path), name)
    proc.kill()
    proc.communicate()
    assert leftovers(name), "SIGKILL should have left namespaces for clean to find"
    status = dp("status", name)
    assert status.returncode == 1
    assert f"PROBLEM: its build (pid {proc.pid}) died before finishing; remove what it made " \
           "with `dataplane clean`" in status.stdout
    line = one_line_error(dp("trace", "--running", name, "--from", "node-0/pod-0",
                             "--to", "node-1/pod-0"))
    assert f"cluster {name} is not usable: its build (pid {proc.pid}) died" in line
    done = dp("clean")
    assert done.returncode == 0, done.stderr
    assert f"removed {name}: half-built: its build (pid {proc.pid}) died" in done.stdout
    assert leftovers(name) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_mid_up_tears_down(tmp_path, sig, code):
    name = unique_name("sig")
    proc = start_up_and_wait_for_namespaces(huge_topology(tmp_path), name)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err == f"dataplane: interrupted ({sig.name})\n"
    assert leftovers(name) == []


def test_clean_spares_clusters_with_a_live_owner(private_state, dataplane_clusters):
    mine = dataplane_clusters(DEFAULT)  # owned by this pytest process
    done = dp("clean")
    assert done.returncode == 0, done.stderr
    assert f"left {mine.name}: in use by pid {os.getpid()}" in done.stdout
    assert ping_all(mine.plan) == []
