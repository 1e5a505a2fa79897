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

    where ``BASE`` is ``$XDG_RUNTIME_DIR/mstack`` when ``XDG_RUNTIME_DIR`` is set (a
    subdirectory, so stack names cannot collide with other programs' files there) and
    ``/tmp/mstack-$UID`` otherwise. ``BASE`` must be a real directory owned by the user
    with no group/other access; anything else (e.g. planted in /tmp by another user) is
    refused.

    A stack is *live* when ``/proc/HOLDERPID/ns/net`` has the recorded inode: a dead holder
    whose pid was reused never resolves to someone else's namespace.

:func:`resolve_user_stack` is what the core calls for a bare NAME that is not under
``/run/netns``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Mapping

from mstack_bpf.stacks.errors import InvalidName, UnsafeStateDir

NETNS_DIR = "/run/netns"
ROOT_STATE_DIR = "/run/mstack/stacks"
RESERVED = frozenset({"null", "native"})
NAME_MAX = 32
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
    if xdg.startswith("/"):
        return os.path.join(xdg, "mstack")
    return f"/tmp/mstack-{uid}"


def root_netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def root_state_dir(name: str) -> str:
    return os.path.join(ROOT_STATE_DIR, name)


def check_private_dir(path: str, uid: int) -> None:
    """Raise :class:`UnsafeStateDir` unless ``path`` is a directory (not a symlink) owned by
    ``uid`` with no group/other permissions; FileNotFoundError if it is missing."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateDir(path, "not a directory")
    if st.st_uid != uid:
        raise UnsafeStateDir(path, f"owned by uid {st.st_uid}, not {uid}")
    if st.st_mode & 0o077:
        raise UnsafeStateDir(path, f"mode {stat.S_IMODE(st.st_mode):o} allows other users")


def ensure_user_base_dir(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Create (mode 0700) or check the user's base directory; return its path."""
    uid = os.getuid() if uid is None else uid
    base = user_base_dir(uid, environ)
    with contextlib.suppress(FileExistsError):
        os.mkdir(base, 0o700)
    check_private_dir(base, uid)
    return base


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
    base = user_base_dir(uid, environ)
    try:
        check_private_dir(base, uid)
        with open(os.path.join(base, name, "state.json"), "rb") as f:
            record = json.loads(f.read(65536))
        pid = int(record["holder_pid"])
        inode = int(record["netns_inode"])
        path = f"/proc/{pid}/ns/net"
        if pid <= 0 or os.stat(path).st_ino != inode:
            return None
    except (OSError, ValueError, KeyError, TypeError, UnsafeStateDir):
        return None
    return path
