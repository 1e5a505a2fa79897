"""A call whose caller is still waiting is always answered. When reading the caller's
credentials fails as if it had gone (ESRCH) while its call is still pending, the supervisor
replies with that errno instead of dropping the call, which would leave the caller waiting
for good; a call whose caller has really gone is dropped. Driven with a real listener and
caller (the ``caller`` fixture, tests/helpers/listener_child.py) and a stack that is our own
namespace."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator

import pytest

from mstack_bpf.core.model import Mapping, Stack, StackKind
from mstack_bpf.stacks.resolve import open_stack
from mstack_bpf.supervisor.factory import StackSockets, Target
from mstack_bpf.supervisor.loop import Supervisor
from mstack_bpf.supervisor.registry import StackRegistry
from mstack_bpf.supervisor.tables import Tables
from tests.conftest import needs_root
from tests.helpers.listener_child import Caller

pytestmark = needs_root
HERE = Stack(StackKind.NETNS, "here", "/proc/self/ns/net")


class CredsFail(StackSockets):
    """Reading the caller's credentials fails with ESRCH, after ``before`` has run."""

    def __init__(self, before: Callable[[], None]) -> None:
        super().__init__()
        self.before = before

    def target(self, tid: int, family: int, sock_type: int, protocol: int) -> Target:
        self.before()
        raise OSError(errno.ESRCH, "ioctl(PIDFD_GET_INFO)")


@pytest.fixture
def serve_one(caller: Caller) -> Iterator[Callable[[Callable[[], None]], list[int]]]:
    """Answer the caller's AF_UNIX socket() (redirected to HERE): the results it saw."""
    opened = open_stack(HERE)
    results: list[int] = []

    def serve(before: Callable[[], None]) -> list[int]:
        mapping = Mapping().with_families({socket.AF_UNIX}, HERE)
        sup = Supervisor(caller.listener, Tables(mapping), StackRegistry([opened]),
                         CredsFail(before))
        sup.observers.append(lambda tid, call, outcome, result: results.append(result))
        assert sup.handle_one()
        return results

    try:
        yield serve
    finally:
        os.close(opened.fd)


def test_a_waiting_caller_gets_the_errno(caller: Caller, serve_one: Callable[
        [Callable[[], None]], list[int]]) -> None:
    assert serve_one(lambda: None) == [-errno.ESRCH]
    assert caller.report()["errno"] == errno.ESRCH


def test_a_caller_that_has_gone_is_dropped(caller: Caller, serve_one: Callable[
        [Callable[[], None]], list[int]]) -> None:
    assert serve_one(caller.kill) == [-errno.ENOENT]
