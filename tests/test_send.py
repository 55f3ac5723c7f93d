"""`dataplane send`: packets crafted with scapy, sent from a pod, followed by the probes
to an outcome, on a real cluster of 2 nodes x 3 pods."""

import json

import pytest

from dataplane.send import sending
from dataplane.send.outcome import Drop, Place
from dataplane.traffic import craft

from .conftest import DEFAULT, dp, is_root, one_line_error, seen_in_order

# One cluster of 2 nodes x 3 pods for the module (dataplane_cluster, the plugin's).
pytestmark = pytest.mark.dataplane_topology("three-pods.toml")


def sent(plan, src: str, expression: str, **options) -> sending.SendResult:
    pod = plan.pod(src)
    return sending.run(plan, src, craft.evaluate(expression, plan, pod, craft.new_tag()),
                       **options)


def legs(result, leg: str) -> list:
    return [h for h in result.hops if result.legs[h] == leg]


def places(hops) -> list[tuple[str, str, str]]:
    return [(h.at, h.device, h.dir) for h in hops]


def crossing(plan, src: str, dst: str) -> list[tuple[str, str, str]]:
    """The hops of a packet from pod src to pod dst on another node."""
    a, b = plan.pod(src), plan.pod(dst)
    return [(src, "eth0", "tx"), (a.node, a.host_veth, "rx"), (a.node, "cni0", "rx"),
            (a.node, "flannel.1", "tx"), (a.node, "eth0", "tx"), ("underlay", a.node, "rx"),
            ("underlay", b.node, "tx"), (b.node, "eth0", "rx"), (b.node, "flannel.1", "rx"),
            (b.node, "cni0", "tx"), (b.node, b.host_veth, "tx"), (dst, "eth0", "rx")]


@pytest.mark.needs_probes
def test_a_syn_to_a_closed_port_is_answered_by_a_reset_across_nodes(dataplane_cluster):
    plan = dataplane_cluster.plan
    result = sent(plan, "node-0/pod-0", 'IP(dst=pod("node-1/pod-1"))/TCP(dport=80, flags="S")')
    text = sending.as_text(result)
    assert result.outcome == "answered" and result.lost_events == 0, text
    assert result.delivered_to == [Place("node-1/pod-1", "eth0")], text
    syn = legs(result, "sent")
    assert seen_in_order(crossing(plan, "node-0/pod-0", "node-1/pod-1"), places(syn)), text
    (tunnel,) = [h for h in syn if (h.at, h.device, h.dir) == ("node-0", "eth0", "tx")]
    assert (tunnel.frame.dport, tunnel.frame.vni) == (8472, 1)
    first = syn[0].frame  # the fields the user left unset carry the send's tag
    assert first.tcp_flags == 0x02 and first.sport == first.ip_id
    back = legs(result, "answer")
    assert seen_in_order(crossing(plan, "node-1/pod-1", "node-0/pod-0"), places(back)), text
    assert {h.frame.tcp_flags for h in back if h.frame.inner is None} == {0x14}  # RST, ACK
    (reset,) = result.answers
    assert reset["IP"].src == str(plan.pod("node-1/pod-1").ip) and reset["TCP"].flags == "RA"
    assert reset["TCP"].sport == 80 and reset["TCP"].dport == first.sport


@pytest.mark.needs_probes
def test_fields_the_user_set_are_sent_as_written(dataplane_cluster):
    plan = dataplane_cluster.plan
    result = sent(plan, "node-1/pod-0", 'IP(dst=pod("node-1/pod-2"), id=7, ttl=9)'
                                        '/UDP(sport=5353, dport=9)', count=2)
    text = sending.as_text(result)
    assert result.in_kernel and result.outcome == "answered", text
    mine = [h.frame for h in legs(result, "sent") if h.dir != "drop"]
    assert {(f.ip_id, f.ttl, f.sport, f.dport) for f in mine} == {(7, 9, 5353, 9)}, text
    arrived = [h for h in legs(result, "sent") if (h.at, h.dir) == ("node-1/pod-2", "rx")]
    assert len(arrived) == 2 and len(result.answers) == 2, text  # sent twice, as asked


