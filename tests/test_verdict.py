"""Expected legs and verdicts on hops made of real frames: every rule gets a PASS and a
FAIL. Frames are built with scapy as the wire carries them at each hop, and read back
through packet.decode, as the tracer does. Pure: no root needed."""

from collections.abc import Callable
from dataclasses import replace

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from dataplane.bpf import packet
from dataplane.cluster import spec
from dataplane.cluster.plan import make_plan
from dataplane.records import FAIL, INCONCLUSIVE, PASS, Exchange, Hop
from dataplane.verify import cause
from dataplane.verify.paths import legs
from dataplane.verify.verdict import judge

from .conftest import DEFAULT

PLAN = make_plan(spec.load(DEFAULT, name="v"))
A, B = PLAN.pod("node-0/pod-0"), PLAN.pod("node-1/pod-1")
A2 = PLAN.pod("node-0/pod-1")  # A's neighbour on node-0
N0, N1 = PLAN.nodes
PORT = PLAN.spec.port
BROADCAST = "ff:ff:ff:ff:ff:ff"


def hop(at, device, direction, raw, ts=0, skb=1, drop=None):
    return Hop(ts=ts, skb=skb, netns=1, at=at, ifindex=2, device=device, func="f",
               dir=direction, length=len(raw), frame=packet.decode(raw, PORT), raw=raw,
               drop_reason=drop)


def wire(sender, receiver, place, echo_type=8, sport=40000):
    """The frame of an ICMP echo from sender to receiver as it is at place."""
    s_node, r_node = PLAN.node(sender.node), PLAN.node(receiver.node)
    at, device, _ = place
    same = sender.node == receiver.node
    icmp = ICMP(type=echo_type, id=7, seq=1) / b"dataplane"
    if same:
        return Ether(src=sender.mac, dst=receiver.mac) / IP(src=str(sender.ip),
                                                             dst=str(receiver.ip)) / icmp
    before = at in (sender.ref, sender.node) and device != "flannel.1" \
        and place[:2] != (sender.node, "eth0")
    if before:
        eth, ttl = Ether(src=sender.mac, dst=s_node.cni0_mac), 64
    elif at in (receiver.ref,) or (at == receiver.node and device not in ("eth0", "flannel.1")):
        eth, ttl = Ether(src=r_node.cni0_mac, dst=receiver.mac), 62
    else:
        eth, ttl = Ether(src=s_node.vtep_mac, dst=r_node.vtep_mac), 63
    inner = eth / IP(src=str(sender.ip), dst=str(receiver.ip), ttl=ttl) / icmp
    if device == "flannel.1" or at != "underlay" and device != "eth0" or "/" in at:
        return inner
    return (Ether(src=s_node.eth0_mac, dst=r_node.eth0_mac)
            / IP(src=str(s_node.underlay_ip), dst=str(r_node.underlay_ip), ttl=64, flags=0)
            / UDP(sport=sport, dport=PORT, chksum=0x1234) / VXLAN(flags=0x08, vni=PLAN.spec.vni)
            / inner)


def trail(sender, receiver, echo_type=8, skb=1, sport=40000):
    leg = legs(PLAN, sender, receiver)[0]
    return [hop(*place, bytes(wire(sender, receiver, place, echo_type, sport)), ts=i, skb=skb)
            for i, place in enumerate(leg.hops)]


def exchange_hops(src=A, dst=B):
    return trail(src, dst) + trail(dst, src, echo_type=0, skb=2)


def ex(src=A, dst=B, answered=True, **more):
    return Exchange(src, dst, "icmp", 7, answered, **more)


def changed(hops, place, change: Callable, more=b""):
    """hops with the frame at place (at, device, dir) rebuilt after change(scapy packet)."""
    out = []
    for h in hops:
        if (h.at, h.device, h.dir) == place:
            pkt = Ether(h.raw)
            change(pkt)
            raw = bytes(pkt) + more
            h = hop(h.at, h.device, h.dir, raw, ts=h.ts, skb=h.skb)
        out.append(h)
    return out


