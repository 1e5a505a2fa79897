"""Load ``socktrace.bpf.o``, attach it, and read its socket events.

A :class:`Tracer` made with ``root_pid`` traces that process and every process it forks
afterwards (``sched_process_fork``); the caller makes it *before* the root starts its work
(mstack's supervisor passes the pid that will exec the command). Without ``root_pid`` it
traces every process on the machine.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.resources
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from mstack_bpf.core.abi import SELF_MARK
from mstack_bpf.linux import libbpf
from mstack_bpf.linux.ffi import SyscallError
from mstack_bpf.trace.events import Event, layout_mismatch

BTF_PATH = "/sys/kernel/btf/vmlinux"

#: Attach modes, tried in order: each names its sys_exit, fork, exit and exec programs.
_MODES: dict[str, tuple[str, ...]] = {
    "tp_btf": ("btf_sys_exit", "btf_fork", "btf_exit", "btf_exec"),
    "raw_tp": ("raw_sys_exit", "raw_fork", "raw_exit", "raw_exec"),
}


#: Default reader wake-up threshold (see ``wakeup_bytes``): about 45 events.
WAKEUP_BYTES = 4096


class _Config(ctypes.Structure):
    """``struct socktrace_config`` (bpf/socktrace.h)."""

    _fields_ = [("filter", ctypes.c_uint32), ("wakeup_bytes", ctypes.c_uint32),
                ("self_mark", ctypes.c_uint64 * 2)]


class TraceUnavailable(OSError):
    """eBPF socket tracing cannot run here; ``str()`` is a one-line reason."""

    def __init__(self, err: int, reason: str) -> None:
        super().__init__(err, reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def default_object_path() -> Path:
    """The compiled program shipped as package data (``make -C bpf`` builds it)."""
    return Path(str(importlib.resources.files("mstack_bpf").joinpath("bpf/socktrace.bpf.o")))


def _describe(exc: OSError) -> str:
    text = str(exc)
    if isinstance(exc, SyscallError) and exc.call == "bpf_object__load":
        log = libbpf.last_log(2)
        if exc.errno == errno.EPERM:
            text += " (program type refused by the kernel)"
        if log:
            text += f" [libbpf: {log}]"
    return text


def _open(path: Path, mode: str) -> libbpf.BpfObject:
    """Open and load ``path`` with only ``mode``'s programs; attaching is left to the caller."""
    obj = libbpf.BpfObject(str(path))
    try:
        mismatch = layout_mismatch(obj.struct_layout("socktrace_event"))
        if mismatch:
            raise TraceUnavailable(errno.EPROTO, f"{path}: stale object: {mismatch}")
        for other, programs in _MODES.items():
            if other != mode:
                for program in programs:
                    obj.set_autoload(program, False)
        libbpf.clear_log()
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


