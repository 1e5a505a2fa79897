"""The command lives in the stack of its IP families (core/home.py), as under ip netns exec:
its namespace, /proc/net and every child are that stack's, and the families left native are
redirected to the namespace mstack started in. Checked from inside the target."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    MSTACK,
    PYTHON,
    MakeNetns,
    Netns,
    Stepper,
    mstack,
    needs_root,
)

pytestmark = needs_root

COOKIE = ("import socket,struct,sys;s=socket.socket(getattr(socket,sys.argv[1]));"
          "print(struct.unpack('=Q',s.getsockopt(1,71,8))[0])")


def _cookie(cp: subprocess.CompletedProcess[str]) -> int:
    assert cp.returncode == 0, cp.stderr
    return int(cp.stdout.split()[-1])


def test_the_command_lives_in_the_stack_of_its_ip_families(netns: Netns) -> None:
    inside = netns.exec("readlink", "/proc/self/ns/net", check=True).stdout
    cp = mstack("-o", "ip", netns.name, "sh", "-c",
                "readlink /proc/self/ns/net; cat /proc/net/dev; ip -br link")
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    assert lines[0] == inside.strip()
    assert any(line.strip().startswith("mstk0:") for line in lines)  # /proc/net/dev
    assert any(line.startswith("mstk0") for line in lines[3:])  # ip link


def test_keep_namespace_leaves_the_command_where_mstack_started(netns: Netns) -> None:
    host = os.readlink("/proc/self/ns/net")
    cp = mstack("--keep-namespace", "-o", "ip", netns.name, "readlink", "/proc/self/ns/net")
    assert cp.stdout.strip() == host
    assert _cookie(mstack("--keep-namespace", "-o", "ip", netns.name, PYTHON, "-c", COOKIE,
                          "AF_INET")) == netns.cookie


PAIR_AND_NAMES = """
import errno, json, socket, struct, sys
def cookie(s):
    return struct.unpack('=Q', s.getsockopt(1, 71, 8))[0]
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
out = {"unix": cookie(u), "pair": cookie(a)}
for key, name in (("host", sys.argv[1]), ("stack", sys.argv[2])):
    try:
        u.sendto(b"hello", b"\\0" + name.encode())
        out[key] = "sent"
    except OSError as e:
        out[key] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


