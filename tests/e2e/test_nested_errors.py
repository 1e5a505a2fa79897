"""A nested mstack the outer supervisor refuses says why, with a hint to fix it: the table
travels in descriptor 1023 of the process, and the outer supervisor keeps one descriptor
per table for as long as the tree runs."""

from __future__ import annotations

import pytest

from tests.conftest import MSTACK, MakeNetns, needs_root, run

pytestmark = needs_root


@pytest.mark.parametrize(("inside", "outside", "expected"), [
    ("ulimit -n 256; ", "", [
        "mstack: outer supervisor refused unix -> {B}: Too many open files",
        "mstack: hint: the table travels in descriptor 1023: raise 'ulimit -n' above 1024"]),
    ("exec 1023</dev/null; ", "", [
        "mstack: outer supervisor refused unix -> {B}: Device or resource busy",
        "mstack: hint: descriptor 1023, which carries the table, is taken in this process"]),
    ("", "ulimit -n 256; ", [
        "mstack: outer supervisor refused unix -> {B}: Resource temporarily unavailable",
        "mstack: hint: the outer supervisor may keep no more tables: its descriptor limit is "
        "used up; start the outer mstack with a higher 'ulimit -Hn'"]),
], ids=["own-limit", "fd-1023-taken", "outer-limit"])
def test_a_refused_nested_mstack_names_the_cause_and_the_fix(
        make_netns: MakeNetns, inside: str, outside: str, expected: list[str]) -> None:
    a, b = make_netns(), make_netns()
    inner = f"{inside}exec {MSTACK} -o unix {b.name} true"
    cp = run(["bash", "-c", f'{outside}exec "$@"', "bash",
              MSTACK, "-o", "unix", a.name, "bash", "-c", inner])
    assert cp.returncode == 125
    assert cp.stderr.splitlines() == [line.format(B=b.name) for line in expected]
