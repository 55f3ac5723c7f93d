"""Files the package ships from the checkout's top-level folders (probes/, topologies/):
installed as dataplane/probes and dataplane/topologies, found in either place."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def find(folder: str, name: str) -> Path:
    for base in (_PACKAGE / folder, _PACKAGE.parent / folder):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"{folder}/{name} is neither in {_PACKAGE} nor beside it")
