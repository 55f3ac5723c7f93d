"""`dataplane verify`: an exchange for every chosen pod pair, each judged hop by hop."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dataplane import audit, caches, cause, traffic
from dataplane.drift import Drift
from dataplane.errors import UsageError
from dataplane.hops import hop_dict, hop_table, trail
from dataplane.plan import Plan, PodPlan
from dataplane.protocols import PROTOCOLS
from dataplane.tracer import Hop, Tracer
from dataplane.verdict import FAIL, INCONCLUSIVE, PASS, FlowResult, judge

SETTLE_MS = 100
NEEDED = ("net_dev_start_xmit", "netif_receive_skb", "kfree_skb")  # tracepoints a trail needs


@dataclass
class Report:
    flows: list[FlowResult]
    backends: list[str]
    lost_events: int
    drift: list[Drift] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # probes not attached, and why

    def count(self, verdict: str) -> int:
        return sum(f.verdict == verdict for f in self.flows)

    @property
    def latent(self) -> list[Drift]:
        """Drift that no failing flow is explained by: a fault waiting for its traffic."""
        explaining = {item for flow in self.flows for item in flow.cause}
        return [item for item in self.drift if item not in explaining]

    @property
    def passed(self) -> bool:
        """Every flow passed and the kernel holds what the plan defines."""
        return bool(self.flows) and all(f.passed for f in self.flows) and not self.drift


def pairs(plan: Plan, which: str = "all") -> list[tuple[PodPlan, PodPlan]]:
    """Every ordered pod pair, or those on the same node, or those across nodes."""
    chosen = []
    for src in plan.pods():
        for dst in plan.pods():
            same = src.node == dst.node
            if src != dst and (which == "all" or (which == "same-node") == same):
                chosen.append((src, dst))
    return chosen


def by_exchange(hops: list[Hop], exchanges: list[traffic.Exchange]) -> dict[tuple, list[Hop]]:
    """Hops indexed by the exchange keys their packets could belong to; a packet of no
    exchange's key (NATed on the way) is indexed by the exchange end it kept."""
    keys = {ex.key for ex in exchanges}
    index: dict[tuple, list[Hop]] = defaultdict(list)
    for hop in hops:
        frame = hop.flow_frame()
        if frame is None:
            continue
        mine = [key for key in traffic.frame_keys(frame) if key in keys]
        for key in mine or traffic.frame_ends(frame):
            index[key].append(hop)
    return index


def mtu_sizes(plan: Plan) -> tuple[int, int, int]:
    """IP lengths around the pod MTU (flannel.1's): one under, at, and one over."""
    mtu = plan.spec.vtep_mtu
    return mtu - 1, mtu, mtu + 1


class Verifier:
    """Probes loaded once and sockets kept, for any number of exchanges on one cluster."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self._tracer = Tracer(plan, record_all=False)
        self._sender = traffic.Sender()
        self._lost_before = 0

    def __enter__(self) -> "Verifier":
        caches.reset(self.plan)  # no path MTU or neighbour an earlier run left may sway a verdict
        self._tracer.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sender.close()
        self._tracer.__exit__(*exc)

    @property
    def backends(self) -> list[str]:
        return self._tracer.loaded.backends

    @property
    def skipped(self) -> dict[str, str]:
        return self._tracer.loaded.skipped

    @property
    def lost(self) -> int:
        return self._tracer.lost

    def send(self, src: PodPlan, dst: PodPlan, proto: str,
             size: int | None = None) -> traffic.Exchange:
        """An exchange (a DF UDP probe of IP length size, if given), recorded."""
        if size is not None:
            return self._sender.sized(src, dst, size, watch=self._tracer.watch)
        return self._sender.exchange(src, dst, proto, watch=self._tracer.watch)

    def judge(self, exchanges: list[traffic.Exchange]) -> list[FlowResult]:
        """Verdicts on exchanges sent since the last judge(); events lost meanwhile make
        them INCONCLUSIVE."""
        index = by_exchange(self._tracer.take(SETTLE_MS), exchanges)
        total = self.lost
        lost, self._lost_before = total - self._lost_before, total
        attached = self._tracer.loaded.attached
        missing = ", ".join(tp for tp in NEEDED if f"raw_tracepoint:{tp}" not in attached)
        return [judge(self.plan, ex, trail(index.get(ex.key, []) + index.get(ex.end, []), ex),
                      lost, missing_probes=missing or None) for ex in exchanges]

    def check(self, src: str, dst: str, proto: str = "icmp") -> FlowResult:
        """One flow between pods addressed as NODE/POD, judged."""
        return self.judge([self.send(self.plan.pod(src), self.plan.pod(dst), proto)])[0]


def run(plan: Plan, which: str = "all", protos: tuple[str, ...] = PROTOCOLS,
        mtu: bool = True) -> Report:
    """protos: exchanges per pair; mtu: also DF UDP probes at MTU-1, MTU and MTU+1. The
    live state is audited first; each failing flow is given its cause."""
    chosen = pairs(plan, which)
    if not chosen:
        raise UsageError(f"--pairs {which} selects no pod pair in cluster {plan.name} "
                         f"({len(plan.nodes)} nodes x {len(plan.nodes[0].pods)} pods): "
                         "nothing to verify; pick other --pairs or a bigger topology")
    drift = audit.audit(plan)
    with Verifier(plan) as verifier:
        exchanges = [verifier.send(src, dst, proto) for proto in protos for src, dst in chosen]
        if mtu:
            exchanges += [verifier.send(src, dst, "udp", size)
                          for size in mtu_sizes(plan) for src, dst in chosen]
        flows = verifier.judge(exchanges)
        report = Report(flows, verifier.backends, verifier.lost, drift, verifier.skipped)
    known = cause.owners(plan)
    for flow in flows:
        flow.cause = cause.explain(plan, flow, drift, known)
    return report


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


def as_dict(report: Report) -> dict[str, Any]:
    latent = set(report.latent)
    return {"drift": [{**item.as_dict(), "latent": item in latent} for item in report.drift],
            "flows": [flow_dict(f) for f in report.flows],
            "summary": {"pass": report.count(PASS), "fail": report.count(FAIL),
                        "inconclusive": report.count(INCONCLUSIVE), "drift": len(report.drift)},
            "backends": report.backends, "skipped_probes": report.skipped,
            "lost_events": report.lost_events}


def as_text(report: Report) -> str:
    latent = set(report.latent)
    lines = [f"drift: {item}" + ("  (latent: no flow failed of it)" if item in latent else "")
             for item in report.drift]
    for flow in report.flows:
        line = f"{flow.verdict:<12} {_proto(flow):<8} {flow.src:>14} -> {flow.dst:<14}"
        if not flow.passed:
            line += f" [{flow.rule}] {flow.diagnosis}"
        lines.append(line)
        if flow.cause:
            lines.append(f"{'':<12} {_cause_line(flow)}")
    skipped = f"; probes skipped: {', '.join(report.skipped)}" if report.skipped else ""
    lines.append(f"{len(report.flows)} flows: {report.count(PASS)} passed, "
                 f"{report.count(FAIL)} failed, {report.count(INCONCLUSIVE)} inconclusive; "
                 f"{len(report.drift)} drift; backends {', '.join(report.backends)}{skipped}; "
                 f"lost events {report.lost_events}")
    return "\n".join(lines)
