"""Named network namespaces made in-process, compatible with `ip netns`.

A namespace is made by a worker thread that unshares its own network
namespace (so the main thread never leaves the root one), bind-mounts it at
/run/netns/NAME and opens a netlink socket there. A socket belongs to the
namespace it was created in, so later netlink calls made from the main thread
act on that namespace and nothing else. This avoids forking a helper per
namespace (pyroute2's netns.create and IPRoute(netns=...) both fork).
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import resource
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

NETNS_RUN = Path("/run/netns")  # where `ip netns` keeps its names
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETLINK_ROUTE = 0
# Threads making namespaces: the kernel sets two up in parallel faster than one
# after the other (bench_up's 16 x 32 `up` shows it).
WORKERS = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, flags: int) -> None:
    _check(_libc.mount(source.encode(), target.encode(), b"none", flags, None),
           f"mount {target}")


def _prepare_run_dir() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so that
    unmounting a name there reaches every mount namespace that copied it."""
    NETNS_RUN.mkdir(parents=True, exist_ok=True)
    try:
        _mount("", str(NETNS_RUN), MS_SHARED | MS_REC)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        _mount(str(NETNS_RUN), str(NETNS_RUN), MS_BIND | MS_REC)  # not a mount point yet
        _mount("", str(NETNS_RUN), MS_SHARED | MS_REC)


def path(name: str) -> Path:
    return NETNS_RUN / name


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


class Creation:
    """Namespaces made by worker threads while the caller goes on: socket(name)
    waits for just the namespace it needs, wait() for all of them.

    Workers take the names in turn, so namespaces appear roughly in the order
    given. sysctls(name) gives the sysctls to write inside each new namespace.
    start() starts them; on failure, or if the caller is interrupted (start() included),
    abort() removes what was made.
    """

    def __init__(self, names: Iterable[str],
                 sysctls: Callable[[str], dict[str, str]] | None = None):
        _prepare_run_dir()
        self._names = list(names)
        allow_fds(2 * len(self._names) + 64)  # a socket and a namespace fd each
        self._sysctls = sysctls
        self._sockets: dict[str, socket.socket] = {}
        self._made: list[str] = []
        self._failure: BaseException | None = None
        self._stop = False
        # Waited on instead of Thread.join, which a signal can cut short and leave
        # returning early the next time (close() joins them only once they are done).
        self._changed = threading.Condition()
        self._working = 0  # threads started and not yet done
        self._threads = [threading.Thread(target=self._work, args=(self._names[k::WORKERS],),
                                          name=f"netns-create-{k}") for k in range(WORKERS)]

    def start(self) -> None:
        """Start the workers, a Ctrl-C or SIGTERM held back until they all run: one that
        stopped the starting half-way would leave close() waiting for a thread that never
        ran (the signal is raised once they run; the caller aborts)."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._working = len(self._threads)
            for thread in self._threads:
                thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _work(self, names: list[str]) -> None:
        try:
            for name in names:
                if self._stop:
                    return
                self._make(name)
        except BaseException as err:  # raised in the caller's thread by socket()
            self._failure = self._failure or err
            self._stop = True
        finally:
            with self._changed:
                self._working -= 1
                self._changed.notify_all()

    def _make(self, name: str) -> None:
        """Make namespace name in this thread: the thread stays in it until the next."""
        target = path(name)
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
        self._made.append(name)
        _check(_libc.unshare(CLONE_NEWNET), f"unshare for {name}")
        _mount("/proc/thread-self/ns/net", str(target), MS_BIND)
        sock = _netlink_socket()
        for key, value in (self._sysctls(name) if self._sysctls else {}).items():
            write_sysctl(key, value)
        with self._changed:
            self._sockets[name] = sock
            self._changed.notify_all()

    def socket(self, name: str) -> socket.socket:
        """A netlink socket opened in namespace name, once it is made."""
        with self._changed:
            self._changed.wait_for(lambda: name in self._sockets or self._failure
                                   or not self._working)
            if name not in self._sockets:
                raise self._failure or KeyError(name)
            return self._sockets[name]

    def wait(self) -> None:
        """Return once every namespace is made; raise what stopped one being made."""
        for name in self._names:
            self.socket(name)

    def close(self) -> None:
        """Stop making namespaces and close the sockets; the namespaces stay."""
        with self._changed:
            self._stop = True
            self._changed.wait_for(lambda: not self._working)
        for thread in self._threads:  # done: gone in a moment (a fork may follow, forked.py)
            if thread.ident is not None:  # started
                thread.join()
        for sock in self._sockets.values():
            sock.close()

    def abort(self) -> None:
        """close(), and remove every namespace made so far."""
        self.close()
        remove(self._made)


def allow_fds(needed: int) -> None:
    """Lift the soft fd limit for big clusters."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def remove(names: Iterable[str]) -> list[str]:
    """Unmount and unlink each named namespace that exists; return those removed.

    The kernel frees a namespace once nothing refers to it: callers close
    their sockets first, and its veths vanish with it.
    """
    removed = []
    for name in names:
        target = path(name)
        if not target.exists():
            continue
        _libc.umount2(str(target).encode(), MNT_DETACH)  # fails harmlessly if never mounted
        target.unlink()
        removed.append(name)
    return removed


