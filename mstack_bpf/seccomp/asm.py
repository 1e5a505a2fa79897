"""A tiny classic-BPF assembler with labels, for seccomp filters.

Conditional jumps in classic BPF reach at most 255 instructions forward; :meth:`Asm.jump_far`
emits ``jeq k, 0, 1; ja label`` where a target may be further (``ja`` has a 32-bit offset).
"""

from __future__ import annotations

from dataclasses import dataclass

from mstack_bpf.seccomp.program import Instruction

# linux/bpf_common.h
LD_W_ABS = 0x20
ALU_AND_K = 0x54
JMP_JA = 0x05
JMP_JEQ_K = 0x15
JMP_JGE_K = 0x35
JMP_JSET_K = 0x45
RET_K = 0x06

# struct seccomp_data offsets (little-endian: the low half of an argument comes first)
OFF_NR = 0
OFF_ARCH = 4


def off_arg_low(index: int) -> int:
    return 16 + 8 * index


@dataclass
class _Op:
    code: int
    k: int
    jt: str | None = None
    jf: str | None = None
    ja: str | None = None


class AssemblyError(ValueError):
    pass


class Asm:
    def __init__(self) -> None:
        self._ops: list[_Op] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise AssemblyError(f"label defined twice: {name}")
        self._labels[name] = len(self._ops)

    def load(self, offset: int) -> None:
        self._ops.append(_Op(LD_W_ABS, offset))

    def and_(self, mask: int) -> None:
        self._ops.append(_Op(ALU_AND_K, mask))

    def jeq(self, k: int, jt: str | None = None, jf: str | None = None) -> None:
        """Jump to ``jt`` if A == k, else to ``jf``; None means the next instruction."""
        self._ops.append(_Op(JMP_JEQ_K, k, jt, jf))

    def jge(self, k: int, jt: str | None = None, jf: str | None = None) -> None:
        self._ops.append(_Op(JMP_JGE_K, k, jt, jf))

    def jset(self, k: int, jt: str | None = None, jf: str | None = None) -> None:
        self._ops.append(_Op(JMP_JSET_K, k, jt, jf))

    def ja(self, target: str) -> None:
        self._ops.append(_Op(JMP_JA, 0, ja=target))

    def jump_far(self, k: int, target: str) -> None:
        """If A == k, go to ``target`` however far it is."""
        self._ops.append(_Op(JMP_JEQ_K, k, None, "+1"))
        self.ja(target)

    def ret(self, value: int) -> None:
        self._ops.append(_Op(RET_K, value))

    def _offset(self, at: int, target: str | None, limit: int) -> int:
        if target is None:
            return 0
        if target == "+1":
            return 1
        if target not in self._labels:
            raise AssemblyError(f"undefined label: {target}")
        offset = self._labels[target] - at - 1
        if not 0 <= offset <= limit:
            raise AssemblyError(f"jump to {target} out of range ({offset}) at {at}")
        return offset

    def assemble(self) -> list[Instruction]:
        out = []
        for at, op in enumerate(self._ops):
            if op.code == JMP_JA:
                out.append(Instruction(op.code, 0, 0, self._offset(at, op.ja, 0xFFFFFFFF)))
            else:
                jt = self._offset(at, op.jt, 255)
                jf = self._offset(at, op.jf, 255)
                out.append(Instruction(op.code, jt, jf, op.k))
        if len(out) > 4096:
            raise AssemblyError(f"program too long: {len(out)} instructions")
        return out
