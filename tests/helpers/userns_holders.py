"""Hold two network namespaces for the naming tests, print their holders' pids as JSON, and
sleep until killed (run as root).

- "owned": a user namespace created by nobody in the initial one (a rootless stack of
  nobody's): nobody holds every capability in it.
- "nested": a user namespace created by nobody *inside* a container user namespace that
  root made (mapping nobody's uid): its owner is nobody's uid, but its parent is root's
  namespace, so nobody has no capability in it (cap_capable() in the kernel).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
NOBODY = 65534
_libc = ctypes.CDLL(None, use_errno=True)


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")


def become_nobody(groups: bool = True) -> None:
    if groups:  # (denied inside the container; it has none anyway)
        os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    _libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: a uid change cleared it; nobody may look


def hold(setup: Callable[[int], None]) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            setup(w)
            _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (after the uid change cleared it)
            if os.getppid() == 1:
                os._exit(1)
            os.write(w, b"ok")
        finally:
            os.close(w)
        signal.pause()
        os._exit(0)
    os.close(w)
    answer = os.read(r, 16)
    os.close(r)
    if answer != b"ok":
        sys.exit(f"holder {pid} failed")
    return pid


def owned(_: int) -> None:
    become_nobody()
    unshare(CLONE_NEWUSER | CLONE_NEWNET)


def nested(_: int) -> None:
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    me = os.getpid()
    helper = os.fork()
    if helper == 0:  # stays root in the initial namespace: writes the container's maps
        os.read(go_r, 1)
        with open(f"/proc/{me}/setgroups", "w") as f:
            f.write("deny")
        for kind in ("uid", "gid"):
            with open(f"/proc/{me}/{kind}_map", "w") as f:
                f.write(f"{NOBODY} {NOBODY} 1")
        os.write(done_w, b"x")
        os._exit(0)
    unshare(CLONE_NEWUSER)  # the container, owned by root
    os.write(go_w, b"x")
    os.read(done_r, 1)
    os.waitpid(helper, 0)
    become_nobody(groups=False)
    unshare(CLONE_NEWUSER | CLONE_NEWNET)  # owner: nobody's uid; parent: the container


if __name__ == "__main__":
    pids = {"owned": hold(owned), "nested": hold(nested)}
    print(json.dumps(pids), flush=True)
    signal.pause()
