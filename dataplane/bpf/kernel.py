"""What the running kernel offers the probes, found at run time.

Each check returns a Fact: what was found, whether a run can use it, and the
fix when it cannot. `dataplane doctor` prints them; the probe loader uses the
same answers to choose its backends.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from dataplane.bpf import btf

TRACEFS = Path("/sys/kernel/tracing")
# Debian's generic header tree (common + arch merged) that `make setup` prepares when
# the running kernel has no matching headers; only bcc's own helpers are compiled
# against it: every struct offset comes from BTF.
PORTABLE_HEADERS = Path("/var/cache/dataplane/kernel-headers")
KPROBE_SYMBOLS = ("br_handle_frame", "br_forward", "br_flood", "br_pass_frame_up", "br_dev_xmit",
                  "vxlan_xmit", "vxlan_xmit_one", "udp_tunnel_xmit_skb", "vxlan_rcv")


@dataclass(frozen=True)
class Fact:
    name: str
    value: str
    ok: bool
    fix: str = ""


def release() -> str:
    return os.uname().release


def matching_headers() -> Path | None:
    build = Path(f"/lib/modules/{release()}/build")
    return build if (build / "include").is_dir() else None


def header_source() -> tuple[str, Path | None]:
    """('matching' | 'portable' | 'none', the tree bcc should use)."""
    matching = matching_headers()
    if matching:
        return "matching", matching
    if (PORTABLE_HEADERS / "include").is_dir():
        return "portable", PORTABLE_HEADERS
    return "none", None


def _config() -> dict[str, str]:
    """The kernel's build config, where it is published (doctor's: gzip imported here)."""
    import gzip

    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{release()}")):
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except OSError:
            continue
        return dict(line.split("=", 1) for line in raw.decode().splitlines() if "=" in line
                    and not line.startswith("#"))
    return {}


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # tracefs is root-only
        return False


def mount_tracefs() -> bool:
    """Mount tracefs at its usual place if absent (kprobes are defined through it)."""
    if _is_dir(TRACEFS / "events"):
        return True
    if os.geteuid() != 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount(b"tracefs", str(TRACEFS).encode(), b"tracefs", 0, None)
    return _is_dir(TRACEFS / "events")


def kprobes_available() -> bool:
    """kprobe_events exists only when the kernel was built with CONFIG_KPROBE_EVENTS."""
    try:
        return mount_tracefs() and (TRACEFS / "kprobe_events").exists()
    except OSError:
        return False


def kallsyms(names: tuple[str, ...] = KPROBE_SYMBOLS) -> set[str]:
    """Which of names are kernel functions that kprobes could attach to. Raises OSError
    when /proc/kallsyms cannot be read: an unreadable list is not an empty one."""
    wanted, found = set(names), set()
    with open("/proc/kallsyms") as symbols:
        for line in symbols:
            parts = line.split()
            if len(parts) >= 3 and parts[2] in wanted:
                found.add(parts[2])
    return found


def kprobe_functions() -> str:
    """How many of the functions the kprobes want the kernel has, naming those it lacks
    (renamed, inlined or not built on this kernel)."""
    try:
        present = kallsyms()
    except OSError as err:
        return f"unknown (/proc/kallsyms is unreadable: {err.strerror})"
    absent = [name for name in KPROBE_SYMBOLS if name not in present]
    unloaded = sorted({_module_of(name) for name in absent
                       if not Path(f"/sys/module/{_module_of(name)}").exists()})
    missing = [name for name in absent if _module_of(name) not in unloaded]
    return (f"{len(KPROBE_SYMBOLS) - len(absent)} of {len(KPROBE_SYMBOLS)}"
            + (f"; missing (renamed, inlined or not built): {', '.join(missing)}"
               if missing else "")
            + (f"; modules not loaded yet (a cluster loads them): {', '.join(unloaded)}"
               if unloaded else ""))


def _module_of(function: str) -> str:
    """The module (when not built in) that holds one of KPROBE_SYMBOLS."""
    return "bridge" if function.startswith("br_") else \
        "udp_tunnel" if function.startswith("udp_tunnel") else "vxlan"


# The raw tracepoints every run attaches (probes.TRACEPOINTS), by their tracefs group.
TRACEPOINT_GROUPS = {"net_dev_start_xmit": "net", "netif_receive_skb": "net", "netif_rx": "net",
                     "kfree_skb": "skb"}


def tracepoints() -> str:
    """Which of the tracepoints the probes attach to the kernel has, naming those it lacks."""
    if not mount_tracefs():
        return "unknown (no tracefs)"
    missing = [tp for tp, group in TRACEPOINT_GROUPS.items()
               if not (TRACEFS / "events" / group / tp).is_dir()]
    return f"{len(TRACEPOINT_GROUPS) - len(missing)} of {len(TRACEPOINT_GROUPS)}" \
        + (f"; missing: {', '.join(missing)}" if missing else "")


def kfree_skb_has_reason() -> bool | None:
    """Whether the kfree_skb tracepoint passes a drop reason (Linux 5.17 on); None when
    its format cannot be read (no tracefs)."""
    try:
        mount_tracefs()
        return " reason;" in (TRACEFS / "events/skb/kfree_skb/format").read_text()
    except OSError:
        return None


def bcc_version() -> str | None:
    try:
        import bcc
    except ImportError:
        return None
    return getattr(bcc, "__version__", "unknown")


def facts() -> list[Fact]:
    """Everything `dataplane doctor` reports, in order."""
    root = os.geteuid() == 0
    config = _config()
    kprobes = kprobes_available()
    headers, tree = header_source()
    bcc = bcc_version()
    has_btf = btf.VMLINUX.exists()
    return [
        Fact("root", "yes" if root else "no", root, "run as root (sudo dataplane ...)"),
        Fact("kernel", release(), True),
        Fact("kprobes", ("available" if kprobes else "not available")
             + (f" (CONFIG_KPROBES={config.get('CONFIG_KPROBES', 'unset')})" if config else ""),
             True, "" if kprobes else "tracepoints are used instead"),
        Fact("BTF", str(btf.VMLINUX) if has_btf else "missing", has_btf,
             "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        Fact("tracefs", str(TRACEFS) if mount_tracefs() else "not mounted", True),
        Fact("bcc", bcc or "missing", bcc is not None, "install python3-bpfcc (make setup)"),
        Fact("kernel headers", f"{headers}" + (f" ({tree})" if tree else ""), headers != "none",
             "install linux-headers-$(uname -r), or run make setup for a portable tree"),
        Fact("backends", "kprobes + tracepoints" if kprobes else "tracepoints", True),
        Fact("tracepoints", tracepoints(), True),
    ] + ([Fact("kprobe functions", kprobe_functions(), True)] if kprobes else []) + [
        Fact("drop reasons", {True: "yes (kfree_skb passes them)", None: "unknown (no tracefs)",
                              False: "no (kfree_skb has none before Linux 5.17): drops are "
                                     "shown without a reason"}[kfree_skb_has_reason()], True),
    ]
