"""Usage errors of ``mstack`` and ``mstack-stack`` are one line on stderr with exit 2 (not
click's usage/Try/blank/Error block); an empty STACK is one; ``--`` ends mstack's options
after STACK as before it; ``--help`` is unchanged."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MSTACK_STACK, PYTHON, SAFE_PATH, mstack, needs_root, probe, run

pytestmark = needs_root

IP_FAMILIES = ("2", "10", "16", "17")


@pytest.fixture
def marker() -> Iterator[Path]:
    """A file that a command which must never run would create."""
    with tempfile.TemporaryDirectory(prefix="mstack-usage-") as d:
        yield Path(d) / "ran"


def one_usage_line(prog: str, stderr: str, where: str) -> str:
    """The single line of a usage error; checks its form and returns it."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith(f"{prog}: ") and line.endswith(f"(see {where} --help)"), line
    assert "Usage:" not in line and "Error:" not in line and "Try " not in line
    return line


# --- mstack -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--bogus", "null", "CMD"), "--bogus"),
        (("-o",), "-o"),
        (("-o", "bogus", "null", "CMD"), "bogus"),
        (("-o", "ip,nope", "null", "CMD"), "nope"),
        ((), "STACK"),
        (("null",), "COMMAND"),
        (("null", "--"), "COMMAND"),
        (("--check-policy", "/nonexistent.toml", "null", "CMD"), "--check-policy"),
        (("--policy", "/nonexistent.toml", "-o", "ip", "CMD"), "-o"),
    ],
)
def test_mstack_usage_error_is_one_line(marker: Path, args: tuple[str, ...], named: str) -> None:
    touch = ("sh", "-c", f"touch {marker}")
    cp = mstack(*(part for arg in args for part in (touch if arg == "CMD" else (arg,))))
    assert (cp.returncode, cp.stdout) == (2, ""), cp.stderr
    assert named in one_usage_line("mstack", cp.stderr, "mstack")
    assert not marker.exists()


@pytest.mark.parametrize("before", [(), ("-o", "ip"), ("-v",)])
def test_empty_stack_is_a_usage_error_naming_stack(marker: Path, before: tuple[str, ...]) -> None:
    cp = mstack(*before, "", "sh", "-c", f"touch {marker}")
    assert (cp.returncode, cp.stdout) == (2, ""), cp.stderr
    line = one_usage_line("mstack", cp.stderr, "mstack")
    assert "'STACK'" in line and "empty" in line
    assert not marker.exists()


def test_mstack_help_is_unchanged() -> None:
    for flag in ("-h", "--help"):
        cp = mstack(flag)
        assert (cp.returncode, cp.stderr) == (0, ""), cp.stderr
        assert cp.stdout.startswith("Usage: mstack [OPTIONS] STACK COMMAND [ARG]...\n")
        assert "Options:" in cp.stdout and "Exit status:" in cp.stdout


# --- '--' ---------------------------------------------------------------------------------


def test_double_dash_after_stack_ends_the_options() -> None:
    cp = mstack("null", "--", "true")
    assert (cp.returncode, cp.stderr) == (0, "")


@pytest.mark.parametrize("dashes", [("--",), ()], ids=["dashdash", "plain"])
def test_double_dash_after_stack_keeps_the_mapping(host_cookie: int,
                                                   dashes: tuple[str, ...]) -> None:
    got = probe("-o", "ip", "null", *dashes, command=("families", "1", *IP_FAMILIES))
    assert got == {"1": {"cookie": host_cookie, "uid": 0},
                   **{f: {"errno": "EAFNOSUPPORT"} for f in IP_FAMILIES}}


def test_command_options_and_its_own_double_dash_are_the_command_s() -> None:
    script = 'printf "%s|" "$@"'
    cp = mstack("-o", "ip", "null", "--", "sh", "-c", script, "sh", "-x", "--", "--lock", "-o")
    assert (cp.returncode, cp.stdout) == (0, "-x|--|--lock|-o|"), cp.stderr


def test_double_dash_before_stack_still_works() -> None:
    cp = mstack("-o", "ip", "--", "null", "sh", "-c", "echo ok")
    assert (cp.returncode, cp.stdout) == (0, "ok\n"), cp.stderr


@pytest.fixture
def weird_path() -> Iterator[str]:
    """A PATH whose first directory has a command named ``-weird-cmd``."""
    with tempfile.TemporaryDirectory(prefix="mstack-weird-") as d:
        cmd = Path(d) / "-weird-cmd"
        cmd.write_text('#!/bin/sh\necho "weird $*"\n')
        cmd.chmod(0o755)
        yield f"{d}:{SAFE_PATH}"


@pytest.mark.parametrize("dashes", [("--",), ()], ids=["dashdash", "plain"])
def test_a_command_that_looks_like_an_option(weird_path: str, dashes: tuple[str, ...]) -> None:
    cp = mstack("null", *dashes, "-weird-cmd", "-x", env={"PATH": weird_path})
    assert (cp.returncode, cp.stdout) == (0, "weird -x\n"), cp.stderr


def test_missing_command_after_double_dash_is_named_not_double_dash() -> None:
    cp = mstack("null", "--", "-no-such-cmd")
    assert cp.returncode == 127, cp.stderr
    assert cp.stderr.splitlines()[0] == "mstack: -no-such-cmd: command not found"


# --- mstack-stack ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named", "where"),
    [
        ((), "command", "mstack-stack"),
        (("bogus",), "bogus", "mstack-stack"),
        (("--bogus",), "--bogus", "mstack-stack"),
        (("add",), "NAME", "mstack-stack add"),
        (("add", "x y"), "x y", "mstack-stack add"),
        (("add", "null"), "null", "mstack-stack add"),
        (("add", "mstk-usage", "--bogus"), "--bogus", "mstack-stack add"),
        (("add", "mstk-usage", "--addr", "10.9.0.0/30"), "--veth", "mstack-stack add"),
        (("add", "mstk-usage", "--dns", "nope"), "nope", "mstack-stack add"),
        (("list", "extra"), "extra", "mstack-stack list"),
        (("del",), "NAME", "mstack-stack del"),
        (("path", "a/b"), "a/b", "mstack-stack path"),
    ],
)
def test_mstack_stack_usage_error_is_one_line(args: tuple[str, ...], named: str,
                                              where: str) -> None:
    cp = run([MSTACK_STACK, *args])
    assert (cp.returncode, cp.stdout) == (2, ""), cp.stderr
    assert named in one_usage_line("mstack-stack", cp.stderr, where)
    assert not Path("/run/netns/mstk-usage").exists()


@pytest.mark.parametrize("args", [(), ("add",), ("list",)])
def test_mstack_stack_help_is_unchanged(args: tuple[str, ...]) -> None:
    cp = run([MSTACK_STACK, *args, "--help"])
    assert (cp.returncode, cp.stderr) == (0, ""), cp.stderr
    assert cp.stdout.startswith(f"Usage: {' '.join(['mstack-stack', *args])} [OPTIONS]")


def test_python_m_entry_point_names_itself_mstack_stack() -> None:
    cp = run([PYTHON, "-m", "mstack_bpf.cli.stack", "add"])
    assert cp.returncode == 2
    assert cp.stderr == "mstack-stack: missing argument 'NAME' (see mstack-stack add --help)\n"

