"""Helpers shared by the tests. Clusters come from the dataplane plugin's fixtures
(dataplane_cluster, dataplane_clusters), its needs_* markers skip with the reason."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.cluster import netns, state
from dataplane.pytest_plugin import CLUSTER_PREFIX
from dataplane.verify.paths import in_order

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "topologies"
DEFAULT = TOPOLOGIES / "flannel-vxlan.toml"
BIG = TOPOLOGIES / "flannel-vxlan-4x8.toml"
RUN_TAG = f"t{os.getpid()}"  # every cluster a test names itself is named t<pid>-...
_serial = itertools.count()


def is_root() -> bool:
    return os.geteuid() == 0


pytest_plugins = ["pytester"]  # to run the dataplane plugin on test files of its own


def pytest_sessionfinish(session, exitstatus):
    """The suite must leave no namespace of its own behind."""
    leaked = sorted(p.name for prefix in (f"{RUN_TAG}-", CLUSTER_PREFIX)
                    for p in netns.NETNS_RUN.glob(f"dp-{prefix}*")) \
        if netns.NETNS_RUN.is_dir() else []
    if leaked:
        print(f"\nLEAK: namespaces left behind by this test session: {', '.join(leaked)}")
        session.exitstatus = 1


def _dataplane(argv: tuple[str, ...], user: int | None) -> tuple[list[str], dict[str, str]]:
    """The `dataplane` command from this tree and its environment (as user, if given,
    with the user's own HOME: scapy looks for its configuration there)."""
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    home = {"HOME": pwd.getpwuid(user).pw_dir} if user else {}
    return [*prefix, sys.executable, "-m", "dataplane", *argv], \
        {**os.environ, "PYTHONPATH": str(ROOT), **home}


def dp(*argv: str, user: int | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `dataplane ARGV...` to its end, its output captured as text."""
    command, env = _dataplane(argv, user)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)


def dp_start(*argv: str, cwd: Path = ROOT, **popen: object) -> subprocess.Popen:
    """Start `dataplane ARGV...` and return at once (popen: stdout=, stderr=, text=...)."""
    command, env = _dataplane(argv, None)
    return subprocess.Popen(command, cwd=cwd, env=env, **popen)


def seen_in_order(wanted: list, seen: list) -> bool:
    """Whether seen holds every one of wanted, in that order (others between them)."""
    return len(in_order(wanted, seen)) == len(wanted)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The one line a usage or environment error prints, after checking it is one."""
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def leftovers(name: str) -> list[str]:
    """Cluster name's namespaces and state directory, those that exist."""
    ns = [p.name for p in netns.NETNS_RUN.glob(f"dp-{name}.*")]
    return ns + ([str(state.STATE_ROOT / name)] if (state.STATE_ROOT / name).exists() else [])


def up_released(name: str, topology: Path = DEFAULT) -> None:
    """`dataplane up`: a cluster left running on purpose, owned by no process."""
    done = dp("up", str(topology), "--name", name)
    assert done.returncode == 0, done.stderr


def up_orphaned(name: str, topology: Path = DEFAULT) -> int:
    """A cluster whose builder died holding it (a test session killed before its
    teardown); returns the dead builder's pid."""
    done = subprocess.run([sys.executable, "-c", "import os, sys; from dataplane.cluster import "
                           "lifecycle; lifecycle.up(sys.argv[1], name=sys.argv[2]); "
                           "print(os.getpid()); os._exit(0)", str(topology), name],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def unique_name(tag: str = "c") -> str:
    return f"{RUN_TAG}-{tag}{next(_serial)}"


def sh(netns_name: str | None, *argv: str) -> str:
    """Run a command (in a namespace if given) and return its stdout; fail loudly."""
    prefix = ["ip", "netns", "exec", netns_name] if netns_name else []
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)} in {netns_name}: {done.stderr}"
    return done.stdout


def ip_json(netns_name: str | None, *argv: str):
    return json.loads(sh(netns_name, "ip", "-j", *argv) or "[]")


@pytest.fixture
def private_state(tmp_path, monkeypatch) -> Path:
    """A state directory of this test's own, for it and the commands it runs: `clean`,
    `status` and `clean --all` then see only the clusters the test made (the machine's
    other clusters are other people's)."""
    root = tmp_path / "state"
    monkeypatch.setattr(state, "STATE_ROOT", root)
    monkeypatch.setenv("DATAPLANE_STATE_DIR", str(root))
    return root
