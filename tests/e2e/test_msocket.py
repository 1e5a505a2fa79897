"""msocket(2), SOCK_DEFAULT, per-process default tables and nested mstack (issue 3)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import time
from pathlib import Path

from tests.conftest import (
    AS_NOBODY,
    COOKIE_SOURCE,
    HELPERS,
    PYTHON,
    MakeNetns,
    Netns,
    Report,
    cookie_code,
    mstack,
    needs_root,
    readable_copy,
    report,
    run,
)

pytestmark = needs_root
PROBE = str(HELPERS / "msocket_probe.py")


#: the command stays where mstack started (not in the stack of ipv4), so that procfs' "self"
#: paths name the start namespace these tests compare with (tests/e2e/test_home.py: the other)
KEEP = "--keep-namespace"

def msprobe(*args: str, command: tuple[str, ...]) -> Report:
    """The report of ``msocket_probe.py COMMAND...`` run under ``mstack ARGS...``."""
    result = report(mstack(*args, PYTHON, PROBE, *command))
    assert isinstance(result, dict)
    return result


def test_outside_mstack_msocket_says_not_under_mstack() -> None:
    out = report(run([PYTHON, PROBE, "explicit", "-", "null"]))
    assert out == {"-": "NotUnderMstack", "null": "NotUnderMstack", "plain": out["plain"]}


def test_explicit_stacks_per_socket(make_netns: MakeNetns, host_cookie: int) -> None:
    a, b = make_netns(), make_netns()
    out = msprobe(KEEP, "-o", "4", a.name, command=("explicit", "-", b.name, b.path, "native",
                                              "null", "/nonexistent", "/etc/passwd",
                                              "/proc/self/ns/net", "/proc/self/../1/ns/net"))
    assert out == {
        "-": a.cookie, b.name: b.cookie, b.path: b.cookie, "native": host_cookie,
        "null": "EAFNOSUPPORT", "/nonexistent": "ENOENT", "/etc/passwd": "ENOTSUP",
        "/proc/self/ns/net": host_cookie,  # the target's own, not the supervisor's
        "/proc/self/../1/ns/net": "ENOENT",  # not a way out of the target's own entry
        "plain": a.cookie,
    }


def test_files_that_are_not_stacks_are_never_opened(netns: Netns, tmp_path: Path) -> None:
    """A FIFO without a writer would block an open() for good, a terminal would become the
    supervisor's controlling tty: they are looked at through O_PATH and refused, and the
    supervisor goes on serving."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cp = mstack("-o", "4", netns.name, PYTHON, PROBE, "explicit", str(fifo), "/dev/tty",
                "/dev/null", timeout=20)
    assert report(cp) == {str(fifo): "ENOTSUP", "/dev/tty": "ENOTSUP",
                          "/dev/null": "ENOTSUP", "plain": netns.cookie}


