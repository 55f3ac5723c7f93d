"""Packets a user writes as a scapy expression (or replays from a capture), made ready
to leave a pod. Pure: nothing here touches a namespace.

An expression is evaluated with no builtins, scapy's layer classes and four helpers in
scope: pod("NODE/POD") and mac("NODE/POD") (a pod's IP and MAC), gw("NODE") (the
node's cni0 address) and fragment(PACKET, fragsize=N) (scapy's, marking the datagram
first). Names starting with "_" and attribute access (`x.y`) are refused before
anything runs, so the expression can build packets and nothing else; a host name is
refused too, where scapy would look it up outside the cluster. A range of addresses or
ports makes one packet each.

Marking: the tool must tell its own packets from any other, and must not change what
the user fixed. So only fields left unset are filled: the source MAC, ARP sender and
source IP from the sending pod (scapy would guess them from the root namespace), and
with one tag per send the IP id, a TCP/UDP source port and an ICMP echo id. Fixed
fields stay as written: the probes then match on what the packet carries (send/follow.py).
"""

from __future__ import annotations

import ast
import importlib
import itertools
import random
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from dataplane.cluster.plan import Plan, PodPlan
from dataplane.errors import UsageError

TAGS = range(32768, 61000)  # a tag looks like an ephemeral source port
ECHO_TYPES = (0, 8, 13, 14, 15, 16, 17, 18)  # ICMP types with an id field
MAX_PACKETS = 1024  # in one PACKET (a range of addresses or ports makes several)
HELP = ('use scapy layers (Ether, IP, UDP, ...) and pod("NODE/POD"), mac("NODE/POD"), '
        'gw("NODE"), fragment(PACKET, fragsize=N), e.g. '
        'IP(dst=pod("node-1/pod-1"))/TCP(dport=80, flags="S")')


def new_tag() -> int:
    return random.choice(TAGS)


def _layers() -> dict[str, type]:
    """Every layer class scapy ships, by name (the first one of a name)."""
    from scapy.config import conf

    importlib.import_module("scapy.all")  # registers every layer scapy ships in conf.layers

    names: dict[str, type] = {}
    for cls in conf.layers:
        names.setdefault(cls.__name__, cls)
    return names


