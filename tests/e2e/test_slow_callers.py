"""One caller cannot freeze the supervisor for the rest of its tree: a msocket path whose
lookup waits for good (a FUSE filesystem that never answers) or whose string sits on a page
that never comes in (userfaultfd) ties up a slow-lane worker, never the loop, so every other
process keeps getting its sockets. Checked from inside the target: another thread's
socket() succeeds, in the right stack, while the msocket call is still waiting."""

from __future__ import annotations

import json
import os
import select
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import HELPERS, MSTACK, PYTHON, Netns, needs_root, stop_process, wait_until
from tests.helpers.stuck_fuse import OneFileFuse, StuckFuse

pytestmark = needs_root

#: a thread calls msocket(PATH) (it waits); on "go" from stdin the main thread makes an
#: AF_INET socket and prints its namespace cookie; then the msocket outcome is printed
PROBE = """
import ctypes, errno, json, mmap, os, socket, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
if sys.argv[1] == "uffd":  # the path's page is missing, and only we could bring it in
    uffd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)
    assert libc.ioctl(uffd, ctypes.c_ulong(0xC018AA3F),  # UFFDIO_API
                      ctypes.create_string_buffer(struct.pack("=QQQ", 0xAA, 0, 0))) == 0
    page = mmap.mmap(-1, 4096)
    path = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    register = struct.pack("=QQQQ", path.value, 4096, 1, 0)  # UFFDIO_REGISTER_MODE_MISSING
    assert libc.ioctl(uffd, ctypes.c_ulong(0xC020AA00),  # UFFDIO_REGISTER
                      ctypes.create_string_buffer(register)) == 0
else:
    path = ctypes.c_char_p(sys.argv[1].encode())
def slow():
    r = libc.syscall(ctypes.c_long(-5), path, socket.AF_INET, socket.SOCK_STREAM, 0)
    out["msocket"] = errno.errorcode.get(ctypes.get_errno(), "?") if r < 0 else "fd"
t = threading.Thread(target=slow)
t.start()
if sys.argv[1] == "uffd":  # the supervisor's read of the path faulted: it waits on us
    import select
    select.select([uffd], [], [])
else:
    sys.stdin.readline()
s = socket.socket(socket.AF_INET)
print(json.dumps({"cookie": struct.unpack("=Q", s.getsockopt(1, 71, 8))[0]}), flush=True)
if sys.argv[1] == "uffd":
    sys.stdin.readline()
    os.close(uffd)  # the page comes in as zeros: an empty path
t.join()
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def stuck_fuse() -> Iterator[StuckFuse]:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    fuse = StuckFuse()
    try:
        yield fuse
    finally:
        fuse.close()


def _line(proc: subprocess.Popen[str], timeout: float = 10) -> object:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no answer: the supervisor is stuck"
    return json.loads(proc.stdout.readline())


def test_a_lookup_that_never_ends_stalls_no_one_else(netns: Netns,
                                                     stuck_fuse: StuckFuse) -> None:
    proc = subprocess.Popen([MSTACK, "-o", "4", netns.name, PYTHON, "-c", PROBE,
                             f"{stuck_fuse.mountpoint}/stack"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # the supervisor has asked the filesystem, which will never answer
        assert wait_until(lambda: len(stuck_fuse.requests) > 1), stuck_fuse.requests
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert _line(proc) == {"cookie": netns.cookie}
        stuck_fuse.close()  # the lookup fails: the waiting caller is answered with an errno
        assert _line(proc) == {"msocket": "ECONNABORTED"}
        assert proc.wait(timeout=10) == 0
    finally:
        stop_process(proc)


def test_a_page_that_never_comes_in_stalls_no_one_else(netns: Netns) -> None:
    """msocket's path on a page registered with userfaultfd: reading it waits until the
    caller serves the fault — this one never does until told to."""
    if not os.access("/dev/userfaultfd", os.F_OK) and os.geteuid() != 0:
        pytest.skip("needs userfaultfd for kernel faults (root)")
    proc = subprocess.Popen([MSTACK, "-o", "4", netns.name, PYTHON, "-c", PROBE, "uffd"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert _line(proc) == {"cookie": netns.cookie}
        assert proc.stdin is not None
        proc.stdin.write("release\n")
        proc.stdin.flush()
        assert _line(proc) == {"msocket": "ENOENT"}  # zeros: an empty path, as open("")
        assert proc.wait(timeout=10) == 0
    finally:
        stop_process(proc)


def test_a_late_answer_never_reaches_a_process_that_got_the_callers_pid(netns: Netns) -> None:
    """A socketpair's result waits in the slow lane; meanwhile its caller is killed and a
    bystander gets its pid: the write must not land in the bystander (it did, through
    process_vm_writev by pid); it goes to the caller's own address space or nowhere."""
    cp = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", PYTHON,
                         str(HELPERS / "pid_reuse.py"), "orchestrate", netns.name],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout.strip().splitlines()[-1]) == {"changed": False}, cp.stdout


