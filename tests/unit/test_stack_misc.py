"""State records, interface names, NAT ruleset, CLI usage errors (no privileges)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from mstack_bpf.cli.stack import main
from mstack_bpf.stacks import veth
from mstack_bpf.stacks.state import Proc, StackState, load, proc_start_time, save


def test_state_roundtrip(tmp_path: os.PathLike[str]) -> None:
    st = StackState("x", "user", "user-net", "/proc/1/ns/net", 5, backend="pasta")
    st.procs = [Proc.of(os.getpid(), "holder")]
    save(str(tmp_path), st)
    again = load(str(tmp_path))
    assert again == st
    assert again is not None and again.procs[0].alive()
    assert load(str(tmp_path) + "/missing") is None


def test_proc_identity() -> None:
    me = Proc.of(os.getpid(), "me")
    assert me.start == proc_start_time(os.getpid())
    assert not Proc(me.pid, me.start + 1, "other").alive()  # a recycled pid is not ours


def test_host_ifname() -> None:
    assert veth.host_ifname("lan") == "ms-lan"
    long = veth.host_ifname("a-very-long-stack-name")
    assert len(long) <= 15 and long.startswith("ms-a-very")
    assert long != veth.host_ifname("a-very-long-stack-nameX")


def test_nat_ruleset() -> None:
    text = veth.nat_ruleset("mstack-x", "ip", "10.9.0.0/30", "ms-x")
    assert "table ip mstack-x" in text
    assert 'ip saddr 10.9.0.0/30 oifname != "ms-x" masquerade' in text


@pytest.mark.parametrize(
    "args",
    [
        ["add", "bad/name"],
        ["add", "null"],
        ["add", "x", "--addr", "10.0.0.0/30"],
        ["add", "x", "--veth", "--user-net"],
        ["add", "x", "--veth", "--addr", "10.0.0.0/30", "--range", "10.0.0.0/16"],
        ["add", "x", "--veth", "--addr", "10.0.0.1"],
        ["add", "x", "--backend", "pasta"],
        ["add", "x", "--user-net", "--backend", "vde"],
        ["add", "x", "--dns", "not-an-ip"],
        ["del", "a b"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
