"""Policy files (mstack-policy(5)): every key, every error with its FILE:LINE, the examples."""

from __future__ import annotations

import os
import random
import re
import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from mstack_bpf.core import tomlscan
from mstack_bpf.core.errors import EXIT_FAILED, EXIT_USAGE, StackError
from mstack_bpf.core.families import (
    AF_BLUETOOTH,
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_PACKET,
    AF_UNIX,
    ALL_FAMILIES,
)
from mstack_bpf.core.model import NATIVE, NULL, Stack, StackKind
from mstack_bpf.core.policy import Policy, PolicyError, parse_policy
from mstack_bpf.core.tomlscan import MAX_DEPTH, MAX_KEY_PARTS
from mstack_bpf.launch import policy as launch_policy
from mstack_bpf.launch.policy import MAX_SIZE, check_policy, check_stacks, load_policy, open_policy

POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"
IP = {AF_INET, AF_INET6, AF_NETLINK, AF_PACKET}
SRC = "p.toml"


def parse(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text), SRC)


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse(text)
    return info.value.errors


def one_error(text: str) -> str:
    found = errors(text)
    assert len(found) == 1, found
    return found[0]


def netns_stack(name: str) -> Stack:
    return Stack(StackKind.NETNS, name)


# --- every key ----------------------------------------------------------------------------


def test_empty_policy_is_all_native_unlocked() -> None:
    p = parse("")
    assert p.mapping.table == dict.fromkeys(ALL_FAMILIES, NATIVE)
    assert p.mapping.locked == frozenset()
    assert p.mapping.allowed == ()
    assert (p.stacks, p.no_new_privs, p.description, p.source) == ((), False, "", SRC)


def test_description() -> None:
    assert parse('description = "x y"').description == "x y"


def test_stacks_and_families() -> None:
    p = parse("""\
        [stacks]
        build = "build"
        other = "/proc/1/ns/net"
        [families]
        ip = "build"
        unix = "native"
        bluetooth = "other"
        "#5" = "null"
        """)
    assert [(d.name, d.ref, d.line) for d in p.stacks] == [
        ("build", "build", 2), ("other", "/proc/1/ns/net", 3)]
    table = p.mapping.table
    assert all(table[f] == netns_stack("build") for f in IP)
    assert table[AF_UNIX] == NATIVE
    assert table[AF_BLUETOOTH] == netns_stack("other")
    assert table[5] is NULL
    assert table[3] is NATIVE  # neither mapped nor defaulted: native
    assert p.stack_def("other").line == 3


@pytest.mark.parametrize(("key", "family"), [
    ("u", AF_UNIX), ("ipv4", AF_INET), ("4", AF_INET), ("6", AF_INET6), ("n", AF_NETLINK),
    ("p", AF_PACKET), ("i", 23), ("b", AF_BLUETOOTH), ('"#45"', 45), ("IPv6", AF_INET6)])
def test_family_names_as_in_dash_o(key: str, family: int) -> None:
    assert parse(f'[families]\n{key} = "null"\n').mapping.table[family] is NULL


def test_all_is_a_default_not_a_mapping() -> None:
    p = parse("""\
        [families]
        all = "null"
        unix = "native"
        """)
    assert p.mapping.table[AF_UNIX] is NATIVE
    assert {f for f, s in p.mapping.table.items() if s is NULL} == ALL_FAMILIES - {AF_UNIX}


def test_inline_and_dotted_tables() -> None:
    p = parse("""\
        families = { ipv4 = "null" }
        lock.families = ["ipv4"]
        """)
    assert p.mapping.table[AF_INET] is NULL
    assert p.mapping.locked == {AF_INET}


@pytest.mark.parametrize(("value", "locked"), [
    ("true", ALL_FAMILIES), ("false", frozenset()), ('"all"', ALL_FAMILIES),
    ('"ip"', IP), ('["unix", "#30"]', {AF_UNIX, 30}), ("[]", frozenset()),
    ('["-unix"]', ALL_FAMILIES - {AF_UNIX}), ('["+ip", "-ipv6"]', IP - {AF_INET6})])
