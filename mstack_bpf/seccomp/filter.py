"""Compile a family → stack mapping into the seccomp filter (pure: no I/O).

Verdicts are taken in the kernel where they can be: a locked native family is ALLOWed, a
locked null family gets ERRNO(EAFNOSUPPORT); everything the supervisor must decide (a
redirected family, or any family a nested mstack may still change) is USER_NOTIF.
Non-socket system calls are decided on the syscall number and arch alone, so the kernel's
seccomp action cache skips the filter for them; the argument checks are on socket calls,
and under a lock on the few calls that could escape it (docs/design.md, "Locks").
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from mstack_bpf.core.abi import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    CLONE_NEWNET,
    CLONE_NEWUSER,
    F_SETFD,
    FIOCLEX,
    GUARD_NRS,
    I386,
    INTERFACE_GETS,
    MARKER_FD,
    MSOCKET_NR,
    NR_EXIT_GROUP_I386,
    NR_EXIT_GROUP_X86_64,
    NR_IOCTL_I386,
    NR_IOCTL_X86_64,
    SOCK_PACKET,
    SOCK_TYPE_MASK,
    SYS_SOCKET,
    SYS_SOCKETPAIR,
    X32_SYSCALL_BIT,
    X86_64,
    Abi,
)
from mstack_bpf.core.families import AF_INET, AF_MAX, AF_NETLINK, AF_PACKET, ALL_FAMILIES
from mstack_bpf.core.model import Mapping, StackKind
from mstack_bpf.seccomp.asm import OFF_ARCH, OFF_NR, Asm, off_arg_low
from mstack_bpf.seccomp.program import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_USER_NOTIF,
    Instruction,
)

ALLOW = SECCOMP_RET_ALLOW
NOTIFY = SECCOMP_RET_USER_NOTIF
KILL = SECCOMP_RET_KILL_PROCESS


def errno_ret(code: int) -> int:
    return SECCOMP_RET_ERRNO | code


@dataclass(frozen=True)
class FilterSpec:
    """What the filter decides, derived from a :class:`Mapping`."""

    socket: dict[int, int]        # family → seccomp return for socket()
    socketpair: dict[int, int]    # family → seccomp return for socketpair()
    msocket: int                  # return for the virtual msocket call (-5)
    io_uring: int                 # return for io_uring_setup
    supervised: bool              # a listener exists
    lock_any: bool                # some family is locked: refuse the escapes
    lock_native: bool             # some locked family is native: refuse new netns
    ioctl: int = ALLOW            # return for interface get ioctls (see INTERFACE_GETS)
    hold_exit: bool = False       # exit_group goes to the supervisor (-v: table before exit)
    guard_fd: int | None = None   # a descriptor nothing may close, replace or mark cloexec

    @staticmethod
    def from_mapping(mapping: Mapping) -> FilterSpec:
        supervised = mapping.needs_supervisor()
        sock: dict[int, int] = {}
        pair: dict[int, int] = {}
        for family in ALL_FAMILIES:
            kind = mapping.stack_of(family).kind
            locked = family in mapping.locked
            if locked and kind is StackKind.NATIVE:
                sock[family] = pair[family] = ALLOW
            elif locked and kind is StackKind.NULL:
                sock[family] = pair[family] = errno_ret(errno.EAFNOSUPPORT)
            else:  # redirected (a socketpair too: abstract names are per namespace)
                sock[family] = pair[family] = NOTIFY
        all_native_locked = all(v == ALLOW for v in sock.values())
        return FilterSpec(
            socket=sock,
            socketpair=pair,
            msocket=NOTIFY if supervised else errno_ret(errno.EPERM),
            io_uring=ALLOW if all_native_locked else errno_ret(errno.ENOSYS),
            supervised=supervised,
            lock_any=bool(mapping.locked),
            lock_native=any(
                mapping.stack_of(f).kind is StackKind.NATIVE for f in mapping.locked
            ),
            ioctl=_ioctl_action(mapping),
        )


    @staticmethod
    def nested_lock(mapping: Mapping, chosen: frozenset[int]) -> FilterSpec:
        """A listener-less filter for ``--lock`` under an unlocked outer mstack.

        The outer supervisor still redirects (its USER_NOTIF wins over our ALLOW); this filter
        refuses our null families in the kernel, msocket (-5) with EPERM, and the lock
        escapes. Which families the outer mapping leaves native is not known here, so the
        escapes to another namespace are refused as if some were.
        """
        null = errno_ret(errno.EAFNOSUPPORT)
        sock = {
            f: null if f in chosen and mapping.stack_of(f).kind is StackKind.NULL else ALLOW
            for f in ALL_FAMILIES
        }
        return FilterSpec(
            socket=sock,
            socketpair=dict(sock),
            msocket=errno_ret(errno.EPERM),
            io_uring=errno_ret(errno.ENOSYS),
            supervised=False,
            lock_any=True,
            lock_native=True,
            # Our table lives in the marker: dropping it would fall back to the outer,
            # unlocked mapping.
            guard_fd=MARKER_FD,
        )


def _ioctl_action(mapping: Mapping) -> int:
    """Interface ioctls answer from the process's netlink stack (as in VUOS)."""
    netlink = mapping.stack_of(AF_NETLINK)
    if AF_NETLINK in mapping.locked and netlink.kind is StackKind.NATIVE:
        return ALLOW
    if AF_NETLINK in mapping.locked and netlink.kind is StackKind.NULL:
        return errno_ret(errno.ENODEV)
    return NOTIFY


