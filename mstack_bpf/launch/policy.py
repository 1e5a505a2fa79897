"""Policy files from disk and at run time: read one safely (a regular file of at most
MAX_SIZE bytes, never blocking), and open the stacks it names (mstack-policy(5)). Parsing
itself is pure: :mod:`mstack_bpf.core.policy`."""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from mstack_bpf.core.errors import StackError
from mstack_bpf.core.model import Mapping, Stack, StackKind
from mstack_bpf.core.policy import Policy, PolicyError, StackDef, parse_policy, shown
from mstack_bpf.stacks.resolve import OpenStack, open_stack, resolve

#: Larger files are refused unread. Policies take a few hundred bytes, and tomllib may take
#: 500 times the text (a table per two bytes, ``[t1.a.b]`` ...: 450 MB for 1 MiB).
MAX_SIZE = 64 << 10
_TOO_LARGE = f"larger than {MAX_SIZE >> 10} KiB"
_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refused(st: os.stat_result) -> str | None:
    """Why the file ``st`` describes is not read, or None."""
    if stat.S_ISDIR(st.st_mode):
        return os.strerror(errno.EISDIR)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "special")
        return f"not a regular file ({kind})"
    return _TOO_LARGE if st.st_size > MAX_SIZE else None


def _read_at_most(fd: int, size: int) -> bytes:
    """The bytes of ``fd`` up to its end or ``size`` bytes, whichever comes first."""
    chunks: list[bytes] = []
    left = size
    while left > 0 and (chunk := os.read(fd, left)):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _cannot_read(path: str, reason: str) -> PolicyError:
    return PolicyError([f"{shown(path)}: cannot read: {reason}"])


def _read(path: str) -> bytes:
    """The bytes of the regular file ``path``; :class:`PolicyError` ``FILE: cannot read``.

    O_NONBLOCK, as open(2) of a FIFO would wait for a writer; fstat(2) before any read, so
    that a FIFO, a terminal or /dev/zero is refused rather than read; never more than
    MAX_SIZE + 1 bytes, as a file may grow after fstat(2) (and a /proc file says size 0).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise _cannot_read(path, e.strerror or str(e)) from None
    except ValueError as e:  # a NUL in the path
        raise _cannot_read(path, str(e)) from None
    try:
        reason = _refused(os.fstat(fd))
        data = _read_at_most(fd, MAX_SIZE + 1) if reason is None else b""
    except OSError as e:  # EIO, EISDIR, EINVAL of a file that says it is regular
        raise _cannot_read(path, e.strerror or str(e)) from None
    finally:
        os.close(fd)
    if reason is None and len(data) > MAX_SIZE:
        reason = _TOO_LARGE
    if reason is not None:
        raise _cannot_read(path, reason)
    return data


def load_policy(path: str) -> Policy:
    """Read and parse the policy file ``path``; raises :class:`PolicyError` with every error.

    A file that cannot be read has no line: its error is ``FILE: message``. A ``path`` that
    does not print on one line is quoted in messages.
    """
    data = _read(path)
    source = shown(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PolicyError([f"{source}:{line}: not UTF-8 text"]) from None
    return parse_policy(text, source)


def check_policy(path: str) -> list[str]:
    """Every error of the policy file ``path`` that does not depend on the running system."""
    try:
        load_policy(path)
    except PolicyError as e:
        return e.errors
    return []


# --- run time -----------------------------------------------------------------------------


def _open_def(policy: Policy, d: StackDef) -> OpenStack:
    """Resolve and open one stack; StackError names the policy's ``FILE:LINE``."""
    try:
        found = resolve(d.ref)
        return open_stack(Stack(StackKind.NETNS, d.name, found.path))
    except StackError as e:
        raise StackError(f"{policy.source}:{d.line}: stack {d.name}: {e}",
                         hint=f"check every stack with: mstack --check-policy {policy.source}"
                         ) from None


def check_stacks(policy: Policy) -> list[str]:
    """``FILE:LINE: stack NAME: reason`` for each defined stack that is missing or not a
    network namespace on this system now."""
    errors = []
    for d in policy.stacks:
        try:
            opened = _open_def(policy, d)
        except StackError as e:
            errors.append(str(e))
        else:
            os.close(opened.fd)
    return errors


def open_policy(policy: Policy) -> tuple[Mapping, tuple[OpenStack, ...]]:
    """The policy's mapping with its stacks resolved, and each used stack held open.

    Raises :class:`StackError` (exit 125) naming the ``FILE:LINE`` of the first unusable
    stack; no fd is left open then.
    """
    used = {s.name for s in policy.mapping.netns_stacks()}
    opened: dict[str, OpenStack] = {}
    try:
        for d in policy.stacks:
            if d.name in used:
                opened[d.name] = _open_def(policy, d)
    except StackError:
        for o in opened.values():
            with contextlib.suppress(OSError):
                os.close(o.fd)
        raise

    def real(stack: Stack) -> Stack:
        return opened[stack.name].stack if stack.kind is StackKind.NETNS else stack

    m = policy.mapping
    table = {family: real(stack) for family, stack in m.table.items()}
    mapping = Mapping(table, m.locked, tuple(real(s) for s in m.allowed), restricted=True)
    return mapping, tuple(opened[s.name] for s in m.netns_stacks())
