"""mstack-agent against what a runtime may send, with a stand-in runtime: a forked child
that installs a socket()-notifying filter, sends its listener as runc and crun do
(runtime-spec 1.1: the state JSON with the fd over SCM_RIGHTS), then makes its sockets and
reports where they live. Garbage, half messages, messages without an fd or with the wrong
fd, and many trees at once: the agent goes on serving, and a listener whose message cannot
be read is answered EACCES, never CONTINUE."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mstack_bpf.linux import prctl
from mstack_bpf.linux.seccomp import install_filter
from mstack_bpf.seccomp.program import SECCOMP_FILTER_FLAG_NEW_LISTENER
from tests.conftest import Netns, Report, cookie, needs_root, wait_until
from tests.e2e.conftest import Agent, agents
from tests.helpers.listener_child import PROGRAM

pytestmark = needs_root


def state(annotations: dict[str, str] | None = None, metadata: str = "") -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": 0,
                       "metadata": metadata,
                       "state": {"ociVersion": "1.0.2", "id": "stand-in", "status": "creating",
                                 "pid": 0, "bundle": "/", "annotations": annotations or {}}
                       }).encode()


def _child(agent: Agent, message: bytes, send_listener: bool, family: int,
           report: socket.socket) -> None:
    # connected first: under the filter this socket() would wait on a listener we hold
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(agent.socket))
        prctl.set_no_new_privs()
        fd = install_filter(PROGRAM, SECCOMP_FILTER_FLAG_NEW_LISTENER)
        if send_listener:
            socket.send_fds(conn, [message], [fd])
        else:
            conn.sendall(message)
    os.close(fd)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            result: dict[str, object] = {"cookie": cookie(sock)}
    except OSError as e:
        result = {"errno": e.errno}
    report.send(json.dumps(result).encode())


def stand_in(agent: Agent, message: bytes, family: int = socket.AF_INET,
             send_listener: bool = True) -> Report:
    """What a socket(family) of a tree announced with ``message`` got."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            _child(agent, message, send_listener, family, theirs)
        finally:
            os._exit(0)
    theirs.close()
    try:
        ours.settimeout(20)
        return json.loads(ours.recv(4096))
    finally:
        ours.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # one still waiting on its socket() (a failure)
        os.waitpid(pid, 0)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with agents(tmp_path) as make:
        yield make()


def test_a_tree_gets_its_mapping(agent: Agent, netns: Netns, host_cookie: int) -> None:
    notes = {"io.mstack.stack": netns.name, "io.mstack.families": "ipv4"}
    assert stand_in(agent, state(notes)) == {"cookie": netns.cookie}
    assert stand_in(agent, state(notes), socket.AF_UNIX) == {"cookie": host_cookie}
    assert stand_in(agent, state(metadata="stack=null")) == {"errno": 97}  # EAFNOSUPPORT
    assert stand_in(agent, state()) == {"cookie": host_cookie}  # nothing asked: its own


@pytest.mark.parametrize("message", [b"\xffgarbage", b"{}", b'{"fds": ["seccompFd"]}',
                                     b"[" * 200000])
def test_an_unreadable_message_with_a_listener_gets_eacces(agent: Agent, message: bytes,
                                                             netns: Netns) -> None:
    assert stand_in(agent, message) == {"errno": 13}
    assert stand_in(agent, message, socket.AF_UNIX) == {"errno": 13}
    assert "unreadable message" in agent.text()
    notes = {"io.mstack.stack": netns.name}  # and it goes on serving
    assert stand_in(agent, state(notes)) == {"cookie": netns.cookie}


def test_garbage_half_messages_and_wrong_fds_leave_it_serving(
        agent: Agent, netns: Netns) -> None:
    def connect() -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(agent.socket))
        return conn
    with connect() as c:
        c.sendall(b"\x00" * 70000)
    with connect() as c:  # the state of a tree, no fd with it
        c.sendall(state())
    r, w = os.pipe()
    with connect() as c:  # an fd that is no listener
        socket.send_fds(c, [state()], [r])
    os.close(r)
    os.close(w)
    half = connect()  # half a message, the connection held open
    half.sendall(state()[:20])
    try:
        started = time.monotonic()
        assert stand_in(agent, state({"io.mstack.stack": netns.name})) == {
            "cookie": netns.cookie}
        assert time.monotonic() - started < 3  # not behind the half message
        assert wait_until(lambda: "no end of message" in agent.text(), timeout=10)
    finally:
        half.close()
    text = agent.text()
    assert "with no listener: not JSON" in text and "1 descriptors, 0 came" in text, text
    assert "no seccomp listener" in text
    assert agent.proc is not None and agent.proc.poll() is None


def test_trees_that_come_and_go_leave_nothing_behind(agent: Agent, netns: Netns) -> None:
    """Listeners, namespaces, slow-lane pipes, sockets and threads go with their tree (the
    callers' status files and pidfds are a cache of the last 64 threads: creds.py)."""
    notes = {"io.mstack.stack": netns.name}
    stand_in(agent, state(notes))  # imports and caches as in steady state
    assert wait_until(lambda: threads(agent) == 1, timeout=10)  # and that tree released
    before = held(agent)
    for _ in range(20):
        assert stand_in(agent, state(notes)) == {"cookie": netns.cookie}
    assert wait_until(lambda: held(agent) == before, timeout=10), (before, held(agent))
    assert wait_until(lambda: threads(agent) == 1, timeout=10), threads(agent)


def held(agent: Agent) -> list[str]:
    """What the agent holds open but the callers' cached status files and pidfds."""
    assert agent.proc is not None
    links = []
    for fd in os.listdir(f"/proc/{agent.proc.pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{agent.proc.pid}/fd/{fd}")
            if not (link.endswith("/status") or link == "anon_inode:[pidfd]"):
                links.append(link.split(":[")[0])
    return sorted(links)


def threads(agent: Agent) -> int:
    assert agent.proc is not None
    return len(os.listdir(f"/proc/{agent.proc.pid}/task"))
