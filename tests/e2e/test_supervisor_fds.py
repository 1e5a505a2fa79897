"""A tree cannot spend the supervisor's descriptors on what it makes it keep for good
(namespaces named in msocket): with RLIMIT_NOFILE 450, naming 450 namespaces used to leave
every later socket() of the tree with EMFILE; now naming stops early with EAGAIN and the
supervisor says what ran out, while plain sockets keep coming. Checked from inside."""

from __future__ import annotations

import json

from tests.conftest import MSTACK, VENV_PYTHON, Netns, needs_root, run

pytestmark = needs_root


#: N children each in a network namespace of its own; the parent names every one in
#: msocket, then makes a plain AF_INET socket
PROBE = """
import ctypes, errno, json, os, signal, socket, struct, sys, mstack_bpf
libc = ctypes.CDLL(None, use_errno=True)
count, children = int(sys.argv[1]), []
ready_r, ready_w = os.pipe()
for _ in range(count):
    pid = os.fork()
    if pid == 0:
        libc.unshare(0x40000000)  # CLONE_NEWNET
        os.write(ready_w, b"x")
        signal.pause()
    children.append(pid)
got = b""
while len(got) < count:
    got += os.read(ready_r, count)
named, errors = 0, {}
for pid in children:
    try:
        mstack_bpf.msocket(f"/proc/{pid}/ns/net", socket.AF_INET).close()
        named += 1
    except OSError as e:
        errors[errno.errorcode[e.errno]] = errors.get(errno.errorcode[e.errno], 0) + 1
try:
    s = socket.socket(socket.AF_INET)
    after = struct.unpack("=Q", s.getsockopt(1, 71, 8))[0]
except OSError as e:
    after = errno.errorcode[e.errno]
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(json.dumps({"named": named, "errors": errors, "after": after}))
"""


def test_naming_namespaces_leaves_descriptors_for_sockets(netns: Netns) -> None:
    cp = run(["prlimit", "--nofile=450:450", MSTACK, "-v", "-o", "4", netns.name,
              VENV_PYTHON, "-c", PROBE, "450"], timeout=120)
    assert cp.returncode == 0, cp.stderr
    view = json.loads(cp.stdout)
    assert view["after"] == netns.cookie
    assert view["named"] > 0 and set(view["errors"]) == {"EAGAIN"}, view
    assert "no descriptor left to keep more named stacks (RLIMIT_NOFILE 450" in cp.stderr
