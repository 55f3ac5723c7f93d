"""The names the stages and the command line share: the protocols, the directions a hop
is seen going, the outcomes `send` can be told to expect, the sets of pod pairs, the
protocols' numbers and how a MAC address is written. Pure, and light: the command line
imports it before it knows which command runs (records.py holds the records themselves).
"""

from __future__ import annotations

from typing import Literal, get_args

# The protocols dataplane sends between pods and verifies, by the names users give, and
# the IP protocol numbers of those that are IP (the probes' maps key ARP as 0).
Proto = Literal["icmp", "udp", "tcp", "arp"]
PROTOCOLS: tuple[Proto, ...] = get_args(Proto)
IP_PROTOCOLS: dict[Proto, int] = {"icmp": 1, "tcp": 6, "udp": 17}
# The outcomes `send` can be told to expect.
Expectation = Literal["delivered", "answered", "dropped"]
EXPECTABLE: tuple[Expectation, ...] = get_args(Expectation)
# Where a hop was seen going: out of a device, into one, dropped, a kernel function
# (kprobe), a bridge learning a MAC.
Direction = Literal["tx", "rx", "drop", "fn", "learn"]
# Which ordered pod pairs a verify run probes.
Pairs = Literal["all", "same-node", "cross-node", "sample"]
PAIRS: tuple[Pairs, ...] = get_args(Pairs)

ECHO_REPLY, ECHO = 0, 8  # ICMP types
SERVICE_PORT = 7777  # where a destination pod listens for UDP and TCP (traffic/prober.py)
ARP_REQUEST, ARP_REPLY = 1, 2  # ARP operations


def format_mac(raw: bytes) -> str:
    """A MAC address as every output writes it: 0a:58:0a:f4:00:02."""
    return raw.hex(":")
