"""Per-process tables carried through fork by the kernel: ``bpf/carrier.bpf.c``.

A table a process sets (msocket ``SOCK_DEFAULT``, a nested mstack) is carried to its
children by the marker descriptor (supervisor/tables.py), which a child loses when it closes
its descriptors (``closefrom``, Python's ``close_fds``, sudo). Where eBPF runs (root, BTF),
the supervisor also writes thread -> table number into the map of a program on
``sched_process_fork``, ``sched_process_exec`` and ``sched_process_exit``: every task a task
creates gets the entry its creator had at that moment (none if it had none, whatever a
former task of that tid left), an exiting task's entry goes, a thread that execs and so takes
its process's pid (de_thread) takes its entry along. The supervisor then asks the
map first, and the marker only for a thread the map does not know.

Keys are tids as the initial pid namespace numbers them: a supervisor in another pid
namespace gets no carrier. The program is attached only once some process of the tree has
set a table of its own; a tree without one pays nothing.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.resources
import logging
import os
from pathlib import Path

from mstack_bpf.linux import libbpf
from mstack_bpf.linux.ffi import SyscallError

log = logging.getLogger("mstack.supervisor")

_MODES = {"tp_btf": ("btf_fork", "btf_exit", "btf_exec"),
          "raw_tp": ("raw_fork", "raw_exit", "raw_exec")}


def object_path() -> Path:
    return Path(str(importlib.resources.files("mstack_bpf").joinpath("bpf/carrier.bpf.o")))


def _in_initial_pid_namespace() -> bool:
    """Whether our tids are the kernel's own (``NSpid`` has one level)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"NSpid:"):
                return len(line.split()) == 2
    return False


class Carrier:
    """The map of the carrier program, attached for as long as this object lives."""

    def __init__(self, path: Path | None = None) -> None:
        if os.geteuid() != 0:
            raise SyscallError(errno.EPERM, "carrier", "eBPF needs root")
        if not _in_initial_pid_namespace():
            raise SyscallError(errno.EINVAL, "carrier", "not in the initial pid namespace")
        self._links: list[libbpf.Link] = []
        first: OSError | None = None
        for mode, programs in _MODES.items():
            obj = libbpf.BpfObject(str(path or object_path()))
            try:
                for other, names in _MODES.items():
                    for name in names if other != mode else ():
                        obj.set_autoload(name, False)
                obj.load()
                self._links = [obj.attach(name) for name in programs]
                self._obj = obj
                self._map = obj.map_fd("tables")
                self.mode = mode
                return
            except OSError as e:
                first = first or e
                for link in self._links:
                    link.destroy()
                self._links = []
                obj.close()
        assert first is not None
        raise first

    def carry(self, tid: int, number: int) -> bool:
        """Give every thread of ``tid``'s process table ``number`` (and so, from now on,
        every task they create); False if the map is full."""
        value = ctypes.c_uint32(number)
        done: set[int] = set()
        # twice: a thread created while the first pass ran, by one not yet given the
        # table, copied the old one; the second pass finds it
        for _ in range(2):
            try:
                tids = {int(t) for t in os.listdir(f"/proc/{tid}/task")} - done
            except OSError:
                return False  # gone: nothing to carry
            if not self._give(tids, value):
                return False
            done |= tids
        return True

    def _give(self, tids: set[int], value: ctypes.c_uint32) -> bool:
        for thread in tids:
            try:
                libbpf.map_update(self._map, ctypes.c_uint32(thread), value, "tables")
            except OSError as e:
                if e.errno != errno.E2BIG:
                    raise
                log.warning("the table carrier's map is full: thread %d keeps its table by "
                            "descriptor 1023 only", thread)
                return False
        return True

    def table_of(self, tid: int) -> int | None:
        """The number of the table thread ``tid`` carries, None if it carries none."""
        value = ctypes.c_uint32()
        if libbpf.map_lookup(self._map, ctypes.c_uint32(tid), value, "tables"):
            return value.value
        return None

    def close(self) -> None:
        for link in self._links:
            link.destroy()
        self._links = []
        self._obj.close()


def start() -> Carrier | None:
    """A carrier, or None (and why, in the debug log) where eBPF cannot run one."""
    try:
        return Carrier()
    except (OSError, libbpf.LibbpfMissing) as e:
        log.debug("per-process tables travel by descriptor 1023 only: %s", e)
        return None
