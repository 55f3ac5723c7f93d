"""The record of each cluster a run made, so later commands and `clean` can find it.

A cluster's state directory (/run/dataplane/NAME, gone at reboot like the
namespaces themselves; DATAPLANE_STATE_DIR moves it) holds state.json, a copy
of its topology, and the files a real node would hold. The namespace list is
written before the first namespace exists, so even a run killed with SIGKILL
mid-build leaves enough behind for `clean` to remove exactly what it made.

state.json also names the processes that hold the cluster: its owner (the
process that built it, until `up` releases it) and its users (a `verify
--running`, a `capture`, ...). Changes to it are made under a lock on the
directory, so users coming and going never lose each other's entries.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dataplane.cluster.spec import LABEL, LABEL_HINT
from dataplane.errors import UsageError

STATE_ROOT = Path(os.environ.get("DATAPLANE_STATE_DIR", "/run/dataplane"))
STATE_FILE = "state.json"
TOPOLOGY_FILE = "topology.toml"
PLAN_FILE = "plan.json"  # an attached cluster's plan, in place of a topology


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: with the pid it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class Holder:
    """A process using a cluster, e.g. a `dataplane verify --running`."""

    pid: int
    start: str | None
    command: str

    @classmethod
    def me(cls, command: str) -> "Holder":
        return cls(os.getpid(), _start_time(os.getpid()), command)

    def alive(self) -> bool:
        """A pid reused by another process does not count: the start time tells them apart."""
        return self.start is not None and _start_time(self.pid) == self.start

    def is_me(self) -> bool:
        return self.pid == os.getpid()


@dataclass
class Record:
    name: str
    namespaces: list[str]
    source: str  # the topology file it was built from
    cni_mode: str | None = None  # `up --cni`, overriding the topology's cni.mode
    phase: str = "building"  # then "up"
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: str | None = field(default_factory=lambda: _start_time(os.getpid()))
    users: list[Holder] = field(default_factory=list)
    # Discovered, not built (`dataplane discover --name`): forgetting it leaves its
    # namespaces as they are.
    attached: bool = False

    @property
    def dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def topology_text(self) -> str:
        return (self.dir / TOPOLOGY_FILE).read_text()

    @property
    def owner(self) -> Holder | None:
        """The process that made the cluster and still holds it; None once released."""
        if self.owner_start is None:
            return None
        return Holder(self.owner_pid, self.owner_start, "the process that built it")

    def holders(self) -> list[Holder]:
        """The live processes holding the cluster, owner first; dead ones do not count."""
        return [h for h in [self.owner, *self.users] if h is not None and h.alive()]

    def save(self) -> None:
        tmp = self.dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.rename(self.dir / STATE_FILE)  # atomic: a reader never sees half a record

    def write_files(self, files: dict[str, str]) -> None:
        for rel, content in files.items():
            target = self.dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)

    def remove(self) -> None:
        _rmtree(self.dir)


@dataclass(frozen=True)
class Unreadable:
    """A state directory whose record cannot be read: its namespaces are unaccounted for."""

    name: str
    problem: str  # e.g. "state.json: Expecting value: line 1 column 1 (char 0)"

    @property
    def dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def complaint(self) -> str:
        """What is wrong, and the fix."""
        return (f"its state is unreadable ({self.problem}); remove it and its namespaces "
                f"with `dataplane down {self.name}`")

    def error(self) -> UsageError:
        return UsageError(f"cluster {self.name}: {self.complaint}")

    def remove(self) -> None:
        _rmtree(self.dir)


def _rmtree(folder: Path) -> None:
    import shutil  # here, not at the top: a successful `up` never needs its import

    shutil.rmtree(folder, ignore_errors=True)


def register(name: str, namespaces: list[str], source: str, topology_text: str | None = None,
             plan_text: str | None = None, cni_mode: str | None = None) -> Record:
    """Claim NAME for a new cluster (made from topology_text) and record its namespaces
    before any exists; or, with plan_text, a network that exists already (attached),
    recorded as up.

    The directory is filled under a temporary name and renamed into place, so no
    one ever sees a cluster directory without its record."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    record = Record(name=name, namespaces=namespaces, source=source, cni_mode=cni_mode)
    if plan_text is not None:  # no process builds it, nor owns it
        record.attached, record.phase, record.owner_pid, record.owner_start = True, "up", 0, None
    staging = STATE_ROOT / f".{name}.{os.getpid()}"
    staging.mkdir()
    if plan_text is None:
        (staging / TOPOLOGY_FILE).write_text(topology_text or "")
    else:
        (staging / PLAN_FILE).write_text(plan_text)
    (staging / STATE_FILE).write_text(json.dumps(asdict(record), indent=1))
    try:
        staging.rename(record.dir)
    except OSError:  # ENOTEMPTY or EEXIST: the name is taken
        _rmtree(staging)
        raise UsageError(f"a cluster named {name!r} is already up; take it down with "
                         f"`dataplane down {name}` or pick another --name") from None
    return record


