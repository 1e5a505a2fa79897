"""Escape attempts run *inside* a policy's target; each command prints its facts as JSON.

Usage: escape_probe.py COMMAND [ARG]... (functions named cmd_*). A socket is reported as
``{"cookie": N}`` (SO_NETNS_COOKIE: the namespace it lives in), a failed call as
``{"errno": "NAME"}``. The tests decide what is allowed; this file only tries.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable

SO_NETNS_COOKIE = 71
SOCK_PACKET = 10
ETH_P_ALL = 0x0003
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
NR_SECCOMP, NR_PTRACE, NR_PIDFD_OPEN, NR_PIDFD_GETFD = 317, 101, 434, 438
NR_PROCESS_VM_WRITEV, NR_SETNS, NR_UNSHARE = 311, 308, 272
PTRACE_TRACEME, PTRACE_PEEKUSER, PTRACE_CONT, PTRACE_ATTACH = 0, 3, 7, 16
PTRACE_SETOPTIONS, PTRACE_SEIZE = 0x4200, 0x4206

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

#: (name, family, type, protocol) of the sockets every command checks
KINDS = (
    ("unix", socket.AF_UNIX, socket.SOCK_DGRAM, 0),
    ("inet", socket.AF_INET, socket.SOCK_DGRAM, 0),
    ("inet6", socket.AF_INET6, socket.SOCK_DGRAM, 0),
    ("netlink", socket.AF_NETLINK, socket.SOCK_RAW, 0),
    ("packet", socket.AF_PACKET, socket.SOCK_DGRAM, 0),
    ("sock_packet", socket.AF_INET, SOCK_PACKET, socket.htons(ETH_P_ALL)),
)


def errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def sys_call(nr: int, *args: int | ctypes.c_void_p | ctypes.c_char_p) -> tuple[int, str]:
    """A raw system call: (result, errno name or "")."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *cargs)
    return ret, errname(ctypes.get_errno()) if ret < 0 else ""


