"""Thread ids through PIDFD_GET_INFO (linux/pidfd.py, creds.read_fs_ids) and thread
affinity (linux/sched.py), against /proc and the kernel's own answers."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Iterator

import pytest

from mstack_bpf.linux import creds, pidfd, sched
from tests.conftest import PIDFD_INFO_MISSING, cpus_allowed, needs_pidfd_info, needs_root

pytestmark = needs_root  # setfsuid to another uid
libc = ctypes.CDLL(None, use_errno=True)
NR_setfsuid, NR_setfsgid = 122, 123




@pytest.fixture
def thread_with_fs_ids() -> Iterator[int]:
    """A thread of ours whose fsuid/fsgid alone are 4321/8765 (raw calls: this thread only)."""
    ready, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def body() -> None:
        libc.syscall(NR_setfsgid, 8765)
        libc.syscall(NR_setfsuid, 4321)
        tids.append(threading.get_native_id())
        ready.set()
        done.wait()
        libc.syscall(NR_setfsuid, 0)
        libc.syscall(NR_setfsgid, 0)

    t = threading.Thread(target=body)
    t.start()
    ready.wait()
    try:
        yield tids[0]
    finally:
        done.set()
        t.join()


@needs_pidfd_info
def test_pidfd_info_gives_one_threads_ids(thread_with_fs_ids: int) -> None:
    fd = pidfd.open_thread(thread_with_fs_ids)
    try:
        ids = pidfd.task_ids(fd)
    finally:
        os.close(fd)
    own = creds.own_creds()
    assert ids.uids == (*own.uids[:3], 4321)
    assert ids.gids == (*own.gids[:3], 8765)
    assert pidfd.task_ids(pidfd.open_thread(threading.get_native_id())).uids[3] == own.uids[3]


@needs_pidfd_info
def test_fs_ids_agree_with_the_status_file(thread_with_fs_ids: int) -> None:
    status = creds.read_creds(thread_with_fs_ids)
    first = creds.read_fs_ids(thread_with_fs_ids)
    assert (first.fsuid, first.fsgid) == (status.uids[3], status.gids[3]) == (4321, 8765)
    again = creds.read_fs_ids(thread_with_fs_ids)
    assert first.reopened and not again.reopened  # the pidfd is kept open


def test_fs_ids_from_the_status_file_on_kernels_without_pidfd_info(
        thread_with_fs_ids: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(creds, "_pidfd_info", False)
    ids = creds.read_fs_ids(thread_with_fs_ids)
    assert (ids.fsuid, ids.fsgid) == (4321, 8765)


@pytest.mark.skipif(PIDFD_INFO_MISSING is None, reason="the kernel has PIDFD_GET_INFO")
def test_fs_ids_fall_back_to_the_status_file_for_good_on_this_kernel(
        thread_with_fs_ids: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 6.13 the first try finds no PIDFD_GET_INFO (before 6.9 no PIDFD_THREAD):
    the status file answers, now and from then on."""
    monkeypatch.setattr(creds, "_pidfd_info", True)
    ids = creds.read_fs_ids(thread_with_fs_ids)
    assert (ids.fsuid, ids.fsgid, ids.cgroup) == (4321, 8765, None)
    assert not creds._pidfd_info


@needs_pidfd_info
def test_a_live_thread_pidfd_info_refuses_is_read_from_the_status_file(
        thread_with_fs_ids: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """ESRCH from PIDFD_GET_INFO is not taken for "gone" while /proc still has the thread
    (kernels that want its parent visible to us refuse some live threads)."""
    def refuse(fd: int) -> pidfd.TaskIds:
        raise OSError(errno.ESRCH, "ioctl(PIDFD_GET_INFO)")

    monkeypatch.setattr(creds._pidfds, "_read", refuse)
    ids = creds.read_fs_ids(thread_with_fs_ids)
    assert (ids.fsuid, ids.fsgid) == (4321, 8765)
    assert creds._pidfd_info  # still used for the next call


@needs_pidfd_info
def test_a_reaped_thread_reads_as_gone() -> None:
    tids: list[int] = []
    t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
    t.start()
    t.join()
    fd = -1
    for _ in range(100):  # the kernel reaps a thread just after join() returns
        try:
            fd = pidfd.open_thread(tids[0])
        except OSError as e:
            assert e.errno == errno.ESRCH
            break
        try:
            pidfd.task_ids(fd)
        except OSError as e:
            assert e.errno == errno.ESRCH
            break
        finally:
            os.close(fd)
        threading.Event().wait(0.01)
    else:
        pytest.fail("the thread never went")


def test_affinity_of_another_thread_is_read_and_set_exactly() -> None:
    done = threading.Event()
    tids: list[int] = []

    def body() -> None:
        tids.append(threading.get_native_id())
        done.wait()

    t = threading.Thread(target=body)
    t.start()
    try:
        while not tids:
            threading.Event().wait(0.001)
        tid = tids[0]
        theirs = sched.get_affinity(tid)
        assert [c for c in range(os.cpu_count() or 1) if c in theirs] == cpus_allowed(tid)
        sched.set_affinity(tid, sched.CpuSet.only(0))
        assert cpus_allowed(tid) == [0]
        assert cpus_allowed(0) == cpus_allowed(os.getpid())  # ours untouched
        sched.set_affinity(tid, theirs)
        assert sched.get_affinity(tid) == theirs
        assert 0 <= sched.current_cpu() < (os.cpu_count() or 1)
    finally:
        done.set()
        t.join()