def _parse(name: str, text: str) -> Record:
    """A Record from state.json's text; ValueError says what is wrong with it."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        users = [Holder(**u) for u in data.pop("users", [])]
        record = Record(**data, users=users)
    except TypeError as err:
        raise ValueError(f"unexpected content ({err})") from None
    if record.name != name or not isinstance(record.namespaces, list) \
            or not all(isinstance(ns, str) for ns in record.namespaces):
        raise ValueError("its name or namespace list is wrong")
    return record


def _folder(name: str) -> Path:
    """Where NAME's record is; UsageError for what cannot name a cluster (a path, "", a
    "..": its folder would be another's, the state root, or anywhere)."""
    if not LABEL.match(name):
        raise UsageError(f"{name!r} cannot name a cluster: {LABEL_HINT}")
    return STATE_ROOT / name


def read(name: str) -> Record | Unreadable:
    """NAME's record, or why it cannot be read; UsageError if there is no such cluster."""
    folder = _folder(name)
    if not folder.is_dir():
        raise UsageError(f"no cluster named {name!r} is up; see `dataplane status` "
                         "for the ones that are")
    try:
        return _parse(name, (folder / STATE_FILE).read_text())
    except OSError as err:
        return Unreadable(name, f"{STATE_FILE}: {err.strerror}")
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        return Unreadable(name, f"{STATE_FILE}: {err}")


def names() -> list[str]:
    """The name of every cluster recorded, sorted (staging directories are not clusters)."""
    if not STATE_ROOT.is_dir():
        return []
    return sorted(entry.name for entry in STATE_ROOT.iterdir()
                  if entry.is_dir() and not entry.name.startswith("."))


@contextmanager
def locked(name: str) -> Iterator[Record | Unreadable]:
    """NAME's record, with every other change to it waiting until the block ends."""
    try:
        fd = os.open(_folder(name), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        read(name)  # raises: no such cluster
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield read(name)
    finally:
        os.close(fd)  # drops the lock


def change(name: str, edit: Callable[[Record], None]) -> Record:
    """Apply edit to NAME's record and save it, under the lock; dead users are dropped."""
    with locked(name) as record:
        if isinstance(record, Unreadable):
            raise record.error()
        record.users = [u for u in record.users if u.alive()]
        edit(record)
        record.save()
        return record


def release(name: str) -> Record:
    """Leave the cluster up with no owner, for later commands (`dataplane up`)."""
    def unown(record: Record) -> None:
        record.owner_pid, record.owner_start = 0, None

    return change(name, unown)


def hold(name: str, command: str) -> Holder:
    """Record this process as a user of NAME (so `down` refuses while it runs)."""
    me = Holder.me(command)
    change(name, lambda record: record.users.append(me))
    return me


def unhold(name: str, holder: Holder) -> None:
    """Take holder off NAME's users, if the cluster is still there."""
    def drop(record: Record) -> None:
        record.users = [user for user in record.users if user != holder]

    try:
        change(name, drop)
    except UsageError:
        pass  # gone or unreadable: nothing to take it off