@pytest.mark.needs_probes
def test_udp_to_an_unassigned_address_is_dropped_on_the_peer_node(dataplane_cluster):
    plan = dataplane_cluster.plan
    nowhere = str(plan.node("node-1").pod_cidr.network_address + 200)
    result = sent(plan, "node-0/pod-1", f'IP(dst="{nowhere}")/UDP(dport=53)')
    text = sending.as_text(result)
    assert result.outcome == "dropped" and result.dropped and not result.delivered_to, text
    assert result.judged.drops == [Drop("node-1", "cni0", "SKB_DROP_REASON_NEIGH_FAILED")], text
    assert result.drop_reason == "SKB_DROP_REASON_NEIGH_FAILED"
    path = places(legs(result, "sent"))
    assert seen_in_order(crossing(plan, "node-0/pod-1", "node-1/pod-0")[:9], path), text
    assert path[-1] == ("node-1", "cni0", "drop")
    assert not [at for at, _, _ in path if at.startswith("node-1/")]
    (error,) = result.answers  # the node's ICMP error is listed, but is not an answer
    assert (error["ICMP"].type, error["ICMP"].code) == (3, 1), text
    assert "dropped at node-1 cni0: SKB_DROP_REASON_NEIGH_FAILED" in text


@pytest.mark.needs_probes
def test_every_fragment_crosses_the_tunnel_and_is_delivered(dataplane_cluster):
    plan = dataplane_cluster.plan
    result = sent(plan, "node-0/pod-2", 'fragment(IP(dst=pod("node-1/pod-0"))/UDP(dport=9)'
                                        '/Raw(b"x" * 3000), fragsize=1400)')
    text = sending.as_text(result)
    assert len(result.sent) == 3 and result.lost_events == 0, text
    assert result.delivered_to == [Place("node-1/pod-0", "eth0")], text
    for offset in (0, 1400, 2800):
        hops = [h for h in legs(result, "sent") if h.flow.fragment
                and h.flow.frag_offset == offset]
        assert seen_in_order(crossing(plan, "node-0/pod-2", "node-1/pod-0"), places(hops)), \
            f"fragment at {offset}:\n{text}"
    (datagram,) = result.judged.fragments
    assert (datagram.sent, datagram.length) == (3, 3028)
    assert datagram.received == {"node-1/pod-0 eth0": 3}
    assert "node-1/pod-0" in datagram.reassembled, text
    (unreachable,) = result.answers  # about the whole datagram: it was put together
    assert unreachable["ICMP"].type == 3 and unreachable["IPerror"].len == 3028
    assert result.outcome == "answered"


@pytest.mark.needs_probes
def test_a_broadcast_frame_is_flooded_to_the_node_pods_and_stays_on_the_node(dataplane_cluster):
    plan = dataplane_cluster.plan
    result = sent(plan, "node-0/pod-0",
                  'Ether(dst="ff:ff:ff:ff:ff:ff")/ARP(pdst=pod("node-0/pod-2"))')
    text = sending.as_text(result)
    others = [pod for pod in plan.node("node-0").pods if pod.name != "pod-0"]
    assert set(result.delivered_to) == {Place("node-0", "cni0"),
                                        *(Place(pod.ref, "eth0") for pod in others)}, text
    flooded = places(legs(result, "sent"))
    for pod in others:
        assert ("node-0", pod.host_veth, "tx") in flooded and (pod.ref, "eth0", "rx") in flooded
    assert {h.at for h in result.hops} <= {"node-0", *(p.ref for p in plan.node("node-0").pods)}
    (is_at,) = result.answers
    assert is_at["ARP"].op == 2 and is_at["ARP"].psrc == str(plan.pod("node-0/pod-2").ip)
    assert result.outcome == "answered"


@pytest.mark.needs_probes
def test_a_vlan_tagged_frame_is_bridged_and_dropped_by_the_pod(dataplane_cluster):
    plan = dataplane_cluster.plan
    result = sent(plan, "node-0/pod-0", 'Ether(dst=mac("node-0/pod-1"))/Dot1Q(vlan=100)'
                                        '/IP(dst=pod("node-0/pod-1"))/UDP(dport=9)')
    text = sending.as_text(result)
    assert not result.in_kernel, text  # found by recording every packet for the send
    a, b = plan.pod("node-0/pod-0"), plan.pod("node-0/pod-1")
    hops = legs(result, "sent")
    assert places(hops) == [("node-0/pod-0", "eth0", "tx"), ("node-0", a.host_veth, "rx"),
                            ("node-0", b.host_veth, "tx"), ("node-0/pod-1", "eth0", "rx"),
                            ("node-0/pod-1", "eth0", "drop")], text
    assert [h.frame.vlans for h in hops[:2]] == [(100,), (100,)]  # the tag in band, then out
    assert result.outcome == "dropped"
    assert result.judged.drops == [Drop("node-0/pod-1", "eth0", "SKB_DROP_REASON_OTHERHOST")]


