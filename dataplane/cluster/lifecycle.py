"""Bring a cluster up and down, recording it so nothing is ever left behind; judge
whether a recorded cluster is healthy, and who holds it."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from dataplane import resources
from dataplane.cluster import netns, nodeconfig, nodefiles, spec, state
from dataplane.cluster.plan import Plan, make_plan, prefix_for
from dataplane.errors import UsageError

# The CNI plugins' modules (cni.plugins, cni.wiring) and planfile are imported where a
# plugin-wired or an attached cluster needs them: `up` of a built-in cluster starts making
# its namespaces sooner without them.

SWITCH_INTERVAL = 1e-4  # seconds; see _make
SHOWN_MISSING = 3  # namespaces named in a message; the rest are counted


@dataclass
class Cluster:
    plan: Plan
    record: state.Record

    @property
    def name(self) -> str:
        return self.plan.name


def plan_of(record: state.Record) -> Plan:
    if record.attached:
        from dataplane.cluster import planfile

        try:
            return planfile.loads((record.dir / state.PLAN_FILE).read_text())
        except (ValueError, TypeError, KeyError) as err:
            raise UsageError(f"not a plan ({err!r})") from None
    return recorded(make_plan(spec.parse(record.topology_text, source=record.source,
                                         name=record.name, cni_mode=record.cni_mode)),
                    record.dir)


def recorded(plan: Plan, root: Path) -> Plan:
    """The plan as the cluster built at root has it: the pods as the CNI plugins wired
    them, the user's configuration's firewall expected."""
    if plan.spec.cni.mode == "plugins":
        from dataplane.cluster.cni import wiring

        plan = wiring.adopt(plan, root)
    return nodeconfig.recorded(plan, root)


def adopt(plan: Plan, source: str) -> Cluster:
    """Record a network that exists already (discovered) as cluster plan.name: every
    command takes it as --running NAME; down and clean only forget it."""
    from dataplane.cluster import planfile

    record = state.register(plan.name, plan.namespaces(), source,
                            plan_text=planfile.dumps(plan))
    return Cluster(plan, record)


@dataclass(frozen=True)
class Topology:
    """A validated topology file, read once: its Spec and its text (kept in the state)."""

    spec: spec.Spec
    text: str
    source: str
    cni_mode: str | None = None  # `up --cni`, kept in the record: its text does not say it

    def renamed(self, name: str) -> "Topology":
        return replace(self, spec=replace(self.spec, name=name))


def read(topology: str | Path | None = None, name: str | None = None,
         bases: Sequence[Path] = (), cni_mode: str | None = None) -> Topology:
    """Read and validate a topology file (a path or a shipped topology's name, see
    resources.topology); a bad one stops here, before anything is made."""
    path = resources.topology(topology, bases)
    text = spec.read_text(path)
    return Topology(spec.parse(text, source=str(path), name=name, cni_mode=cni_mode), text,
                    str(path), cni_mode)


def up(topology: str | Path | None = None, name: str | None = None,
       cni_mode: str | None = None) -> Cluster:
    return start(read(topology, name, cni_mode=cni_mode))


def start(topology: Topology) -> Cluster:
    """Build the cluster; tear down on any failure, KeyboardInterrupt included. The
    caller owns the result until it calls state.release() on it or down()."""
    plan = make_plan(topology.spec)
    by_plugins = plan.spec.cni.mode == "plugins"
    if by_plugins:
        from dataplane.cluster.cni import plugins, wiring

        plugins.require(wiring.PLUGINS, plan.spec.cni)
    # an absolute source: later commands resolve the topology's relative paths from it
    record = state.register(plan.name, plan.namespaces(), str(Path(topology.source).resolve()),
                            topology.text, cni_mode=topology.cni_mode)
    taken = [ns for ns in plan.namespaces() if netns.exists(ns)]
    if taken:  # not ours to remove: only the record goes
        record.remove()
        raise UsageError(f"namespace {taken[0]} already exists; remove leftovers with "
                         "`dataplane clean` or pick another --name")
    try:
        _make(plan, record, pods=not by_plugins)
        if by_plugins:
            wiring.add(plan, record.dir)
        nodeconfig.apply(plan, record.dir)
        record = state.change(plan.name, lambda r: setattr(r, "phase", "up"))
    except BaseException as err:
        _remove(record)
        if by_plugins and isinstance(err, plugins.PluginError):
            raise plugins.PluginError(
                f"{err}; cluster {plan.name} was taken down: fix the plugin or its configuration "
                f"(CNI_PATH {':'.join(map(str, plugins.search_path(plan.spec.cni)))})") from None
        raise
    return Cluster(recorded(plan, record.dir), record)


def _make(plan: Plan, record: state.Record, pods: bool = True) -> None:
    # Threads share the GIL here: two make namespaces while this one writes files, then
    # this one encodes while another sends batches. Each mostly waits on the kernel; at
    # the default switch interval each return from a system call could wait that long for
    # the GIL, and beside a busy thread the others would be made to wait many times over.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    creation = netns.Creation(plan.namespaces(), plan.sysctls)
    try:
        creation.start()
        # Written while the kernel makes the namespaces: the files' system calls and the
        # namespaces' run on both cores.
        record.write_files(nodefiles.node_files(plan))
        from dataplane.cluster import build

        # Every namespace first, then their links: side by side the kernel makes both
        # more slowly than one after the other (they contend for its locks; bench_up).
        creation.wait()
        build.build(plan, creation.socket, pods)
    except BaseException as err:
        creation.abort()
        if isinstance(err, ModuleNotFoundError):
            raise UsageError(f"Python module {err.name} is missing for {sys.executable}; "
                             "install it with `make setup`") from None
        raise
    finally:
        sys.setswitchinterval(switch)
    creation.close()


def inspect(name: str) -> Cluster | state.Unreadable:
    """Recorded cluster NAME, or why its record (state or topology copy) cannot be read;
    UsageError if there is no such cluster."""
    record = state.read(name)
    if isinstance(record, state.Unreadable):
        return record
    try:
        return Cluster(plan_of(record), record)
    except (OSError, UnicodeDecodeError) as err:
        return state.Unreadable(name, f"{_source_file(record)}: {err}")
    except UsageError as err:  # the copy no longer parses
        return state.Unreadable(name, f"{_source_file(record)}: {str(err).split(': ', 1)[-1]}")


def _source_file(record: state.Record) -> str:
    """The file its plan is made from."""
    return state.PLAN_FILE if record.attached else state.TOPOLOGY_FILE


def inspect_all() -> list[Cluster | state.Unreadable]:
    """Every recorded cluster, by name; one taken down meanwhile is left out."""
    found = []
    for name in state.names():
        try:
            found.append(inspect(name))
        except UsageError:
            pass
    return found


def attach(name: str) -> Cluster:
    """The recorded cluster NAME, as it is (see using() to work on it)."""
    found = inspect(name)
    if isinstance(found, state.Unreadable):
        raise found.error()
    return found


def missing(record: state.Record) -> list[str]:
    return [ns for ns in record.namespaces if not netns.exists(ns)]


def _missing_text(record: state.Record, gone: list[str]) -> str:
    named = ", ".join(gone[:SHOWN_MISSING]) + (", ..." if len(gone) > SHOWN_MISSING else "")
    return f"{len(gone)} of its {len(record.namespaces)} namespaces are missing ({named})"


def health(record: state.Record | state.Unreadable) -> list[str]:
    """What is wrong with a recorded cluster, each with its fix; [] when it is healthy.
    The one judgement `status` and every command on a running cluster use."""
    if isinstance(record, state.Unreadable):
        return [record.complaint]
    name, owner = record.name, record.owner
    if record.phase != "up":
        if owner is not None and owner.alive():
            return [f"still being built by pid {owner.pid}; wait for its `dataplane up` to end"]
        return [f"its build (pid {record.owner_pid}) died before finishing; remove what it "
                f"made with `dataplane clean`"]
    problems = []
    if owner is not None and not owner.alive():
        problems.append(f"the process that built it (pid {owner.pid}) died without taking it "
                        "down; remove it with `dataplane clean`")
    gone = missing(record)
    if gone:
        again = "discover it again" if record.attached else "bring it up again"
        problems.append(f"{_missing_text(record, gone)}; take it down with `dataplane down "
                        f"{name}` and {again}")
    return problems


def vanished(made: Cluster) -> str | None:
    """Why cluster made went away since this process attached to it (taken down, its
    namespaces deleted), in one line; None while it is there. For a command whose
    work on it failed or came out strange, to say so instead of a raw errno."""
    try:
        record = state.read(made.name)
    except UsageError:
        return (f"cluster {made.name} was taken down while this command ran "
                f"(its state {made.record.dir} is gone)")
    if isinstance(record, state.Unreadable):
        return f"cluster {made.name}'s state became unreadable while this command ran " \
               f"({record.problem})"
    gone = missing(record)
    if gone:
        return f"cluster {made.name} lost namespaces while this command ran: " \
               f"{_missing_text(record, gone)}"
    return None


@contextmanager
def _watched(made: Cluster) -> Iterator[Cluster]:
    """Turn what fails, or ends, after the cluster vanished into one line saying so."""
    try:
        yield made
    except Exception:
        gone = vanished(made)
        if gone:
            raise UsageError(gone) from None
        raise
    gone = vanished(made)
    if gone:
        raise UsageError(gone)


@contextmanager
def using(name: str, command: str) -> Iterator[Cluster]:
    """Running cluster NAME for command (e.g. "dataplane verify --running"): refused
    with the fix when it is not healthy; this process is one of its holders while the
    block runs (so `down` refuses); if it vanishes meanwhile, a one-line UsageError."""
    made = attach(name)
    problems = health(made.record)
    if problems:
        raise UsageError(f"cluster {name} is not usable: {'; '.join(problems)}")
    holder = state.hold(name, command)
    try:
        with _watched(made):
            yield made
    finally:
        state.unhold(name, holder)


@contextmanager
def temporary(topology: Topology) -> Iterator[Cluster]:
    """A cluster built from topology for the block, torn down after it."""
    made = start(topology)
    try:
        with _watched(made):
            yield made
    finally:
        if made.record.dir.exists():
            down(made.name)


def down(name: str, force: bool = False) -> list[str]:
    """Remove cluster NAME's namespaces and state; return the namespaces removed.

    Refused while another live process holds it, unless force; its owner may always
    take down what it made. An unreadable record's namespaces (dp-NAME.*) go too."""
    with state.locked(name) as record:
        if isinstance(record, state.Unreadable):
            return _remove_unreadable(record)
        others = [h for h in record.holders() if not h.is_me()]
        owner = record.owner
        if others and not force and not (owner is not None and owner.is_me()):
            raise UsageError(f"cluster {name} is in use by pid {others[0].pid} "
                             f"({others[0].command}); wait for it to end, or take the "
                             f"cluster down anyway with `dataplane down {name} --force`")
        refused = _unwire(record)
        removed = _remove(record)
    if refused:
        from dataplane.cluster.cni import plugins

        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise plugins.PluginError(f"cluster {name} is down ({len(removed)} namespaces removed), "
                                  f"but CNI DEL failed: {refused[0]}{more}; fix the plugin's DEL")
    return removed