def verdict(exchange, hops, **more):
    result = judge(PLAN, exchange, hops, **more)
    return result.verdict, result.rule


def test_same_node_leg_is_bridged():
    request, answer = legs(PLAN, A, A2)
    assert not request.encapsulated
    assert [h[:2] for h in request.hops] == [
        ("node-0/pod-0", "eth0"), ("node-0", A.host_veth),
        ("node-0", A2.host_veth), ("node-0/pod-1", "eth0")]
    assert answer.hops[0] == ("node-0/pod-1", "eth0", "tx")


def test_cross_node_leg_goes_through_vxlan():
    request, _ = legs(PLAN, A, B)
    assert request.encapsulated
    assert ("node-0", "flannel.1", "tx") in request.hops
    assert request.hops.index(("underlay", "node-0", "rx")) < \
        request.hops.index(("underlay", "node-1", "tx"))


@pytest.mark.parametrize("dst", [B, A2], ids=["cross-node", "same-node"])
def test_a_healthy_exchange_of_real_frames_passes(dst):
    assert verdict(ex(A, dst), exchange_hops(A, dst)) == (PASS, None)


def test_lost_events_and_missing_probes_are_never_a_pass():
    assert verdict(ex(), exchange_hops(), lost=3) == (INCONCLUSIVE, "lost-events")
    assert verdict(ex(), exchange_hops(), missing_probes="kfree_skb") == (INCONCLUSIVE, "probes")


def test_a_check_that_breaks_never_passes():
    broken = exchange_hops()
    broken[0] = replace(broken[0], frame=None)  # no frame where one must be
    broken[-1] = replace(broken[-1])
    broken[-1].flow = "not a frame"  # as a decoder's bug would leave it
    assert judge(PLAN, ex(), broken).verdict != PASS


def test_missing_hop_names_the_last_one_seen():
    hops = [h for h in exchange_hops() if (h.at, h.device, h.dir) != ("node-1", "flannel.1", "rx")]
    result = judge(PLAN, ex(answered=False), hops)
    assert (result.verdict, result.rule) == (FAIL, "path")
    assert "no hop at node-1 flannel.1 rx after node-1 eth0 rx" in result.diagnosis
    assert result.last_hop == {"at": "node-1", "device": "eth0"}


def test_no_answer_at_the_socket_fails():
    assert verdict(ex(answered=False), trail(A, B)) == (FAIL, "delivery")


def test_a_probe_the_kernel_refused_fails_as_send():
    result = judge(PLAN, ex(answered=False, sent=False, error="send from node-0/pod-0: "
                            "[Errno 101] Network is unreachable"), [])
    assert (result.verdict, result.rule) == (FAIL, "send")
    assert "node-0/pod-0" in result.diagnosis and "Errno 101" in result.diagnosis


def test_an_error_the_network_sent_back_is_where_the_path_broke():
    """A handshake that failed after it was sent (the pod's neighbour never answered:
    EHOSTUNREACH, 3 s later) is judged by its hops, as when it was judged before then."""
    error = "connect from node-0/pod-0: [Errno 113] No route to host"
    syn = bytes(wire(A, A2, (A.ref, "eth0", "tx")))
    for hops in ([], [hop(A.ref, "lo", "drop", syn, drop="SKB_DROP_REASON_QUEUE_PURGE")]):
        result = judge(PLAN, ex(A, A2, answered=False, error=error), hops)
        assert (result.verdict, result.rule) == (FAIL, "path")
        assert "no hop at node-0/pod-0 eth0 tx" in result.diagnosis
        assert "the kernel said: " + error in result.diagnosis


def unreachable(sender, quoted_from, place, ts):
    """An ICMP host unreachable from sender quoting the echo quoted_from sent to B."""
    quoted = IP(src=str(quoted_from.ip), dst=str(B.ip)) / ICMP(type=8, id=7, seq=1)
    frame = Ether() / IP(src=str(sender), dst=str(quoted_from.ip)) / ICMP(type=3, code=1) \
        / bytes(quoted)[:28]
    return hop(*place, bytes(frame), ts=ts, skb=9)


