"""Names, state directories and resolve_user_stack (no privileges needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mstack_bpf.stacks import paths
from mstack_bpf.stacks.errors import InvalidName, UnsafeStateDir


@pytest.mark.parametrize("name", ["a", "lan0", "my-stack_1.x", "A" * 32])
def test_valid_names(name: str) -> None:
    assert paths.check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "-x", "a/b", "a b", "null", "native", "A" * 33, "é", "x\n"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName):
        paths.check_name(name)
    assert not paths.valid_name(name)


def test_base_dir_follows_xdg() -> None:
    assert paths.user_base_dir(1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == (
        "/run/user/1000/mstack"
    )
    assert paths.user_base_dir(1000, {}) == "/tmp/mstack-1000"
    # A relative XDG_RUNTIME_DIR is invalid per the spec: fall back.
    assert paths.user_base_dir(7, {"XDG_RUNTIME_DIR": "rel"}) == "/tmp/mstack-7"


def _record(base: Path, name: str, pid: int, inode: int) -> None:
    d = base / name
    d.mkdir(mode=0o700)
    (d / "state.json").write_text(json.dumps({"holder_pid": pid, "netns_inode": inode}))


def _env(tmp_path: Path) -> dict[str, str]:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    return {"XDG_RUNTIME_DIR": str(xdg)}


def test_resolve_live_stack(tmp_path: Path) -> None:
    env = _env(tmp_path)
    base = Path(paths.ensure_user_base_dir(environ=env))
    assert (base.stat().st_mode & 0o777) == 0o700
    me = os.getpid()
    _record(base, "mine", me, os.stat(f"/proc/{me}/ns/net").st_ino)
    assert paths.resolve_user_stack("mine", environ=env) == f"/proc/{me}/ns/net"


def test_resolve_rejects_stale_and_missing(tmp_path: Path) -> None:
    env = _env(tmp_path)
    base = Path(paths.ensure_user_base_dir(environ=env))
    _record(base, "stale", os.getpid(), 1)  # inode differs: pid reused or holder gone
    (base / "junk").mkdir()
    (base / "junk" / "state.json").write_text("{not json")
    for name in ("stale", "junk", "absent", "../etc", "null"):
        assert paths.resolve_user_stack(name, environ=env) is None


def test_unsafe_base_dir_refused(tmp_path: Path) -> None:
    env = _env(tmp_path)
    base = Path(paths.user_base_dir(environ=env))
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    me = os.getpid()
    _record(base, "mine", me, os.stat(f"/proc/{me}/ns/net").st_ino)
    with pytest.raises(UnsafeStateDir):
        paths.ensure_user_base_dir(environ=env)
    assert paths.resolve_user_stack("mine", environ=env) is None


def test_symlinked_base_dir_refused(tmp_path: Path) -> None:
    env = _env(tmp_path)
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    Path(paths.user_base_dir(environ=env)).symlink_to(real)
    with pytest.raises(UnsafeStateDir):
        paths.ensure_user_base_dir(environ=env)


def test_foreign_owner_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    with pytest.raises(UnsafeStateDir, match="owned by uid"):
        paths.check_private_dir(str(d), os.getuid() + 1)


def test_resolve_is_fast(tmp_path: Path) -> None:
    import time

    env = _env(tmp_path)
    base = Path(paths.ensure_user_base_dir(environ=env))
    me = os.getpid()
    _record(base, "mine", me, os.stat(f"/proc/{me}/ns/net").st_ino)
    t = time.perf_counter()
    for _ in range(200):
        assert paths.resolve_user_stack("mine", environ=env)
    assert (time.perf_counter() - t) / 200 < 0.002
