"""A verify run as people and machines read it: text lines, a JSON document, a pcapng
file, each written flow by flow as the flows are judged (a Stream), so that a run of
any size never holds every flow's hops; and the same for a finished Report."""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from dataplane.cluster.plan import Plan
from dataplane.records import FAIL, INCONCLUSIVE, PASS, Drift, FlowResult
from dataplane.report import pcapng
from dataplane.report.hoptable import hop_dict, hop_table
from dataplane.verify.verifier import Report, Stream


def flow_dict(flow: FlowResult) -> dict[str, Any]:
    return {"src": flow.src, "dst": flow.dst, "proto": flow.proto, "size": flow.size,
            "verdict": flow.verdict, "rule": flow.rule, "diagnosis": flow.diagnosis,
            "cause": [item.as_dict() for item in flow.cause], "error": flow.error,
            "last_hop": flow.last_hop, "drop_reason": flow.drop_reason,
            "hops": [hop_dict(h) for h in flow.hops]}


def _proto(flow: FlowResult) -> str:
    """icmp, or udp/1451 for a DF probe of that IP length."""
    return flow.proto + (f"/{flow.size}" if flow.size else "")


def _cause_line(flow: FlowResult) -> str:
    return "cause: " + "; ".join(str(item) for item in flow.cause)


def flow_text(plan: Plan, flow: FlowResult) -> str:
    """A flow's verdict, diagnosis, cause and hop table, as a person reads it."""
    head = [f"{flow.verdict} {_proto(flow)} {flow.src} -> {flow.dst}"]
    if not flow.passed:
        head[0] += f" [{flow.rule}] {flow.diagnosis}"
    if flow.cause:
        head.append("  " + _cause_line(flow))
    return "\n".join(head + hop_table(flow.hops, str(plan.pod(flow.src).ip)))


def summary(report: Report) -> dict[str, int]:
    return {"pass": report.count(PASS), "fail": report.count(FAIL),
            "inconclusive": report.count(INCONCLUSIVE), "drift": len(report.drift)}


@dataclass
class Text:
    """A line per flow (and its cause), the drift above them, a summary below."""

    out: IO[str]
    hops: ClassVar[bool] = False

    def start(self, drift: list[Drift], total: int) -> None:
        for item in drift:
            self.out.write(f"drift: {item}\n")

    def flow(self, flow: FlowResult) -> None:
        line = f"{flow.verdict:<12} {_proto(flow):<8} {flow.src:>14} -> {flow.dst:<14}"
        if not flow.passed:
            line += f" [{flow.rule}] {flow.diagnosis}"
        if flow.cause:
            line += f"\n{'':<12} {_cause_line(flow)}"
        self.out.write(line + "\n")

    def end(self, report: Report) -> None:
        for item in report.latent:
            self.out.write(f"latent drift (no flow failed of it): {item}\n")
        skipped = f"; probes skipped: {', '.join(report.skipped)}" if report.skipped else ""
        if not report.caches_reset:
            skipped += ("; caches not reset (a network we did not build is left as it is: "
                        "routes' PMTU, neighbours and bridge entries it learnt count)")
        counts = summary(report)
        self.out.write(f"{len(report.flows)} flows: {counts['pass']} passed, {counts['fail']} "
                       f"failed, {counts['inconclusive']} inconclusive; {counts['drift']} drift; "
                       f"pairs {report.pairs}; backends {', '.join(report.backends)} (probes "
                       f"{report.probes}){skipped}; "
                       f"lost events {report.lost_events}{_workers(report)}\n")
        if report.seconds:
            self.out.write("time: " + ", ".join(f"{phase} {t:.2f} s" for phase, t
                                                in report.seconds.items()) + "\n")


def _workers(report: Report) -> str:
    return f"; {report.workers} workers (time summed over them)" if report.workers > 1 else ""


@dataclass
class Json:
    """One JSON document, written as it grows: drift, then each flow with its hops,
    then the summary, the latent drift, the backends and what was skipped."""

    out: IO[str]
    hops: ClassVar[bool] = True
    _first: bool = True

    def start(self, drift: list[Drift], total: int) -> None:
        items = ",\n    ".join(json.dumps(item.as_dict()) for item in drift)
        self.out.write(f'{{\n  "drift": [{items}],\n  "flows": [')

    def flow(self, flow: FlowResult) -> None:
        self.out.write(("\n    " if self._first else ",\n    ") + json.dumps(flow_dict(flow)))
        self._first = False

    def end(self, report: Report) -> None:
        tail = {"summary": summary(report), "pairs": report.pairs,
                "latent": [d.as_dict() for d in report.latent],
                "backends": report.backends, "probes": report.probes,
                "skipped_probes": report.skipped,
                "lost_events": report.lost_events, "caches_reset": report.caches_reset,
                "workers": report.workers,
                "seconds": {phase: round(t, 3) for phase, t in report.seconds.items()}}
        body = json.dumps(tail, indent=2)[1:-1].rstrip()
        self.out.write(f"\n  ],{body}\n}}\n")


@dataclass
class Pcap:
    """Every flow's hops, appended to a pcapng file as each flow is judged."""

    out: IO[bytes]
    writer: pcapng.Writer = field(default_factory=pcapng.Writer)
    hops: ClassVar[bool] = True

    def start(self, drift: list[Drift], total: int) -> None:
        self.out.write(self.writer.header())

    def flow(self, flow: FlowResult) -> None:
        self.out.write(self.writer.blocks(flow.hops))

    def end(self, report: Report) -> None:
        self.out.flush()


@dataclass
class Progress:
    """flows judged / total, rate and time left, on one line redrawn on a terminal."""

    out: IO[str] = sys.stderr
    every: float = 0.5  # seconds between redraws
    hops: ClassVar[bool] = False
    _total: int = 0
    _done: int = 0
    _began: float = 0.0
    _shown: float = 0.0

    def start(self, drift: list[Drift], total: int) -> None:
        self._total, self._began = total, time.monotonic()

    def flow(self, flow: FlowResult) -> None:
        self._done += 1
        now = time.monotonic()
        if now - self._shown >= self.every:
            self._shown = now
            rate = self._done / max(now - self._began, 1e-9)
            left = (self._total - self._done) / rate
            self.out.write(f"\r{self._done}/{self._total} flows judged, {rate:.0f}/s, "
                           f"about {left:.0f} s left ")
            self.out.flush()

    def end(self, report: Report) -> None:
        self.out.write("\r\033[K")
        self.out.flush()


@dataclass
class Tee:
    """Several streams fed as one."""

    streams: list[Stream]

    @property
    def hops(self) -> bool:
        return any(s.hops for s in self.streams)

    def start(self, drift: list[Drift], total: int) -> None:
        for s in self.streams:
            s.start(drift, total)

    def flow(self, flow: FlowResult) -> None:
        for s in self.streams:
            s.flow(flow)

    def end(self, report: Report) -> None:
        for s in self.streams:
            s.end(report)


def replay(report: Report, stream: Stream) -> None:
    """Feed a finished report through a stream."""
    stream.start(report.drift, len(report.flows))
    for flow in report.flows:
        stream.flow(flow)
    stream.end(report)


def as_text(report: Report) -> str:
    out = io.StringIO()
    replay(report, Text(out))
    return out.getvalue().rstrip("\n")


def as_dict(report: Report) -> dict[str, Any]:
    out = io.StringIO()
    replay(report, Json(out))
    return json.loads(out.getvalue())
