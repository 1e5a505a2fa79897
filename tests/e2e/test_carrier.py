"""A nested mstack's table survives children that close their descriptors, where eBPF runs
(supervisor/carrier.py): the kernel carries it through fork, not fd 1023 alone. The
families here stay out of the command's home (AF_UNIX), so only the table can carry them."""

from __future__ import annotations

import pytest

from tests.conftest import COOKIE_SOURCE, PYTHON, MakeNetns, mstack, needs_ebpf, needs_root

pytestmark = [needs_root, needs_ebpf]

CHILD = COOKIE_SOURCE + "print(cookie(socket.socket(socket.AF_UNIX)))"

#: each closes every descriptor but 0-2 before the child runs, as users' programs do
CLOSERS = {
    "subprocess-close-fds": (PYTHON, "-c", "import subprocess, sys; "
                             "subprocess.run([sys.executable, '-c', sys.argv[1]])", CHILD),
    "close-range": (PYTHON, "-c", "import os, sys; os.closerange(3, 1 << 20); "
                    "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])", CHILD),
    "shell-closes-1023": ("bash", "-c", 'exec 1023>&-; exec "$@"', "bash", PYTHON, "-c", CHILD),
}


@pytest.mark.parametrize("closer", sorted(CLOSERS))
def test_children_that_close_their_descriptors_keep_the_nested_table(
        make_netns: MakeNetns, closer: str) -> None:
    a, b = make_netns(), make_netns()
    cp = mstack("-o", "unix", a.name, "mstack", "-o", "unix", b.name, *CLOSERS[closer])
    assert cp.returncode == 0, cp.stderr
    assert int(cp.stdout) == b.cookie  # the outer mapping would give a.cookie