def test_an_icmp_error_quoting_the_packet_is_not_a_copy_of_it():
    """The pod's own stack reports its failed neighbour over lo: whether that comes
    within the answer timeout is timing; the verdict is the same either way."""
    error = unreachable(A.ip, A, (A.ref, "lo", "tx"), ts=5)
    for hops in ([], [error]):  # A's ARP for its gateway failed: nothing left it
        result = judge(PLAN, ex(answered=False), hops)
        assert (result.verdict, result.rule) == (FAIL, "path")
        assert "no hop at node-0/pod-0 eth0 tx" in result.diagnosis
    assert f"ICMP host unreachable from {A.ip}, seen at node-0/pod-0 lo" in result.diagnosis


def test_a_flooded_copy_beside_a_broken_path_is_told_but_the_rule_is_path():
    """Node-1 still knew B's MAC and sent the packet on, cni0 no longer knew B's port and
    flooded it to node-1/pod-0: the same break as when node-1's neighbour failed first."""
    request = trail(A, B)
    stray = PLAN.pod("node-1/pod-0")
    at_cni0 = next(i for i, h in enumerate(request) if (h.at, h.device) == ("node-1", "cni0"))
    flooded = request[:at_cni0 + 1] + [hop(stray.ref, "eth0", "rx", request[-1].raw,
                                          ts=at_cni0 + 1)]
    neighbour_failed = request[:at_cni0] + [hop("node-1", "cni0", "drop", request[at_cni0].raw,
                                                 ts=at_cni0, drop="SKB_DROP_REASON_NEIGH_FAILED")]
    for hops in (flooded, neighbour_failed):
        result = judge(PLAN, ex(answered=False), hops)
        assert (result.verdict, result.rule) == (FAIL, "path"), result.diagnosis
    assert "delivered to node-1/pod-0" in judge(PLAN, ex(answered=False), flooded).diagnosis


OUTER = ("node-0", "eth0", "tx")


@pytest.mark.parametrize("change, rule", [
    (lambda p: setattr(p[VXLAN], "vni", 2), "vxlan-vni"),
    (lambda p: setattr(p[UDP], "dport", 4789), "vxlan-port"),
    (lambda p: setattr(p[IP], "src", "172.30.0.9"), "outer-addresses"),
    (lambda p: setattr(p, "dst", "02:00:00:00:00:09"), "outer-mac"),
    (lambda p: setattr(p[IP], "ttl", 1), "outer-ttl"),
    (lambda p: setattr(p[IP], "flags", "DF"), "outer-df"),
    (lambda p: setattr(p[UDP], "chksum", 0), "outer-checksum"),
    (lambda p: setattr(p[VXLAN][IP], "src", "10.244.0.99"), "inner-addresses"),
    (lambda p: setattr(p[VXLAN][Ether], "dst", "0e:fa:00:00:00:09"), "inner-mac"),
    (lambda p: setattr(p[VXLAN][Ether], "src", "0e:fa:00:00:00:09"), "inner-mac"),
    (lambda p: setattr(p[VXLAN][IP], "ttl", 64), "inner-ttl"),
])
def test_broken_encapsulation_names_its_rule(change, rule):
    hops = changed(exchange_hops(), OUTER, change)
    result = judge(PLAN, ex(), hops)
    assert (result.verdict, result.rule) == (FAIL, rule), result.diagnosis
    assert result.last_hop == {"at": "node-0", "device": "eth0"}


def test_outer_length_must_be_inner_plus_50():
    hops = changed(exchange_hops(), OUTER, lambda p: None, more=b"\0" * 4)
    assert verdict(ex(), hops) == (FAIL, "outer-length")


def test_one_flow_keeps_one_outer_source_port():
    second = trail(A, B, skb=3, sport=40001)
    hops = trail(A, B) + second + trail(B, A, echo_type=0, skb=2)
    assert verdict(ex(), hops) == (FAIL, "outer-source-port")
    hops = trail(A, B) + trail(A, B, skb=3) + trail(B, A, echo_type=0, skb=2)
    assert verdict(ex(), hops) == (PASS, None)


