"""What a process of the same uid can do to the child that makes a caller's socket in its
cgroup while sharing the supervisor's memory and holding a copy of its descriptors
(linux/_visit.c): a rootless supervisor's caller has its uid, and can find the child in its
own cgroup's ``cgroup.procs``. It may signal it (its own call then fails); it must not read
or write that memory, take those descriptors or trace it: the supervisor is not dumpable,
and the child shares that with its memory."""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator

import pytest

from mstack_bpf.linux import cgroup
from tests.conftest import PYTHON, cgroup_members, needs_root, wait_until, write_to

pytestmark = [needs_root, pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the child that shares our memory is x86_64 only")]

UID = 4646
AS_UID = ("setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups")

#: a rootless supervisor, not dumpable as the launcher makes it, whose caller's cgroup is
#: frozen: its child waits there for 3 s
SUPERVISOR = """
import errno, os, socket, sys
from mstack_bpf.linux import cgroup, prctl
prctl.set_dumpable(False)
sys.stdin.readline()  # moved to its cgroup
directory = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
print("ready", flush=True)
try:
    made = cgroup.make_inside(directory, None, socket.AF_INET, socket.SOCK_DGRAM, 0, False,
                              None, 3.0)
    print("made" if made else "none", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
"""

#: the caller's side: everything it tries on the child, as errno names ("ok": it could)
ATTACKER = """
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
out = {}
def tried(name, call):
    try:
        call()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
def check(r):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
tried("mem", lambda: open(f"/proc/{pid}/mem", "rb").close())
tried("fd", lambda: os.listdir(f"/proc/{pid}/fd"))
tried("environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
tried("ptrace", lambda: check(libc.ptrace(0x4206, pid, None, None)))  # PTRACE_SEIZE
pidfd = os.pidfd_open(pid)
tried("pidfd_getfd", lambda: check(libc.syscall(438, pidfd, 0, 0)))
local = (ctypes.c_char * 8)()
iov = (ctypes.c_void_p * 2)(ctypes.addressof(local), 8)
remote = (ctypes.c_void_p * 2)(0x400000, 8)
tried("process_vm_readv", lambda: check(libc.process_vm_readv(pid, iov, 1, remote, 1, 0)))
tried("kill", lambda: os.kill(pid, 0))
print(json.dumps(out))
"""


@pytest.fixture
def delegated() -> Iterator[tuple[str, str]]:
    """A cgroup v2 subtree delegated to UID: the supervisor's cgroup and its caller's
    (frozen), removed after."""
    found = cgroup.v2_mount()
    if found is None or found[1] != "/":
        pytest.skip("needs the cgroup v2 hierarchy mounted (its root)")
    top = f"{found[0]}/mstack-r{random.randrange(1 << 32):08x}"
    ours, theirs = f"{top}/supervisor", f"{top}/caller"
    made: list[str] = []
    try:
        for path in (top, ours, theirs):
            os.mkdir(path)
            made.append(path)
            for name in ("", "/cgroup.procs", "/cgroup.threads"):
                os.chown(path + name, UID, UID)
        write_to(f"{theirs}/cgroup.freeze", "1")
        yield ours, theirs
    finally:
        if theirs in made:
            write_to(f"{theirs}/cgroup.freeze", "0")
        for path in reversed(made):
            assert wait_until(lambda: not cgroup_members(path), timeout=10)  # noqa: B023
            os.rmdir(path)


def test_a_caller_of_the_same_uid_cannot_reach_the_childs_memory_or_descriptors(
        delegated: tuple[str, str]) -> None:
    ours, theirs = delegated
    supervisor = subprocess.Popen([*AS_UID, PYTHON, "-c", SUPERVISOR, theirs],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert supervisor.stdin is not None and supervisor.stdout is not None
        write_to(f"{ours}/cgroup.procs", str(supervisor.pid))
        supervisor.stdin.write("\n")
        supervisor.stdin.flush()
        assert supervisor.stdout.readline() == "ready\n"
        assert wait_until(lambda: bool(cgroup_members(theirs)), timeout=5)
        (child,) = cgroup_members(theirs)
        attack = subprocess.run(
            [*AS_UID, PYTHON, "-c", ATTACKER, str(child)], capture_output=True, text=True,
            timeout=30)
        seen = json.loads(attack.stdout)
        assert seen == {"mem": "EACCES", "fd": "EACCES", "environ": "EACCES",
                        "ptrace": "EPERM", "pidfd_getfd": "EPERM",
                        "process_vm_readv": "EPERM", "kill": "ok"}, attack.stderr
        out, _ = supervisor.communicate(timeout=10)
        assert (supervisor.returncode, out) == (0, "EAGAIN\n")  # its own call, unharmed
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
