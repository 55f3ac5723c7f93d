"""Compiled probes kept between runs, so that bcc's clang step (most of a load) is paid
once per kernel and probe source, not by every `verify`, `trace` or `capture`.

After bcc compiled the probes, save() writes each program's instructions and each map's
shape, with a checksum, to CACHE_DIR under a key of everything the compile depended on
(cache_file()). A later load() with the same key creates fresh maps (every run its own:
runs on other clusters may be going on), puts their fds where the instructions refer to
maps, and hands the programs to the kernel, which verifies them as it would bcc's: no
clang, no import of bcc's Python, and only bcc's runtime library loaded (libbcc_bpf, not
libbcc, which links clang in). An entry that cannot be read, fails its checksum or that the
kernel refuses is compiled again (and rewritten).

Programs offers the part of bcc's BPF object the loader and the tracer use: maps by name
(typed keys and values from bcc's descriptions, c_type()), the ring buffer, attaching raw
tracepoints and kprobes. Ring buffers only: a perf buffer's per-CPU set-up stays bcc's.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import json
import os
import struct
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from dataplane.bpf import btf, kernel

PROG_TYPES = {"tp_": 17, "fn_": 2}  # BPF_PROG_TYPE_RAW_TRACEPOINT, _KPROBE, by name prefix
LD_IMM64 = 0x18
PSEUDO_MAP_FD = 1  # the src_reg of an ld_imm64 whose immediate is a map's fd
PERCPU_TYPES = (5, 6)  # BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY
RINGBUF_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


# bcc's runtime: maps, programs, attaching and the ring buffer (libbcc_bpf, 7 ms to load)
RUNTIME = ("libbcc_bpf.so.0", (
    ("bcc_create_map", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_int]),
    ("bcc_prog_load", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int,
                                     ctypes.c_char_p, ctypes.c_uint, ctypes.c_int, ctypes.c_char_p,
                                     ctypes.c_uint]),
    ("bpf_attach_raw_tracepoint", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
    ("bpf_attach_kprobe", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                         ctypes.c_char_p, ctypes.c_uint64, ctypes.c_int]),
    ("bpf_detach_kprobe", ctypes.c_int, [ctypes.c_char_p]),
    ("bpf_close_perf_event_fd", ctypes.c_int, [ctypes.c_int]),
    ("bpf_lookup_elem", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    ("bpf_update_elem", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_ulonglong]),
    ("bpf_delete_elem", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
    ("bpf_new_ringbuf", ctypes.c_void_p, [ctypes.c_int, RINGBUF_CALLBACK, ctypes.c_void_p]),
    ("bpf_poll_ringbuf", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    ("bpf_consume_ringbuf", ctypes.c_int, [ctypes.c_void_p]),
    ("bpf_free_ringbuf", None, [ctypes.c_void_p])))
# used where the library has them: bcc 0.18 (Debian 11's) has no bpf_update_batch
OPTIONAL = {RUNTIME[0]: (
    ("bpf_update_batch", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.POINTER(ctypes.c_uint32)]),)}
# bcc's compiler, for what it compiled (save()): libbcc, LLVM's clang linked in (30 ms to
# load), loaded by bcc then already
COMPILER = ("libbcc.so.0", tuple(
    (name, restype, [ctypes.c_void_p] + ([ctypes.c_ulonglong] if by_id else []))
    for name, restype, by_id in (
        ("bpf_num_tables", ctypes.c_ulonglong, False),
        ("bpf_table_name", ctypes.c_char_p, True),
        ("bpf_table_fd_id", ctypes.c_int, True),
        ("bpf_table_type_id", ctypes.c_int, True),
        ("bpf_table_max_entries_id", ctypes.c_ulonglong, True),
        ("bpf_table_flags_id", ctypes.c_int, True),
        ("bpf_table_key_size_id", ctypes.c_size_t, True),
        ("bpf_table_leaf_size_id", ctypes.c_size_t, True),
        ("bpf_table_key_desc_id", ctypes.c_char_p, True),
        ("bpf_table_leaf_desc_id", ctypes.c_char_p, True),
        ("bpf_module_license", ctypes.c_char_p, False),
        ("bpf_module_kern_version", ctypes.c_uint, False))))


def _open(library: tuple[str, tuple]) -> ctypes.CDLL:
    """Our own handle on one of bcc's libraries, its functions declared here (bcc's Python
    declares only some, and per version)."""
    name, functions = library
    lib_ = ctypes.CDLL(name, use_errno=True)
    for function, restype, argtypes in functions:
        declared = getattr(lib_, function)
        declared.restype, declared.argtypes = restype, argtypes
    for function, restype, argtypes in OPTIONAL.get(name, ()):
        if hasattr(lib_, function):
            declared = getattr(lib_, function)
            declared.restype, declared.argtypes = restype, argtypes
    return lib_


_libs: dict[str, ctypes.CDLL] = {}


def lib(library: tuple[str, tuple] = RUNTIME) -> ctypes.CDLL:
    if library[0] not in _libs:
        _libs[library[0]] = _open(library)
    return _libs[library[0]]


def usable() -> bool:
    """Whether bcc's runtime library has every function the cache needs (else: compile)."""
    try:
        lib()
    except (OSError, AttributeError):
        return False
    return True


