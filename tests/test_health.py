"""Damaged clusters say so: `status` exits 1 naming the problem and the fix; commands
on them exit 2 with that message; an unreadable record still leads to its namespaces."""

import json

import pytest

from dataplane.cluster import netns, state

from .conftest import dp, leftovers, one_line_error, sh, up_orphaned, up_released, unique_name

pytestmark = pytest.mark.needs_root


def commands_on(name: str) -> list[tuple[str, ...]]:
    """Every command that works on a running cluster."""
    return [("trace", "--running", name, "--from", "node-0/pod-0", "--to", "node-1/pod-1"),
            ("capture", "--running", name, "--duration", "1", "-o", "/dev/null"),
            ("fault", "inject", "missing-fdb", "--running", name)]


def test_namespaces_deleted_by_hand(private_state):
    name = unique_name("hand")
    up_released(name)
    lost = f"dp-{name}.node-1.pod-0"
    sh(None, "ip", "netns", "del", lost)
    done = dp("status", name)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"cluster {name}: up, 6/7 namespaces present (DAMAGED);")
    assert lines[1] == (f"  PROBLEM: 1 of its 7 namespaces are missing ({lost}); take it down "
                        f"with `dataplane down {name}` and bring it up again")
    (row,) = [line for line in lines if "MISSING" in line]
    assert row.startswith("  node-1/pod-0 ") and row.endswith(f"{lost}  MISSING")
    shown = json.loads(dp("status", name, "--json").stdout)
    assert shown["namespaces"]["missing"] == [lost] and len(shown["problems"]) == 1
    for argv in commands_on(name):
        line = one_line_error(dp(*argv))
        assert line == f"dataplane: cluster {name} is not usable: {shown['problems'][0]}", argv
    assert dp("down", name).returncode == 0 and leftovers(name) == []


def test_a_cluster_whose_owner_died(private_state):
    name = unique_name("orph")
    pid = up_orphaned(name)
    done = dp("status", name)
    assert done.returncode == 1
    assert "7/7 namespaces present (DAMAGED)" in done.stdout
    assert f"PROBLEM: the process that built it (pid {pid}) died without taking it down; " \
           "remove it with `dataplane clean`" in done.stdout
    line = one_line_error(dp(*commands_on(name)[0]))
    assert f"cluster {name} is not usable: the process that built it (pid {pid}) died" in line
    assert dp("clean").returncode == 0 and leftovers(name) == []


def test_a_healthy_cluster_is_ok(private_state):
    name = unique_name("ok")
    up_released(name)
    try:
        done = dp("status")
        assert done.returncode == 0, done.stdout
        assert f"cluster {name}: up, 7/7 namespaces present (ok);" in done.stdout
        assert "PROBLEM" not in done.stdout
    finally:
        dp("down", name)


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[]", b'{"name": "x"}',
                                     b'{"name": "NAME", "namespaces": 3, "source": "?"}'],
                         ids=["empty", "cut", "binary", "list", "keys", "types"])
def test_an_unreadable_state_still_leads_to_its_namespaces(private_state, content):
    name = unique_name("corrupt")
    up_released(name)
    (private_state / name / state.STATE_FILE).write_bytes(content.replace(b"NAME",
                                                                          name.encode()))
    listing = dp("status")
    assert listing.returncode == 1
    assert f"cluster {name}: STATE UNREADABLE, 7 namespaces named after it;" in listing.stdout
    assert f"remove it and its namespaces with `dataplane down {name}`" in listing.stdout
    shown = json.loads(dp("status", "--json").stdout)["clusters"]
    assert [(c["name"], c["phase"]) for c in shown] == [(name, "unreadable")]
    line = one_line_error(dp(*commands_on(name)[0]))
    assert line.startswith(f"dataplane: cluster {name}: its state is unreadable (state.json: ")
    assert dp("clean").returncode == 0 and len(leftovers(name)) == 8  # only with --all
    done = dp("down", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"cluster {name} is down (7 namespaces removed)\n"
    assert leftovers(name) == [] and not netns.listed(f"dp-{name}.")
