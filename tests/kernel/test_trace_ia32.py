"""i386 socket calls made through ``int 0x80`` from this 64-bit process are traced, and
x86_64 getuid (the same number as i386 socketcall, 102) is not mistaken for one."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from collections.abc import Callable, Iterator

import pytest

from mstack_bpf.trace.events import Call
from mstack_bpf.trace.tracer import Tracer
from tests.conftest import needs_ebpf

pytestmark = needs_ebpf

MAP_32BIT = 0x40  # int 0x80 takes 32-bit pointers: code and data below 4 GiB
SYS_SOCKET, SYS_SOCKETPAIR = 1, 8
NR32_SOCKETCALL, NR32_SOCKET = 102, 359

# int int80(int nr, int ebx, int ecx, int edx)
_CODE = bytes.fromhex(
    "53"  # push rbx (callee-saved)
    "89f8"  # mov eax, edi
    "89f3"  # mov ebx, esi
    "4989c8"  # mov r8, rcx
    "89d1"  # mov ecx, edx
    "4489c2"  # mov edx, r8d
    "cd80"  # int 0x80
    "5b"  # pop rbx
    "c3"  # ret
)
_DATA = 2048  # offset of the argument block in the same page


@pytest.fixture
def int80() -> Iterator[tuple[Callable[[int, int, int, int], int], int]]:
    """The int 0x80 trampoline and the 32-bit address of a scratch data block."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    c_int = ctypes.c_int
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    prot = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_32BIT
    page = libc.mmap(None, 4096, prot, flags, -1, 0)
    if page in (None, ctypes.c_void_p(-1).value):
        pytest.skip(f"mmap(MAP_32BIT): {os.strerror(ctypes.get_errno())}")
    ctypes.memmove(page, _CODE, len(_CODE))
    func = ctypes.CFUNCTYPE(ctypes.c_int, *[ctypes.c_int] * 4)(page)
    try:
        yield func, page + _DATA
    finally:
        libc.munmap(page, 4096)


def test_i386_socket_and_socketcall(int80: tuple[Callable[..., int], int]) -> None:
    call, data = int80
    with Tracer(os.getpid()) as tracer:
        fd1 = call(NR32_SOCKET, 2, 2, 0)  # socket(AF_INET, SOCK_DGRAM, 0)
        if fd1 == -38:
            pytest.skip("no i386 emulation (ia32_emulation=0)")
        ctypes.memmove(data, struct.pack("=3I", 10, 1, 0), 12)  # AF_INET6, SOCK_STREAM
        fd2 = call(NR32_SOCKETCALL, SYS_SOCKET, data, 0)
        ctypes.memmove(data, struct.pack("=4I", 1, 1, 0, data + 16), 16)
        pair = call(NR32_SOCKETCALL, SYS_SOCKETPAIR, data, 0)
        sv = struct.unpack("=2i", ctypes.string_at(data + 16, 8))
        for _ in range(100):
            os.getuid()  # x86_64 102: not socketcall
        events = tracer.poll(1000)
    assert fd1 >= 0 and fd2 >= 0 and pair == 0
    for fd in (fd1, fd2, *sv):
        os.close(fd)
    seen = [(e.call, e.family, e.fds, e.ia32) for e in events]
    assert seen == [
        (Call.SOCKET, 2, (fd1,), True),
        (Call.SOCKET, 10, (fd2,), True),
        (Call.SOCKETPAIR, 1, sv, True),
    ]
    assert all(e.sock_netns == os.stat("/proc/self/ns/net").st_ino for e in events)