def test_lock_families(value: str, locked: frozenset[int]) -> None:
    assert parse(f"[lock]\nfamilies = {value}\n").mapping.locked == locked


def test_lock_without_families_locks_nothing() -> None:
    assert parse("[lock]\n").mapping.locked == frozenset()


def test_msocket_allow() -> None:
    p = parse("""\
        [stacks]
        a = "a"
        b = "/run/netns/b"
        [families]
        ipv4 = "a"
        [msocket]
        allow = ["b", "a", "b"]
        """)
    assert p.mapping.allowed == (netns_stack("b"), netns_stack("a"))
    assert [s.name for s in p.mapping.netns_stacks()] == ["a", "b"]


def test_msocket_allow_default_is_none() -> None:
    assert parse('[stacks]\na = "a"\n[msocket]\n').mapping.allowed == ()


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False)])
def test_no_new_privs(value: str, expected: bool) -> None:
    assert parse(f"[options]\nno_new_privs = {value}\n").no_new_privs is expected


# --- errors, each with its line -----------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('\n\nbogus = 1\n', "p.toml:3: unknown key 'bogus'"),
    ('[bogus]\nx = 1\n', "p.toml:1: unknown table 'bogus'"),
    ('[lock]\n\nfamily = true\n', "p.toml:3: [lock] unknown key 'family' (known: families)"),
    ('[msocket]\nallowed = []\n', "p.toml:2: [msocket] unknown key 'allowed'"),
    ('[options]\nnnp = true\n', "p.toml:2: [options] unknown key 'nnp'"),
    ('stacks = 1\n', "p.toml:1: stacks must be a table, not an integer"),
    ('families = "ip"\n', "p.toml:1: families must be a table, not a string"),
    ('description = 3\n', "p.toml:1: description must be a string, not an integer"),
    ('[families]\nfoo = "null"\n', "p.toml:2: [families] foo: unknown family: 'foo'"),
    ('[families]\n"#46" = "null"\n',
     "p.toml:2: [families] #46: family number out of range 1..45: '#46'"),
    ('[families]\n"#0" = "null"\n',
     "p.toml:2: [families] #0: family number out of range 1..45: '#0'"),
    ('[families]\n"#x" = "null"\n', "p.toml:2: [families] #x: not a family number: '#x'"),
    ('[families]\n"+ip" = "null"\n', "p.toml:2: [families] +ip: unknown family: '+ip'"),
    ('[families]\nip = "build"\n',
     "p.toml:2: [families] ip: undefined stack 'build' (define it in [stacks])"),
    ('[families]\nip = "/run/netns/x"\n',
     "p.toml:2: [families] ip: undefined stack '/run/netns/x' (paths go in [stacks])"),
    ('[families]\nip = 4\n',
     "p.toml:2: [families] ip: a stack name must be a string, not an integer"),
    ('[families]\nip = "null"\n4 = "native"\n',
     "p.toml:3: [families] 4: ipv4 mapped twice (also by 'ip' at line 2)"),
    ('[families]\nall = "null"\nALL = "native"\n',
     "p.toml:3: [families] ALL: default given twice (also 'all')"),
    ('[stacks]\nnull = "x"\n', "p.toml:2: [stacks] null: 'null' is built in"),
    ('[stacks]\nx = "native"\n', "p.toml:2: [stacks] x: 'native' is built in: use it"),
    ('[stacks]\nx = "/dev/net/null"\n', "p.toml:2: [stacks] x: '/dev/net/null' is built in"),
    ('[stacks]\nx = "a/b"\n', "p.toml:2: [stacks] x: relative path 'a/b': write it absolute"),
    ('[stacks]\nx = ""\n', "p.toml:2: [stacks] x: empty stack reference"),
    ('[stacks]\nx = 1\n', "p.toml:2: [stacks] x: must be a string, not an integer"),
    ('[stacks]\n"a b" = "x"\n', "p.toml:2: [stacks] a b: a stack name is letters"),
    ('[stacks]\n\nb.c = "x"\n', "p.toml:3: [stacks] b: must be a string, not a table"),
    ('[lock]\nfamilies = 1\n',
     "p.toml:2: [lock] families: must be an array of strings, not an integer"),
    ('[lock]\nfamilies = ["ip", 1]\n', "p.toml:2: [lock] families: items must be strings"),
    ('[lock]\nfamilies = [\n  "ip",\n  "wat",\n]\n',
     "p.toml:4: [lock] families: unknown family: 'wat'"),
    ('[msocket]\nallow = ["nope"]\n',
     "p.toml:2: [msocket] allow: undefined stack 'nope' (define it in [stacks])"),
    ('[msocket]\nallow = ["null"]\n',
     "p.toml:2: [msocket] allow: 'null' is built in: msocket may always name it"),
    ('[msocket]\nallow = "x"\n', "p.toml:2: [msocket] allow: undefined stack 'x'"),
    ('[options]\nno_new_privs = "yes"\n',
     "p.toml:2: [options] no_new_privs must be true or false, not a string"),
])
def test_error_line_and_message(text: str, expected: str) -> None:
    assert one_error(text).startswith(expected)


