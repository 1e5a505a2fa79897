"""Co-location (colocate.py): a caller that makes sockets back to back meets the supervisor
on one CPU. The supervisor narrows the caller's affinity only while the caller is inside its
socket() call; the probe reads its affinity right after every call and must never see it."""

from __future__ import annotations

import os

import pytest

from tests.conftest import Netns, Stepper, cpus_allowed, mstack, needs_root, probe

pytestmark = [needs_root, pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="co-location needs at least two CPUs")]

ALL = list(range(os.cpu_count() or 1))


#: the sockets stay redirected (not the kernel's own in a home stack): co-location is
#: about the supervisor's round trip
KEEP = "--keep-namespace"

def ours() -> list[int]:
    """The CPUs mstack (and so its supervisor) may use: this test's own."""
    return cpus_allowed(os.getpid())


def test_a_caller_never_sees_its_affinity_narrowed(netns: Netns) -> None:
    report = probe("-o", "4", netns.name, command=("affinity", "300", "all", "1", "0", "all"))
    assert isinstance(report, list)
    expected = [ALL, [1], [0], ALL]
    for step, after in zip(report, expected, strict=True):
        assert step["other"] == {}, step  # every read right after socket() saw its own set
        assert step["cookies"] == [netns.cookie]
        assert step["after"] == after


def test_threads_on_different_cpus_keep_their_own_affinity(netns: Netns) -> None:
    report = probe("-o", "4", netns.name, command=("affinity_threads", "200", "4"))
    assert isinstance(report, list) and len(report) == 4
    for thread in report:
        assert thread["other"] == {}, thread
        assert thread["cookies"] == [netns.cookie]
        assert thread["after"] == [thread["cpu"]]


def skip_without_sync_wakeups(netns: Netns) -> None:
    """Co-location needs the listener's synchronous wake-ups: the supervisor says at -vvv
    when the kernel refuses them (and then never pins itself)."""
    cp = mstack("-vvv", KEEP, "-o", "4", netns.name, "true")
    assert cp.returncode == 0, cp.stderr
    if "no synchronous wake-ups" in cp.stderr:
        pytest.skip("the kernel has no SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6): "
                    "co-location is off")


def test_the_supervisor_is_pinned_for_a_burst_and_let_go_by_another_caller(
        netns: Netns) -> None:
    skip_without_sync_wakeups(netns)
    with Stepper(KEEP, "-o", "4", netns.name, steps=("burst,200", "burst,1,1")) as target:
        (supervisor,) = target.supervisors()
        assert cpus_allowed(supervisor) == ours()  # nothing called yet
        target.go()
        assert cpus_allowed(supervisor) in [[cpu] for cpu in ALL]  # one caller, back to back
        target.go()
        assert cpus_allowed(supervisor) == ours()  # the last call came from another thread


def test_no_colocate_never_pins_the_supervisor(netns: Netns) -> None:
    with Stepper(KEEP, "--no-colocate", "-o", "4", netns.name,
                 steps=("burst,200",)) as target:
        (supervisor,) = target.supervisors()
        target.go()
        assert cpus_allowed(supervisor) == ours()
