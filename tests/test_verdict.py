"""Expected legs and verdicts on recorded hops: pure, no root needed."""

import pytest

from dataplane import spec
from dataplane.packet import Frame
from dataplane.paths import legs
from dataplane.plan import make_plan
from dataplane.tracer import Hop
from dataplane.traffic import Exchange
from dataplane.verdict import FAIL, INCONCLUSIVE, PASS, judge

from .conftest import DEFAULT

PLAN = make_plan(spec.load(DEFAULT, name="v"))
A, B = PLAN.pod("node-0/pod-0"), PLAN.pod("node-1/pod-1")
N0, N1 = PLAN.nodes


def test_same_node_leg_is_bridged():
    request, answer = legs(PLAN, A, PLAN.pod("node-0/pod-1"))
    assert not request.encapsulated
    assert [h[:2] for h in request.hops] == [
        ("node-0/pod-0", "eth0"), ("node-0", A.host_veth),
        ("node-0", PLAN.pod("node-0/pod-1").host_veth), ("node-0/pod-1", "eth0")]
    assert answer.hops[0] == ("node-0/pod-1", "eth0", "tx")


def test_cross_node_leg_goes_through_vxlan():
    request, _ = legs(PLAN, A, B)
    assert request.encapsulated
    assert ("node-0", "flannel.1", "tx") in request.hops
    assert request.hops.index(("underlay", "node-0", "rx")) < \
        request.hops.index(("underlay", "node-1", "tx"))


def ip(src, dst, ttl=64, **more):
    return Frame(eth_src="", eth_dst=more.pop("eth_dst", ""), ethertype=0x800, src=str(src),
                 dst=str(dst), proto="icmp", ttl=ttl, icmp_id=7, **more)


def trail(sender, receiver, vni=1, port=8472, outer_len=148, ttl_in=63):
    """A healthy leg's hops, with the encapsulated one as given."""
    request, _ = legs(PLAN, sender, receiver)
    s_node, r_node = PLAN.node(sender.node), PLAN.node(receiver.node)
    hops = []
    for i, (at, device, direction) in enumerate(request.hops):
        ttl = 64 if at == sender.ref else (62 if at == receiver.ref else 63)
        frame, length = ip(sender.ip, receiver.ip, ttl), 98
        if (at, device, direction) == (sender.node, "eth0", "tx"):
            inner = ip(sender.ip, receiver.ip, ttl_in, eth_dst=r_node.vtep_mac)
            frame = Frame(eth_src="", eth_dst="", ethertype=0x800, src=str(s_node.underlay_ip),
                          dst=str(r_node.underlay_ip), proto="udp", sport=40000, dport=port,
                          vni=vni, inner=inner)
            length = outer_len
        hops.append(Hop(ts=i, skb=1, netns=1, at=at, ifindex=2, device=device, func="f",
                        dir=direction, length=length, frame=frame))
    return hops


def exchange(answered=True):
    return Exchange(A, B, "icmp", 7, answered)


def healthy():
    return trail(A, B) + [h for h in trail(B, A)]


def test_a_healthy_exchange_passes():
    assert judge(PLAN, exchange(), healthy()).verdict == PASS


def test_lost_events_are_never_a_pass():
    result = judge(PLAN, exchange(), healthy(), lost=3)
    assert result.verdict == INCONCLUSIVE and result.rule == "lost-events"


def test_missing_probe_is_inconclusive():
    assert judge(PLAN, exchange(), healthy(), missing_probes="kfree_skb").verdict == INCONCLUSIVE


def test_missing_hop_names_the_last_one_seen():
    hops = [h for h in healthy() if (h.at, h.device, h.dir) != ("node-1", "flannel.1", "rx")]
    result = judge(PLAN, exchange(False), hops)
    assert (result.verdict, result.rule) == (FAIL, "path")
    assert "no hop at node-1 flannel.1 rx after node-1 eth0 rx" in result.diagnosis
    assert result.last_hop == {"at": "node-1", "device": "eth0"}


@pytest.mark.parametrize("change, rule", [
    ({"vni": 2}, "vxlan-vni"),
    ({"port": 4789}, "vxlan-port"),
    ({"outer_len": 140}, "outer-length"),
    ({"ttl_in": 64}, "inner-ttl"),
])
def test_broken_encapsulation_names_its_rule(change, rule):
    hops = trail(A, B, **change) + trail(B, A)
    result = judge(PLAN, exchange(), hops)
    assert (result.verdict, result.rule) == (FAIL, rule)
    assert result.last_hop == {"at": "node-0", "device": "eth0"}


def test_no_answer_at_the_socket_fails():
    result = judge(PLAN, exchange(answered=False), healthy())
    assert (result.verdict, result.rule) == (FAIL, "delivery")


def test_delivery_to_the_wrong_pod_fails():
    wrong = PLAN.pod("node-1/pod-0")
    hops = healthy()
    hops.insert(11, Hop(ts=11, skb=1, netns=1, at=wrong.ref, ifindex=2, device="eth0",
                        func="f", dir="rx", length=98, frame=ip(A.ip, B.ip, 62)))
    result = judge(PLAN, exchange(), hops)
    assert (result.verdict, result.rule) == (FAIL, "wrong-pod")
    assert "node-1/pod-0" in result.diagnosis


def test_arp_must_stay_on_the_node():
    src, dst = PLAN.pod("node-0/pod-0"), PLAN.pod("node-0/pod-1")
    arp = Frame(eth_src="", eth_dst="", ethertype=0x806, src=str(src.ip), dst=str(dst.ip),
                proto="arp", arp_op=1)
    hops = [Hop(ts=1, skb=1, netns=1, at="node-0", ifindex=4, device="flannel.1", func="f",
                dir="tx", length=42, frame=arp)]
    result = judge(PLAN, Exchange(src, dst, "arp", 0, False), hops)
    assert (result.verdict, result.rule) == (FAIL, "arp-scope")