def test_locked_and_mapped_twice() -> None:
    assert errors("""\
        [families]
        ip = "null"
        ipv6 = "native"
        packet = "native"
        [lock]
        families = ["ipv6"]
        """) == ["p.toml:3: [families] ipv6: ipv6 locked and mapped twice (also by 'ip' at line 2)",
                 "p.toml:4: [families] packet: packet mapped twice (also by 'ip' at line 2)"]


def test_mapped_twice_names_every_overlap() -> None:
    found = errors("""\
        [families]
        ipv4 = "null"
        netlink = "null"
        ip = "native"
        """)
    assert found == ["p.toml:4: [families] ip: ipv4 mapped twice (also by 'ipv4' at line 2)",
                     "p.toml:4: [families] ip: netlink mapped twice (also by 'netlink' at line 3)"]


def test_all_errors_at_once_in_line_order() -> None:
    found = errors("""\
        bogus = 1
        [stacks]
        r = "rel/path"
        [families]
        ip = "nope"
        ipv4 = "native"
        foo = "null"
        [lock]
        families = ["wat"]
        [msocket]
        allow = ["r"]
        [options]
        no_new_privs = 1
        """)
    lines = [int(e.split(":")[1]) for e in found]
    assert lines == [1, 3, 5, 6, 7, 9, 11, 13], found
    assert all(e.startswith("p.toml:") for e in found)


def test_syntax_error_line() -> None:
    assert one_error('[families]\nip = "null"\nunix = \n') == (
        "p.toml:3: TOML syntax: Invalid value (column 8)")


def test_syntax_error_duplicate_key() -> None:
    assert one_error('[families]\nip = "null"\nip = "native"\n').startswith(
        "p.toml:3: TOML syntax: Cannot overwrite a value")


def test_syntax_error_at_end_of_document() -> None:
    assert one_error('[lock]\nfamilies = ["ip",\n').startswith("p.toml:2: TOML syntax:")


def test_comments_and_quoted_headers_do_not_confuse_lines() -> None:
    found = errors("""\
        [ "families" ]   # [lock]
        # foo = "null"
        s = '''
        foo = 1
        '''
        foo = "null"
        """)
    assert [e.split(": ")[0] for e in found] == ["p.toml:3", "p.toml:3", "p.toml:6"], found
    assert found[-1] == "p.toml:6: [families] foo: unknown family: 'foo'"


def test_policy_error_is_a_usage_error() -> None:
    with pytest.raises(PolicyError) as info:
        parse("x = 1\ny = 2\n")
    assert info.value.exit_code == EXIT_USAGE
    assert str(info.value) == "\n".join(info.value.errors)


# --- hostile text: only ever PolicyError, one line per error --------------------------------


