"""The unix socket the runtimes connect to, and reading one runtime's message with its fds
(runtime-spec 1.1, ``listenerPath``; unix(7) ``SCM_RIGHTS``)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import time

from mstack_bpf.agent.message import MAX_MESSAGE, MessageError
from mstack_bpf.core.errors import MstackError

#: a runtime sends its message at once: a peer that takes longer holds nothing for long
RECEIVE_SECONDS = 5.0
MAX_FDS = 16


def listen(path: str) -> socket.socket:
    """A listening socket at ``path``, mode 0600 (root's runtimes only). A stale socket
    is replaced; one an agent still serves is an error."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise MstackError(f"{path}: exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)  # left behind by an agent that is gone
            else:
                raise MstackError(f"{path}: another agent is serving this socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # never a moment with the socket open to others
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def receive(conn: socket.socket, seconds: float = RECEIVE_SECONDS) -> tuple[bytes, list[int]]:
    """The whole message of one connection (up to the peer's close) and every fd that came
    with it (ours to close). MessageError for a message too large, cut short or too slow;
    the fds that came are closed then."""
    chunks: list[bytes] = []
    fds: list[int] = []
    size = 0
    deadline = time.monotonic() + seconds
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MessageError(f"no end of message within {seconds:g} s")
            conn.settimeout(left)
            try:
                data, got, flags, _ = socket.recv_fds(conn, 65536, MAX_FDS)
            except TimeoutError:
                raise MessageError(f"no end of message within {seconds:g} s") from None
            fds.extend(got)
            if flags & socket.MSG_CTRUNC:
                raise MessageError(f"more than {MAX_FDS} descriptors")
            if not data:
                return b"".join(chunks), fds
            size += len(data)
            if size > MAX_MESSAGE:
                raise MessageError(f"larger than {MAX_MESSAGE >> 10} KiB")
            chunks.append(data)
    except BaseException:
        close_all(fds)
        raise


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def is_listener(fd: int) -> bool:
    """Whether ``fd`` is a seccomp notification fd (what else a peer sends is not served)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:seccomp notify"
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
