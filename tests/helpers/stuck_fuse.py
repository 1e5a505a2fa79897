"""FUSE filesystems that stop answering (needs root and /dev/fuse): :class:`StuckFuse`
answers INIT and nothing else, so any lookup in it waits for good; :class:`OneFileFuse`
serves one file ``f`` (attributes never cached) until :attr:`OneFileFuse.stuck` is set.
Both end waiting requests when closed (the connection is aborted).

Used to show that one caller's slow path cannot stall the supervisor for everyone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import tempfile
import threading

FUSE_INIT = 26
_IN_HEADER = struct.Struct("=IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
_OUT_HEADER = struct.Struct("=IiQ")
_INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")  # fuse_init_out, protocol 7.31
_ATTR = struct.Struct("=QQQQQQIIIIIIIIII")  # fuse_attr
FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_OPEN, FUSE_RELEASE, FUSE_FLUSH = 1, 2, 3, 14, 18, 25
FUSE_INTERRUPT = 36
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


class StuckFuse:
    def __init__(self) -> None:
        self.mountpoint = tempfile.mkdtemp(prefix="mstack-fuse-")
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if _libc.mount(b"mstack-stuck", self.mountpoint.encode(), b"fuse", 0, opts) != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            os.rmdir(self.mountpoint)
            raise OSError(err, f"mount fuse: {os.strerror(err)}")
        self.requests: list[int] = []  # opcodes seen (INIT answered, the rest never)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                data = os.read(self.fd, 1 << 20)
            except OSError:
                return  # aborted or unmounted
            _, opcode, unique, nodeid, *_ = _IN_HEADER.unpack_from(data)
            self.requests.append(opcode)
            if opcode == FUSE_INIT:
                body = _INIT_OUT.pack(7, 31, 0, 0, 16, 12, 1 << 17, 1, 32, 0, 0, 0)
                self._reply(unique, body)
            else:
                self.answer(opcode, unique, nodeid, data)

    def _reply(self, unique: int, body: bytes = b"", error: int = 0) -> None:
        os.write(self.fd, _OUT_HEADER.pack(16 + len(body), error, unique) + body)

    def answer(self, opcode: int, unique: int, nodeid: int, data: bytes) -> None:
        """Every request but INIT: left waiting."""

    def close(self) -> None:
        """Abort the connection (waiting lookups fail) and remove the mount."""
        self._stop.set()
        self._thread.join(timeout=5)  # no read in flight: closing the device aborts
        _libc.umount2(self.mountpoint.encode(), MNT_DETACH)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.rmdir(self.mountpoint)


def _attr(ino: int, mode: int) -> bytes:
    return _ATTR.pack(ino, 0, 0, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)


class OneFileFuse(StuckFuse):
    """One file ``f``, served until :attr:`stuck` is set; from then on nothing is answered."""

    def __init__(self) -> None:
        self.stuck = False
        super().__init__()

    def answer(self, opcode: int, unique: int, nodeid: int, data: bytes) -> None:
        if self.stuck or opcode in (FUSE_FORGET, FUSE_INTERRUPT):  # those take no answer
            return
        if opcode == FUSE_LOOKUP:
            if data[40:].split(b"\0")[0] == b"f":
                self._reply(unique, struct.pack("=QQQQII", 2, 0, 3600, 0, 0, 0)
                            + _attr(2, 0o100644))
            else:
                self._reply(unique, error=-2)
        elif opcode == FUSE_GETATTR:  # attr_valid 0: every fstat asks again
            mode = 0o40755 if nodeid == 1 else 0o100644
            self._reply(unique, struct.pack("=QII", 0, 0, 0) + _attr(nodeid, mode))
        elif opcode == FUSE_OPEN:
            self._reply(unique, struct.pack("=QII", 1, 0, 0))
        elif opcode in (FUSE_FLUSH, FUSE_RELEASE):
            self._reply(unique)
        else:
            self._reply(unique, error=-38)  # ENOSYS
