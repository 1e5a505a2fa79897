"""prctl(2) calls mstack needs."""

from __future__ import annotations

from mstack_bpf.linux.ffi import check, libc

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39


def set_no_new_privs() -> None:
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def set_name(name: str) -> None:
    """The thread's comm (at most 15 bytes), as ps and /proc/PID/comm show it."""
    check(libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0), "prctl(PR_SET_NAME)")


def set_dumpable(dumpable: bool) -> None:
    check(libc.prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def set_death_signal(sig: int) -> None:
    """The signal this process gets when its parent (thread) dies (PR_SET_PDEATHSIG)."""
    check(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
