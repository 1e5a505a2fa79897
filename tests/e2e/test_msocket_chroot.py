"""msocket paths from a chrooted target resolve in *its* root, as its own open() would:
``..`` stops at the jail's root, absolute symlinks start from it, and nothing outside the
jail can be named or even probed (targetview.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MSTACK, Netns, build_c, needs_root, run

pytestmark = needs_root


@pytest.fixture
def jail(tmp_path: Path, netns: Netns) -> Iterator[Path]:
    """A chroot holding the test's stack at /inside and a procfs at /proc."""
    root = tmp_path / "jail"
    (root / "run" / "netns").mkdir(parents=True)
    (root / "proc").mkdir()
    (root / "inside").touch()
    os.symlink(f"/run/netns/{netns.name}", root / "abs-link")  # the jail's /run/netns
    os.symlink("/inside", root / "in-link")
    (root / "dev").mkdir()
    os.symlink("/proc/self/fd", root / "dev" / "fd")  # routes to "self" but /proc/self/...
    os.symlink("/proc/self/ns", root / "myns")
    mounted: list[Path] = []
    try:
        run(["mount", "--bind", f"/run/netns/{netns.name}", str(root / "inside")], check=True)
        mounted.append(root / "inside")
        run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        mounted.append(root / "proc")
        yield root
    finally:
        for path in reversed(mounted):
            run(["umount", "-l", str(path)])


def named_from_jail(jail: Path, netns: Netns, uid: int, *paths: str) -> dict[str, object]:
    # the jailed process stays where mstack started: its procfs "self" paths name that
    cp = run([MSTACK, "--keep-namespace", "-o", "4", netns.name, build_c("chrooted"),
              str(jail), str(uid), *paths])
    assert cp.returncode == 0, cp.stderr
    result: dict[str, object] = json.loads(cp.stdout)
    return result


def test_paths_resolve_in_the_jail(jail: Path, netns: Netns, host_cookie: int) -> None:
    escape = f"/../../../../../run/netns/{netns.name}"
    own_escape = "/proc/self/root" + escape
    out = named_from_jail(jail, netns, -1, "/inside", "/in-link", "run/../inside", escape,
                          "/abs-link", netns.name, "/proc/self/ns/net", "@self",
                          "/proc/self/root/inside", own_escape, "//proc/./self/ns/net",
                          "/myns/net", "/dev/fd/1")
    assert out == {
        "/inside": {"cookie": netns.cookie},
        "/in-link": {"cookie": netns.cookie},  # an absolute symlink, followed in the jail
        "run/../inside": {"cookie": netns.cookie},
        escape: {"errno": "ENOENT"},  # natively too: ".." stops at the jail's root
        "/abs-link": {"errno": "ENOENT"},  # the jail's /run/netns has no such file
        netns.name: {"errno": "ENOENT"},  # a bare name is looked up in the jail's /run/netns
        "/proc/self/ns/net": {"cookie": host_cookie},
        "@self": {"cookie": host_cookie},  # a magic link, in the jail's procfs
        "/proc/self/root/inside": {"cookie": netns.cookie},  # its own root, in its root
        own_escape: {"errno": "ENOENT"},
        "//proc/./self/ns/net": {"cookie": host_cookie},  # its self, not the supervisor's
        # through the jail's own procfs mount: still its self; its stdout is a pipe (the
        # supervisor's fd 1 is /dev/null, not a namespace either: no telling them apart)
        "/myns/net": {"cookie": host_cookie},
        "/dev/fd/1": {"errno": "EOPNOTSUPP"},
    }


def test_an_unprivileged_prisoner_learns_nothing_of_the_outside(jail: Path,
                                                                netns: Netns) -> None:
    """Outside files would answer EACCES (exists, not yours) or ENOTSUP (not a stack)."""
    outside = ["/../../../../../etc/passwd", "/../../../../../run/netns/" + netns.name,
               "/../../../../../usr", "../../../../../etc/passwd"]
    out = named_from_jail(jail, netns, 65534, "/inside", *outside)
    assert out["/inside"] == {"cookie": netns.cookie}  # the tree's own stack
    for path in outside[:3]:
        assert out[path] == {"errno": "ENOENT"}, path
    assert out[outside[3]] == {"errno": "EXDEV"}  # relative, leaving the working directory
