"""A probe run *inside* the target: it reports, as JSON on stdout, where its sockets live.

Usage: probe.py COMMAND [ARG]...  (see the functions named cmd_*). Assertions are made by
the tests on these facts, never on mstack's own bookkeeping.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import socket
import struct
import sys
import threading
import time

SO_NETNS_COOKIE = 71


def cookie(sock: socket.socket) -> int:
    value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    return value


def try_socket(family: int, kind: int = socket.SOCK_STREAM, proto: int = 0) -> dict[str, object]:
    if family in (socket.AF_NETLINK,) and kind == socket.SOCK_STREAM:
        kind = socket.SOCK_RAW
    if family == socket.AF_PACKET and kind == socket.SOCK_STREAM:
        kind = socket.SOCK_DGRAM
    try:
        s = socket.socket(family, kind, proto)
    except OSError as e:
        return {"errno": errno.errorcode.get(e.errno or 0, str(e.errno))}
    try:
        return {"cookie": cookie(s), "uid": os.fstat(s.fileno()).st_uid}
    finally:
        s.close()


def cmd_families(*families: str) -> object:
    """socket() for each family number: its namespace cookie or its errno."""
    return {f: try_socket(int(f)) for f in families}


def cmd_self() -> object:
    """The cookie of this process's own namespace, and its pid."""
    return {"pid": os.getpid(), "ppid": os.getppid()}


def cmd_tree() -> object:
    """AF_INET from the process, a thread, a child and a grandchild."""
    out: dict[str, object] = {"process": try_socket(socket.AF_INET)}
    box: dict[str, object] = {}
    t = threading.Thread(target=lambda: box.update(thread=try_socket(socket.AF_INET)))
    t.start()
    t.join()
    out.update(box)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child = {"child": try_socket(socket.AF_INET)}
        r2, w2 = os.pipe()
        if os.fork() == 0:
            os.write(w2, json.dumps(try_socket(socket.AF_INET)).encode())
            os._exit(0)
        os.close(w2)
        os.wait()
        child["grandchild"] = json.loads(os.read(r2, 4096))
        os.write(w, json.dumps(child).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    out.update(json.loads(os.read(r, 65536)))
    return out


def cmd_daemon(path: str, delay: str = "0.5") -> object:
    """Double-fork, outlive the command, then make sockets and write the result to ``path``."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(float(delay))
            result = {"ppid": os.getppid(), "inet": try_socket(socket.AF_INET)}
            with open(path + ".tmp", "w") as f:
                json.dump(result, f)
            os.rename(path + ".tmp", path)
            os._exit(0)
        os._exit(0)
    os.wait()
    return {"parent": os.getpid()}


def cmd_flags() -> object:
    """SOCK_CLOEXEC and SOCK_NONBLOCK as the target sees them (raw socket(2): Python's
    socket.socket always adds SOCK_CLOEXEC)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for name, kind in (("plain", 0), ("cloexec", socket.SOCK_CLOEXEC),
                       ("nonblock", socket.SOCK_NONBLOCK)):
        fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM | kind, 0)
        assert fd >= 0, ctypes.get_errno()
        fd_flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fl_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        os.close(fd)
        out[name] = {"cloexec": bool(fd_flags & fcntl.FD_CLOEXEC),
                     "nonblock": bool(fl_flags & os.O_NONBLOCK)}
    return out


def cmd_privileged() -> object:
    """Sockets whose creation checks privileges, plus the owner of a TCP socket."""
    return {
        "raw": try_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        "packet": try_socket(socket.AF_PACKET, socket.SOCK_RAW, 0),
        "tcp": try_socket(socket.AF_INET),
        "uid": os.getuid(),
    }


def cmd_drop(uid: str) -> object:
    """A daemon that drops privileges mid-life: raw before and after setuid."""
    before = try_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    os.setgroups([])
    os.setgid(int(uid))
    os.setuid(int(uid))
    return {"before": before,
            "after": try_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
            "tcp_after": try_socket(socket.AF_INET)}


def cmd_emfile() -> object:
    """Fill the fd table, then ask for a socket: the target must see EMFILE."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    result = try_socket(socket.AF_INET)
    for fd in held[:4]:
        os.close(fd)
    return {"full": result, "after": try_socket(socket.AF_INET)}


def cmd_loop(count: str, family: str = "2") -> object:
    """``count`` socket()+close() calls; how many failed and with which errno."""
    failures: dict[str, int] = {}
    fam = int(family)
    for _ in range(int(count)):
        try:
            s = socket.socket(fam, socket.SOCK_DGRAM if fam != 16 else socket.SOCK_RAW)
            s.close()
        except OSError as e:
            key = errno.errorcode.get(e.errno or 0, "?")
            failures[key] = failures.get(key, 0) + 1
    return {"failures": failures}


def main() -> None:
    command, *args = sys.argv[1:]
    result = globals()[f"cmd_{command}"](*args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
