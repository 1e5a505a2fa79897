"""A classic-BPF interpreter for seccomp filters, for the unit tests.

It takes the program as the kernel does and rejects what the kernel rejects:
``seccomp_prepare_filter`` (length 1..4096), ``bpf_check_classic`` (net/core/filter.c: jumps
in range, no division by a zero constant, shifts < 32, scratch cells < 16 and written before
they are read, a RET at the end) and ``seccomp_check_filter`` (kernel/seccomp.c: the opcode
allow-list, word loads aligned and inside the 64-byte ``struct seccomp_data``).

:meth:`Program.run` returns the filter's 32-bit result for one ``struct seccomp_data``.
:meth:`Program.const_verdict` mirrors ``seccomp_is_const_allow`` (kernel/seccomp.c), the
emulation that fills the seccomp action cache: with only ``nr`` and ``arch`` known it follows
the program and gives up at any other load (an argument or the instruction pointer) or at any
instruction outside its short list; only a constant ALLOW is cached.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

# linux/bpf_common.h: classes, sizes, modes, operations, sources
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

BPF_MAXINSNS = 4096
BPF_MEMWORDS = 16
SECCOMP_DATA_SIZE = 64
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF
OFF_NR, OFF_ARCH = 0, 4

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1

_ALU_OPS = (ADD, SUB, MUL, DIV, AND, OR, XOR, LSH, RSH)
_COND_JUMPS = (JEQ, JGE, JGT, JSET)

#: kernel/seccomp.c seccomp_check_filter: the only opcodes a seccomp filter may hold
SECCOMP_OPCODES: frozenset[int] = frozenset(
    {LD | W | ABS, LD | W | LEN, LDX | W | LEN, RET | K, RET | RET_A}
    | {ALU | op | src for op in _ALU_OPS for src in (K, X)}
    | {ALU | NEG, LD | IMM, LDX | IMM, MISC | TAX, MISC | TXA}
    | {LD | MEM, LDX | MEM, ST, STX, JMP | JA}
    | {JMP | op | src for op in _COND_JUMPS for src in (K, X)}
)


class InstructionLike(Protocol):
    """What :class:`mstack_bpf.linux.seccomp.Instruction` provides."""

    @property
    def code(self) -> int: ...
    @property
    def jt(self) -> int: ...
    @property
    def jf(self) -> int: ...
    @property
    def k(self) -> int: ...


class FilterRejected(ValueError):
    """The kernel would refuse this program with EINVAL; ``pc`` is the culprit (or None)."""

    def __init__(self, pc: int | None, reason: str) -> None:
        super().__init__(reason if pc is None else f"instruction {pc}: {reason}")
        self.pc = pc
        self.reason = reason


@dataclass(frozen=True)
class SeccompData:
    """``struct seccomp_data`` (linux/seccomp.h); values are masked to their C widths."""

    nr: int
    arch: int
    args: Sequence[int] = (0, 0, 0, 0, 0, 0)
    instruction_pointer: int = 0

    def pack(self) -> bytes:
        args = [a & _U64 for a in self.args] + [0] * (6 - len(self.args))
        if len(args) != 6:
            raise ValueError("seccomp_data has six arguments")
        return struct.pack("<II7Q", self.nr & _U32, self.arch & _U32,
                           self.instruction_pointer & _U64, *args)


class ConstVerdict(NamedTuple):
    """What the kernel's cache emulation concludes for one (arch, nr).

    ``verdict`` is the RET value reached through constant loads only, or None where the
    emulation gives up; ``cacheable`` is whether the kernel would skip the filter.
    """

    cacheable: bool
    verdict: int | None


def action(ret: int) -> int:
    return ret & SECCOMP_RET_ACTION_FULL


def ret_data(ret: int) -> int:
    return ret & SECCOMP_RET_DATA


Insn = tuple[int, int, int, int]


class Program:
    """A seccomp filter, checked at construction as ``seccomp(SECCOMP_SET_MODE_FILTER)`` would."""

    def __init__(self, instructions: Sequence[InstructionLike]) -> None:
        self.insns: tuple[Insn, ...] = tuple(
            (i.code, i.jt, i.jf, i.k) for i in instructions)
        check(self.insns)

    def __len__(self) -> int:
        return len(self.insns)

    def run(self, data: SeccompData) -> int:
        return _execute(self.insns, data.pack())

    def __call__(self, nr: int, arch: int, args: Sequence[int] = (),
                 instruction_pointer: int = 0) -> int:
        return self.run(SeccompData(nr, arch, tuple(args), instruction_pointer))

    def const_verdict(self, arch: int, nr: int) -> ConstVerdict:
        return _const_verdict(self.insns, arch & _U32, nr & _U32)


def check(insns: Sequence[Insn]) -> None:
    """Raise :class:`FilterRejected` where the kernel would refuse to load ``insns``."""
    flen = len(insns)
    if not 1 <= flen <= BPF_MAXINSNS:
        raise FilterRejected(None, f"length {flen} outside 1..{BPF_MAXINSNS}")
    for pc, (code, jt, jf, k) in enumerate(insns):
        if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF and 0 <= k <= _U32):
            raise FilterRejected(pc, "field out of its C type's range")
        _check_one(pc, flen, code, jt, jf, k)
    if insns[-1][0] not in (RET | K, RET | RET_A):
        raise FilterRejected(flen - 1, "the last instruction is not a RET")
    _check_load_and_stores(insns)


def _check_one(pc: int, flen: int, code: int, jt: int, jf: int, k: int) -> None:
    if code not in SECCOMP_OPCODES:
        raise FilterRejected(pc, f"opcode {code:#06x} not allowed in seccomp filters")
    if code == ALU | DIV | K and k == 0:
        raise FilterRejected(pc, "division by constant zero")
    if code in (ALU | LSH | K, ALU | RSH | K) and k >= 32:
        raise FilterRejected(pc, f"shift by {k}")
    if code in (LD | MEM, LDX | MEM, ST, STX) and k >= BPF_MEMWORDS:
        raise FilterRejected(pc, f"scratch cell {k} out of range")
    if code == JMP | JA and k >= flen - pc - 1:
        raise FilterRejected(pc, f"ja +{k} leaves the program")
    if code & 0x07 == JMP and code != JMP | JA and (pc + jt + 1 >= flen or pc + jf + 1 >= flen):
        raise FilterRejected(pc, f"jump (+{jt}, +{jf}) leaves the program")
    if code == LD | W | ABS and (k >= SECCOMP_DATA_SIZE or k & 3):
        raise FilterRejected(pc, f"load at offset {k}: outside seccomp_data or unaligned")


def _check_load_and_stores(insns: Sequence[Insn]) -> None:
    """net/core/filter.c check_load_and_stores: a scratch cell is written before it is read."""
    masks = [0xFFFF] * len(insns)
    valid = 0
    for pc, (code, jt, jf, k) in enumerate(insns):
        valid &= masks[pc]
        if code in (ST, STX):
            valid |= 1 << k
        elif code in (LD | MEM, LDX | MEM):
            if not valid & (1 << k):
                raise FilterRejected(pc, f"scratch cell {k} read before it is written")
        elif code == JMP | JA:
            masks[pc + 1 + k] &= valid
            valid = 0xFFFF
        elif code & 0x07 == JMP:
            masks[pc + 1 + jt] &= valid
            masks[pc + 1 + jf] &= valid
            valid = 0xFFFF


def _alu(op: int, a: int, operand: int) -> int | None:
    """A op operand on 32 bits; None for a division by zero (the program then returns 0)."""
    if op == ADD:
        return (a + operand) & _U32
    if op == SUB:
        return (a - operand) & _U32
    if op == MUL:
        return (a * operand) & _U32
    if op == DIV:
        return None if operand == 0 else a // operand
    if op == AND:
        return a & operand
    if op == OR:
        return a | operand
    if op == XOR:
        return a ^ operand
    if op == LSH:
        return (a << (operand & 31)) & _U32
    if op == RSH:
        return a >> (operand & 31)
    raise AssertionError(op)


def _jump(op: int, a: int, operand: int) -> bool:
    if op == JEQ:
        return a == operand
    if op == JGE:
        return a >= operand
    if op == JGT:
        return a > operand
    return bool(a & operand)  # JSET


def _execute(insns: Sequence[Insn], data: bytes) -> int:
    a = x = 0
    mem = [0] * BPF_MEMWORDS
    pc = 0
    while True:  # every jump goes forward and the program ends with RET: this terminates
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if code == LD | W | ABS:
            a = struct.unpack_from("<I", data, k)[0]
        elif code in (LD | W | LEN, LD | IMM):
            a = SECCOMP_DATA_SIZE if code == LD | W | LEN else k
        elif code in (LDX | W | LEN, LDX | IMM):
            x = SECCOMP_DATA_SIZE if code == LDX | W | LEN else k
        elif code == LD | MEM:
            a = mem[k]
        elif code == LDX | MEM:
            x = mem[k]
        elif code == ST:
            mem[k] = a
        elif code == STX:
            mem[k] = x
        elif code == MISC | TAX:
            x = a
        elif code == MISC | TXA:
            a = x
        elif code == ALU | NEG:
            a = -a & _U32
        elif cls == ALU:
            result = _alu(code & 0xF0, a, x if code & X else k)
            if result is None:
                return 0  # classic BPF: division by zero X ends the program with 0
            a = result
        elif code == JMP | JA:
            pc += k
        elif cls == JMP:
            pc += jt if _jump(code & 0xF0, a, x if code & X else k) else jf
        elif code == RET | K:
            return k
        elif code == RET | RET_A:
            return a
        else:
            raise AssertionError(f"unchecked opcode {code:#x}")


def _const_verdict(insns: Sequence[Insn], arch: int, nr: int) -> ConstVerdict:
    """kernel/seccomp.c seccomp_is_const_allow, also reporting a constant non-ALLOW result."""
    a = 0
    pc = 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == LD | W | ABS:
            if k == OFF_NR:
                a = nr
            elif k == OFF_ARCH:
                a = arch
            else:
                return ConstVerdict(False, None)  # an argument or the instruction pointer
        elif code == RET | K:
            return ConstVerdict(k == SECCOMP_RET_ALLOW, k)
        elif code == JMP | JA:
            pc += k
        elif code in (JMP | JEQ | K, JMP | JGE | K, JMP | JGT | K, JMP | JSET | K):
            pc += jt if _jump(code & 0xF0, a, k) else jf
        elif code == ALU | AND | K:
            a &= k
        else:
            return ConstVerdict(False, None)  # anything else: the kernel does not emulate it
    raise AssertionError("ran off the end of a checked program")
