"""The tracer against the real kernel: each traced socket's namespace is the one the
workload itself sees from inside (SIOCGSKNS), natively and in a network namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mstack_bpf.trace.events import Call, Event
from mstack_bpf.trace.names import StackNames
from mstack_bpf.trace.tracer import Tracer, unavailable_reason
from tests.conftest import needs_ebpf, run

pytestmark = needs_ebpf

PY = sys.executable

# Runs inside the workload: makes sockets and reports where each one lives, seen from
# inside (SIOCGSKNS gives an fd of the socket's netns; its inode names the namespace).
PROBE = r"""
import ctypes, errno, fcntl, json, os, socket
SIOCGSKNS = 0x894C
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {"pid": os.getpid(), "netns": os.stat("/proc/self/ns/net").st_ino, "made": [],
       "refused": []}

def ns_of(fd):
    nsfd = fcntl.ioctl(fd, SIOCGSKNS)
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)

def made(call, fd, family):
    out["made"].append({"call": call, "fd": fd, "family": family, "netns": ns_of(fd)})

s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM); made("socket", s4.fileno(), 2)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); made("socket", s6.fileno(), 10)
a, b = socket.socketpair(); made("socketpair", a.fileno(), 1); made("socketpair", b.fileno(), 1)
srv = socket.socket(); made("socket", srv.fileno(), 2)
srv.bind(("127.0.0.1", 0)); srv.listen()
c1 = socket.create_connection(srv.getsockname()); made("socket", c1.fileno(), 2)
conn, _ = srv.accept(); made("accept4", conn.fileno(), 2)
c2 = socket.create_connection(srv.getsockname()); made("socket", c2.fileno(), 2)
fd = libc.syscall(43, srv.fileno(), None, None)  # accept(2) itself, not accept4
made("accept", fd, 2)
try:
    socket.socket(socket.AF_INET, 999, 0)
except OSError as e:
    out["refused"].append({"call": "socket", "errno": e.errno, "family": 2})