#: opens PATH; on "go", a thread issues SIOCGIFINDEX on it (its filesystem no longer
#: answers) while the main thread makes an AF_INET socket and prints its namespace cookie
IOCTL_PROBE = """
import fcntl, json, socket, struct, sys, threading
f = open(sys.argv[1], "rb")
print("open", flush=True)
sys.stdin.readline()
def ioctl():
    try:
        fcntl.ioctl(f.fileno(), 0x8933, struct.pack("16s24x", b"lo"))
    except OSError:
        pass
threading.Thread(target=ioctl, daemon=True).start()
s = socket.socket(socket.AF_INET)
print(json.dumps({"cookie": struct.unpack("=Q", s.getsockopt(1, 71, 8))[0]}), flush=True)
"""


def test_an_ioctl_on_a_file_that_never_answers_stalls_no_one_else(netns: Netns) -> None:
    """Telling whether an ioctl's descriptor is a socket must not ask its filesystem on the
    loop: a FUSE file's fstat (GETATTR) or close (FLUSH) waited there for good."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    fuse = OneFileFuse()
    proc = subprocess.Popen([MSTACK, "-o", "ip", netns.name, PYTHON, "-c", IOCTL_PROBE,
                             f"{fuse.mountpoint}/f"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "open"
        fuse.stuck = True
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert _line(proc) == {"cookie": netns.cookie}
    finally:
        fuse.close()
        stop_process(proc)


#: eight threads call msocket with paths on userfaultfd pages (each waits, or is refused);
#: once the supervisor has faulted, a child process asks for lo's index (an interface
#: ioctl: slow-lane work too) and the outcomes are printed
GREEDY_PROBE = """
import ctypes, errno, json, mmap, os, select, socket, struct, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
uffd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)
assert libc.ioctl(uffd, ctypes.c_ulong(0xC018AA3F),
                  ctypes.create_string_buffer(struct.pack("=QQQ", 0xAA, 0, 0))) == 0
pages = mmap.mmap(-1, 4096 * 8)
base = ctypes.addressof(ctypes.c_char.from_buffer(pages))
assert libc.ioctl(uffd, ctypes.c_ulong(0xC020AA00), ctypes.create_string_buffer(
    struct.pack("=QQQQ", base, 4096 * 8, 1, 0))) == 0
refused = []
def stall(i):
    r = libc.syscall(ctypes.c_long(-5), ctypes.c_void_p(base + 4096 * i), 2, 1, 0)
    if r < 0 and ctypes.get_errno() == errno.EAGAIN:
        refused.append(i)
threads = [threading.Thread(target=stall, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
select.select([uffd], [], [])  # the supervisor waits on our pages
time.sleep(0.3)
r, w = os.pipe()
if os.fork() == 0:
    os.write(w, str(socket.if_nametoindex("lo")).encode())
    os._exit(0)
ready, _, _ = select.select([r], [], [], 10)
index = int(os.read(r, 16)) if ready else None
os.close(uffd)
for t in threads:
    t.join()
print(json.dumps({"refused": len(refused), "lo": index}), flush=True)
"""


def test_one_process_cannot_take_every_slow_worker(netns: Netns) -> None:
    """A process stalling many calls gets EAGAIN beyond its share of the slow lane, and
    another process's slow call (an interface ioctl) is still answered."""
    cp = subprocess.run([MSTACK, "-o", "ip", netns.name, PYTHON, "-c", GREEDY_PROBE],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == {"refused": 4, "lo": 1}
