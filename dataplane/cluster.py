"""Bring a cluster up and down, recording it so nothing is ever left behind."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from dataplane import netns, nodefiles, spec, state
from dataplane.errors import UsageError
from dataplane.plan import Plan, make_plan

SWITCH_INTERVAL = 1e-4  # seconds; see _make


@dataclass
class Cluster:
    plan: Plan
    record: state.Record

    @property
    def name(self) -> str:
        return self.plan.name


def plan_of(record: state.Record) -> Plan:
    return make_plan(spec.parse(record.topology_text, source=record.source, name=record.name))


@dataclass(frozen=True)
class Topology:
    """A validated topology file, read once: its Spec and its text (kept in the state)."""

    spec: spec.Spec
    text: str
    source: str

    def renamed(self, name: str) -> "Topology":
        return replace(self, spec=replace(self.spec, name=name))


def read(topology: str | Path, name: str | None = None) -> Topology:
    """Read and validate a topology file; a bad one stops here, before anything is made."""
    checked = spec.load(topology, name=name)
    return Topology(checked, Path(topology).read_text(), str(topology))


def up(topology: str | Path, name: str | None = None) -> Cluster:
    return start(read(topology, name))


def start(topology: Topology) -> Cluster:
    """Build the cluster; tear down on any failure, KeyboardInterrupt included. The
    caller owns the result until it calls release() on its record or down()."""
    plan = make_plan(topology.spec)
    record = state.register(plan.name, plan.namespaces(), topology.source, topology.text)
    taken = [ns for ns in plan.namespaces() if netns.exists(ns)]
    if taken:  # not ours to remove: only the record goes
        record.remove()
        raise UsageError(f"namespace {taken[0]} already exists; remove leftovers with "
                         "`dataplane clean` or pick another --name")
    try:
        _make(plan)
        record.write_files(nodefiles.node_files(plan))
        record.phase = "up"
        record.save()
    except BaseException:
        _remove(record)
        raise
    return Cluster(plan, record)


def _make(plan: Plan) -> None:
    # Four threads share the GIL here: this one encodes, two make namespaces, one sends
    # batches. The other three mostly wait on the kernel; at the default 5 ms switch
    # interval each return from a system call could wait that long for the GIL (beside
    # a busy main thread, one thread made 37 namespaces in 2 s; in 60 ms at this interval).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    creation = netns.Creation(plan.namespaces(), plan.sysctls)
    try:
        # Imported and run while the namespaces are being made: only building needs pyroute2.
        from dataplane import build

        build.build(plan, creation.socket)
    except BaseException as err:
        creation.abort()
        if isinstance(err, ModuleNotFoundError):
            raise UsageError(f"Python module {err.name} is missing for {sys.executable}; "
                             "install it with `make setup`") from None
        raise
    finally:
        sys.setswitchinterval(switch)
    creation.close()


def attach(name: str) -> Cluster:
    """The running cluster NAME (made by an earlier `up`)."""
    record = state.load(name)
    return Cluster(plan_of(record), record)


def down(name: str) -> list[str]:
    """Remove cluster NAME's namespaces and state; return the namespaces removed."""
    return _remove(state.load(name))


def _remove(record: state.Record) -> list[str]:
    removed = netns.remove(record.namespaces)
    record.remove()
    return removed


def clean() -> tuple[list[str], list[state.Record]]:
    """Remove every recorded cluster whose owning process is gone.

    Returns (namespaces removed, clusters skipped because a live process still
    owns them, such as a test session's or a `verify` in progress).
    """
    removed, busy = [], []
    for record in state.records():
        if record.owner_alive():
            busy.append(record)
        else:
            removed.extend(_remove(record))
    return removed, busy