def describe_fd(fd: int) -> dict[str, object]:
    """Where socket ``fd`` lives; closes it."""
    try:
        raw = socket.socket(fileno=fd)
    except OSError as e:
        os.close(fd)
        return {"errno": errname(e.errno or 0), "what": "not a socket"}
    try:
        cookie = struct.unpack("=Q", raw.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        return {"cookie": cookie, "family": raw.family.value}
    finally:
        raw.close()


def result(ret: int, err: str) -> dict[str, object]:
    return describe_fd(ret) if ret >= 0 else {"errno": err}


def sockets() -> dict[str, object]:
    """A plain socket() of every kind in KINDS."""
    return {name: result(*sys_call(41, f, t, p)) for name, f, t, p in KINDS}


def msocket(path: str | None, family: int, sock_type: int, proto: int) -> tuple[int, str]:
    raw = None if path is None else ctypes.c_char_p(os.fsencode(path))
    return sys_call(-5, raw if raw is not None else ctypes.c_void_p(0), family, sock_type, proto)


def in_child(body: Callable[[], object]) -> object:
    """Run ``body()`` in a forked child (so that a namespace change stays there)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(body()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data) if data else None


# --- commands -----------------------------------------------------------------------------


def cmd_plain() -> object:
    return sockets()


def msocket_path(path: str) -> str | None:
    """'-' is NULL; 'fd:PATH' opens PATH and names it as /proc/OUR_PID/fd/N."""
    if path == "-":
        return None
    if path.startswith("fd:"):
        return f"/proc/{os.getpid()}/fd/{os.open(path[3:], os.O_RDONLY)}"
    return path


def cmd_msocket(*paths: str) -> object:
    """msocket(path, family, type, proto) for every path and every kind."""
    return {p: {name: result(*msocket(msocket_path(p), f, t, proto))
                for name, f, t, proto in KINDS} for p in paths}


def cmd_sockdefault(*paths: str) -> object:
    """SOCK_DEFAULT with every path for AF_UNSPEC and each family, then plain sockets."""
    families = {"unspec": 0, "unix": 1, "inet": 2, "inet6": 10, "netlink": 16, "packet": 17}
    tried = {p: {name: msocket(msocket_path(p), f, 0, 0)[1] or "ok"
                 for name, f in families.items()} for p in paths}
    return {"set": tried, "after": sockets()}


def cmd_seccomp() -> object:
    """A filter of our own with a listener (it would win over the policy's ALLOW)."""
    def body() -> object:
        allow = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET | BPF_K: ALLOW
        prog_buf = ctypes.create_string_buffer(allow)
        prog = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(prog_buf))
        prog_c = ctypes.create_string_buffer(prog)
        libc.prctl(38, 1, 0, 0, 0)  # no_new_privs: a non-root caller needs it
        ret, err = sys_call(NR_SECCOMP, SECCOMP_SET_MODE_FILTER,
                            SECCOMP_FILTER_FLAG_NEW_LISTENER, ctypes.addressof(prog_c))
        return {"ret": ret, "errno": err}
    return in_child(body)


def cmd_shadow(*argv: str) -> object:
    """Install a filter answering msocket (-5) with ENOSYS ("no mstack above"), then exec
    ``argv``: a nested mstack would then believe it is free to install a filter."""
    m5 = 0xFFFFFFFB
    insns = [
        (0x20, 0, 0, 0),                 # ld [nr]
        (0x15, 0, 1, m5),                # jeq -5
        (0x06, 0, 0, 0x00050000 | errno.ENOSYS),
        (0x06, 0, 0, 0x7FFF0000),        # ALLOW
    ]
    code = b"".join(struct.pack("=HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(code)
    prog = ctypes.create_string_buffer(struct.pack("=HxxxxxxQ", len(insns), ctypes.addressof(buf)))
    libc.prctl(38, 1, 0, 0, 0)
    ret, err = sys_call(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.addressof(prog))
    if ret < 0:
        return {"shadow": err}
    sys.stdout.flush()
    os.execv(argv[0], list(argv))


def cmd_setns(path: str, pid: str) -> object:
    """setns into another network namespace: by file (nstype CLONE_NEWNET and 0) and by
    pidfd; where one succeeds, the sockets made there."""
    def attempt(make_fd: Callable[[], int], nstype: int) -> object:
        def body() -> object:
            ret, err = sys_call(NR_SETNS, make_fd(), nstype)
            return {"errno": err} if ret < 0 else {"ok": True, "sockets": sockets()}
        return in_child(body)

    def by_file() -> int:
        return os.open(path, os.O_RDONLY)

    def by_pidfd() -> int:
        return os.pidfd_open(int(pid))

    return {"file_newnet": attempt(by_file, CLONE_NEWNET), "file_0": attempt(by_file, 0),
            "pidfd_newnet": attempt(by_pidfd, CLONE_NEWNET),
            "pidfd_user_net": attempt(by_pidfd, CLONE_NEWNET | CLONE_NEWUSER)}


def cmd_unshare() -> object:
    """unshare(CLONE_NEWNET) and unshare(CLONE_NEWUSER|CLONE_NEWNET), each in a child."""
    def attempt(flags: int) -> object:
        def body() -> object:
            ret, err = sys_call(NR_UNSHARE, flags)
            return {"errno": err} if ret < 0 else {"ok": True, "sockets": sockets()}
        return in_child(body)
    return {"net": attempt(CLONE_NEWNET), "user_net": attempt(CLONE_NEWUSER | CLONE_NEWNET)}


def _getfd(pid: int, fd: int) -> dict[str, object]:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        return {"errno": errname(e.errno or 0), "what": "pidfd_open"}
    try:
        return result(*sys_call(NR_PIDFD_GETFD, pidfd, fd, 0))
    finally:
        os.close(pidfd)


def _sleeper() -> int:
    """A child in our tree holding a socket at fd 200, waiting to be killed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        os.dup2(s.fileno(), 200)
        os.write(w, b"x")
        while True:
            signal.pause()
    os.close(w)
    os.read(r, 1)
    os.close(r)
    return pid


def cmd_reach(*targets: str) -> object:
    """pidfd_getfd, ptrace attach/seize and process_vm_writev against each PID:FD of another
    process (outside the tree, the supervisor) and against a child of our own."""
    child = _sleeper()
    out: dict[str, object] = {}
    buf = ctypes.create_string_buffer(b"x" * 16)
    local = struct.pack("=QQ", ctypes.addressof(buf), 16)
    local_c = ctypes.create_string_buffer(local)
    try:
        for item in [*targets, f"child:{child}:200"]:
            name, pid_s, fd_s = item.split(":")
            pid = int(pid_s)
            remote_c = ctypes.create_string_buffer(struct.pack("=QQ", ctypes.addressof(buf), 16))
            attach = sys_call(NR_PTRACE, PTRACE_ATTACH, pid, 0, 0)
            seize = sys_call(NR_PTRACE, PTRACE_SEIZE, pid, 0, 0)
            vmw = sys_call(NR_PROCESS_VM_WRITEV, pid, ctypes.addressof(local_c), 1,
                           ctypes.addressof(remote_c), 1, 0)
            out[name] = {
                "pidfd_getfd": _getfd(pid, int(fd_s)),
                "ptrace_attach": attach[1] or "ok",
                "ptrace_seize": seize[1] or "ok",
                "process_vm_writev": vmw[1] or "ok",
            }
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
    return out


def cmd_traceme(program: str, *args: str) -> object:
    """A child does PTRACE_TRACEME and execs ``program``: we are its tracer. Which requests
    does the tracer (under the policy) get? Then the child is killed."""
    pid = os.fork()
    if pid == 0:
        try:
            sys_call(NR_PTRACE, PTRACE_TRACEME, 0, 0, 0)
            os.execv(program, [program, *args])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, os.WUNTRACED)
    out: dict[str, object] = {"stopped": os.WIFSTOPPED(status)}
    word_c = ctypes.c_long()
    word = sys_call(NR_PTRACE, PTRACE_PEEKUSER, pid, 0, ctypes.addressof(word_c))
    out["peekuser"] = word[1] or "ok"
    out["setoptions"] = sys_call(NR_PTRACE, PTRACE_SETOPTIONS, pid, 0, 0)[1] or "ok"
    out["cont"] = sys_call(NR_PTRACE, PTRACE_CONT, pid, 0, 0)[1] or "ok"
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return out


def cmd_scm(path: str) -> object:
    """Receive descriptors over AF_UNIX from a process outside the policy."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        _, fds, _, _ = socket.recv_fds(s, 16, 8)
    except OSError as e:
        return {"errno": errname(e.errno or 0)}
    finally:
        s.close()
    return {"received": [describe_fd(fd) for fd in fds]}


def cmd_memwrite(pid: str, addr: str, data: str) -> object:
    """Write ``data`` at ``addr`` of process ``pid`` through /proc/PID/mem."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    except OSError as e:
        return {"errno": errname(e.errno or 0), "what": "open"}
    try:
        return {"written": os.pwrite(fd, data.encode(), int(addr))}
    except OSError as e:
        return {"errno": errname(e.errno or 0), "what": "pwrite"}
    finally:
        os.close(fd)


def cmd_svmem(token: str) -> object:
    """Find this tree's supervisor (comm ``mstack-sv``, ``token`` in its command line, which
    is mstack's own) and try to open its /proc/PID/mem for writing and list its fds."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "mstack-sv":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if token.encode() not in f.read():
                    continue
        except OSError:
            continue
        out: dict[str, object] = {"found": True}
        try:
            os.close(os.open(f"/proc/{entry}/mem", os.O_RDWR))
            out["mem"] = "opened"
        except OSError as e:
            out["mem"] = errname(e.errno or 0)
        try:
            out["fds"] = sorted(os.readlink(f"/proc/{entry}/fd/{fd}")
                                for fd in os.listdir(f"/proc/{entry}/fd"))
        except OSError as e:
            out["fds"] = errname(e.errno or 0)
        return out
    return {"found": False}


def cmd_hold(path: str) -> object:
    """Run *outside* any policy: hold an AF_INET and an AF_PACKET socket, a buffer, and an
    AF_UNIX listener at ``path`` that hands both sockets to whoever connects. Prints its
    facts, then serves until a line on stdin; prints the buffer and exits."""
    inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    packet = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    buf = ctypes.create_string_buffer(b"untouched", 32)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen()
    print(json.dumps({"pid": os.getpid(), "inet": inet.fileno(), "packet": packet.fileno(),
                      "buf": ctypes.addressof(buf)}), flush=True)
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in ready:
            sys.stdin.readline()
            return {"buf": buf.value.decode(errors="replace")}
        conn, _ = listener.accept()
        socket.send_fds(conn, [b"x"], [inet.fileno(), packet.fileno()])
        conn.close()


def main() -> None:
    command, *args = sys.argv[1:]
    out = globals()[f"cmd_{command}"](*args)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

