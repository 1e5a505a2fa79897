"""kcmp(2): whether a descriptor of one process is the same open file as one of another.

``KCMP_FILE`` compares the ``struct file`` behind the two descriptors, so it answers "is
this still the file we installed there" in one system call, where reading the descriptor's
``/proc`` link walks procfs. It needs ptrace read access to
both processes, as ``/proc/PID/fd`` does.
"""

from __future__ import annotations

import ctypes

from mstack_bpf.linux.ffi import SyscallError, libc

NR_kcmp = 312
KCMP_FILE = 0

_kcmp = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                         ctypes.c_long, ctypes.c_long, ctypes.c_long,
                         use_errno=True)(("syscall", libc))


def same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Whether ``fd1`` of ``pid1`` and ``fd2`` of ``pid2`` are one open file. Raises
    ``OSError``: EBADF if either is not open, ESRCH, EPERM (no ptrace read access)."""
    result: int = _kcmp(NR_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2)
    if result < 0:
        raise SyscallError(ctypes.get_errno(), "kcmp(KCMP_FILE)", f"{pid2} fd {fd2}")
    return result == 0
