"""Compile and attach the eBPF programs in probes/ with bcc.

Struct offsets reach the C code as -D macros computed from BTF, so the
programs include no kernel header and compile the same against matching or
portable headers. Backends are chosen from what the kernel offers.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dataplane import resources
from dataplane.bpf import btf, compiled, kernel
from dataplane.errors import UsageError
from dataplane.resources import CACHE_DIR

if TYPE_CHECKING:  # bcc is imported when the probes are loaded, not with this module
    from bcc import BPF

TRACEPOINTS = ("net_dev_start_xmit", "netif_receive_skb", "netif_rx", "kfree_skb")
FDB_TRACEPOINTS = ("br_fdb_update", "br_fdb_add")
Buffer = Literal["ring", "perf"]  # how events reach user space: BPF ring buffer, perf buffer
Origin = Literal["compiled", "cached"]  # the probes compiled by this load, or by an earlier one
RINGBUF_PAGES = 2048  # 8 MiB: a burst of ~43000 events between two polls

# (macro, struct, member path) for every offset the programs read
OFFSETS = (
    ("OFF_SKB_HEAD", "sk_buff", "head"),
    ("OFF_SKB_DATA", "sk_buff", "data"),
    ("OFF_SKB_LEN", "sk_buff", "len"),
    ("OFF_SKB_MAC_HEADER", "sk_buff", "mac_header"),
    ("OFF_SKB_DEV", "sk_buff", "dev"),
    ("OFF_DEV_NAME", "net_device", "name"),
    ("OFF_DEV_IFINDEX", "net_device", "ifindex"),
    ("OFF_DEV_NET", "net_device", "nd_net.net"),
    ("OFF_NET_INUM", "net", "ns.inum"),
)
# fdb.c's, from the bridge module's BTF when the bridge is a module
FDB_OFFSETS = (("OFF_BRPORT_DEV", "net_bridge_port", "dev"),)
BRIDGE_MODULE = "bridge"


def source(name: str) -> str:
    return resources.find("probes", name).read_text()


# Where the first three function arguments are saved in struct pt_regs, per machine.
ARG_REGISTERS = {"x86_64": ("di", "si", "dx"), "aarch64": ("regs", "regs", "regs")}


def offsets(types: btf.BTF) -> dict[str, int]:
    return {macro: types.offsetof(struct, path) for macro, struct, path in OFFSETS}


def argument_offsets(types: btf.BTF, machine: str) -> dict[str, int]:
    """OFF_REGS_ARG1..3 for kprobes; arm64 keeps x0.. in the array regs[]."""
    registers = ARG_REGISTERS.get(machine)
    if registers is None:
        raise btf.BTFError(f"no argument registers known for {machine}")
    step = 8 if machine == "aarch64" else 0
    return {f"OFF_REGS_ARG{i + 1}": types.offsetof("pt_regs", reg) + step * i
            for i, reg in enumerate(registers)}


@dataclass(frozen=True)
class Layout:
    """What the programs need to know of this kernel's types: from its BTF, or on a
    kernel without BTF, offsetof() expressions over its own matching headers."""

    offsets: dict[str, int | str]  # OFF_* macros
    arguments: dict[str, int | str]  # OFF_REGS_ARG* macros; empty on machines we do not know
    fdb: dict[str, int | str]  # fdb.c's OFF_* macros; empty while the bridge is unknown
    drop_reasons: dict[int, str]  # empty without BTF: reasons are shown as numbers
    prelude: str = ""  # what the programs must include to evaluate the macros


HEADER_PRELUDE = "".join(f"#include <{h}>\n" for h in (
    "linux/skbuff.h", "linux/netdevice.h", "net/net_namespace.h", "uapi/linux/ptrace.h"))


def layout_from_headers(machine: str) -> Layout:
    """Only ever with headers that match the running kernel."""
    registers = ARG_REGISTERS.get(machine, ())
    arguments = {f"OFF_REGS_ARG{i + 1}": f"offsetof(struct pt_regs, {reg})"
                 + (f" + {8 * i}" if machine == "aarch64" else "")
                 for i, reg in enumerate(registers)}
    return Layout({macro: f"offsetof(struct {struct}, {path})" for macro, struct, path in OFFSETS},
                  arguments, {}, {}, HEADER_PRELUDE)


def layout_from(types: btf.BTF, machine: str) -> Layout:
    try:
        arguments = argument_offsets(types, machine)
    except btf.BTFError:
        arguments = {}
    try:
        reasons = types.enum("skb_drop_reason")
    except btf.BTFError:  # before Linux 5.17: drops have no reason
        reasons = {}
    return Layout(offsets(types), arguments, fdb_offsets(types), reasons)


def fdb_offsets(types: btf.BTF) -> dict[str, int]:
    """Built in, the bridge's types are in vmlinux; as a module, in its own BTF."""
    for where in (types, None):
        try:
            where = where or types.module(BRIDGE_MODULE)
            return {macro: where.offsetof(struct, path) for macro, struct, path in FDB_OFFSETS}
        except btf.BTFError:
            continue
    return {}