def cache_file(directory: Path, text: str, cflags: list[str], headers: Path) -> Path:
    """Where the compile of text with cflags is kept: named by everything it depended on
    (the kernel and its BTF, bcc's libraries, which compile and hold bcc's helpers, the
    header tree)."""
    library = _library_path()
    what = json.dumps([text, cflags, kernel.release(), str(headers), _stamp(btf.VMLINUX),
                       str(library), _stamp(library)])
    return directory / f"probes-{hashlib.sha256(what.encode()).hexdigest()[:32]}.json"


def _library_path() -> Path | None:
    """The file of bcc's runtime library this process loaded (a package upgrade may keep
    its version): the compiler, libbcc, comes in the same package (libbpfcc)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        if f"/{RUNTIME[0]}" in line:
            return Path(line.split()[-1])
    return None


def _stamp(path: Path | None) -> list[int] | None:
    try:
        stat = path.stat()  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def save(where: Path, bpf: Any, functions: list[str]) -> None:
    """Keep bpf's (a compiled bcc BPF) maps and the named functions' instructions.
    Nothing is kept when an instruction refers to something other than one of its maps."""
    lib_, module = lib(COMPILER), bpf.module
    maps = []
    for i in range(lib_.bpf_num_tables(module)):
        maps.append({"name": lib_.bpf_table_name(module, i).decode(),
                     "fd": lib_.bpf_table_fd_id(module, i),
                     "type": lib_.bpf_table_type_id(module, i),
                     "key_size": lib_.bpf_table_key_size_id(module, i),
                     "leaf_size": lib_.bpf_table_leaf_size_id(module, i),
                     "max_entries": lib_.bpf_table_max_entries_id(module, i),
                     "flags": lib_.bpf_table_flags_id(module, i),
                     "key_desc": (lib_.bpf_table_key_desc_id(module, i) or b"").decode(),
                     "leaf_desc": (lib_.bpf_table_leaf_desc_id(module, i) or b"").decode()})
    fds = {m["fd"] for m in maps}
    programs = {}
    for name in functions:
        insns = bpf.dump_func(name.encode())
        if any(src != PSEUDO_MAP_FD or imm not in fds for src, imm in _map_refs(insns)):
            return
        programs[name] = base64.b64encode(insns).decode()
    payload = {"license": lib_.bpf_module_license(module).decode(),
               "kern_version": lib_.bpf_module_kern_version(module), "maps": maps,
               "programs": programs}
    tmp = where.with_suffix(f".{os.getpid()}.tmp")
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"sha256": _digest(payload), "payload": payload}))
        tmp.rename(where)
    except OSError:
        pass  # not root: the next load compiles again
    finally:
        tmp.unlink(missing_ok=True)


def _loads(insns: bytes) -> Iterator[tuple[int, int, int]]:
    """(offset, src_reg, immediate) of every ld_imm64 that loads something other than a
    number (its src_reg says what: a map's fd, a map value, a BTF id...)."""
    for offset in range(0, len(insns) - 8, 8):
        code, regs, _, imm = struct.unpack_from("<BBhi", insns, offset)
        if code == LD_IMM64 and regs >> 4:
            yield offset, regs >> 4, imm


def _map_refs(insns: bytes) -> list[tuple[int, int]]:
    """(src_reg, immediate) of each such load."""
    return [(src, imm) for _, src, imm in _loads(insns)]


def patched(insns: bytes, fds: dict[int, int]) -> bytes:
    """insns with each map fd of the compiling process replaced by this one's."""
    out = bytearray(insns)
    for offset, src, imm in _loads(insns):
        if src == PSEUDO_MAP_FD:
            struct.pack_into("<i", out, offset + 4, fds[imm])
    return bytes(out)


def load(where: Path, now: Collection[str] | None = None) -> "Programs | None":
    """The probes kept at where, with maps of their own, the programs named now loaded
    (all of them by default; the others when they are attached); None when there are
    none there or they cannot be used (the caller compiles)."""
    try:
        kept = json.loads(where.read_text())
        data = kept["payload"]
        if kept["sha256"] != _digest(data):  # damaged on disk: compile again
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    programs = Programs(data)
    try:
        programs.create(now)
    except Exception:  # whatever makes an entry unusable: it is compiled instead
        programs.cleanup()
        return None
    return programs


def _unlimit_locked_memory() -> None:
    """As bcc does before it makes maps: before Linux 5.11 they count against
    RLIMIT_MEMLOCK, which an 8 MiB ring buffer exceeds."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if limit != (resource.RLIM_INFINITY, resource.RLIM_INFINITY):
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK,
                               (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass  # not allowed: the map is refused and the probes compiled instead


# bcc's names of C types in its descriptions of map keys and values
C_TYPES: dict[str, Any] = {
    "_Bool": ctypes.c_bool, "char": ctypes.c_char, "signed char": ctypes.c_byte,
    "unsigned char": ctypes.c_ubyte, "short": ctypes.c_short,
    "unsigned short": ctypes.c_ushort, "int": ctypes.c_int, "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long, "unsigned long": ctypes.c_ulong, "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong, "void *": ctypes.c_void_p}


def c_type(desc: Any) -> Any:
    """The ctypes type of one of bcc's type descriptions ("unsigned int", or [name,
    [[field, type] or [field, type, [length]], ...], "struct" | "struct_packed"]): what
    our maps use, without importing bcc (a seventh of a warm run). Anything else raises:
    the probes are compiled instead."""
    if isinstance(desc, str):
        return C_TYPES[desc]
    name, fields, kind = desc
    if kind not in ("struct", "struct_packed"):
        raise ValueError(f"{name}: a {kind} is not read here")
    members = []
    for field in fields:
        member = c_type(field[1])
        if len(field) == 3:
            if not isinstance(field[2], list) or len(field[2]) != 1:
                raise ValueError(f"{name}.{field[0]}: bit fields are not read here")
            member = member * field[2][0]
        members.append((field[0], member))
    namespace: dict[str, Any] = {"_fields_": members}
    if kind == "struct_packed":
        namespace["_pack_"] = 1
    return type(name, (ctypes.Structure,), namespace)


def possible_cpus() -> int:
    """How many values a per-CPU map holds for a key: one per possible CPU."""
    count = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def _kprobe_event(event: bytes) -> bytes:
    """The name of a kprobe on function event, as bcc names it (the loader lists them)."""
    return b"p_" + event.replace(b"+", b"_").replace(b".", b"_")


class MapError(Exception):
    """A map the kernel would not update (full, or wrong): as bcc's tables raise."""


