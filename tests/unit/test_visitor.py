"""When the supervisor's loop may wait for a child in a caller's cgroup (visitor.Patience)."""

from __future__ import annotations

from mstack_bpf.supervisor.visitor import BACKOFF, SLOW, Patience


def test_a_slow_child_keeps_the_loop_from_waiting_for_a_while() -> None:
    patience = Patience()
    assert patience.allows(100.0)
    patience.took(100.0, 100.0 + SLOW / 2)  # a child that answered at once changes nothing
    assert patience.allows(100.0 + SLOW)
    patience.took(200.0, 200.0 + SLOW * 2)  # frozen, throttled: the next ones go elsewhere
    assert not patience.allows(200.0 + SLOW * 2)
    assert not patience.allows(200.0 + BACKOFF)
    assert patience.allows(200.0 + SLOW * 2 + BACKOFF)
