"""The cgroup visitor's child (linux/_visit.c, through cgroup.make_inside): a socket born in
another cgroup v2, in a stack, with a caller's credentials, made by a child that shares our
memory — checked in the kernel: the socket's cgroup id as sock_diag reports it (``ss -e``),
its namespace cookie, its owner; a frozen cgroup; nothing left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mstack_bpf.linux import cgroup
from mstack_bpf.linux.creds import Switch, own_creds
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.supervisor import visitor
from tests.conftest import Netns, cookie, needs_root, run

pytestmark = [needs_root, pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the child that shares our memory is x86_64 only")]


@pytest.fixture
def group() -> Iterator[tuple[str, int]]:
    """A cgroup v2 of its own (path, open directory), removed after."""
    found = cgroup.v2_mount()
    if found is None or found[1] != "/":
        pytest.skip("needs the cgroup v2 hierarchy mounted (its root)")
    path = f"{found[0]}/mstack-v{random.randrange(1 << 32):08x}"
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield path, fd
    finally:
        os.close(fd)
        with open(f"{path}/cgroup.freeze", "w") as f:
            f.write("0")
        os.rmdir(path)


def made(group: tuple[str, int], netns: Netns | None, kind: int = socket.SOCK_DGRAM,
         pair: bool = False, switch: Switch | None = None, timeout: float = 5.0) -> list[int]:
    ns = os.open(netns.path, os.O_RDONLY) if netns else None
    try:
        out = cgroup.make_inside(group[1], ns, socket.AF_INET if not pair else socket.AF_UNIX,
                                 kind | socket.SOCK_CLOEXEC, 0, pair, switch, timeout)
    finally:
        if ns is not None:
            os.close(ns)
    if out is None:
        pytest.skip("no clone3 with CLONE_INTO_CGROUP (Linux 5.7)")
    return out


def cgroup_of_bound_udp(netns: Netns, port: int) -> int:
    """The cgroup id sock_diag reports for the UDP socket on 127.0.0.1:``port`` in ``netns``."""
    out = run(["ip", "netns", "exec", netns.name, "ss", "-uanHe", "sport", f"= :{port}"],
              check=True).stdout
    found = re.search(r"cgroup:(\S+)", out)
    assert found, out
    where = found.group(1)
    if where.startswith("unreachable:"):  # ss found no cgroup2 mount to name it by
        return int(where.split(":")[1], 16)
    return os.stat(f"{cgroup.v2_mount()[0]}{where}").st_ino  # type: ignore[index]


def live_children() -> list[str]:
    found = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError), open(  # FileNotFoundError: it ended
                f"/proc/self/task/{task}/children") as f:
            found += f.read().split()
    return found


def test_the_socket_is_born_in_the_cgroup_and_the_stack(group: tuple[str, int],
                                                        netns: Netns) -> None:
    before = set(os.listdir("/proc/self/fd"))
    (fd,) = made(group, netns)
    with socket.socket(fileno=fd) as sock:
        sock.bind(("127.0.0.1", 0))
        assert cookie(sock) == netns.cookie
        assert cgroup_of_bound_udp(netns, sock.getsockname()[1]) == os.fstat(group[1]).st_ino
    assert os.path.basename(group[0]) not in cgroup.task_path(os.getpid())  # never went there
    assert set(os.listdir("/proc/self/fd")) == before and live_children() == []


def test_the_child_takes_the_callers_ids_and_ours_stay(group: tuple[str, int]) -> None:
    ours = os.getresuid(), os.getresgid(), os.getgroups()
    (owned,) = made(group, None, switch=Switch((4242, 4343)))
    full = Switch(None, gids=(4545, 4545, 4545), uids=(4646, 4646, 0), groups=(4747,),
                  cap_eff=0, cap_prm=own_creds().cap_prm)
    (taken,) = made(group, None, switch=full)
    try:
        assert (os.fstat(owned).st_uid, os.fstat(owned).st_gid) == (4242, 4343)
        assert (os.fstat(taken).st_uid, os.fstat(taken).st_gid) == (4646, 4545)
    finally:
        os.close(owned)
        os.close(taken)
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == ours


def test_a_pair(group: tuple[str, int]) -> None:
    a, b = (socket.socket(fileno=fd) for fd in made(group, None, socket.SOCK_STREAM, pair=True))
    with a, b:
        a.sendall(b"x")
        assert b.recv(1) == b"x"


def test_the_childs_errno_names_its_step(group: tuple[str, int]) -> None:
    with pytest.raises(SyscallError) as e:
        cgroup.make_inside(group[1], None, 4095, socket.SOCK_DGRAM, 0, False, None, 5.0)
    assert e.value.errno == errno.EAFNOSUPPORT and "socket" in str(e.value)
    with pytest.raises(SyscallError) as e:
        cgroup.make_inside(group[1], None, socket.AF_INET, socket.SOCK_DGRAM, 0, False,
                           Switch(None, groups=tuple(range(70000))), 5.0)
    assert e.value.errno == errno.EINVAL and "setgroups" in str(e.value)


def test_a_frozen_cgroup_costs_the_timeout_and_leaves_nothing(group: tuple[str, int]) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with open(f"{group[0]}/cgroup.freeze", "w") as f:
        f.write("1")
    with pytest.raises(SyscallError) as e:
        made(group, None, timeout=0.2)
    assert e.value.errno == errno.EAGAIN and "frozen" in str(e.value)
    assert set(os.listdir("/proc/self/fd")) == before and live_children() == []
    with open(f"{group[0]}/cgroup.procs") as f:
        assert f.read() == ""  # the child was killed and reaped


def test_a_cgroup_once_killed_gets_its_socket_from_a_forked_child(group: tuple[str, int],
                                                                 netns: Netns) -> None:
    """Linux 6.18 kills every child born with CLONE_INTO_CGROUP in a cgroup that was
    killed once (cgroup.kill, here while empty), not a process that moves in. Such a child
    says nothing (it said EPROTO, and every socket of a caller in that cgroup failed for
    good): the supervisor forks one instead, and the socket is the cgroup's."""
    with open(f"{group[0]}/cgroup.kill", "w") as f:
        f.write("1")
    born = cgroup.make_inside(group[1], None, socket.AF_INET, socket.SOCK_DGRAM, 0, False,
                              None, 5.0)
    for fd in born or ():  # a kernel that lets it live
        os.close(fd)
    ns = os.open(netns.path, os.O_RDONLY)
    try:
        (fd,) = visitor.make(group[1], ns, socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             0, False, None)
    finally:
        os.close(ns)
    with socket.socket(fileno=fd) as sock:
        sock.bind(("127.0.0.1", 0))
        assert cookie(sock) == netns.cookie
        assert cgroup_of_bound_udp(netns, sock.getsockname()[1]) == os.fstat(group[1]).st_ino
    assert live_children() == []