def test_delivery_to_the_wrong_pod_fails():
    wrong = PLAN.pod("node-1/pod-0")
    hops = exchange_hops()
    hops.insert(11, hop(wrong.ref, "eth0", "rx", hops[11].raw, ts=11))
    result = judge(PLAN, ex(), hops)
    assert (result.verdict, result.rule) == (FAIL, "wrong-pod")
    assert "node-1/pod-0" in result.diagnosis
    [evidence] = cause.evidence(PLAN, result, cause.owners(PLAN))
    assert (evidence.at, evidence.device) == ("node-1", "cni0")  # the bridge that leaked it


def test_a_packet_sent_to_another_pods_mac_is_wrong_pod_not_path():
    """node-1 resolved B's address to node-1/pod-0's MAC (a stale or conflicting entry):
    that pod got the packet, B never did. Named as such, and blamed on node-1's cni0
    neighbour, not on B."""
    stray = PLAN.pod("node-1/pod-0")
    request = trail(A, B)
    to_stray = bytes(Ether(src=N1.cni0_mac, dst=stray.mac) / Ether(request[-1].raw).payload)
    hops = request[:-2] + [hop("node-1", stray.host_veth, "tx", to_stray, ts=10),
                           hop(stray.ref, "eth0", "rx", to_stray, ts=11)]
    result = judge(PLAN, ex(answered=False), hops)
    assert (result.verdict, result.rule) == (FAIL, "wrong-pod"), result.diagnosis
    [evidence] = cause.evidence(PLAN, result, cause.owners(PLAN))
    assert (evidence.at, evidence.device, evidence.found) == (
        "node-1", "cni0", f"{stray.mac} ({stray.ref})")


def test_a_copy_off_the_path_fails():
    hops = exchange_hops()
    hops.insert(7, hop("underlay", "node-0", "tx", hops[6].raw, ts=6))  # flooded back
    assert verdict(ex(), hops) == (FAIL, "extra-hop")


def test_a_duplicated_delivery_fails():
    hops = exchange_hops()
    hops.insert(12, hop(B.ref, "eth0", "rx", hops[11].raw, ts=11))
    assert verdict(ex(), hops) == (FAIL, "duplicate")


def test_same_node_traffic_must_not_leave_the_bridge():
    hops = exchange_hops(A, A2)
    hops.insert(2, hop("node-0", "flannel.1", "tx", hops[1].raw, ts=1))
    assert verdict(ex(A, A2), hops) == (FAIL, "bridged")


def test_same_node_traffic_routed_through_cni0_fails():
    hops = exchange_hops(A, A2)
    hops.insert(2, hop("node-0", "cni0", "rx", hops[1].raw, ts=1))
    assert verdict(ex(A, A2), hops) == (FAIL, "bridged")


def test_same_node_traffic_keeps_its_ttl():
    hops = changed(exchange_hops(A, A2), (A2.ref, "eth0", "rx"),
                   lambda p: setattr(p[IP], "ttl", 63))
    assert verdict(ex(A, A2), hops) == (FAIL, "ttl")


def test_cross_node_delivery_passes_two_routers():
    hops = changed(exchange_hops(), (B.ref, "eth0", "rx"), lambda p: setattr(p[IP], "ttl", 63))
    assert verdict(ex(), hops) == (FAIL, "ttl")


@pytest.mark.parametrize("place, field", [
    (("node-0/pod-0", "eth0", "tx"), "dst"),
    (("node-0/pod-0", "eth0", "tx"), "src"),
    (("node-1/pod-1", "eth0", "rx"), "src"),
    (("node-1/pod-1", "eth0", "rx"), "dst"),
])
def test_pod_frames_carry_the_right_macs(place, field):
    hops = changed(exchange_hops(), place, lambda p: setattr(p, field, "02:00:00:00:00:09"))
    assert verdict(ex(), hops) == (FAIL, "mac")


SIZE = PLAN.spec.vtep_mtu + 1