def test_procfs_self_is_the_callers_whatever_the_route(make_netns: MakeNetns,
                                                      host_cookie: int) -> None:
    """procfs' "self" is whoever reads it, and the supervisor opens the path: reached by any
    route (the /dev/fd symlink, a /proc/self inside the caller's root), it must be the
    caller's own entries, never the supervisor's."""
    a, b = make_netns(), make_netns()
    fd = os.open(b.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = report(mstack(KEEP, "-o", "4", a.name, PYTHON, PROBE, "explicit",
                            "//proc/./self/ns/net", "/proc/thread-self/ns/net", f"/dev/fd/{fd}",
                            "/dev/fd/0", "/proc/self/root/proc/self/ns/net",
                            "/proc/self/root/proc/thread-self/ns/net", "/dev/fd/999",
                            pass_fds=(fd,)))
    finally:
        os.close(fd)
    assert out == {"//proc/./self/ns/net": host_cookie, "/proc/thread-self/ns/net": host_cookie,
                   f"/dev/fd/{fd}": b.cookie,  # the caller's fd, not the supervisor's
                   "/dev/fd/0": "ENOTSUP",  # its stdin: not a namespace
                   "/proc/self/root/proc/self/ns/net": host_cookie,
                   "/proc/self/root/proc/thread-self/ns/net": host_cookie,
                   "/dev/fd/999": "ENOENT", "plain": a.cookie}


def test_self_is_the_process_and_thread_self_the_thread(make_netns: MakeNetns,
                                                        host_cookie: int) -> None:
    """A thread that entered another namespace: procfs' self is its process (the thread
    group leader's namespace), thread-self the thread itself, by every route, as natively."""
    a, b = make_netns(), make_netns()
    out = msprobe(KEEP, "-o", "4", a.name, command=(
        "thread_in", b.path, "/proc/self/ns/net", "/proc/thread-self/ns/net",
        "/proc/self/root/proc/self/ns/net", "/proc/self/root/proc/thread-self/ns/net"))
    assert out == {"/proc/self/ns/net": host_cookie, "/proc/thread-self/ns/net": b.cookie,
                   "/proc/self/root/proc/self/ns/net": host_cookie,
                   "/proc/self/root/proc/thread-self/ns/net": b.cookie}


def test_the_supervisors_own_entries_bind_mounted_elsewhere_are_refused(
        netns: Netns, tmp_path: Path) -> None:
    """A target may bind-mount procfs directories (here as root; in a user namespace of its
    own too). The supervisor's own fd and ns directories, mounted where ".." no longer leads
    to procfs' root, cannot be told from the caller's: refused, never opened as ours."""
    ns_dir, fd_dir = tmp_path / "ns", tmp_path / "fd"
    ns_dir.mkdir()
    fd_dir.mkdir()
    script = (f"sv=$(pgrep -nx mstack-sv) && mount --bind /proc/$sv/ns {ns_dir} && "
              f"mount --bind /proc/$sv/fd {fd_dir} && exec {PYTHON} {PROBE} explicit "
              f"{ns_dir}/net {fd_dir}/0 {fd_dir}/4")
    out = report(mstack("-o", "4", netns.name, "unshare", "--mount", "--propagation",
                        "private", "sh", "-c", script))
    assert out == {f"{ns_dir}/net": "ENOENT", f"{fd_dir}/0": "ENOENT",
                   f"{fd_dir}/4": "ENOENT", "plain": netns.cookie}


def test_sock_default_changes_one_family(netns: Netns, host_cookie: int) -> None:
    out = msprobe("native", command=("setdefault", netns.name, "2"))
    assert out["result"] is None
    assert out["before"] == {"4": host_cookie, "6": host_cookie}
    assert out["after"] == {"4": netns.cookie, "6": host_cookie}


def test_sock_default_unspec_changes_every_family(netns: Netns) -> None:
    out = msprobe("native", command=("setdefault", "null", "0"))
    assert out["after"] == {"4": "EAFNOSUPPORT", "6": "EAFNOSUPPORT"}


def test_child_keeps_the_table_of_the_fork(make_netns: MakeNetns) -> None:
    a, b = make_netns(), make_netns()
    out = msprobe("native", command=("inherit", a.name, b.name))
    assert out == {"parent": b.cookie, "child": a.cookie}


def test_orphan_keeps_the_table_after_reparenting(make_netns: MakeNetns, tmp_path: Path) -> None:
    a, b = make_netns(), make_netns()
    result = tmp_path / "orphan.json"
    out = msprobe("native", command=("orphan", a.name, b.name, str(result)))
    assert out == {"original": b.cookie}
    deadline = time.monotonic() + 15
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(result.read_text())["orphan"] == a.cookie


def test_threads_share_the_process_table(netns: Netns) -> None:
    assert msprobe("native", command=("thread", netns.name)) == {"main": netns.cookie}


def test_table_survives_execve(netns: Netns) -> None:
    assert msprobe("native", command=("execs", netns.name)) == {"exec_child": netns.cookie}


def test_marker_slot_of_the_target_is_never_closed(netns: Netns) -> None:
    out = msprobe("native", command=("busy", netns.name))
    assert out == {"result": "EBUSY", "slot": "/dev/null"}


def test_lock_refuses_every_change(make_netns: MakeNetns) -> None:
    a, b = make_netns(), make_netns()
    out = msprobe("--lock", "-o", "4", a.name, command=("setdefault", b.name, "2"))
    assert out["result"] == "EPERM"
    out = msprobe("--lock", "-o", "4", a.name, command=("explicit", "-", b.name, a.path))
    assert out == {"-": a.cookie, b.name: "EPERM", a.path: a.cookie, "plain": a.cookie}


def test_nested_mstack_sets_defaults_through_the_outer_one(make_netns: MakeNetns,
                                                           host_cookie: int) -> None:
    a, b = make_netns(), make_netns()
    script = (f"{PYTHON} {PROBE} explicit -; "
              f"mstack -o 4 {b.name} {PYTHON} {PROBE} explicit -; "
              f"{PYTHON} {PROBE} explicit -; "
              f"exec mstack null {PYTHON} {PROBE} explicit -")
    cp = mstack("-o", "4", a.name, "bash", "-c", script)
    lines = [json.loads(line) for line in cp.stdout.splitlines()]
    assert [line["-"] for line in lines] == [a.cookie, b.cookie, a.cookie, "EAFNOSUPPORT"]


def test_nested_mstack_keeps_its_pid(netns: Netns) -> None:
    cp = mstack(netns.name, "bash", "-c", "echo $$; exec mstack -o 4 null bash -c 'echo $$'")
    first, second = cp.stdout.split()
    assert first == second


def test_nested_under_lock_exits_125_naming_the_lock(make_netns: MakeNetns) -> None:
    a, b = make_netns(), make_netns()
    for outer in (["--lock", "-o", "4", a.name], ["--lock", "null"]):
        cp = mstack(*outer, "bash", "-c", f"mstack -o 4 {b.name} true; echo rc=$?")
        assert "rc=125" in cp.stdout
        assert "locked" in cp.stderr


def test_nested_lock_under_unlocked_outer(make_netns: MakeNetns) -> None:
    a, b = make_netns(), make_netns()
    inner = f"mstack -o 4 {a.name} {PYTHON} {PROBE} setdefault {a.name} 2"
    cp = mstack("-o", "4", b.name, "mstack", "--lock", "-o", "6", "null", "bash", "-c", inner)
    assert "locked" in cp.stderr
    out = report(mstack("-o", "4", b.name, "mstack", "--lock", "-o", "6", "null",
                        PYTHON, PROBE, "setdefault", a.name, "2"))
    assert isinstance(out, dict)
    assert out["result"] == "EPERM"
    assert out["after"] == {"4": b.cookie, "6": "EAFNOSUPPORT"}


def test_c_header_msocket(netns: Netns, tmp_path: Path, host_cookie: int) -> None:
    source = tmp_path / "m.c"
    source.write_text(r'''
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "msocket.h"
#include "cookie.h"
int main(int argc, char **argv) {
    int fd = msocket(argv[1], AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { printf("socket %s\n", strerrorname_np(errno)); return 0; }
    printf("socket %llu\n", (unsigned long long)netns_cookie(fd));
    if (msocket("null", AF_INET, SOCK_DEFAULT, 0) < 0) { printf("default %d\n", errno); }
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    printf("after %s\n", fd < 0 ? strerrorname_np(errno) : "ok");
    return 0;
}
''')
    binary = tmp_path / "m"
    run(["cc", "-I", str(HELPERS.parent.parent / "include"), "-I", str(HELPERS), "-o",
         str(binary), str(source)], check=True)
    cp = mstack("native", str(binary), netns.name)
    assert cp.stdout.split("\n")[:2] == [f"socket {netns.cookie}", "after EAFNOSUPPORT"]
    outside = run([str(binary), netns.name])
    assert outside.stdout.startswith("socket ENOSYS")
    del host_cookie


def test_unprivileged_target_may_name_only_stacks_of_its_tree(make_netns: MakeNetns,
                                                              shared_dir: Path) -> None:
    a, b = make_netns(), make_netns()
    drop = [*AS_NOBODY, PYTHON, readable_copy(PROBE, shared_dir)]
    out = report(mstack("-o", "4", a.name, *drop, "explicit", a.path, b.path))
    assert out == {a.path: a.cookie, b.path: "EACCES", "plain": a.cookie}


def test_an_unprivileged_target_may_name_a_stack_only_if_it_could_enter_it(
        shared_dir: Path) -> None:
    """Its own rootless stack (a user namespace it made: every capability there) yes; one
    owned by its uid but made inside a container user namespace of root's, no: the kernel
    grants nothing there (cap_capable() walks the parents), whatever the owner uid says."""
    holders = subprocess.Popen([PYTHON, str(HELPERS / "userns_holders.py")],
                               stdout=subprocess.PIPE, text=True)
    try:  # the holders die with their parent (PR_SET_PDEATHSIG)
        assert holders.stdout is not None
        pids = json.loads(holders.stdout.readline())
        drop = [*AS_NOBODY, PYTHON, readable_copy(PROBE, shared_dir)]
        owned, nested = (f"/proc/{pids[k]}/ns/net" for k in ("owned", "nested"))
        out = report(mstack("-o", "4", "null", *drop, "explicit", owned, nested))
        assert isinstance(out[owned], int)
        assert out[nested] == "EACCES"
    finally:
        holders.kill()
        holders.wait()


NESTED_ESCAPE = COOKIE_SOURCE + r'''
import errno, os, subprocess, sys
CHILD = sys.argv[1]
def where():
    return cookie(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
out = {"before": where()}
for name, call in (("close", lambda: os.close(1023)),
                   ("dup2", lambda: os.dup2(0, 1023)),
                   ("cloexec", lambda: os.set_inheritable(1023, False))):
    try:
        call()
        out[name] = "done"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
out["after"] = where()
out["child"] = int(subprocess.run([sys.executable, "-c", CHILD], capture_output=True,
                                  text=True).stdout)  # close_fds=True: close_range
print(out)
'''


def test_nested_lock_keeps_its_table_against_fd_games(make_netns: MakeNetns) -> None:
    a, b = make_netns(), make_netns()
    cp = mstack("-o", "4", a.name, "mstack", "--lock", "-o", "4", b.name,
                PYTHON, "-c", NESTED_ESCAPE, cookie_code("AF_INET", "SOCK_DGRAM"))
    assert cp.returncode == 0, cp.stderr
    out = ast.literal_eval(cp.stdout)  # a dict literal printed by the script above
    assert out == {"before": b.cookie, "close": "EPERM", "dup2": "EPERM", "cloexec": "EPERM",
                   "after": b.cookie, "child": b.cookie}
