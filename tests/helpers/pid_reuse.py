"""A late answer must never reach a process that got the caller's pid (run as root).

    pid_reuse.py orchestrate STACK   in a new pid namespace (unshare --pid --fork --mount-proc)
    pid_reuse.py caller              under mstack: stalls the slow lane (userfaultfd pages in
                                     msocket paths), then a child P calls socketpair(sv=X),
                                     whose "write sv" job waits behind them
    pid_reuse.py bystander           not under mstack: maps X full of 'A' and watches it

The orchestrator kills P, gives P's pid to the bystander (ns_last_pid), lets the slow lane go
on, and prints one JSON line: whether the bystander's memory changed.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

X = 0x200000000
PYTHON = sys.executable
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]


def map_x() -> None:
    assert libc.mmap(X, 4096, 3, 0x22 | 0x10, -1, 0) == X  # PRIVATE|ANONYMOUS|FIXED


def staller(count: int) -> tuple[int, mmap.mmap]:
    """``count`` threads whose msocket path lies on a missing userfaultfd page: each holds a
    slow-lane worker until the returned userfaultfd is closed (keep the pages too)."""
    uffd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)
    api = ctypes.create_string_buffer(struct.pack("=QQQ", 0xAA, 0, 0))
    assert libc.ioctl(uffd, ctypes.c_ulong(0xC018AA3F), api) == 0
    pages = mmap.mmap(-1, 4096 * count)
    base = ctypes.addressof(ctypes.c_char.from_buffer(pages))
    register = ctypes.create_string_buffer(struct.pack("=QQQQ", base, 4096 * count, 1, 0))
    assert libc.ioctl(uffd, ctypes.c_ulong(0xC020AA00), register) == 0

    def stall(i: int) -> None:
        libc.syscall(ctypes.c_long(-5), ctypes.c_void_p(base + 4096 * i), socket.AF_INET,
                     socket.SOCK_STREAM, 0)

    for i in range(count):
        threading.Thread(target=stall, args=(i,), daemon=True).start()
    return int(uffd), pages


def caller() -> None:
    from mstack_bpf.supervisor.slowlane import PER_PROCESS, WORKERS

    # Every worker held (one process may hold only PER_PROCESS), so the answer waits.
    release_r, release_w = os.pipe()
    for _ in range(WORKERS // PER_PROCESS):
        if os.fork() == 0:
            os.close(release_w)
            uffd, _pages = staller(PER_PROCESS)
            os.read(release_r, 1)  # until released
            os.close(uffd)
            time.sleep(1)
            os._exit(0)
    os.close(release_r)
    time.sleep(1.0)
    pid = os.fork()
    if pid == 0:
        map_x()
        libc.syscall(53, socket.AF_UNIX, socket.SOCK_STREAM, 0, ctypes.c_void_p(X))
        os._exit(0)
    threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True).start()
    print(pid, flush=True)
    sys.stdin.readline()  # P killed, its pid taken
    os.close(release_w)  # the stalled reads go on (zero pages), and the queued write after
    time.sleep(2.0)
    print("released", flush=True)


def bystander() -> None:
    map_x()
    ctypes.memset(X, 0x41, 4096)
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps({"changed": ctypes.string_at(X, 8) != b"A" * 8}), flush=True)


def orchestrate(stack: str) -> None:
    caller_proc = subprocess.Popen(["mstack", "--keep-namespace", "-o", "all", stack, PYTHON,
                                    __file__, "caller"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert caller_proc.stdin and caller_proc.stdout
    p = int(caller_proc.stdout.readline())
    time.sleep(0.5)  # P is inside socketpair(), its answer queued
    os.kill(p, signal.SIGKILL)
    time.sleep(0.3)
    for _ in range(20):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(p - 1))
        victim = subprocess.Popen([PYTHON, __file__, "bystander"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        if victim.pid == p:
            break
        victim.kill()
        victim.wait()
    else:
        print(json.dumps({"error": "could not take the pid"}))
        return
    assert victim.stdout and victim.stdin
    victim.stdout.readline()
    caller_proc.stdin.write("go\n")
    caller_proc.stdin.flush()
    caller_proc.stdout.readline()
    victim.stdin.write("look\n")
    victim.stdin.flush()
    print(victim.stdout.readline().strip(), flush=True)
    victim.wait()
    caller_proc.wait(timeout=20)


if __name__ == "__main__":
    {"orchestrate": lambda: orchestrate(sys.argv[2]), "caller": caller,
     "bystander": bystander}[sys.argv[1]]()
