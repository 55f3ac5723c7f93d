"""The eBPF hop probes on a live cluster, and the BTF offsets they are built from."""

import ctypes
import errno
import json
import mmap
import socket
import subprocess
import textwrap

import pytest

from dataplane.bpf import btf, compiled, kernel, loader, ringbuf, tracer as tracer_module
from dataplane.bpf.tracer import Tracer
from dataplane.cluster import netns
from dataplane.errors import UsageError
from dataplane.records import Flow
from dataplane.report.hoptable import trace_text
from dataplane.traffic import prober
from dataplane.verify import verifier

from .conftest import seen_in_order, sh


def test_btf_offsets_match_bpftool_and_a_compiler(tmp_path):
    """Independent oracle: bpftool turns BTF into C, gcc lays the structs out."""
    if subprocess.run(["which", "bpftool"], capture_output=True).returncode:
        pytest.skip("bpftool is not installed: run make setup")
    header = tmp_path / "vmlinux.h"
    header.write_text(sh(None, "bpftool", "btf", "dump", "file", str(btf.VMLINUX), "format", "c"))
    lines = [f'printf("{macro} %lu\\n", (unsigned long)__builtin_offsetof(struct {struct}, {path}));'
             for macro, struct, path in loader.OFFSETS]
    (tmp_path / "off.c").write_text('#include "vmlinux.h"\nint printf(const char *, ...);\n'
                                    "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    sh(None, "gcc", "-w", "-o", str(tmp_path / "off"), "-I", str(tmp_path), str(tmp_path / "off.c"))
    compiled = dict(line.split() for line in sh(None, str(tmp_path / "off")).splitlines())
    ours = loader.offsets(btf.BTF.load())
    assert loader.layout().offsets == ours  # the cached layout too
    assert {k: int(v) for k, v in compiled.items()} == ours


def test_ring_buffer_from_5_8():
    assert not loader.ring_buffer_supported("5.4.0-150-generic")
    assert loader.ring_buffer_supported("5.8.0") and loader.ring_buffer_supported("6.18.44-fc")


def test_drop_reasons_named_from_btf():
    reasons = btf.BTF.load().enum("skb_drop_reason")
    assert reasons[2] == "SKB_DROP_REASON_NOT_SPECIFIED"
    assert "SKB_DROP_REASON_NO_SOCKET" in reasons.values()


def hops_of(result):
    return [(h.at, h.device, h.dir) for h in result.hops]


@pytest.mark.needs_probes
def test_cross_node_hops(dataplane_cluster):
    plan = dataplane_cluster.plan
    result = verifier.trace(plan, "node-0/pod-0", "node-1/pod-1", "udp")
    assert result.exchange.answered and result.lost_events == 0
    src, dst = plan.pod("node-0/pod-0"), plan.pod("node-1/pod-1")
    n0, n1 = plan.nodes
    request = [
        ("node-0/pod-0", "eth0", "tx"), ("node-0", src.host_veth, "rx"), ("node-0", "cni0", "rx"),
        ("node-0", "flannel.1", "tx"), ("node-0", "eth0", "tx"), ("underlay", "node-0", "rx"),
        ("underlay", "node-1", "tx"), ("node-1", "eth0", "rx"), ("node-1", "flannel.1", "rx"),
        ("node-1", "cni0", "tx"), ("node-1", dst.host_veth, "tx"), ("node-1/pod-1", "eth0", "rx"),
    ]
    reply = [("node-1/pod-1", "eth0", "tx"), ("node-1", "flannel.1", "tx"),
             ("node-1", "eth0", "tx"), ("node-0", "flannel.1", "rx"), ("node-0/pod-0", "eth0", "rx")]
    assert seen_in_order(request + reply, hops_of(result)), trace_text(result)
    (encap,) = [h for h in result.hops if (h.at, h.device, h.dir) == ("node-0", "eth0", "tx")]
    f = encap.frame
    assert (f.proto, f.dport, f.vni) == ("udp", 8472, 1)
    assert (f.src, f.dst) == (str(n0.underlay_ip), str(n1.underlay_ip))
    assert (f.inner.src, f.inner.dst) == (str(src.ip), str(dst.ip))
    inner = [h for h in result.hops if h.device == "flannel.1" and h.at == "node-0"][0]
    assert encap.length == inner.length + 50


@pytest.mark.needs_probes
def test_same_node_hops(dataplane_cluster):
    plan = dataplane_cluster.plan
    result = verifier.trace(plan, "node-0/pod-0", "node-0/pod-1", "icmp")
    assert result.exchange.answered
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1")
    assert hops_of(result) == [
        ("node-0/pod-0", "eth0", "tx"), ("node-0", a.host_veth, "rx"), ("node-0", b.host_veth, "tx"),
        ("node-0/pod-1", "eth0", "rx"),
        ("node-0/pod-1", "eth0", "tx"), ("node-0", b.host_veth, "rx"), ("node-0", a.host_veth, "tx"),
        ("node-0/pod-0", "eth0", "rx")], trace_text(result)


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_drop_has_its_reason(dataplane_clusters):
    made = dataplane_clusters()
    sh(None, "ip", "-n", made.plan.nodes[0].netns, "link", "set", "flannel.1", "down")
    result = verifier.trace(made.plan, "node-0/pod-0", "node-1/pod-1", "udp")
    assert not result.exchange.answered
    drops = [h for h in result.hops if h.dir == "drop"]
    assert drops and drops[-1].at == "node-0" and drops[-1].device == "cni0"
    assert drops[-1].drop_reason == "SKB_DROP_REASON_IP_INNOROUTES"


@pytest.mark.needs_probes
def test_root_namespace_traffic_is_not_recorded(dataplane_cluster):
    plan = dataplane_cluster.plan
    with Tracer(plan) as tracer:
        tracer.take()
        sh(None, "ping", "-c", "3", "-i", "0.2", "-q", "127.0.0.1")
        # the cluster's own traffic (a fresh link's IGMP reports) may be recorded; the root
        # namespace's pings never
        seen = tracer.take(50)
        assert not [h for h in seen if h.frame and "127.0.0.1" in (h.frame.src, h.frame.dst)]


@pytest.mark.needs_probes
def test_loader_reports_backends():
    loaded = loader.load()
    try:
        assert loaded.attached[:6] == [f"raw_tracepoint:{tp}"
                                       for tp in loader.TRACEPOINTS + loader.FDB_TRACEPOINTS]
        assert "tracepoints" in loaded.backends
        assert loaded.seconds < 5
        if not kernel.kprobes_available():
            assert "kprobes" in loaded.skipped
    finally:
        loaded.close()


def refuse(monkeypatch, tracepoint: str) -> None:
    """Make the kernel refuse one tracepoint: its attach asks for one that does not exist
    (through bcc, for compiled probes, and through our handle, for cached ones)."""
    from bcc import libbcc

    for lib in (libbcc.lib, compiled.lib()):
        real = lib.bpf_attach_raw_tracepoint

        def attach(prog_fd, tp, real=real):
            return real(prog_fd, b"dataplane_no_such_tracepoint" if tp == tracepoint.encode()
                        else tp)

        monkeypatch.setattr(lib, "bpf_attach_raw_tracepoint", attach)


@pytest.mark.needs_probes
def test_probes_are_compiled_once_then_loaded_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "CACHE_DIR", tmp_path)
    origins = []
    for step in ("first", "again", "altered", "corrupt", "off"):
        for kept in tmp_path.glob("probes-*.json"):
            if step == "altered":  # still JSON, the events map made tiny: not used
                entry = json.loads(kept.read_text())
                [events] = [m for m in entry["payload"]["maps"] if m["name"] == "events"]
                events["max_entries"] = 4096
                kept.write_text(json.dumps(entry))
            if step == "corrupt":
                kept.write_text(kept.read_text()[:100])
        if step == "off":
            monkeypatch.setenv("DATAPLANE_PROBE_CACHE", "0")
        loaded = loader.load()
        try:
            origins.append(loaded.origin)
            assert "raw_tracepoint:net_dev_start_xmit" in loaded.attached
        finally:
            loaded.close()
        assert loaded.attached == []
    assert origins == ["compiled", "cached", "compiled", "compiled", "compiled"]
    assert len(list(tmp_path.glob("probes-*.json"))) == 1  # rewritten whole after "corrupt"


