"""The rtnetlink and nftables messages that dumps ask for and read (rtdump.py), as the
kernel lays them out: each message's fixed header, and the number and format of each
attribute read, nested ones included. These are the kernel's ABI (its uapi headers), which
never changes; written here so that a dump needs no pyroute2, tens of milliseconds to
import in the reset and the audit of every verify. pyroute2 knows them too, under the same
names and formats: tests/test_rtdump.py checks each one against it.

Formats are pyroute2's names for them (rtdump.DECODERS decodes each); "ifinfo" is a link's
IFLA_LINKINFO, whose data is laid out by the link's kind (LINK_DATA) and its port's
(PORT_DATA).
"""

from __future__ import annotations

from dataclasses import dataclass

Attributes = dict[int, tuple[str, str]]  # attribute number -> (name, format)


@dataclass(frozen=True, eq=False)  # by identity: a few module-level layouts, cached by rtdump
class Message:
    name: str  # pyroute2's class of the same layout
    header: tuple[tuple[str, str], ...]  # (field, struct format): "x" is padding, "!" network order
    attrs: Attributes


IFINFO = Message("ifinfmsg",
                 (("family", "B"), ("__align", "x"), ("ifi_type", "H"), ("index", "i"),
                  ("flags", "I"), ("change", "I")),
                 {1: ("IFLA_ADDRESS", "l2addr"), 3: ("IFLA_IFNAME", "asciiz"),
                  4: ("IFLA_MTU", "uint32"), 5: ("IFLA_LINK", "uint32"),
                  10: ("IFLA_MASTER", "uint32"), 16: ("IFLA_OPERSTATE", "state"),
                  18: ("IFLA_LINKINFO", "ifinfo"), 29: ("IFLA_EXT_MASK", "uint32"),
                  37: ("IFLA_LINK_NETNSID", "int32")})
LINK_INFO: Attributes = {1: ("IFLA_INFO_KIND", "asciiz"), 2: ("IFLA_INFO_DATA", "info_data"),
                         4: ("IFLA_INFO_SLAVE_KIND", "asciiz"),
                         5: ("IFLA_INFO_SLAVE_DATA", "info_slave_data")}
LINK_DATA: dict[str, Attributes] = {  # IFLA_INFO_DATA, by the link's kind
    "vxlan": {1: ("IFLA_VXLAN_ID", "uint32"), 2: ("IFLA_VXLAN_GROUP", "ip4addr"),
              3: ("IFLA_VXLAN_LINK", "uint32"), 4: ("IFLA_VXLAN_LOCAL", "ip4addr"),
              5: ("IFLA_VXLAN_TTL", "uint8"), 6: ("IFLA_VXLAN_TOS", "uint8"),
              7: ("IFLA_VXLAN_LEARNING", "uint8"), 8: ("IFLA_VXLAN_AGEING", "uint32"),
              9: ("IFLA_VXLAN_LIMIT", "uint32"), 11: ("IFLA_VXLAN_PROXY", "uint8"),
              12: ("IFLA_VXLAN_RSC", "uint8"), 13: ("IFLA_VXLAN_L2MISS", "uint8"),
              14: ("IFLA_VXLAN_L3MISS", "uint8"), 15: ("IFLA_VXLAN_PORT", "be16"),
              18: ("IFLA_VXLAN_UDP_CSUM", "uint8"), 29: ("IFLA_VXLAN_DF", "uint8")},
    "bridge": {5: ("IFLA_BR_STP_STATE", "uint32"), 7: ("IFLA_BR_VLAN_FILTERING", "uint8")},
}
PORT_DATA: dict[str, Attributes] = {  # IFLA_INFO_SLAVE_DATA, by the port's kind
    "bridge": {1: ("IFLA_BRPORT_STATE", "uint8"), 4: ("IFLA_BRPORT_MODE", "uint8"),
               5: ("IFLA_BRPORT_GUARD", "uint8"), 6: ("IFLA_BRPORT_PROTECT", "uint8"),
               8: ("IFLA_BRPORT_LEARNING", "uint8"), 9: ("IFLA_BRPORT_UNICAST_FLOOD", "uint8"),
               10: ("IFLA_BRPORT_PROXYARP", "uint8"), 12: ("IFLA_BRPORT_PROXYARP_WIFI", "uint8"),
               27: ("IFLA_BRPORT_MCAST_FLOOD", "uint8"),
               28: ("IFLA_BRPORT_MCAST_TO_UCAST", "uint8"),
               29: ("IFLA_BRPORT_VLAN_TUNNEL", "uint8"), 30: ("IFLA_BRPORT_BCAST_FLOOD", "uint8"),
               32: ("IFLA_BRPORT_NEIGH_SUPPRESS", "uint8"), 33: ("IFLA_BRPORT_ISOLATED", "uint8"),
               39: ("IFLA_BRPORT_LOCKED", "uint8"), 40: ("IFLA_BRPORT_MAB", "uint8")},
}
IFADDR = Message("ifaddrmsg",
                 (("family", "B"), ("prefixlen", "B"), ("flags", "B"), ("scope", "B"),
                  ("index", "I")),
                 {2: ("IFA_LOCAL", "ipaddr")})
ROUTE = Message("rtmsg",
                (("family", "B"), ("dst_len", "B"), ("src_len", "B"), ("tos", "B"),
                 ("table", "B"), ("proto", "B"), ("scope", "B"), ("type", "B"), ("flags", "I")),
                {1: ("RTA_DST", "target"), 4: ("RTA_OIF", "uint32"), 5: ("RTA_GATEWAY", "target"),
                 6: ("RTA_PRIORITY", "uint32"), 7: ("RTA_PREFSRC", "target"),
                 15: ("RTA_TABLE", "uint32")})
RULE = Message("fibmsg",
               (("family", "B"), ("dst_len", "B"), ("src_len", "B"), ("tos", "B"),
                ("table", "B"), ("res1", "B"), ("res2", "B"), ("action", "B"), ("flags", "I")),
               {1: ("FRA_DST", "ipaddr"), 2: ("FRA_SRC", "ipaddr"), 3: ("FRA_IIFNAME", "asciiz"),
                6: ("FRA_PRIORITY", "uint32"), 10: ("FRA_FWMARK", "uint32"),
                15: ("FRA_TABLE", "uint32"), 17: ("FRA_OIFNAME", "asciiz")})
NEIGHBOUR = Message("ndmsg",
                    (("family", "B"), ("__pad", "3x"), ("ifindex", "i"), ("state", "H"),
                     ("flags", "B"), ("ndm_type", "B")),
                    {1: ("NDA_DST", "ipaddr"), 2: ("NDA_LLADDR", "lladdr"),
                     6: ("NDA_PORT", "be16"), 7: ("NDA_VNI", "uint32")})
NFGEN = Message("nfgen_msg", (("nfgen_family", "B"), ("version", "B"), ("res_id", "!H")), {})
