"""The BTF reader on small hand-made blobs: anonymous members, enums, split (module) BTF."""

import struct

import pytest

from dataplane.bpf import btf


class Blob:
    """Builds a BTF blob; a split blob numbers its types and strings after its base's."""

    def __init__(self, first_id=1, first_str=0):
        self.types, self.strings = b"", b"" if first_str else b"\0"
        self.first_str, self.next_id = first_str, first_id

    def s(self, text):
        if not text:
            return 0
        offset = self.first_str + len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def add(self, name, kind, vlen, size, extra=b""):
        self.types += struct.pack("<III", self.s(name), kind << 24 | vlen, size) + extra
        self.next_id += 1
        return self.next_id - 1

    def int(self, name):
        return self.add(name, btf.INT, 0, 4, struct.pack("<I", 32))

    def struct(self, name, size, members, kind=btf.STRUCT):
        extra = b"".join(struct.pack("<III", self.s(m), t, bits) for m, t, bits in members)
        return self.add(name, kind, len(members), size, extra)

    def enum(self, name, values):
        extra = b"".join(struct.pack("<Ii", self.s(k), v) for k, v in values)
        return self.add(name, btf.ENUM, len(values), 4, extra)

    def data(self):
        header = struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(self.types),
                             len(self.types), len(self.strings))
        return header + self.types + self.strings


@pytest.fixture
def base():
    b = Blob()
    i = b.int("int")
    union = b.struct("", 8, [("inner_field", i, 0), ("other", i, 0)], kind=btf.UNION)
    b.struct("outer", 16, [("a", i, 0), ("", union, 64)])
    b.struct("holder", 24, [("x", i, 0), ("o", b.next_id - 1, 64)])
    b.enum("colour", [("RED", 0), ("BLUE", 7)])
    return b


def test_members_through_anonymous_unions_and_paths(base):
    types = btf.BTF(base.data())
    assert types.offsetof("outer", "a") == 0
    assert types.offsetof("outer", "inner_field") == 8
    assert types.offsetof("holder", "o.inner_field") == 16
    with pytest.raises(btf.BTFError, match="no member"):
        types.offsetof("outer", "missing")
    with pytest.raises(btf.BTFError, match="no struct"):
        types.offsetof("nothing", "a")


def test_enum_names(base):
    assert btf.BTF(base.data()).enum("colour") == {0: "RED", 7: "BLUE"}


def test_split_btf_continues_its_base(base):
    types = btf.BTF(base.data())
    split = Blob(first_id=base.next_id, first_str=len(base.strings))
    split.struct("mod_port", 16, [("flags", 1, 0), ("dev", 1, 64)])  # type 1: the base's int
    module = btf.BTF(split.data(), base=types)
    assert module.offsetof("mod_port", "dev") == 8
    assert module.offsetof("outer", "inner_field") == 8  # the base's structs stay visible
    with pytest.raises(btf.BTFError):
        types.offsetof("mod_port", "dev")  # and the base knows nothing of the module


def test_not_btf():
    with pytest.raises(btf.BTFError, match="bad magic"):
        btf.BTF(b"\0" * 32)
