"""A run's waves judged by worker processes (verify/workers.py): the verdicts, rules and
causes of one process, in its order; a worker killed mid-wave leaves that wave
INCONCLUSIVE and the run finishes; another worker's packets that carry the same tag are
never taken for an exchange's."""

import os
import signal
import time
from pathlib import Path

import pytest

from dataplane.bpf import loader
from dataplane.cluster import spec
from dataplane.errors import UsageError
from dataplane.cluster.plan import make_plan
from dataplane.records import Exchange, Frame
from dataplane.traffic import prober
from dataplane.verify import verifier, workers
from dataplane.verify import pairs as choose

from .conftest import dp, ip_json, one_line_error, sh

PROTOS = ("icmp", "udp", "tcp")


def topology(tmp_path, name, nodes=4, pods=4):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[cluster]\nname = "{name}"\nnodes = {nodes}\npods_per_node = {pods}\n')
    return path


def outcome(report):
    return [(f.src, f.dst, f.proto, f.verdict, f.rule, tuple(map(str, f.cause)))
            for f in report.flows]


def children() -> list[str]:
    pid = os.getpid()
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += (task / "children").read_text().split()
    return found


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_workers_give_the_verdicts_of_one_process_in_its_order(dataplane_clusters, tmp_path):
    made = dataplane_clusters(topology(tmp_path, "wk"))
    sh(None, "ip", "-n", made.plan.node("node-2").netns, "link", "set",
       made.plan.spec.vtep_name, "down")
    alone = verifier.run(made.plan, protos=PROTOS, mtu=False, keep_hops=False, jobs=1)
    shared = verifier.run(made.plan, protos=PROTOS, mtu=False, keep_hops=False, jobs=2)
    assert (alone.workers, shared.workers) == (1, 2)
    assert outcome(shared) == outcome(alone)
    assert {f.verdict for f in shared.flows} == {"PASS", "FAIL"}
    assert shared.lost_events == 0
    assert children() == []  # every worker reaped


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_a_worker_killed_mid_wave_leaves_that_wave_inconclusive(dataplane_clusters, tmp_path,
                                                                monkeypatch):
    made = dataplane_clusters(topology(tmp_path, "wkill"))
    run = os.getpid()
    first = next(verifier.probes(made.plan, choose.pairs(made.plan), PROTOS, False))
    judge_wave = verifier.Verifier.wave

    def wave(self, probes, *last):  # runs in the forked workers
        if os.getpid() != run and probes[0] == first:
            os.kill(os.getpid(), signal.SIGKILL)
        return judge_wave(self, probes, *last)

    monkeypatch.setattr(verifier.Verifier, "wave", wave)
    report = verifier.run(made.plan, protos=PROTOS, mtu=False, keep_hops=False, jobs=2)
    assert len(report.flows) == 16 * 15 * len(PROTOS)
    dead = [f for f in report.flows if f.verdict != "PASS"]
    assert dead and (dead[0].src, dead[0].dst, dead[0].proto) == (first.src.ref, first.dst.ref,
                                                                   first.proto)
    assert {(f.verdict, f.rule) for f in dead} == {("INCONCLUSIVE", "worker")}
    assert "killed by SIGKILL" in dead[0].diagnosis
    assert report.flows.index(dead[-1]) - report.flows.index(dead[0]) == len(dead) - 1
    assert not report.passed
    assert children() == []


@pytest.mark.needs_root
def test_a_worker_that_cannot_load_probes_fails_the_run_as_one_process_would(
        dataplane_cluster, monkeypatch):
    def load(*args, **kwargs):  # runs in the forked worker
        raise UsageError("no kernel headers for this test; install them")

    monkeypatch.setattr(loader, "load", load)
    with pytest.raises(UsageError, match="no kernel headers for this test"):
        verifier.run(dataplane_cluster.plan, protos=("icmp",), mtu=False, keep_hops=False,
                     jobs=2)
    assert children() == []


@pytest.mark.needs_root
def test_workers_load_the_probes_the_run_prepared(dataplane_cluster, monkeypatch):
    """Preparing a load reads the kernel's symbols where it has kprobes (/proc/kallsyms,
    50 ms and more): the run prepares once, and its workers load what it prepared."""
    run, real = os.getpid(), loader.prepare

    def prepare(*args, **kwargs):
        if os.getpid() != run:
            raise UsageError("a worker prepared its probes again")
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "prepare", prepare)
    report = verifier.run(dataplane_cluster.plan, protos=("icmp",), mtu=False, keep_hops=False,
                          jobs=2)
    assert report.workers == 2 and report.passed


@pytest.mark.needs_root
def test_jobs_must_be_a_count():
    done = dp("verify", "--jobs", "0")
    assert done.returncode == 2
    assert "--jobs" in one_line_error(done) and "give 1 or more" in one_line_error(done)


def test_a_run_is_shared_only_when_big_and_its_hops_are_not_kept():
    cores = workers.cores()
    assert workers.jobs_for(10 * workers.MIN_WAVE_EVENTS, ship_hops=True) == 1
    assert workers.jobs_for(workers.MIN_WAVE_EVENTS - 1, ship_hops=False) == 1
    assert workers.jobs_for(10 ** 6, ship_hops=False) == cores
    # every worker gets a wave, and no wave outgrows the ring buffer's share
    assert workers.wave_events(26000, 2) == 13000
    assert workers.wave_events(10 ** 7, 2) == verifier.WAVE_EVENTS
    assert workers.wave_events(6000, 2) == workers.MIN_WAVE_EVENTS


def frame(src, dst, proto, **fields):
    return Frame(eth_src="", eth_dst="", ethertype=0x0800, src=src, dst=dst, proto=proto,
                 **fields)


