"""The supervisor under stress: fd leaks, a full fd table, dying targets, signal storms, and
its own death (fail closed: redirected calls then fail, they never fall back to native)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import (
    Netns,
    Stepper,
    gone,
    needs_root,
    probe,
    wait_until,
)

pytestmark = needs_root


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# A native AF_UNIX socket() (these tests redirect only IP): the supervisor answers it with
# CONTINUE, and it handles one call at a time, so once this step has returned it has also
# finished the previous call (closed the socket it injected). Counts taken after it are exact.
SYNC = "families,1"


def synced(report: object, host_cookie: int) -> bool:
    return report == {"1": {"cookie": host_cookie, "uid": 0}}


def the_supervisor(target: Stepper) -> int:
    assert wait_until(lambda: len(target.supervisors()) == 1, timeout=5), target.supervisors()
    (pid,) = target.supervisors()
    return pid


#: the IP families stay redirected (not the kernel's own in a home stack): that is the path
#: whose descriptors are counted
REDIRECTED = ("--keep-namespace",)


def test_no_fd_leak_after_ten_thousand_redirected_sockets(netns: Netns, host_cookie: int) -> None:
    with Stepper(*REDIRECTED, "-o", "ip", netns.name,
                 steps=("loop,1,2", SYNC, "loop,10000,2", SYNC)) as target:
        sv = the_supervisor(target)
        assert target.go() == {"failures": {}}  # warm-up: the first redirected call
        assert synced(target.go(), host_cookie)
        before = fd_count(sv)
        assert target.go() == {"failures": {}}
        assert synced(target.go(), host_cookie)
        assert fd_count(sv) == before


def test_no_fd_leak_with_native_and_unix_calls_too(netns: Netns, host_cookie: int) -> None:
    # few AF_PACKET sockets: closing one waits for an RCU grace period (~13 ms)
    steps = ("loop,2000,1", "loop,2000,16", "loop,2000,10", "loop,50,17")
    with Stepper(*REDIRECTED, "-o", "4", netns.name,
                 steps=("loop,1,2", SYNC, *steps, SYNC)) as target:
        sv = the_supervisor(target)
        assert target.go() == {"failures": {}}
        assert synced(target.go(), host_cookie)
        before = fd_count(sv)
        for _ in steps:
            assert target.go() == {"failures": {}}
        assert synced(target.go(), host_cookie)
        assert fd_count(sv) == before


def test_emfile_in_the_target_is_reported_and_the_supervisor_goes_on(netns: Netns,
                                                                     host_cookie: int) -> None:
    # redirected: the EMFILE must come from ADDFD, and SYNC (AF_UNIX) must be a CONTINUE
    with Stepper(*REDIRECTED, "-o", "ip", netns.name,
                 steps=("loop,1,2", SYNC, "emfile", "families,2", SYNC)) as target:
        sv = the_supervisor(target)
        assert target.go() == {"failures": {}}
        assert synced(target.go(), host_cookie)
        before = fd_count(sv)
        assert target.go() == {"full": {"errno": "EMFILE"},
                               "after": {"cookie": netns.cookie, "uid": 0}}
        assert target.go() == {"2": {"cookie": netns.cookie, "uid": 0}}
        assert synced(target.go(), host_cookie)
        assert fd_count(sv) == before


def kill_supervisor(target: Stepper) -> None:
    sv = the_supervisor(target)
    os.kill(sv, signal.SIGKILL)
    assert wait_until(lambda: gone(sv), timeout=10)


def test_dead_supervisor_fails_closed(netns: Netns) -> None:
    with Stepper(netns.name, steps=("families,1,2,10", "families,1,2,10,16")) as target:
        assert target.go() == {f: {"cookie": netns.cookie, "uid": 0} for f in ("1", "2", "10")}
        kill_supervisor(target)
        assert target.go() == {f: {"errno": "ENOSYS"} for f in ("1", "2", "10", "16")}


@pytest.mark.parametrize("keep", [False, True], ids=["home", "keep-namespace"])
def test_dead_supervisor_under_lock_keeps_what_the_kernel_serves(netns: Netns,
                                                                 host_cookie: int,
                                                                 keep: bool) -> None:
    """Under a lock, families the kernel serves itself survive the supervisor: the IP
    families when the command lives in their stack (only native AF_UNIX was redirected),
    the native ones when it keeps mstack's namespace (the IP families were redirected)."""
    args = ("--lock", *(REDIRECTED if keep else ()), "-o", "ip", netns.name)
    with Stepper(*args, steps=("families,1,2", "families,1,2,10,16,17")) as target:
        assert target.go() == {"1": {"cookie": host_cookie, "uid": 0},
                               "2": {"cookie": netns.cookie, "uid": 0}}
        kill_supervisor(target)
        if keep:
            assert target.go() == {"1": {"cookie": host_cookie, "uid": 0},
                                   **{f: {"errno": "ENOSYS"} for f in ("2", "10", "16", "17")}}
        else:
            assert target.go() == {"1": {"errno": "ENOSYS"},
                                   **{f: {"cookie": netns.cookie, "uid": 0}
                                      for f in ("2", "10", "16", "17")}}


def test_targets_killed_mid_stream_leave_the_supervisor_serving(netns: Netns,
                                                                host_cookie: int) -> None:
    """Each storm kills ``rounds`` targets, a third or so in the middle of a redirected call.
    The supervisor may keep a bounded per-task cache (it does: open /proc/TID/status files),
    which the first storm fills; a leak would grow again with the second."""
    rounds = 300
    storm = f"killstorm,{rounds},2"
    with Stepper(*REDIRECTED, "-o", "ip", netns.name,
                 steps=(storm, SYNC, storm, SYNC, "loop,1000,2")) as target:
        sv = the_supervisor(target)
        served = {"killed": rounds, "after": {"cookie": netns.cookie, "uid": 0}}
        assert target.go() == served
        assert synced(target.go(), host_cookie)
        first = fd_count(sv)
        assert target.go() == served
        assert synced(target.go(), host_cookie)
        assert fd_count(sv) <= first
        assert target.go() == {"failures": {}}


def test_signal_every_millisecond_does_not_break_a_single_call(netns: Netns) -> None:
    result = probe("-o", "ip", netns.name, command=("sigstorm", "2000", "2"))
    assert isinstance(result, dict)
    assert result["failures"] == {}
    assert result["calls"] >= 2000
    assert result["signals"] >= 50, result  # the storm really happened
    assert result["cookies"] == [netns.cookie]


def test_signal_storm_without_sa_restart_only_ever_sees_eintr(netns: Netns) -> None:
    """Not required by the issue, but a call must never land natively or half-done."""
    result = probe("-o", "ip", netns.name, command=("sigstorm", "2000", "2", "0"))
    assert isinstance(result, dict)
    assert set(result["failures"]) <= {"EINTR"}
    assert result["cookies"] == [netns.cookie]
