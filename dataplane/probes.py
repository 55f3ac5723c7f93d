"""Compile and attach the eBPF programs in probes/ with bcc.

Struct offsets reach the C code as -D macros computed from BTF, so the
programs include no kernel header and compile the same against matching or
portable headers. Backends are chosen from what the kernel offers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from dataplane import btf, kernel
from dataplane.errors import UsageError

# Where probes/*.c live: packaged as dataplane/probes when installed, top-level in a checkout.
_SOURCES = (Path(__file__).resolve().parent / "probes",
            Path(__file__).resolve().parent.parent / "probes")
TRACEPOINTS = ("net_dev_start_xmit", "netif_receive_skb", "netif_rx", "kfree_skb")
RINGBUF_PAGES = 256  # 1 MiB: a burst of ~5000 events between two polls

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


def source(name: str) -> str:
    for base in _SOURCES:
        if (base / name).is_file():
            return (base / name).read_text()
    raise FileNotFoundError(f"probe source {name} not found in {', '.join(map(str, _SOURCES))}")


def offsets(types: btf.BTF) -> dict[str, int]:
    return {macro: types.offsetof(struct, path) for macro, struct, path in OFFSETS}


@dataclass
class Loaded:
    """A loaded program and what was attached, skipped (with why) and chosen."""

    bpf: object
    attached: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    backends: list[str] = field(default_factory=list)
    headers: str = ""
    seconds: float = 0.0

    def close(self) -> None:
        self.bpf.cleanup()  # detaches every probe and frees the maps


def load() -> Loaded:
    """Compile probes/hops.c against the best headers there are and attach it."""
    started = time.perf_counter()
    try:
        from bcc import BPF
    except ImportError:
        raise UsageError("bcc is not importable; install python3-bpfcc and use the system "
                         "Python or a venv made with --system-site-packages (make setup)") from None
    headers, tree = kernel.header_source()
    if tree is None:
        raise UsageError(f"no kernel headers for {kernel.release()}; install "
                         "linux-headers-$(uname -r) or run `make setup` for a portable tree")
    if headers == "portable":
        os.environ["BCC_KERNEL_SOURCE"] = str(tree)
    try:
        macros = offsets(btf.BTF.load())
    except btf.BTFError as err:
        raise UsageError(f"cannot read kernel types from BTF ({err}); boot a kernel built "
                         "with CONFIG_DEBUG_INFO_BTF=y") from None
    cflags = [f"-D{name}={value}" for name, value in macros.items()]
    cflags.append(f"-DRINGBUF_PAGES={RINGBUF_PAGES}")
    program = BPF(text=source("hops.c"), cflags=cflags)  # RAW_TRACEPOINT_PROBEs attach themselves
    loaded = Loaded(bpf=program, attached=[f"raw_tracepoint:{tp}" for tp in TRACEPOINTS],
                    backends=["tracepoints"], headers=headers)
    if not kernel.kprobes_available():
        loaded.skipped["kprobes"] = "the kernel has no kprobes (CONFIG_KPROBES unset)"
    loaded.seconds = time.perf_counter() - started
    return loaded
