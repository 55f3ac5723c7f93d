"""Decode the first bytes of a captured frame: Ethernet, ARP/IPv4, ICMP/UDP/TCP,
and for UDP to the VXLAN port, the VXLAN header and the inner frame. Pure."""

from __future__ import annotations

import socket
import struct
from dataclasses import replace

from dataplane.names import IP_PROTOCOLS, format_mac
from dataplane.records import Frame

ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
VLAN_TYPES = (0x8100, 0x88A8)  # 802.1Q, 802.1ad
PROTO_NAMES = {number: name for name, number in IP_PROTOCOLS.items()}
ICMP, TCP, UDP = (IP_PROTOCOLS[name] for name in ("icmp", "tcp", "udp"))
VXLAN_HEADER = 8


def decode(data: bytes, vxlan_port: int | None = None) -> Frame | None:
    """The headers of an Ethernet frame; None when too short to hold one."""
    if len(data) < 14:
        return None
    dst, src, ethertype = data[:6], data[6:12], struct.unpack_from("!H", data, 12)[0]
    if ethertype in VLAN_TYPES and len(data) >= 18:  # decoded as the bridge passes it on
        untagged = decode(data[:12] + data[16:], vxlan_port)
        vid = struct.unpack_from("!H", data, 14)[0] & 0x0FFF
        return replace(untagged, vlans=(vid, *untagged.vlans))
    base = {"eth_src": format_mac(src), "eth_dst": format_mac(dst), "ethertype": ethertype}
    if ethertype == ETH_P_ARP and len(data) >= 42:
        return Frame(**base, proto="arp", src=socket.inet_ntoa(data[28:32]),
                     dst=socket.inet_ntoa(data[38:42]), arp_op=struct.unpack_from("!H", data, 20)[0],
                     arp_sender_mac=format_mac(data[22:28]))
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
    if proto == ICMP and len(data) >= l4 + 8:
        kind, code, _, ident, seq = struct.unpack_from("!BBHHH", data, l4)
        fields.update(icmp_type=kind, icmp_code=code, icmp_id=ident, icmp_seq=seq)
        if kind == 3 and code == 4:
            fields["icmp_mtu"] = seq  # the next-hop MTU sits where an echo has its sequence
        if kind in (3, 11) and len(data) >= l4 + 8 + 20 + 4:
            fields["quoted"] = Frame(eth_src="", eth_dst="", ethertype=ETH_P_IP,
                                     **_ipv4(data, l4 + 8, None))
    elif proto in (TCP, UDP) and len(data) >= l4 + 4:
        fields["sport"], fields["dport"] = struct.unpack_from("!HH", data, l4)
        if proto == TCP and len(data) >= l4 + 14:
            fields["tcp_flags"] = data[l4 + 13]
        if proto == UDP and len(data) >= l4 + 8:
            fields["udp_checksum"] = struct.unpack_from("!H", data, l4 + 6)[0]
        if proto == UDP and _is_vxlan(data, l4 + 8, fields["dport"] == vxlan_port):
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
