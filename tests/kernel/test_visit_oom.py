"""The OOM killer and the child that makes a caller's sockets in its cgroup while sharing the
supervisor's memory (linux/_visit.c): when the OOM killer picks a task, it kills every
process that shares that task's memory (mm/oom_kill.c, ``__oom_kill_process``), and it picks
by the size of that memory, the supervisor's. A caller whose memory cgroup runs out (or has
``memory.oom.group``, as Kubernetes sets on cgroup v2) while its call is in flight must not
take the supervisor with it."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import PYTHON, cgroup_members, needs_root, new_cgroup, wait_until, write_to

pytestmark = [needs_root, pytest.mark.skipif(
    os.uname().machine != "x86_64", reason="the child that shares our memory is x86_64 only")]

MEMCG_V1 = "/sys/fs/cgroup/memory"

#: a supervisor (started as mstack's and mstack-agent's are) of 64 MiB whose caller's
#: cgroup is frozen: its child waits there, the slow lane's 2 s
SUPERVISOR = """
import errno, os, socket, sys
from mstack_bpf.supervisor import visitor
visitor.shield()
big = bytearray(64 << 20)
for i in range(0, len(big), 4096):
    big[i] = 1
directory = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
print("ready", flush=True)
try:
    visitor.make(directory, None, socket.AF_INET, socket.SOCK_DGRAM, 0, False, None)
    print("made", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
"""


@pytest.fixture
def frozen() -> Iterator[str]:
    """A frozen cgroup v2 (its path), removed after."""
    with new_cgroup("mstack-o") as path:
        write_to(f"{path}/cgroup.freeze", "1")
        yield path


@pytest.fixture
def small_memcg() -> Iterator[str]:
    """A cgroup v1 memory cgroup of 16 MiB (its path), removed after."""
    if not os.path.exists(f"{MEMCG_V1}/memory.limit_in_bytes"):
        pytest.skip("needs the memory controller on a cgroup v1 hierarchy, to move the child "
                    "alone into a small memory cgroup (on cgroup v2 it is born in its caller's)")
    path = f"{MEMCG_V1}/mstack-o{random.randrange(1 << 32):08x}"
    os.mkdir(path)
    try:
        write_to(f"{path}/memory.limit_in_bytes", str(16 << 20))
        yield path
    finally:
        for pid in cgroup_members(path):  # back where we are: nothing of ours is left in it
            write_to(f"{MEMCG_V1}/cgroup.procs", str(pid))
        os.rmdir(path)


def test_an_oom_in_the_callers_memory_cgroup_spares_the_supervisor(frozen: str,
                                                                  small_memcg: str) -> None:
    """The child waits in its caller's (frozen) cgroup; it is moved alone into a memory
    cgroup of 16 MiB where a dd then runs out of memory. The OOM killer must pick the dd, and
    the supervisor must live to report what became of its child (it was SIGKILLed: its
    child, with the supervisor's 64 MiB, was the biggest task there, and shares its
    memory)."""
    supervisor = subprocess.Popen([PYTHON, "-c", SUPERVISOR, frozen], stdout=subprocess.PIPE,
                                  text=True)
    try:
        assert supervisor.stdout is not None
        assert supervisor.stdout.readline() == "ready\n"
        assert wait_until(lambda: bool(cgroup_members(frozen)), timeout=5)
        (child,) = cgroup_members(frozen)
        write_to(f"{small_memcg}/cgroup.procs", str(child))
        hog = subprocess.run(
            ["sh", "-c", f"echo $$ > {small_memcg}/cgroup.procs && "
                         "exec dd if=/dev/zero of=/dev/null bs=48M count=1"],
            capture_output=True, text=True, timeout=30)
        assert hog.returncode == -9, hog  # the OOM killer picked it
        out, _ = supervisor.communicate(timeout=10)
        # EAGAIN: the child that shares its memory was spared and timed out; EPROTO: one it
        # forked (it could not make itself unpickable: no CAP_SYS_RESOURCE) died alone
        assert supervisor.returncode == 0 and out in ("EAGAIN\n", "EPROTO\n"), out
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