# The kernel has no batched map operations (before Linux 5.6): EINVAL; ENOTSUPP (524),
# EOPNOTSUPP: not for this kind of map
NO_BATCHES = (errno.EINVAL, 524, errno.EOPNOTSUPP)
_batches: list[Any] = []  # bcc's bpf_update_batch, once looked up; None: none to use


def _update_batch() -> Any:
    """bcc's bpf_update_batch, or None: not in the runtime (OPTIONAL), or refused by this
    kernel already."""
    if not _batches:
        _batches.append(getattr(lib(), "bpf_update_batch", None) if usable() else None)
    return _batches[0]


def update_all(table: Any, keys: list[Any], leaf: Any) -> None:
    """table[key] = leaf for every key, in one system call (BPF_MAP_UPDATE_BATCH) where
    a verify wave would make thousands; one per key without batches (an older bcc or
    kernel). table: bcc's or ours (a map_fd, a Key type); MapError as one update raises it."""
    batched = _update_batch() if keys else None
    if batched is not None:
        count = ctypes.c_uint32(len(keys))
        batch = (table.Key * len(keys))(*keys)
        leaves = (type(leaf) * len(keys))(*[leaf] * len(keys))
        if batched(table.map_fd, batch, leaves, ctypes.byref(count)) == 0:
            return
        if ctypes.get_errno() not in NO_BATCHES:
            raise MapError(f"map update: {os.strerror(ctypes.get_errno())}")
        _batches[0] = None  # the kernel has none: not asked again
    for key in keys:
        table[key] = leaf