def _unwire(record: state.Record) -> list[str]:
    """DEL for every pod of a plugin-wired cluster, as a runtime runs it before removing a
    pod's namespace; the plugins' complaints. A record that cannot be read skips it."""
    if record.phase != "up":
        return []
    try:
        plan = plan_of(record)
    except (OSError, UnicodeDecodeError, UsageError):
        return []
    if plan.spec.cni.mode != "plugins":
        return []
    from dataplane.cluster.cni import wiring

    return wiring.delete(plan, record.dir)


def _remove(record: state.Record) -> list[str]:
    """Its namespaces, then its record; an attached cluster's namespaces are not ours."""
    removed = [] if record.attached else netns.remove(record.namespaces)
    record.remove()
    return removed


def _remove_unreadable(record: state.Unreadable) -> list[str]:
    """The namespaces named after the cluster (its run prefix), unless it was attached,
    then its directory."""
    attached = (record.dir / state.PLAN_FILE).exists()
    removed = [] if attached else netns.remove(netns.listed(prefix_for(record.name) + "."))
    record.remove()
    return removed


@dataclass(frozen=True)
class Swept:
    """What `clean` did with one cluster, and why."""

    name: str
    why: str
    removed: list[str] | None  # the namespaces removed; None when the cluster was left


def clean(names: Sequence[str] = (), everything: bool = False) -> list[Swept]:
    """Remove what dead processes left: clusters half-built, or whose owner died
    without taking them down. Clusters a finished `up` left running, and unreadable
    records, go only when named or with everything; a cluster a live process holds
    is always left."""
    for name in names:
        state.read(name)  # an unknown name fails before anything is removed
    swept = []
    for name in names or state.names():
        try:
            with state.locked(name) as record:
                swept.append(_sweep(record, chosen=bool(names) or everything))
        except UsageError:  # taken down meanwhile
            pass
    return swept


def _sweep(record: state.Record | state.Unreadable, chosen: bool) -> Swept:
    name = record.name
    if isinstance(record, state.Unreadable):
        if chosen:
            return Swept(name, f"its state was unreadable ({record.problem})",
                         _remove_unreadable(record))
        return Swept(name, f"{record.complaint} (or `dataplane clean --all`)", None)
    holders = record.holders()
    if holders:
        return Swept(name, f"in use by pid {holders[0].pid} ({holders[0].command})", None)
    if record.attached:
        if not chosen:
            return Swept(name, "attached (discovered, not built); forget it with "
                         f"`dataplane down {name}`", None)
        why = "attached (discovered, not built): forgotten as asked, its namespaces left"
    elif record.phase != "up":
        why = f"half-built: its build (pid {record.owner_pid}) died"
    elif record.owner is not None:
        why = f"the process that built it (pid {record.owner_pid}) died without taking it down"
    elif chosen:
        why = "a finished `up` cluster, removed as asked"
    else:
        return Swept(name, "a finished `up` cluster, up on purpose; remove it with "
                     f"`dataplane down {name}` or `dataplane clean --all`", None)
    return Swept(name, why, _remove(record))
