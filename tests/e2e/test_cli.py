"""The command line: usage, version, errors with env(1)'s exit codes, -v, --lock, and a refused
rootless state directory."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mstack_bpf import __version__
from tests.conftest import (
    MSTACK,
    MSTACK_STACK,
    PROBE,
    PYTHON,
    SAFE_PATH,
    Netns,
    Stepper,
    mstack,
    needs_root,
    probe,
    report,
    run,
    supervisors_of,
)

pytestmark = needs_root

IP_FAMILIES = ("2", "10", "16", "17")


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mstack-cli-") as d:
        yield Path(d)


def touch_command(marker: Path) -> tuple[str, ...]:
    """A command that would leave ``marker`` behind if it ever ran."""
    return ("sh", "-c", f"touch {marker}")


# --- usage, version ---------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_and_exits_0(flag: str) -> None:
    cp = mstack(flag)
    assert cp.returncode == 0, cp.stderr
    assert "Usage:" in cp.stdout and "STACK" in cp.stdout and "COMMAND" in cp.stdout
    assert "-o" in cp.stdout and "--lock" in cp.stdout


def test_version_names_this_mstack_not_view_os() -> None:
    cp = mstack("--version")
    assert cp.returncode == 0, cp.stderr
    assert "mstack" in cp.stdout and __version__ in cp.stdout
    assert "not View-OS" in cp.stdout  # umview ships an mstack too
    assert shutil.which("mstack", path=SAFE_PATH) == MSTACK  # ours is found first


def test_no_arguments_is_a_usage_error() -> None:
    cp = mstack()
    assert cp.returncode == 2
    assert cp.stderr == "mstack: missing STACK (see mstack --help)\n"  # one line (README)


def test_stack_without_command_is_a_usage_error(netns: Netns) -> None:
    cp = mstack(netns.name)
    assert cp.returncode == 2
    assert cp.stderr == "mstack: missing COMMAND (see mstack --help)\n"


def test_options_after_the_command_are_the_command_s(netns: Netns) -> None:
    cp = mstack(netns.name, "sh", "-c", 'echo "$@"', "sh", "-v", "--lock", "-o", "ip", "-h")
    assert (cp.returncode, cp.stdout) == (0, "-v --lock -o ip -h\n"), cp.stderr


# --- bad input: one line, the right code, nothing executed -------------------------------


@pytest.mark.parametrize("item", ["foo", "#46", "#0", "#-1", "#x", "ip,bogus", "+ip,-nope"])
def test_bad_family_is_a_usage_error_naming_the_item(netns: Netns, tmp: Path, item: str) -> None:
    marker = tmp / "ran"
    cp = mstack("-o", item, netns.name, *touch_command(marker))
    assert cp.returncode == 2, cp.stderr
    bad = item.split(",")[-1].lstrip("+-")
    assert bad in cp.stderr and len(cp.stderr.splitlines()) == 1, cp.stderr
    assert not marker.exists()


def test_missing_stack_path_exits_125_with_path_and_reason(tmp: Path) -> None:
    marker, path = tmp / "ran", tmp / "no-such-stack"
    cp = mstack(str(path), *touch_command(marker))
    assert cp.returncode == 125
    assert str(path) in cp.stderr and "No such file" in cp.stderr
    assert not marker.exists() and not supervisors_of(str(marker))


def test_missing_stack_name_exits_125_naming_it(tmp: Path) -> None:
    marker, name = tmp / "ran", f"mstk-none-{os.getpid()}"
    cp = mstack(name, *touch_command(marker))
    assert cp.returncode == 125
    assert name in cp.stderr.splitlines()[0]
    assert not marker.exists()


def test_regular_file_is_not_a_network_namespace(tmp: Path) -> None:
    marker, path = tmp / "ran", tmp / "plain"
    path.write_text("")
    cp = mstack(str(path), *touch_command(marker))
    assert cp.returncode == 125
    assert str(path) in cp.stderr and "not a network namespace" in cp.stderr
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["user", "mnt", "uts"])
def test_other_namespace_kinds_are_not_network_namespaces(tmp: Path, kind: str) -> None:
    marker, path = tmp / "ran", f"/proc/{os.getpid()}/ns/{kind}"
    cp = mstack(path, *touch_command(marker))
    assert cp.returncode == 125
    assert path in cp.stderr and "not a network namespace" in cp.stderr
    assert not marker.exists()


def test_directory_as_stack_exits_125(tmp: Path) -> None:
    marker = tmp / "ran"
    cp = mstack(str(tmp), *touch_command(marker))
    assert cp.returncode == 125
    assert str(tmp) in cp.stderr
    assert not marker.exists()


def test_missing_command_exits_127(netns: Netns, tmp: Path) -> None:
    for command in ("mstack-no-such-command", str(tmp / "missing")):
        cp = mstack(netns.name, command)
        assert cp.returncode == 127, cp.stderr
        assert command in cp.stderr and len(cp.stderr.splitlines()) <= 2


def test_not_executable_command_exits_126_and_does_not_run(netns: Netns, tmp: Path) -> None:
    marker, script = tmp / "ran", tmp / "script"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o644)
    cp = mstack(netns.name, str(script))
    assert cp.returncode == 126, cp.stderr
    assert str(script) in cp.stderr
    assert not marker.exists()
    script.chmod(0o755)  # the same script, executable, does run
    assert mstack(netns.name, str(script)).returncode == 0 and marker.exists()


def test_executable_script_without_shebang_runs_like_under_env(netns: Netns, tmp: Path) -> None:
    script = tmp / "script"
    script.write_text("echo ran\n")
    script.chmod(0o755)
    assert run(["env", str(script)]).stdout == "ran\n"
    cp = mstack(netns.name, str(script))
    assert (cp.returncode, cp.stdout) == (0, "ran\n"), cp.stderr


def test_directory_as_command_exits_126(netns: Netns, tmp: Path) -> None:
    cp = mstack(netns.name, str(tmp))
    assert cp.returncode == 126, cp.stderr
    assert str(tmp) in cp.stderr


def test_failed_run_leaves_no_supervisor(netns: Netns, tmp: Path) -> None:
    script = tmp / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(stat.S_IRUSR)
    assert mstack(netns.name, str(script)).returncode == 126
    assert not supervisors_of(str(script))


# --- -v ---------------------------------------------------------------------------------


def test_verbose_prints_the_mapping_on_stderr_before_the_exec(netns: Netns) -> None:
    cp = mstack("-v", "-o", "ip", netns.name, "sh", "-c", "echo COMMAND-RAN >&2")
    assert cp.returncode == 0, cp.stderr
    lines = cp.stderr.splitlines()
    mapping = lines[:lines.index("COMMAND-RAN")]  # (a summary may follow the command's exit)
    assert mapping and all(line.startswith("mstack") for line in mapping), lines
    stack_line = next(line for line in mapping if netns.name in line)
    for family in ("ipv4", "ipv6", "netlink", "packet"):
        assert family in stack_line
    assert any("native" in line for line in mapping), mapping  # where the rest stays
    assert cp.stdout == ""


def test_verbose_mapping_reads_specific_lines_first(netns: Netns) -> None:
    """The general line ("all other families -> native") is the rest: it comes last."""
    cp = mstack("-v", "-o", "ip", netns.name, "true")
    assert cp.returncode == 0, cp.stderr
    mapping = [line for line in cp.stderr.splitlines() if " -> " in line]
    assert [("all other" in line, netns.name in line) for line in mapping] == [
        (False, True), (True, False)], mapping


def test_verbose_prints_no_mapping_when_mstack_fails(netns: Netns) -> None:
    """A run that is never set up (exit 125: here a nested -v under an outer lock) shows the
    error alone, not a mapping that never took effect."""
    cp = mstack("--lock", "-o", "ip", "null", "sh", "-c",
                f"{MSTACK} -v -o ip {netns.name} true")
    assert cp.returncode == 125, cp.stderr
    assert cp.stderr.startswith("mstack: the network mapping is locked"), cp.stderr
    assert " -> " not in cp.stderr and "lives " not in cp.stderr


def test_debug_lines_name_a_continue_without_a_made_up_fd(netns: Netns) -> None:
    """-vvv: a native call answered CONTINUE is the kernel's own; it made no fd of ours."""
    cp = mstack("-vvv", "--keep-namespace", "-o", "ip", netns.name, PYTHON, "-c",
                "import socket; socket.socket(socket.AF_UNIX)")
    assert cp.returncode == 0, cp.stderr
    decisions = [line for line in cp.stderr.splitlines() if " socket unix -> " in line]
    assert decisions and all(line.endswith("-> continue: the kernel's own")
                             for line in decisions), decisions


