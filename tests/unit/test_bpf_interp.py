"""The test interpreter itself, on tiny hand-made programs (see bpf_interp's docstring)."""

from __future__ import annotations

import pytest

from mstack_bpf.seccomp.asm import Asm
from mstack_bpf.seccomp.program import Instruction
from tests.unit.bpf_interp import (
    ABS,
    ADD,
    ALU,
    AND,
    DIV,
    IMM,
    JA,
    JEQ,
    JGE,
    JGT,
    JMP,
    JSET,
    LD,
    LDX,
    LEN,
    LSH,
    MEM,
    MISC,
    MOD,
    MUL,
    NEG,
    OR,
    RET,
    RET_A,
    RSH,
    SECCOMP_RET_ALLOW,
    ST,
    STX,
    SUB,
    TAX,
    TXA,
    XOR,
    B,
    ConstVerdict,
    FilterRejected,
    H,
    K,
    Program,
    SeccompData,
    W,
    X,
    action,
    ret_data,
)

ARCH = 0xC000003E
ERRNO_1 = 0x00050001


def I(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> Instruction:  # noqa: E743
    return Instruction(code, jt, jf, k)


def ld(offset: int) -> Instruction:
    return I(LD | W | ABS, offset)


def ret(k: int) -> Instruction:
    return I(RET | K, k)


def verdict(program: list[Instruction], nr: int = 0, args: tuple[int, ...] = (),
            ip: int = 0) -> int:
    """What ``program`` returns for one x86_64 call."""
    return Program(program)(nr, ARCH, args, ip)


# --- loads ---------------------------------------------------------------------------------


def test_ret_k() -> None:
    assert verdict([ret(0x12345678)]) == 0x12345678


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, 0xFFFFFFFB),  # nr -5, as the u32 the filter sees
        (4, ARCH),
        (8, 0x55667788),  # instruction_pointer, low half first (little-endian)
        (12, 0x11223344),
        (16, 0x89ABCDEF),  # args[0] low
        (20, 0x01234567),  # args[0] high
        (24, 0xFFFFFFFF),  # args[1] = -1
        (28, 0xFFFFFFFF),
        (56, 7),  # args[5] low
        (60, 0),  # the last word of seccomp_data
    ],
)
def test_load_word_from_seccomp_data(offset: int, expected: int) -> None:
    args = (0x0123456789ABCDEF, -1, 0, 0, 0, 7)
    program = [ld(offset), I(RET | RET_A)]
    assert verdict(program, nr=-5, args=args, ip=0x1122334455667788) == expected


def test_seccomp_data_pack_masks_to_c_widths() -> None:
    raw = SeccompData(-5, ARCH, (-1, 1 << 64 | 2)).pack()
    assert len(raw) == 64
    assert raw[:4] == b"\xfb\xff\xff\xff"
    assert raw[16:24] == b"\xff" * 8
    assert raw[24:32] == (2).to_bytes(8, "little")


def test_len_imm_and_scratch_memory() -> None:
    program = [
        I(LD | W | LEN), I(ST, 3),          # M[3] = 64
        I(LDX | IMM, 5), I(STX, 4),         # M[4] = 5
        I(LD | IMM, 0), I(LDX | W | LEN),   # X = 64
        I(LD | MEM, 3), I(ALU | ADD | X),   # A = 64 + 64
        I(LDX | MEM, 4), I(ALU | ADD | X),  # A += 5
        I(RET | RET_A),
    ]
    assert verdict(program) == 133


def test_tax_txa() -> None:
    program = [I(LD | IMM, 9), I(MISC | TAX), I(LD | IMM, 0), I(MISC | TXA), I(RET | RET_A)]
    assert verdict(program) == 9


# --- arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "a", "k", "expected"),
    [
        (ADD, 0xFFFFFFFF, 2, 1),
        (SUB, 1, 2, 0xFFFFFFFF),
        (MUL, 0x10000, 0x10000, 0),
        (DIV, 7, 2, 3),
        (AND, 0xF0F0, 0xFF00, 0xF000),
        (OR, 0xF0, 0x0F, 0xFF),
        (XOR, 0xFF, 0x0F, 0xF0),
        (LSH, 0x80000001, 1, 2),
        (RSH, 0x80000000, 31, 1),
    ],
)
def test_alu_k_and_x(op: int, a: int, k: int, expected: int) -> None:
    with_k = [I(LD | IMM, a), I(ALU | op | K, k), I(RET | RET_A)]
    with_x = [I(LDX | IMM, k), I(LD | IMM, a), I(ALU | op | X), I(RET | RET_A)]
    assert verdict(with_k) == expected
    assert verdict(with_x) == expected


