"""`dataplane capture`: every hop of every packet in a running cluster, to pcapng."""

from __future__ import annotations

import time
from collections.abc import Callable

from dataplane.bpf.tracer import Tracer
from dataplane.cluster.plan import Plan
from dataplane.errors import UsageError
from dataplane.names import PROTOCOLS
from dataplane.records import Hop

HELP = "see `dataplane capture --help` for the terms"


def _frames(hop: Hop):
    frame = hop.frame
    while frame is not None:
        yield frame
        frame = frame.inner


def _term(words: list[str]) -> Callable[[Hop], bool]:
    kind, *rest = words
    if kind in PROTOCOLS and not rest:
        return lambda h: any(f.proto == kind for f in _frames(h))
    if len(rest) != 1:
        raise UsageError(f"--filter: cannot read {' '.join(words)!r}; {HELP}")
    value = rest[0]
    if kind == "host":
        return lambda h: any(value in (f.src, f.dst) for f in _frames(h))
    if kind in ("port", "vni") and value.isdigit():
        number = int(value)
        if kind == "port":
            return lambda h: any(number in (f.sport, f.dport) for f in _frames(h))
        return lambda h: any(f.vni == number for f in _frames(h))
    if kind == "at":
        return lambda h: h.at == value
    if kind == "dev":
        return lambda h: h.device == value
    raise UsageError(f"--filter: cannot read {' '.join(words)!r}; {HELP}")


def parse_filter(expression: str | None) -> Callable[[Hop], bool]:
    """A predicate on hops from a small pcap-filter-like expression. Pure."""
    if not expression or not expression.strip():
        return lambda hop: True
    terms = [_term(part.split()) for part in expression.split(" and ")]
    return lambda hop: all(term(hop) for term in terms)


def run(plan: Plan, duration: float, keep: Callable[[Hop], bool],
        recording: Callable[[], None] = lambda: None) -> tuple[list[Hop], int]:
    """Record for duration seconds (Ctrl-C ends it early); the hops kept, and lost events.
    recording() is called once the probes are attached, before the time starts."""
    with Tracer(plan, record_all=True) as tracer:
        recording()
        try:
            time.sleep(duration)
        except KeyboardInterrupt:
            pass
        hops = [h for h in tracer.take(50) if keep(h)]
    return hops, tracer.lost