def test_without_verbose_stderr_is_the_command_s_only(netns: Netns) -> None:
    cp = mstack("-o", "ip", netns.name, "sh", "-c", "echo COMMAND-RAN >&2")
    assert cp.stderr == "COMMAND-RAN\n"


# --- --lock -----------------------------------------------------------------------------


def test_lock_null_ip_has_no_supervisor_and_refuses_ip(host_cookie: int) -> None:
    with Stepper("--lock", "-o", "ip", "null",
                 steps=(f"families,1,{','.join(IP_FAMILIES)}", "msocket")) as target:
        assert not target.supervisors()
        families = target.go()
        assert families == {"1": {"cookie": host_cookie, "uid": 0},
                            **{f: {"errno": "EAFNOSUPPORT"} for f in IP_FAMILIES}}
        assert not target.supervisors()
        # the filter itself answers the virtual call: nobody is listening
        assert target.go() == {"errno": "EPERM"}
        assert target.go() == {"done": True}
        assert target.proc.wait(timeout=10) == 0
    assert not target.supervisors()


def test_lock_with_a_redirected_family_has_a_supervisor(netns: Netns, host_cookie: int) -> None:
    with Stepper("--lock", "-o", "ip", netns.name, steps=("families,1,2,10",)) as target:
        assert len(target.supervisors()) == 1
        assert target.go() == {"1": {"cookie": host_cookie, "uid": 0},
                               "2": {"cookie": netns.cookie, "uid": 0},
                               "10": {"cookie": netns.cookie, "uid": 0}}


