"""Files the package ships from the checkout's top-level folders (probes/, topologies/):
installed as dataplane/probes and dataplane/topologies, found in either place."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dataplane.errors import UsageError

_PACKAGE = Path(__file__).resolve().parent
# What a run computes for the next ones, each under a key of what it depends on: compiled
# probes, the kernel's struct layout, netlink message templates.
CACHE_DIR = Path("/var/cache/dataplane")
TOPOLOGIES = "topologies"
DEFAULT_TOPOLOGY = "flannel-vxlan"


def _folders(folder: str) -> tuple[Path, Path]:
    return _PACKAGE / folder, _PACKAGE.parent / folder


def find(folder: str, name: str) -> Path:
    for base in _folders(folder):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"{folder}/{name} is neither in {_PACKAGE} nor beside it")


def shipped_topologies() -> list[str]:
    """The names of the topologies shipped with the package (flannel-vxlan, ...)."""
    for base in _folders(TOPOLOGIES):
        if base.is_dir():
            return sorted(path.stem for path in base.glob("*.toml"))
    return []


def topology(given: str | Path | None, bases: Sequence[Path] = ()) -> Path:
    """The topology file given names: a path, a relative one tried against each of bases
    in turn (the working directory without bases), or the bare name of a shipped
    topology (`flannel-vxlan`, `flannel-vxlan-4x8.toml`); None is the default one."""
    path = Path(given if given is not None else DEFAULT_TOPOLOGY)
    tried = [path] if path.is_absolute() or not bases else [base / path for base in bases]
    for candidate in tried:
        if candidate.exists():
            return candidate
    shipped = shipped_topologies()
    if len(path.parts) == 1 and path.name.removesuffix(".toml") in shipped:
        return find(TOPOLOGIES, path.name.removesuffix(".toml") + ".toml")
    where = f" (looked in {', '.join(str(base) for base in bases)})" if bases else ""
    raise UsageError(f"{path}: no such topology file{where}; pass an existing file or a "
                     f"shipped topology by name: {', '.join(shipped)}")
