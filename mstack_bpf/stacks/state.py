"""The record of one stack (``state.json``) and the processes it started.

A process is recorded with its start time (field 22 of ``/proc/PID/stat``) so that ``del``
never signals an unrelated process that got a recycled pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

STATE_FILE = "state.json"


@dataclass(frozen=True)
class Proc:
    """A process a stack started (holder, pasta, slirp4netns)."""

    pid: int
    start: int
    role: str

    @classmethod
    def of(cls, pid: int, role: str) -> Proc:
        return cls(pid, proc_start_time(pid), role)

    def alive(self) -> bool:
        try:
            return proc_start_time(self.pid) == self.start
        except OSError:
            return False


@dataclass
class StackState:
    """What ``add`` made; ``list`` shows it and ``del`` undoes it."""

    name: str
    owner: str  # "root" (under /run/netns) or "user" (held by a holder process)
    net: str  # "loopback", "veth" or "user-net"
    netns_path: str
    netns_inode: int = 0
    uid: int = 0
    backend: str | None = None
    addresses: list[str] = field(default_factory=list)  # inside the stack, ADDR/PREFIX
    gateway: str | None = None
    host_if: str | None = None
    host_addresses: list[str] = field(default_factory=list)
    subnet: str | None = None
    nat_table: str | None = None
    dns: str | None = None
    host_alias: str | None = None  # address inside the stack that reaches host loopback
    holder_pid: int | None = None
    procs: list[Proc] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackState:
        data = dict(data)
        data["procs"] = [Proc(**p) for p in data.get("procs", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def save(state_dir: str, state: StackState) -> None:
    """Write ``state.json`` atomically (a reader never sees half a record)."""
    tmp = os.path.join(state_dir, STATE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state.to_json(), f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(state_dir, STATE_FILE))


def load(state_dir: str) -> StackState | None:
    """The record in ``state_dir``, or None when there is none or it is unreadable."""
    try:
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as f:
            return StackState.from_json(json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def proc_start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (proc(5), /proc/PID/stat field 22)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])


def stop(proc: Proc, timeout: float = 2.0) -> None:
    """SIGTERM the recorded process if it is still that process, then SIGKILL after
    ``timeout``. Reaps it when it is our child."""
    if not proc.alive():
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not proc.alive() or _is_zombie(proc.pid):
            return
        time.sleep(0.01)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _reap(proc.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return True
    return raw[raw.rindex(b")") + 2 :].startswith(b"Z")
