"""The record of each cluster a run made, so later commands and `clean` can find it.

A cluster's state directory (/run/dataplane/NAME, gone at reboot like the
namespaces themselves) holds state.json, a copy of its topology, and the
files a real node would hold. The namespace list is written before the first
namespace exists, so even a run killed with SIGKILL mid-build leaves enough
behind for `clean` to remove exactly what it made.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dataplane.errors import UsageError

STATE_ROOT = Path("/run/dataplane")
STATE_FILE = "state.json"
TOPOLOGY_FILE = "topology.toml"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: with the pid it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass
class Record:
    name: str
    namespaces: list[str]
    source: str  # the topology file it was built from
    phase: str = "building"  # then "up"
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: str | None = field(default_factory=lambda: _start_time(os.getpid()))

    @property
    def dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def topology_text(self) -> str:
        return (self.dir / TOPOLOGY_FILE).read_text()

    def owner_alive(self) -> bool:
        """True while the process that made the cluster runs and still holds it."""
        return self.owner_start is not None and _start_time(self.owner_pid) == self.owner_start

    def save(self) -> None:
        tmp = self.dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.rename(self.dir / STATE_FILE)  # atomic: a reader never sees half a record

    def write_files(self, files: dict[str, str]) -> None:
        for rel, content in files.items():
            target = self.dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)

    def release(self) -> None:
        """Leave the cluster up with no owner, for later commands (`dataplane up`)."""
        self.owner_pid, self.owner_start = 0, None
        self.save()

    def remove(self) -> None:
        import shutil  # here, not at the top: a successful `up` never needs its 1.5 ms

        shutil.rmtree(self.dir, ignore_errors=True)


def register(name: str, namespaces: list[str], source: str, topology_text: str) -> Record:
    """Claim NAME for a new cluster and record its namespaces before any exists."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    record = Record(name=name, namespaces=namespaces, source=source)
    try:
        record.dir.mkdir()
    except FileExistsError:
        raise UsageError(f"a cluster named {name!r} is already up; take it down with "
                         f"`dataplane down {name}` or pick another --name") from None
    (record.dir / TOPOLOGY_FILE).write_text(topology_text)
    record.save()
    return record


def load(name: str) -> Record:
    try:
        data = json.loads((STATE_ROOT / name / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise UsageError(f"no cluster named {name!r} is up; see `dataplane status` "
                         "for the ones that are") from None
    return Record(**data)


def records() -> list[Record]:
    """Every recorded cluster, by name. A directory without a readable record is
    one whose run died before writing it: it holds no namespaces."""
    if not STATE_ROOT.is_dir():
        return []
    found = []
    for entry in sorted(STATE_ROOT.iterdir()):
        try:
            found.append(load(entry.name))
        except UsageError:
            found.append(Record(name=entry.name, namespaces=[], source="?", owner_pid=0,
                                owner_start=None))
    return found
