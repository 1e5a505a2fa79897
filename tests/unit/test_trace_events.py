"""The ctypes mirror of ``struct socktrace_event`` matches the C side."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from mstack_bpf.trace import events
from mstack_bpf.trace.events import Call, Event, RawEvent, layout_mismatch

REPO = Path(__file__).resolve().parents[2]


def test_size_matches_header_constant() -> None:
    header = (REPO / "bpf" / "socktrace.h").read_text()
    size = re.search(r"#define SOCKTRACE_EVENT_SIZE (\d+)", header)
    comm = re.search(r"#define SOCKTRACE_COMM_LEN (\d+)", header)
    assert size and comm
    assert ctypes.sizeof(RawEvent) == events.EVENT_SIZE == int(size.group(1))
    assert int(comm.group(1)) == events.COMM_LEN


def test_layout_matches_compiled_object_btf() -> None:
    from mstack_bpf.linux import libbpf
    from mstack_bpf.trace.tracer import default_object_path

    path = default_object_path()
    if not path.is_file():
        pytest.skip(f"{path} not built (make -C bpf)")
    try:
        obj = libbpf.BpfObject(str(path))  # parsing the ELF needs no privilege
    except libbpf.LibbpfMissing as exc:
        pytest.skip(str(exc))
    try:
        layout = obj.struct_layout("socktrace_event")
    finally:
        obj.close()
    assert layout_mismatch(layout) is None
    assert layout.offsets["comm"] == RawEvent.comm.offset


def test_layout_mismatch_names_the_field() -> None:
    from mstack_bpf.linux.libbpf import StructLayout

    good = {name: getattr(RawEvent, name).offset for name, *_ in RawEvent._fields_}
    assert layout_mismatch(StructLayout(80, good)) is None
    assert "bytes" in (layout_mismatch(StructLayout(88, good)) or "")
    assert "ret" in (layout_mismatch(StructLayout(80, {**good, "ret": 40})) or "")


def test_from_bytes() -> None:
    raw = RawEvent(
        ts_ns=5,
        pid=10,
        tid=11,
        ppid=1,
        call=2,
        family=1,
        type=1,
        protocol=0,
        ret=0,
        sock_netns=7,
        caller_netns=7,
        flags=1,
        comm=b"sh",
    )
    raw.fd[0], raw.fd[1] = 3, 4
    event = Event.from_bytes(bytes(raw))
    assert event.call is Call.SOCKETPAIR and event.fds == (3, 4) and event.sockets == 2
    assert event.comm == "sh" and event.ia32 and event.ok and event.errno == 0
    raw.ret, raw.fd[0], raw.fd[1] = -97, -1, -1
    failed = Event.from_bytes(bytes(raw))
    assert failed.fds == () and failed.errno == 97 and not failed.ok
    with pytest.raises(ValueError, match="short"):
        Event.from_bytes(b"\0" * 10)
    raw.call = 99
    with pytest.raises(ValueError, match="unknown call"):
        Event.from_bytes(bytes(raw))


def test_config_layout_matches_compiled_object_btf() -> None:
    from mstack_bpf.linux import libbpf
    from mstack_bpf.trace.tracer import _Config, default_object_path

    path = default_object_path()
    if not path.is_file():
        pytest.skip(f"{path} not built (make -C bpf)")
    try:
        obj = libbpf.BpfObject(str(path))
    except libbpf.LibbpfMissing as exc:
        pytest.skip(str(exc))
    try:
        layout = obj.struct_layout("socktrace_config")
    finally:
        obj.close()
    assert layout.size == ctypes.sizeof(_Config)
    assert layout.offsets == {name: getattr(_Config, name).offset for name, *_ in _Config._fields_}
