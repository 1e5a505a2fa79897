"""Read a target's memory with process_vm_readv(2) (needs ptrace read access to it); write
to it only through :class:`Pinned`."""

from __future__ import annotations

import ctypes
import errno
import os

from mstack_bpf.linux.ffi import SyscallError, syscall

NR_process_vm_readv = 310


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def read(pid: int, address: int, size: int) -> bytes:
    """``size`` bytes at ``address`` in ``pid``; fewer if the range crosses an unmapped page."""
    buf = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.addressof(buf), size)
    remote = _Iovec(address, size)
    got = syscall(NR_process_vm_readv, pid, ctypes.addressof(local), 1,
                  ctypes.addressof(remote), 1, 0, call="process_vm_readv")
    return buf.raw[:got]


def read_string(pid: int, address: int, limit: int = 4096) -> bytes:
    """A NUL-terminated string at ``address``, without the NUL; ENAMETOOLONG past ``limit``."""
    out = b""
    while len(out) < limit:
        # Read up to the end of the page, so an unmapped next page is not touched.
        chunk = 4096 - ((address + len(out)) % 4096)
        data = read(pid, address + len(out), min(chunk, limit - len(out)))
        if not data:
            break
        nul = data.find(b"\0")
        if nul >= 0:
            return out + data[:nul]
        out += data
    raise SyscallError(errno.ENAMETOOLONG if len(out) >= limit else errno.EFAULT,
                       "process_vm_readv")


class Pinned:
    """Thread ``tid``'s address space held through ``/proc/TID/mem``, for writing to it.

    ``process_vm_writev`` takes a pid, which may name another process by the time a slow
    write happens (the caller killed, its pid reused). A descriptor of ``/proc/TID/mem``
    stays bound to the address space it was opened on: open it, then confirm the caller is
    still waiting (the notification is still valid), and the writes can reach no one else.
    Writes through it would ignore page protections, so the mapping's own permissions are
    checked first (``/proc/TID/maps``, opened with it): EFAULT as the kernel would answer.
    """

    def __init__(self, tid: int) -> None:
        self.mem = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.maps = os.open(f"/proc/{tid}/maps", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(self.mem)
            raise

    def write(self, address: int, data: bytes) -> None:
        """Write ``data`` at ``address``; EFAULT unless all of it is writable memory."""
        if not _writable(self._mappings(), address, len(data)):
            raise SyscallError(errno.EFAULT, "write", "(not writable in the caller)")
        try:
            done = os.pwrite(self.mem, data, address)
        except OSError as e:
            raise SyscallError(e.errno or errno.EFAULT, "pwrite(/proc/TID/mem)") from None
        if done != len(data):
            raise SyscallError(errno.EFAULT, "pwrite(/proc/TID/mem)")

    def _mappings(self) -> bytes:
        chunks, offset = [], 0
        while chunk := os.pread(self.maps, 1 << 16, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self.maps)
        os.close(self.mem)


def _writable(maps: bytes, address: int, size: int) -> bool:
    """Whether ``[address, address + size)`` lies in writable mappings (proc(5) maps)."""
    end = address + size
    for line in maps.splitlines():
        span, perms = line.split(b" ", 2)[:2]
        low, high = (int(x, 16) for x in span.split(b"-"))
        if low <= address < high:
            if perms[1:2] != b"w":
                return False
            if end <= high:
                return True
            address = high  # the rest must be in the next mapping
    return False