class Map:
    """One map by fd, with bcc's typed Key and Leaf."""

    def __init__(self, fd: int, kind: int, key: type, leaf: type, cpus: int,
                 owner: "Programs"):
        self.fd, self.kind, self.Key, self.Leaf, self._cpus = fd, kind, key, leaf, cpus
        self._owner = owner

    @property
    def map_fd(self) -> int:
        """As bcc's tables name it."""
        return self.fd

    def open_ring_buffer(self, callback: Callable[[Any, int, int], Any]) -> None:
        self._owner.open_ring_buffer(self.fd, callback)

    def __getitem__(self, key: Any) -> Any:
        if self.kind in PERCPU_TYPES:  # the kernel writes a value per CPU: getvalue()
            raise TypeError("read per-CPU maps with getvalue()")
        leaf = self.Leaf()
        if lib().bpf_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(leaf)) < 0:
            raise KeyError(key)
        return leaf

    def __setitem__(self, key: Any, leaf: Any) -> None:
        if self.kind in PERCPU_TYPES:
            raise TypeError("per-CPU maps are only read here")
        if lib().bpf_update_elem(self.fd, ctypes.byref(key), ctypes.byref(leaf), 0) < 0:
            # not an OSError: the probes' own failure, never a probe the network refused
            raise MapError(f"map update: {os.strerror(ctypes.get_errno())}")

    def __delitem__(self, key: Any) -> None:
        if lib().bpf_delete_elem(self.fd, ctypes.byref(key)) < 0:
            raise KeyError(key)

    def getvalue(self, key: Any) -> list[int]:
        """A per-CPU map's values for key, one per possible CPU."""
        step = (ctypes.sizeof(self.Leaf) + 7) // 8 * 8
        raw = (ctypes.c_char * (step * self._cpus))()
        if lib().bpf_lookup_elem(self.fd, ctypes.byref(key), raw) < 0:
            raise KeyError(key)
        return [self.Leaf.from_buffer_copy(raw, i * step).value for i in range(self._cpus)]


