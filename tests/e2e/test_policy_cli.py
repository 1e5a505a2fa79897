"""``mstack --policy`` and ``--check-policy`` end to end: exit codes, messages, what runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import (
    AS_NOBODY,
    HELPERS,
    MSTACK,
    PYTHON,
    USER_PATH,
    Netns,
    mstack,
    needs_root,
    run,
    supervisors_of,
    wait_until,
)

pytestmark = needs_root

POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"
ESCAPE_PROBE = str(HELPERS / "escape_probe.py")
NOBODY = (*AS_NOBODY, "env", "-i", f"PATH={USER_PATH}", "HOME=/")
NNP = "grep NoNewPrivs: /proc/self/status"
BAD = """\
bogus = 1
[stacks]
x = "rel/path"
[families]
ip = "nowhere"
ipv6 = "null"
foo = "null"
[lock]
families = ["ip", "#99"]
"""
BAD_LINES = {1, 3, 5, 6, 7, 9}


@pytest.fixture
def tmp(shared_dir: Path) -> Path:
    """A temporary directory anyone can read (the ``nobody`` runs read files from it)."""
    return shared_dir


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def example(tmp: Path, name: str, build: Netns | None = None) -> str:
    """A world-readable copy of ``policy/NAME.toml`` (``build`` replaced if given)."""
    text = (POLICY_DIR / f"{name}.toml").read_text()
    if build is not None:
        assert 'build = "build"' in text
        text = text.replace('build = "build"', f'build = "{build.path}"')
    return write(tmp, f"{name}.toml", text)


def error_lines(stderr: str, path: str) -> set[int]:
    """The line numbers of every error; each line of stderr must be ``[mstack: ]FILE:LINE:``."""
    pattern = re.compile(rf"^(?:mstack: )?{re.escape(path)}:(\d+): \S")
    found = set()
    for line in stderr.splitlines():
        m = pattern.match(line)
        assert m, f"not FILE:LINE: {line!r}"
        found.add(int(m.group(1)))
    return found


# --- --check-policy -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lockdown", "ip-only-through-build", "no-raw-packet"])
def test_check_policy_accepts_the_examples(tmp: Path, netns: Netns, name: str) -> None:
    path = example(tmp, name, netns if name == "ip-only-through-build" else None)
    cp = mstack("--check-policy", path)
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", "")


def test_check_policy_reports_every_error_with_file_and_line(tmp: Path) -> None:
    path = write(tmp, "bad.toml", BAD)
    cp = mstack("--check-policy", path)
    assert cp.returncode == 2
    assert error_lines(cp.stderr, path) == BAD_LINES
    assert "mapped twice" in cp.stderr and "'foo'" in cp.stderr and "#99" in cp.stderr


def test_check_policy_reports_a_stack_missing_on_this_system(tmp: Path) -> None:
    path = write(tmp, "gone.toml", f'[stacks]\ngone = "/run/netns/mstk-{uuid.uuid4().hex}"\n')
    cp = mstack("--check-policy", path)
    assert cp.returncode == 2
    assert error_lines(cp.stderr, path) == {2}
    assert "stack gone" in cp.stderr


def test_check_policy_of_an_unreadable_file(tmp: Path) -> None:
    path = str(tmp / "missing.toml")
    cp = mstack("--check-policy", path)
    assert cp.returncode == 2
    assert cp.stderr.startswith(f"{path}: cannot read"), cp.stderr


# --- hostile files: one line, exit 2, never a traceback -------------------------------------

HOSTILE = {  # each: the text, and the line of its one error
    "multi-line string": ("description = '''\nhe said \"\"\"\n\"\\q\" = 1\n'''\n"
                          "[families]\nfoo = \"null\"\n", 6),
    "deep arrays": ("# 500 deep\nx = " + "[" * 500 + "]" * 500 + "\n", 2),
    "long dotted key": ("a." * 20000 + "a = 1\n", 1),
    "long integer": ("x = 1" + "0" * 5000 + "\n", 1),
}


def policy_command(how: str, path: str, marker: Path) -> list[str]:
    """``mstack --check-policy`` or ``--policy``, with at most 1 GB of address space."""
    mstack_args = ["--check-policy", path] if how == "check" else ["--policy", path, "touch",
                                                                    str(marker)]
    return ["bash", "-c", 'ulimit -v 1000000 && exec "$@"', "bash", MSTACK, *mstack_args]


def assert_one_error_line(cp: subprocess.CompletedProcess[str], path: str,
                          line: int | None) -> None:
    """Exit 2 and exactly one ``[mstack: ]FILE:LINE: message`` (``FILE: message``) line."""
    assert "Traceback" not in cp.stderr, cp.stderr
    assert cp.returncode == 2, cp.stderr
    lines = cp.stderr.splitlines()
    assert len(lines) == 1, cp.stderr
    where = re.escape(path) + ("" if line is None else f":{line}")
    assert re.match(rf"(?:mstack: )?{where}: \S", lines[0]), lines


@pytest.mark.parametrize("how", ["check", "run"])
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_is_one_error_line(tmp: Path, name: str, how: str) -> None:
    text, line = HOSTILE[name]
    path = write(tmp, "hostile.toml", text)
    cp = run(policy_command(how, path, tmp / "ran"))
    assert_one_error_line(cp, path, line)
    assert not (tmp / "ran").exists()


@pytest.mark.parametrize("how", ["check", "run"])
def test_dev_zero_under_a_memory_limit(tmp: Path, how: str) -> None:
    """/dev/zero was read until MemoryError; it is refused unread."""
    cp = run(policy_command(how, "/dev/zero", tmp / "ran"))
    assert_one_error_line(cp, "/dev/zero", None)
    assert "not a regular file" in cp.stderr
    assert not (tmp / "ran").exists()


@pytest.mark.parametrize("how", ["check", "run"])
def test_fifo_without_a_writer(tmp: Path, how: str) -> None:
    """open(2) of a FIFO waits for a writer, unless O_NONBLOCK: no hang."""
    fifo = tmp / "policy.fifo"
    os.mkfifo(fifo)
    cp = run(policy_command(how, str(fifo), tmp / "ran"), timeout=10)
    assert_one_error_line(cp, str(fifo), None)
    assert "not a regular file (a FIFO)" in cp.stderr
    assert not (tmp / "ran").exists()


# --- --policy: errors, and nothing runs ---------------------------------------------------


def test_policy_errors_exit_2_with_every_line_and_run_nothing(tmp: Path) -> None:
    path = write(tmp, "bad.toml", BAD)
    marker = tmp / "ran"
    cp = mstack("--policy", path, "touch", str(marker))
    assert cp.returncode == 2
    assert error_lines(cp.stderr, path) == BAD_LINES
    assert not marker.exists()


def test_stack_missing_at_run_time_exits_125_with_file_and_line(tmp: Path) -> None:
    path = write(tmp, "gone.toml", "# a stack that is not there\n[stacks]\n"
                 f'gone = "/run/netns/mstk-{uuid.uuid4().hex}"\n[families]\nip = "gone"\n')
    marker = tmp / "ran"
    cp = mstack("--policy", path, "touch", str(marker))
    assert cp.returncode == 125, cp.stderr
    assert f"{path}:3:" in cp.stderr and "gone" in cp.stderr
    assert not marker.exists()


@pytest.mark.parametrize("extra", ["-o", "stack"])
def test_o_or_stack_with_policy_is_a_usage_error(tmp: Path, netns: Netns, extra: str) -> None:
    path = example(tmp, "lockdown")
    marker = tmp / "ran"
    args = ["-o", "ip", "--policy", path] if extra == "-o" else ["--policy", path, netns.name]
    cp = mstack(*args, "touch", str(marker))
    assert cp.returncode == 2, cp.stderr
    assert "policy" in cp.stderr
    assert not marker.exists()


# --- --policy: what it does ---------------------------------------------------------------


def sock_default_inet(*args: str) -> str:
    """What msocket("native", AF_INET, SOCK_DEFAULT) answers under ``mstack *args``."""
    cp = mstack(*args, PYTHON, ESCAPE_PROBE, "sockdefault", "native")
    assert cp.returncode == 0, cp.stderr
    result: str = json.loads(cp.stdout.splitlines()[-1])["set"]["native"]["inet"]
    return result


def test_lock_with_policy_locks_every_family(tmp: Path) -> None:
    path = example(tmp, "no-raw-packet")  # ipv4 is not locked by the file
    assert sock_default_inet("--policy", path) == "ok"
    assert sock_default_inet("--lock", "--policy", path) == "EPERM"
    cp = mstack("--lock", "--policy", path, MSTACK, "-o", "ipv4", "native", "true")
    assert cp.returncode == 125 and "lock" in cp.stderr, cp.stderr


def test_verbose_prints_the_effective_table(tmp: Path, netns: Netns) -> None:
    path = example(tmp, "ip-only-through-build", netns)
    cp = mstack("-v", "--policy", path, "true")
    assert cp.returncode == 0, cp.stderr
    assert "mstack: unix -> native (locked)" in cp.stderr
    assert f"mstack: ipv4,ipv6,netlink,packet -> build ({netns.path}) (locked)" in cp.stderr
    assert "mstack: all other families -> null (locked)" in cp.stderr
    lockdown = mstack("-v", "--lock", "--policy", example(tmp, "no-raw-packet"), "true")
    assert "all other families -> native (locked)" in lockdown.stderr, lockdown.stderr
    assert "packet -> null (locked)" in lockdown.stderr


@pytest.mark.parametrize(("name", "supervised"), [("lockdown", False),
                                                  ("ip-only-through-build", True)])
def test_supervisor_only_when_something_is_redirected(tmp: Path, netns: Netns, name: str,
                                                      supervised: bool) -> None:
    path = example(tmp, name, netns if name == "ip-only-through-build" else None)
    token = f"token-{uuid.uuid4().hex}"
    proc = subprocess.Popen([MSTACK, "--policy", path, "/bin/sh", "-c", "read x", token],
                            stdin=subprocess.PIPE, text=True)
    try:
        # the command runs once its /proc/PID/comm is the shell's
        assert wait_until(lambda: _comm(proc.pid) == "sh", timeout=10)
        assert bool(supervisors_of(token)) is supervised
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    assert wait_until(lambda: not supervisors_of(token), timeout=10)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- no_new_privs -------------------------------------------------------------------------


@pytest.mark.parametrize(("how", "expected"), [("plain", "0"), ("option", "1"), ("key", "1")])
def test_no_new_privs_for_root_only_when_asked(tmp: Path, how: str, expected: str) -> None:
    text = (POLICY_DIR / "lockdown.toml").read_text()
    if how == "key":
        text += "\n[options]\nno_new_privs = true\n"
    path = write(tmp, "p.toml", text)
    option = ["--no-new-privs"] if how == "option" else []
    cp = mstack(*option, "--policy", path, "/bin/sh", "-c", NNP)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["NoNewPrivs:", expected]


@pytest.mark.parametrize("name", ["lockdown", "no-raw-packet"])
def test_no_new_privs_always_for_a_non_root_user(tmp: Path, name: str) -> None:
    path = example(tmp, name)
    cp = run([*NOBODY, MSTACK, "--policy", path, "/bin/sh", "-c", f"id -u; {NNP}"],
             cwd=str(tmp))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["65534", "NoNewPrivs:", "1"]
