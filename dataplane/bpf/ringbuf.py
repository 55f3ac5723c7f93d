"""A BPF ring buffer read straight from its memory, as libbpf reads it, but a whole
batch of records per call instead of one call into Python per record (a ctypes
callback costs several microseconds; a verify run records tens of events per flow).

The map's memory, mapped from its fd (kernel/bpf/ringbuf.c): a page holding the
consumer position (written here), then a page holding the producer position, then
the data pages mapped twice in a row, so a record that wraps around the end reads as
one. A record is an 8-byte header (its length, with a busy and a discard bit, and a
page offset), then its data, padded to 8 bytes.

Records are read with plain loads: right on a machine whose loads are not reordered
with each other (x86's total store order), where the busy bit, cleared by the kernel
after the data is written, is seen no earlier than the data. Elsewhere the tracer
keeps libbpf's reader (usable()).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
from pathlib import Path

BUSY, DISCARD = 1 << 31, 1 << 30
HEADER = 8
_POSITION = struct.Struct("=Q")
_LENGTH = struct.Struct("=I")


def usable() -> bool:
    """x86-64, and a 64-bit Python: the positions are 64-bit, stored in one move."""
    return os.uname().machine == "x86_64" and sys.maxsize > 2**32


def data_size(fd: int) -> int:
    """The bytes of data of the ring buffer map fd (its max_entries, a power of two
    pages), as the kernel describes the map (bcc 0.18's tables do not say)."""
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("max_entries:"):
            return int(line.split()[1])
    raise OSError(f"fd {fd} is not a BPF map")


class Reader:
    """The records of the ring buffer map fd."""

    def __init__(self, fd: int):
        page, size = mmap.PAGESIZE, data_size(fd)
        self._mask = size - 1
        self._consumer_page = mmap.mmap(fd, page, mmap.MAP_SHARED,
                                        mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        # one aligned 8-byte store per update: the kernel reads it at any time
        self._consumer = ctypes.c_uint64.from_buffer(self._consumer_page)
        try:
            self._data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        except BaseException:
            self._release_consumer()
            raise

    def take(self) -> list[bytes]:
        """Every record committed since the last take (copies: the kernel reuses the
        room once the consumer position passes it)."""
        data, mask, start = self._data, self._mask, mmap.PAGESIZE + HEADER
        consumer = self._consumer.value
        producer = _POSITION.unpack_from(data, 0)[0]
        records = []
        while consumer < producer:
            at = start + (consumer & mask)
            length = _LENGTH.unpack_from(data, at - HEADER)[0]
            if length & BUSY:  # reserved, not yet committed: the next take has it
                break
            size = length & ~(BUSY | DISCARD)
            if not length & DISCARD:
                records.append(data[at:at + size])
            consumer += (size + HEADER + 7) & ~7
        self._consumer.value = consumer
        return records

    def close(self) -> None:
        self._release_consumer()
        self._data.close()

    def _release_consumer(self) -> None:
        del self._consumer  # its export of the page would make close() refuse
        self._consumer_page.close()
