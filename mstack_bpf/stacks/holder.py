"""The holder of a rootless stack: a process owning a user and a network namespace.

An unprivileged user cannot bind-mount a namespace to keep it alive, so a process has to
stay in it. The holder is forked from ``mstack-stack add``: it starts a session (no
terminal signals), unshares a user and a network namespace, maps the caller's uid and gid to
root inside (as ``unshare -r``; user_namespaces(7)), brings ``lo`` up and then execs
``sleep infinity`` under the name ``mstack-stack-holder NAME`` — a few hundred KiB instead
of a Python interpreter. Stopping it (SIGTERM) frees the namespaces once nothing else
holds them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from mstack_bpf.core.abi import CLONE_NEWNET, CLONE_NEWUSER
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.linux.netns import unshare
from mstack_bpf.stacks import tools

# linux/sockios.h, linux/if.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def link_up(ifname: str) -> None:
    """Set IFF_UP on ``ifname`` in the calling thread's network namespace (netdevice(7))."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", ifname.encode(), 0)
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)
            flags = struct.unpack("16sH14x", res)[1] | IFF_UP
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(), flags))
        except OSError as e:
            raise SyscallError(e.errno or errno.EIO, "ioctl(SIOCSIFFLAGS)", ifname) from None


def start_holder(name: str) -> int:
    """Start the holder of rootless stack ``name``; return its pid once it is in place.

    Forks twice so that the holder is never our child (init reaps it, not whoever called
    us). Raises :class:`SyscallError` naming the call that failed in the holder.
    """
    sleep = tools.which("sleep")
    uid, gid = os.geteuid(), os.getegid()
    r, w = os.pipe()
    mid = os.fork()
    if mid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            holder = os.fork()
            if holder == 0:
                _child(w, name, sleep, uid, gid)
            os.write(w, f"{holder}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read()
    os.waitpid(mid, 0)
    lines = report.decode(errors="replace").splitlines()
    for line in lines:
        if line.startswith("E "):
            _, err, call = line.split(" ", 2)
            raise SyscallError(int(err), call)
    pids = [int(line) for line in lines if line.isdigit()]
    if not pids:
        raise SyscallError(errno.EAGAIN, "fork")
    return pids[0]


def _child(w: int, name: str, sleep: str, uid: int, gid: int) -> None:
    """Never returns. Reports "E ERRNO CALL" on ``w`` on failure; a successful exec closes
    ``w`` (O_CLOEXEC) with nothing written."""
    call = "setsid"
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        # The caller's stdout may be a pipe someone reads to EOF: never keep it open.
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        call = "unshare"
        unshare(CLONE_NEWUSER | CLONE_NEWNET)
        call = "write(/proc/self/uid_map)"
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
        call = "ioctl(SIOCSIFFLAGS)"
        link_up("lo")
        call = f"execv({sleep})"
        os.set_inheritable(w, False)
        os.closerange(3, w)
        os.closerange(w + 1, 1 << 20)
        os.execv(sleep, [f"mstack-stack-holder {name}", "infinity"])
    except OSError as e:
        # One short write is atomic (pipe(7), PIPE_BUF), whatever order the lines come in.
        os.write(w, f"E {e.errno or errno.EIO} {getattr(e, 'call', call)}\n".encode())
    finally:
        os._exit(127)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)
