"""Decode the first bytes of a captured frame: Ethernet, ARP/IPv4, ICMP/UDP/TCP,
and for UDP to the VXLAN port, the VXLAN header and the inner frame. Pure."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, replace

ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
VLAN_TYPES = (0x8100, 0x88A8)  # 802.1Q, 802.1ad
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
VXLAN_HEADER = 8


# Not frozen, yet hashed by value: a frozen dataclass's __init__ sets each field through
# object.__setattr__, several times the cost, and a run decodes a frame per packet seen.
@dataclass(unsafe_hash=True)
class Frame:
    eth_src: str
    eth_dst: str
    ethertype: int
    src: str | None = None  # IPv4 (or ARP sender/target) addresses
    dst: str | None = None
    proto: str | None = None  # icmp, udp, tcp, arp, or the IP protocol number
    ttl: int | None = None
    ip_len: int | None = None
    ip_id: int | None = None
    df: bool = False
    more_fragments: bool = False
    frag_offset: int = 0  # bytes; a fragment past the first carries no L4 header
    sport: int | None = None
    dport: int | None = None
    udp_checksum: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    icmp_mtu: int | None = None  # next-hop MTU of a fragmentation-needed message
    tcp_flags: int | None = None
    arp_op: int | None = None  # 1 request, 2 reply
    arp_sender_mac: str | None = None
    vni: int | None = None
    inner: "Frame | None" = None  # the frame a VXLAN packet carries
    quoted: "Frame | None" = None  # the packet an ICMP error quotes (IP header + 8 bytes)
    vlans: tuple[int, ...] = ()  # the VLAN ids of the tags the frame carries in band

    @property
    def fragment(self) -> bool:
        """A piece of a fragmented IPv4 datagram (the first one included)."""
        return self.more_fragments or self.frag_offset > 0


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def decode(data: bytes, vxlan_port: int | None = None) -> Frame | None:
    """The headers of an Ethernet frame; None when too short to hold one."""
    if len(data) < 14:
        return None
    dst, src, ethertype = data[:6], data[6:12], struct.unpack_from("!H", data, 12)[0]
    if ethertype in VLAN_TYPES and len(data) >= 18:  # decoded as the bridge passes it on
        untagged = decode(data[:12] + data[16:], vxlan_port)
        vid = struct.unpack_from("!H", data, 14)[0] & 0x0FFF
        return replace(untagged, vlans=(vid, *untagged.vlans))
    base = {"eth_src": _mac(src), "eth_dst": _mac(dst), "ethertype": ethertype}
    if ethertype == ETH_P_ARP and len(data) >= 42:
        return Frame(**base, proto="arp", src=socket.inet_ntoa(data[28:32]),
                     dst=socket.inet_ntoa(data[38:42]), arp_op=struct.unpack_from("!H", data, 20)[0],
                     arp_sender_mac=_mac(data[22:28]))
    if ethertype != ETH_P_IP or len(data) < 34:
        return Frame(**base)
    return Frame(**base, **_ipv4(data, 14, vxlan_port))


def _ipv4(data: bytes, ip: int, vxlan_port: int | None) -> dict:
    """The fields of the IPv4 packet at data[ip:], and what it carries."""
    ihl = (data[ip] & 0x0F) * 4
    ip_len, ip_id, frag, ttl, proto = struct.unpack_from("!HHHBB", data, ip + 2)
    fields = dict(src=socket.inet_ntoa(data[ip + 12:ip + 16]),
                  dst=socket.inet_ntoa(data[ip + 16:ip + 20]),
                  proto=PROTO_NAMES.get(proto, str(proto)), ttl=ttl, ip_len=ip_len,
                  ip_id=ip_id, df=bool(frag & 0x4000), more_fragments=bool(frag & 0x2000),
                  frag_offset=(frag & 0x1FFF) * 8)
    l4 = ip + ihl
    if fields["frag_offset"]:  # its bytes are the middle of the datagram's payload
        return fields
    if proto == 1 and len(data) >= l4 + 8:
        kind, code, _, ident, seq = struct.unpack_from("!BBHHH", data, l4)
        fields.update(icmp_type=kind, icmp_code=code, icmp_id=ident, icmp_seq=seq)
        if kind == 3 and code == 4:
            fields["icmp_mtu"] = seq  # the next-hop MTU sits where an echo has its sequence
        if kind in (3, 11) and len(data) >= l4 + 8 + 20 + 4:
            fields["quoted"] = Frame(eth_src="", eth_dst="", ethertype=ETH_P_IP,
                                     **_ipv4(data, l4 + 8, None))
    elif proto in (6, 17) and len(data) >= l4 + 4:
        fields["sport"], fields["dport"] = struct.unpack_from("!HH", data, l4)
        if proto == 6 and len(data) >= l4 + 14:
            fields["tcp_flags"] = data[l4 + 13]
        if proto == 17 and len(data) >= l4 + 8:
            fields["udp_checksum"] = struct.unpack_from("!H", data, l4 + 6)[0]
        if proto == 17 and _is_vxlan(data, l4 + 8, fields["dport"] == vxlan_port):
            vxlan = l4 + 8
            fields["vni"] = int.from_bytes(data[vxlan + 4:vxlan + 7], "big")
            fields["inner"] = decode(data[vxlan + VXLAN_HEADER:], None)
    return fields


def _is_vxlan(data: bytes, at: int, on_port: bool) -> bool:
    """VXLAN on the configured port, or on any port when the header has the shape of one
    (the I flag alone, reserved bytes zero) and carries an IPv4 or ARP frame: a tunnel
    misconfigured onto another port is still recognised, and named for it."""
    if len(data) < at + VXLAN_HEADER:
        return False
    if on_port:
        return True
    header, inner = data[at:at + VXLAN_HEADER], at + VXLAN_HEADER
    return (header[0] == 0x08 and header[1:4] == b"\0\0\0" and header[7] == 0
            and len(data) >= inner + 14
            and struct.unpack_from("!H", data, inner + 12)[0] in (ETH_P_IP, ETH_P_ARP))