def _refuse_escapes(expression: str) -> ast.Expression:
    """The parsed expression, without attribute access or private names."""
    try:
        tree = ast.parse(expression.strip(), "PACKET", mode="eval")
    except SyntaxError as err:
        raise UsageError(f"PACKET: {err.msg} at column {err.offset or 0} of {expression!r}; "
                         f"{HELP}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            raise UsageError(f"PACKET: attribute access (.{node.attr}) is not allowed; {HELP}")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise UsageError(f"PACKET: name {node.id!r} is not allowed; {HELP}")
    return tree


def evaluate(expression: str, plan: Plan, src: PodPlan, tag: int) -> list:
    """The packets expression makes, marked as sent by src with tag."""
    tree = _refuse_escapes(expression)
    scope: dict[str, Any] = {**_layers(), **_helpers(plan, src, tag), "__builtins__": {}}
    try:
        with _no_name_lookups():
            value = eval(compile(tree, "PACKET", "eval"), scope)  # noqa: S307 (restricted above)
    except UsageError:
        raise
    except NameError as err:
        raise UsageError(f"PACKET: {err}; {HELP}") from None
    except Exception as err:  # scapy's and Python's complaints about the user's packet
        raise UsageError(f"PACKET: {type(err).__name__}: {err}; {HELP}") from None
    return packets(value, src, tag, repr(expression))


@contextmanager
def _no_name_lookups() -> Iterator[None]:
    """Addresses only: scapy would look a host name up (IP(dst="example.com")) through
    the root namespace's resolver, and traffic never leaves the cluster."""
    from scapy.base_classes import Net

    looked_up = Net.__dict__["name2addr"]

    def literal(cls, name: str) -> str:
        try:
            socket.inet_pton(cls.family, name)
        except OSError:
            raise UsageError(f"PACKET: {name!r} is not an address (names are not looked up: "
                             'no traffic leaves the cluster); give one, e.g. pod("NODE/POD")'
                             ) from None
        return name

    Net.name2addr = classmethod(literal)
    try:
        yield
    finally:
        Net.name2addr = looked_up


def _helpers(plan: Plan, src: PodPlan, tag: int) -> dict[str, Callable]:
    from scapy.layers.inet import fragment as scapy_fragment

    def fragment(packet, fragsize: int = 1480) -> list:
        # Marked before scapy splits it: every fragment carries the same IP id, and the
        # UDP/TCP checksum in the first one covers the source address the pod sends.
        return scapy_fragment(mark(packet.copy(), src, tag), fragsize)

    return {"pod": lambda ref: str(plan.pod(ref).ip), "mac": lambda ref: plan.pod(ref).mac,
            "gw": lambda node: str(plan.node(node).gateway), "fragment": fragment}


def packets(value: object, src: PodPlan, tag: int, what: str = "the value") -> list:
    """The packets in value (a packet, or lists of them), copied and prepared."""
    return prepare([p.copy() for p in _flatten(value, what)], src, tag)


def _flatten(value: object, what: str) -> list:
    from scapy.packet import Packet

    if isinstance(value, Packet):  # one, or one per address of IP(dst="10.244.1.0/30")
        found = list(itertools.islice(value, MAX_PACKETS + 1))
        if len(found) > MAX_PACKETS:
            raise UsageError(f"PACKET: {what} makes more than {MAX_PACKETS} packets; send "
                             "fewer (a smaller range of addresses or ports)")
        return found
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        found = [p for item in value for p in _flatten(item, what)]
        if found:
            return found
    raise UsageError(f"PACKET: {what} makes a {type(value).__name__}, not a packet; {HELP}")


def from_pcap(path: str, src: PodPlan, tag: int) -> list:
    """The packets of a capture file, each as it was captured (dissected fields count as
    fixed, so nothing is changed)."""
    from scapy.error import Scapy_Exception
    from scapy.utils import rdpcap

    _layers()  # so that each link type dissects into its layers, not into Raw
    try:
        packets = list(rdpcap(path))
    except (OSError, Scapy_Exception, EOFError) as err:
        raise UsageError(f"--from-pcap {path}: cannot read it ({err}); give a pcap or "
                         "pcapng file") from None
    if not packets:
        raise UsageError(f"--from-pcap {path}: holds no packet; give a capture with some")
    return prepare(packets, src, tag)


def prepare(packets: list, src: PodPlan, tag: int) -> list:
    """Packets marked as sent by src, each checked to start with Ether or IP and to fit
    src's MTU (a packet socket refuses more)."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    for p in packets:
        if not isinstance(p, (Ether, IP)):
            raise UsageError(f"PACKET: {_layer_names(p)} starts with {type(p).__name__}; start it "
                             "with Ether() (sent as it is) or IP() (framed as the pod's "
                             "kernel would)")
        mark(p, src, tag)
        try:
            size = l3_size(p)
        except (ValueError, TypeError, struct.error) as err:  # a field of the wrong type
            problem = " ".join(str(err).split())
            raise UsageError(f"PACKET: cannot build {_layer_names(p)}: {problem}") from None
        if size > src.mtu:
            raise UsageError(f"PACKET: a {size}-byte packet exceeds {src.ref}'s MTU of "
                             f"{src.mtu}; split it: fragment(PACKET, fragsize={src.mtu - 50})")
    return packets


def _layer_names(packet) -> str:
    """IP/UDP/Raw: not scapy's summary(), which would resolve an unset destination MAC
    by ARP from the root namespace."""
    return "/".join(layer.__name__ for layer in packet.layers())


def l3_size(packet) -> int:
    """Bytes after the Ethernet header and its VLAN tags (what the MTU limits)."""
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

    if not isinstance(packet, Ether):
        return len(bytes(packet))
    layer, tags = packet.payload, 0
    while isinstance(layer, (Dot1Q, Dot1AD)):
        layer, tags = layer.payload, tags + 1
    return len(bytes(packet.payload)) - 4 * tags


def mark(packet, src: PodPlan, tag: int):
    """Fill the fields the user left unset (see the module's docstring), first layer of
    each kind only; returns packet."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import ARP, Ether

    fill = {Ether: {"src": src.mac},
            ARP: {"hwsrc": src.mac, "psrc": str(src.ip)},
            IP: {"src": str(src.ip), "id": tag},
            TCP: {"sport": tag}, UDP: {"sport": tag}}
    seen: set[type] = set()
    for layer in packet.layers():
        if layer in seen:
            continue
        seen.add(layer)
        fields = dict(fill.get(layer, {}))
        if layer is ICMP and packet[ICMP].type in ECHO_TYPES:
            fields["id"] = tag
        target = packet.getlayer(layer)
        for name, value in fields.items():
            if name not in target.fields:
                target.setfieldval(name, value)
    return packet