def test_neg() -> None:
    assert verdict([I(LD | IMM, 1), I(ALU | NEG), I(RET | RET_A)]) == 0xFFFFFFFF


def test_division_by_zero_x_returns_zero() -> None:
    program = [I(LD | IMM, 5), I(LDX | IMM, 0), I(ALU | DIV | X), I(RET | K, SECCOMP_RET_ALLOW)]
    assert verdict(program) == 0  # SECCOMP_RET_KILL_THREAD


# --- jumps ---------------------------------------------------------------------------------


def _branch(op: int, k: int, value: int) -> int:
    program = [ld(16), I(JMP | op | K, k, jt=1, jf=0), ret(0), ret(1)]
    return verdict(program, args=(value,))


@pytest.mark.parametrize(
    ("op", "k", "value", "taken"),
    [
        (JEQ, 5, 5, True), (JEQ, 5, 6, False),
        (JGE, 5, 5, True), (JGE, 5, 4, False), (JGE, 46, 0xFFFFFFFF, True),  # unsigned
        (JGT, 5, 5, False), (JGT, 5, 6, True),
        (JSET, 0x40000000, 0x40000029, True), (JSET, 0x40000000, 0x29, False),
    ],
)
def test_conditional_jumps(op: int, k: int, value: int, taken: bool) -> None:
    assert _branch(op, k, value) == int(taken)


def test_conditional_jump_with_x() -> None:
    program = [I(LDX | IMM, 7), ld(16), I(JMP | JEQ | X, 0, jt=1), ret(0), ret(1)]
    assert verdict(program, args=(7,)) == 1
    assert verdict(program, args=(8,)) == 0


def test_ja_skips() -> None:
    assert verdict([I(JMP | JA, 2), ret(0), ret(1), ret(2)]) == 2


def test_only_low_half_of_an_argument_is_compared() -> None:
    program = [ld(16), I(JMP | JEQ | K, 2, jt=0, jf=1), ret(ERRNO_1), ret(SECCOMP_RET_ALLOW)]
    assert verdict(program, args=(0x100000002,)) == ERRNO_1
    assert verdict(program, args=(-1,)) == SECCOMP_RET_ALLOW


def test_agrees_with_bpfasm_labels_and_far_jumps() -> None:
    asm = Asm()
    asm.load(0)
    asm.jset(0x40000000, "x32")
    asm.jump_far(41, "socket")
    asm.ret(SECCOMP_RET_ALLOW)
    asm.label("x32")
    asm.ret(0x00050026)
    for _ in range(300):  # farther than a conditional jump reaches
        asm.ret(0)
    asm.label("socket")
    asm.ret(0x7FC00000)
    program = Program(asm.assemble())
    assert program(41, ARCH) == 0x7FC00000
    assert program(41 | 0x40000000, ARCH) == 0x00050026
    assert program(39, ARCH) == SECCOMP_RET_ALLOW


def test_action_and_data() -> None:
    assert action(0x0005005F) == 0x00050000
    assert ret_data(0x0005005F) == 0x5F


# --- what the kernel refuses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ([], "length"),
        ([ret(0)] * 4097, "length"),
        ([ld(0)], "last instruction"),
        ([I(JMP | JEQ | K, 0, jt=1), ret(0)], "leaves the program"),
        ([I(JMP | JEQ | K, 0, jf=1), ret(0)], "leaves the program"),
        ([I(JMP | JA, 1), ret(0)], "leaves the program"),
        ([I(JMP | JA, 0xFFFFFFFF), ret(0)], "leaves the program"),
        ([ld(2), ret(0)], "unaligned"),
        ([ld(64), ret(0)], "outside"),
        ([ld(0xFFFFF000), ret(0)], "outside"),  # an skb ancillary offset
        ([I(LD | H | ABS, 0), ret(0)], "not allowed"),
        ([I(LD | B | ABS, 0), ret(0)], "not allowed"),
        ([I(LD | W | 0x40, 0), ret(0)], "not allowed"),  # BPF_IND
        ([I(ALU | MOD | K, 3), ret(0)], "not allowed"),
        ([I(RET | X), ret(0)], "not allowed"),
        ([I(0xFF), ret(0)], "not allowed"),
        ([I(ALU | DIV | K, 0), ret(0)], "division"),
        ([I(ALU | LSH | K, 32), ret(0)], "shift"),
        ([I(ALU | RSH | K, 32), ret(0)], "shift"),
        ([I(ST, 16), ret(0)], "scratch cell 16"),
        ([I(LD | MEM, 0), ret(0)], "before it is written"),
        # written on one path only
        ([ld(0), I(JMP | JEQ | K, 1, jt=1), I(ST, 2), I(LD | MEM, 2), ret(0)],
         "before it is written"),
        ([Instruction(RET | K, 0, 0, 1 << 32)], "range"),
    ],
)
def test_rejected_like_the_kernel(program: list[Instruction], reason: str) -> None:
    with pytest.raises(FilterRejected, match=reason):
        Program(program)


