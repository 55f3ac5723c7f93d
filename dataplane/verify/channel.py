"""Objects sent between a verify run and the processes it forks (its workers, its
reset-and-audit child): each pickled, after its length, through a pipe or a socket pair.
What multiprocessing.connection does for them, without its imports (tempfile, shutil,
subprocess: 11 ms of every run's start, before its workers can be forked)."""

from __future__ import annotations

import errno
import math
import os
import pickle
import select
import socket
import struct
from collections.abc import Iterable
from typing import Any

_LENGTH = struct.Struct("!Q")
_CHUNK = 1 << 20  # bytes read at a time


class Channel:
    """One end (a file descriptor, owned): whole objects sent and received; recv()
    raises EOFError once the other end is closed and everything sent is read."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        left = memoryview(_LENGTH.pack(len(data)) + data)
        while left:
            left = left[os.write(self.fd, left):]

    def recv(self) -> Any:
        (length,) = _LENGTH.unpack(self._read(_LENGTH.size))
        return pickle.loads(self._read(length))

    def _read(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self.fd, min(size, _CHUNK))
            if not chunk:
                raise EOFError("the other end is closed")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether an object, or the other end's close, can be read within timeout seconds."""
        return bool(wait([self], timeout))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def pair() -> tuple[Channel, Channel]:
    """Two connected ends, each both sending and receiving."""
    one, other = socket.socketpair()
    return Channel(one.detach()), Channel(other.detach())


def one_way() -> tuple[Channel, Channel]:
    """(the end that receives, the end that sends)."""
    receiving, sending = os.pipe()
    return Channel(receiving), Channel(sending)


def fork(*ends: Channel) -> int:
    """os.fork(); the ends closed if it fails (no memory or no process left for it)."""
    try:
        return os.fork()
    except OSError:
        for end in ends:
            end.close()
        raise


def wait(channels: Iterable[Channel], timeout: float | None = None) -> list[Channel]:
    """Those of channels that can be read (or whose other end is closed), waiting up to
    timeout seconds for one (None: for ever; a negative timeout: not at all)."""
    poller, by_fd = select.poll(), {}
    for channel in channels:
        if channel.fd < 0:  # poll() would pass over it, and wait for ever
            raise OSError(errno.EBADF, "wait on a closed channel")
        by_fd[channel.fd] = channel
        poller.register(channel.fd, select.POLLIN)
    ready = poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
    return [by_fd[fd] for fd, _ in ready]
