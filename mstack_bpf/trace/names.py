"""Names for network-namespace inodes: ``native`` and the ``ip netns`` names.

The tracer reports a socket's namespace as an inode number; this finds a name for it by
stat'ing the namespaces that have one. Namespaces come and go while a trace runs, so an
unknown inode triggers a rescan (at most once per inode).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

NETNS_RUN_DIR = "/run/netns"  # where ip-netns(8) mounts named namespaces


def own_netns_inode() -> int:
    """The inode of the calling process's network namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def scan_names(run_dir: str = NETNS_RUN_DIR) -> dict[int, str]:
    """inode → name for every namespace mounted under ``run_dir``."""
    names: dict[int, str] = {}
    try:
        entries = sorted(os.scandir(run_dir), key=lambda e: e.name)
    except OSError:
        return names
    for entry in entries:
        try:
            names.setdefault(os.stat(entry.path).st_ino, entry.name)
        except OSError:
            continue  # deleted meanwhile
    return names


class StackNames(Mapping[int, str]):
    """inode → stack name: ``native`` for the own namespace (or the inode ``native`` names),
    then ``/run/netns`` names."""

    def __init__(self, run_dir: str = NETNS_RUN_DIR, extra: Mapping[int, str] | None = None,
                 native: int | None = None):
        self._run_dir = run_dir
        self._extra = dict(extra or {})
        self._native = own_netns_inode() if native is None else native
        self._names: dict[int, str] = {}
        self._missed: set[int] = set()
        self._rescan()

    def _rescan(self) -> None:
        self._names = scan_names(self._run_dir)
        self._names.update(self._extra)
        # The own namespace is "native" even if it also has an ip-netns name.
        self._names[self._native] = "native"

    def __contains__(self, inode: object) -> bool:
        if inode in self._names:
            return True
        if isinstance(inode, int) and inode not in self._missed:
            self._missed.add(inode)
            self._rescan()
        return inode in self._names

    def __getitem__(self, inode: int) -> str:
        if inode not in self:
            raise KeyError(inode)
        return self._names[inode]

    def __iter__(self) -> Iterator[int]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
