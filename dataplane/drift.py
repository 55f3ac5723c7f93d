"""Drift: one difference between what the plan defines and what the kernel holds. Pure.

The audit produces drift items; the verifier ties each failing flow to the drift on
its expected path (its cause); `status` lists them. `at` uses the labels hops carry
(underlay, node-0, node-0/pod-1); `device` is None for what belongs to the whole
namespace (a sysctl, a firewall chain).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Drift:
    at: str
    device: str | None
    what: str  # e.g. "mtu", "vxlan local", "fdb 0e:fa:ac:1e:00:03 dst 172.30.0.3"
    expected: str
    found: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.at} {self.device}" if self.device else self.at
        return f"{where}: {self.what}: expected {self.expected}, found {self.found}"
