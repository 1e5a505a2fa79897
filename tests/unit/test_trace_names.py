"""Stack names for namespace inodes."""

from __future__ import annotations

import os
from pathlib import Path

from mstack_bpf.trace.names import StackNames, own_netns_inode, scan_names


def test_scan_names(tmp_path: Path) -> None:
    # Regular files stand in for namespace mounts: only the inode matters.
    (tmp_path / "blue").write_text("")
    (tmp_path / "red").write_text("")
    names = scan_names(str(tmp_path))
    assert names == {
        os.stat(tmp_path / "blue").st_ino: "blue",
        os.stat(tmp_path / "red").st_ino: "red",
    }
    assert scan_names(str(tmp_path / "missing")) == {}


def test_stack_names_native_and_late_namespaces(tmp_path: Path) -> None:
    names = StackNames(str(tmp_path), extra={1: "one"})
    assert names[own_netns_inode()] == "native"
    assert names.get(1) == "one"
    (tmp_path / "late").write_text("")
    inode = os.stat(tmp_path / "late").st_ino
    assert names.get(inode) == "late"  # an unknown inode triggers a rescan
    assert names.get(12345) is None