def test_msocket_is_enosys_outside_mstack_and_eperm_when_locked() -> None:
    assert report(run([PYTHON, PROBE, "msocket"])) == {"errno": "ENOSYS"}
    for option in (["-o", "ip"], []):
        assert probe("--lock", *option, "null", command=("msocket",)) == {"errno": "EPERM"}


@pytest.mark.parametrize("stack", ["null", "netns"])
def test_lock_with_a_native_family_forbids_a_new_network_namespace(netns: Netns,
                                                                   stack: str) -> None:
    where = netns.name if stack == "netns" else "null"
    cp = mstack("--lock", "-o", "ip", where, "unshare", "-n", "true")
    assert cp.returncode != 0
    assert "Operation not permitted" in cp.stderr
    assert probe("--lock", "-o", "ip", where,
                 command=("unshare_net",)) == {"result": "EPERM"}


def test_without_lock_a_new_network_namespace_is_allowed() -> None:
    cp = mstack("-o", "ip", "null", "unshare", "-n", "true")
    assert cp.returncode == 0, cp.stderr


@pytest.mark.parametrize("stack", ["null", "netns"])
def test_nested_mstack_under_lock_exits_125_and_runs_nothing(netns: Netns, tmp: Path,
                                                             stack: str) -> None:
    marker = tmp / "ran"
    where = netns.name if stack == "netns" else "null"
    cp = mstack("--lock", "-o", "ip", where,
                MSTACK, "-o", "4", netns.name, *touch_command(marker))
    assert cp.returncode == 125, cp.stderr
    assert cp.stderr.startswith("mstack: ") and "lock" in cp.stderr  # names the lock
    assert not marker.exists()


# --- a refused rootless state directory (another user's, or open to others) --------------

NOBODY = 65534


@pytest.fixture
def xdg() -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR (never the real /tmp/mstack-UID) under a directory that
    nobody, too, can traverse."""
    with tempfile.TemporaryDirectory(prefix="mstack-xdg-") as d:
        os.chmod(d, 0o755)
        runtime = Path(d) / "xdg"
        runtime.mkdir(mode=0o700)
        yield runtime


def _squat(base: Path, owner: int) -> None:
    """What another user would leave: a live-looking record under a directory of theirs."""
    (base / "mine").mkdir(parents=True)
    me = os.getpid()
    (base / "mine" / "state.json").write_text(
        f'{{"holder_pid": {me}, "netns_inode": {os.stat(f"/proc/{me}/ns/net").st_ino}}}')
    base.chmod(0o700)
    os.chown(base, owner, owner)


def _env(xdg: Path) -> dict[str, str]:
    return {"PATH": SAFE_PATH, "XDG_RUNTIME_DIR": str(xdg)}


def test_squatted_state_dir_is_not_used_and_the_hint_says_why(xdg: Path, tmp: Path) -> None:
    _squat(xdg / "mstack", NOBODY)
    marker = tmp / "ran"
    cp = mstack("mine", *touch_command(marker), env=_env(xdg))
    assert cp.returncode == 125, cp.stderr
    assert cp.stderr.splitlines() == [
        "mstack: mine: no such stack (not in /run/netns, not a stack of yours)",
        f"mstack: hint: refusing state directory {xdg}/mstack: owned by uid {NOBODY}, not 0; "
        "no stack of yours is looked up there",
    ]
    assert not marker.exists()


def test_symlinked_state_dir_is_not_followed(xdg: Path, tmp: Path) -> None:
    real = tmp / "real"
    _squat(real, 0)  # a private directory of root's own: still not reached through a link
    (xdg / "mstack").symlink_to(real)
    cp = mstack("mine", "true", env=_env(xdg))
    assert cp.returncode == 125, cp.stderr
    assert cp.stderr.splitlines()[1].endswith(f"{xdg}/mstack: a symbolic link; "
                                              "no stack of yours is looked up there")


def _as_nobody(xdg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i",
                f"PATH={SAFE_PATH}", f"XDG_RUNTIME_DIR={xdg}", MSTACK_STACK, *args])


@pytest.mark.parametrize("mode", ["root's", "0777"])
def test_mstack_stack_refuses_a_squatted_state_dir(xdg: Path, mode: str) -> None:
    os.chown(xdg, NOBODY, NOBODY)
    base = xdg / "mstack"
    _squat(base, 0 if mode == "root's" else NOBODY)
    if mode == "0777":
        base.chmod(0o777)
    why = "owned by uid 0, not 65534" if mode == "root's" else "mode 777 allows other users"
    line = f"mstack-stack: refusing state directory {base}: {why}"
    for args in (["add", "mstk-squat"], ["list"], ["del", "mine"], ["dns", "mine"],
                 ["path", "mine"]):
        cp = _as_nobody(xdg, *args)
        assert (cp.returncode, cp.stdout, cp.stderr) == (125, "", line + "\n"), args
    assert sorted(p.name for p in base.iterdir()) == ["mine"]  # nothing made, nothing removed
