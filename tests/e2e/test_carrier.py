"""A nested mstack's table survives children that close their descriptors, where eBPF runs
(supervisor/carrier.py): the kernel carries it through fork, not fd 1023 alone. The
families here stay out of the command's home (AF_UNIX), so only the table can carry them."""

from __future__ import annotations

import pytest

from tests.conftest import COOKIE_SOURCE, PYTHON, MakeNetns, mstack, needs_ebpf, needs_root

pytestmark = [needs_root, needs_ebpf]

CHILD = COOKIE_SOURCE + "print(cookie(socket.socket(socket.AF_UNIX)))"

#: each closes every descriptor but 0-2 before the child runs, as users' programs do
CLOSERS = {
    "subprocess-close-fds": (PYTHON, "-c", "import subprocess, sys; "
                             "subprocess.run([sys.executable, '-c', sys.argv[1]])", CHILD),
    "close-range": (PYTHON, "-c", "import os, sys; os.closerange(3, 1 << 20); "
                    "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])", CHILD),
    "shell-closes-1023": ("bash", "-c", 'exec 1023>&-; exec "$@"', "bash", PYTHON, "-c", CHILD),
}


@pytest.mark.parametrize("closer", sorted(CLOSERS))
def test_children_that_close_their_descriptors_keep_the_nested_table(
        make_netns: MakeNetns, closer: str) -> None:
    a, b = make_netns(), make_netns()
    cp = mstack("-o", "unix", a.name, "mstack", "-o", "unix", b.name, *CLOSERS[closer])
    assert cp.returncode == 0, cp.stderr
    assert int(cp.stdout) == b.cookie  # the outer mapping would give a.cookie


# --- stale and lost entries: the map is keyed by tid, and tids change and come back ---------

#: a thread that prints its tid and then execs: the kernel gives it the process's pid
#: (de_thread), so the thread's own tid is free again once the exec is done
THREAD_EXEC = ("import os, sys, threading\n"
               "def go():\n"
               "    print(threading.get_native_id(), flush=True)\n"
               "    os.execv(sys.argv[1], sys.argv[1:])\n"
               "threading.Thread(target=go).start()\n"
               "threading.Event().wait()\n")

#: the leader exits alone (SYS_exit; it stays a zombie) and another thread then sets a
#: table (msocket SOCK_DEFAULT, AF_UNIX): prints the pid, which is free again once it ends
ZOMBIE_LEADER = ("import ctypes, os, sys, threading, time\n"
                 "libc = ctypes.CDLL(None, use_errno=True)\n"
                 "def go():\n"
                 "    time.sleep(0.3)\n"
                 "    assert libc.syscall(-5, sys.argv[1].encode(), 1, 0, 0) == 0\n"
                 "    print(os.getpid(), flush=True)\n"
                 "    os._exit(0)\n"
                 "threading.Thread(target=go).start()\n"
                 "libc.syscall(60, 0)\n")

#: forks a child at tid argv[1] (ns_last_pid, retried: another fork on the machine may take
#: it first); the child prints the cookie of a new AF_UNIX socket
FORK_AT = COOKIE_SOURCE + (
    "import os, sys\n"
    "tid = int(sys.argv[1])\n"
    "for _ in range(1000):\n"
    "    with open('/proc/sys/kernel/ns_last_pid', 'w') as f:\n"
    "        f.write(str(tid - 1))\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        if os.getpid() == tid:\n"
    "            print(cookie(socket.socket(socket.AF_UNIX)), flush=True)\n"
    "            os._exit(0)\n"
    "        os._exit(1)\n"
    "    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0:\n"
    "        break\n"
    "else:\n"
    "    sys.exit(f'tid {tid} never came back')\n")


def test_a_thread_that_execs_keeps_the_table_of_its_process(make_netns: MakeNetns) -> None:
    """The exec'ing thread takes the pid of its process: its table goes with it, so a
    child that then closes its descriptors still has it (Go's syscall.Exec runs on any
    thread)."""
    a, b = make_netns(), make_netns()
    closer = ("import os, sys; os.closerange(3, 1 << 20); "
              "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])")
    cp = mstack("-o", "unix", a.name, "mstack", "-o", "unix", b.name, PYTHON, "-c",
                THREAD_EXEC, PYTHON, "-c", closer, CHILD)
    assert cp.returncode == 0, cp.stderr
    assert int(cp.stdout.split()[-1]) == b.cookie


@pytest.mark.parametrize("leaver", ["thread-exec", "zombie-leader"])
def test_a_reused_tid_finds_no_table_of_a_task_gone(make_netns: MakeNetns, leaver: str) -> None:
    """A tid that held a table and comes back in a task of the root table: the task
    gets the root table, not the one the tid's former owner had."""
    a, b = make_netns(), make_netns()
    leave = {"thread-exec": f'mstack -o unix {b.name} "$0" -c "$1" /bin/true',
             "zombie-leader": f'"$0" -c "$2" /run/netns/{b.name}'}[leaver]
    cp = mstack("-o", "unix", a.name, "bash", "-c", f'exec "$0" -c "$3" $({leave} | head -1)',
                PYTHON, THREAD_EXEC, ZOMBIE_LEADER, FORK_AT)
    assert cp.returncode == 0, cp.stderr
    assert int(cp.stdout) == a.cookie


def test_a_nested_lock_is_not_left_through_a_reused_tid(make_netns: MakeNetns) -> None:
    """Under a nested `--lock`, a process drops its own entry (a thread execs) and forks
    until a child lands on a tid a task outside the lock left with another table."""
    a, b, c = make_netns(), make_netns(), make_netns()
    leave = f'mstack -o unix {c.name} "$0" -c "$1" /bin/true'
    attack = f'mstack --lock -o unix {b.name} "$0" -c "$1" "$0" -c "$2" "$tid"'
    cp = mstack("-o", "unix", a.name, "bash", "-c",
                f'tid=$({leave} | head -1); exec {attack}', PYTHON, THREAD_EXEC, FORK_AT)
    assert cp.returncode == 0, cp.stderr
    assert int(cp.stdout.split()[-1]) == b.cookie  # the lock's table, not c's
