"""The supervisor acts with the caller's rights, always: what it does on a caller's behalf
(interface ioctls, socketpairs, the sockets' cgroup) is what the kernel would do for the
caller itself. Every check is made from inside the target, against the same call made
natively in the same namespace."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mstack_bpf.linux import cgroup as cgroup_mod
from tests.conftest import (
    MSTACK,
    PYTHON,
    VENV_PYTHON,
    Netns,
    Report,
    build_c,
    mstack,
    needs_root,
    stop_process,
    wait_until,
)

pytestmark = needs_root

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
SIOCGIFADDR, SIOCGIFFLAGS, SIOCGMIIPHY = "8915", "8913", "8947"
AF_UNIX, AF_INET, AF_INET6, AF_PACKET = "1", "2", "10", "17"


@pytest.fixture(scope="module")
def ifioctl(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The ioctl probe, where nobody may run it."""
    public = tmp_path_factory.mktemp("ifioctl")
    public.chmod(0o755)
    path = public / "ifioctl"
    shutil.copy(build_c("ifioctl"), path)
    path.chmod(0o755)
    return str(path)


def _view(cp: object) -> Report:
    assert getattr(cp, "returncode", 1) == 0, getattr(cp, "stderr", "")
    return json.loads(getattr(cp, "stdout", ""))


@pytest.mark.parametrize("abi", ["x86_64", "i386"])
@pytest.mark.parametrize("mapping", [("-o", "ip"), ("--lock", "-o", "ip")])
def test_capability_checked_ioctl_as_unprivileged_caller(netns: Netns, ifioctl: str,
                                                         abi: str,
                                                         mapping: tuple[str, ...]) -> None:
    """SIOCGMIIPHY checks CAP_NET_ADMIN: a root supervisor must not pass the check for an
    unprivileged caller (it did, and reached the driver: EOPNOTSUPP instead of EPERM)."""
    command = (*NOBODY, ifioctl, AF_INET, SIOCGMIIPHY, "lo", *(["i386"] if abi == "i386" else []))
    native = _view(netns.exec(*command))
    under = _view(mstack(*mapping, netns.name, *command))
    assert native == {"errno": "EPERM"}
    assert under == native


def test_root_caller_keeps_its_capability(netns: Netns, ifioctl: str) -> None:
    command = (ifioctl, AF_INET, SIOCGMIIPHY, "lo")
    assert _view(mstack("-o", "ip", netns.name, *command)) == _view(netns.exec(*command))


@pytest.mark.parametrize("family", [AF_INET, AF_INET6, AF_UNIX, AF_PACKET])
@pytest.mark.parametrize("stack", ["native", "netns"])
def test_address_requests_answer_as_on_the_callers_socket(netns: Netns, ifioctl: str,
                                                          family: str, stack: str) -> None:
    """SIOCGIFADDR is the AF_INET protocol's (AF_PACKET passes it on): net-tools' address
    lookup works under any mstack, and other sockets get ENOTTY as natively."""
    name = netns.name if stack == "netns" else "native"
    for request in (SIOCGIFADDR, SIOCGIFFLAGS):
        command = (ifioctl, family, request, "lo")
        native = _view(netns.exec(*command) if stack == "netns" else subprocess.run(
            command, capture_output=True, text=True, timeout=30))
        assert _view(mstack("-o", "ip", name, *command)) == native, (family, request)
        if family == AF_INET and request == SIOCGIFADDR:
            assert native == {"addr": "127.0.0.1", "value": 0}


PAIR_PROBE = """
import errno, json, socket, struct, sys
def cookie(s):
    return struct.unpack('=Q', s.getsockopt(1, 71, 8))[0]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
out = {"ends": [cookie(a), cookie(b)], "cloexec": [not x.get_inheritable() for x in (a, b)]}
b.send(b"ping")
out["pair"] = a.recv(16).decode()
try:
    a.sendto(b"escaped", sys.argv[1].encode())
    out["sendto"] = "sent"
except OSError as e:
    out["sendto"] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to an abstract name in the host's namespace."""
    name = f"\0mstack-pair-{os.getpid()}-{random.randrange(1 << 32):08x}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(name)
    sock.setblocking(False)
    try:
        yield sock, name
    finally:
        sock.close()


