"""What a tree can make its supervisor hold is bounded: namespaces named in msocket, and the
sockets kept for interface ioctls (registry.py, factory.py)."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from mstack_bpf.linux import netns as netns_mod
from mstack_bpf.supervisor import factory, registry
from mstack_bpf.supervisor.factory import StackSockets
from mstack_bpf.supervisor.registry import StackRegistry
from tests.conftest import MakeNetns, needs_root

pytestmark = needs_root


def test_namespaces_named_at_run_time_are_bounded(make_netns: MakeNetns,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "MAX_NAMED", 2)
    a, b, c = (make_netns() for _ in range(3))
    reg, sockets = StackRegistry(()), StackSockets()
    try:
        me = os.getpid()  # opened as this (root) process would open them
        named = [reg.open_for_target(ns.path.encode(), me, sockets, lambda: True)
                 for ns in (a, b)]
        assert len({s.path for s in named}) == 2
        again = reg.open_for_target(a.path.encode(), me, sockets, lambda: True)
        assert again == named[0]  # a known namespace costs nothing more
        with pytest.raises(OSError) as e:
            reg.open_for_target(c.path.encode(), me, sockets, lambda: True)
        assert e.value.errno == errno.EAGAIN
    finally:
        reg.close()
        sockets.close()


def test_interface_ioctl_sockets_are_bounded(make_netns: MakeNetns,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "IOCTL_SOCKETS", 2)
    spaces = [make_netns() for _ in range(3)]
    fds = [netns_mod.open_netns(f"/run/netns/{ns.name}") for ns in spaces]
    seen: list[int | bool] = []  # three fds, then whether the third socket was kept

    def body() -> None:  # in a thread of its own: the sockets are made by setns(2)
        sockets = StackSockets()
        try:
            made = [sockets.ioctl_socket(fd, netns_mod.ns_inode(fd)) for fd in fds]
            seen.extend(s.fileno() for s in made)
            seen.append(sockets.ioctl_socket(fds[2], netns_mod.ns_inode(fds[2])) is made[2])
        finally:
            sockets.close()

    worker = threading.Thread(target=body)
    try:
        worker.start()
        worker.join()
    finally:
        for fd in fds:
            os.close(fd)
    assert seen[0] == -1  # the oldest was closed
    assert seen[1] >= 0 and seen[2] >= 0
    assert seen[3] is True