@pytest.mark.needs_probes
def test_cached_probes_see_what_compiled_ones_see(dataplane_cluster, monkeypatch, tmp_path):
    """The same exchange traced by probes compiled now and by the same probes loaded from
    the cache: the same hops, in order, and the same flow filter (only its packets)."""
    monkeypatch.setattr(loader, "CACHE_DIR", tmp_path)
    real, origins = loader.load, []

    def load(*args, **kwargs):
        loaded = real(*args, **kwargs)
        origins.append(loaded.origin)
        return loaded

    monkeypatch.setattr(loader, "load", load)
    seen = []
    for _ in range(2):
        result = verifier.trace(dataplane_cluster.plan, "node-0/pod-0", "node-1/pod-1", "udp")
        assert result.exchange.answered and result.lost_events == 0
        seen.append(hops_of(result))
    assert origins == ["compiled", "cached"]
    assert seen[1] == seen[0] and len(seen[0]) >= 17, seen


@pytest.mark.needs_probes
def test_a_refused_tracepoint_is_skipped_not_attached(monkeypatch):
    refuse(monkeypatch, "netif_rx")
    loaded = loader.load()
    try:
        assert "raw_tracepoint:netif_rx" not in loaded.attached
        assert "No such file or directory" in loaded.skipped["raw_tracepoint:netif_rx"]
        assert "raw_tracepoint:net_dev_start_xmit" in loaded.attached
    finally:
        loaded.close()
    assert loaded.attached == []  # closed: bcc holds no attachment any more