@pytest.mark.needs_probes
def test_a_captured_packet_is_replayed_as_it_was(dataplane_cluster, tmp_path):
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    plan = dataplane_cluster.plan
    src, dst = plan.pod("node-1/pod-2"), plan.pod("node-0/pod-1")
    capture = tmp_path / "echo.pcap"
    wrpcap(str(capture), [Ether(src=src.mac, dst=plan.node("node-1").cni0_mac)
                          / IP(src=str(src.ip), dst=str(dst.ip), id=999)
                          / ICMP(id=4321, seq=7)])
    argv = ["send", "--running", dataplane_cluster.name, "--from", src.ref, "--from-pcap",
            str(capture)]
    done = dp(*argv, "--expect", "answered", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "answered" and out["matched"] == "kernel"
    assert out["delivered_to"] == [{"at": dst.ref, "device": "eth0"}]
    assert [(a["src"], a["proto"]) for a in out["answers"]] == [(str(dst.ip), "icmp")]
    assert "echo-reply" in out["answers"][0]["summary"]
    path = [(h["at"], h["device"], h["dir"]) for h in out["hops"] if h["packet"] == "sent"]
    assert seen_in_order(crossing(plan, src.ref, dst.ref), path), done.stdout
    done = dp(*argv, "--expect", "dropped")
    assert done.returncode == 1 and "outcome: answered" in done.stdout
    assert f"sent: Ether / IP / ICMP {src.ip} > {dst.ip} echo-request 0" in done.stdout


@pytest.mark.parametrize("argv, wanted", [
    (["--from", "node-0/pod-0", "IP(dst="], "PACKET: '(' was never closed at column 3"),
    (["--from", "node-0/pod-0", "IP(dst=nowhere)"], "PACKET: name 'nowhere' is not defined"),
    (["--from", "node-0/pod-0", '__import__("os")'], "PACKET: name '__import__' is not allowed"),
    (["--from", "node-0/pod-0", "IP().__class__"], "attribute access (.__class__) is not allowed"),
    (["--from", "node-0/pod-7", "IP()"], "no pod 'node-0/pod-7' in cluster flannel-vxlan"),
    (["--from", "node-0/pod-0", 'IP(dst=pod("node-5/pod-0"))'],
     "no node 'node-5' in cluster flannel-vxlan"),
])
def test_bad_input_is_one_line_before_anything_is_built(argv, wanted):
    """As a user who may not build: the error comes first, naming the fix."""
    user = 65534 if is_root() else None
    line = one_line_error(dp("send", str(DEFAULT), *argv, user=user))
    assert wanted in line and "needs root" not in line


PLUGIN_TESTS = '''
from scapy.layers.inet import IP, TCP

def test_reset(dataplane_cluster, dataplane_send):
    plan = dataplane_cluster.plan
    syn = IP(dst=str(plan.pod("node-1/pod-1").ip)) / TCP(dport=80, flags="S")
    r = dataplane_send("node-0/pod-0", syn, expect="answered")
    assert r.answers[0][TCP].flags == "RA" and r.delivered_to[0].at == "node-1/pod-1"
    assert ("node-1/pod-1", "eth0", "rx") in [(h.at, h.device, h.dir) for h in r.hops]
    assert "sport" not in syn[TCP].fields  # the caller's packet is not changed

def test_wrong_expectation(dataplane_send):
    dataplane_send("node-0/pod-0", 'IP(dst=pod("node-0/pod-1"))/ICMP()', expect="dropped")
'''


@pytest.mark.needs_probes
def test_the_plugin_sends_and_reports_hops_of_a_failure(pytester):
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    assert "send from node-0/pod-0: expected dropped, got answered" in text
    assert "dataplane flows" in text and "outcome: answered" in text
    result.stdout.fnmatch_lines(["*sent    node-0/pod-0   eth0*tx*net_dev_start_xmit*icmp type 8*",
                                 "*answer  node-0/pod-1   eth0*tx*icmp type 0*"])
