"""A seccomp filter program as data (pure): the return actions and architectures the
filter compares against (``include/uapi/linux/seccomp.h``, ``audit.h``) and the classic BPF
instruction the kernel takes (``struct sock_filter``, ``linux/filter.h``)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000



@dataclass(frozen=True)
class Instruction:
    """One classic BPF instruction, as the kernel takes it."""

    code: int
    jt: int
    jf: int
    k: int

    def pack(self) -> bytes:
        return struct.pack("=HBBI", self.code, self.jt, self.jf, self.k)
