"""A rootless supervisor cannot read the descriptors of a non-dumpable process of its own
uid: a nested lock must not be left by turning non-dumpable (the marker that carries the
nested table is then unreadable, and the tree's root table must not be taken instead)."""

from __future__ import annotations

import subprocess

from tests.conftest import VENV_PYTHON as PY
from tests.e2e.conftest import SETPRIV, Nobody, unique
from tests.e2e.conftest import in_stack as _in_stack

#: becomes non-dumpable, then reports where an AF_INET socket lives (or the errno)
NON_DUMPABLE = """
import ctypes, errno, socket, struct
if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0
    raise SystemExit("prctl failed")
try:
    s = socket.socket(socket.AF_INET)
    print(struct.unpack('=Q', s.getsockopt(1, 71, 8))[0])
except OSError as e:
    print(errno.errorcode[e.errno])
"""
COOKIE = ("import socket,struct;s=socket.socket(socket.AF_INET);"
          "print(struct.unpack('=Q',s.getsockopt(1,71,8))[0])")


def test_non_dumpable_caller_does_not_leave_a_nested_lock(nobody: Nobody) -> None:
    name = unique()
    nobody.ok("add", name)
    inside = _in_stack(nobody, nobody.info(name)["holder_pid"], PY, "-c", COOKIE).stdout.strip()
    native = nobody.run(PY, "-c", COOKIE).stdout.strip()
    dumpable = nobody.run("mstack", "-o", "4", "native", "mstack", "--lock", "-o", "4", name,
                          PY, "-c", COOKIE)
    assert dumpable.stdout.strip() == inside != native, dumpable.stderr
    attack = nobody.run("mstack", "-o", "4", "native", "mstack", "--lock", "-o", "4", name,
                        PY, "-c", NON_DUMPABLE)
    # The supervisor cannot tell this caller's table: it refuses rather than guess.
    assert attack.stdout.strip() == "EACCES", (attack.stdout, attack.stderr)
    nobody.ok("del", name)


def test_non_dumpable_caller_gets_what_every_table_agrees_on(nobody: Nobody) -> None:
    """Where every table of the tree decides alike (AF_INET is in the stack in both), the
    unreadable marker does not matter."""
    name = unique()
    nobody.ok("add", name)
    inside = _in_stack(nobody, nobody.info(name)["holder_pid"], PY, "-c", COOKIE).stdout.strip()
    under = nobody.run("mstack", "-o", "4", name, "mstack", "--lock", "-o", "6", "null",
                       PY, "-c", NON_DUMPABLE)
    assert under.stdout.strip() == inside, (under.stdout, under.stderr)
    nobody.ok("del", name)


PAIR = ("import socket,struct;a,b=socket.socketpair(socket.AF_UNIX,socket.SOCK_DGRAM);"
        "b.send(b'x');assert a.recv(1)==b'x';"
        "print(struct.unpack('=Q',a.getsockopt(1,71,8))[0])")
UNIX_COOKIE = COOKIE.replace("socket.AF_INET", "socket.AF_UNIX")


def test_socketpair_made_in_a_rootless_stack_by_its_helper(nobody: Nobody) -> None:
    name = unique()
    nobody.ok("add", name)
    holder = nobody.info(name)["holder_pid"]
    inside = _in_stack(nobody, holder, PY, "-c", UNIX_COOKIE).stdout.strip()
    under = nobody.run("mstack", "--lock", "-o", "unix", name, PY, "-c", PAIR)
    assert under.stdout.strip() == inside, under.stderr
    nobody.ok("del", name)


def test_own_rootless_stack_by_bare_name_under_a_root_mstack(nobody: Nobody) -> None:
    """A root supervisor looks a bare name up among the *caller's* rootless stacks (where
    mstack-stack keeps them for its uid and XDG_RUNTIME_DIR), not root's: it was ENOENT."""
    name = unique()
    nobody.ok("add", name)
    inside = _in_stack(nobody, nobody.info(name)["holder_pid"], PY, "-c", COOKIE).stdout.strip()
    code = (f"import socket,struct,mstack_bpf;s=mstack_bpf.msocket({name!r},socket.AF_INET);"
            "print(struct.unpack('=Q',s.getsockopt(1,71,8))[0])")
    env = [f"{k}={v}" for k, v in nobody.env.items()]
    cp = subprocess.run(["mstack", "-o", "4", "native", *SETPRIV, "env", "-i", *env,
                         PY, "-c", code], capture_output=True, text=True, timeout=30,
                        cwd=nobody.home)
    assert cp.stdout.strip() == inside, cp.stderr
    nobody.ok("del", name)
