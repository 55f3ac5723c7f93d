"""`dataplane verify`: earlier runs' caches reset, then the cluster audited beside the traffic
(both by a forked child, beside.py); exchanges for the chosen pod pairs in waves, each flow
judged hop by hop, given its cause and handed on."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from itertools import chain
from typing import AbstractSet, Protocol

from dataplane.bpf import loader
from dataplane.bpf.tracer import Tracer
from dataplane.bpf.trails import trail
from dataplane.cluster.plan import Plan, PodPlan
from dataplane.names import PROTOCOLS, Pairs, Proto
from dataplane.records import Drift, Exchange, FlowResult, Hop, frame_ends, frame_keys
from dataplane.traffic import prober
from dataplane.verify import beside, caches, cause
from dataplane.verify.pairs import some_pairs
from dataplane.verify.verdict import judge

# After a wave, the last of its events are in the ring buffer already (an answer reaches
# its socket after its last hop); a few poll periods let the poller drain them.
SETTLE_MS = 20
# Ring buffer events one exchange costs, about (every hop of both legs; TCP's handshake
# and close are four packets each way), and the events a wave may cost: well under the
# ring buffer's room (~43000) should the poller not run at all while the wave is out.
# Every wave with an unanswered exchange waits the answer timeout once: the fewer waves,
# the sooner a broken network is judged.
EVENTS: dict[Proto, int] = {"icmp": 26, "udp": 26, "tcp": 80, "arp": 10}
WAVE_EVENTS = 26000
NEIGHBOUR_MARGIN = 512  # ARP table entries a wave may make the kernel learn, at most
BLOCK_PODS = 16  # pods of a block of pairs (see blocked): 256 pairs, about a wave's worth
NEEDED = ("net_dev_start_xmit", "netif_receive_skb", "kfree_skb")  # tracepoints a trail needs


@dataclass
class Report:
    flows: list[FlowResult]
    backends: list[str]
    lost_events: int
    drift: list[Drift] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # probes not attached, and why
    pairs: Pairs = "all"  # which pod pairs: all, same-node, cross-node or sample
    seconds: dict[str, float] = field(default_factory=dict)  # by phase: send, events, judge...
    caches_reset: bool = True  # False on a network we did not build: it is never changed
    probes: str = "compiled"  # or "cached": loaded from an earlier run's compile
    workers: int = 1  # processes that judged the flows (workers.py)

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


class Stream(Protocol):
    """Where a run writes each flow as soon as it is judged (report/stream.py has them)."""

    hops: bool  # whether it writes flows' hops: then they must reach it

    def start(self, drift: list[Drift], total: int) -> None: ...

    def flow(self, flow: FlowResult) -> None: ...

    def end(self, report: Report) -> None: ...


def by_exchange(hops: list[Hop], exchanges: list[Exchange],
                pods: AbstractSet[str] = frozenset()) -> dict[tuple, list[Hop]]:
    """Hops indexed by the exchange keys their packets could belong to; a packet of no
    exchange's key (NATed on the way) is indexed by the exchange end it kept, unless
    its other address is one of pods (frame_ends())."""
    keys = {ex.key for ex in exchanges}
    index: dict[tuple, list[Hop]] = defaultdict(list)
    found: dict[int, tuple] = {}  # by frame: hops of one capture share its decoded frame
    for hop in hops:
        frame = hop.flow
        if frame is None:
            continue
        where = found.get(id(frame))
        if where is None:
            mine = tuple(key for key in frame_keys(frame) if key in keys)
            where = found[id(frame)] = mine or frame_ends(frame, pods)
        for key in where:
            index[key].append(hop)
    return index


def mtu_sizes(plan: Plan) -> tuple[int, int, int]:
    """IP lengths around the pod MTU (flannel.1's): one under, at, and one over."""
    mtu = plan.spec.vtep_mtu
    return mtu - 1, mtu, mtu + 1


@dataclass(frozen=True)
class Probe:
    """One exchange to make: a pair, a protocol, and for a DF UDP probe its IP length."""

    src: PodPlan
    dst: PodPlan
    proto: Proto
    size: int | None = None


def blocked(plan: Plan, chosen: list[tuple[PodPlan, PodPlan]]) -> list[tuple[PodPlan, PodPlan]]:
    """The pairs grouped by the blocks of BLOCK_PODS pods their source and destination
    are in (in order of first appearance, each group in its own order): a wave of
    --pairs all then involves a few blocks of pods, not a source and every pod it
    probes, and its pods and nodes learn fewer neighbours."""
    block = {pod.netns: k // BLOCK_PODS for k, pod in enumerate(plan.pods())}
    groups: dict[tuple[int, int], list[tuple[PodPlan, PodPlan]]] = defaultdict(list)
    for src, dst in chosen:
        groups[block[src.netns], block[dst.netns]].append((src, dst))
    return [pair for group in groups.values() for pair in group]


def probes(plan: Plan, chosen: list[tuple[PodPlan, PodPlan]], protos: tuple[Proto, ...],
           mtu: bool) -> Iterator[Probe]:
    """Every exchange of a run, protocol by protocol, then the DF probes size by size;
    the pairs in blocks (see blocked())."""
    chosen = blocked(plan, chosen)
    for proto in protos:
        yield from (Probe(src, dst, proto) for src, dst in chosen)
    for size in mtu_sizes(plan) if mtu else ():
        yield from (Probe(src, dst, "udp", size) for src, dst in chosen)


def cost(plan: Plan, chosen: list[tuple[PodPlan, PodPlan]], protos: tuple[Proto, ...],
         mtu: bool) -> tuple[int, int]:
    """A run's exchanges (probes()) and the probe events they cost, about."""
    kinds = [*protos, *["udp"] * (len(mtu_sizes(plan)) if mtu else 0)]
    return len(chosen) * len(kinds), len(chosen) * sum(EVENTS[kind] for kind in kinds)


class Wave(list):
    """A wave's probes (a list of them), and the ARP entries they teach (neighbours())."""

    def __init__(self) -> None:
        super().__init__()
        self.taught: set[tuple[str, IPv4Address]] = set()


def waves(plan: Plan, todo: Iterable[Probe], events: int = WAVE_EVENTS,
          margin: int = NEIGHBOUR_MARGIN) -> Iterator[Wave]:
    """Exchanges in waves whose probe events (at most events) fit the ring buffer with room
    to spare, and whose neighbour entries (neighbours()) fit the room the kernel's ARP table
    is given for each wave (margin)."""
    wave, budget = Wave(), events
    for probe in todo:
        cost, taught = EVENTS[probe.proto], neighbours(plan, probe)
        more = taught - wave.taught
        if wave and (cost > budget or len(wave.taught) + len(more) > margin):
            yield wave
            wave, budget = Wave(), events
            more = taught
        wave.append(probe)
        wave.taught |= more
        budget -= cost
    if wave:
        yield wave


def neighbours(plan: Plan, probe: Probe) -> set[tuple[str, IPv4Address]]:
    """The ARP entries (namespace, address) an exchange makes the kernel learn, both ways:
    pods of one node resolve each other; across nodes each pod resolves its gateway, each
    node the pod it delivers to on its bridge and the other node's underlay address
    (flannel.1's entries are static)."""
    s, d = probe.src, probe.dst
    if s.node == d.node:
        return {(s.netns, d.ip), (d.netns, s.ip)}
    sn, dn = plan.node(s.node), plan.node(d.node)
    return {(s.netns, s.gateway), (d.netns, d.gateway), (sn.netns, s.ip), (dn.netns, d.ip),
            (sn.netns, dn.underlay_ip), (dn.netns, sn.underlay_ip)}


@contextmanager
def timed(seconds: Counter[str], phase: str) -> Iterator[None]:
    """Adds the time the block takes to seconds[phase]."""
    began = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] += time.perf_counter() - began


class NeighbourRoom:
    """Every namespace shares the kernel's ARP table: before a wave could fill it, the pods
    and nodes of earlier waves forget their neighbours (our own traffic must not be refused
    with ENOBUFS, nor an ARP request go unanswered)."""

    def __init__(self, plan: Plan, margin: int = NEIGHBOUR_MARGIN):
        self.plan = plan
        self.margin = margin  # entries a wave may make (waves())
        self._touched: set[str] = set()  # namespaces whose neighbours waves taught
        self._forgetter = caches.Forgetter()

    def short(self, in_flight: int = 0) -> bool:
        """Whether one wave more, beside in_flight waves still out (whose entries may not
        all be made yet), could fill the table unless earlier waves' entries go."""
        return bool(self._touched) and \
            caches.neighbour_room() < self.margin * (in_flight + 1)

    def forget(self) -> None:
        """Only while no wave is out: a flushed entry drops what waits on it."""
        self._forgetter.forget(sorted(self._touched))
        self._touched.clear()

    def forget_entries(self, entries: set[tuple[str, IPv4Address]]) -> None:
        """Forget just these entries (while waves that need others are out)."""
        by_namespace: dict[str, set[IPv4Address]] = defaultdict(set)
        for where, address in entries:
            by_namespace[where].add(address)
        self._forgetter.forget_entries(by_namespace)

    def took(self, wave: Wave) -> set[tuple[str, IPv4Address]]:
        """Notes the namespaces wave's pods and nodes are in; returns the ARP entries it
        teaches (neighbours())."""
        self._touched.update(ns for p in wave for pod in (p.src, p.dst)
                             for ns in (pod.netns, self.plan.node(pod.node).netns))
        return wave.taught

    def close(self) -> None:
        self._forgetter.close()


class Verifier:
    """Probes loaded once and sockets kept, for any number of exchanges on one cluster."""

    workers = 1  # processes judging (workers.Pool has more)

    def __init__(self, plan: Plan, buffer_pages: int | None = None, reset_caches: bool = True,
                 worker: int | None = None, once: bool = False,
                 recipe: loader.Recipe | None = None):
        """reset_caches=False: the caller has reset them (run() and workers.py); worker: the
        k-th of a run's workers, its probes apart from the others' (workers.py). once: for one
        run: its probes are detached as soon as its last wave's events are taken, while
        that wave is judged (a detach waits on the kernel, tens of ms when other runs
        use the tracepoints). recipe: the probes' loader.prepare(), made by the caller."""
        self.plan = plan
        self._once = once
        self._tracer = Tracer(plan, record_all=False, pages=buffer_pages, recipe=recipe)
        self._prober = prober.Prober(worker)
        self._room = NeighbourRoom(plan)
        self._reset = reset_caches and plan.built
        self._lost_before = 0
        self.seconds: Counter[str] = Counter()  # where a run's time goes, by phase

    def __enter__(self) -> "Verifier":
        if self._reset:  # no path MTU or neighbour an earlier run left may sway a verdict
            with timed(self.seconds, "caches"):
                caches.reset(self.plan)
        with timed(self.seconds, "probes"):
            self._tracer.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._prober.close()
        self._room.close()
        self._tracer.__exit__(*exc)

    @property
    def backends(self) -> list[str]:
        return self._tracer.loaded.backends

    @property
    def skipped(self) -> dict[str, str]:
        return self._tracer.loaded.skipped

    @property
    def origin(self) -> str:
        return self._tracer.loaded.origin

    @property
    def lost(self) -> int:
        return self._tracer.lost

    def send(self, src: PodPlan, dst: PodPlan, proto: Proto,
             size: int | None = None) -> Exchange:
        """An exchange (a DF UDP probe of IP length size, if given), recorded."""
        return self._prober.exchange(src, dst, proto, self._tracer.watch, size)

    def run(self, todo: Iterable[Probe],
            finish: Callable[[FlowResult], FlowResult] = lambda flow: flow,
            ready: Callable[[], object] = lambda: None) -> Iterator[FlowResult]:
        """Each wave of exchanges started together, finished together, judged, given to
        finish and yielded; ready() returns once the first may go out."""
        ahead = waves(self.plan, todo)
        wave = next(ahead, None)
        ready()
        while wave is not None:
            if self.plan.built:  # a network we did not build is never changed
                with timed(self.seconds, "neighbours"):
                    if self._room.short():
                        self._room.forget()
                self._room.took(wave)
            after = next(ahead, None)
            yield from map(finish, self.wave(wave, lambda: after is None))
            wave = after

    def wave(self, wave: list[Probe], last: Callable[[], bool] = lambda: False) -> list[FlowResult]:
        """One wave's exchanges, judged; last, asked once their events are taken: whether
        no wave follows."""
        fulls = caches.neighbour_table_fulls()
        with timed(self.seconds, "send"):
            # the flows known before their first packet, watched at once (a batched update
            # per map, not three system calls an exchange)
            self._tracer.watch_all(flow for p in wave if (
                flow := self._prober.planned(p.src, p.dst, p.proto, p.size)) is not None)
            pending = [self._prober.start(p.src, p.dst, p.proto, self._tracer.watch, p.size)
                       for p in wave]
        with timed(self.seconds, "answers"):
            exchanges = self._prober.finish(pending)
        return self.judge(exchanges, caches.neighbour_table_fulls() - fulls, last)

    def judge(self, exchanges: list[Exchange], table_fulls: int = 0,
              last: Callable[[], bool] = lambda: False) -> list[FlowResult]:
        """Verdicts on exchanges sent since the last judge(); events lost meanwhile make
        them INCONCLUSIVE, and so does a full neighbour table for those that failed.
        Their flows are no longer watched afterwards (the probes of a run's last wave are
        detached instead: its maps go with them)."""
        with timed(self.seconds, "events"):
            hops = self._tracer.take(SETTLE_MS)
        attached = self._tracer.loaded.attached  # while the events were recorded
        missing = ", ".join(tp for tp in NEEDED if f"raw_tracepoint:{tp}" not in attached)
        final = self._once and last()
        if final:
            self._tracer.detach_soon()
        else:
            self._tracer.unwatch()
        with timed(self.seconds, "judge"):
            return self._judged(hops, exchanges, table_fulls, missing)

    def _judged(self, hops: list[Hop], exchanges: list[Exchange], table_fulls: int,
                missing: str) -> list[FlowResult]:
        index = by_exchange(hops, exchanges, self.plan.pod_addresses)
        total = self.lost
        lost, self._lost_before = total - self._lost_before, total
        return [judge(self.plan, ex, trail(index.get(ex.key, []) + index.get(ex.end, [])),
                      lost, missing_probes=missing or None, table_fulls=table_fulls)
                for ex in exchanges]

    def check(self, src: str, dst: str, proto: Proto = "icmp") -> FlowResult:
        """One flow between pods addressed as NODE/POD, judged."""
        return self.judge([self.send(self.plan.pod(src), self.plan.pod(dst), proto)])[0]



@dataclass
class TraceResult:
    """`dataplane trace`: one exchange and every hop its packets made."""

    exchange: Exchange
    hops: list[Hop]
    lost_events: int
    backends: list[str]
    skipped: dict[str, str]  # probes not attached, and why


def trace(plan: Plan, src: str, dst: str, proto: Proto) -> TraceResult:
    """One exchange between pods addressed as NODE/POD, with its hops (`dataplane trace`)."""
    with Verifier(plan) as verifier:
        exchange = verifier.send(plan.pod(src), plan.pod(dst), proto)
        (flow,) = verifier.judge([exchange])
        return TraceResult(exchange, flow.hops, verifier.lost, verifier.backends,
                           verifier.skipped)

def run(plan: Plan, which: Pairs = "all", protos: tuple[Proto, ...] = PROTOCOLS,
        mtu: bool = True, stream: Stream | None = None, keep_hops: bool = True,
        buffer_pages: int | None = None, verifier: Verifier | None = None,
        jobs: int | None = None, started: beside.Beside | None = None) -> Report:
    """protos: exchanges per pair; mtu: also DF UDP probes at MTU-1, MTU and MTU+1. A
    forked child resets the caches, then audits the live state while the traffic goes
    (beside.py); each failing flow is given its cause, then written to stream as soon as
    it is judged. keep_hops=False drops each flow's hops after that, so that memory does
    not grow with the hops of every flow. verifier: one already entered (its probes
    loaded once for several runs; its caller resets the caches). jobs: worker processes
    judging the waves (workers.py); None: one per core for a big run whose hops are not
    kept. started: beside.start(plan) called by the caller already (the CLI, before it
    imports the rest of the run)."""
    from dataplane.verify import workers

    chosen = some_pairs(plan, which)
    with started or beside.start(plan, reset=verifier is None) as child:
        known = cause.owners(plan)
        total, events = cost(plan, chosen, protos, mtu)
        ship_hops = keep_hops or bool(stream and stream.hops)  # every flow's hops must reach us
        if jobs is None:
            jobs = workers.jobs_for(events, ship_hops)
        if verifier:
            judging = nullcontext(verifier)
        elif jobs > 1:
            judging = workers.Pool(plan, jobs, workers.wave_events(events, jobs), buffer_pages,
                                   ship_hops)
        else:
            judging = Verifier(plan, buffer_pages, reset_caches=False, once=True)

        def evidence(flow: FlowResult) -> FlowResult:  # where the flow's hops are
            flow.cause = cause.evidence(plan, flow, known)
            return flow

        flows: list[FlowResult] = []
        drift: list[Drift] | None = None
        with judging as judge:
            # None: the end, so that the drift is taken even had no flow come
            for flow in chain(judge.run(probes(plan, chosen, protos, mtu), evidence,
                                        child.reset), [None]):
                if drift is None:  # before the first flow is handed on
                    drift, audited = child.drift()
                    if stream:
                        stream.start(drift, total)
                if flow is None:
                    break
                flow.cause = cause.explaining(plan, flow, drift, known) or flow.cause
                if stream:
                    stream.flow(flow)
                if not keep_hops:
                    flow.hops = []
                flows.append(flow)
            report = Report(flows, judge.backends, judge.lost, drift, judge.skipped, which,
                            {"audit": audited, "caches": child.reset(), **judge.seconds},
                            caches_reset=plan.built, probes=judge.origin,
                            workers=judge.workers)
    if stream:
        stream.end(report)
    return report
