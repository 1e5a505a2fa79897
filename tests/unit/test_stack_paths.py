"""Names, state directories and resolve_user_stack (no privileges needed, except where a
directory owned by another user is made with chown)."""

from __future__ import annotations

import json
import os
import stat
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


OTHER_UID = 65534  # nobody
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another uid")


@pytest.fixture
def tmp_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /tmp: sticky and world-writable, as the real one."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    parent.chmod(0o1777)
    monkeypatch.setattr(paths, "TMP_DIR", str(parent))
    return parent


def test_base_dir_follows_xdg(tmp_path: Path, tmp_parent: Path) -> None:
    me = os.getuid()
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    assert paths.user_base_dir(me, {"XDG_RUNTIME_DIR": str(xdg)}) == f"{xdg}/mstack"
    assert paths.user_base_dir(me, {}) == f"{tmp_parent}/mstack-{me}"
    # A relative XDG_RUNTIME_DIR is invalid per the spec: fall back.
    assert paths.user_base_dir(me, {"XDG_RUNTIME_DIR": "rel"}) == f"{tmp_parent}/mstack-{me}"
    # So is one that does not exist, or is not this uid's (su, sudo -E).
    missing = {"XDG_RUNTIME_DIR": str(tmp_path / "missing")}
    assert paths.user_base_dir(me, missing) == f"{tmp_parent}/mstack-{me}"
    assert paths.user_base_dir(me + 1, {"XDG_RUNTIME_DIR": str(xdg)}) == (
        f"{tmp_parent}/mstack-{me + 1}"
    )


@pytest.mark.parametrize("kind", ["other-writable", "group-writable", "symlink", "file"])
def test_unsafe_xdg_runtime_dir_falls_back_to_tmp(
    tmp_path: Path, tmp_parent: Path, kind: str
) -> None:
    me, xdg = os.getuid(), tmp_path / "xdg"
    if kind == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        xdg.symlink_to(tmp_path / "real")
    elif kind == "file":
        xdg.write_text("")
    else:
        xdg.mkdir()
        xdg.chmod(0o777 if kind == "other-writable" else 0o770)
    env = {"XDG_RUNTIME_DIR": str(xdg)}
    assert paths.user_base_dir(me, env) == f"{tmp_parent}/mstack-{me}"
    assert paths.ensure_user_base_dir(environ=env) == f"{tmp_parent}/mstack-{me}"
    assert not (xdg / "mstack").exists()


@needs_root
def test_xdg_runtime_dir_of_another_user_is_not_used(tmp_path: Path, tmp_parent: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, OTHER_UID, OTHER_UID)
    env = {"XDG_RUNTIME_DIR": str(xdg)}
    assert paths.user_base_dir(environ=env) == f"{tmp_parent}/mstack-{os.getuid()}"
    assert paths.user_base_dir(OTHER_UID, env) == f"{xdg}/mstack"  # but it is nobody's


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


# --- the /tmp fallback: created 0700, never another user's or a symlink ---------------------


def _base(tmp_parent: Path) -> Path:
    return tmp_parent / f"mstack-{os.getuid()}"


def _plant_live_record(base: Path) -> None:
    """What a squatter would leave: a record naming a live namespace (here ours)."""
    me = os.getpid()
    _record(base, "mine", me, os.stat(f"/proc/{me}/ns/net").st_ino)


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_tmp_fallback_is_created_0700(tmp_parent: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        base = paths.ensure_user_base_dir(environ={})
    finally:
        os.umask(old)
    st = os.lstat(base)
    assert base == str(_base(tmp_parent))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.getuid(), 0o700)
    assert paths.ensure_user_base_dir(environ={}) == base  # and accepted the next time
    assert paths.unsafe_user_base(environ={}) is None


def test_missing_tmp_fallback_is_not_created_by_lookups(tmp_parent: Path) -> None:
    assert paths.resolve_user_stack("mine", environ={}) is None
    assert paths.unsafe_user_base(environ={}) is None
    assert not _base(tmp_parent).exists()


@needs_root
def test_tmp_fallback_squatted_by_another_user_is_refused(tmp_parent: Path) -> None:
    base = _base(tmp_parent)
    base.mkdir(mode=0o700)
    _plant_live_record(base)
    os.chown(base, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeStateDir, match=f"owned by uid {OTHER_UID}, not {os.getuid()}"):
        paths.ensure_user_base_dir(environ={})
    assert paths.resolve_user_stack("mine", environ={}) is None
    err = paths.unsafe_user_base(environ={})
    assert err is not None and str(base) in str(err) and "owned by uid" in str(err)
    assert os.lstat(base).st_uid == OTHER_UID  # left as it was


def test_tmp_fallback_symlink_is_refused_and_not_followed(tmp_path: Path,
                                                         tmp_parent: Path) -> None:
    target = tmp_path / "victim"
    target.mkdir(mode=0o700)
    _plant_live_record(target)
    _base(tmp_parent).symlink_to(target)
    with pytest.raises(UnsafeStateDir, match="symbolic link"):
        paths.ensure_user_base_dir(environ={})
    assert paths.resolve_user_stack("mine", environ={}) is None
    err = paths.unsafe_user_base(environ={})
    assert err is not None and "symbolic link" in str(err)
    assert sorted(p.name for p in target.iterdir()) == ["mine"]


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o750])
def test_tmp_fallback_open_to_others_is_refused(tmp_parent: Path, mode: int) -> None:
    base = _base(tmp_parent)
    base.mkdir()
    base.chmod(mode)
    _plant_live_record(base)
    with pytest.raises(UnsafeStateDir, match=f"mode {mode:o} allows other users"):
        paths.ensure_user_base_dir(environ={})
    assert paths.resolve_user_stack("mine", environ={}) is None
    assert stat.S_IMODE(base.stat().st_mode) == mode  # not "repaired" behind the user's back


def test_tmp_fallback_file_is_refused(tmp_parent: Path) -> None:
    _base(tmp_parent).write_text("")
    with pytest.raises(UnsafeStateDir, match="not a directory"):
        paths.ensure_user_base_dir(environ={})
    assert paths.resolve_user_stack("mine", environ={}) is None


def test_symlinked_record_is_not_followed(tmp_path: Path) -> None:
    env = _env(tmp_path)
    base = Path(paths.ensure_user_base_dir(environ=env))
    elsewhere = tmp_path / "elsewhere"
    me = os.getpid()
    elsewhere.write_text(json.dumps({"holder_pid": me,
                                     "netns_inode": os.stat(f"/proc/{me}/ns/net").st_ino}))
    (base / "mine").mkdir(mode=0o700)
    (base / "mine" / "state.json").symlink_to(elsewhere)
    assert paths.resolve_user_stack("mine", environ=env) is None