def raw_errors(text: str) -> list[str]:
    """The errors of ``text`` as it is (no dedent), each checked to be one line."""
    with pytest.raises(PolicyError) as info:
        parse_policy(text, SRC)
    assert all(e.startswith(f"{SRC}:") and "\n" not in e for e in info.value.errors)
    return info.value.errors


@pytest.mark.parametrize(("text", "expected"), [
    # what looks like a multi-line string's end, in a multi-line string of the other kind
    ("description = '''\nhe said \"\"\"\n\"\\q\" = 1\n'''\n[families]\nfoo = \"null\"\n",
     ["p.toml:6: [families] foo: unknown family: 'foo'"]),
    ("description = \"\"\"\nit's '''\n\"\"\"\n[families]\nfoo = \"null\"\n",
     ["p.toml:5: [families] foo: unknown family: 'foo'"]),
    # an escaped quote and two more: the string goes on
    ('[families]\ns = """ \\""" ip = "null"\n[lock]\n"""\nfoo = "null"\n',
     ["p.toml:2: [families] s: unknown family: 's'", "p.toml:2: [families] s: undefined stack",
      "p.toml:5: [families] foo: unknown family"]),
    # a delimiter in a one-line string or a comment opens nothing
    ("a = \"'''\"\n[families]\n\"\\u0069p\" = \"bogus\"\n",
     ["p.toml:1: unknown key 'a'", "p.toml:3: [families] ip: undefined stack 'bogus'"]),
    ("[families] # '''\nfoo = \"null\"\n", ["p.toml:2: [families] foo: unknown family"]),
    # str.splitlines() ends a line at U+2028 and U+0085, TOML does not
    ('# \u2028"\\q" = 1\n[families]\nfoo = "null"\n', ["p.toml:3: [families] foo: unknown"]),
    ('d = "\x85[lock]"\n\n[families]\nfoo = "null"\n',
     ["p.toml:1: unknown key 'd'", "p.toml:4: [families] foo: unknown family"]),
    # an array holding an array is no [table]
    ('[families]\nx = [\n[1]\n]\nip = "bogus"\n', ["p.toml:2: [families] x: unknown family",
                                                  "p.toml:2: [families] x: a stack name must",
                                                  "p.toml:5: [families] ip: undefined stack"]),
    ('a = 1\n[[stacks]]\nx = "y"\n', ["p.toml:1: unknown key 'a'",
                                      "p.toml:2: stacks must be a table, not an array"]),
    ('[families]\r\n\r\nfoo = "null"\r\n', ["p.toml:3: [families] foo: unknown family"]),
])
def test_strings_and_comments_do_not_confuse_lines(text: str, expected: list[str]) -> None:
    found = raw_errors(text)
    assert len(found) == len(expected), found
    assert all(f.startswith(e) for f, e in zip(found, expected, strict=True)), found


def test_array_items_have_their_own_lines() -> None:
    found = errors("""\
        [lock]
        families = [
          "ip",  # "wat"
          '''wat''', 1, ["x"],
          "wat",
        ]
        """)
    assert [e.split(": ", 1)[0] for e in found] == ["p.toml:2", "p.toml:2", "p.toml:4",
                                                    "p.toml:5"], found


