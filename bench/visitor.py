"""make bench, the visitor rows: one socket made for a caller in another cgroup v2 (what
every container of mstack-agent on a cgroup v2 host costs), by a child born there that
shares our memory (linux/_visit.c) and by a forked child that moves in (the fallback:
rootless stacks, no CAP_SYS_RESOURCE for the OOM shield, Linux < 5.7), against a socket
made in our own cgroup. In this process, with the supervisor's own functions."""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable

from mstack_bpf.linux import cgroup, netns
from mstack_bpf.supervisor import visitor

GROUP = "socket() in another cgroup v2 (visitor.py), AF_INET, one call"
OWN = "made in our own cgroup (setns, socket)"


def visitor_rows(add: Callable[..., None], ns: str, rounds: int, calls: int = 300) -> None:
    found = cgroup.v2_mount()
    if found is None or found[1] != "/":
        return
    path = tempfile.mkdtemp(prefix="mstack-bench-", dir=found[0])
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    ns_fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    procs = os.open(f"{path}/cgroup.procs", os.O_WRONLY)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    kind = socket.SOCK_STREAM | socket.SOCK_CLOEXEC

    def ours() -> list[int]:
        netns.setns(ns_fd)
        try:
            return [socket.socket(socket.AF_INET, kind).detach()]
        finally:
            netns.setns(own)

    def born() -> list[int]:
        made = cgroup.make_inside(directory, ns_fd, socket.AF_INET, kind, 0, False, None, 2.0)
        assert made is not None, "no clone3 with CLONE_INTO_CGROUP here"
        return made

    def forked() -> list[int]:
        return visitor._forked(procs, ns_fd, socket.AF_INET, kind, 0, False, None)

    try:
        for name, make in ((OWN, ours),
                           ("child born there sharing our memory (linux/_visit.c)", born),
                           ("forked child that moves in (the fallback)", forked)):
            times = []
            for _ in range(rounds):
                start = time.perf_counter_ns()
                for _ in range(calls):
                    for fd in make():
                        os.close(fd)
                times.append((time.perf_counter_ns() - start) / calls)
            add(GROUP, name, min(times), statistics.median(times))
    finally:
        for fd in (directory, ns_fd, procs, own):
            os.close(fd)
        os.rmdir(path)