@pytest.mark.needs_root
def test_each_worker_echoes_with_an_id_of_its_own(dataplane_cluster):
    """The kernel numbers ping sockets per namespace: without ids of their own, two
    workers' echoes to one pod could carry the same id, and one's look like the other's
    (NATed)."""
    pod = dataplane_cluster.plan.pod("node-0/pod-0")
    ids = []
    for worker in (0, 1):
        with prober.Prober(worker) as probing:
            ids.append(probing._socket(pod, "ping").getsockname()[1])
    assert ids == [prober.PING_IDS[0], prober.PING_IDS[1]]
    assert not set(prober.PING_IDS) & set(prober.SERVICE_PORTS)
    assert max(prober.PING_IDS) < 32768  # below the ephemeral ports of UDP and TCP clients


def test_a_packet_to_or_from_a_third_party_with_the_same_tag_is_not_the_exchange():
    """A pod may hold the same ICMP id or UDP port as another pod; their packets match the
    exchange's receiving end. Only a packet that travels as the exchange's would, with its
    other address alone rewritten (NAT), is taken (workers keep ids and ports apart too)."""
    plan = make_plan(spec.parse('[cluster]\nname = "t"\nnodes = 2\npods_per_node = 2\n'))
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-1/pod-0")
    c, nat = "10.244.1.3", "172.30.0.1"
    ping = Exchange(a, b, "icmp", 4242, True)
    assert ping.matches(frame(nat, str(b.ip), "icmp", icmp_type=8, icmp_id=4242))
    assert ping.matches(frame(str(b.ip), nat, "icmp", icmp_type=0, icmp_id=4242))
    assert not ping.matches(frame(str(b.ip), c, "icmp", icmp_type=8, icmp_id=4242))
    assert not ping.matches(frame(c, str(b.ip), "icmp", icmp_type=0, icmp_id=4242))
    udp = Exchange(a, b, "udp", 40000, True, port=7777)
    assert udp.matches(frame(nat, str(b.ip), "udp", sport=40000, dport=7777))
    assert udp.matches(frame(str(b.ip), nat, "udp", sport=7777, dport=40000))
    assert not udp.matches(frame(str(b.ip), c, "udp", sport=40000, dport=7778))
    assert not udp.matches(frame(c, str(b.ip), "udp", sport=40000, dport=7778))


def test_a_wave_handed_out_names_the_arp_entries_it_teaches():
    plan = make_plan(spec.parse('[cluster]\nname = "t"\nnodes = 2\npods_per_node = 2\n'))
    a, a2, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1"), plan.pod("node-1/pod-0")
    (wave,) = verifier.waves(plan, [verifier.Probe(a, a2, "icmp"), verifier.Probe(a, b, "icmp")])
    room = verifier.NeighbourRoom(plan)
    try:
        assert room.took(wave) == set().union(*(verifier.neighbours(plan, p) for p in wave))
        nodes = {plan.node(pod.node).netns for pod in (a, b)}
        assert room._touched == {a.netns, a2.netns, b.netns} | nodes  # forgotten when short
    finally:
        room.close()


@pytest.mark.needs_root
def test_forgetting_entries_deletes_just_those_and_keeps_the_permanent(dataplane_cluster):
    plan = dataplane_cluster.plan
    a, a2, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1"), plan.pod("node-1/pod-0")
    for dst in (a2, b):
        sh(a.netns, "ping", "-c1", "-W1", str(dst.ip))
    node = plan.node("node-0")

    def learnt(netns):
        return {e["dst"] for e in ip_json(netns, "neigh", "show")
                if "PERMANENT" not in e.get("state", [])}

    def permanent(netns):
        return {e["dst"] for e in ip_json(netns, "neigh", "show")
                if "PERMANENT" in e.get("state", [])}

    assert {str(a2.ip), str(a.gateway)} <= learnt(a.netns)
    kept = permanent(node.netns)
    room = verifier.NeighbourRoom(plan)
    try:
        room.forget_entries({(a.netns, a2.ip)})
    finally:
        room.close()
    assert str(a2.ip) not in learnt(a.netns) and str(a.gateway) in learnt(a.netns)
    assert kept and permanent(node.netns) == kept


def echoes_sent(plan) -> int:
    """ICMP echo requests every pod of plan sent, as each pod's kernel counts them."""
    total = 0
    for pod in plan.pods():
        names, values = [line.split()[1:] for line in sh(pod.netns, "cat", "/proc/net/snmp")
                         .splitlines() if line.startswith("Icmp:")]
        total += int(values[names.index("OutEchos")])
    return total


@pytest.mark.needs_root
@pytest.mark.needs_probes
@pytest.mark.parametrize("jobs", [1, 2])
def test_no_wave_goes_out_before_the_run_is_ready(dataplane_cluster, jobs):
    """The first wave waits for ready() (the run's child resetting the caches): no pod has
    sent an echo when it returns, in one process and with workers; then every flow goes."""
    plan = dataplane_cluster.plan
    before, when_ready = echoes_sent(plan), []

    def ready():
        time.sleep(0.3)  # workers have loaded their probes by then: they must still wait
        when_ready.append(echoes_sent(plan))

    todo = verifier.probes(plan, choose.pairs(plan), ("icmp",), mtu=False)
    judging = verifier.Verifier(plan, reset_caches=False, once=True) if jobs == 1 else \
        workers.Pool(plan, jobs, workers.MIN_WAVE_EVENTS)
    with judging as judge:
        flows = list(judge.run(todo, lambda flow: flow, ready))
    assert when_ready == [before]
    assert len(flows) == 12 and all(f.passed for f in flows)
    assert echoes_sent(plan) >= before + len(flows)
