"""Bring a cluster up and down, recording it so nothing is ever left behind."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dataplane import netns, nodefiles, spec, state
from dataplane.errors import UsageError
from dataplane.plan import Plan, make_plan


@dataclass
class Cluster:
    plan: Plan
    record: state.Record

    @property
    def name(self) -> str:
        return self.plan.name


def plan_of(record: state.Record) -> Plan:
    return make_plan(spec.parse(record.topology_text, source=record.source, name=record.name))


def up(topology: str | Path, name: str | None = None) -> Cluster:
    """Build the cluster described by the topology file; tear down on any failure,
    KeyboardInterrupt included. The caller owns the result until it calls
    release() on its record or down()."""
    plan = make_plan(spec.load(topology, name=name))  # a bad file stops here, nothing made
    text = Path(topology).read_text()
    record = state.register(plan.name, plan.namespaces(), str(topology), text)
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
