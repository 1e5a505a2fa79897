"""CpuSet (linux/sched.py): the kernel's cpu_set_t bytes, compared without conversion."""

from __future__ import annotations

from mstack_bpf.linux.sched import CpuSet


def test_single_cpus() -> None:
    assert CpuSet.only(0).raw == b"\x01"
    assert CpuSet.only(9).raw == b"\x00\x02"
    assert 9 in CpuSet.only(9) and 8 not in CpuSet.only(9) and 100 not in CpuSet.only(9)
    assert CpuSet.only(3) is CpuSet.only(3)  # made once


def test_trailing_zeros_do_not_count() -> None:
    kernel = CpuSet(b"\x03" + bytes(31))  # as sched_getaffinity returns it
    assert kernel == CpuSet(b"\x03") and hash(kernel) == hash(CpuSet(b"\x03"))
    assert len(kernel) == 2 and 0 in kernel and 1 in kernel and 2 not in kernel
    assert kernel != CpuSet.only(1)
    assert repr(kernel) == "CpuSet([0, 1])"
    assert -1 not in kernel and "0" not in kernel
