"""`dataplane trace`: one exchange between two pods and every hop its packets made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataplane import traffic
from dataplane.hops import hop_dict, hop_table
from dataplane.plan import Plan
from dataplane.tracer import Hop
from dataplane.verify import Verifier


@dataclass
class TraceResult:
    exchange: traffic.Exchange
    hops: list[Hop]
    lost_events: int
    backends: list[str]
    skipped: dict[str, str]  # probes not attached, and why


def run(plan: Plan, src: str, dst: str, proto: str) -> TraceResult:
    with Verifier(plan) as verifier:
        exchange = verifier.send(plan.pod(src), plan.pod(dst), proto)
        (flow,) = verifier.judge([exchange])
        return TraceResult(exchange, flow.hops, verifier.lost, verifier.backends,
                           verifier.skipped)


def as_dict(result: TraceResult) -> dict[str, Any]:
    ex = result.exchange
    return {"src": ex.src.ref, "dst": ex.dst.ref, "proto": ex.proto, "answered": ex.answered,
            "error": ex.error, "hops": [hop_dict(h) for h in result.hops],
            "lost_events": result.lost_events, "backends": result.backends,
            "skipped_probes": result.skipped}


def as_text(result: TraceResult) -> str:
    ex = result.exchange
    outcome = "answered" if ex.answered else "NO ANSWER" + (f" ({ex.error})" if ex.error else "")
    skipped = "".join(f"; skipped {probe}: {why}" for probe, why in result.skipped.items())
    return "\n".join([f"{ex.proto} {ex.src.ref} ({ex.src.ip}) -> {ex.dst.ref} ({ex.dst.ip}): "
                      f"{outcome}; {len(result.hops)} hops; backends "
                      f"{', '.join(result.backends)}{skipped}; lost events {result.lost_events}"]
                     + hop_table(result.hops, str(ex.src.ip)))
