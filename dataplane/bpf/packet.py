"""Decode the first bytes of a captured frame: Ethernet, ARP/IPv4, ICMP/UDP/TCP,
and for UDP to the VXLAN port, the VXLAN header and the inner frame. Pure."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import replace

from dataplane.names import IP_PROTOCOLS, format_mac
from dataplane.records import Frame

ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
VLAN_TYPES = (0x8100, 0x88A8)  # 802.1Q, 802.1ad
PROTO_NAMES = {number: name for name, number in IP_PROTOCOLS.items()}
ICMP, TCP, UDP = (IP_PROTOCOLS[name] for name in ("icmp", "tcp", "udp"))
VXLAN_HEADER = 8
# A frame is decoded per distinct capture, thousands a wave: each header is read by one
# struct, and a Frame made by position from its Ethernet and IPv4 fields (the order of
# Frame's first fields; tests/test_hops.py pins it), not built up in dicts.
_ETHERNET = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BxHHHBB2x4s4s")  # version+IHL, length, id, fragment, TTL, proto, addresses
_ICMP = struct.Struct("!BBxxHH")  # type, code, id, sequence
_PORTS = struct.Struct("!HH")
_UDP = struct.Struct("!HHxxH")  # ports, checksum


def decode(data: bytes, vxlan_port: int | None = None,
           inner: Callable[[bytes], Frame | None] | None = None) -> Frame | None:
    """The headers of an Ethernet frame; None when too short to hold one. inner decodes
    the frame a VXLAN packet carries (by default decode(frame), no VXLAN port)."""
    if len(data) < 14:
        return None
    dst, src, ethertype = _ETHERNET.unpack_from(data)
    if ethertype in VLAN_TYPES and len(data) >= 18:  # decoded as the bridge passes it on
        untagged = decode(data[:12] + data[16:], vxlan_port, inner)
        vid = struct.unpack_from("!H", data, 14)[0] & 0x0FFF
        return replace(untagged, vlans=(vid, *untagged.vlans))
    eth_src, eth_dst = format_mac(src), format_mac(dst)
    if ethertype == ETH_P_ARP and len(data) >= 42:
        return Frame(eth_src, eth_dst, ethertype, proto="arp", src=socket.inet_ntoa(data[28:32]),
                     dst=socket.inet_ntoa(data[38:42]), arp_op=struct.unpack_from("!H", data, 20)[0],
                     arp_sender_mac=format_mac(data[22:28]))
    if ethertype != ETH_P_IP or len(data) < 34:
        return Frame(eth_src, eth_dst, ethertype)
    return _ipv4(data, 14, vxlan_port, eth_src, eth_dst, inner or decode)


def _ipv4(data: bytes, ip: int, vxlan_port: int | None, eth_src: str = "",
          eth_dst: str = "", inner: Callable[[bytes], Frame | None] = decode) -> Frame:
    """The IPv4 packet at data[ip:] and what it carries, with these Ethernet addresses (none
    for the packet an ICMP error quotes)."""
    first, ip_len, ip_id, frag, ttl, proto, src, dst = _IPV4.unpack_from(data, ip)
    frag_offset = (frag & 0x1FFF) * 8
    ip_fields = (eth_src, eth_dst, ETH_P_IP, socket.inet_ntoa(src), socket.inet_ntoa(dst),
                 PROTO_NAMES.get(proto) or str(proto), ttl, ip_len, ip_id, bool(frag & 0x4000),
                 bool(frag & 0x2000), frag_offset)
    l4 = ip + (first & 0x0F) * 4
    if frag_offset:  # its bytes are the middle of the datagram's payload
        return Frame(*ip_fields)
    if proto == ICMP and len(data) >= l4 + 8:
        kind, code, ident, seq = _ICMP.unpack_from(data, l4)
        quoted = _ipv4(data, l4 + 8, None) if kind in (3, 11) and len(data) >= l4 + 8 + 20 + 4 \
            else None
        # the next-hop MTU of a fragmentation-needed message sits where an echo has its sequence
        return Frame(*ip_fields, icmp_type=kind, icmp_code=code, icmp_id=ident, icmp_seq=seq,
                     icmp_mtu=seq if kind == 3 and code == 4 else None, quoted=quoted)
    if proto == TCP and len(data) >= l4 + 4:
        return Frame(*ip_fields, *_PORTS.unpack_from(data, l4),
                     tcp_flags=data[l4 + 13] if len(data) >= l4 + 14 else None)
    if proto == UDP and len(data) >= l4 + 8:
        sport, dport, checksum = _UDP.unpack_from(data, l4)
        if not _is_vxlan(data, l4 + 8, dport == vxlan_port):
            return Frame(*ip_fields, sport, dport, checksum)
        vxlan = l4 + 8
        return Frame(*ip_fields, sport, dport, checksum,
                     vni=int.from_bytes(data[vxlan + 4:vxlan + 7], "big"),
                     inner=inner(data[vxlan + VXLAN_HEADER:]))
    if proto == UDP and len(data) >= l4 + 4:
        return Frame(*ip_fields, *_PORTS.unpack_from(data, l4))
    return Frame(*ip_fields)


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
