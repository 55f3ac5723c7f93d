"""What a verify run does beside its traffic, in a forked child (forked.py), on the
machine's other core: it resets the caches first (the traffic waits for that: no path MTU
or neighbour an earlier run left may sway a verdict), then audits the cluster (it reads
nothing the traffic changes). Light to import: a run starts it before it imports the rest
of itself, and the child imports what it needs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dataplane.cluster.plan import Plan
from dataplane.verify import forked

if TYPE_CHECKING:
    from dataplane.records import Drift


@dataclass
class Beside:
    """The child's work, as the run waits for it: the reset, then the drift."""

    pending: forked.Pending
    reset_seconds: float | None = None  # once the reset is done

    def reset(self) -> float:
        """Waits until the caches are reset; the seconds it took (0: not reset)."""
        if self.reset_seconds is None:
            self.reset_seconds = self.pending.result()
        return self.reset_seconds

    def drift(self) -> tuple[list[Drift], float]:
        """Waits for the audit: the drift, and the seconds it took."""
        self.reset()
        return self.pending.result()

    def __enter__(self) -> "Beside":
        return self

    def __exit__(self, *exc: object) -> None:
        self.pending.close()


def start(plan: Plan, reset: bool = True) -> Beside:
    """reset=False, or a network we did not build (never changed): no reset."""
    return Beside(forked.call(lambda: _reset(plan) if reset and plan.built else 0.0,
                              lambda: _audited(plan)))


def _reset(plan: Plan) -> float:
    from dataplane.verify import caches

    began = time.perf_counter()
    caches.reset(plan)
    return time.perf_counter() - began


def _audited(plan: Plan) -> tuple[list[Drift], float]:
    from dataplane.verify import audit

    began = time.perf_counter()
    return audit.audit(plan), time.perf_counter() - began
