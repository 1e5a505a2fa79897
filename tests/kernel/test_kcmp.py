"""kcmp(KCMP_FILE) (linux/kcmp.py): one open file across processes, as tables.py uses it to
recognise a marker it installed."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator

import pytest

from mstack_bpf.linux import kcmp


@pytest.fixture
def child_with_fds() -> Iterator[tuple[int, int, int]]:
    """A child holding, at fd 100, the read end of a pipe we keep too: (pid, ours, other)."""
    ours, write_end = os.pipe()
    other, spare = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(ours, 100)
            os.write(write_end, b"x")
            signal.pause()
        finally:
            os._exit(0)
    try:
        assert os.read(ours, 1) == b"x"  # the child has set its fd 100
        yield pid, ours, other
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in (ours, write_end, other, spare):
            os.close(fd)


def test_the_same_open_file_in_another_process(child_with_fds: tuple[int, int, int]) -> None:
    pid, ours, other = child_with_fds
    assert kcmp.same_file(os.getpid(), ours, pid, 100)
    assert not kcmp.same_file(os.getpid(), other, pid, 100)


def test_a_descriptor_not_open_there_is_ebadf(child_with_fds: tuple[int, int, int]) -> None:
    pid, ours, _ = child_with_fds
    with pytest.raises(OSError) as raised:
        kcmp.same_file(os.getpid(), ours, pid, 1022)
    assert raised.value.errno == errno.EBADF
    assert "kcmp" in str(raised.value)


def test_a_process_that_is_gone_is_esrch() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as raised:
            kcmp.same_file(os.getpid(), r, 2**22 + 1, r)
        assert raised.value.errno == errno.ESRCH
    finally:
        os.close(r)
        os.close(w)
