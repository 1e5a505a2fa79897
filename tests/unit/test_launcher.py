"""Launcher checks that need no privileges: the kernel feature gate, command lookup, and
the launch plan for every shape of run."""

from __future__ import annotations

import dataclasses

import pytest

from mstack_bpf.core.errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    CommandNotExecutable,
    CommandNotFound,
    Unsupported,
)
from mstack_bpf.core.families import (
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_PACKET,
    AF_UNIX,
    ALL_FAMILIES,
)
from mstack_bpf.core.home import relative
from mstack_bpf.core.model import NULL, Mapping, Stack, StackKind
from mstack_bpf.launch import launcher
from mstack_bpf.launch.plan import LaunchPlan, plan
from mstack_bpf.linux import seccomp
from mstack_bpf.seccomp.filter import FilterSpec, compile_filter


def test_kernel_without_user_notification_fails_with_125_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp, "action_available", lambda action: False)
    with pytest.raises(Unsupported) as info:
        launcher.check_kernel()
    assert info.value.exit_code == EXIT_FAILED
    assert "SECCOMP_RET_USER_NOTIF" in str(info.value)
    assert info.value.hint and "5.14" in info.value.hint


def test_command_lookup_follows_env_conventions() -> None:
    with pytest.raises(CommandNotFound) as missing:
        launcher.find_command("no-such-command-anywhere")
    assert missing.value.exit_code == EXIT_NOT_FOUND
    with pytest.raises(CommandNotExecutable) as directory:
        launcher.find_command("/")
    assert directory.value.exit_code == EXIT_CANNOT_EXECUTE
    assert launcher.find_command("sh").endswith("/sh")


# --- the launch plan (launch/plan.py): every shape a run can take ---------------------------

BLUE = Stack(StackKind.NETNS, "blue", "/run/netns/blue")
IP = frozenset({AF_INET, AF_INET6, AF_NETLINK, AF_PACKET})


def _plan(mapping: Mapping, chosen: frozenset[int] = ALL_FAMILIES, *, verbose: int = 0,
          no_new_privs: bool = False, root: bool = True, nested: bool = False,
          home: bool = False) -> LaunchPlan:
    return plan(mapping, chosen, verbose=verbose, no_new_privs=no_new_privs, root=root,
                nested=nested, home=home)


def test_redirected_families_get_a_supervised_filter() -> None:
    p = _plan(Mapping().with_families(IP, BLUE))
    assert p.supervised and not p.watcher and not p.nested and not p.no_new_privs
    assert p.filter == tuple(compile_filter(FilterSpec.from_mapping(Mapping().with_families(
        IP, BLUE))))


def test_locked_native_and_null_need_no_supervisor() -> None:
    p = _plan(Mapping().with_families(IP, NULL).locked_all())
    assert not p.supervised and not p.watcher and p.filter is not None


def test_verbose_without_supervision_starts_a_watcher_and_holds_exit() -> None:
    mapping = Mapping().with_families(IP, NULL).locked_all()
    p = _plan(mapping, verbose=1)
    assert p.watcher and not p.supervised
    held = dataclasses.replace(FilterSpec.from_mapping(mapping), hold_exit=True)
    assert p.filter == tuple(compile_filter(held))
    assert _plan(Mapping().with_families(IP, BLUE), verbose=2).watcher is False


def test_unprivileged_runs_set_no_new_privs() -> None:
    assert _plan(Mapping(), root=False).no_new_privs
    assert _plan(Mapping(), no_new_privs=True).no_new_privs
    assert not _plan(Mapping()).no_new_privs


def test_nested_unlocked_installs_nothing() -> None:
    p = _plan(Mapping().with_families(IP, BLUE), IP, nested=True, root=False)
    assert p == LaunchPlan(nested=True, filter=None, supervised=False, watcher=False,
                           no_new_privs=False)


def test_nested_lock_adds_a_listener_less_filter() -> None:
    mapping = Mapping().with_families(IP, NULL).locked_all()
    p = _plan(mapping, IP, nested=True, root=False, verbose=1)
    spec = FilterSpec.nested_lock(mapping, IP)
    assert p.nested and not p.supervised and p.no_new_privs
    assert p.watcher  # -v: a watcher traces this mstack's subtree
    assert p.filter == tuple(compile_filter(spec)) and not spec.supervised


def test_a_nested_verbose_run_gets_a_watcher() -> None:
    """Nested, -v has no supervisor of its own to load the tracer: a watcher does."""
    nested = Mapping().with_families(IP, BLUE)
    assert _plan(nested, IP, nested=True, verbose=1).watcher
    assert not _plan(nested, IP, nested=True, verbose=0).watcher


def test_a_home_under_a_lock_or_a_policy_may_not_change_its_namespace() -> None:
    """The home's families follow the caller's namespace: with any lock, or a policy, the
    filter refuses setns and new network/user namespaces, even where no family is locked
    native (in the home, native is a namespace stack of its own)."""
    start = Stack(StackKind.NETNS, "native", "netns:[1]")
    unlocked_home = Mapping().with_families(IP, BLUE)
    seen = Mapping(dict(unlocked_home.table), frozenset({AF_UNIX}))  # only unix locked
    relative_seen = relative(seen, BLUE, start)
    guarded = _plan(relative_seen, home=True)
    assert guarded.filter == tuple(compile_filter(dataclasses.replace(
        FilterSpec.from_mapping(relative_seen), lock_any=True, lock_native=True)))
    assert _plan(relative_seen).filter == tuple(compile_filter(
        FilterSpec.from_mapping(relative_seen)))  # without a home: as the mapping says
    free = relative(unlocked_home, BLUE, start)
    assert _plan(free, home=True).filter == tuple(compile_filter(FilterSpec.from_mapping(free)))
