"""No privilege through the supervisor: a root supervisor makes sockets with the target's
credentials, read at every call (a daemon may drop privileges mid-life)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.conftest import (
    AS_NOBODY,
    MSTACK,
    NOBODY,
    PROBE,
    PYTHON,
    Netns,
    Stepper,
    mstack,
    needs_root,
    readable_copy,
    report,
    run,
    supervisors_of,
)

pytestmark = needs_root

# The interpreter and the probe must be reachable by nobody: /root is not.
USER_PYTHON = "/usr/bin/python3"


@pytest.fixture
def public_probe(shared_dir: Path) -> str:
    """A copy of the probe in a directory anyone may enter."""
    return readable_copy(PROBE, shared_dir)


def test_unprivileged_target_gets_exactly_its_native_permissions(netns: Netns,
                                                                 public_probe: str) -> None:
    command = (*AS_NOBODY, USER_PYTHON, public_probe, "privileged")
    native = report(netns.exec(*command))
    under = report(mstack(netns.name, *command))
    assert native == {
        "raw": {"errno": "EPERM"},
        "packet": {"errno": "EPERM"},
        "tcp": {"cookie": netns.cookie, "uid": NOBODY},
        "uid": NOBODY,
    }
    assert under == native


def test_root_target_keeps_its_privileges(netns: Netns) -> None:
    under = report(mstack(netns.name, PYTHON, PROBE, "privileged"))
    assert under == {
        "raw": {"cookie": netns.cookie, "uid": 0},
        "packet": {"cookie": netns.cookie, "uid": 0},
        "tcp": {"cookie": netns.cookie, "uid": 0},
        "uid": 0,
    }


def test_unprivileged_listener_is_owned_by_its_uid_in_ss(netns: Netns, public_probe: str) -> None:
    port = 40000 + os.getpid() % 20000  # a fresh namespace: any port is free
    # setpriv sits between mstack and the probe
    with Stepper(netns.name, *AS_NOBODY, steps=(f"listen,{port}",), python=USER_PYTHON,
                 probe_path=public_probe) as target:
        assert target.go() == {"cookie": netns.cookie, "uid": NOBODY}
        ss = netns.exec("ss", "-Htlne", f"sport = :{port}")
        assert f"127.0.0.1:{port} " in ss.stdout, ss.stdout
        assert f"uid:{NOBODY} " in ss.stdout + " ", ss.stdout


def test_daemon_dropping_privileges_loses_them_in_the_stack_too(netns: Netns) -> None:
    command = (PYTHON, PROBE, "drop", str(NOBODY))
    native = report(netns.exec(*command))
    under = report(mstack(netns.name, *command))
    assert native == {
        "before": {"cookie": netns.cookie, "uid": 0},
        "after": {"errno": "EPERM"},
        "tcp_after": {"cookie": netns.cookie, "uid": NOBODY},
    }
    assert under == native


@pytest.mark.parametrize(
    "wrapper",
    [
        (*AS_NOBODY, "--inh-caps=+net_raw", "--ambient-caps=+net_raw"),
        ("setpriv", "--bounding-set=-net_raw"),
        ("unshare", "--user", "--map-root-user"),
    ],
    ids=["nobody-with-cap_net_raw", "root-without-cap_net_raw", "root-of-a-user-ns"],
)
def test_capabilities_count_exactly_as_natively(netns: Netns, public_probe: str,
                                                wrapper: tuple[str, ...]) -> None:
    command = (*wrapper, USER_PYTHON, public_probe, "privileged")
    native = report(netns.exec(*command))
    assert report(mstack(netns.name, *command)) == native
    assert native["tcp"]["cookie"] == netns.cookie


def test_credentials_are_taken_per_thread(netns: Netns) -> None:
    command = (PYTHON, PROBE, "thread_creds", str(NOBODY))
    native = report(netns.exec(*command))
    under = report(mstack(netns.name, *command))
    in_ns = {"cookie": netns.cookie, "uid": 0}
    assert native == {
        "thread": {"switched": True, "raw": {"errno": "EPERM"},
                   "tcp": {"cookie": netns.cookie, "uid": NOBODY}},
        "main": {"raw": in_ns, "tcp": in_ns},
    }
    assert under == native


def test_user_who_may_not_enter_the_stack_gets_125(netns: Netns) -> None:
    with tempfile.TemporaryDirectory(prefix="mstack-cred-") as d:
        os.chmod(d, 0o777)  # so that the command, as nobody, could leave its marker
        marker = os.path.join(d, "ran")
        cp = run([*AS_NOBODY, MSTACK, netns.name, "sh", "-c", f"touch {marker}"])
        ran = os.path.exists(marker)
        assert not supervisors_of(marker)
    assert cp.returncode == 125, (cp.returncode, cp.stderr)
    assert netns.name in cp.stderr
    assert not ran
