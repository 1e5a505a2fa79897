"""Listener.addfd_narrowed (linux/_colocate.c) against a real listener and a real caller: a
forked child whose socket() goes to the test. The child reports the fd it got, that fd's
inode and its own affinity right after the call; the test reads the child's affinity while
the call is still pending."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from mstack_bpf.linux import sched
from mstack_bpf.linux._ffi import SyscallError
from mstack_bpf.linux.seccomp import Listener
from tests.conftest import needs_root
from tests.helpers.listener_child import Caller, caller

pytestmark = [needs_root, pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="narrowing needs at least two CPUs")]
__all__ = ["caller"]  # the fixture
ONLINE = sched.online_cpus()
ALL = list(range(os.cpu_count() or 1))


def cpus_allowed(pid: int) -> list[int]:
    return sorted(os.sched_getaffinity(pid))


def here() -> sched.CpuSet:
    return sched.CpuSet.only(ALL[-1])


def test_a_free_caller_gets_the_fd_and_every_cpu_back(caller: Caller) -> None:
    nid, tid = caller.receive()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ours:
        done = caller.listener.addfd_narrowed(nid, tid, ours.fileno(), True, here(), ONLINE)
        inode = os.fstat(ours.fileno()).st_ino
    assert done is not None and (done.restore_errno, done.send_errno) == (0, 0)
    report = caller.report()
    assert report == {"fd": done.fd, "inode": inode, "cloexec": True, "after": ALL}


@pytest.mark.parametrize("caller", [[0]], ids=["pinned"], indirect=True)
def test_a_caller_with_its_own_affinity_is_left_alone(caller: Caller) -> None:
    nid, tid = caller.receive()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ours:
        assert caller.listener.addfd_narrowed(nid, tid, ours.fileno(), True, here(),
                                              ONLINE) is None
        assert cpus_allowed(tid) == [0]  # untouched, and the call still pending:
        fd = caller.listener.addfd(nid, ours.fileno(), cloexec=True)
    report = caller.report()
    assert (report["fd"], report["after"]) == (fd, [0])


def test_a_failed_addfd_is_raised_with_the_caller_restored(caller: Caller) -> None:
    nid, tid = caller.receive()
    with pytest.raises(SyscallError) as raised:
        caller.listener.addfd_narrowed(nid, tid, 999_999, True, here(), ONLINE)  # no such fd
    assert raised.value.errno == errno.EBADF
    assert "SECCOMP_IOCTL_NOTIF_ADDFD" in str(raised.value)
    assert cpus_allowed(tid) == ALL  # restored while the call is still pending
    caller.listener.send(nid, error=-errno.EMFILE)
    assert caller.report() == {"errno": errno.EMFILE, "after": ALL}


def test_a_thread_that_is_not_there_is_not_narrowed() -> None:
    with open(os.devnull) as f:  # never reached: nothing is done for a missing thread
        assert Listener(f.fileno()).addfd_narrowed(1, 2**22 + 1, 0, True, here(),
                                                   ONLINE) is None


def test_a_listener_that_is_no_listener_fails_with_its_errno(caller: Caller) -> None:
    """ENOTTY from a file that is not a listener: the errno is the kernel's, not ours."""
    _, tid = caller.receive()
    with open(os.devnull) as f, pytest.raises(SyscallError) as raised:
        Listener(f.fileno()).addfd_narrowed(1, tid, 0, True, here(), ONLINE)
    assert raised.value.errno == errno.ENOTTY
    assert cpus_allowed(tid) == ALL

