"""Probe for msocket(2) and per-process default tables; prints JSON facts.

Usage: msocket_probe.py COMMAND [ARG]... (functions named cmd_*).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from mstack_bpf import NotUnderMstack, msocket, set_default_stack


def where(sock: socket.socket) -> int:
    value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, 71, 8))[0]
    sock.close()
    return value


def attempt(fn: Callable[..., object], *args: object) -> object:
    try:
        result = fn(*args)
    except NotUnderMstack:
        return "NotUnderMstack"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    if isinstance(result, socket.socket):
        return where(result)
    return result


def plain(family: int = socket.AF_INET) -> object:
    return attempt(lambda: socket.socket(family, socket.SOCK_DGRAM))


def cmd_explicit(*paths: str) -> object:
    """msocket(path, AF_INET) for each path ('-' for NULL), then a plain socket()."""
    out = {p: attempt(msocket, None if p == "-" else p, socket.AF_INET) for p in paths}
    out["plain"] = plain()
    return out


def cmd_thread_in(ns_path: str, *paths: str) -> object:
    """A second thread enters the namespace at ``ns_path`` (setns moves only it), then
    msocket(path, AF_INET) for each path from that thread."""
    out: dict[str, object] = {}

    def body() -> None:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            out["setns"] = errno.errorcode[ctypes.get_errno()]
        os.close(fd)
        out.update({p: attempt(msocket, p, socket.AF_INET) for p in paths})

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return out


def cmd_setdefault(stack: str, family: str) -> object:
    before = {"4": plain(), "6": plain(socket.AF_INET6)}
    result = attempt(set_default_stack, stack, int(family))
    return {"result": result, "before": before,
            "after": {"4": plain(), "6": plain(socket.AF_INET6)}}


def cmd_inherit(first: str, second: str) -> object:
    """Set ``first``; fork a child that waits; set ``second``; the child reports after."""
    set_default_stack(first, socket.AF_INET)
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(go_r, 1)  # wait until the parent has changed its own table
        os.write(res_w, json.dumps({"child": plain()}).encode())
        os._exit(0)
    set_default_stack(second, socket.AF_INET)
    os.write(go_w, b"x")
    child = json.loads(os.read(res_r, 65536))
    os.waitpid(pid, 0)
    return {"parent": plain(), **child}


def cmd_orphan(first: str, second: str, path: str) -> object:
    """Set ``first``; a grandchild outlives its parent (reparented), then the original
    process sets ``second``; the orphan's first socket is written to ``path``."""
    set_default_stack(first, socket.AF_INET)
    go_r, go_w = os.pipe()
    if os.fork() == 0:
        parent = os.getpid()
        if os.fork() == 0:
            os.read(go_r, 1)
            deadline = time.monotonic() + 10
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.01)
            with open(path + ".tmp", "w") as f:
                json.dump({"orphan": plain(), "ppid": os.getppid()}, f)
            os.rename(path + ".tmp", path)
            os._exit(0)
        os._exit(0)  # the parent exits at once: the grandchild is reparented
    os.wait()
    set_default_stack(second, socket.AF_INET)
    os.write(go_w, b"x")
    return {"original": plain()}


def cmd_thread(stack: str) -> object:
    """A thread changes the default: the whole process (its other threads) follows."""
    t = threading.Thread(target=set_default_stack, args=(stack, socket.AF_INET))
    t.start()
    t.join()
    return {"main": plain()}


def cmd_execs(stack: str) -> object:
    """Set the default, then fork+exec a fresh interpreter that makes a socket."""
    set_default_stack(stack, socket.AF_INET)
    import subprocess

    out = subprocess.run([sys.executable, __file__, "plain"], capture_output=True, text=True,
                         close_fds=False)
    return {"exec_child": json.loads(out.stdout) if out.stdout.strip() else out.stderr}


def cmd_plain() -> object:
    """Where a plain AF_INET socket() lands."""
    return plain()


def cmd_busy(stack: str) -> object:
    """The marker's slot holds a file of our own: SOCK_DEFAULT must not close it."""
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 1023)
    result = attempt(set_default_stack, stack, socket.AF_INET)
    still = os.readlink("/proc/self/fd/1023")
    return {"result": result, "slot": still}


def main() -> None:
    command, *args = sys.argv[1:]
    print(json.dumps(globals()[f"cmd_{command}"](*args)), flush=True)


if __name__ == "__main__":
    main()
