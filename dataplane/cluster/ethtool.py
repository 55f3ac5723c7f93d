"""Offload settings of a device, read with the ethtool ioctl (as `ethtool -k` does)."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

SIOCETHTOOL = 0x8946
IFNAMSIZ = 16
# linux/ethtool.h: the legacy get commands, one per feature group ethtool -k names.
GET = {"rx-checksumming": 0x14, "tx-checksumming": 0x16, "scatter-gather": 0x18,
       "tcp-segmentation-offload": 0x1E, "generic-segmentation-offload": 0x23,
       "generic-receive-offload": 0x2B}
_VALUE = struct.Struct("II")  # struct ethtool_value {cmd, data}


def feature(sock: socket.socket, device: str, name: str) -> bool | None:
    """Whether feature name is on; None when the device does not answer (gone, or no
    ethtool support). sock is any socket of the device's namespace."""
    value = ctypes.create_string_buffer(_VALUE.pack(GET[name], 0), _VALUE.size)
    request = struct.pack(f"{IFNAMSIZ}sP", device.encode(), ctypes.addressof(value))
    try:
        fcntl.ioctl(sock, SIOCETHTOOL, request)
    except OSError:
        return None
    return bool(_VALUE.unpack(value.raw)[1])