def test_accepted_edges() -> None:
    Program([ret(0)] * 4096)
    Program([ld(60), I(ALU | LSH | K, 31), I(JMP | JA, 0), I(RET | RET_A)])
    # a scratch cell written on every path may be read after the paths join
    Program([ld(0), I(JMP | JEQ | K, 1, jt=0, jf=2), I(ST, 2), I(JMP | JA, 1), I(ST, 2),
             I(LD | MEM, 2), I(RET | RET_A)])


# --- the kernel's action-cache emulation ---------------------------------------------------


def _arch_nr_filter() -> Program:
    return Program([
        ld(4), I(JMP | JEQ | K, ARCH, jt=1), ret(0x80000000),
        ld(0), I(ALU | AND | K, 0xFFFF),  # emulated: AND with a constant
        I(JMP | JEQ | K, 39, jt=3),       # getpid: ALLOW
        I(JMP | JEQ | K, 41, jt=3),       # socket: look at an argument
        I(JMP | JGT | K, 400, jt=6),      # above 400: ERRNO
        ret(SECCOMP_RET_ALLOW),
        ret(SECCOMP_RET_ALLOW),
        ld(16), I(JMP | JEQ | K, 2, jt=0, jf=1), ret(ERRNO_1), ret(SECCOMP_RET_ALLOW),
        ret(ERRNO_1),
    ])


def test_const_verdict_allow_is_cacheable() -> None:
    prog = _arch_nr_filter()
    assert prog.const_verdict(ARCH, 39) == ConstVerdict(True, SECCOMP_RET_ALLOW)
    assert prog.const_verdict(ARCH, 0) == ConstVerdict(True, SECCOMP_RET_ALLOW)
    assert prog.const_verdict(ARCH, 0x10027) == ConstVerdict(True, SECCOMP_RET_ALLOW)


def test_const_verdict_other_constant_results_are_not_cached() -> None:
    prog = _arch_nr_filter()
    assert prog.const_verdict(ARCH, 401) == ConstVerdict(False, ERRNO_1)
    assert prog.const_verdict(0x40000003, 39) == ConstVerdict(False, 0x80000000)


def test_const_verdict_argument_load_is_not_cacheable() -> None:
    assert _arch_nr_filter().const_verdict(ARCH, 41) == ConstVerdict(False, None)


def test_const_verdict_instruction_pointer_is_not_constant() -> None:
    for offset in (8, 12):
        prog = Program([ld(offset), ret(SECCOMP_RET_ALLOW)])
        assert prog.const_verdict(ARCH, 0) == ConstVerdict(False, None)


@pytest.mark.parametrize(
    "program",
    [
        [I(LD | IMM, 1), ret(SECCOMP_RET_ALLOW)],
        [I(LD | W | LEN), ret(SECCOMP_RET_ALLOW)],
        [I(LD | IMM, SECCOMP_RET_ALLOW), I(RET | RET_A)],
        [ld(0), I(MISC | TAX), I(JMP | JEQ | X, 0), ret(SECCOMP_RET_ALLOW)],
        [ld(0), I(ALU | OR | K, 1), ret(SECCOMP_RET_ALLOW)],
    ],
)
def test_const_verdict_gives_up_on_what_the_kernel_does_not_emulate(
        program: list[Instruction]) -> None:
    prog = Program(program)
    assert prog.const_verdict(ARCH, 0) == ConstVerdict(False, None)
    assert prog(0, ARCH) == SECCOMP_RET_ALLOW  # while the real run allows


def test_const_verdict_follows_ja_and_ignores_untaken_argument_loads() -> None:
    prog = Program([ld(0), I(JMP | JEQ | K, 1, jt=1), I(JMP | JA, 1), ld(16),
                    ret(SECCOMP_RET_ALLOW)])
    assert prog.const_verdict(ARCH, 0) == ConstVerdict(True, SECCOMP_RET_ALLOW)
    assert prog.const_verdict(ARCH, 1) == ConstVerdict(False, None)


def test_const_verdict_nr_is_unsigned_32_bits() -> None:
    prog = Program([ld(0), I(JMP | JEQ | K, 0xFFFFFFFB, jt=1), ret(SECCOMP_RET_ALLOW),
                    ret(ERRNO_1)])
    assert prog.const_verdict(ARCH, -5) == ConstVerdict(False, ERRNO_1)
