"""The socket events of ``bpf/socktrace.bpf.c``: a ctypes mirror and a Python value type.

The mirror must match ``struct socktrace_event`` in ``bpf/socktrace.h``; :func:`check_layout`
compares it with the layout recorded in the compiled object's BTF, field by field.
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass

from mstack_bpf.linux.libbpf import StructLayout

#: SOCKTRACE_COMM_LEN, SOCKTRACE_EVENT_SIZE in bpf/socktrace.h
COMM_LEN = 16
EVENT_SIZE = 80

#: SOCKTRACE_F_IA32: the call came through the i386 ABI (int 0x80).
FLAG_IA32 = 0x1
#: SOCKTRACE_F_MSTACK: mstack's own process made the call (launcher, supervisor, helpers).
FLAG_MSTACK = 0x2
#: SOCKTRACE_F_PATH: msocket named a stack (its path was not NULL).
FLAG_PATH = 0x4


class Call(enum.IntEnum):
    """``enum socktrace_call``."""

    SOCKET = 1
    SOCKETPAIR = 2
    ACCEPT = 3
    ACCEPT4 = 4
    MSOCKET = 5

    @property
    def label(self) -> str:
        return self.name.lower()


class RawEvent(ctypes.Structure):
    """``struct socktrace_event`` (bpf/socktrace.h)."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("call", ctypes.c_uint32),
        ("family", ctypes.c_int32),
        ("type", ctypes.c_int32),
        ("protocol", ctypes.c_int32),
        ("ret", ctypes.c_int32),
        ("fd", ctypes.c_int32 * 2),
        ("sock_netns", ctypes.c_uint32),
        ("caller_netns", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


@dataclass(frozen=True)
class Event:
    """One socket-making call as the kernel saw it at syscall exit.

    ``ret`` is the call's return value (an fd, 0, or ``-errno``); ``fds`` the sockets it
    made (two for socketpair); ``sock_netns`` the inode of the network namespace the
    (first) socket lives in, 0 if none; ``caller_netns`` the caller's own. ``ts_ns`` is
    CLOCK_MONOTONIC.
    """

    ts_ns: int
    pid: int
    tid: int
    ppid: int
    comm: str
    call: Call
    family: int
    type: int
    protocol: int
    ret: int
    fds: tuple[int, ...]
    sock_netns: int
    caller_netns: int
    ia32: bool = False
    #: made by mstack itself, not by the user's command (bpf/socktrace.bpf.c, ``own``)
    mstack: bool = False
    #: an msocket call that named a stack (not the caller's default)
    named: bool = False

    @property
    def ok(self) -> bool:
        return self.ret >= 0

    @property
    def errno(self) -> int:
        """The error number of a failed call, 0 for a successful one."""
        return -self.ret if self.ret < 0 else 0

    @property
    def sockets(self) -> int:
        """How many sockets the call created."""
        return len(self.fds)

    @classmethod
    def from_raw(cls, raw: RawEvent) -> Event:
        try:
            call = Call(raw.call)
        except ValueError:
            raise ValueError(f"socktrace: unknown call number {raw.call}") from None
        return cls(
            ts_ns=raw.ts_ns,
            pid=raw.pid,
            tid=raw.tid,
            ppid=raw.ppid,
            comm=raw.comm.decode(errors="replace"),
            call=call,
            family=raw.family,
            type=raw.type,
            protocol=raw.protocol,
            ret=raw.ret,
            fds=tuple(fd for fd in raw.fd if fd >= 0),
            sock_netns=raw.sock_netns,
            caller_netns=raw.caller_netns,
            ia32=bool(raw.flags & FLAG_IA32),
            mstack=bool(raw.flags & FLAG_MSTACK),
            named=bool(raw.flags & FLAG_PATH),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Event:
        if len(data) < EVENT_SIZE:
            raise ValueError(f"socktrace: short event ({len(data)} < {EVENT_SIZE} bytes)")
        return cls.from_raw(RawEvent.from_buffer_copy(data[:EVENT_SIZE]))


def layout_mismatch(layout: StructLayout) -> str | None:
    """Why :class:`RawEvent` differs from the BTF ``layout`` of the C struct, or None."""
    if layout.size != ctypes.sizeof(RawEvent):
        return f"struct socktrace_event is {layout.size} bytes, mirror {ctypes.sizeof(RawEvent)}"
    for name, *_ in RawEvent._fields_:
        offset = getattr(RawEvent, name).offset
        if layout.offsets.get(name) != offset:
            return f"field {name} at {layout.offsets.get(name)} in C, {offset} in the mirror"
    if set(layout.offsets) != {name for name, *_ in RawEvent._fields_}:
        return "struct socktrace_event has other fields than the mirror"
    return None