def _processes() -> dict[int, tuple[bytes, int]]:
    """pid → (comm, ppid) of every live process, from /proc (a snapshot, racy by nature)."""
    found: dict[int, tuple[bytes, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # The comm field may hold spaces and parentheses: ppid follows the last ')'.
        end = stat.rindex(b")")
        found[int(entry.name)] = (stat[stat.index(b"(") + 1 : end],
                                  int(stat[end + 2 :].split()[1]))
    return found


def _descendants(roots: Iterable[int], processes: dict[int, tuple[bytes, int]]) -> set[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid) in processes.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


SUPERVISOR_COMM = b"mstack-sv"  # launch/launcher.py names its supervisor so
_LISTENER_LINK = "anon_inode:seccomp notify"


def _holds_listener(pid: int) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == _LISTENER_LINK:
                return True
        except OSError:
            continue
    return False


def running_mstack() -> set[int]:
    """mstack supervisors already running, with the helpers they forked: a process named
    ``mstack-sv`` *that holds a seccomp listener* (a name alone is any program's to take).
    Those started later are known from the mark their launcher sets (``SELF_MARK``)."""
    processes = _processes()
    supervisors = [pid for pid, (comm, _) in processes.items()
                   if comm == SUPERVISOR_COMM and _holds_listener(pid)]
    return _descendants(supervisors, processes) if supervisors else set()


class Tracer:
    """Socket events of one process tree (``root_pid``) or of every process (None).

    Events of mstack's own processes carry ``mstack=True``: a launcher that marked itself
    (``core/abi.py``, ``SELF_MARK``) and what it forks until that execs, and ``own_pids``
    (processes the caller knows are mstack's until they exec, such as the launcher that
    will exec the traced command).

    ``poll()`` returns the events that arrived; ``fileno()`` is an fd that becomes readable
    when a batch is waiting, for a caller's own poll loop. ``load_ms`` is how long opening,
    loading and attaching took. ``modes`` are the attach modes to try in order (``tp_btf``,
    then ``raw_tp``); ``mode`` is the one that worked. Raises :class:`TraceUnavailable` if
    eBPF cannot run. ``wakeup_bytes``: see :meth:`fileno`; 0 trades the traced calls'
    speed for latency.
    """

    def __init__(
        self,
        root_pid: int | None = None,
        *,
        object_path: Path | str | None = None,
        modes: Sequence[str] = tuple(_MODES),
        wakeup_bytes: int = WAKEUP_BYTES,
        own_pids: Iterable[int] = (),
    ) -> None:
        start = time.perf_counter()
        path = Path(object_path) if object_path is not None else default_object_path()
        reason = _static_reason(path)
        if reason:
            raise TraceUnavailable(errno.ENOTSUP, reason)
        self._raw: list[bytes] = []
        self._links: list[libbpf.Link] = []
        config = _Config(root_pid is not None, wakeup_bytes, (ctypes.c_uint64 * 2)(*SELF_MARK))
        self._obj, self.mode = self._load(path, config, root_pid, tuple(own_pids), modes)
        try:
            self._rb = libbpf.RingBuffer(self._obj.map_fd("events"), self._raw.append)
            if root_pid is not None:
                # Processes forked before the fork hook was attached: find them in /proc,
                # twice, so a fork racing with the first scan is caught by the second.
                for _ in range(2):
                    self.add_pids(_descendants([root_pid], _processes()))
        except BaseException:
            self.close()
            raise
        self.load_ms = (time.perf_counter() - start) * 1000

    def _load(
        self, path: Path, config: _Config, root_pid: int | None, own: tuple[int, ...],
        modes: Sequence[str],
    ) -> tuple[libbpf.BpfObject, str]:
        first: OSError | None = None
        for mode in modes:
            programs = _MODES[mode]
            try:
                obj = _open(path, mode)
            except TraceUnavailable:
                raise
            except OSError as exc:
                first = first or exc
                continue
            try:
                self._configure(obj, config, root_pid, own)
                self._links = [obj.attach(program) for program in programs]
                return obj, mode
            except OSError as exc:
                first = first or exc
                for link in self._links:
                    link.destroy()
                self._links = []
                obj.close()
        assert first is not None
        raise TraceUnavailable(first.errno or errno.EINVAL, _describe(first)) from first

    @staticmethod
    def _configure(obj: libbpf.BpfObject, config: _Config, root_pid: int | None,
                   own: tuple[int, ...]) -> None:
        # Filter before attaching, so no other process's event is ever queued.
        libbpf.map_update(obj.map_fd("config"), ctypes.c_uint32(0), config, "config")
        for pid in own:
            libbpf.map_update(obj.map_fd("own"), ctypes.c_uint32(pid), ctypes.c_uint32(1), "own")
        if root_pid is not None:
            libbpf.map_update(
                obj.map_fd("traced"), ctypes.c_uint32(root_pid), ctypes.c_uint32(1), "traced"
            )

    def add_pids(self, pids: Iterable[int]) -> None:
        """Trace these processes too (and, from now on, their children)."""
        fd = self._obj.map_fd("traced")
        for pid in pids:
            libbpf.map_update(fd, ctypes.c_uint32(pid), ctypes.c_uint32(1), "traced")

    def fileno(self) -> int:
        """An epoll fd, readable once ``wakeup_bytes`` of events are waiting (or at every
        event with ``wakeup_bytes=0``). With batching, also call :meth:`poll` on a timer."""
        return self._rb.epoll_fd()

    def poll(self, timeout_ms: int = 0) -> list[Event]:
        """Every queued event, after waiting up to ``timeout_ms`` (-1: for ever) for a batch.

        With batching the wait ends early only when a batch is complete; whatever is
        queued when it ends is returned, so a timeout of ~100 ms bounds the latency.
        """
        self._rb.poll(timeout_ms)
        # Below the wake-up threshold epoll reports nothing, yet events may be queued.
        self._rb.consume()
        raw, self._raw[:] = list(self._raw), []
        return [Event.from_bytes(data) for data in raw]

    def drain(self) -> list[Event]:
        """Every event already queued, without waiting."""
        return self.poll(0)

    def dropped(self) -> int:
        """Events lost so far because the ring buffer was full."""
        ncpus = libbpf.possible_cpus()
        values = (ctypes.c_uint64 * ncpus)()
        libbpf.map_lookup(self._obj.map_fd("drops"), ctypes.c_uint32(0), values, "drops")
        return sum(values)

    def close(self) -> None:
        """Detach and free everything; safe to call twice."""
        for link in self._links:
            link.destroy()
        self._links = []
        rb = getattr(self, "_rb", None)
        if rb is not None:
            rb.free()
        self._obj.close()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _static_reason(path: Path) -> str | None:
    """Why tracing cannot work, from checks that load nothing; None if they pass."""
    if os.geteuid() != 0:
        try:
            with open("/proc/sys/kernel/unprivileged_bpf_disabled") as f:
                setting = f" (kernel.unprivileged_bpf_disabled={f.read().strip()})"
        except OSError:
            setting = ""
        return f"eBPF tracing needs root{setting}"
    if not os.path.exists(BTF_PATH):
        return f"the kernel has no BTF ({BTF_PATH} missing; needs CONFIG_DEBUG_INFO_BTF)"
    try:
        libbpf.lib()
    except libbpf.LibbpfMissing as exc:
        return f"{exc.strerror} (apt-get install libbpf1)"
    if not path.is_file():
        return f"{path} is missing (build it with make -C bpf)"
    return None


def unavailable_reason(object_path: Path | str | None = None, *, load: bool = True) -> str | None:
    """One line saying why eBPF socket tracing cannot run here, or None if it can.

    With ``load`` (the default) it really loads and attaches the program for a moment,
    which is the only way to learn whether the kernel accepts it (~25 ms).
    """
    path = Path(object_path) if object_path is not None else default_object_path()
    reason = _static_reason(path)
    if reason or not load:
        return reason
    try:
        Tracer(os.getpid(), object_path=path).close()
    except OSError as exc:
        return str(exc)
    return None
