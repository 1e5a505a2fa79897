"""The launcher ↔ supervisor handshake, over one ``AF_UNIX SOCK_SEQPACKET`` pair.

launcher → supervisor, one message:

* :data:`LISTENER` with the seccomp listener fd (``SCM_RIGHTS``): serve it;
* :data:`WATCH`, no fd: nothing to supervise (everything was decided in the kernel), only
  watch the command for ``-v``'s socket table.

supervisor → launcher, one message:

* :data:`READY`: serving (or watching); the launcher execs the command;
* :data:`FAILED` followed by one line: it cannot serve; the launcher exits 125 with it.

The launcher closes its copy of the listener right after sending it: the command never holds
it. A supervisor that dies before answering reads as :data:`FAILED` with no text.
"""

from __future__ import annotations

import os
import socket

from mstack_bpf.core.errors import Unsupported

LISTENER = b"L"
WATCH = b"W"
READY = b"R"
FAILED = b"E"


def offer(channel: socket.socket, listener: int | None) -> None:
    """Send the listener (closing ours) or, with None, ask only for watching."""
    if listener is None:
        channel.send(WATCH)
        return
    try:
        socket.send_fds(channel, [LISTENER], [listener])
    finally:
        os.close(listener)  # the command never holds the listener


def take_offer(channel: socket.socket) -> int | None:
    """The supervisor's side of :func:`offer`: the listener fd, or None for :data:`WATCH`;
    OSError EPROTO for anything else (an fd that came with it is closed)."""
    message, fds, _, _ = socket.recv_fds(channel, 16, 1)
    if message == LISTENER and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    if message == WATCH and not fds:
        return None
    raise OSError(f"launcher handshake: unexpected {message!r} with {len(fds)} fds")


def ready(channel: socket.socket) -> None:
    channel.send(READY)
    channel.close()


def failed(channel: socket.socket, why: str) -> None:
    channel.send(FAILED + why.encode(errors="replace"))
    channel.close()


def await_ready(channel: socket.socket) -> None:
    """Wait for the supervisor's answer; :class:`Unsupported` with its reason if it failed."""
    try:
        answer = channel.recv(4096)
    except OSError:
        answer = b""  # it died before answering
    finally:
        channel.close()
    if answer != READY:
        raise Unsupported(answer[1:].decode(errors="replace") or "the supervisor did not start")