def compile_filter(spec: FilterSpec) -> list[Instruction]:
    """The classic BPF program for ``spec``, for x86_64 and i386 (``int 0x80``) callers."""
    asm = Asm()
    asm.load(OFF_ARCH)
    asm.jump_far(AUDIT_ARCH_X86_64, "x86_64")
    asm.jump_far(AUDIT_ARCH_I386, "i386")
    asm.ret(KILL)  # an arch we do not filter: deny everything
    for abi, name in ((X86_64, "x86_64"), (I386, "i386")):
        asm.label(name)
        _abi_section(asm, abi, name, spec)
    return asm.assemble()


def _abi_section(asm: Asm, abi: Abi, p: str, spec: FilterSpec) -> None:
    asm.load(OFF_NR)
    if abi is X86_64:
        # -5 carries the x32 bit, so it is tested before the x32 range.
        asm.jeq(MSOCKET_NR, f"{p}.msocket")
        asm.jset(X32_SYSCALL_BIT, f"{p}.enosys")  # no x32 ABI on this kernel: never a socket
    asm.jump_far(abi.socket, f"{p}.socket")
    asm.jump_far(abi.socketpair, f"{p}.socketpair")
    if abi.socketcall is not None:
        asm.jump_far(abi.socketcall, f"{p}.socketcall")
    asm.jeq(abi.io_uring_setup, f"{p}.io_uring")
    if spec.hold_exit and spec.supervised:
        exit_group = NR_EXIT_GROUP_X86_64 if abi is X86_64 else NR_EXIT_GROUP_I386
        asm.jump_far(exit_group, f"{p}.notify")
    if spec.ioctl != ALLOW:
        asm.jump_far(NR_IOCTL_X86_64 if abi is X86_64 else NR_IOCTL_I386, f"{p}.ioctl")
    if spec.lock_any:
        asm.jump_far(abi.seccomp, f"{p}.seccomp")
        asm.jump_far(abi.ptrace, f"{p}.ptrace")
        asm.jeq(abi.pidfd_getfd, f"{p}.eperm")
        asm.jeq(abi.process_vm_writev, f"{p}.eperm")
    if spec.guard_fd is not None:
        close, dup2, dup3, close_range, fcntls, ioctl = GUARD_NRS[abi.arch]
        asm.jump_far(close, f"{p}.guard.arg0")
        asm.jump_far(dup2, f"{p}.guard.arg1")
        asm.jump_far(dup3, f"{p}.guard.arg1")
        asm.jump_far(close_range, f"{p}.guard.range")
        for fcntl in fcntls:
            asm.jump_far(fcntl, f"{p}.guard.fcntl")
        asm.jump_far(ioctl, f"{p}.guard.ioctl")
    if spec.lock_native:
        asm.jump_far(abi.unshare, f"{p}.nsflags0")
        asm.jump_far(abi.clone, f"{p}.nsflags0")
        asm.jump_far(abi.setns, f"{p}.setns")
        asm.jeq(abi.clone3, f"{p}.enosys")
    asm.ret(ALLOW)
    asm.label(f"{p}.msocket")
    asm.ret(spec.msocket if abi is X86_64 else errno_ret(errno.ENOSYS))
    asm.label(f"{p}.io_uring")
    asm.ret(spec.io_uring)
    asm.label(f"{p}.notify")
    asm.ret(NOTIFY)
    _family_switch(asm, f"{p}.socket", spec.socket, packet_type=True)
    if spec.ioctl != ALLOW:
        _interface_ioctls(asm, p, spec.ioctl)
    _family_switch(asm, f"{p}.socketpair", spec.socketpair)
    if abi.socketcall is not None:
        _socketcall(asm, p, spec)
    if spec.lock_any:
        _lock_checks(asm, p, spec)
    if spec.guard_fd is not None:
        _guard_checks(asm, p, spec.guard_fd)
    asm.label(f"{p}.eperm")
    asm.ret(errno_ret(errno.EPERM))
    asm.label(f"{p}.enosys")
    asm.ret(errno_ret(errno.ENOSYS))