def test_an_oversize_df_probe_must_be_refused_with_the_pod_mtu():
    refused = Exchange(A, B, "udp", 9, False, size=SIZE, refused_mtu=PLAN.spec.vtep_mtu)
    assert verdict(refused, []) == (PASS, None)
    wrong = Exchange(A, B, "udp", 9, False, size=SIZE, refused_mtu=1500)
    assert verdict(wrong, []) == (FAIL, "mtu")
    big = bytes(Ether(src=A.mac, dst=N0.cni0_mac) / IP(src=str(A.ip), dst=str(B.ip), flags="DF")
                / UDP(sport=9, dport=7777) / Raw(b"." * (SIZE - 28)))
    left = Exchange(A, B, "udp", 9, False, size=SIZE)
    assert verdict(left, [hop(A.ref, "eth0", "tx", big)]) == (FAIL, "mtu")


def arp_frame(op, sender_mac, sender_ip, target_ip, dst_mac=BROADCAST):
    return bytes(Ether(src=sender_mac, dst=dst_mac)
                 / ARP(op=op, hwsrc=sender_mac, psrc=str(sender_ip), pdst=str(target_ip)))


def arp_hops(src, dst):
    """A who-has from src and its reply, as the bridge floods and answers them."""
    node = PLAN.node(src.node)
    if src.node == dst.node:
        target, mac = dst.ip, dst.mac
        request = [(src.ref, "eth0", "tx"), (node.name, src.host_veth, "rx"),
                   (node.name, dst.host_veth, "tx"), (dst.ref, "eth0", "rx")]
        reply = [(dst.ref, "eth0", "tx"), (node.name, dst.host_veth, "rx"),
                 (node.name, src.host_veth, "tx"), (src.ref, "eth0", "rx")]
    else:
        target, mac = src.gateway, node.cni0_mac
        other = next(p for p in node.pods if p != src)
        request = [(src.ref, "eth0", "tx"), (node.name, src.host_veth, "rx"),
                   (node.name, other.host_veth, "tx"), (node.name, "cni0", "rx"),
                   (other.ref, "eth0", "rx")]
        reply = [(node.name, "cni0", "tx"), (node.name, src.host_veth, "tx"),
                 (src.ref, "eth0", "rx")]
    who_has = arp_frame(1, src.mac, src.ip, target)
    is_at = arp_frame(2, mac, target, src.ip, dst_mac=src.mac)
    return ([hop(*p, who_has, ts=i) for i, p in enumerate(request)]
            + [hop(*p, is_at, ts=10 + i, skb=2) for i, p in enumerate(reply)]), mac


@pytest.mark.parametrize("dst", [A2, B], ids=["same-node", "cross-node"])
def test_arp_answered_by_the_right_mac_passes(dst):
    hops, mac = arp_hops(A, dst)
    assert verdict(Exchange(A, dst, "arp", 0, True, answer_mac=mac), hops) == (PASS, None)
    assert verdict(Exchange(A, dst, "arp", 0, True, answer_mac="02:00:00:00:00:09"), hops) \
        == (FAIL, "arp-mac")
    assert verdict(Exchange(A, dst, "arp", 0, False), hops) == (FAIL, "delivery")


def test_arp_must_stay_on_the_node():
    hops, mac = arp_hops(A, A2)
    hops.append(hop("node-0", "flannel.1", "tx", hops[0].raw, ts=5))
    assert verdict(Exchange(A, A2, "arp", 0, True, answer_mac=mac), hops) == (FAIL, "arp-scope")


def test_arp_reply_path_is_checked():
    hops, mac = arp_hops(A, A2)
    hops = [h for h in hops if (h.at, h.device, h.dir) != ("node-0", A.host_veth, "tx")]
    assert verdict(Exchange(A, A2, "arp", 0, True, answer_mac=mac), hops) == (FAIL, "path")