@pytest.mark.needs_probes
def test_a_refused_needed_tracepoint_makes_flows_inconclusive(dataplane_cluster,
                                                              monkeypatch):
    refuse(monkeypatch, "net_dev_start_xmit")
    with verifier.Verifier(dataplane_cluster.plan) as probing:
        flow = probing.check("node-0/pod-0", "node-1/pod-1")
    assert (flow.verdict, flow.rule) == ("INCONCLUSIVE", "probes"), flow.diagnosis
    assert "net_dev_start_xmit" in flow.diagnosis


def test_unreadable_kallsyms_is_said(monkeypatch):
    def unreadable(names=kernel.KPROBE_SYMBOLS):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(kernel, "kprobes_available", lambda: True)
    monkeypatch.setattr(kernel, "kallsyms", unreadable)
    functions, skipped = loader._kprobe_targets()
    assert functions == []
    assert skipped["kprobe:vxlan_rcv"] == ("cannot tell whether the function exists: "
                                           "/proc/kallsyms is unreadable (Permission denied)")


@pytest.mark.needs_kprobes  # the kprobe backend runs in the VM lane (make vm-test)
@pytest.mark.needs_probes
def test_kprobe_function_hops(dataplane_cluster):
    result = verifier.trace(dataplane_cluster.plan, "node-0/pod-0", "node-1/pod-1", "icmp")
    funcs = {h.func for h in result.hops}
    assert {"br_forward", "vxlan_xmit", "vxlan_rcv"} <= funcs, textwrap.indent(
        trace_text(result), "  ")


@pytest.mark.parametrize("buffer", ["ring", "perf"])
@pytest.mark.needs_probes
def test_flow_mode_records_only_watched_flows(dataplane_cluster, buffer):
    """What trace and verify use: everything else is turned away in the kernel.
    Also with the perf buffer that kernels before 5.8 get."""
    plan = dataplane_cluster.plan
    with Tracer(plan, record_all=False,
                buffer=buffer) as tracer:
        assert tracer.loaded.buffer == buffer
        other = prober.exchange(plan.pod("node-1/pod-0"), plan.pod("node-0/pod-1"), "udp")
        mine = prober.exchange(plan.pod("node-0/pod-0"), plan.pod("node-1/pod-1"), "udp",
                               watch=tracer.watch)
        hops = [h for h in tracer.take(50) if h.dir != "learn"]  # learning is always kept
    assert other.answered and mine.answered
    assert len(hops) >= 20 and all(mine.matches(h.flow) for h in hops)
    assert not any(other.matches(h.flow) for h in hops)
    assert tracer.lost == 0


@pytest.mark.needs_probes
def test_netif_rx_is_attached_only_while_recording_everything(dataplane_cluster):
    """A watched flow's trail needs no netif_rx hop: recording flows, that program is
    detached (no cost per veth crossing), and loaded from the cache, not even loaded until
    then; recording everything, its hops are there."""
    plan = dataplane_cluster.plan
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1")
    recipe = loader.prepare()
    if recipe.kept is not None and not loader.cached(recipe):
        loader.load().close()  # compiled and kept: the tracer below loads from the cache
    with Tracer(plan, record_all=False) as tracer:
        assert tracer_module.QUEUED not in tracer.loaded.attached
        if recipe.kept is not None:  # this bcc's runtime can load a kept compile
            assert tracer.loaded.origin == "cached"
            assert "tp_netif_rx" not in tracer.loaded.bpf._programs
        assert "raw_tracepoint:netif_receive_skb" in tracer.loaded.attached
        assert prober.exchange(a, b, "icmp", watch=tracer.watch).answered
        assert not [h for h in tracer.take(50) if h.func == "netif_rx"]
        tracer.record_everything(True)
        assert tracer_module.QUEUED in tracer.loaded.attached
        assert prober.exchange(a, b, "icmp").answered
        queued = {(h.at, h.device) for h in tracer.take(50) if h.func == "netif_rx"}
    assert ("node-0", a.host_veth) in queued  # the pod's veth peer queues to node-0's backlog


