"""Batched rtnetlink requests, encoded with pyroute2's message classes (rtmessages.py).

A Batch collects the requests for one namespace and sends them in a single
sendmsg; the kernel runs them in order and acks each one. Going below
IPRoute's request layer (mostly Python, per call) to its message classes makes a
request far cheaper to encode (bench_up measures the whole `up`), and the requests a
build sends are copied from templates (msgtemplate.py) that later runs find stored: a
build whose templates are all stored never imports pyroute2.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

# Names taken from the module itself, not through the package: pytest's pytester re-imports
# modules an inner run imported, and the package's attribute would name the older copy,
# whose Mac a value made with the newer one is not.
from dataplane.cluster.msgtemplate import Mac, Store, Template, Value, encode, template
from dataplane.resources import CACHE_DIR


# linux/rtnetlink.h, linux/netlink.h, linux/neighbour.h, linux/if.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 17, 18, 19, 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH, RTM_GETRULE = 28, 29, 30, 34
RTM_GETNSID = 90
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x200, 0x400, 0x800
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10  # a dump reply's flag: the table changed while it was dumped
IPCTNL_MSG_CT_DELETE = (1 << 8) | 2  # NFNL_SUBSYS_CTNETLINK
NETLINK_GET_STRICT_CHK = 12
NEW = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
SOL_NETLINK, NETLINK_EXT_ACK = 270, 11
IFF_UP = 0x1
NUD_INCOMPLETE, NUD_DELAY, NUD_PROBE, NUD_NOARP, NUD_PERMANENT = 0x01, 0x08, 0x10, 0x40, 0x80
NTF_USE, NTF_SELF = 0x1, 0x2
AF_BRIDGE = 7
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST, RTNH_F_ONLINK = 254, 3, 1, 0x4
HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
ACK_SECONDS = 10  # a batch the kernel acks none of for this long never will be


class NetlinkError(OSError):
    pass


def _makers():
    """rtmessages, imported at the first request that needs pyroute2 (see _add_shaped)."""
    from dataplane.cluster import rtmessages

    return rtmessages


@lru_cache(maxsize=None)
def _store() -> Store:
    """Templates kept for later runs, in a file named after what makes them: the makers,
    the constants they use (here), the templating, and pyroute2 (the file of the package
    an import would find): another version of any is another file."""
    here = Path(__file__).parent
    made_by = [here / name for name in ("rtmessages.py", "rtnl.py", "msgtemplate.py")]
    made_by += [found for entry in sys.path
                if (found := Path(entry or ".", "pyroute2", "__init__.py")).is_file()][:1]
    version = "-".join(f"{st.st_size:x}{st.st_mtime_ns:x}" for st in map(Path.stat, made_by))
    return Store(CACHE_DIR / f"rtnl-templates-{zlib.crc32(version.encode()):08x}.json")


# Templates by key (see Batch._add_shaped); None for a shape that cannot be templated.
_TEMPLATES: dict[str, Template | None] = {}


def _maker(maker: str, shape: tuple) -> Callable[..., Any]:
    """rtmessages' maker, its shape given: it takes the values."""
    return partial(getattr(_makers(), maker), *shape)


def _stored(key: str, values: tuple[Value, ...]) -> Template | None:
    """The template the store keeps under key, if values fit it."""
    found = _store().get(key)
    if found is None or len(found.offsets) != len(values):
        return None
    try:
        return found if found.fill(values, 1) else None
    except ValueError:  # not this shape's: made again, and the store's replaced
        return None


def _made(key: str, build: Callable[..., Any], values: tuple[Value, ...]) -> Template | None:
    """A template made by pyroute2 and checked against it (see msgtemplate.template), kept
    in the store; None for a shape that cannot be templated."""
    found = template(build, values)
    if found is not None:
        _store().put(key, found)
    return found


