"""Read a target's memory with process_vm_readv(2) (needs ptrace read access to it)."""

from __future__ import annotations

import ctypes
import errno

from mstack_bpf.linux._ffi import SyscallError, syscall

NR_process_vm_readv = 310
NR_process_vm_writev = 311


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


def write(pid: int, address: int, data: bytes) -> None:
    """Write ``data`` at ``address`` in ``pid``; EFAULT if it did not all land."""
    buf = ctypes.create_string_buffer(data, len(data))
    local = _Iovec(ctypes.addressof(buf), len(data))
    remote = _Iovec(address, len(data))
    done = syscall(NR_process_vm_writev, pid, ctypes.addressof(local), 1,
                   ctypes.addressof(remote), 1, 0, call="process_vm_writev")
    if done != len(data):
        raise SyscallError(errno.EFAULT, "process_vm_writev")