def _received(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(64)
    except BlockingIOError:
        return None


POLICY = """
[stacks]
s = "{name}"
[families]
unix = "s"
[lock]
families = true
"""


@pytest.mark.parametrize("mapping", [("--lock",), ("--lock", "-o", "unix"), ("-o", "unix"),
                                     ("--policy",)])
def test_socketpair_is_made_in_its_familys_stack(netns: Netns, mapping: tuple[str, ...],
                                                 abstract_listener: tuple[socket.socket, str],
                                                 tmp_path: Path) -> None:
    """A datagram pair of a redirected AF_UNIX can send to (and bind) abstract names of the
    namespace it lives in: it must live in the stack, never in the caller's own."""
    listener, name = abstract_listener
    escape = name.replace("\0", "@")  # the probe's argv cannot carry a NUL: '@' stands for it
    probe = PAIR_PROBE.replace("sys.argv[1].encode()", "b'\\0' + sys.argv[1][1:].encode()")
    native = json.loads(subprocess.run([PYTHON, "-c", probe, escape], capture_output=True,
                                       text=True, timeout=30, check=True).stdout)
    assert native["sendto"] == "sent" and _received(listener) == b"escaped"  # the attack
    if mapping == ("--policy",):  # unix -> the stack, locked, from a policy file
        policy = tmp_path / "unix.toml"
        policy.write_text(POLICY.format(name=netns.name))
        mapping = ("--policy", str(policy))
        under = _view(mstack(*mapping, PYTHON, "-c", probe, escape))
    else:
        under = _view(mstack(*mapping, netns.name, PYTHON, "-c", probe, escape))
    assert under == {"ends": [netns.cookie] * 2, "cloexec": [True, True], "pair": "ping",
                     "sendto": "ECONNREFUSED"}
    assert _received(listener) is None


SEND = """
import errno, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("127.0.0.1", 9999))
    print("sent")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


@pytest.fixture
def cgroup_rule(netns: Netns) -> Iterator[str]:
    """A level-1 cgroup v2 whose UDP to port 9999 the stack's nftables drops; its path."""
    found = cgroup_mod.v2_mount()
    if found is None or found[1] != "/":
        pytest.skip("needs the cgroup v2 hierarchy mounted (its root)")
    if shutil.which("nft") is None:
        pytest.skip("needs nft (apt nftables)")
    name = f"mstack-t{random.randrange(1 << 32):08x}"
    path = f"{found[0]}/{name}"
    os.mkdir(path)
    try:
        # nft resolves cgroup paths under /sys/fs/cgroup: give it the v2 hierarchy there.
        rules = (f"add table inet t; add chain inet t out {{ type filter hook output priority 0;"
                 f" }}; add rule inet t out socket cgroupv2 level 1 \\\"{name}\\\" "
                 "udp dport 9999 drop")
        subprocess.run(["unshare", "-m", "sh", "-ec",
                        "mount --make-rprivate / && { [ \"$(stat -fc %T /sys/fs/cgroup)\" = "
                        "cgroup2fs ] || mount -t cgroup2 none /sys/fs/cgroup; } && "
                        f"nsenter --net={netns.path} nft \"{rules}\""],
                       check=True, capture_output=True, text=True, timeout=30)
        yield path
    finally:
        os.rmdir(path)


def test_socket_carries_the_callers_cgroup(netns: Netns, cgroup_rule: str) -> None:
    """A target that moved to another cgroup than the supervisor's: its sockets are its
    cgroup's (the stack's nft rule for that cgroup drops its UDP), as natively."""
    join = f"echo $$ > {cgroup_rule}/cgroup.procs && exec "
    native = subprocess.run(["sh", "-c", join + f"nsenter --net={netns.path} \"$@\"", "sh",
                             PYTHON, "-c", SEND], capture_output=True, text=True, timeout=30)
    assert native.stdout.strip() == "EPERM", native.stderr
    under = mstack("-o", "4", netns.name, "sh", "-c", join + '"$@"', "sh", PYTHON, "-c", SEND)
    assert under.stdout.strip() == "EPERM", under.stderr
    # the rule is the cgroup's: outside it the same send goes out
    assert mstack("-o", "4", netns.name, PYTHON, "-c", SEND).stdout.strip() == "sent"


REPEAT_THEN_JOIN = """
import errno, os, socket, sys
def send():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", ("127.0.0.1", 9999))
        return "sent"
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        s.close()
before = {send() for _ in range(20)}
with open(sys.argv[1] + "/cgroup.procs", "w") as procs:
    procs.write(str(os.getpid()))
print(sorted(before), sorted({send() for _ in range(20)}))
"""


def test_a_caller_that_moves_to_another_cgroup_gets_sockets_of_its_new_cgroup(
        netns: Netns, cgroup_rule: str) -> None:
    """20 sockets in the supervisor's cgroup (the C loop makes them once the thread
    repeats), then the same thread moves to the cgroup the stack's rule drops: every later
    socket is that cgroup's."""
    cp = mstack("--keep-namespace", "-o", "4", netns.name, PYTHON, "-c", REPEAT_THEN_JOIN,
                cgroup_rule)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split("\n")[0] == "['sent'] ['EPERM']"


MSOCKET = ("import socket,struct,sys,mstack_bpf;"
           "s=mstack_bpf.msocket(sys.argv[1].encode('utf-8','surrogateescape'),socket.AF_INET);"
           "print(struct.unpack('=Q',s.getsockopt(1,71,8))[0])")


@pytest.mark.parametrize("keep", [True, False], ids=["keep-namespace", "home"])
def test_unprivileged_caller_may_name_its_own_namespace(netns: Netns, host_cookie: int,
                                                        keep: bool) -> None:
    """/proc/self/ns/net is where the caller is already: no claim to check (it was EACCES
    for a non-root caller, though 'native' worked). Living in the stack, that is the stack."""
    where = ("--keep-namespace",) if keep else ()
    cp = mstack(*where, "-o", "4", netns.name, *NOBODY, VENV_PYTHON, "-c", MSOCKET,
                "/proc/self/ns/net")
    assert int(cp.stdout) == (host_cookie if keep else netns.cookie), cp.stderr


def test_msocket_path_with_bytes_that_are_not_utf8(netns: Netns,
                                                  tmp_path_factory: pytest.TempPathFactory,
                                                  ) -> None:
    """Paths are bytes: a link named b'\\xff\\xfe' to the stack names the stack (it was EIO)."""
    where = tmp_path_factory.mktemp("bytes")
    os.symlink(netns.path, os.path.join(os.fsencode(where), b"\xff\xfe"))
    path = os.fsdecode(os.path.join(os.fsencode(where), b"\xff\xfe"))
    cp = mstack("-o", "4", "native", VENV_PYTHON, "-c", MSOCKET, path)
    assert cp.stdout.strip() == str(netns.cookie), cp.stderr


EDGES = """
import ctypes, errno, json, os, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
def err(r):
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
out = {}
req = ctypes.create_string_buffer(struct.pack("16s24x", b"lo"))
out["closed fd"] = err(libc.ioctl(999, ctypes.c_ulong(0x8933), req))
r, w = os.pipe()
out["pipe"] = err(libc.ioctl(r, ctypes.c_ulong(0x8933), req))
s = socket.socket(socket.AF_INET)
for n in (-1, 0, 40, 2 << 20):
    buf = ctypes.create_string_buffer(max(n, 40))
    ifc = ctypes.create_string_buffer(struct.pack("=i4xQ", n, ctypes.addressof(buf)))
    rr = libc.ioctl(s.fileno(), ctypes.c_ulong(0x8912), ifc)
    out[f"ifconf {n}"] = [err(rr), struct.unpack_from("=i", ifc.raw)[0]]
ifc = ctypes.create_string_buffer(struct.pack("=i4xQ", 0, 0))
rr = libc.ioctl(s.fileno(), ctypes.c_ulong(0x8912), ifc)
out["ifconf NULL"] = [err(rr), struct.unpack_from("=i", ifc.raw)[0]]
print(json.dumps(out))
"""


def test_interface_ioctl_edges_answer_as_natively(netns: Netns) -> None:
    """A closed descriptor is EBADF, a pipe ENOTTY; SIOCGIFCONF with a NULL buffer reports
    the size the records need (it said 1), a negative or huge length is taken as the kernel
    takes it (they were EINVAL)."""
    netns.exec("ip", "addr", "add", "10.9.9.1/24", "dev", "mstk0", check=True)  # 2 records
    native = _view(netns.exec(PYTHON, "-c", EDGES))
    assert native["ifconf NULL"] == ["ok", 80] and native["closed fd"] == "EBADF"
    assert _view(mstack("-o", "ip", netns.name, PYTHON, "-c", EDGES)) == native


LOOPER = """
import socket, sys, time
open(sys.argv[1] + "/cgroup.procs", "w").write("0")  # into the cgroup, then sockets
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        socket.socket(socket.AF_INET).close()
    except OSError:
        pass
"""
WAITER = """
import socket, struct, sys
sys.stdin.readline()
s = socket.socket(socket.AF_INET)
print(struct.unpack("=Q", s.getsockopt(1, 71, 8))[0], flush=True)
"""


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _members(cgroup: str) -> str:
    with open(f"{cgroup}/cgroup.procs") as f:
        return f.read()


def _supervisor_in(cgroup: str) -> bool:
    """Whether a supervisor (not one of its short-lived children) is in ``cgroup``."""
    for pid in os.listdir("/proc"):
        if pid.isdigit() and _comm(pid) == "mstack-sv":
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
                with open(f"/proc/{pid}/cgroup") as f:
                    where = f.read()
            except OSError:
                continue
            if _comm(ppid) != "mstack-sv" and f"0::/{os.path.basename(cgroup)}\n" in where:
                return True
    return False


def test_the_supervisor_never_enters_a_callers_cgroup(netns: Netns, cgroup_rule: str) -> None:
    """Whoever owns a caller's cgroup may freeze or kill what is in it: the supervisor must
    never be there (it visited it for every socket, and a freeze caught it, hanging the
    whole tree). Freezing the cgroup over and over while its member makes sockets leaves
    the rest of the tree served."""
    proc = subprocess.Popen(
        [MSTACK, "-o", "4", netns.name, "sh", "-c",
         f'{PYTHON} -c "$1" {cgroup_rule} 1.5 & exec {PYTHON} -c "$2"', "sh", LOOPER, WAITER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    freeze = f"{cgroup_rule}/cgroup.freeze"
    caught = False
    try:
        assert wait_until(lambda: bool(_members(cgroup_rule)))
        end = time.time() + 1.0
        while time.time() < end:
            with open(freeze, "w") as f:
                f.write("1")
            caught = caught or _supervisor_in(cgroup_rule)
            with open(freeze, "w") as f:
                f.write("0")
            time.sleep(0.002)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert int(proc.stdout.readline()) == netns.cookie  # the loop was never held
        assert not caught
    finally:
        with open(freeze, "w") as f:
            f.write("0")
        stop_process(proc)
        assert wait_until(lambda: not _members(cgroup_rule), timeout=10)
