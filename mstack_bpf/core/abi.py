"""The kernel's numbers mstack works with, once (pure): system call numbers per ABI
(``arch/x86/entry/syscalls``), socket types and flags, clone flags, and the descriptor that
carries a process's default table (``supervisor/tables.py``)."""

from __future__ import annotations

from dataclasses import dataclass

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
#: a process's default-table marker lives at this descriptor (supervisor/tables.py)
MARKER_FD = 1023
SOCK_NONBLOCK = 0o4000
SOCK_CLOEXEC = 0o2000000
SOCK_DEFAULT = 0  # msocket(2): set the default stack instead of creating a socket
CLONE_NEWNS = 0x00020000

MSOCKET_NR = -5 & 0xFFFFFFFF
#: mstack's launcher marks itself for the socket tracer (bpf/socktrace.bpf.c): its first
#: msocket call carries these in its 5th and 6th arguments, which msocket ignores. Its
#: events, and those of every process it forks until one execs, are mstack's own.
SELF_MARK = (0x6D737461636B2D6C, 0x61756E6368657221)
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SOCK_TYPE_MASK = 0xF
SOCK_PACKET = 10  # obsolete: socket(AF_INET, SOCK_PACKET) is an AF_PACKET socket
SYS_SOCKET = 1  # socketcall(2) call numbers, linux/net.h
SYS_SOCKETPAIR = 8


@dataclass(frozen=True)
class Abi:
    """Syscall numbers of one ABI for the calls the filter looks at."""

    arch: int
    socket: int
    socketpair: int
    socketcall: int | None
    io_uring_setup: int
    seccomp: int
    unshare: int
    clone: int
    clone3: int
    setns: int
    ptrace: int
    pidfd_getfd: int
    process_vm_writev: int


X86_64 = Abi(AUDIT_ARCH_X86_64, 41, 53, None, 425, 317, 272, 56, 435, 308, 101, 438, 311)
NR_IOCTL_X86_64 = 16
NR_IOCTL_I386 = 54
NR_EXIT_GROUP_X86_64 = 231
NR_EXIT_GROUP_I386 = 252

#: calls that could drop a descriptor (the per-process table's marker, see tables.py), by
#: ABI: (close, dup2, dup3, close_range, fcntl calls, ioctl)
GUARD_NRS = {
    AUDIT_ARCH_X86_64: (3, 33, 292, 436, (72,), 16),
    AUDIT_ARCH_I386: (6, 63, 330, 436, (55, 221), 54),
}
F_SETFD = 2
FIOCLEX = 0x5451

#: the interface *get* requests in 0x8910–0x8947 (linux/sockios.h) answered from the netlink
#: stack; per-socket requests and every SIOCSIF* set go to the kernel untouched
INTERFACE_GETS = frozenset({
    0x8910,  # SIOCGIFNAME
    0x8912,  # SIOCGIFCONF
    0x8913,  # SIOCGIFFLAGS
    0x8915,  # SIOCGIFADDR
    0x8917,  # SIOCGIFDSTADDR
    0x8919,  # SIOCGIFBRDADDR
    0x891B,  # SIOCGIFNETMASK
    0x891D,  # SIOCGIFMETRIC
    0x8921,  # SIOCGIFMTU
    0x8927,  # SIOCGIFHWADDR
    0x8933,  # SIOCGIFINDEX
    0x8935,  # SIOCGIFPFLAGS
    0x8942,  # SIOCGIFTXQLEN
    0x8947,  # SIOCGMIIPHY
})
I386 = Abi(AUDIT_ARCH_I386, 359, 360, 102, 425, 354, 310, 120, 435, 346, 26, 438, 348)
