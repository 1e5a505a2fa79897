"""A FUSE filesystem that answers INIT and nothing else: any lookup in it waits for good
(until :meth:`StuckFuse.close` aborts the connection). Needs root and /dev/fuse.

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
            _, opcode, unique, *_ = _IN_HEADER.unpack_from(data)
            self.requests.append(opcode)
            if opcode == FUSE_INIT:
                body = _INIT_OUT.pack(7, 31, 0, 0, 16, 12, 1 << 17, 1, 32, 0, 0, 0)
                os.write(self.fd, _OUT_HEADER.pack(16 + len(body), 0, unique) + body)

    def close(self) -> None:
        """Abort the connection (waiting lookups fail) and remove the mount."""
        self._stop.set()
        self._thread.join(timeout=5)  # no read in flight: closing the device aborts
        _libc.umount2(self.mountpoint.encode(), MNT_DETACH)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.rmdir(self.mountpoint)