def test_freezes_and_signals_meanwhile_leave_nothing_behind(group: tuple[str, int]) -> None:
    """Two threads make sockets and pairs (the loop and a slow-lane worker) while the
    cgroup's owner freezes and thaws it and a caller of its uid SIGKILLs, SIGSTOPs and
    SIGCONTs whatever is in it: every call ends (a socket, no child, or EAGAIN), and no
    descriptor, mapping (the child's stack) or child is left."""
    stop = threading.Event()
    ended: list[str] = []

    def calls(pair: bool) -> None:
        while not stop.is_set():
            try:
                out = cgroup.make_inside(group[1], None, socket.AF_UNIX, socket.SOCK_DGRAM, 0,
                                         pair, None, 0.003)
                ended.append("none" if out is None else "made")
                for fd in out or ():
                    os.close(fd)
            except SyscallError as e:
                assert e.errno == errno.EAGAIN, e
                ended.append("EAGAIN")

    def owner() -> None:
        while not stop.is_set():
            for value in ("1", "0"):
                with open(f"{group[0]}/cgroup.freeze", "w") as f:
                    f.write(value)
                time.sleep(random.random() * 0.004)

    def signals() -> None:
        while not stop.is_set():
            with open(f"{group[0]}/cgroup.procs") as f:
                for pid in f.read().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), random.choice(
                            (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT)))

    def run(seconds: float) -> None:
        stop.clear()
        threads = [threading.Thread(target=calls, args=(p,)) for p in (False, True)] + [
            threading.Thread(target=owner), threading.Thread(target=signals)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()

    run(0.3)  # our threads' stacks and arenas, once
    before = sorted(os.listdir("/proc/self/fd")), child_stacks()
    run(1.5)
    assert (sorted(os.listdir("/proc/self/fd")), child_stacks()) == before
    assert live_children() == [] and {"made", "none", "EAGAIN"} <= set(ended)


def child_stacks() -> int:
    """Mappings that look like linux/_visit.c's child stacks: 4 KiB of guard, then 64 KiB."""
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            where, perms = line.split()[:2]
            start, end = (int(x, 16) for x in where.split("-"))
            spans.append((start, end, perms))
    return sum(1 for (s1, e1, p1), (s2, e2, p2) in zip(spans, spans[1:], strict=False)
               if p1 == "---p" and e1 - s1 == 4096 and e1 == s2 and e2 - s2 == 65536)