def flows_of(plan) -> list[Flow]:
    """Three flows from one pod, and one back from the first of them to it with the same
    tag: its keys are theirs reversed, and it shares their source's receiving end."""
    pods = plan.pods()
    flows = [Flow(pods[0].ip_str, pod.ip_str, "udp", 40000) for pod in pods[1:4]]
    return flows + [Flow(pods[1].ip_str, pods[0].ip_str, "udp", 40000)]


def assert_watched(tracer: Tracer, flows: list[Flow], present: bool) -> None:
    """Each flow's keys (both ways, and its receiving end) in the maps, or none of them."""
    table, ends = tracer.loaded.bpf[b"flows"], tracer.loaded.bpf[b"ends"]
    for flow in flows:
        tag, proto = socket.htons(flow.tag), tracer_module._proto_number(flow.proto)
        src, dst = tracer_module._address(flow.src), tracer_module._address(flow.dst)
        keys = [(table, table.Key(saddr=a, daddr=b, tag=tag, proto=proto))
                for a, b in ((src, dst), (dst, src))]
        keys.append((ends, ends.Key(addr=dst, tag=tag, proto=proto)))
        for where, key in keys:
            try:
                where[key]
                found = True
            except KeyError:
                found = False
            assert found == present, (flow, key)


@pytest.mark.needs_probes
def test_a_waves_flows_are_watched_at_once_and_unwatched(dataplane_cluster, monkeypatch):
    """One batched update per map for a wave's flows; keys that flows share are written
    and deleted once over."""
    real, batches = compiled._update_batch(), []
    if real is None:
        pytest.skip("bcc's runtime has no bpf_update_batch (bcc before 0.21)")

    def counted(*args):
        batches.append(args[0])
        return real(*args)

    monkeypatch.setattr(compiled, "_batches", [counted])
    with Tracer(dataplane_cluster.plan, record_all=False) as tracer:
        flows = flows_of(dataplane_cluster.plan)
        tracer.watch_all(flows)
        tracer.watch(flows[0])  # watched already: nothing written twice
        assert len(batches) == 2  # flows and ends
        assert_watched(tracer, flows, True)
        tracer.unwatch()
        assert_watched(tracer, flows, False)


@pytest.mark.needs_root
def test_the_flows_planned_are_those_the_exchanges_watch(dataplane_cluster):
    """A verify wave watches its ICMP and UDP flows before sending (Prober.planned): each
    is the flow its exchange tells watch of; a TCP exchange's is not known before."""
    plan = dataplane_cluster.plan
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-1/pod-1")
    told: list[Flow] = []
    with prober.Prober() as probing:
        for proto, size in (("icmp", None), ("udp", None), ("udp", 1400)):
            planned = probing.planned(a, b, proto, size)
            probing.finish([probing.start(a, b, proto, told.append, size)])
            assert planned is not None and planned == told[-1]
        assert probing.planned(a, b, "tcp") is None and probing.planned(a, b, "arp") is None


@pytest.mark.needs_probes
def test_without_batched_updates_each_key_is_written(dataplane_cluster, monkeypatch):
    """A kernel before 5.6 refuses BPF_MAP_UPDATE_BATCH (EINVAL)."""
    real = compiled.lib()

    class Unbatched:
        def __getattr__(self, name):
            return getattr(real, name)

        def bpf_update_batch(self, *args):
            ctypes.set_errno(errno.EINVAL)
            return -1

    with Tracer(dataplane_cluster.plan, record_all=False) as tracer:
        monkeypatch.setattr(compiled, "lib", lambda: Unbatched())
        monkeypatch.setattr(compiled, "_batches", [])  # looked up again, in Unbatched
        tracer.watch_all(flows_of(dataplane_cluster.plan))
        assert compiled._batches == [None]  # refused once: not asked again
        monkeypatch.undo()
        assert_watched(tracer, flows_of(dataplane_cluster.plan), True)