def layout() -> Layout:
    """This kernel's Layout, kept in CACHE_DIR: parsing BTF at every load would slow it."""
    stat = btf.VMLINUX.stat()
    bridge = "bridge" if (btf.VMLINUX.parent / BRIDGE_MODULE).exists() else "nobridge"
    cached = CACHE_DIR / (f"layout-{kernel.release()}-{stat.st_size}-{stat.st_mtime_ns}"
                          f"-{bridge}.json")
    try:
        data = json.loads(cached.read_text())
        return Layout(data["offsets"], data["arguments"], data["fdb"],
                      {int(k): v for k, v in data["drop_reasons"].items()})
    except (OSError, ValueError, KeyError):
        pass
    found = layout_from(btf.BTF.load(), os.uname().machine)
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(found)))
        tmp.rename(cached)
    except OSError:
        pass  # not root: no cache, the next load parses BTF again
    return found


@dataclass
class Loaded:
    """A loaded program, what was skipped (with why) and the backends chosen."""

    bpf: BPF | compiled.Programs
    skipped: dict[str, str] = field(default_factory=dict)
    backends: list[str] = field(default_factory=list)
    headers: str = ""
    buffer: Buffer = "ring"
    seconds: float = 0.0
    layout: Layout | None = None
    origin: Origin = "compiled"

    @property
    def attached(self) -> list[str]:
        """The probes bcc holds an attachment for now: what is really attached, not
        what was asked for (raw_tracepoint:NAME, kprobe:NAME)."""
        return ([f"raw_tracepoint:{tp.decode()}" for tp in self.bpf.raw_tracepoint_fds]
                + [f"kprobe:{event.decode().removeprefix('p_')}"
                   for event in self.bpf.kprobe_fds])

    def attach(self, probe: str) -> None:
        """Attach raw_tracepoint:NAME to tp_NAME or kprobe:NAME to fn_NAME; raises with
        the kernel's reason when it refuses."""
        kind, name = probe.split(":", 1)
        if kind == "raw_tracepoint":
            attach, args = self.bpf.attach_raw_tracepoint, {"tp": name, "fn_name": f"tp_{name}"}
        else:
            attach, args = self.bpf.attach_kprobe, {"event": name, "fn_name": f"fn_{name}"}
        try:
            attach(**{key: value.encode() for key, value in args.items()})
        except Exception as err:  # bcc raises plain Exception; the kernel's errno says why
            errno = ctypes.get_errno()
            raise ProbeRefused(f"{err}: {os.strerror(errno)}" if errno else str(err)) from None

    def detach(self, probe: str) -> None:
        kind, name = probe.split(":", 1)
        if kind == "raw_tracepoint":
            self.bpf.detach_raw_tracepoint(tp=name.encode())
        else:
            self.bpf.detach_kprobe(event=name.encode())

    def close(self) -> None:
        self.bpf.cleanup()  # detaches every probe and frees the maps


