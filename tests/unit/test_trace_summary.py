"""Pure formatting of socket events: the per-family table and the per-event line."""

from __future__ import annotations

import dataclasses

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
    assert refused[-3:-1] == ["EAFNOSUPPORT", "-"]
    pair = format_event(ev(Call.SOCKETPAIR, family=1, ret=0, fds=(5, 6)), NAMES, 0).split()
    assert pair[3:] == ["socketpair", "unix", "5,6", "native", "stream|cloexec"]
    i386 = format_event(ev(ia32=True), NAMES, 0).split()
    assert i386[3] == "socket32"


def test_event_columns_hold_with_the_longest_values() -> None:
    """The longest TYPE (every flag) and errno names stay in their columns: TYPE is last,
    so every other column starts where the header's does."""
    header = EVENT_HEADER
    starts = [header.index(name) for name in ("CALL", "FAMILY", "FD/ERR", "STACK", "TYPE")]
    long_type = 5 | 0o2000000 | 0o4000  # seqpacket|cloexec|nonblock
    for event in (ev(type=long_type), ev(ret=-93, type=long_type, netns=0)):  # EPROTONOSUPPORT
        line = format_event(event, NAMES, 0)
        for start in starts:
            assert line[start - 1] == " " and line[start] != " ", (line, start)
    assert format_event(ev(type=long_type), NAMES, 0).endswith("seqpacket|cloexec|nonblock")


def test_event_record_is_json_ready() -> None:
    record = event_record(ev(ret=-97, family=10), NAMES, wall_offset_ns=0)
    assert record["errno"] == "EAFNOSUPPORT"
    assert record["stack"] is None and record["sock_netns"] is None
    assert record["time"] == 1.0
    assert event_record(ev(), NAMES, 0)["stack"] == "native"


def test_a_refusal_shows_on_the_row_of_the_stack_its_family_is_mapped_to() -> None:
    """ICMP refused by blue's own kernel (its ping_group_range) is blue's, on ipv4's one row;
    an msocket that named a stack of its own has no known stack."""
    events = [ev(netns=BLUE), ev(ret=-13)]
    assert summarize(events, NAMES, {2: "blue"}) == [Row(2, "blue", 1, (("EACCES", 1),))]
    named = dataclasses.replace(ev(Call.MSOCKET, ret=-97), named=True)
    default = ev(Call.MSOCKET, ret=-97)
    assert summarize([named, default], NAMES, {2: "blue"}) == [
        Row(2, "-", 0, (("EAFNOSUPPORT", 1),)), Row(2, "blue", 0, (("EAFNOSUPPORT", 1),))]


def test_the_record_says_whether_mstack_made_the_call() -> None:
    assert event_record(ev(), NAMES, 0)["mstack"] is False
    assert event_record(dataclasses.replace(ev(), mstack=True), NAMES, 0)["mstack"] is True