def test_a_second_pod_answering_for_the_same_ip_is_a_conflict():
    hops, mac = arp_hops(A, A2)
    intruder = PLAN.pod("node-0/pod-1")
    impostor = arp_frame(2, "02:00:00:00:00:09", A2.ip, A.ip, dst_mac=A.mac)
    hops.append(hop(A.ref, "eth0", "rx", impostor, ts=30, skb=3))
    result = judge(PLAN, Exchange(A, A2, "arp", 0, True, answer_mac=mac), hops)
    assert (result.verdict, result.rule) == (FAIL, "arp-conflict"), intruder
    assert "02:00:00:00:00:09" in result.diagnosis


def test_a_failure_while_the_shared_arp_table_was_full_is_not_judged():
    assert verdict(ex(answered=False), trail(A, B), table_fulls=3) == \
        (INCONCLUSIVE, "neighbour-table")
    assert verdict(ex(), exchange_hops(), table_fulls=3) == (PASS, None)


def test_exchanges_whose_client_ports_collide_keep_their_own_packets():
    """A->B from port 40000 and B->A from port 40000: a packet is its exchange's only."""
    from dataplane.verify.verifier import by_exchange

    def udp(src, dst, sport, dport):
        return hop(src.ref, "eth0", "tx", bytes(Ether(src=src.mac, dst=dst.mac)
                                              / IP(src=str(src.ip), dst=str(dst.ip))
                                              / UDP(sport=sport, dport=dport)))

    ab, ba = Exchange(A, A2, "udp", 40000, True), Exchange(A2, A, "udp", 40000, True)
    index = by_exchange([udp(A, A2, 40000, 7777), udp(A2, A, 7777, 40000),
                         udp(A2, A, 40000, 7777), udp(A, A2, 7777, 40000)], [ab, ba])
    assert [(h.frame.src, h.frame.sport) for h in index[ab.key]] == \
        [(str(A.ip), 40000), (str(A2.ip), 7777)]
    assert [(h.frame.src, h.frame.sport) for h in index[ba.key]] == \
        [(str(A2.ip), 40000), (str(A.ip), 7777)]


def test_a_late_packet_of_another_pods_exchange_is_not_a_nated_one_of_this():
    """A2's handshake with B (client port 40000) is still retransmitted by B after its
    wave; A then picks port 40000 to B too. B's SYN-ACK to A2 keeps this exchange's end
    (B, port 7777, tag 40000), but its other address is a pod's: A2's, not a NAT's."""
    from dataplane.verify.verifier import by_exchange

    def syn_ack(to):
        return hop("node-1", "eth0", "tx", bytes(Ether(src=B.mac, dst=A.mac)
                                                 / IP(src=str(B.ip), dst=to)
                                                 / TCP(sport=7777, dport=40000, flags="SA")))

    ab = Exchange(A, B, "tcp", 40000, True, port=7777)
    index = by_exchange([syn_ack(str(A2.ip)), syn_ack("172.30.0.1")], [ab], PLAN.pod_addresses)
    assert [h.frame.dst for h in index[ab.end]] == ["172.30.0.1"]  # masqueraded: the node's


def test_the_arp_probe_is_the_frame_scapy_would_build():
    from dataplane.traffic.prober import who_has

    assert who_has(A.mac, str(A.ip), str(A.gateway)) == bytes(
        Ether(src=A.mac, dst=BROADCAST) / ARP(op=1, hwsrc=A.mac, psrc=str(A.ip),
                                              pdst=str(A.gateway)))


def test_an_answer_the_probers_own_full_socket_dropped_is_not_judged():
    """The answer came back to A; A's socket had no room (the prober's limit): neither
    PASS nor a FAIL blamed on the network."""
    hops = exchange_hops()
    last = hops[-1]  # A's eth0 rx of the answer

    def dropped(reason):
        return hops + [hop(last.at, last.device, "drop", last.raw, ts=last.ts + 1,
                           skb=last.skb, drop=reason)]

    result = judge(PLAN, ex(answered=False), dropped("SKB_DROP_REASON_SOCKET_RCVBUFF"))
    assert (result.verdict, result.rule) == (INCONCLUSIVE, "socket"), result.diagnosis
    assert verdict(ex(answered=False), dropped("SKB_DROP_REASON_NETFILTER_DROP")) == \
        (FAIL, "delivery")
