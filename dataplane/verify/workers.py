"""A verify run's waves judged by worker processes, one per core: sending, decoding the
events and judging are Python, so one process uses one core however many the machine has.

Each worker is forked from the run, loads its own probes (their own maps and ring buffer:
a worker sees only the flows it watches) and sends, traces and judges the waves it is
handed. The run keeps what is shared: the caches are reset once before any wave goes out
(by the run's child, beside.py), the kernel's ARP table is given room by deleting what the
waves back taught and no wave out needs (a flushed entry would drop the packets waiting on
it), ARP waves go alone, and flows are handed on in wave order, so the output is that of one
process. A worker that dies leaves its wave INCONCLUSIVE, never the run unfinished; an error
in a worker is raised by the run as one process would raise it. Once every wave is handed
out, each worker is told that none follows: it detaches its probes while it judges its last.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

from dataplane.bpf import compiled, loader
from dataplane.cluster.plan import Plan
from dataplane.records import INCONCLUSIVE, FlowResult
from dataplane.traffic.prober import SERVICE_PORTS
from dataplane.verify import forked
from dataplane.verify.channel import Channel, fork, pair, wait
from dataplane.verify.verifier import (NEIGHBOUR_MARGIN, WAVE_EVENTS, NeighbourRoom, Probe,
                                       Verifier, Wave, timed, waves)

# Waves below this many probe events are not split between workers: a worker costs a fork
# and a probe load, worth it from a few hundred exchanges.
MIN_WAVE_EVENTS = 5000
STOP_SECONDS = 10  # a worker judging a wave when the run stops ends within its answer timeout
Finish = Callable[[FlowResult], FlowResult]
Job = tuple[int, list[tuple[int, int, str, "int | None"]]]  # a wave by pod indexes


def cores() -> int:
    return len(os.sched_getaffinity(0))


def jobs_for(events: int, ship_hops: bool) -> int:
    """Workers for a run whose exchanges cost events: one per core, fewer for a small run,
    one when every flow's hops must reach the run (shipping them costs more than judging)."""
    if ship_hops:
        return 1
    return max(1, min(cores(), events // MIN_WAVE_EVENTS))


def wave_events(events: int, jobs: int) -> int:
    """The events a wave may cost, so that a run has at least a wave per worker."""
    return min(WAVE_EVENTS, max(MIN_WAVE_EVENTS, math.ceil(events / jobs)))


@dataclass
class _Worker:
    pid: int
    conn: Channel
    wave: int | None = None  # the wave it is judging
    ready: bool = False
    stopped: bool = False  # told that no wave follows


@dataclass
class Pool:
    """Workers for one run on plan; used as Verifier is by run(): run(todo, finish), then
    backends, skipped, origin, lost, seconds and workers."""

    plan: Plan
    jobs: int
    events: int  # the events a wave may cost (wave_events)
    buffer_pages: int | None = None
    ship_hops: bool = False
    seconds: Counter[str] = field(default_factory=Counter)
    backends: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    origin: str = "compiled"
    workers: int = 0  # started
    readied: int = 0  # workers that loaded their probes
    running: list[_Worker] = field(default_factory=list)
    lost_by_worker: dict[int, int] = field(default_factory=dict)  # events, by pid
    recipe: loader.Recipe | None = None  # the workers' probes, prepared when the pool opens

    def __post_init__(self) -> None:
        self.jobs = min(self.jobs, len(SERVICE_PORTS))  # a port of its own each

    @property
    def lost(self) -> int:
        return sum(self.lost_by_worker.values())

    def __enter__(self) -> "Pool":
        compiled.usable()  # bcc's runtime library opened here is every forked worker's already
        self.recipe = loader.prepare(pages=self.buffer_pages)  # and what their loads will do
        return self

    def __exit__(self, *exc: object) -> None:
        """Workers end after the wave they are judging, if the run was cut short; one
        still there after STOP_SECONDS is terminated."""
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self.running:
            self.stop(worker)
        for worker in self.running:
            _reap(worker, deadline)
        self.running.clear()

    def stop(self, worker: _Worker) -> None:
        """Tell worker that no wave follows: it ends after the one it is judging (and
        detaches its probes while it judges it, if it hears in time)."""
        if not worker.stopped:
            worker.stopped = True
            with suppress(OSError):  # it ended already
                worker.conn.send(None)

    def run(self, todo: Iterable[Probe], finish: Finish,
            ready: Callable[[], object] = lambda: None) -> Iterator[FlowResult]:
        """As Verifier.run()."""
        pods = self.plan.pods()
        index = {pod.netns: k for k, pod in enumerate(pods)}
        # the waves out at once share the room one wave has alone
        room = NeighbourRoom(self.plan, NEIGHBOUR_MARGIN // self.jobs)
        try:
            yield from _Schedule(self, room, finish, index, ready).run(
                waves(self.plan, todo, self.events, room.margin))
        finally:
            room.close()

    def start(self, finish: Finish) -> None:
        """One more worker, forked now: it inherits the plan and finish."""
        parent, child = pair()
        pid = fork(parent, child)
        if pid == 0:
            try:
                # The run stops it (its pipe closed), not a Ctrl-C that would cut its
                # clean-up short (probes detached, kprobe events removed).
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                forked.calm_collector()
                parent.close()
                for other in self.running:
                    other.conn.close()
                _serve(child, Verifier(self.plan, self.buffer_pages, reset_caches=False,
                                       worker=self.workers, once=True, recipe=self.recipe),
                       finish, self.ship_hops)
            finally:
                os._exit(1)  # whatever escaped _serve: the child never runs the run's code
        child.close()
        self.running.append(_Worker(pid, parent))
        self.workers += 1


@dataclass
class _Schedule:
    """Hands waves to idle workers, collects their flows, yields them in wave order."""

    pool: Pool
    room: NeighbourRoom
    finish: Finish
    index: dict[str, int]
    ready: Callable[[], object]  # returns once a wave may go out
    out: dict[int, list[FlowResult]] = field(default_factory=dict)  # judged, not yet yielded
    sent: dict[int, list[Probe]] = field(default_factory=dict)  # out at a worker
    taught: dict[int, set] = field(default_factory=dict)  # ARP entries of the waves out
    learnt: set = field(default_factory=set)  # ARP entries of the waves back, kept yet
    more: bool = True  # waves are left to hand out

    def run(self, todo: Iterator[Wave]) -> Iterator[FlowResult]:
        pool, pending, count, emitted = self.pool, None, 0, 0
        # all at once when the probes are compiled already, else the others once the
        # first has compiled them
        for _ in range(pool.jobs if loader.cached(pool.recipe) else 1):
            pool.start(self.finish)
        self.ready()  # while the workers load their probes: no wave is out yet
        while True:
            if pending is None and self.more:
                pending = next(todo, None)
                self.more = pending is not None
                if not self.more:  # every wave is handed out
                    for worker in pool.running:
                        pool.stop(worker)
            if pending is not None and not pool.running:
                self._dead(count, pending, "every verify worker ended")
                pending, count = None, count + 1
                continue
            idle = [w for w in pool.running if w.ready and w.wave is None]
            if pending is not None and idle and self._may_go(pending) and \
                    self._hand(idle[0], count, pending):
                pending, count = None, count + 1
                continue
            while emitted in self.out:
                yield from self.out.pop(emitted)
                emitted += 1
            if pending is None and emitted == count:
                return
            self._collect()

    def _may_go(self, wave: list[Probe]) -> bool:
        """Whether wave may go out beside the waves out. ARP waves go alone: every ARP
        socket of a pod gets every reply, another worker's too."""
        out = list(self.sent.values())
        if out and (_arp(wave) or any(_arp(other) for other in out)):
            return False
        return self._room_for(len(out))

    def _room_for(self, in_flight: int) -> bool:
        """Whether a wave may go out now. While waves are out, only the entries the waves
        back taught and none out needs are forgotten; a namespace's every entry only
        while no wave is out, if the room would not take a wave from every worker."""
        if not self.pool.plan.built:
            return True
        with timed(self.pool.seconds, "neighbours"):
            if in_flight:
                if self.room.short(in_flight) and self.learnt:
                    needed = set().union(*self.taught.values())
                    self.room.forget_entries(self.learnt - needed)
                    self.learnt &= needed
                return not self.room.short(in_flight)
            if self.room.short(self.pool.jobs - 1):
                self.room.forget()
                self.learnt.clear()
            return True

    def _hand(self, worker: _Worker, count: int, wave: Wave) -> bool:
        """Whether worker took wave (it may have died since it was last heard from)."""
        job: Job = (count, [(self.index[p.src.netns], self.index[p.dst.netns], p.proto, p.size)
                            for p in wave])
        try:
            worker.conn.send(job)
        except OSError:
            self._ended(worker)
            return False
        # a network we did not build is never changed
        self.taught[count] = self.room.took(wave) if self.pool.plan.built else set()
        worker.wave, self.sent[count] = count, wave
        return True

    def _collect(self) -> None:
        """Waits for a message from any worker (an idle one only ever sends its end)."""
        running = list(self.pool.running)
        ready = wait([w.conn for w in running])
        for worker in [w for w in running if w.conn in ready]:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._ended(worker)
                continue
            kind, *body = message
            if kind == "ready":
                self._ready(worker, *body)
            elif kind == "judged":
                self._judged(worker, *body)
            else:  # what one process would have raised: a missing kernel feature is exit 2
                error, text = body
                raise (error or RuntimeError(f"verify worker {worker.pid} failed")) \
                    from forked.ChildTraceback(text)

    def _ready(self, worker: _Worker, backends: list[str], skipped: dict[str, str],
               origin: str, seconds: Counter[str]) -> None:
        worker.ready = True
        self.pool.backends, self.pool.skipped = backends, skipped
        if not self.pool.readied or origin == "compiled":  # compiled, if a worker did
            self.pool.origin = origin
        self.pool.readied += 1
        self.pool.seconds.update(seconds)
        if self.pool.workers < self.pool.jobs and self.more:
            self.pool.start(self.finish)

    def _judged(self, worker: _Worker, count: int, flows: list[FlowResult], lost: int,
                seconds: Counter[str]) -> None:
        self.out[count] = flows
        self.pool.lost_by_worker[worker.pid] = lost
        self.pool.seconds.update(seconds)
        del self.sent[count]
        self.learnt |= self.taught.pop(count)
        worker.wave = None

    def _ended(self, worker: _Worker) -> None:
        """A worker that closed its end: told to stop, or it died. A wave it was judging is
        INCONCLUSIVE."""
        _, status = os.waitpid(worker.pid, 0)
        worker.conn.close()
        self.pool.running.remove(worker)
        if worker.wave is not None:
            self.learnt |= self.taught.pop(worker.wave)
            self._dead(worker.wave, self.sent.pop(worker.wave),
                       f"verify worker {worker.pid} ended ({forked.how(status)}) before "
                       "judging it")

    def _dead(self, count: int, wave: list[Probe], why: str) -> None:
        self.out[count] = [self.finish(FlowResult(p.src.ref, p.dst.ref, p.proto, INCONCLUSIVE,
                                                  rule="worker", diagnosis=why, size=p.size))
                           for p in wave]


def _reap(worker: _Worker, deadline: float) -> None:
    """Waits until worker has ended (its end of the pipe closes then), dropping what it
    still sends; terminates it at deadline."""
    try:
        while worker.conn.poll(max(0.0, deadline - time.monotonic())):
            worker.conn.recv()
    except (EOFError, OSError):
        pass  # it ended
    else:
        with suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)
    worker.conn.close()
    os.waitpid(worker.pid, 0)


def _arp(wave: list[Probe]) -> bool:
    return any(p.proto == "arp" for p in wave)


def _serve(conn: Channel, verifier: Verifier, finish: Finish, ship_hops: bool) -> None:
    """A worker's life, in the forked child: never returns (nothing of the run's own
    clean-up or buffered output may run twice)."""
    code = 0
    pods = verifier.plan.pods()
    try:
        with verifier:
            conn.send(("ready", verifier.backends, verifier.skipped, verifier.origin,
                       verifier.seconds))
            verifier.seconds = Counter()
            sent: list = []  # the hops of the flows last sent (see below)
            while (job := conn.recv()) is not None:
                sent.clear()
                count, wave = job
                # a message there once the wave's events are taken is the stop (Pool.stop)
                flows = [finish(flow) for flow in verifier.wave(
                    [Probe(pods[s], pods[d], proto, size) for s, d, proto, size in wave],
                    conn.poll)]
                # hops not shipped are freed when the next wave comes, not before the flows
                # are sent: the run waits for the flows, not for their memory (a wave's
                # thousands of hops, ms to free); after the last wave, never
                if not ship_hops:
                    sent.extend(flow.hops for flow in flows)
                    for flow in flows:
                        flow.hops = []
                conn.send(("judged", count, flows, verifier.lost, verifier.seconds))
                verifier.seconds = Counter()
    except (EOFError, KeyboardInterrupt):  # the run ended or was interrupted
        code = 1
    except BaseException as err:
        code = 1
        text = forked.traceback_text()
        with suppress(OSError):  # the run is gone
            conn.send(("error", forked.portable(err), text))
    finally:
        os._exit(code)
