"""Listener.addfd_narrowed (linux/_colocate.c) against a real listener and a real caller: a
forked child whose socket() goes to the test. The child reports the fd it got, that fd's
inode and its own affinity right after the call; the test reads the child's affinity while
the call is still pending, and a real-time thread occupying the narrowed CPU holds the
caller there while it is narrowed, so that the narrowing itself is seen."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mstack_bpf.linux import sched
from mstack_bpf.linux.seccomp import Listener
from tests.conftest import cpus_allowed, needs_root
from tests.helpers.listener_child import Caller

ONLINE = sched.online_cpus()
ALL = [cpu for cpu in range(len(ONLINE.raw) * 8) if cpu in ONLINE]
pytestmark = [needs_root, pytest.mark.skipif(
    len(ALL) < 2 or sched.get_affinity(0) != ONLINE,
    reason="narrowing needs at least two CPUs, all of them allowed to this test")]
HERE = ALL[-1]


def here() -> sched.CpuSet:
    return sched.CpuSet.only(HERE)


@contextmanager
def narrowing_watched(tid: int) -> Iterator[list[list[int]]]:
    """While inside: a SCHED_FIFO thread occupies CPU HERE and records ``tid``'s affinity
    once it is HERE alone. The caller, woken there by ADDFD, cannot run before that thread
    has seen it and gone; our own thread keeps off HERE meanwhile."""
    seen: list[list[int]] = []
    started = threading.Event()

    def occupy() -> None:
        os.sched_setaffinity(0, {HERE})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        started.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cpus = cpus_allowed(tid)
            if cpus == [HERE]:
                seen.append(cpus)
                return

    ours = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(ALL) - {HERE})
    watcher = threading.Thread(target=occupy)
    watcher.start()
    try:
        assert started.wait(5)
        yield seen
    finally:
        watcher.join()
        os.sched_setaffinity(0, ours)


def test_a_free_caller_is_narrowed_while_it_installs_the_fd_and_only_then(
        caller: Caller) -> None:
    nid, tid = caller.receive()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ours, \
            narrowing_watched(tid) as seen:
        done = caller.listener.addfd_narrowed(nid, tid, ours.fileno(), True, here(), ONLINE)
        inode = os.fstat(ours.fileno()).st_ino
    assert seen == [[HERE]]
    assert done is not None and done[1:] == (0, 0, 0)
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


def test_a_failed_addfd_is_reported_with_the_caller_restored(caller: Caller) -> None:
    nid, tid = caller.receive()
    done = caller.listener.addfd_narrowed(nid, tid, 999_999, True, here(), ONLINE)  # no such fd
    assert done == (-1, errno.EBADF, 0, 0)
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
    with open(os.devnull) as f:
        done = Listener(f.fileno()).addfd_narrowed(1, tid, 0, True, here(), ONLINE)
    assert done == (-1, errno.ENOTTY, 0, 0)
    assert cpus_allowed(tid) == ALL


def test_a_set_of_no_usable_cpu_leaves_the_call_to_the_usual_inject(caller: Caller) -> None:
    """A set the kernel refuses (no online CPU in it: EINVAL) narrows nothing."""
    nid, tid = caller.receive()
    offline = sched.CpuSet.only(len(ONLINE.raw) * 8 + 7)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ours:
        assert caller.listener.addfd_narrowed(nid, tid, ours.fileno(), True, offline,
                                              ONLINE) is None
        assert cpus_allowed(tid) == ALL  # and the call still pending:
        fd = caller.listener.addfd(nid, ours.fileno(), cloexec=True)
    assert caller.report()["fd"] == fd