class ProbeRefused(Exception):
    """The kernel would not attach a probe."""


def ring_buffer_supported(release: str) -> bool:
    """BPF ring buffers came with Linux 5.8."""
    major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", release).groups())
    return (major, minor) >= (5, 8)


@dataclass
class Recipe:
    """What a load compiles (or finds compiled) and attaches (prepare())."""

    text: str
    cflags: list[str]
    names: list[str]  # the programs
    wanted: list[str]  # the probes to attach them to
    skipped: dict[str, str]
    headers: str
    buffer: Buffer
    layout: Layout
    kept: Path | None  # where its compile is kept (bpf/compiled.py), None if it is not


def prepare(buffer: Buffer | None = None, pages: int | None = None) -> Recipe:
    """What load(buffer, pages) would do on this kernel now. Telling it reads the kernel's
    symbols where it has kprobes (/proc/kallsyms: 50 ms and more): a process that forks
    several loaders (verify's workers) prepares once and hands them the recipe."""
    headers, tree = kernel.header_source()
    if tree is None:
        raise UsageError(f"no kernel headers for {kernel.release()}; install "
                         "linux-headers-$(uname -r) or run `make setup` for a portable tree")
    if headers == "portable":
        os.environ["BCC_KERNEL_SOURCE"] = str(tree)
    kernel_layout = _kernel_layout(headers)
    macros = {**kernel_layout.offsets, "RINGBUF_PAGES": pages or RINGBUF_PAGES}
    buffer = buffer or ("ring" if ring_buffer_supported(kernel.release()) else "perf")
    if buffer == "perf":
        macros["USE_PERF_BUFFER"] = 1
    if kernel.kfree_skb_has_reason() is False:  # (skb, location): reading a reason is refused
        macros["KFREE_SKB_NO_REASON"] = 1
        kernel_layout = replace(kernel_layout, drop_reasons={0: "no reason (before Linux 5.17)"})
    functions, skipped = _kprobe_targets()
    if functions and not kernel_layout.arguments:
        functions, skipped = [], {"kprobes": f"argument registers unknown on {os.uname().machine}"}
    text = kernel_layout.prelude + source("hops.c")
    tracepoints = list(TRACEPOINTS)
    if kernel_layout.fdb:
        macros.update(kernel_layout.fdb)
        text += source("fdb.c")
        tracepoints += FDB_TRACEPOINTS
    else:
        skipped.update({f"raw_tracepoint:{tp}": "struct net_bridge_port not in BTF (bridge "
                        "module not loaded)" for tp in FDB_TRACEPOINTS})
    if functions:
        macros.update(kernel_layout.arguments)
        macros.update({f"FNID_{name}": i for i, name in enumerate(kernel.KPROBE_SYMBOLS)})
        text += source("fn_hops.c")
    cflags = [f"-D{k}={v}" for k, v in macros.items()]
    names = [f"tp_{tp}" for tp in tracepoints] + [f"fn_{fn}" for fn in functions]
    wanted = [f"raw_tracepoint:{tp}" for tp in tracepoints] + [f"kprobe:{fn}" for fn in functions]
    return Recipe(text, cflags, names, wanted, skipped, headers, buffer, kernel_layout,
                   _cache_entry(text, [*cflags, *names], buffer, tree))


def cached(recipe: Recipe) -> bool:
    """Whether a load of recipe would find its probes compiled by an earlier run."""
    return recipe.kept is not None and recipe.kept.exists()


