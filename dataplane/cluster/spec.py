"""Read and validate a topology file into a Spec.

Pure: takes TOML text (or a path) and returns data. Every error is a one-line
UsageError that names the offending key and says how to fix it.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from dataplane.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Debian 11's Python 3.9 (the VM lane's bullseye guest): the same parser from PyPI
    import tomli as tomllib

IFNAMSIZ = 15  # bytes usable in a Linux interface name
VNI_MAX = 16777215
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
# Kubernetes object names are DNS-1123 labels; they are also safe in netns and
# interface names, and they cannot contain the '.' that separates them in ours.
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
SYSCTL_NAME = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_/:@-]+)+$")  # '/' for a '.' in a device name
LABEL_HINT = "lower-case letters, digits and '-', starting and ending with a letter or digit"
RESERVED_NODE_NAMES = ("underlay",)  # the underlay namespace is <prefix>.underlay
# Ranges whose addresses cannot be a pod's or a node's: the kernel refuses them as
# gateways or never routes them off the host (RFC 6890).
UNUSABLE = tuple((IPv4Network(net), what) for net, what in (
    ("0.0.0.0/8", "unspecified ('this network')"), ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"), ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
))
# Where a free subnet is looked for when suggesting one (RFC 1918).
PRIVATE = tuple(IPv4Network(net) for net in ("172.16.0.0/12", "192.168.0.0/16", "10.0.0.0/8"))

DEFAULTS: dict[str, dict[str, Any]] = {
    "cluster": {"name": None, "cidr": "10.244.0.0/16", "node_mask": 24,
                "nodes": 2, "pods_per_node": 2},
    "underlay": {"subnet": "172.30.0.0/24", "mtu": 1500},
    "backend": {"type": "vxlan", "vni": 1, "port": 8472},
    "cni": {"mode": "builtin", "path": None},
}
CNI_MODES = ("builtin", "plugins")
# [[configure]]: the user's own node configuration, an array of tables.
CONFIGURE = "configure"
CONFIGURE_KEYS = ("nodes", "sysctls", "nftables", "commands")


@dataclass(frozen=True)
class Cni:
    """Who wires the pods: the built-in netlink builder, or the real CNI plugins."""

    mode: str = "builtin"
    path: Path | None = None  # the user's own plugin builds, searched before the system's


@dataclass(frozen=True)
class Configure:
    """One [[configure]] table: applied to its nodes after the build, in order."""

    key: str  # "configure[0]", for messages
    nodes: tuple[str, ...] | None  # None: every node
    sysctls: tuple[tuple[str, str], ...] = ()
    nftables: Path | None = None  # a ruleset file, loaded in each node's namespace
    commands: tuple[tuple[str, ...], ...] = ()  # argv lists, run in each node's namespace


@dataclass(frozen=True)
class Spec:
    """A validated cluster description; names are in creation order."""

    name: str
    cluster_cidr: IPv4Network
    node_mask: int
    nodes: tuple[str, ...]
    pods: tuple[str, ...]  # the pod names every node gets
    underlay_subnet: IPv4Network
    underlay_mtu: int
    vni: int
    port: int
    cni: Cni = Cni()
    configure: tuple[Configure, ...] = ()
    # the topology file's directory: its relative paths start there (where a network is
    # described from, not what it is: not compared)
    base: Path = field(default=Path("."), compare=False)

    @property
    def vtep_mtu(self) -> int:
        return self.underlay_mtu - VXLAN_OVERHEAD

    @property
    def vtep_name(self) -> str:
        return f"flannel.{self.vni}"  # flannel names its device after the VNI


def read_text(path: Path) -> str:
    """A topology file's text; an unreadable or non-UTF-8 file is a one-line UsageError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                         f"offset {err.start}); save the file as UTF-8 (TOML is UTF-8)") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read topology file ({err.strerror}); pass a "
                         "readable file or a shipped topology by name, e.g. flannel-vxlan") from None


