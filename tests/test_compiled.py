"""The compiled-probe cache's instruction patching, on hand-made instructions. Pure."""

import struct

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
