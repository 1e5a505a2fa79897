"""Socket events as text: the per-family table of ``mstack -v`` and one line per event.

Pure: no I/O. Namespace inodes become stack names through a mapping the caller gives
(``{host_inode: "native", blue_inode: "blue"}``); an inode it lacks shows as
``netns:[INODE]``, the way ``/proc/PID/ns/net`` reads.
"""

from __future__ import annotations

import errno
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mstack_bpf.core.families import family_name
from mstack_bpf.trace.events import Call, Event

#: Calls whose failure counts as "refused" in the table. A failed accept is the server's
#: business (EAGAIN on a non-blocking socket), not the stack's: shown per event only.
_REFUSABLE = frozenset({Call.SOCKET, Call.SOCKETPAIR, Call.MSOCKET})

_TYPES = {1: "stream", 2: "dgram", 3: "raw", 4: "rdm", 5: "seqpacket", 6: "dccp", 10: "packet"}
_SOCK_CLOEXEC = 0o2000000
_SOCK_NONBLOCK = 0o4000
SOCK_DEFAULT = 0  # msocket's "set the default stack" type

#: TYPE comes last: flags make it long (``seqpacket|cloexec|nonblock``) and it has no bound.
EVENT_HEADER = (
    f"{'TIME':<12} {'PID':>7} {'COMM':<16} {'CALL':<10} {'FAMILY':<9} {'FD/ERR':<15} "
    f"{'STACK':<20} TYPE"
)


def stack_name(inode: int, names: Mapping[int, str]) -> str:
    """The name of the stack (network namespace) with this inode."""
    if not inode:
        return "-"
    return names.get(inode, f"netns:[{inode}]")


def errno_name(number: int) -> str:
    """``EAFNOSUPPORT`` for 97; ``E#N`` for a number without a name."""
    return errno.errorcode.get(number, f"E#{number}")


def type_name(sock_type: int) -> str:
    """``stream``, ``dgram|cloexec``, ``#999``; ``default`` for msocket's SOCK_DEFAULT."""
    if sock_type < 0:
        return f"#{sock_type}"
    base = sock_type & ~(_SOCK_CLOEXEC | _SOCK_NONBLOCK)
    parts = [_TYPES.get(base, "default" if base == SOCK_DEFAULT else f"#{base}")]
    if sock_type & _SOCK_CLOEXEC:
        parts.append("cloexec")
    if sock_type & _SOCK_NONBLOCK:
        parts.append("nonblock")
    return "|".join(parts)


def family_text(family: int) -> str:
    return "?" if family < 0 else family_name(family)


def call_text(event: Event) -> str:
    """The call's name; i386 calls (int 0x80) end in ``32``."""
    return event.call.label + ("32" if event.ia32 else "")


def result_text(event: Event) -> str:
    """The fds a call made (``3``, ``3,4``), its errno name, or its plain return value."""
    if not event.ok:
        return errno_name(event.errno)
    if event.fds:
        return ",".join(str(fd) for fd in event.fds)
    return str(event.ret)


def clock_text(ts_ns: int, wall_offset_ns: int) -> str:
    """``HH:MM:SS.mmm`` local time of a CLOCK_MONOTONIC timestamp.

    ``wall_offset_ns`` is ``time.time_ns() - time.monotonic_ns()`` taken by the caller.
    """
    wall = ts_ns + wall_offset_ns
    return time.strftime("%H:%M:%S", time.localtime(wall // 10**9)) + f".{wall // 10**6 % 1000:03d}"


def format_event(event: Event, names: Mapping[int, str], wall_offset_ns: int) -> str:
    """One line under :data:`EVENT_HEADER`."""
    return (
        f"{clock_text(event.ts_ns, wall_offset_ns):<12} {event.pid:>7} {event.comm:<16.16} "
        f"{call_text(event):<10} {family_text(event.family):<9} {result_text(event):<15} "
        f"{stack_name(event.sock_netns, names):<20} {type_name(event.type)}"
    )


def event_record(event: Event, names: Mapping[int, str], wall_offset_ns: int) -> dict[str, Any]:
    """The event as a JSON-ready dict (``mstack-trace --json``)."""
    return {
        "time": (event.ts_ns + wall_offset_ns) / 1e9,
        "pid": event.pid,
        "tid": event.tid,
        "ppid": event.ppid,
        "comm": event.comm,
        "call": call_text(event),
        "family": event.family,
        "family_name": family_text(event.family),
        "type": event.type,
        "type_name": type_name(event.type),
        "protocol": event.protocol,
        "ret": event.ret,
        "fds": list(event.fds),
        "errno": errno_name(event.errno) if event.errno else None,
        "sock_netns": event.sock_netns or None,
        "caller_netns": event.caller_netns,
        "stack": stack_name(event.sock_netns, names) if event.fds else None,
        "mstack": event.mstack,
    }


@dataclass(frozen=True)
class Row:
    """One line of the table: sockets of ``family`` made in (or refused by) ``stack``."""

    family: int
    stack: str
    sockets: int
    refused: tuple[tuple[str, int], ...]  # (errno name, count), most frequent first


def summarize(
    events: Iterable[Event],
    names: Mapping[int, str],
    family_stacks: Mapping[int, str] | None = None,
) -> list[Row]:
    """Per (family, stack): sockets created and refused calls by errno.

    A created socket's stack is where it really lives (its namespace inode). A refused
    call has no socket, so its stack is the one ``family_stacks`` names for its family
    (what mstack mapped it to: ``null``, or the stack whose kernel refused it), or ``-``
    (unknown, and for an msocket call that named a stack of its own).
    """
    created: Counter[tuple[int, str]] = Counter()
    refused: dict[tuple[int, str], Counter[str]] = {}
    for event in events:
        if event.ok and event.fds:
            created[(event.family, stack_name(event.sock_netns, names))] += event.sockets
        elif not event.ok and event.call in _REFUSABLE:
            named = event.call is Call.MSOCKET and event.named
            stack = "-" if named else (family_stacks or {}).get(event.family, "-")
            refused.setdefault((event.family, stack), Counter())[errno_name(event.errno)] += 1
    keys = sorted(set(created) | set(refused))
    return [
        Row(
            family=family,
            stack=stack,
            sockets=created[(family, stack)],
            refused=tuple(refused.get((family, stack), Counter()).most_common()),
        )
        for family, stack in keys
    ]


def format_table(rows: Iterable[Row]) -> str:
    """The table as text, header included; ``(no socket calls)`` when empty."""
    lines = [f"{'FAMILY':<10} {'STACK':<20} {'SOCKETS':>7}  REFUSED"]
    for row in rows:
        refused = ", ".join(f"{name}×{count}" for name, count in row.refused) or "-"
        lines.append(f"{family_text(row.family):<10} {row.stack:<20} {row.sockets:>7}  {refused}")
    if len(lines) == 1:
        lines.append("(no socket calls)")
    return "\n".join(lines)