def load(buffer: Buffer | None = None, pages: int | None = None,
         later: Collection[str] = (), recipe: Recipe | None = None) -> Loaded:
    """Compile the probes against the best headers there are and attach them:
    tracepoints always, kprobes on the bridge/VXLAN functions where possible.
    buffer: "ring" or "perf"; by default a ring buffer where the kernel has them.
    pages: the ring buffer's size in pages (a power of two), RINGBUF_PAGES by default.
    later: probes the caller attaches only if it needs them; loaded from the cache, their
    programs are not even loaded before (the kernel checks each, milliseconds).
    recipe: prepare(buffer, pages) made already (then buffer and pages are its)."""
    started = time.perf_counter()
    recipe = recipe or prepare(buffer, pages)
    now = [name for name, probe in zip(recipe.names, recipe.wanted) if probe not in later]
    programs = compiled.load(recipe.kept, now) if recipe.kept else None
    loaded = Loaded(bpf=programs or _compile(recipe.text, recipe.cflags),
                    skipped=dict(recipe.skipped),
                    backends=["tracepoints"], headers=recipe.headers, buffer=recipe.buffer,
                    layout=recipe.layout, origin="cached" if programs else "compiled")
    for probe in recipe.wanted:
        if programs and probe in later:
            continue  # a compile attaches them all: its every program must load to be kept
        try:
            loaded.attach(probe)
        except ProbeRefused as err:
            loaded.skipped[probe] = str(err)
    if recipe.kept and not programs:
        _keep(recipe.kept, loaded.bpf, recipe.names)
    if any(a.startswith("kprobe:") for a in loaded.attached):
        loaded.backends.insert(0, "kprobes")
    loaded.seconds = time.perf_counter() - started
    return loaded


def _compile(text: str, cflags: list[str]) -> BPF:
    """bcc, imported only to compile (its import is a seventh of a warm run)."""
    try:
        from bcc import BPF
    except ImportError:
        raise UsageError("bcc is not importable; install python3-bpfcc and use the system "
                         "Python or a venv made with --system-site-packages (make setup)") from None
    return BPF(text=text.encode(), cflags=cflags)


def _cache_entry(text: str, inputs: list[str], buffer: Buffer, tree: Path) -> Path | None:
    """Where the probes compiled from text are kept (see bpf/compiled.py), or None when
    they are not: a perf buffer, DATAPLANE_PROBE_CACHE=0, bcc's runtime library lacking a
    function."""
    if buffer != "ring" or os.environ.get("DATAPLANE_PROBE_CACHE", "1") == "0" \
            or not compiled.usable():
        return None
    return compiled.cache_file(CACHE_DIR, text, inputs, tree)


def _keep(kept: Path, program: BPF, names: list[str]) -> None:
    """Keep a compile whose every program the kernel loaded (one it refused would be
    refused again from the cache, every run)."""
    if all(name.encode() in program.funcs for name in names):
        try:
            compiled.save(kept, program, names)
        except Exception:  # bcc raises plain Exception; a cache never fails a load
            pass


def _kernel_layout(headers: str) -> Layout:
    """From BTF; without it, from matching headers; otherwise a refusal, never a guess."""
    if btf.VMLINUX.exists():
        try:
            return layout()
        except (OSError, btf.BTFError) as err:
            raise UsageError(f"cannot read kernel types from BTF ({err}); boot a kernel "
                             "built with CONFIG_DEBUG_INFO_BTF=y") from None
    if headers == "matching":
        return layout_from_headers(os.uname().machine)
    raise UsageError(f"no BTF ({btf.VMLINUX}) and no headers matching {kernel.release()}: "
                     "struct layouts are unknown; install linux-headers-$(uname -r) or boot a "
                     "kernel built with CONFIG_DEBUG_INFO_BTF=y")


def _kprobe_targets() -> tuple[list[str], dict[str, str]]:
    """The functions to put kprobes on, and what is skipped with why."""
    if not kernel.kprobes_available():
        return [], {"kprobes": "the kernel has no kprobes (CONFIG_KPROBES unset)"}
    try:
        present = kernel.kallsyms()
    except OSError as err:
        return [], {f"kprobe:{name}": f"cannot tell whether the function exists: /proc/kallsyms "
                    f"is unreadable ({err.strerror})" for name in kernel.KPROBE_SYMBOLS}
    missing = {f"kprobe:{name}": "no such kernel function (inlined or not built)"
               for name in kernel.KPROBE_SYMBOLS if name not in present}
    return [name for name in kernel.KPROBE_SYMBOLS if name in present], missing
