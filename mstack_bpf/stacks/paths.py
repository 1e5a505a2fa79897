"""Where stacks live: names, state directories, and resolving a user's own stack.

Root stacks (made by root)
    ``/run/netns/NAME`` — the namespace, bind-mounted by ``ip netns add`` (so ``ip netns``
    and ``mstack NAME`` see it); ``/run/mstack/stacks/NAME/`` (mode 0755) — its state.

Rootless stacks (made by any other user)
    The namespace has no mount: a *holder* process (``mstack-stack-holder NAME``, an exec of
    ``sleep infinity``) sits in a user namespace that owns a network namespace and keeps
    both alive. Its state directory is::

        BASE/NAME/            mode 0700, owned by the user
            state.json        the record (see :mod:`mstack_bpf.stacks.state`); among others
                              "holder_pid" and "netns_inode"
            net -> /proc/HOLDERPID/ns/net     convenience symlink for nsenter/ip
            user -> /proc/HOLDERPID/ns/user
            resolv.conf       "nameserver ADDR" when the stack has a resolver
            *.log             output of the user-net helper

    where ``BASE`` is ``$XDG_RUNTIME_DIR/mstack`` when ``XDG_RUNTIME_DIR`` is an absolute
    path to a real directory owned by the user that no one else can write to (a
    subdirectory, so stack names cannot collide with other programs' files there), and
    ``/tmp/mstack-$UID`` otherwise (also when the variable was inherited from another user,
    as after ``su`` or ``sudo -E``). ``BASE`` is created with mode 0700 and must be a real
    directory owned by the user with no group/other access; anything else (e.g. a directory
    or symlink planted in /tmp by another user) is refused. Checks are made on a descriptor
    opened with O_NOFOLLOW, and reads go through it, so a symlink swapped in after the check
    cannot redirect them.

    A stack is *live* when ``/proc/HOLDERPID/ns/net`` has the recorded inode: a dead holder
    whose pid was reused never resolves to someone else's namespace.

:func:`resolve_user_stack` is what the core calls for a bare NAME that is not under
``/run/netns``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from mstack_bpf.core.model import BUILTIN
from mstack_bpf.stacks.errors import InvalidName, UnsafeStateDir

NETNS_DIR = "/run/netns"
ROOT_STATE_DIR = "/run/mstack/stacks"
RESERVED = frozenset(BUILTIN)  # a stack may not take a built-in name
NAME_MAX = 32
TMP_DIR = "/tmp"  # parent of the fallback BASE (a constant the tests move)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(name: str) -> str:
    """Return ``name`` if it can name a stack, else raise :class:`InvalidName`.

    A name is also a file name under /run/netns and part of an interface name, so: 1 to 32
    characters of letters, digits, ``_ . -``, starting with a letter or digit; ``null`` and
    ``native`` are the built-in stacks.
    """
    if not name or len(name) > NAME_MAX:
        raise InvalidName(name, f"must be 1 to {NAME_MAX} characters")
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(name, "use letters, digits, '_', '.', '-', starting with a letter/digit")
    if name in RESERVED:
        raise InvalidName(name, "reserved for the built-in stack")
    return name


def valid_name(name: str) -> bool:
    try:
        check_name(name)
    except InvalidName:
        return False
    return True


def user_base_dir(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The directory holding a user's rootless stacks (not created here)."""
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if _usable_runtime_dir(xdg, uid):
        return os.path.join(xdg, "mstack")
    return os.path.join(TMP_DIR, f"mstack-{uid}")


def _usable_runtime_dir(path: str, uid: int) -> bool:
    """``path`` may hold ``uid``'s stacks: absolute (the XDG Base Directory spec ignores a
    relative one), a real directory owned by ``uid`` that others cannot write to, so that
    nobody else can rename ``mstack`` in it away and plant their own."""
    if not path.startswith("/"):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022