@dataclass
class Batch:
    """Requests for the namespace that sock was opened in, sent together."""

    sock: socket.socket
    where: str  # the namespace, for error messages
    _messages: list[bytes] = field(default_factory=list)
    _what: list[str] = field(default_factory=list)
    _fds: list[int] = field(default_factory=list)  # namespace files the requests name

    def _add(self, what: str, maker: str, *args: Any) -> None:
        """Add the request rtmessages' maker makes of args, encoded by pyroute2."""
        self._messages.append(encode(getattr(_makers(), maker), args, len(self._messages) + 1))
        self._what.append(what)

    def _add_shaped(self, what: str, maker: str, shape: tuple,
                    values: tuple[Value, ...]) -> None:
        """Add rtmessages' maker(*shape, *values), copied from the template of its shape: the
        same maker and shape, values of the same kinds (and names of the same lengths).
        A template is looked for in memory, then in the store; only a shape found in
        neither makes pyroute2 be imported, to make its template (then stored)."""
        # a name by its length in bytes (what the message holds, before its NUL), a MAC
        # (six bytes whatever its text) by its kind
        kinds = tuple(len(v.encode()) if isinstance(v, str) and not isinstance(v, Mac)
                      else type(v).__name__ for v in values)
        key = f"{maker}{shape}{kinds}"
        found = _TEMPLATES.get(key, key)
        if found is key:
            found = _TEMPLATES[key] = _stored(key, values) or \
                _made(key, _maker(maker, shape), values)
        sequence = len(self._messages) + 1
        self._messages.append(found.fill(values, sequence) if found
                              else encode(_maker(maker, shape), values, sequence))
        self._what.append(what)

    # links

    def bridge_add(self, index: int, ifname: str, *, mtu: int,
                   address: str | None = None) -> None:
        """A bridge, up, with a fixed index."""
        self._add_shaped(f"link add {ifname} type bridge", "bridge", (),
                         (index, ifname, mtu) + ((Mac(address),) if address else ()))

    def vxlan_add(self, index: int, ifname: str, *, mtu: int, address: str, vni: int,
                  local: IPv4Address, link: int, port: int, learning: bool) -> None:
        """A VXLAN device, up, with a fixed index, sending from local through link."""
        self._add_shaped(f"link add {ifname} type vxlan", "vxlan", (port, int(learning)),
                         (index, ifname, mtu, Mac(address), vni, local, link))

    def veth_add(self, index: int, ifname: str, *, mtu: int, master: int | None,
                 peer_ifname: str, peer_index: int, peer_netns: Path, peer_address: str) -> None:
        """A veth pair, the peer made straight in the namespace bound at peer_netns. Only
        this end comes up: the kernel cannot open a peer before the pair is linked."""
        fd = os.open(peer_netns, os.O_RDONLY)  # the kernel reads it when it gets the batch
        self._fds.append(fd)
        values = (index, ifname, mtu, peer_index, peer_ifname, Mac(peer_address), fd)
        self._add_shaped(f"link add {ifname} type veth", "veth", (),
                         values + ((master,) if master else ()))

    def link_up(self, index: int) -> None:
        self._add_shaped(f"link set {index} up", "link_up", (), (index,))

    def link_set(self, ifname: str, *, master: int | None = None, mtu: int | None = None) -> None:
        """Change a link found by name: its master (0 detaches it) or its MTU."""
        self._add(f"link set {ifname}", "link_set", ifname, master, mtu)

    def bridge_fdb_flush(self, index: int) -> None:
        """Forget what bridge index learned: the kernel keeps its static entries."""
        self._add_shaped(f"bridge fdb flush {index}", "bridge_fdb_flush", (), (index,))

    def link_del(self, index: int) -> None:
        self._add(f"link del {index}", "link_del", index)

    # addresses, routes, neighbours

    def addr_add(self, index: int, address: IPv4Address, prefixlen: int) -> None:
        self._add_shaped(f"addr add {address}/{prefixlen}", "addr", (prefixlen,),
                         (index, address))

    def route_add(self, dst: IPv4Network, gateway: IPv4Address, oif: int,
                  onlink: bool = False) -> None:
        values = (gateway, oif) + ((dst.network_address,) if dst.prefixlen else ())
        self._add_shaped(f"route add {dst} via {gateway}", "route", (dst.prefixlen, onlink),
                         values)

    def route_del(self, dst: IPv4Network, oif: int) -> None:
        self._add(f"route del {dst}", "route_del", dst.prefixlen, oif,
                  dst.network_address if dst.prefixlen else None)

    def neigh_del(self, index: int, dst: IPv4Address) -> None:
        self._add_shaped(f"neigh del {dst} dev {index}", "neigh",
                         (RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK), (index, dst))

    def neigh_add(self, index: int, dst: IPv4Address, lladdr: str) -> None:
        """A permanent ARP entry."""
        self._add_shaped(f"neigh add {dst} lladdr {lladdr}", "permanent_neigh", (),
                         (index, dst, Mac(lladdr)))

    def neigh_use(self, index: int, dst: str) -> None:
        """Use the neighbour dst as a packet for it would: the kernel resolves it when it
        has no valid entry (a new one is made), and otherwise leaves it be."""
        self._add(f"neigh use {dst} dev {index}", "neigh_use", index, dst)

    def conntrack_flush(self) -> None:
        """Delete every IPv4 connection tracking entry (for a NETLINK_NETFILTER socket)."""
        self._add_shaped("conntrack flush", "conntrack_flush", (), ())

    def fdb_append(self, index: int, lladdr: str, dst: IPv4Address) -> None:
        """A permanent forwarding entry on a VXLAN device: lladdr is behind remote dst."""
        self._add_shaped(f"fdb append {lladdr} dst {dst}", "fdb",
                         (RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND),
                         (index, Mac(lladdr), dst))

    def fdb_del(self, index: int, lladdr: str, dst: IPv4Address) -> None:
        self._add_shaped(f"fdb del {lladdr} dst {dst}", "fdb",
                         (RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK), (index, Mac(lladdr), dst))

    def send(self) -> None:
        """Send every request at once, then check each ack; raise on the first error."""
        try:
            self._send()
        finally:
            self.close()

    def close(self) -> None:
        """Forget the requests (sent or not) and close the namespace files they name."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._messages.clear()
        self._what.clear()

    def _send(self) -> None:
        if not self._messages:
            return
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.sendall(b"".join(self._messages))
        pending = len(self._messages)
        error: NetlinkError | None = None
        while pending:
            data = self._answer(pending)
            offset = 0
            while offset < len(data):
                length, kind, _, seq, _ = HEADER.unpack_from(data, offset)
                if kind == NLMSG_ERROR:
                    pending -= 1
                    code = struct.unpack_from("=i", data, offset + HEADER.size)[0]
                    if code and error is None:
                        error = self._error(-code, data[offset:offset + length], seq)
                offset += (length + 3) & ~3
        if error:
            raise error

    def _answer(self, pending: int) -> bytes:
        """The kernel's next acks. It acks every request it reads, at once: none within
        ACK_SECONDS means requests it could not read as sent (a message whose length is
        not its own), and a wait that would never end."""
        self.sock.settimeout(ACK_SECONDS)
        try:
            return self.sock.recv(65536)
        except socket.timeout:  # TimeoutError since Python 3.10; not before
            raise NetlinkError(errno.ETIMEDOUT, f"{pending} of {len(self._messages)} requests "
                               f"in {self.where} unanswered after {ACK_SECONDS} s: the kernel "
                               "could not read them") from None
        finally:
            self.sock.settimeout(None)

    def _error(self, errno_: int, raw: bytes, seq: int) -> NetlinkError:
        try:  # the kernel's own words, decoded by pyroute2's class
            reason = _makers().error_text(raw) or os.strerror(errno_)
        except ImportError:  # without pyroute2 the refusal is still the kernel's, not that
            reason = os.strerror(errno_)
        return NetlinkError(errno_, f"{self._what[seq - 1]} in {self.where} failed: {reason}")


class DumpInterrupted(NetlinkError):
    """The table changed while the kernel dumped it (NLM_F_DUMP_INTR): ask again."""


def replies(sock: socket.socket, what: str) -> Iterator[tuple[bytes, int, int]]:
    """(buffer, offset, length) of each message a dump request gets, until its end; then
    DumpInterrupted if the table changed meanwhile (the dump may miss an entry)."""
    interrupted = False
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset < len(data):
            length, got, flags, _, _ = HEADER.unpack_from(data, offset)
            interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
            if got == NLMSG_DONE:
                if interrupted:
                    raise DumpInterrupted(errno.EINTR, f"dump {what}: the kernel's table "
                                          "changed while it was dumped")
                return
            if got == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + HEADER.size)[0]
                raise NetlinkError(code, f"dump {what}: {os.strerror(code)}")
            yield data, offset, length
            offset += (length + 3) & ~3


def request(msg, kind: int, flags: int):
    """msg (a pyroute2 message) as a request of kind, with flags."""
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    return msg


def ask(sock: socket.socket, msg, kind: int, flags: int) -> None:
    """Send one request of kind (a get: dumps are rtdump's), not batched."""
    request(msg, kind, flags)["header"]["sequence_number"] = 1
    msg.encode()
    sock.sendall(bytes(msg.data))


def get(sock: socket.socket, msg, kind: int):
    """The one entry a get request of kind answers (a route lookup, a neighbour),
    decoded with msg's own class; the kernel's refusal is raised."""
    ask(sock, msg, kind, NLM_F_REQUEST)
    data = sock.recv(1 << 16)
    length, got = HEADER.unpack_from(data)[:2]
    if got == NLMSG_ERROR:
        code = -struct.unpack_from("=i", data, HEADER.size)[0]
        raise NetlinkError(code, os.strerror(code))
    entry = type(msg)(data[:length])
    entry.decode()
    return entry


class Sender:
    """Sends batches in order from a thread of its own, so that the kernel carries
    out one batch while the caller encodes the next. The first failure skips the
    rest and is raised to the caller by its next submit or by leaving the block."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._stop = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, name="rtnl-send")
        self._thread.start()

    @contextmanager
    def batch(self, sock: socket.socket, where: str) -> Iterator[Batch]:
        """A new Batch for the caller to fill, sent when the block ends without error."""
        b = Batch(sock, where)
        try:
            yield b
            self._raise_failure()
        except BaseException:
            b.close()
            raise
        self._queue.put(b)

    def _work(self) -> None:
        try:
            while (b := self._queue.get()) is not None:
                try:
                    if self._failure is None and not self._stop:
                        b.send()
                except BaseException as err:  # raised in the caller's thread
                    self._failure = err
                finally:
                    b.close()
        finally:
            self._done.set()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        """Wait until every batch is sent (or, after an error, dropped)."""
        self._stop = kind is not None
        self._queue.put(None)
        self._done.wait()
        self._thread.join()  # done: gone in a moment (a fork may follow, verify/forked.py)
        if kind is None:
            self._raise_failure()