def load(path: str | Path, name: str | None = None) -> Spec:
    """Parse and validate the topology file at path; name overrides cluster.name."""
    return parse(read_text(Path(path)), source=str(path), name=name)


def parse(text: str, source: str = "<topology>", name: str | None = None,
          cni_mode: str | None = None) -> Spec:
    """Validate TOML text into a Spec; name overrides cluster.name, cni_mode cni.mode
    (`up --cni`). Relative paths in it are relative to source's directory."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{source}: not valid TOML: {err}; fix the syntax there") from None
    return _Checker(source).spec(doc, name, cni_mode)


class _Checker:
    """Turns a parsed document into a Spec, failing on the first problem."""

    def __init__(self, source: str):
        self.source = source
        self.base = Path(source).resolve().parent

    def fail(self, key: str, problem: str, fix: str) -> UsageError:
        return UsageError(f"{self.source}: {key}: {problem}; {fix}")

    def spec(self, doc: dict[str, Any], name_override: str | None,
             cni_mode: str | None = None) -> Spec:
        tables = self.tables(doc)
        c, u, b = tables["cluster"], tables["underlay"], tables["backend"]
        name = name_override if name_override is not None else c["name"]
        key_name = "--name" if name_override is not None else "cluster.name"
        if name is None:
            raise self.fail("cluster.name", "missing", 'add name = "my-cluster" under [cluster]')
        self.label(key_name, name, 32)
        cidr = self.network("cluster.cidr", c["cidr"])
        node_mask = self.integer("cluster.node_mask", c["node_mask"], cidr.prefixlen, 30)
        nodes = self.names("cluster.nodes", c["nodes"], "node", IFNAMSIZ)
        pods = self.names("cluster.pods_per_node", c["pods_per_node"], "pod", 63)
        for reserved in RESERVED_NODE_NAMES:
            if reserved in nodes:
                raise self.fail("cluster.nodes", f"'{reserved}' is reserved", "rename that node")
        self.capacity(cidr, node_mask, len(nodes), len(pods))
        subnet = self.network("underlay.subnet", u["subnet"])
        if subnet.overlaps(cidr):
            raise self.fail("underlay.subnet", f"{subnet} overlaps cluster.cidr {cidr}",
                            f'pick disjoint ranges, e.g. subnet = "{free_subnet(cidr, subnet)}"')
        if subnet.num_addresses - 2 < len(nodes):
            raise self.fail("underlay.subnet", f"{subnet} has no room for {len(nodes)} nodes",
                            "use a larger subnet")
        if b["type"] != "vxlan":
            raise self.fail("backend.type", f"{b['type']!r} is not supported", 'use "vxlan"')
        vni = self.integer("backend.vni", b["vni"], 1, VNI_MAX)
        if len(f"flannel.{vni}") > IFNAMSIZ:
            raise self.fail("backend.vni", f"flannel.{vni} is longer than {IFNAMSIZ} bytes",
                            "use a vni below 10000000 (flannel names its device flannel.<vni>)")
        return Spec(
            name=name, cluster_cidr=cidr, node_mask=node_mask, nodes=nodes, pods=pods,
            underlay_subnet=subnet,
            underlay_mtu=self.integer("underlay.mtu", u["mtu"], 1280, 9000),
            vni=vni, port=self.integer("backend.port", b["port"], 1, 65535),
            cni=self.cni(tables["cni"], cni_mode),
            configure=self.configure(doc.get(CONFIGURE, []), nodes), base=self.base,
        )

    def cni(self, table: dict[str, Any], mode_override: str | None) -> Cni:
        mode = mode_override if mode_override is not None else table["mode"]
        key = "--cni" if mode_override is not None else "cni.mode"
        if mode not in CNI_MODES:
            raise self.fail(key, f"{mode!r} is not a wiring mode",
                            f"use {' or '.join(repr(m) for m in CNI_MODES)}")
        path = None if table["path"] is None else self.path("cni.path", table["path"])
        if path is not None and mode == "builtin" and mode_override is None:
            raise self.fail("cni.path", 'is set, but cni.mode is "builtin", which runs no plugin',
                            'set mode = "plugins" under [cni], or remove path')
        return Cni(mode=mode, path=path)

    def path(self, key: str, value: Any) -> Path:
        """A path as written, relative ones taken from the topology file's directory."""
        self.typed(key, value, str, 'a path string like "plugins/bin"')
        if not value:
            raise self.fail(key, "the path is empty", "name a file or directory")
        return self.base / value

    def configure(self, value: Any, nodes: tuple[str, ...]) -> tuple[Configure, ...]:
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise self.fail(CONFIGURE, "must be an array of tables",
                            f"write each one as [[{CONFIGURE}]]")
        return tuple(self.configure_table(f"{CONFIGURE}[{i}]", t, nodes)
                     for i, t in enumerate(value))

    def configure_table(self, key: str, table: dict[str, Any],
                        nodes: tuple[str, ...]) -> Configure:
        for name in table:
            if name not in CONFIGURE_KEYS:
                raise self.fail(f"{key}.{name}", "unknown key",
                                f"remove it (known: {', '.join(CONFIGURE_KEYS)})")
        chosen = None
        if "nodes" in table:
            chosen = self.strings(f"{key}.nodes", table["nodes"])
            for i, name in enumerate(chosen):
                if name not in nodes:
                    raise self.fail(f"{key}.nodes[{i}]", f"no node named {name!r}",
                                    f"use one of {', '.join(nodes)}, or leave nodes out "
                                    "for every node")
        sysctls = table.get("sysctls", {})
        if not isinstance(sysctls, dict):
            raise self.fail(f"{key}.sysctls", "must be a table",
                            'write sysctls = { "net.ipv4.ip_forward" = "1" }')
        commands = table.get("commands", [])
        if not isinstance(commands, list):
            raise self.fail(f"{key}.commands", "must be a list of argv lists",
                            'write commands = [["ip", "link", "show"]]')
        return Configure(
            key=key, nodes=chosen,
            sysctls=tuple(self.sysctl(f"{key}.sysctls.{k}", k, v) for k, v in sysctls.items()),
            nftables=(self.path(f"{key}.nftables", table["nftables"])
                      if "nftables" in table else None),
            commands=tuple(self.argv(f"{key}.commands[{i}]", argv)
                           for i, argv in enumerate(commands)))

    def strings(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value \
                or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"{value!r} is not a list of names", 'write ["node-0"]')
        return tuple(value)

    def sysctl(self, key: str, name: str, value: Any) -> tuple[str, str]:
        # Only net.*: those belong to the node's network namespace; any other would
        # change the machine itself.
        if not SYSCTL_NAME.match(name) or not name.startswith("net."):
            raise self.fail(key, f"{name!r} is not a network sysctl",
                            "name a net.* sysctl as sysctl(8) writes it, e.g. "
                            "net.ipv4.conf.all.rp_filter")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(key, f"{value!r} is not a sysctl value", 'write "1" or 1')
        return name, str(value)

    def argv(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value \
                or not all(isinstance(v, str) for v in value) or not value[0]:
            raise self.fail(key, f"{value!r} is not an argv list (no shell runs it)",
                            'write ["program", "arg", ...]')
        return tuple(value)

    def tables(self, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each known table with defaults filled in; unknown keys are errors."""
        for key in doc:
            if key not in DEFAULTS and key != CONFIGURE:
                raise self.fail(key, "unknown table or key",
                                f"remove it (known tables: {', '.join(DEFAULTS)}, {CONFIGURE})")
        out = {}
        for table, defaults in DEFAULTS.items():
            given = doc.get(table, {})
            if not isinstance(given, dict):
                raise self.fail(table, "must be a table", f"write it as [{table}]")
            for key in given:
                if key not in defaults:
                    raise self.fail(f"{table}.{key}", "unknown key",
                                    f"remove it (known: {', '.join(defaults)})")
            out[table] = {**defaults, **given}
        return out

    def typed(self, key: str, value: Any, kind: type, wanted: str) -> Any:
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self.fail(key, f"{value!r} is not {wanted}", f"write {wanted}")
        return value

    def integer(self, key: str, value: Any, low: int, high: int) -> int:
        self.typed(key, value, int, "an integer")
        if not low <= value <= high:
            raise self.fail(key, f"{value} is outside {low}..{high}",
                            f"use a value from {low} to {high}")
        return value

    def network(self, key: str, value: Any) -> IPv4Network:
        self.typed(key, value, str, 'a CIDR string like "10.244.0.0/16"')
        try:
            network = ipaddress.IPv4Network(value)
        except ValueError as err:
            raise self.fail(key, f"{value!r} is not an IPv4 CIDR ({err})",
                            'write network/prefix with host bits zero, e.g. "10.244.0.0/16"') from None
        for unusable, what in UNUSABLE:
            if network.overlaps(unusable):
                table, name = key.split(".")
                raise self.fail(key, f"{network} overlaps {unusable}, which is {what}",
                                f'use a private unicast range, e.g. "{DEFAULTS[table][name]}"')
        return network

    def label(self, key: str, value: Any, max_len: int) -> str:
        self.typed(key, value, str, "a string")
        if not LABEL.match(value):
            raise self.fail(key, f"{value!r} cannot name a namespace or interface",
                            f"use {LABEL_HINT}")
        if len(value.encode()) > max_len:
            raise self.fail(key, f"{value!r} is longer than {max_len} bytes",
                            f"use at most {max_len} (names become interface and namespace names)")
        return value

    def names(self, key: str, value: Any, stem: str, max_len: int) -> tuple[str, ...]:
        """A count (named stem-0, stem-1, ...) or an explicit list of names."""
        if isinstance(value, list):
            if not value:
                raise self.fail(key, "the list is empty", "give at least one name")
            names = tuple(self.label(f"{key}[{i}]", v, max_len) for i, v in enumerate(value))
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise self.fail(key, f"duplicate names {', '.join(dupes)}", "make every name unique")
            return names
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, f"{value!r} is neither a count nor a list of names",
                            'write a count like 2 or a list like ["a", "b"]')
        count = self.integer(key, value, 1, 4096)
        return tuple(f"{stem}-{i}" for i in range(count))

    def capacity(self, cidr: IPv4Network, node_mask: int, nodes: int, pods: int) -> None:
        subnets = 1 << (node_mask - cidr.prefixlen)
        if subnets < nodes:
            raise self.fail("cluster.cidr", f"{cidr} holds {subnets} /{node_mask} podCIDRs, "
                            f"not {nodes}", "use a larger cidr or a longer node_mask")
        usable = (1 << (32 - node_mask)) - 3  # network, cni0 gateway (.1), broadcast
        if usable < pods:
            raise self.fail("cluster.node_mask", f"a /{node_mask} podCIDR holds {usable} pods "
                            f"(.0 and .1 are reserved), not {pods}", "use a shorter node_mask")


def free_subnet(taken: IPv4Network, like: IPv4Network) -> IPv4Network:
    """A private subnet of like's size (else a /24) that does not overlap taken."""
    for prefixlen in (like.prefixlen, 24):
        for parent in PRIVATE:
            if prefixlen < parent.prefixlen:
                continue
            # taken is one aligned block: the parent's first subnet or the one right
            # after taken is free unless taken covers the parent.
            for start in (int(parent.network_address), int(taken.broadcast_address) + 1):
                candidate = IPv4Network((start % 2**32, prefixlen), strict=False)
                if candidate.subnet_of(parent) and not candidate.overlaps(taken):
                    return candidate
    return IPv4Network("192.168.0.0/24")  # not reached: taken cannot cover every parent