def root_netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def root_state_dir(name: str) -> str:
    return os.path.join(ROOT_STATE_DIR, name)


def open_private_dir(path: str, uid: int) -> int:
    """An O_PATH descriptor of ``path``, a directory (not a symlink) owned by ``uid`` with no
    group/other permissions; :class:`UnsafeStateDir` if it is anything else,
    FileNotFoundError if it is missing.

    The checks are made on the descriptor (open(2) O_NOFOLLOW, then fstat), so they hold for
    whatever is then opened relative to it, whatever the path names by then.
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except NotADirectoryError:  # O_DIRECTORY|O_NOFOLLOW: a symlink gives ENOTDIR too
        why = "a symbolic link" if os.path.islink(path) else "not a directory"
        raise UnsafeStateDir(path, why) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != uid:
            raise UnsafeStateDir(path, f"owned by uid {st.st_uid}, not {uid}")
        if st.st_mode & 0o077:
            raise UnsafeStateDir(path, f"mode {stat.S_IMODE(st.st_mode):o} allows other users")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_private_dir(path: str, uid: int) -> None:
    """Raise :class:`UnsafeStateDir` unless ``path`` is a directory (not a symlink) owned by
    ``uid`` with no group/other permissions; FileNotFoundError if it is missing."""
    os.close(open_private_dir(path, uid))


def ensure_user_base_dir(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Create (mode 0700) or check the user's base directory; return its path.

    mkdir(2) never follows a symlink, so a directory or symlink planted at the path by
    another user makes it fail with EEXIST, and the check then refuses what is there.
    """
    uid = os.getuid() if uid is None else uid
    base = user_base_dir(uid, environ)
    try:
        os.mkdir(base, 0o700)
        created = True
    except FileExistsError:
        created = False
    fd = open_private_dir(base, uid)
    try:
        if created:  # a umask such as 0277 takes the owner's bits as well
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
    finally:
        os.close(fd)
    return base


def unsafe_user_base(
    uid: int | None = None, environ: Mapping[str, str] | None = None
) -> UnsafeStateDir | None:
    """Why the user's base directory is refused, or None when it is fine or missing: for
    the CLIs to say so where a refused directory would otherwise just look empty."""
    uid = os.getuid() if uid is None else uid
    try:
        check_private_dir(user_base_dir(uid, environ), uid)
    except UnsafeStateDir as e:
        return e
    except OSError:
        return None
    return None


def user_state_dir(
    name: str, uid: int | None = None, environ: Mapping[str, str] | None = None
) -> str:
    return os.path.join(user_base_dir(uid, environ), name)


def resolve_user_stack(
    name: str, *, uid: int | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The namespace path of the caller's live rootless stack ``name``, or None.

    Returns ``/proc/HOLDERPID/ns/net`` after checking that it still is the recorded
    namespace (inode), so a stale record never names another namespace. No processes are
    started and nothing is written: one directory check, one small JSON read, one stat.
    ``uid``/``environ`` default to the calling process's (pass the target's when resolving
    for another process).
    """
    if not valid_name(name):
        return None
    uid = os.getuid() if uid is None else uid
    try:
        base = open_private_dir(user_base_dir(uid, environ), uid)
    except (OSError, UnsafeStateDir):
        return None
    try:
        record = _read_record(base, name)
        pid = int(record["holder_pid"])
        inode = int(record["netns_inode"])
        path = f"/proc/{pid}/ns/net"
        if pid <= 0 or os.stat(path).st_ino != inode:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        os.close(base)
    return path


def _read_record(base_fd: int, name: str) -> dict[str, Any]:
    """``NAME/state.json`` under the checked base directory's descriptor."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(os.path.join(name, "state.json"), flags, dir_fd=base_fd)
    with open(fd, "rb") as f:
        record = json.loads(f.read(65536))
    if not isinstance(record, dict):
        raise TypeError("state.json is not an object")
    return record