@pytest.mark.parametrize(("text", "line"), [
    ("x = " + "[" * 500 + "]" * 500 + "\n", 1),
    ("x = " + "{a = " * 500 + "}" * 500 + "\n", 1),
    ("x = " + "[" * 500 + "\n", 1),
    ("[options]\nno_new_privs = true\nx = [\n" + "[{a = " * (MAX_DEPTH // 2) + "\n", 4),
])
def test_deep_nesting_is_an_error_not_a_recursion_error(text: str, line: int) -> None:
    assert raw_errors(text) == [f"p.toml:{line}: TOML: arrays or inline tables nested deeper"
                                f" than {MAX_DEPTH}"]


def test_deep_nesting_within_the_limit() -> None:
    [found] = raw_errors("x = " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n")
    assert found.startswith("p.toml:1: unknown key 'x'")


def test_recursion_error_is_a_policy_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """tomllib's own RecursionError (were MAX_DEPTH too high) has its line too."""
    monkeypatch.setattr(tomlscan, "MAX_DEPTH", 10**6)
    text = "\n\nx = [[" + "[" * 2000 + "]" * 2002 + "\n"
    assert raw_errors(text) == ["p.toml:3: TOML: arrays or inline tables nested too deep"]


@pytest.mark.parametrize("text", [
    "a." * 20000 + "a = 1\n",
    "x = {" + "a." * 20000 + "a = 1}\n",
    "[" + "a . " * 20000 + "a]\n",
    "[[" + '"a".' * 20000 + "a]]\n",
])
def test_long_dotted_keys_are_refused_before_tomllib(text: str) -> None:
    """tomllib takes time quadratic in a key's parts: 20000 took 6 s and 1.5 GB."""
    start = time.monotonic()
    assert raw_errors(text) == [f"p.toml:1: TOML: a dotted key of more than {MAX_KEY_PARTS}"
                                " parts"]
    assert time.monotonic() - start < 2


def test_dotted_keys_within_the_limit() -> None:
    key = ".".join(["lock"] + ["a"] * (MAX_KEY_PARTS - 1))
    assert raw_errors(f"{key} = 1\n") == ["p.toml:1: [lock] unknown key 'a' (known: families)"]


def test_long_integers() -> None:
    """int() refuses more than 4300 digits (ValueError); hex integers and floats have none."""
    found = raw_errors("# 1" + "1" * 5000 + "\nh = 0x" + "f" * 5000 + "\n"
                       "f = 1" + "1" * 5000 + ".5\ni = " + "1_" * 5000 + "1\n")
    assert found == ["p.toml:4: TOML: an integer of more than 4300 digits"]


@pytest.mark.parametrize(("text", "expected"), [
    ('[families]\n"#' + "1" * 5000 + '" = "null"\n', "p.toml:2: [families] #111"),
    ('[lock]\nfamilies = ["#' + "0" * 5000 + '1"]\n', "p.toml:2: [lock] families: "),
])
def test_long_family_numbers(text: str, expected: str) -> None:
    [found] = raw_errors(text)
    assert found.startswith(expected) and "family number too long: '#" in found, found[:100]


@pytest.mark.parametrize(("text", "expected"), [
    ('[families]\n"foo\\nbar" = "null"\n',
     "p.toml:2: [families] 'foo\\nbar': unknown family: 'foo\\nbar'"),
    ('[stacks]\n"a\\u2028b" = "x"\n', "p.toml:2: [stacks] 'a\\u2028b': a stack name is"),
    ('[stacks]\nx = "/run/netns/a\\u0000b"\n',
     "p.toml:2: [stacks] x: '/run/netns/a\\x00b': a stack reference is printable text"),
    ('[stacks]\nx = "a\\nb"\n', "p.toml:2: [stacks] x: 'a\\nb': a stack reference is"),
])
def test_unprintable_keys_and_references(text: str, expected: str) -> None:
    """Each error stays on one line, and no NUL reaches open(2) (ValueError) at run time."""
    assert raw_errors(text)[0].startswith(expected)


_PIECES = ["'''", '"""', '\\"', "\\", "#", "[x]", "[[", "]]", "{", "}", "a = 1", "=", ".", ",",
           "'", '"', "\n", "\r", "\u2028", "\x85", "\x00", "\ufeff", "é", "[stacks]",
           "[families]", "ip", '"ip"', "1" * 5000, "0x", "[" * 40, "a." * 40, " ", "\t"]


def test_garbage_raises_only_policy_errors() -> None:
    rng = random.Random(12)
    for _ in range(2000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randrange(30)))
        try:
            parse_policy(text, SRC)
        except PolicyError as e:
            assert all(x.startswith(f"{SRC}:") and "\n" not in x for x in e.errors), e.errors


# --- files --------------------------------------------------------------------------------


def test_load_and_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[families]\nall = "null"\n')
    assert load_policy(str(good)).source == str(good)
    assert check_policy(str(good)) == []
    bad = tmp_path / "bad.toml"
    bad.write_text('[families]\nall = "null"\nfoo = "null"\nbar = "null"\n')
    assert [e.split(": ")[0] for e in check_policy(str(bad))] == [f"{bad}:3", f"{bad}:4"]


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert check_policy(str(missing)) == [f"{missing}: cannot read: No such file or directory"]
    assert check_policy(str(tmp_path)) == [f"{tmp_path}: cannot read: Is a directory"]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        locked = tmp_path / "locked.toml"
        locked.write_text("")
        locked.chmod(0)
        assert check_policy(str(locked)) == [f"{locked}: cannot read: Permission denied"]


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'[families]\n\n# caf\xe9\n')
    assert check_policy(str(f)) == [f"{f}:3: not UTF-8 text"]


@pytest.mark.parametrize("data", [bytes(range(256)), b"\x00" * 100, b"\xef\xbb\xbfx = 1\n",
                                  b"\x7fELF\x02\x01\x01" + bytes(100), b"a = \x07\n"])
def test_binary_garbage(tmp_path: Path, data: bytes) -> None:
    f = tmp_path / "garbage.toml"
    f.write_bytes(data)
    [found] = check_policy(str(f))
    assert re.match(rf"{re.escape(str(f))}:\d+: \S", found), found


@pytest.mark.timeout(10)
def test_special_files_are_not_read(tmp_path: Path) -> None:
    """A FIFO without a writer would block open(2); /dev/zero would be read forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert check_policy(str(fifo)) == [f"{fifo}: cannot read: not a regular file (a FIFO)"]
    assert check_policy("/dev/null") == [
        "/dev/null: cannot read: not a regular file (a character device)"]
    sock = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        assert check_policy(str(sock)) == [f"{sock}: cannot read: No such device or address"]


def test_size_limit(tmp_path: Path) -> None:
    f = tmp_path / "big.toml"
    f.write_text("#" * (MAX_SIZE - 1) + "\n")
    assert check_policy(str(f)) == []
    f.write_text("#" * MAX_SIZE + "\n")
    assert check_policy(str(f)) == [f"{f}: cannot read: larger than {MAX_SIZE >> 10} KiB"]


def test_size_limit_while_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grew after fstat(2), or whose size says 0 (/proc), is read no further."""
    monkeypatch.setattr(launch_policy, "_refused", lambda st: None)
    f = tmp_path / "big.toml"
    f.write_text("#" * MAX_SIZE * 3)
    asked: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        asked.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    assert check_policy(str(f)) == [f"{f}: cannot read: larger than {MAX_SIZE >> 10} KiB"]
    assert 0 < sum(asked) <= MAX_SIZE + 1


def test_odd_paths(tmp_path: Path) -> None:
    assert check_policy("a\0b") == ["'a\\x00b': cannot read: embedded null byte"]
    f = tmp_path / "new\nline.toml"
    f.write_text("\nbogus = 1\n")
    [found] = check_policy(str(f))
    assert found.startswith(f"{str(f)!r}:2: unknown key 'bogus'")


# --- stacks at run time -------------------------------------------------------------------


def _policy_with(tmp_path: Path, **refs: str) -> Policy:
    lines = ["[stacks]", *(f'{name} = "{ref}"' for name, ref in refs.items()), "[families]"]
    lines += [f'"#{n}" = "{name}"' for n, name in enumerate(refs, 2)]
    f = tmp_path / "stacks.toml"
    f.write_text("\n".join(lines) + "\n")
    return load_policy(str(f))


def test_check_stacks_reports_missing_and_not_netns(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    missing = tmp_path / "missing"
    bare = f"mstack-test-{uuid.uuid4().hex[:8]}"
    p = _policy_with(tmp_path, own="/proc/self/ns/net", plain=str(plain),
                     missing=str(missing), bare=bare)
    src = p.source
    found = check_stacks(p)
    assert len(found) == 3, found
    assert found[0].startswith(f"{src}:3: stack plain: {plain}: not a network namespace")
    assert found[1] == f"{src}:4: stack missing: {missing}: No such file or directory"
    assert found[2].startswith(f"{src}:5: stack bare: {bare}: no such stack")


def test_check_stacks_ok(tmp_path: Path) -> None:
    assert check_stacks(_policy_with(tmp_path, own="/proc/self/ns/net")) == []


def test_open_policy_resolves_and_holds_stacks(tmp_path: Path) -> None:
    p = _policy_with(tmp_path, own="/proc/self/ns/net")
    mapping, opened = open_policy(p)
    try:
        own = Stack(StackKind.NETNS, "own", "/proc/self/ns/net")
        assert mapping.table[2] == own
        assert [o.stack for o in opened] == [own]
        assert opened[0].ino == os.stat("/proc/self/ns/net").st_ino
    finally:
        for o in opened:
            os.close(o.fd)


def test_open_policy_names_file_and_line(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    p = _policy_with(tmp_path, own="/proc/self/ns/net", plain=str(plain))
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(StackError) as info:
        open_policy(p)
    assert str(info.value).startswith(f"{p.source}:3: stack plain: ")
    assert info.value.exit_code == EXIT_FAILED
    assert set(os.listdir("/proc/self/fd")) == before  # "own" was closed again


def test_open_policy_skips_unused_stacks(tmp_path: Path) -> None:
    f = tmp_path / "unused.toml"
    f.write_text('[stacks]\nunused = "/nonexistent/x"\n')
    mapping, opened = open_policy(load_policy(str(f)))
    assert opened == () and mapping.table == dict.fromkeys(ALL_FAMILIES, NATIVE)
    assert len(check_stacks(load_policy(str(f)))) == 1  # but --check-policy reports it


# --- the example policies -----------------------------------------------------------------


def test_examples_exist_and_parse() -> None:
    names = sorted(p.name for p in POLICY_DIR.glob("*.toml"))
    assert names == ["ip-only-through-build.toml", "lockdown.toml", "no-raw-packet.toml"]
    for name in names:
        assert check_policy(str(POLICY_DIR / name)) == [], name


def test_example_lockdown() -> None:
    p = load_policy(str(POLICY_DIR / "lockdown.toml"))
    assert p.mapping.table == {**dict.fromkeys(ALL_FAMILIES, NULL), AF_UNIX: NATIVE}
    assert p.mapping.locked == ALL_FAMILIES
    assert not p.mapping.needs_supervisor()


def test_example_ip_only_through_build(tmp_path: Path) -> None:
    p = load_policy(str(POLICY_DIR / "ip-only-through-build.toml"))
    build = netns_stack("build")
    assert p.mapping.table == {**dict.fromkeys(ALL_FAMILIES, NULL), AF_UNIX: NATIVE,
                               **dict.fromkeys(IP, build)}
    assert p.mapping.locked == ALL_FAMILIES and p.mapping.allowed == ()
    assert [d.ref for d in p.stacks] == ["build"]
    # the same policy with the stack substituted by a namespace that exists here
    text = (POLICY_DIR / "ip-only-through-build.toml").read_text()
    assert 'build = "build"' in text
    f = tmp_path / "substituted.toml"
    f.write_text(text.replace('build = "build"', 'build = "/proc/self/ns/net"'))
    mapping, opened = open_policy(load_policy(str(f)))
    try:
        assert mapping.table[AF_INET] == Stack(StackKind.NETNS, "build", "/proc/self/ns/net")
        assert len(opened) == 1
    finally:
        os.close(opened[0].fd)


def test_example_no_raw_packet() -> None:
    p = load_policy(str(POLICY_DIR / "no-raw-packet.toml"))
    assert p.mapping.table == {**dict.fromkeys(ALL_FAMILIES, NATIVE), AF_PACKET: NULL}
    assert p.mapping.locked == {AF_PACKET}
    text = (POLICY_DIR / "no-raw-packet.toml").read_text()
    assert "SOCK_RAW" in text and "Does NOT cover" in text
