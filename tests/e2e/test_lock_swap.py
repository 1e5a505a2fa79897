"""A locked stack keeps meaning the namespace it meant at start: a target that mounts its
own namespace over the stack's path (in a mount namespace of its own) and names that path
in msocket gets no socket there, and nobody in the tree does."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from tests.conftest import AS_NOBODY, COOKIE_SOURCE, Netns, mstack, needs_root

pytestmark = needs_root

POC = COOKIE_SOURCE + r'''
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
path = sys.argv[1].encode()
def plain():
    try:
        return cookie(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    except OSError as e:
        return e.errno
r, w = os.pipe()
sibling = os.fork()
if sibling == 0:                       # a sibling that never touches msocket
    os.read(r, 1)
    print(json.dumps({"sibling": plain()}), flush=True)
    os._exit(0)
out = {}
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x10000000, 0x40000000
if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) == 0:
    own = cookie(socket.socket(socket.AF_UNIX))  # AF_UNIX is in the stack too: see below
    libc.mount(b"none", b"/", None, 0x40000 | 0x4000, None)  # MS_PRIVATE | MS_REC
    out["bind"] = libc.mount(b"/proc/self/ns/net", path, None, 0x1000, None)  # MS_BIND
    fd = libc.syscall(-5, path, socket.AF_INET, socket.SOCK_DGRAM, 0)
    out["msocket"] = cookie(socket.socket(fileno=fd)) if fd >= 0 else -ctypes.get_errno()
else:
    out["unshare"] = -ctypes.get_errno()
out["plain"] = plain()
print(json.dumps(out), flush=True)
os.write(w, b"x")
os.waitpid(sibling, 0)
'''


@pytest.mark.parametrize("keep", [True, False], ids=["keep-namespace", "home"])
def test_a_target_cannot_swap_a_locked_stack(netns: Netns, shared_dir: Path,
                                             keep: bool) -> None:
    poc = shared_dir / "poc.py"
    poc.write_text(POC)
    where = ("--keep-namespace",) if keep else ()
    cp = mstack("--lock", *where, netns.path, *AS_NOBODY, "/usr/bin/python3", str(poc),
                netns.path)
    assert cp.returncode == 0, cp.stderr
    lines = [json.loads(line) for line in cp.stdout.splitlines()]
    main = next(line for line in lines if "plain" in line)
    sibling = next(line for line in lines if "sibling" in line)
    assert main["plain"] == netns.cookie
    assert sibling["sibling"] == netns.cookie
    if not keep:
        # living in the locked stack, the target may not make a namespace of its own at all
        assert main == {"unshare": -errno.EPERM, "plain": netns.cookie}
        return
    assert main["bind"] == 0  # the swap was really attempted
    # the path names the target's own namespace now, not the stack: a locked family may not
    # go there (EPERM), and the supervisor did not take the stack's place for it either
    assert main["msocket"] == -errno.EPERM
