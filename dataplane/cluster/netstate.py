"""The audited view of one namespace, in the words a drift item uses. Pure.

Both sides of the audit are written with these methods: the plan's expectation
(dataplane/cluster/expected.py) and the kernel's live state (dataplane/cluster/live.py), so the
same thing always reads the same and the comparison is a plain diff.

An entry is keyed (device, what); device is None for what belongs to the
namespace. Items are things that are there or not (a link, an address, a
route, an FDB entry, a chain that can drop); attrs are properties of a device
or a namespace (an MTU, a flag, a sysctl), compared only where both sides have
them: an expectation leaves out what it does not fix (a host veth's random
MAC), and a kernel may lack an attribute altogether.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

Key = tuple[Optional[str], str]  # Optional: a runtime alias, `X | None` needs 3.10
LINK = "link"  # the item naming a device: its value is the kind
SYSCTL = "sysctl "
OFFLOAD = "offload "
CONF = "net.ipv4.conf."


def on_off(value: object) -> str:
    return "on" if value else "off"


@dataclass
class NetState:
    items: dict[Key, str] = field(default_factory=dict)
    attrs: dict[Key, str] = field(default_factory=dict)

    def devices(self) -> set[str]:
        return {dev for dev, what in self.items if what == LINK and dev}

    def link(self, name: str, kind: str, *, admin: str, oper: str | None, mtu: int,
             mac: str | None = None, master: str | None = None) -> None:
        """A device; None for oper or mac leaves it unchecked."""
        self.items[(name, LINK)] = kind
        self.attrs[(name, "admin state")] = admin
        self.attrs[(name, "mtu")] = str(mtu)
        self.attrs[(name, "master")] = master or "none"
        if oper is not None:
            self.attrs[(name, "oper state")] = oper
        if mac is not None:
            self.attrs[(name, "mac")] = mac

    def options(self, name: str, prefix: str, values: dict[str, object]) -> None:
        """Named settings of a device: "vxlan vni", "bridge port learning", ..."""
        for option, value in values.items():
            self.attrs[(name, f"{prefix} {option}")] = (
                on_off(value) if isinstance(value, bool) else str(value))

    def address(self, dev: str, ip: object, prefixlen: int) -> None:
        self.items[(dev, f"address {ip}/{prefixlen}")] = "present"

    def route(self, dev: str | None, dst: str, *, via: object = None, onlink: bool = False,
              src: object = None, kind: str = "unicast", metric: int = 0) -> None:
        """A route of the main table; dst as `ip route` writes it ("default", "10.244.1.0/24")."""
        words = [] if kind == "unicast" else [kind]
        words += [f"via {via}"] if via else ["scope link"] if dev else []
        words += ["onlink"] if onlink else []
        words += [f"src {src}"] if src else []
        words += [f"metric {metric}"] if metric else []
        self._join((dev, f"route {dst}"), " ".join(words) or kind)

    def rule(self, priority: int, text: str) -> None:
        self._join((None, f"rule {priority}"), text)

    def neighbour(self, dev: str, ip: object, mac: str) -> None:
        """A permanent neighbour entry (the only kind a plan defines)."""
        self.items[(dev, f"neighbour {ip}")] = mac

    def fdb(self, dev: str, mac: str, dst: object, state: str = "permanent",
            port: int | None = None, vni: int | None = None) -> None:
        """A VXLAN forwarding entry: mac is behind the remote dst (at port and vni when
        the entry names its own, not the device's, as bridge(8) writes them)."""
        self._join((dev, f"fdb {mac}"), f"dst {dst}" + (f" port {port}" if port else "")
                   + (f" vni {vni}" if vni is not None else "")
                   + ("" if state == "permanent" else f" ({state})"))

    def firewall(self, what: str, found: str) -> None:
        """A firewall chain or table that can drop traffic; a healthy build has none."""
        self.items[(None, what)] = found

    def sysctl(self, key: str, value: str) -> None:
        """net.ipv4.conf.DEV.* belongs to DEV ('/' in a key stands for '.' in DEV)."""
        self.attrs[(sysctl_device(key), SYSCTL + key)] = value

    def offload(self, dev: str, feature: str, value: bool) -> None:
        self.attrs[(dev, OFFLOAD + feature)] = on_off(value)

    def sysctl_keys(self) -> list[str]:
        return [what[len(SYSCTL):] for _, what in self.attrs if what.startswith(SYSCTL)]

    def offload_keys(self) -> list[tuple[str, str]]:
        """(device, feature) of every offload this state holds."""
        return [(dev, what[len(OFFLOAD):]) for dev, what in self.attrs
                if dev and what.startswith(OFFLOAD)]

    def _join(self, key: Key, value: str) -> None:
        """Several entries under one key (two routes to one dst) read as one, in order."""
        old = self.items.get(key)
        self.items[key] = value if old is None else " | ".join(sorted([*old.split(" | "), value]))


def sysctl_device(key: str) -> str | None:
    if not key.startswith(CONF):
        return None
    dev = key[len(CONF):].split(".", 1)[0]
    return None if dev in ("all", "default") else dev.replace("/", ".")


def sysctl_key(dev: str, name: str) -> str:
    """The sysctl name of a per-device IPv4 setting, as sysctl(8) writes it."""
    return f"{CONF}{dev.replace('.', '/')}.{name}"