def exists(name: str) -> bool:
    return path(name).exists()


def listed(prefix: str) -> list[str]:
    """The named namespaces whose names start with prefix, sorted."""
    if not NETNS_RUN.is_dir():
        return []
    return sorted(entry.name for entry in NETNS_RUN.iterdir() if entry.name.startswith(prefix))


def sysctl_path(key: str) -> str:
    """The /proc/sys file of key; a '/' in a part stands for a '.' of a device name, as
    sysctl(8) writes net.ipv4.conf.flannel/1.forwarding. A string, not a Path: the audit
    reads a few per namespace."""
    return "/proc/sys/" + "/".join(part.replace("/", ".") for part in key.split("."))


def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl of the calling thread's network namespace (net.* keys are per namespace)."""
    with open(sysctl_path(key), "w") as written:
        written.write(value)


def read_sysctl(key: str) -> str | None:
    """A sysctl of the calling thread's namespace, whitespace normalised; None if absent."""
    try:
        with open(sysctl_path(key)) as value:
            return " ".join(value.read().split())
    except FileNotFoundError:
        return None


def socket_in(name: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket of namespace name, opened by a thread that enters it, so the
    caller's own namespace never changes. The socket stays in that namespace."""
    made: list[socket.socket] = []
    run_in(name, lambda: made.append(socket.socket(family, kind, proto)))
    return made[0]


def each(names: Iterable[str], work: Callable[[str], T]) -> dict[str, T | None]:
    """work(name) run inside each namespace, by one thread that enters them in turn; None
    where the namespace is gone. One thread, not a few: the works are Python that holds
    the interpreter's lock, so more threads only add switches between them (a verify's
    audit took 110 ms of CPU with four, 67 ms with one, and longer on the clock)."""
    pending = list(names)
    results: dict[str, T | None] = {}
    failure: list[BaseException] = []

    def visit() -> None:
        try:
            for name in pending:
                results[name] = work(name) if _enter(name) else None
        except BaseException as err:  # raised in the caller's thread below
            failure.append(err)

    # a thread of its own, which ends inside the last namespace: the caller's never moves
    thread = threading.Thread(target=visit, name="netns-each")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return results


def _enter(name: str) -> bool:
    """Move the calling thread into namespace name; False if it is gone."""
    try:
        fd = os.open(path(name), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if _libc.setns(fd, CLONE_NEWNET) == 0:
            return True
    finally:
        os.close(fd)
    err = ctypes.get_errno()
    if err == errno.EINVAL:  # the file is there but no namespace is bound on it any more
        return False
    raise OSError(err, f"setns into {name}: {os.strerror(err)}")


def run_in(name: str, work: Callable[[], None]) -> None:
    """Run work() in namespace name, in a thread that enters it (e.g. to write a sysctl)
    and comes back: a thread made per call would cost more than most works (a verify
    opens a socket per TCP probe)."""
    global _visitor
    if threading.current_thread() is getattr(_visitor, "thread", None):
        _visit_once(name, work)  # work that itself runs something in a namespace
        return
    with _visiting:
        if _visitor is None or _visitor.lost:
            _visitor = _Visitor()
        _visitor.run(name, work)


def _enter_or_fail(name: str) -> None:
    fd = os.open(path(name), os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns into {name}")
    finally:
        os.close(fd)


def _visit_once(name: str, work: Callable[[], None]) -> None:
    """run_in() by a thread of its own, which ends in namespace name."""
    failure: list[BaseException] = []

    def enter_and_work() -> None:
        try:
            _enter_or_fail(name)
            work()
        except BaseException as err:  # raised in the caller's thread below
            failure.append(err)

    worker = threading.Thread(target=enter_and_work, name=f"in-{name}")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


class _Visitor:
    """A daemon thread running works inside namespaces, one at a time, going back to
    the namespace it started in after each: a thread left inside a namespace would keep
    it (and its devices) alive after its name is removed. If it cannot go back, it ends,
    and the next run_in() starts another."""

    def __init__(self) -> None:
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)  # the main thread's
        self.lost = False  # could not go back: ended
        self._requests: queue.SimpleQueue[tuple[str, Callable[[], None]]] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="netns-visitor", daemon=True)
        self.thread.fork_safe = True  # a forked child forgets it (see verify/forked.py)
        self.thread.start()

    def run(self, name: str, work: Callable[[], None]) -> None:
        self._requests.put((name, work))
        failure = self._answers.get()
        if failure is not None:
            raise failure

    def _serve(self) -> None:
        try:
            while not self.lost:
                name, work = self._requests.get()
                try:
                    _enter_or_fail(name)
                except BaseException as err:
                    self._answers.put(err)
                    continue
                failure = None
                try:
                    work()
                except BaseException as err:
                    failure = err
                self.lost = _libc.setns(self._home, CLONE_NEWNET) != 0
                self._answers.put(failure)
        finally:
            os.close(self._home)


_visitor: _Visitor | None = None
_visiting = threading.Lock()


def _forget_visitor() -> None:
    """A forked child has none of its parent's threads: its first run_in() starts a
    visitor of its own (verify's workers are forked, see verify/workers.py)."""
    global _visitor, _visiting
    _visitor, _visiting = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_visitor)