@pytest.fixture
def names(netns: Netns) -> Iterator[tuple[socket.socket, str, str]]:
    """A datagram socket on an abstract name in the host, and a name bound in the stack."""
    tag = f"mstack-home-{os.getpid()}-{random.randrange(1 << 32):08x}"
    host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    host.bind(f"\0{tag}-host")
    host.setblocking(False)
    holder = subprocess.Popen(["ip", "netns", "exec", netns.name, PYTHON, "-c",
                               "import socket,sys;s=socket.socket(socket.AF_UNIX,"
                               "socket.SOCK_DGRAM);s.bind(b'\\0'+sys.argv[1].encode());"
                               "print('bound',flush=True);sys.stdin.read()", f"{tag}-stack"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        yield host, f"{tag}-host", f"{tag}-stack"
    finally:
        holder.kill()
        holder.wait()
        host.close()


def test_native_unix_comes_from_where_mstack_started(netns: Netns, host_cookie: int,
                                                     names: tuple[socket.socket, str, str],
                                                     ) -> None:
    """AF_UNIX (native) sockets and pairs are the host's: its abstract names are reachable,
    the stack's are not, although the command lives in the stack."""
    host, host_name, stack_name = names
    cp = mstack("-o", "ip", netns.name, PYTHON, "-c", PAIR_AND_NAMES, host_name, stack_name)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == {"unix": host_cookie, "pair": host_cookie,
                                     "host": "sent", "stack": "ECONNREFUSED"}
    assert host.recv(16) == b"hello"


def test_native_in_msocket_means_where_mstack_started(netns: Netns, host_cookie: int) -> None:
    code = ("import socket,struct,mstack_bpf;s=mstack_bpf.msocket('native',socket.AF_INET);"
            "print(struct.unpack('=Q',s.getsockopt(1,71,8))[0])")
    assert _cookie(mstack("-o", "ip", netns.name, PYTHON, "-c", code)) == host_cookie


#: runs COMMAND the way a program that closes its descriptors would (subprocess's
#: close_fds; or close_range(3, ~0U) and exec)
CLOSING = """
import os, subprocess, sys
if sys.argv[1] == "subprocess":
    sys.exit(subprocess.run(sys.argv[2:], close_fds=True).returncode)
os.closerange(3, 1 << 20)
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.mark.parametrize("how", ["subprocess", "close_range"])
def test_nested_choice_survives_children_that_close_their_descriptors(
        make_netns: MakeNetns, how: str) -> None:
    """mstack -o ip A ... mstack -o ip B ... (a child closing every fd): reaches B, as
    under ip netns exec (the marker fd alone was lost with the descriptors)."""
    a, b = make_netns(), make_netns()
    inner = [MSTACK, "-o", "ip", b.name, PYTHON, "-c", CLOSING, how, PYTHON, "-c", COOKIE,
             "AF_INET"]
    cp = mstack("-o", "ip", a.name, *inner)
    assert _cookie(cp) == b.cookie


def test_every_family_locked_in_the_home_needs_no_supervisor(netns: Netns) -> None:
    """mstack --lock STACK is ip netns exec plus a filter: no supervisor at all."""
    with Stepper("--lock", netns.name, steps=("families,1,2,10",)) as target:
        assert target.go() == {f: {"cookie": netns.cookie, "uid": 0} for f in ("1", "2", "10")}
        assert target.supervisors() == set()


FAMILIES = ("import socket,struct\n"
            "for f in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):\n"
            " s=socket.socket(f, 3 if f == socket.AF_NETLINK else 2)\n"  # RAW, DGRAM
            " print(struct.unpack('=Q',s.getsockopt(1,71,8))[0])")


@pytest.mark.parametrize("lock", [(), ("--lock",)], ids=["unlocked", "locked"])
def test_a_nested_home_takes_only_its_own_families(make_netns: MakeNetns,
                                                   lock: tuple[str, ...]) -> None:
    """mstack -o ip A ... mstack -o 4 B: the command lives in B, yet ipv6 and netlink keep
    the outer mapping (A): the outer home's families are the kernel's own only while the
    caller is there (they followed it into B)."""
    a, b = make_netns(), make_netns()
    cp = mstack("-o", "ip", a.name, MSTACK, *lock, "-o", "4", b.name, PYTHON, "-c", FAMILIES)
    assert cp.returncode == 0, cp.stderr
    assert [int(x) for x in cp.stdout.split()] == [b.cookie, a.cookie, a.cookie]


MOVE = """
import ctypes, errno, json, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def err(r):
    return "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]
out = {"setns": err(libc.setns(os.open(sys.argv[1], os.O_RDONLY), 0)),
       "unshare": err(libc.unshare(0x40000000))}
s = socket.socket(socket.AF_INET)
out["inet"] = struct.unpack("=Q", s.getsockopt(1, 71, 8))[0]
print(json.dumps(out))
"""


@pytest.mark.parametrize("lock", ['["unix"]', '["-ipv4"]'], ids=["unix-only", "all-but-ipv4"])
def test_a_policy_keeps_the_command_in_its_home(make_netns: MakeNetns, tmp_path: Path,
                                                lock: str) -> None:
    """Under a policy (or any lock) with a home, the command may not leave it: its home's
    families would follow it (a locked native family alone guarded this before the home;
    in the home, native is a stack of its own)."""
    home, other = make_netns(), make_netns()
    policy = tmp_path / "p.toml"
    policy.write_text(f'[stacks]\nlab = "{home.path}"\n[families]\nipv4 = "lab"\n'
                      f'unix = "native"\nall = "null"\n[lock]\nfamilies = {lock}\n')
    cp = mstack("--policy", str(policy), PYTHON, "-c", MOVE, other.path)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == {"setns": "EPERM", "unshare": "EPERM", "inet": home.cookie}
