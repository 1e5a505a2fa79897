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


# --- commands for process, credential and robustness tests -------------------------------

_HELD: list[socket.socket] = []  # sockets kept open across the steps of one run


def cmd_tag(token: str) -> object:
    """Nothing: puts ``token`` in the command line (tests find their supervisor by it)."""
    return {"tag": token}


def cmd_steps(*specs: str) -> object:
    """Run each ``command,arg,...`` in turn; after each, print its report and wait for a line
    on stdin, so that the test can look at the target and its supervisor in between."""
    for spec in specs:
        command, *args = spec.split(",")
        sys.stdout.write(json.dumps(globals()[f"cmd_{command}"](*args)) + "\n")
        sys.stdout.flush()
        sys.stdin.readline()
    return {"done": True}


def cmd_listen(port: str) -> object:
    """A TCP listener on 127.0.0.1:``port``, kept open for the following steps."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen()
    _HELD.append(s)
    return {"cookie": cookie(s), "uid": os.fstat(s.fileno()).st_uid}


def cmd_msocket() -> object:
    """The virtual msocket call -5 with a NULL path and SOCK_DEFAULT: its result or errno."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(-5), ctypes.c_long(0), ctypes.c_long(0),
                       ctypes.c_long(0), ctypes.c_long(0))
    if ret < 0:
        return {"errno": errno.errorcode.get(ctypes.get_errno(), "?")}
    return {"ret": ret}


def cmd_unshare_net() -> object:
    """unshare(CLONE_NEWNET) in a child (so the probe itself keeps its namespace)."""
    import ctypes

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            ok = libc.unshare(0x40000000) == 0
            os.write(w, b"ok" if ok else errno.errorcode.get(ctypes.get_errno(), "?").encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    answer = os.read(r, 64).decode()
    os.close(r)
    return {"result": answer}


def cmd_daemon_wait(path: str, go: str) -> object:
    """Like ``daemon``, but the daemon waits (at most 30 s) until file ``go`` exists; it
    leaves the command's stdio, as a daemon does, so a reader of the command's output is not
    kept waiting."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            try:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                for _ in range(3000):
                    if os.path.exists(go):
                        break
                    time.sleep(0.01)
                result = {"pid": os.getpid(), "inet": try_socket(socket.AF_INET)}
                with open(path + ".tmp", "w") as f:
                    json.dump(result, f)
                os.rename(path + ".tmp", path)
            finally:
                os._exit(0)
        os._exit(0)
    os.wait()
    return {"parent": os.getpid()}


def _socket_forever(family: int, w: int) -> None:
    socket.socket(family, socket.SOCK_DGRAM).close()
    os.write(w, b"x")
    while True:
        socket.socket(family, socket.SOCK_DGRAM).close()


def cmd_killstorm(count: str, family: str = "2") -> object:
    """``count`` children, each SIGKILLed at a random moment of a stream of socket() calls."""
    import random
    import signal

    killed = 0
    for _ in range(int(count)):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                _socket_forever(int(family), w)
            finally:
                os._exit(1)
        os.close(w)
        started = os.read(r, 1) == b"x"
        os.close(r)
        time.sleep(random.random() * 0.002)  # anywhere in the stream, also mid-call
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed += started and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"killed": killed, "after": try_socket(int(family))}


def cmd_sigstorm(count: str, family: str = "2", restart: str = "1") -> object:
    """socket() (raw libc, no Python EINTR retry) while SIGALRM (SA_RESTART unless
    ``restart`` is 0) arrives every millisecond; at least ``count`` calls and, if it takes
    that long, 50 signals."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    fam, n = int(family), int(count)
    hits = [0]
    failures: dict[str, int] = {}
    cookies: set[int] = set()
    signal.signal(signal.SIGALRM, lambda *_: hits.__setitem__(0, hits[0] + 1))
    signal.siginterrupt(signal.SIGALRM, restart == "0")  # False: SA_RESTART
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    made = 0
    try:
        while made < n or (hits[0] < 50 and made < 10 * n):
            fd = libc.socket(fam, socket.SOCK_DGRAM, 0)
            made += 1
            if fd < 0:
                key = errno.errorcode.get(ctypes.get_errno(), "?")
                failures[key] = failures.get(key, 0) + 1
                continue
            s = socket.socket(fileno=fd)
            cookies.add(cookie(s))
            s.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
    return {"calls": made, "signals": hits[0], "failures": failures, "cookies": sorted(cookies)}


def cmd_thread_creds(uid: str) -> object:
    """One thread alone becomes ``uid`` (raw setresuid: glibc's would change every thread),
    then each thread tries a raw and a TCP socket."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    u = int(uid)
    box: dict[str, object] = {}

    def body() -> None:
        ok = libc.syscall(119, u, u, u) == 0 and libc.syscall(117, u, u, u) == 0
        box["switched"] = ok
        box["raw"] = try_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        box["tcp"] = try_socket(socket.AF_INET)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return {"thread": box,
            "main": {"raw": try_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                     "tcp": try_socket(socket.AF_INET)}}


def _cpus(spec: str) -> set[int]:
    return set(range(os.cpu_count() or 1)) if spec == "all" else {int(c) for c in spec.split("+")}


def cmd_affinity(count: str, *specs: str) -> list[dict[str, object]]:
    """For each CPU set in ``specs`` ("all", "1", "0+1"): take it as this thread's affinity,
    then make ``count`` redirectable sockets, reading the affinity right after each one. The
    supervisor narrows a caller's affinity inside its call: the caller must never see it."""
    results: list[dict[str, object]] = []
    for spec in specs:
        want = _cpus(spec)
        os.sched_setaffinity(0, want)
        seen: dict[str, int] = {}
        cookies: set[int] = set()
        for _ in range(int(count)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            got = os.sched_getaffinity(0)
            if got != want:
                key = "+".join(map(str, sorted(got)))
                seen[key] = seen.get(key, 0) + 1
            cookies.add(cookie(s))
            s.close()
        results.append({"cpus": spec, "other": seen, "cookies": sorted(cookies),
                         "after": sorted(os.sched_getaffinity(0))})
    return results


def cmd_affinity_threads(count: str, threads: str) -> object:
    """``threads`` threads, each with its own single-CPU affinity (round robin over the
    CPUs), make ``count`` sockets each and check their affinity after every call."""
    ncpu = os.cpu_count() or 1
    box: list[object] = []

    def body(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})
        box.append({"cpu": cpu, **cmd_affinity(count, str(cpu))[0]})

    pool = [threading.Thread(target=body, args=(i % ncpu,)) for i in range(int(threads))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return box


def cmd_burst(count: str, other_thread: str = "0") -> object:
    """``count`` sockets back to back from this thread; then, if ``other_thread``, one from
    a new thread (a call from another caller ends the supervisor's burst)."""
    for _ in range(int(count)):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    if other_thread != "0":
        t = threading.Thread(target=lambda: socket.socket(socket.AF_INET).close())
        t.start()
        t.join()
    return {"made": int(count)}


def main() -> None:
    command, *args = sys.argv[1:]
    result = globals()[f"cmd_{command}"](*args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
