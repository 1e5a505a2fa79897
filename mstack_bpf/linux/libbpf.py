"""ctypes bindings to the system libbpf (``libbpf.so.1``, libbpf ≥ 1.0), the part socktrace uses.

libbpf 1.x reports errors two ways: functions returning ``int`` return ``-errno``, functions
returning a pointer return NULL and set ``errno``. Both become :class:`SyscallError` naming
the libbpf call. Its log (load errors, the verifier's complaints) is captured instead of
printed, so a failure can quote it: see :func:`last_log`.
"""

from __future__ import annotations

import ctypes
import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass

from mstack_bpf.linux.ffi import SyscallError, libc

_P = ctypes.c_void_p
_SIZE = ctypes.c_size_t

#: ring_buffer_sample_fn: int (*)(void *ctx, void *data, size_t size)
SampleFn = ctypes.CFUNCTYPE(ctypes.c_int, _P, _P, _SIZE)
#: libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *, va_list)
_PrintFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, _P)

BTF_KIND_STRUCT = 4  # linux/btf.h


class LibbpfMissing(OSError):
    """``libbpf.so.1`` cannot be loaded."""


class _BtfType(ctypes.Structure):
    """``struct btf_type`` (linux/btf.h): name, info (vlen in the low 16 bits), size."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    """``struct btf_member`` (linux/btf.h); follows a struct's ``btf_type``."""

    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
    ]


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (_P, [_PrintFn]),
    "bpf_object__open_file": (_P, [ctypes.c_char_p, _P]),
    "bpf_object__load": (ctypes.c_int, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__btf": (_P, [_P]),
    "bpf_program__set_autoload": (ctypes.c_int, [_P, ctypes.c_bool]),
    "bpf_program__attach": (_P, [_P]),
    "bpf_link__destroy": (ctypes.c_int, [_P]),
    "bpf_map__fd": (ctypes.c_int, [_P]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "ring_buffer__new": (_P, [ctypes.c_int, SampleFn, _P, _P]),
    "ring_buffer__poll": (ctypes.c_int, [_P, ctypes.c_int]),
    "ring_buffer__consume": (ctypes.c_int, [_P]),
    "ring_buffer__epoll_fd": (ctypes.c_int, [_P]),
    "ring_buffer__free": (None, [_P]),
    "btf__find_by_name_kind": (ctypes.c_int32, [_P, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__type_by_id": (ctypes.POINTER(_BtfType), [_P, ctypes.c_uint32]),
    "btf__name_by_offset": (ctypes.c_char_p, [_P, ctypes.c_uint32]),
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_log: list[str] = []
_vsnprintf = libc.vsnprintf
_vsnprintf.restype = ctypes.c_int
_vsnprintf.argtypes = [ctypes.c_char_p, _SIZE, ctypes.c_char_p, _P]


def _print(level: int, fmt: bytes | None, args: int | None) -> int:
    # va_list is an array type on x86_64, so it arrives as a pointer vsnprintf can take.
    buf = ctypes.create_string_buffer(1024)
    _vsnprintf(buf, len(buf), fmt, args)
    _log.append(buf.value.decode(errors="replace").rstrip("\n"))
    del _log[:-200]  # the verifier can be verbose; only the end explains a failure
    return 0


_print_cb = _PrintFn(_print)  # module-level: libbpf keeps the pointer for ever


def lib() -> ctypes.CDLL:
    """The loaded ``libbpf.so.1`` with every signature declared; raises LibbpfMissing."""
    global _lib
    with _lock:
        if _lib is None:
            try:
                handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
            except OSError as exc:
                raise LibbpfMissing(errno.ENOENT, f"libbpf.so.1: {exc}") from exc
            for name, (restype, argtypes) in _SIGNATURES.items():
                func = getattr(handle, name)
                func.restype = restype
                func.argtypes = argtypes
            handle.libbpf_set_print(_print_cb)
            _lib = handle
        return _lib


def last_log(lines: int = 5) -> str:
    """The last ``lines`` messages libbpf logged (for an error message), joined by ``; ``."""
    return "; ".join(line for line in _log[-lines:] if line)


def clear_log() -> None:
    _log.clear()


def _check_int(ret: int, call: str, detail: str | None = None) -> int:
    if ret < 0:
        raise SyscallError(-ret, call, detail)
    return ret


def _check_ptr(ptr: int | None, call: str, detail: str | None = None) -> int:
    if not ptr:
        raise SyscallError(ctypes.get_errno() or errno.EINVAL, call, detail)
    return ptr


@dataclass(frozen=True)
class StructLayout:
    """A struct as recorded in BTF: total size and each member's byte offset."""

    size: int
    offsets: dict[str, int]


class Link:
    """An attached program (``struct bpf_link``); destroying it detaches."""

    def __init__(self, ptr: int) -> None:
        self._ptr: int | None = ptr

    def destroy(self) -> None:
        if self._ptr:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


class BpfObject:
    """An opened ``bpf_object`` (an ELF .o): configure, load, attach, find maps."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._ptr: int | None = _check_ptr(
            lib().bpf_object__open_file(path.encode(), None), "bpf_object__open_file", path
        )

    @property
    def ptr(self) -> int:
        if not self._ptr:
            raise SyscallError(errno.EBADF, "bpf_object", "closed")
        return self._ptr

    def _program(self, name: str) -> int:
        return _check_ptr(
            lib().bpf_object__find_program_by_name(self.ptr, name.encode()),
            "bpf_object__find_program_by_name",
            name,
        )

    def set_autoload(self, program: str, autoload: bool) -> None:
        """Whether ``load`` loads ``program``; only before loading."""
        _check_int(
            lib().bpf_program__set_autoload(self._program(program), autoload),
            "bpf_program__set_autoload",
            program,
        )

    def load(self) -> None:
        """Create the maps, relocate (CO-RE) and verify and load every autoloaded program."""
        _check_int(lib().bpf_object__load(self.ptr), "bpf_object__load", self.path)

    def attach(self, program: str) -> Link:
        """Attach ``program`` where its SEC() name says (tp_btf/..., raw_tp/...)."""
        return Link(
            _check_ptr(
                lib().bpf_program__attach(self._program(program)), "bpf_program__attach", program
            )
        )

    def map_fd(self, name: str) -> int:
        found = _check_ptr(
            lib().bpf_object__find_map_by_name(self.ptr, name.encode()),
            "bpf_object__find_map_by_name",
            name,
        )
        return _check_int(lib().bpf_map__fd(found), "bpf_map__fd", name)

    def struct_layout(self, name: str) -> StructLayout:
        """The layout of ``struct name`` in the object's own BTF (works before loading)."""
        btf = _check_ptr(lib().bpf_object__btf(self.ptr), "bpf_object__btf", self.path)
        type_id = _check_int(
            lib().btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT),
            "btf__find_by_name_kind",
            name,
        )
        btf_type = lib().btf__type_by_id(btf, type_id)
        if not btf_type:
            raise SyscallError(errno.ENOENT, "btf__type_by_id", name)
        members = ctypes.cast(
            ctypes.addressof(btf_type.contents) + ctypes.sizeof(_BtfType),
            ctypes.POINTER(_BtfMember),
        )
        offsets: dict[str, int] = {}
        for i in range(btf_type.contents.info & 0xFFFF):
            member = members[i]
            member_name = lib().btf__name_by_offset(btf, member.name_off) or b""
            # Without the kind_flag bit the offset is in bits; no bitfields here.
            offsets[member_name.decode()] = member.offset // 8
        return StructLayout(btf_type.contents.size, offsets)

    def close(self) -> None:
        if self._ptr:
            lib().bpf_object__close(self._ptr)
            self._ptr = None


def map_update(map_fd: int, key: ctypes._CData, value: ctypes._CData, name: str) -> None:
    """``bpf_map_update_elem(fd, &key, &value, BPF_ANY)``."""
    ret = lib().bpf_map_update_elem(map_fd, ctypes.addressof(key), ctypes.addressof(value), 0)
    _check_int(ret, "bpf_map_update_elem", name)


def map_lookup(map_fd: int, key: ctypes._CData, value: ctypes._CData, name: str) -> bool:
    """``bpf_map_lookup_elem`` into ``value``; False if the key is absent."""
    ret = lib().bpf_map_lookup_elem(map_fd, ctypes.addressof(key), ctypes.addressof(value))
    if ret == -errno.ENOENT:
        return False
    _check_int(ret, "bpf_map_lookup_elem", name)
    return True


def possible_cpus() -> int:
    """The number of possible CPUs: the value count of a per-CPU map lookup."""
    return _check_int(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class RingBuffer:
    """A ``struct ring_buffer`` reading one BPF ring buffer map into ``on_sample(bytes)``."""

    def __init__(self, map_fd: int, on_sample: Callable[[bytes], None]) -> None:
        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            on_sample(ctypes.string_at(data or 0, size))
            return 0

        self._callback = SampleFn(sample)  # kept alive as long as libbpf may call it
        self._ptr: int | None = _check_ptr(
            lib().ring_buffer__new(map_fd, self._callback, None, None), "ring_buffer__new"
        )

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` (-1: for ever) and consume; returns samples read."""
        ret = lib().ring_buffer__poll(self._ptr, timeout_ms)
        if ret == -errno.EINTR:
            return 0
        return _check_int(ret, "ring_buffer__poll")

    def consume(self) -> int:
        """Consume whatever is there without waiting."""
        return _check_int(lib().ring_buffer__consume(self._ptr), "ring_buffer__consume")

    def epoll_fd(self) -> int:
        return _check_int(lib().ring_buffer__epoll_fd(self._ptr), "ring_buffer__epoll_fd")

    def free(self) -> None:
        if self._ptr:
            lib().ring_buffer__free(self._ptr)
            self._ptr = None
