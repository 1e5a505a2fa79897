"""Pure formatting of socket events: the per-family table and the per-event line."""

from __future__ import annotations

from mstack_bpf.trace.events import Call, Event
from mstack_bpf.trace.summary import (
    EVENT_HEADER,
    Row,
    event_record,
    format_event,
    format_table,
    stack_name,
    summarize,
    type_name,
)

HOST, BLUE, OTHER = 4026531833, 4026532246, 4026532999
NAMES = {HOST: "native", BLUE: "blue"}
CLOEXEC = 0o2000000


def ev(
    call: Call = Call.SOCKET, family: int = 2, ret: int = 3, netns: int = HOST, *,
    fds: tuple[int, ...] | None = None, type: int = 1 | CLOEXEC, ia32: bool = False
) -> Event:
    """A traced call of curl (42): by default a socket() of ``family`` that returned fd 3."""
    return Event(
        ts_ns=1_000_000_000,
        pid=42,
        tid=42,
        ppid=1,
        comm="curl",
        call=call,
        family=family,
        type=type,
        protocol=0,
        ret=ret,
        fds=((ret,) if ret >= 0 else ()) if fds is None else fds,
        sock_netns=netns if ret >= 0 else 0,
        caller_netns=HOST,
        ia32=ia32,
    )


def test_stack_name() -> None:
    assert stack_name(HOST, NAMES) == "native"
    assert stack_name(BLUE, NAMES) == "blue"
    assert stack_name(OTHER, NAMES) == f"netns:[{OTHER}]"
    assert stack_name(0, NAMES) == "-"


def test_type_name() -> None:
    assert type_name(1) == "stream"
    assert type_name(2 | CLOEXEC | 0o4000) == "dgram|cloexec|nonblock"
    assert type_name(999 | CLOEXEC) == "#999|cloexec"
    assert type_name(0) == "default"
    assert type_name(-1) == "#-1"


def test_summary_counts_sockets_per_family_and_stack() -> None:
    events = [
        ev(),
        ev(ret=4),
        ev(netns=BLUE),
        ev(call=Call.SOCKETPAIR, family=1, ret=0, fds=(5, 6)),
        ev(call=Call.ACCEPT4, ret=7, netns=OTHER),
        ev(family=10, ret=-97),
        ev(family=10, ret=-97),
        ev(family=10, ret=-13),
        ev(call=Call.ACCEPT, ret=-11),  # EAGAIN on a non-blocking server: not a refusal
        ev(call=Call.MSOCKET, ret=0, fds=(), type=0),  # SOCK_DEFAULT: no socket
    ]
    rows = summarize(events, NAMES, family_stacks={10: "null"})
    assert rows == [
        Row(1, "native", 2, ()),
        Row(2, "blue", 1, ()),
        Row(2, "native", 2, ()),
        Row(2, f"netns:[{OTHER}]", 1, ()),
        Row(10, "null", 0, (("EAFNOSUPPORT", 2), ("EACCES", 1))),
    ]
    text = format_table(rows).splitlines()
    assert text[0].split() == ["FAMILY", "STACK", "SOCKETS", "REFUSED"]
    assert text[-1].split() == ["ipv6", "null", "0", "EAFNOSUPPORT×2,", "EACCES×1"]
    assert text[1].split() == ["unix", "native", "2", "-"]


def test_refusal_without_mapping_has_no_stack() -> None:
    assert summarize([ev(ret=-22)], NAMES) == [Row(2, "-", 0, (("EINVAL", 1),))]


def test_empty_table() -> None:
    assert format_table([]).splitlines()[1] == "(no socket calls)"


def test_event_line_columns() -> None:
    line = format_event(ev(netns=BLUE), NAMES, wall_offset_ns=0).split()
    header = EVENT_HEADER.split()
    assert len(line) == len(header)
    assert dict(zip(header[1:], line[1:], strict=True)) == {
        "PID": "42",
        "COMM": "curl",
        "CALL": "socket",
        "FAMILY": "ipv4",
        "TYPE": "stream|cloexec",
        "FD/ERR": "3",
        "STACK": "blue",
    }
    refused = format_event(ev(ret=-97, family=10), NAMES, 0).split()
    assert refused[-2:] == ["EAFNOSUPPORT", "-"]
    pair = format_event(ev(Call.SOCKETPAIR, family=1, ret=0, fds=(5, 6)), NAMES, 0).split()
    assert pair[3:] == ["socketpair", "unix", "stream|cloexec", "5,6", "native"]
    i386 = format_event(ev(ia32=True), NAMES, 0).split()
    assert i386[3] == "socket32"


def test_event_record_is_json_ready() -> None:
    record = event_record(ev(ret=-97, family=10), NAMES, wall_offset_ns=0)
    assert record["errno"] == "EAFNOSUPPORT"
    assert record["stack"] is None and record["sock_netns"] is None
    assert record["time"] == 1.0
    assert event_record(ev(), NAMES, 0)["stack"] == "native"
