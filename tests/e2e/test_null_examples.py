"""The README's "no network" example runs programs that use no network; `null` for every
family breaks them, as mstack(1) says."""

from __future__ import annotations

from tests.conftest import PYTHON, mstack, needs_root

pytestmark = needs_root

ASYNCIO = ("import asyncio, socket\n"
           "async def main():\n"
           "    await asyncio.sleep(0)\n"
           "    try:\n"
           "        socket.socket(socket.AF_INET)\n"
           "    except OSError as e:\n"
           "        return e.errno\n"
           "print(asyncio.run(main()))\n")


def test_no_network_example_keeps_programs_that_use_no_network_working() -> None:
    """asyncio's event loop (a socketpair) runs under the README's example; IP is refused."""
    cp = mstack("-o", "all,-unix", "null", PYTHON, "-c", ASYNCIO)
    assert (cp.returncode, cp.stdout) == (0, "97\n"), cp.stderr  # EAFNOSUPPORT


def test_null_for_every_family_breaks_asyncio_as_documented() -> None:
    cp = mstack("null", PYTHON, "-c", ASYNCIO)
    assert cp.returncode == 1
    assert "OSError: [Errno 97] Address family not supported by protocol" in (
        cp.stderr.splitlines())
