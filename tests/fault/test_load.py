"""One supervisor under load: many threads at once, a fork/exec storm, full fd tables (the
targets' and its own), and multi-threaded targets killed in the middle of their calls while
others keep working. The workload is a C program (``tests/helpers/load.c``) run inside the
mstack tree; it reports per-thread counts and the namespace cookie of every socket.

Counting the supervisor's files: it keeps up to 64 ``/proc/TID/status`` files open by design
(:mod:`mstack_bpf.linux.creds`), and which ones depends on the tids it last served. Those are
checked against that bound; every other descriptor (listener, stack namespaces, sockets) must
be exactly the same set, with the same numbers, before and after the load.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import uuid

import pytest

from tests.conftest import (
    MSTACK,
    Netns,
    Report,
    build_c,
    fd_links,
    gone,
    needs_root,
    stop_tree,
    supervisors_of,
    wait_until,
)

pytestmark = needs_root

TASK_CACHE = 2 * 64  # two creds._TaskFiles of 64: callers' pidfds and /proc status files
TASK_FILE = re.compile(r"/proc/\d+/status|anon_inode:\[pidfd\]")
WARM_UP = "load,1,1,1000,10,2"  # the first redirected calls, before the baseline is taken
# A native AF_UNIX socket() (the tests redirect only IP): the supervisor answers it with
# CONTINUE, one call at a time, so once it has returned every earlier call is finished
# (its injected socket closed). Counts taken after it are exact.
SYNC = "sync"


@pytest.fixture(scope="session")
def load_bin() -> str:
    return build_c("load", "-pthread")


#: the IP families stay redirected (not the kernel's own in a home stack): the load is the
#: supervisor's
KEEP = "--keep-namespace"

class Workload:
    """``load steps`` under ``mstack *mstack_args``: one report per :meth:`go`."""

    def __init__(self, binary: str, *mstack_args: str, steps: tuple[str, ...]) -> None:
        self.marker = f"tag,{uuid.uuid4().hex}"
        self.proc = subprocess.Popen([MSTACK, *mstack_args, binary, "steps", self.marker, *steps],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert self.read() == {"tag": self.marker}
            assert wait_until(lambda: len(supervisors_of(self.marker)) == 1, timeout=5)
            (self.supervisor,) = supervisors_of(self.marker)
        except BaseException:
            self.close()
            raise

    def read(self) -> Report:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"workload ended early (status {self.proc.poll()})"
        result = json.loads(line)
        assert isinstance(result, dict)
        return result

    def go(self) -> Report:
        """Run the next step and return its report."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.read()

    def synced(self, host_cookie: int) -> bool:
        got: dict[str, object] = self.go()
        return got == {"cookie": host_cookie}

    def close(self) -> None:
        """Kill the workload (its children die with it: PR_SET_PDEATHSIG) and whatever
        supervisor served it."""
        stop_tree(self.proc, self.marker)

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def supervisor_files(pid: int) -> tuple[dict[int, str], int]:
    """The supervisor's descriptors other than its cache of callers' files, and that cache's
    size."""
    links = fd_links(pid)
    cached = sum(1 for target in links.values() if TASK_FILE.fullmatch(target))
    return {fd: t for fd, t in links.items() if not TASK_FILE.fullmatch(t)}, cached


def unchanged(target: Workload, before: dict[int, str], host_cookie: int) -> None:
    """Once every call is done, the supervisor holds exactly what it held ``before`` (its
    cache of callers' files aside, which is bounded)."""
    assert target.synced(host_cookie)
    after, cached = supervisor_files(target.supervisor)
    assert after == before
    assert cached <= TASK_CACHE


def all_served(calls: object, cookie: int) -> None:
    """Every call of every thread came back, with a socket in the stack."""
    assert isinstance(calls, dict)
    assert calls["errors"] == {}
    assert calls["attempted"] == calls["returned"] == calls["ok"]
    assert calls["cookies"] == [cookie]
    assert calls["extra_cookies"] == 0
    for attempted, returned in calls["threads"]:
        assert attempted == returned > 0, calls["threads"]


def test_eight_processes_of_four_threads(load_bin: str, netns: Netns, host_cookie: int) -> None:
    load = "load,8,4,5000,20000,2"  # 5 s or 20,000 calls per thread
    with Workload(load_bin, KEEP, "-o", "ip", netns.name,
                  steps=(WARM_UP, SYNC, load, SYNC, load, SYNC)) as target:
        target.go()
        assert target.synced(host_cookie)
        before, _ = supervisor_files(target.supervisor)
        for _ in range(2):  # a second round: a leak per round would show as growth too
            report = target.go()
            assert report["processes"] == report["clean_exits"] == 8
            all_served(report["calls"], netns.cookie)
            assert len(report["calls"]["threads"]) == 32
            unchanged(target, before, host_cookie)


