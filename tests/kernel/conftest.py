"""Fixtures of the kernel-level tests (root, namespaces, seccomp listeners)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Netns
from tests.helpers.listener_child import Caller, started_caller


@pytest.fixture(params=[None], ids=["free"])
def caller(request: pytest.FixtureRequest) -> Iterator[Caller]:
    """A child waiting in its socket() call on a listener the test holds; parametrize it
    indirectly with a CPU list to start the child with that affinity."""
    with started_caller(request.param) as child:
        yield child


@pytest.fixture
def netns_name(netns: Netns) -> str:
    """Just the name of a fresh namespace (loopback up; always removed)."""
    return netns.name