r = libc.syscall(-5, None, socket.AF_INET, socket.SOCK_STREAM, 0)
out["refused"].append({"call": "msocket", "errno": ctypes.get_errno(), "family": 2})
print(json.dumps(out), flush=True)
"""


def _events_of(events: list[Event], pid: int) -> list[Event]:
    return [e for e in events if e.pid == pid]


def _probe_events(events: list[Event], pid: int) -> list[Event]:
    # "ip netns exec" execs the probe in place: ip's own netlink sockets share its pid.
    return [e for e in _events_of(events, pid) if e.comm != "ip"]


def _check_probe(report: dict[str, object], events: list[Event]) -> None:
    """Every socket the probe made has one event with the namespace the probe saw."""
    pid = report["pid"]
    assert isinstance(pid, int)
    mine = _probe_events(events, pid)
    made = report["made"]
    assert isinstance(made, list)
    for item in made:
        matching = [e for e in mine if item["fd"] in e.fds and e.call.label == item["call"]]
        assert len(matching) == 1, (item, mine)
        event = matching[0]
        assert event.family == item["family"]
        assert event.sock_netns == item["netns"]
        assert event.caller_netns == report["netns"]
    assert sum(e.sockets for e in mine if e.ok and e.call != Call.MSOCKET) == len(made)
    refused = report["refused"]
    assert isinstance(refused, list)
    for item in refused:
        failed = [e for e in mine if e.call.label == item["call"] and e.errno == item["errno"]]
        assert len(failed) == 1, (item, mine)
        assert failed[0].family == item["family"]
        assert failed[0].sock_netns == 0 and not failed[0].fds


def test_sockets_native_and_in_netns(netns_name: str) -> None:
    # The outsider makes sockets all along, outside the traced tree.
    outsider = subprocess.Popen(
        [
            PY,
            "-c",
            "import socket,time\nfor _ in range(100): socket.socket().close(); time.sleep(0.01)",
        ]
    )
    script = f'read go; {PY} -c "$PROBE"; ip netns exec {netns_name} {PY} -c "$PROBE"'
    work = subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PROBE": PROBE},
    )
    try:
        with Tracer(work.pid) as tracer:
            out, _ = work.communicate("go\n", timeout=30)
            assert work.returncode == 0
            events = tracer.drain()
            assert tracer.dropped() == 0
    finally:
        outsider.wait()
    native, inside = (json.loads(line) for line in out.splitlines())
    ns_inode = os.stat(f"/run/netns/{netns_name}").st_ino
    assert native["netns"] == os.stat("/proc/self/ns/net").st_ino
    assert inside["netns"] == ns_inode != native["netns"]
    _check_probe(native, events)
    _check_probe(inside, events)
    assert not _events_of(events, outsider.pid)
    # Only the traced tree: sh, the probes, and ip(8) (which execs the second probe).
    assert {e.pid for e in events} <= {work.pid, native["pid"], inside["pid"]}
    names = StackNames()
    assert names[ns_inode] == netns_name
    assert names[native["netns"]] == "native"


def test_existing_descendants_are_traced() -> None:
    # The child exists before the tracer: only the /proc scan can find it.
    code = (
        "import os, socket, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    sys.stdin.readline(); s = socket.socket(); print(s.fileno(), flush=True)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True); os.waitpid(pid, 0)\n"
    )
    work = subprocess.Popen(
        [PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert work.stdout is not None
    child = int(work.stdout.readline())
    with Tracer(work.pid) as tracer:
        out, _ = work.communicate("\n", timeout=30)
        events = tracer.drain()
    fd = int(out)
    assert [(e.call, e.fds) for e in _events_of(events, child)] == [(Call.SOCKET, (fd,))]


def test_unfiltered_sees_everyone() -> None:
    with Tracer() as tracer:
        proc = run([PY, "-c", "import socket; socket.socket(socket.AF_INET6)"])
        assert proc.returncode == 0
        events = tracer.drain()
    assert any(e.family == 10 and e.ok for e in events if e.call == Call.SOCKET)


@pytest.mark.parametrize("mode", ["tp_btf", "raw_tp"])
def test_attach_modes(mode: str) -> None:
    import socket

    with Tracer(os.getpid(), modes=[mode]) as tracer:
        assert tracer.mode == mode
        assert tracer.load_ms < 1000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fd = s.fileno()
        events = tracer.poll(1000)
    assert [(e.call, e.family, e.fds) for e in events] == [(Call.SOCKET, 2, (fd,))]
    assert events[0].sock_netns == os.stat("/proc/self/ns/net").st_ino


def test_fileno_becomes_readable_at_every_event_without_batching() -> None:
    import select
    import socket

    with Tracer(os.getpid(), wakeup_bytes=0) as tracer:
        poller = select.poll()
        poller.register(tracer.fileno(), select.POLLIN)
        assert poller.poll(0) == []
        socket.socket().close()
        assert poller.poll(1000)
        assert len(tracer.poll(0)) == 1


def test_batched_events_come_with_the_timeout_or_the_batch() -> None:
    import select
    import socket

    with Tracer(os.getpid(), wakeup_bytes=4096) as tracer:
        poller = select.poll()
        poller.register(tracer.fileno(), select.POLLIN)
        socket.socket().close()
        assert poller.poll(50) == []  # one event: no wake-up
        assert len(tracer.poll(10)) == 1  # but poll() returns it
        for _ in range(60):  # 60 * 88 bytes > 4096: a wake-up
            socket.socket().close()
        assert poller.poll(1000)
        assert len(tracer.poll(0)) == 60


def test_unavailable_reason_with_missing_object(tmp_path: object) -> None:
    assert unavailable_reason(f"{tmp_path}/none.o") is not None
    assert unavailable_reason() is None