class Programs:
    """Maps and programs loaded from a cache entry: what the probes need of bcc's BPF."""

    def __init__(self, data: dict):
        self._data = data
        self._maps: dict[str, Map] = {}
        self._fds: dict[int, int] = {}  # the compiling process's map fd -> ours
        self._programs: dict[str, int] = {}
        self.raw_tracepoint_fds: dict[bytes, int] = {}
        self.kprobe_fds: dict[bytes, int] = {}
        self._ringbuf: int | None = None
        self._callback: Any = None  # kept alive while the kernel's buffer may call it

    def create(self, now: Collection[str] | None = None) -> None:
        cpus = possible_cpus()
        _unlimit_locked_memory()
        for m in self._data["maps"]:
            fd = lib().bcc_create_map(m["type"], m["name"].encode()[:15], m["key_size"],
                                      m["leaf_size"], m["max_entries"], m["flags"])
            if fd < 0:
                raise OSError(ctypes.get_errno(), f"map {m['name']}")
            self._fds[m["fd"]] = fd
            key, leaf = (c_type(json.loads(d)) if d else ctypes.c_int
                         for d in (m["key_desc"], m["leaf_desc"]))
            if m["key_size"] and (ctypes.sizeof(key), ctypes.sizeof(leaf)) != \
                    (m["key_size"], m["leaf_size"]):
                raise ValueError(f"map {m['name']}: types do not match its sizes")
            self._maps[m["name"]] = Map(fd, m["type"], key, leaf, cpus, self)
        for name in self._data["programs"] if now is None else now:
            self._program(name)  # a refusal now means compile, not skip

    def _program(self, name: str) -> int:
        if name not in self._programs:
            insns = patched(base64.b64decode(self._data["programs"][name]), self._fds)
            kind = next(t for prefix, t in PROG_TYPES.items() if name.startswith(prefix))
            fd = lib().bcc_prog_load(kind, name.encode()[:15], insns, len(insns),
                                     self._data["license"].encode(), self._data["kern_version"],
                                     0, None, 0)
            if fd < 0:
                raise OSError(ctypes.get_errno(), f"program {name}")
            self._programs[name] = fd
        return self._programs[name]

    def __getitem__(self, name: bytes) -> Map:
        return self._maps[name.decode()]

    def attach_raw_tracepoint(self, tp: bytes, fn_name: bytes) -> None:
        fd = lib().bpf_attach_raw_tracepoint(self._program(fn_name.decode()), tp)
        if fd < 0:
            raise Exception(f"failed to attach BPF to raw tracepoint {tp.decode()}")
        self.raw_tracepoint_fds[tp] = fd

    def detach_raw_tracepoint(self, tp: bytes) -> None:
        os.close(self.raw_tracepoint_fds.pop(tp))

    def attach_kprobe(self, event: bytes, fn_name: bytes) -> None:
        ev_name = _kprobe_event(event)
        if ev_name in self.kprobe_fds:
            raise Exception(f"kprobe {event.decode()} is already attached")
        fd = lib().bpf_attach_kprobe(self._program(fn_name.decode()), 0, ev_name, event, 0, 0)
        if fd < 0:
            raise Exception(f"failed to attach BPF to kprobe {event.decode()}")
        self.kprobe_fds[ev_name] = fd

    def detach_kprobe(self, event: bytes) -> None:
        self._detach_event(_kprobe_event(event))

    def _detach_event(self, ev_name: bytes) -> None:
        lib().bpf_close_perf_event_fd(self.kprobe_fds.pop(ev_name))
        lib().bpf_detach_kprobe(ev_name)

    def open_ring_buffer(self, fd: int, callback: Callable[[Any, int, int], Any]) -> None:
        def call(ctx: Any, data: int, size: int) -> int:
            callback(ctx, data, size)
            return 0

        self._callback = RINGBUF_CALLBACK(call)
        manager = lib().bpf_new_ringbuf(fd, self._callback, None)
        if not manager:
            raise OSError(ctypes.get_errno() or errno.EINVAL, "cannot open the ring buffer")
        self._ringbuf = manager

    def ring_buffer_poll(self, timeout: int = -1) -> None:
        lib().bpf_poll_ringbuf(self._ringbuf, timeout)

    def ring_buffer_consume(self) -> None:
        lib().bpf_consume_ringbuf(self._ringbuf)

    def cleanup(self) -> None:
        """Detach everything and free the maps, as bcc's cleanup() does."""
        for tp in list(self.raw_tracepoint_fds):
            self.detach_raw_tracepoint(tp)
        for ev_name in list(self.kprobe_fds):
            self._detach_event(ev_name)
        if self._ringbuf:
            lib().bpf_free_ringbuf(self._ringbuf)
            self._ringbuf = None
        for fd in [*self._programs.values(), *self._fds.values()]:
            os.close(fd)
        self._programs.clear()
        self._fds.clear()
