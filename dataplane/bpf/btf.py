"""Kernel struct offsets and enum names read from BTF (/sys/kernel/btf/vmlinux).

The running kernel describes its own types there, so offsets taken from it
are right for this kernel whatever headers the compiler sees. Pure: parses
bytes into data. Format: include/uapi/linux/btf.h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
_ENUM = struct.Struct("<Ii")
_ENUM64 = struct.Struct("<IIi")

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
# bytes that follow struct btf_type, per kind: fixed, and per vlen entry
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
          FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0), ENUM64: (0, 12)}


class BTFError(Exception):
    pass


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


class BTF:
    """An index of the named structs, unions and enums of one BTF blob.

    A module's BTF is split BTF: its type ids and string offsets continue
    those of vmlinux, given as base."""

    def __init__(self, data: bytes, base: "BTF | None" = None):
        magic, _, _, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BTFError("not BTF data (bad magic)")
        self._data = data
        self._base = base
        self._first_id = base._next_id if base else 1  # id 0 is void
        self._str_first = base._str_next if base else 0
        self._strings = hdr_len + str_off
        self._str_end = self._strings + str_len
        self._str_next = self._str_first + str_len
        self._types: list[int] = []  # byte position of each type, from _first_id on
        self._named: dict[tuple[int, str], int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, _ = _TYPE.unpack_from(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind in (STRUCT, UNION, ENUM, ENUM64) and name_off:
                self._named.setdefault((kind, self._str(name_off)),
                                       self._first_id + len(self._types))
            self._types.append(pos)
            fixed, each = _EXTRA.get(kind, (0, 0))
            pos += _TYPE.size + fixed + each * vlen
        self._next_id = self._first_id + len(self._types)

    @classmethod
    def load(cls, path: Path = VMLINUX, base: "BTF | None" = None) -> "BTF":
        try:
            return cls(path.read_bytes(), base)
        except OSError as err:
            raise BTFError(f"cannot read {path}: {err.strerror}") from None

    def module(self, name: str) -> "BTF":
        """The BTF of a loaded kernel module, split on this vmlinux BTF."""
        return BTF.load(VMLINUX.parent / name, base=self)

    def _str(self, offset: int) -> str:
        if offset < self._str_first:
            return self._base._str(offset)
        start = self._strings + offset - self._str_first
        return self._data[start:self._data.index(b"\0", start, self._str_end)].decode()

    def _owner(self, type_id: int) -> "BTF":
        return self._base._owner(type_id) if type_id < self._first_id else self

    def _type(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, position in its owner's data) of a type."""
        owner = self._owner(type_id)
        pos = owner._types[type_id - owner._first_id]
        _, info, size_or_type = _TYPE.unpack_from(owner._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type, pos

    def _resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            kind, _, _, target, _ = self._type(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = target

    def _members(self, type_id: int) -> list[Member]:
        kind, vlen, kind_flag, _, pos = self._type(type_id)
        if kind not in (STRUCT, UNION):
            raise BTFError(f"type {type_id} is not a struct or union")
        owner = self._owner(type_id)
        members = []
        for i in range(vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(owner._data, pos + 12 + 12 * i)
            bit_offset = offset & 0xFFFFFF if kind_flag else offset
            members.append(Member(owner._str(name_off), member_type, bit_offset))
        return members

    def _named_id(self, kinds: tuple[int, ...], name: str) -> int | None:
        for kind in kinds:
            if (kind, name) in self._named:
                return self._named[(kind, name)]
        return self._base._named_id(kinds, name) if self._base else None

    def struct_id(self, name: str) -> int:
        found = self._named_id((STRUCT, UNION), name)
        if found is None:
            raise BTFError(f"no struct {name} in BTF")
        return found

    def _find(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of member name, looking inside anonymous members."""
        for member in self._members(self._resolve(type_id)):
            if member.name == name:
                return member.bit_offset, member.type_id
            if not member.name:
                inner = self._resolve(member.type_id)
                if self._type(inner)[0] in (STRUCT, UNION):
                    found = self._find(inner, name)
                    if found:
                        return member.bit_offset + found[0], found[1]
        return None

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of a member path like "ns.inum" in struct struct_name."""
        type_id, bits = self.struct_id(struct_name), 0
        for part in path.split("."):
            found = self._find(type_id, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path}")
            bits += found[0]
            type_id = found[1]
        if bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield")
        return bits // 8

    def enum(self, name: str) -> dict[int, str]:
        """Value -> name of every enumerator of enum name."""
        type_id = self._named_id((ENUM, ENUM64), name)
        if type_id is None:
            raise BTFError(f"no enum {name} in BTF")
        kind, vlen, _, _, pos = self._type(type_id)
        owner = self._owner(type_id)
        values = {}
        for i in range(vlen):
            if kind == ENUM:
                name_off, value = _ENUM.unpack_from(owner._data, pos + 12 + 8 * i)
            else:
                name_off, low, high = _ENUM64.unpack_from(owner._data, pos + 12 + 12 * i)
                value = (high << 32) | low
            values[value] = owner._str(name_off)
        return values