def _family_switch(asm: Asm, label: str, actions: dict[int, int],
                   packet_type: bool = False) -> None:
    """Return ``actions[family]``. Family 0 and families ≥ AF_MAX get EAFNOSUPPORT, which is
    what this kernel answers for them, so that a newer kernel's new families are not let
    through where a family may be null."""
    asm.label(label)
    values = set(actions.values())
    if len(values) == 1 and ALLOW in values:
        asm.ret(ALLOW)
        return
    # Only the low 32 bits: the kernel's socket() takes an int, so 0x100000002 is AF_INET.
    asm.load(off_arg_low(0))
    asm.jge(AF_MAX, f"{label}.unknown")
    asm.jeq(0, f"{label}.unknown")
    counts: dict[int, int] = {}
    for value in actions.values():
        counts[value] = counts.get(value, 0) + 1
    default = max(counts, key=lambda v: (counts[v], v == ALLOW))
    distinct = sorted(v for v in counts if v != default)
    # socket(AF_INET, SOCK_PACKET) is made as an AF_PACKET socket (net/socket.c).
    sock_packet = packet_type and actions[AF_INET] != actions[AF_PACKET]
    if sock_packet:
        asm.jeq(AF_INET, f"{label}.inet")
    for family in sorted(actions):
        if actions[family] != default:
            asm.jeq(family, f"{label}.r{distinct.index(actions[family])}")
    asm.ret(default)
    for index, value in enumerate(distinct):
        asm.label(f"{label}.r{index}")
        asm.ret(value)
    if sock_packet:
        asm.label(f"{label}.inet")
        asm.load(off_arg_low(1))
        asm.and_(SOCK_TYPE_MASK)
        asm.jeq(SOCK_PACKET, f"{label}.packet")
        asm.ret(actions[AF_INET])
        asm.label(f"{label}.packet")
        asm.ret(actions[AF_PACKET])
    asm.label(f"{label}.unknown")
    asm.ret(errno_ret(errno.EAFNOSUPPORT))


def _interface_ioctls(asm: Asm, p: str, action: int) -> None:
    asm.label(f"{p}.ioctl")
    asm.load(off_arg_low(1))
    for request in sorted(INTERFACE_GETS):
        asm.jeq(request, f"{p}.ioctl.get")
    asm.ret(ALLOW)
    asm.label(f"{p}.ioctl.get")
    asm.ret(action)


def _socketcall(asm: Asm, p: str, spec: FilterSpec) -> None:
    """i386 socketcall: its socket arguments sit in user memory, out of the filter's reach."""
    asm.label(f"{p}.socketcall")
    creating = set(spec.socket.values()) | set(spec.socketpair.values())
    if creating == {ALLOW}:
        asm.ret(ALLOW)
        return
    asm.load(off_arg_low(0))
    asm.jeq(SYS_SOCKET, f"{p}.socketcall.decide")
    asm.jeq(SYS_SOCKETPAIR, f"{p}.socketcall.decide")
    asm.ret(ALLOW)
    asm.label(f"{p}.socketcall.decide")
    # Without a supervisor nobody can read the family: refuse the whole path.
    asm.ret(NOTIFY if spec.supervised else errno_ret(errno.ENOSYS))


def _guard_checks(asm: Asm, p: str, fd: int) -> None:
    """EPERM for close(fd), dup2/dup3 onto fd, a close_range over fd, and setting
    close-on-exec on fd (fcntl F_SETFD, ioctl FIOCLEX)."""
    asm.label(f"{p}.guard.arg0")
    asm.load(off_arg_low(0))
    asm.jeq(fd, f"{p}.eperm")
    asm.ret(ALLOW)
    asm.label(f"{p}.guard.arg1")
    asm.load(off_arg_low(1))
    asm.jeq(fd, f"{p}.eperm")
    asm.ret(ALLOW)
    asm.label(f"{p}.guard.range")
    asm.load(off_arg_low(0))
    asm.jge(fd + 1, f"{p}.guard.allow")  # first > fd
    asm.load(off_arg_low(1))
    asm.jge(fd, f"{p}.eperm")  # last >= fd
    asm.ret(ALLOW)
    for call, request in (("fcntl", F_SETFD), ("ioctl", FIOCLEX)):
        asm.label(f"{p}.guard.{call}")
        asm.load(off_arg_low(0))
        asm.jeq(fd, None, f"{p}.guard.allow")
        asm.load(off_arg_low(1))
        asm.jeq(request, f"{p}.eperm")
        asm.ret(ALLOW)
    asm.label(f"{p}.guard.allow")
    asm.ret(ALLOW)


def _lock_checks(asm: Asm, p: str, spec: FilterSpec) -> None:
    # A NEW_LISTENER filter added below would win over our ALLOW verdicts.
    asm.label(f"{p}.seccomp")
    asm.load(off_arg_low(1))
    asm.jset(SECCOMP_FILTER_FLAG_NEW_LISTENER, f"{p}.eperm")
    asm.ret(ALLOW)
    asm.label(f"{p}.ptrace")
    asm.load(off_arg_low(0))
    asm.jeq(0, f"{p}.allow")  # PTRACE_TRACEME
    asm.ret(errno_ret(errno.EPERM))
    if spec.lock_native:
        asm.label(f"{p}.nsflags0")
        asm.load(off_arg_low(0))
        asm.jset(CLONE_NEWNET | CLONE_NEWUSER, f"{p}.eperm")
        asm.ret(ALLOW)
        asm.label(f"{p}.setns")
        asm.load(off_arg_low(1))
        asm.jeq(0, f"{p}.eperm")
        asm.jset(CLONE_NEWNET, f"{p}.eperm")
        asm.ret(ALLOW)
    asm.label(f"{p}.allow")
    asm.ret(ALLOW)
