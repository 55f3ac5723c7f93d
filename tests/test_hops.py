"""Hop tables: each packet labelled by its own direction."""

from dataclasses import fields

import pytest

from dataplane.records import Frame, Hop
from dataplane.report.hoptable import hop_table
from dataplane.traffic.prober import SERVICE_PORT

POD = "10.244.0.2"


def hop(src: str = POD, **frame) -> Hop:
    f = Frame(eth_src="", eth_dst="", ethertype=0x800, src=src, dst=POD, **frame)
    return Hop(ts=1, skb=1, netns=1, at="node-0/pod-0", ifindex=1, device="lo", func="f",
               dir="tx", length=60, frame=f)


def labels(hops: list[Hop]) -> list[str]:
    return [row.split()[1] for row in hop_table(hops, POD)[1:]]


@pytest.mark.parametrize("request_, reply", [
    (hop(proto="icmp", icmp_type=8, icmp_id=7), hop(proto="icmp", icmp_type=0, icmp_id=7)),
    (hop(proto="udp", sport=40000, dport=SERVICE_PORT),
     hop(proto="udp", sport=SERVICE_PORT, dport=40000)),
    (hop(proto="tcp", sport=40000, dport=SERVICE_PORT, tcp_flags=0x02),
     hop(proto="tcp", sport=SERVICE_PORT, dport=40000, tcp_flags=0x12)),
    (hop(proto="arp", arp_op=1), hop(proto="arp", arp_op=2)),
], ids=["icmp", "udp", "tcp", "arp"])
def test_a_pod_talking_to_itself(request_, reply):
    """Source and destination are the same address: only the packet tells the way."""
    assert labels([request_, reply]) == ["request", "reply"]


def test_an_icmp_error_goes_back_as_a_reply():
    quoted = Frame(eth_src="", eth_dst="", ethertype=0x800, src=POD, dst="10.244.1.2",
                   proto="udp", sport=40000, dport=SERVICE_PORT)
    error = hop(src="10.244.0.1", proto="icmp", icmp_type=3, icmp_code=4, quoted=quoted)
    assert labels([error]) == ["reply"]


def test_hop_fields_are_in_the_order_the_tracer_gives_them():
    """bpf/tracer.py makes each event's Hop by position."""
    assert [f.name for f in fields(Hop) if f.init] == [
        "ts", "skb", "netns", "at", "ifindex", "device", "func", "dir", "length", "frame",
        "drop_reason", "learned", "raw"]


def test_frame_fields_start_in_the_order_the_decoder_gives_them():
    """bpf/packet.py makes a Frame by position from its Ethernet and IPv4 fields, then its
    ports and UDP checksum."""
    assert [f.name for f in fields(Frame)][:15] == [
        "eth_src", "eth_dst", "ethertype", "src", "dst", "proto", "ttl", "ip_len", "ip_id",
        "df", "more_fragments", "frag_offset", "sport", "dport", "udp_checksum"]
