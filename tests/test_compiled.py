"""The compiled-probe cache: instruction patching and map types, on hand-made data. Pure."""

import ctypes
import struct

import pytest

from dataplane.bpf import compiled


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def program(map_fd, src=compiled.PSEUDO_MAP_FD):
    """r1 = map (ld_imm64, two slots); r0 = 0; exit."""
    return (insn(compiled.LD_IMM64, dst=1, src=src, imm=map_fd) + insn(0) + insn(0xB7, imm=0)
            + insn(0x95))


def test_map_fds_are_replaced_and_nothing_else():
    old = program(5)
    new = compiled.patched(old, {5: 42})
    assert struct.unpack_from("<i", new, 4)[0] == 42
    assert new[8:] == old[8:] and new[:4] == old[:4]
    assert compiled.patched(insn(0xB7, imm=5) + insn(0x95), {5: 42}) == insn(0xB7, imm=5) \
        + insn(0x95)  # a plain 5 is a number, not a map


def test_references_other_than_map_fds_are_seen():
    """What save() refuses to keep: an ld_imm64 of another kind (a map value, a BTF id)."""
    assert compiled._map_refs(program(5)) == [(compiled.PSEUDO_MAP_FD, 5)]
    assert compiled._map_refs(program(5, src=2)) == [(2, 5)]
    assert compiled._map_refs(insn(0xB7, imm=5) + insn(0x95)) == []


DESCRIPTIONS = [
    "unsigned int", "int", "unsigned long long",
    ["flow_key", [["saddr", "unsigned int"], ["daddr", "unsigned int"],
                  ["tag", "unsigned short"], ["proto", "unsigned char"],
                  ["by_id", "unsigned char"]], "struct_packed"],
    ["hop_event", [["ts", "unsigned long long"], ["netns", "unsigned int"],
                   ["kind", "unsigned short"], ["dev", "char", [16]],
                   ["data", "unsigned char", [128]]], "struct"],
]


@pytest.mark.parametrize("desc", DESCRIPTIONS, ids=lambda d: d if isinstance(d, str) else d[0])
def test_types_are_laid_out_as_bccs_own_decoder_lays_them_out(desc):
    bcc = pytest.importorskip("bcc", reason="bcc is not importable: run make setup")
    ours, theirs = compiled.c_type(desc), bcc.BPF._decode_table_type(desc)
    assert ctypes.sizeof(ours) == ctypes.sizeof(theirs)
    fields = getattr(theirs, "_fields_", [])
    assert [(name, getattr(ours, name).offset) for name, *_ in fields] == \
        [(name, getattr(theirs, name).offset) for name, *_ in fields]


def test_what_is_not_read_here_is_refused():
    """A bit field or a union: the probes are compiled instead of guessed."""
    with pytest.raises(ValueError):
        compiled.c_type(["u", [["a", "int"]], "union"])
    with pytest.raises(ValueError):
        compiled.c_type(["s", [["a", "unsigned int", 3]], "struct"])