def test_fork_exec_storm_of_a_thousand_processes(load_bin: str, netns: Netns,
                                                 host_cookie: int) -> None:
    """Each process is a fresh exec of a C program that makes one AF_INET socket (redirected)
    and one AF_UNIX socket (native) and reports both cookies."""
    with Workload(load_bin, KEEP, "-o", "ip", netns.name,
                  steps=(WARM_UP, SYNC, "storm,1000,4", SYNC)) as target:
        target.go()
        assert target.synced(host_cookie)
        before, _ = supervisor_files(target.supervisor)
        assert target.go() == {
            "spawned": 1000, "clean_exits": 1000, "records": 1000,
            "inet": {str(netns.cookie): 1000, "other": 0},
            "unix": {str(host_cookie): 1000, "other": 0},
            "errnos": {"0": 1000, "other": 0},
        }
        assert supervisors_of(target.marker) == {target.supervisor}
        unchanged(target, before, host_cookie)


def test_full_fd_tables_in_many_threads_leave_the_others_served(load_bin: str, netns: Netns,
                                                                host_cookie: int) -> None:
    """RLIMIT_NOFILE is per process: four processes fill their tables and hammer socket() from
    four threads each, while two other processes of four threads keep working."""
    with Workload(load_bin, KEEP, "-o", "ip", netns.name,
                  steps=(WARM_UP, SYNC, "emfile,4,2,4,3000", SYNC, WARM_UP)) as target:
        target.go()
        assert target.synced(host_cookie)
        before, _ = supervisor_files(target.supervisor)
        report = target.go()
        assert report["clean_exits"] == 6
        full = report["full"]
        assert isinstance(full, dict)
        assert full["errors"] == {"EMFILE": full["attempted"]}
        assert full["attempted"] == full["returned"] and full["ok"] == 0
        for attempted, returned in full["threads"]:
            assert attempted == returned > 0
        all_served(report["others"], netns.cookie)
        all_served(report["full_after"], netns.cookie)  # two fds freed: served again
        unchanged(target, before, host_cookie)
        all_served(target.go()["calls"], netns.cookie)


def test_killing_threaded_targets_mid_call_leaves_the_tree_served(load_bin: str, netns: Netns,
                                                                  host_cookie: int) -> None:
    """500 targets of 8 threads each, killed once every thread has had a socket and most are
    in the middle of the next call (the supervisor is often waiting in ADDFD for one of them),
    while two processes of two threads keep making sockets the whole time."""
    rounds = 500
    storm = f"kill,{rounds},8,2,2,40000"  # 40 s at most: the count is the bound that counts
    with Workload(load_bin, KEEP, "-o", "ip", netns.name,
                  steps=(WARM_UP, SYNC, storm, SYNC)) as target:
        target.go()
        assert target.synced(host_cookie)
        before, _ = supervisor_files(target.supervisor)
        report = target.go()
        assert report["rounds"] == report["started"] == report["killed"] == rounds, report
        assert report["clean_exits"] == 2
        all_served(report["survivors"], netns.cookie)
        all_served(report["after"], netns.cookie)
        assert supervisors_of(target.marker) == {target.supervisor}
        unchanged(target, before, host_cookie)


def test_supervisor_out_of_descriptors_fails_closed_and_recovers(load_bin: str, netns: Netns,
                                                                 host_cookie: int) -> None:
    """RLIMIT_NOFILE of the supervisor itself lowered (prlimit) to its lowest free fd: it can
    open nothing, so redirected calls fail (never native) while native calls go on; restored,
    it serves again and holds nothing more than before."""
    small = "load,2,2,2000,50,2"
    with Workload(load_bin, KEEP, "-o", "ip", netns.name,
                  steps=(WARM_UP, SYNC, small, SYNC, small, SYNC)) as target:
        sv = target.supervisor
        target.go()
        assert target.synced(host_cookie)
        before, _ = supervisor_files(sv)
        lowest_free = min(set(range(len(fd_links(sv)) + 1)) - set(fd_links(sv)))
        saved = resource.prlimit(sv, resource.RLIMIT_NOFILE)
        try:
            resource.prlimit(sv, resource.RLIMIT_NOFILE, (lowest_free, saved[1]))
            calls = target.go()["calls"]
            assert isinstance(calls, dict)
            assert calls["errors"] == {"EMFILE": 200} and calls["cookies"] == []
            assert calls["attempted"] == calls["returned"] == 200
            assert target.synced(host_cookie)
        finally:
            if not gone(sv):
                resource.prlimit(sv, resource.RLIMIT_NOFILE, saved)
        all_served(target.go()["calls"], netns.cookie)
        assert target.synced(host_cookie)
        after, cached = supervisor_files(sv)
        assert after == before
        assert cached <= TASK_CACHE