@pytest.mark.needs_probes
def test_ring_buffer_read_across_its_end(dataplane_cluster):
    """A two-page ring buffer holds about 40 events: 60 exchanges of 8 hops, each taken
    at once, wrap it a dozen times, and every record reads whole (the data pages are
    mapped twice in a row, so one that wraps is contiguous)."""
    plan = dataplane_cluster.plan
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1")
    with Tracer(plan, record_all=False, pages=2) as tracer:
        # the size the kernel gives the map (bcc 0.18, Debian 11's, does not say it)
        assert ringbuf.data_size(tracer.loaded.bpf[b"events"].map_fd) == 2 * mmap.PAGESIZE
        for _ in range(60):
            assert prober.exchange(a, b, "icmp", watch=tracer.watch).answered
            hops = [h for h in tracer.take(5) if h.dir in ("tx", "rx")]  # kprobes: "fn"
            assert [(h.frame.src, h.frame.dst) for h in hops] == \
                [(str(a.ip), str(b.ip))] * 4 + [(str(b.ip), str(a.ip))] * 4
            tracer.unwatch()
        assert tracer.lost == 0


@pytest.mark.needs_probes
def test_perf_buffer_losses_are_counted(dataplane_cluster, monkeypatch):
    """A one-page perf buffer read twice a second overflows: the kernel's lost records
    reach user space and `lost` accounts for them."""
    monkeypatch.setattr(tracer_module, "PERF_PAGES_PER_CPU", 1)
    monkeypatch.setattr(Tracer, "POLL_MS", 500)
    plan = dataplane_cluster.plan
    src, dst = plan.pod("node-0/pod-0"), plan.pod("node-1/pod-1")
    with Tracer(plan, buffer="perf") as tracer, \
            netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(20_000):
            sender.sendto(b"x", (str(dst.ip), 9))
        tracer.take(600)
        assert tracer._perf_lost > 0 and tracer.lost >= tracer._perf_lost


def test_no_btf_and_portable_headers_is_a_refusal(monkeypatch, tmp_path):
    """Offsets never come from headers that do not match the running kernel."""
    monkeypatch.setattr(btf, "VMLINUX", tmp_path / "no-btf")
    monkeypatch.setattr(kernel, "header_source", lambda: ("portable", tmp_path))
    with pytest.raises(UsageError, match="no BTF .* and no headers matching"):
        loader.load()


def test_without_btf_matching_headers_give_offsetof():
    found = loader.layout_from_headers("x86_64")
    assert found.offsets["OFF_SKB_HEAD"] == "offsetof(struct sk_buff, head)"
    assert found.offsets["OFF_NET_INUM"] == "offsetof(struct net, ns.inum)"
    assert found.arguments["OFF_REGS_ARG2"] == "offsetof(struct pt_regs, si)"
    assert "#include <linux/skbuff.h>" in found.prelude and found.drop_reasons == {}


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_bridge_learning(dataplane_clusters):
    made = dataplane_clusters()
    plan = made.plan
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1")
    with Tracer(plan) as tracer:
        assert "raw_tracepoint:br_fdb_update" in tracer.loaded.attached
        assert prober.exchange(a, b, "icmp").answered
        learned = {(h.at, h.device, h.learned) for h in tracer.take(50) if h.dir == "learn"}
    assert ("node-0", a.host_veth, f"{a.mac} vlan 0") in learned
    assert ("node-0", b.host_veth, f"{b.mac} vlan 0") in learned


@pytest.mark.needs_probes
def test_detached_soon_the_probes_record_nothing_more_and_the_maps_stay_readable(
        dataplane_cluster):
    """A verify worker's last wave: its probes are detached while it judges the wave (a
    detach waits on the kernel); what it took is whole, the counters and flows still read."""
    plan = dataplane_cluster.plan
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-1/pod-0")
    with Tracer(plan, record_all=False) as tracer:
        assert prober.exchange(a, b, "icmp", watch=tracer.watch).answered
        hops = tracer.take(20)
        tracer.detach_soon()
        tracer._detacher.join()
        tracer._poller.join()  # stopped too: nothing is read any more
        assert tracer.loaded.attached == []
        assert tracer.lost == 0  # the maps are open yet
        tracer.unwatch()
        assert prober.exchange(a, b, "icmp", watch=tracer.watch).answered
        if tracer._reader is not None:  # the ring buffer read directly (x86-64)
            assert tracer._reader.take() == []  # no probe ran for that exchange
    assert {(h.at, h.dir) for h in hops} >= {("node-0/pod-0", "tx"), ("node-1/pod-0", "rx"),
                                             ("underlay", "tx")}
