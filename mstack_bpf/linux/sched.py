"""CPU affinity of single threads, see sched_setaffinity(2) and sched_getcpu(3).

The raw system calls act on one thread (``tid`` 0 is the caller). Masks are kept as the
kernel's own bytes in :class:`CpuSet`, so that reading a mask and writing it back costs no
conversion: the supervisor does both for one socket call.
"""

from __future__ import annotations

import ctypes

from mstack_bpf.linux.ffi import SyscallError, libc

NR_sched_setaffinity = 203
NR_sched_getaffinity = 204
#: bytes of a mask: 8192 CPUs, the kernel's largest NR_CPUS on x86_64
MASK_BYTES = 1024

_syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_size_t,
                            ctypes.c_char_p, use_errno=True)(("syscall", libc))
_getcpu = libc.sched_getcpu
_getcpu.restype = ctypes.c_int
_getcpu.argtypes = []
_buffer = ctypes.create_string_buffer(MASK_BYTES)


class CpuSet:
    """A set of CPUs as the kernel encodes it (``cpu_set_t``, trailing zero bytes trimmed)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw.rstrip(b"\0")

    @classmethod
    def only(cls, cpu: int) -> CpuSet:
        cpus = _single.get(cpu)
        if cpus is None:
            cpus = _single[cpu] = cls(bytes(cpu // 8) + bytes([1 << (cpu % 8)]))
        return cpus

    def __contains__(self, cpu: object) -> bool:
        if not isinstance(cpu, int) or cpu < 0 or cpu // 8 >= len(self.raw):
            return False
        return bool(self.raw[cpu // 8] >> (cpu % 8) & 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CpuSet) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __len__(self) -> int:
        return sum(bin(b).count("1") for b in self.raw)

    def __repr__(self) -> str:
        return f"CpuSet({[c for c in range(len(self.raw) * 8) if c in self]})"


_single: dict[int, CpuSet] = {}



def online_cpus() -> CpuSet:
    """The CPUs online now (``/sys/devices/system/cpu/online``, e.g. ``0-3,6``)."""
    with open("/sys/devices/system/cpu/online") as f:
        text = f.read().strip()
    raw = bytearray(MASK_BYTES)
    for part in text.split(","):
        first, _, last = part.partition("-")
        for cpu in range(int(first), int(last or first) + 1):
            raw[cpu // 8] |= 1 << (cpu % 8)
    return CpuSet(bytes(raw))


def current_cpu() -> int:
    """The CPU the calling thread runs on (through rseq or the vDSO: no system call)."""
    cpu: int = _getcpu()
    if cpu < 0:
        raise SyscallError(ctypes.get_errno(), "sched_getcpu")
    return cpu


def get_affinity(tid: int) -> CpuSet:
    size = _syscall(NR_sched_getaffinity, tid, MASK_BYTES, _buffer)
    if size < 0:
        raise SyscallError(ctypes.get_errno(), "sched_getaffinity", str(tid))
    return CpuSet(_buffer.raw[:size])


def set_affinity(tid: int, cpus: CpuSet) -> None:
    if _syscall(NR_sched_setaffinity, tid, len(cpus.raw), cpus.raw) < 0:
        raise SyscallError(ctypes.get_errno(), "sched_setaffinity", str(tid))
