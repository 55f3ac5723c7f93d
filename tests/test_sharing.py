"""A machine shared by several users and processes: who holds a cluster, what `down`
and `clean` may remove, and what a process whose cluster vanished says."""

import os
import subprocess
import sys
import time

import pytest

from dataplane.cluster import netns, state

from .conftest import (ROOT, dp, dp_start, leftovers, one_line_error, unique_name, up_orphaned,
                       up_released)

pytestmark = pytest.mark.needs_root

# A process holding a cluster the way `verify --running` does; on a line on stdin it
# sends one exchange in it, so what it says after the cluster vanished can be seen.
HOLDER = """
import sys
from dataplane.cluster import lifecycle
from dataplane.traffic import prober
from dataplane.errors import UsageError

try:
    with lifecycle.using(sys.argv[1], "a test's holder") as made:
        print("holding", flush=True)
        sys.stdin.readline()
        prober.exchange(made.plan.pods()[0], made.plan.pods()[1], "udp")
except UsageError as err:
    sys.exit(f"dataplane: {err}")
"""


def start_holder(name: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, name], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "holding\n", proc.stderr.read()
    return proc


def test_down_refuses_a_held_cluster_until_forced(private_state):
    name = unique_name("held")
    up_released(name)
    holder = start_holder(name)
    try:
        line = one_line_error(dp("down", name))
        assert line == (f"dataplane: cluster {name} is in use by pid {holder.pid} (a test's "
                        f"holder); wait for it to end, or take the cluster down anyway with "
                        f"`dataplane down {name} --force`")
        assert all(netns.exists(ns) for ns in state.read(name).namespaces)
        forced = dp("down", name, "--force")
        assert forced.returncode == 0, forced.stderr
        _, err = holder.communicate("go\n", timeout=30)
        # one line saying what happened, not [Errno 2] or a traceback
        assert err == (f"dataplane: cluster {name} was taken down while this command ran "
                       f"(its state {private_state / name} is gone)\n")
        assert holder.returncode == 1
    finally:
        holder.kill()
        holder.wait()
    assert leftovers(name) == []


def test_a_dead_holder_does_not_count(private_state):
    name = unique_name("stale")
    up_released(name)
    holder = start_holder(name)
    holder.kill()  # no chance to take itself off the record
    holder.wait()
    assert [u.pid for u in state.read(name).users] == [holder.pid]
    done = dp("down", name)
    assert done.returncode == 0, done.stderr
    assert leftovers(name) == []


def test_a_test_sessions_cluster_is_held_by_it(private_state, dataplane_clusters):
    mine = dataplane_clusters()
    line = one_line_error(dp("down", mine.name))
    assert f"in use by pid {os.getpid()} (the process that built it)" in line
    assert all(netns.exists(ns) for ns in mine.plan.namespaces())


def test_the_owner_takes_down_what_it_made_even_while_held(private_state, dataplane_clusters):
    from dataplane.cluster import lifecycle

    mine = dataplane_clusters()
    holder = start_holder(mine.name)
    try:
        assert len(lifecycle.down(mine.name)) == 7
    finally:
        holder.kill()
        holder.wait()


def test_clean_removes_only_what_dead_processes_left(private_state, dataplane_clusters):
    finished, orphaned, unreadable = (unique_name(tag) for tag in ("fin", "orph", "unr"))
    up_released(finished)
    dead_pid = up_orphaned(orphaned)
    up_released(unreadable)
    (private_state / unreadable / state.STATE_FILE).write_text("{")
    held = dataplane_clusters()  # this live process holds it

    done = dp("clean")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"removed {orphaned}: the process that built it (pid {dead_pid}) died without " \
           "taking it down (7 namespaces)" in lines
    assert f"left {finished}: a finished `up` cluster, up on purpose; remove it with " \
           f"`dataplane down {finished}` or `dataplane clean --all`" in lines
    assert any(line.startswith(f"left {unreadable}: its state is unreadable (state.json: ")
               for line in lines)
    assert f"left {held.name}: in use by pid {os.getpid()} (the process that built it)" in lines
    assert leftovers(orphaned) == []
    assert len(leftovers(finished)) == 8 and len(leftovers(unreadable)) == 8

    by_name = dp("clean", finished)
    assert by_name.returncode == 0, by_name.stderr
    assert leftovers(finished) == []

    everything = dp("clean", "--all")
    assert everything.returncode == 0, everything.stderr
    assert leftovers(unreadable) == []
    assert f"left {held.name}: in use by pid {os.getpid()}" in everything.stdout

    asked = dp("clean", held.name)  # named, but held: left, and said so
    assert asked.returncode == 1 and f"left {held.name}: in use by pid" in asked.stdout
    assert len(leftovers(held.name)) == 8
    assert "no cluster named" in one_line_error(dp("clean", "no-such-cluster"))


@pytest.mark.needs_probes
def test_capture_says_when_its_cluster_is_taken_down(private_state, tmp_path):
    name = unique_name("capgone")
    up_released(name)
    out = tmp_path / "out.pcapng"
    proc = dp_start("capture", "--running", name, "--duration", "3", "-o", str(out), text=True,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not state.read(name).users and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [u.command for u in state.read(name).users] == ["dataplane capture"]
        assert dp("down", name).returncode == 2  # held
        assert dp("down", name, "--force").returncode == 0
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 2
    assert err.splitlines()[-1] == (f"dataplane: cluster {name} was taken down while this "
                                    f"command ran (its state {private_state / name} is gone)")
    assert len(err.splitlines()) <= 2  # that line, after capture's "recording ..."
