"""mstack-agent's pure parts: the runtime's message, the mapping grammar, the allow-list
configuration and the profile it prints."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mstack_bpf.agent.config import AgentConfig, ConfigError, parse_config
from mstack_bpf.agent.message import MessageError, parse
from mstack_bpf.agent.profile import (
    WAIT_KILLABLE,
    ProfileError,
    notify_profile,
    oci_seccomp,
    waits_killably,
)
from mstack_bpf.agent.request import Request, RequestError, choose, parse_metadata
from mstack_bpf.core.families import ALL_FAMILIES
from mstack_bpf.core.model import NATIVE, NULL, Stack, StackKind

IP = frozenset({2, 10, 16, 17})


def message(**over: Any) -> bytes:
    doc: dict[str, Any] = {
        "ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": 0, "metadata": "",
        "state": {"ociVersion": "1.0.2", "id": "abc", "status": "creating", "pid": 42,
                  "bundle": "/b", "annotations": {"io.mstack.stack": "blue"}}}
    doc.update(over)
    return json.dumps(doc).encode()


# --- message ---------------------------------------------------------------------------


def test_message_names_container_listener_and_annotations() -> None:
    arrival = parse(message(fds=["other", "seccompFd"]), 2)
    assert (arrival.container, arrival.listener) == ("abc", 1)
    assert arrival.annotations == {"io.mstack.stack": "blue"}
    assert parse(message(metadata="stack=x"), 1).metadata == "stack=x"
    assert arrival.bundle == "/b"


@pytest.mark.parametrize("data, fds, why", [
    (b"\xff garbage", 1, "not JSON"),
    (b"[1, 2]", 1, "not a JSON object"),
    (b"[" * 100000, 1, "not JSON"),
    (message(fds=[]), 1, "seccompFd"),
    (message(), 0, "1 descriptors, 0 came"),
    (message(state="x"), 1, '"state" is not'),
    (message(state={"annotations": {}}), 1, "state.id"),
    (message(state={"id": "a", "annotations": {"k": 1}}), 1, "annotation 'k'"),
    (message(metadata=7), 1, "metadata"),
    (message(state={"id": "a", "bundle": ["/b"]}), 1, "state.bundle"),
])
def test_message_refused(data: bytes, fds: int, why: str) -> None:
    with pytest.raises(MessageError, match=why):
        parse(data, fds)


def test_message_without_annotations_or_metadata() -> None:
    arrival = parse(message(state={"id": "c", "annotations": None}, metadata=None), 1)
    assert (arrival.annotations, arrival.metadata) == ({}, "")


# --- request grammar -------------------------------------------------------------------


def test_metadata_grammar() -> None:
    assert parse_metadata("stack=vpn; families=ipv4") == Request(
        "metadata", "vpn", frozenset({2}))
    assert parse_metadata("  stack=/run/netns/a  families=ip,-ipv6 ") == Request(
        "metadata", "/run/netns/a", frozenset({2, 16, 17}))
    assert parse_metadata("stack=b") == Request("metadata", "b", ALL_FAMILIES)
    assert parse_metadata("policy=lockdown") == Request("metadata", policy="lockdown")
    assert parse_metadata(" ; ") is None


@pytest.mark.parametrize("text, why", [
    ("stack", "not KEY=VALUE"),
    ("stack=a stack=b", "given twice"),
    ("stak=a", "unknown key 'stak'"),
    ("stack=", "empty"),
    ("families=ip", "families without stack"),
    ("stack=a families=ipx", "unknown family"),
    ("stack=a policy=p", "goes alone"),
    ("policy=../etc/x", "not a policy name"),
    ("policy=/etc/x", "not a policy name"),
])
def test_metadata_refused(text: str, why: str) -> None:
    with pytest.raises(RequestError, match=why):
        parse_metadata(text)


def test_annotations_and_which_counts() -> None:
    notes = {"io.mstack.stack": "b", "io.mstack.families": "ip", "other": "x"}
    assert choose("", notes, True) == Request("annotations", "b", IP)
    assert choose("stack=null", notes, True) == Request("metadata", "null")  # authoritative
    assert choose("", {"other": "x"}, True) is None
    assert choose("", {"other": "x"}, False) is None
    with pytest.raises(RequestError, match="not honoured"):
        choose("", notes, False)
    with pytest.raises(RequestError, match="'io.mstack.stak'"):
        choose("", {"io.mstack.stak": "b"}, True)
    with pytest.raises(RequestError, match="io.mstack.families without io.mstack.stack"):
        choose("", {"io.mstack.families": "ip"}, True)


# --- configuration ---------------------------------------------------------------------


def test_default_config_allows_run_netns_names_only() -> None:
    config = AgentConfig()
    assert config.stack("blue") == Stack(StackKind.NETNS, "blue", "/run/netns/blue")
    assert config.stack("/run/netns/blue").path == "/run/netns/blue"
    assert config.stack("null") == NULL and config.stack("native") == NATIVE
    for name in ("/proc/1/ns/net", "/run/netns/../../proc/1/ns/net", "/run/netns/a/b",
                 "/run/netns", "/run/netns/", "/var/run/netns/blue", "..", "a/b", ""):
        with pytest.raises(RequestError):
            config.stack(name)


def test_config_file() -> None:
    config = parse_config('allow = ["vpn", "/srv/ns/*", "/proc/1/ns/net"]\n'
                          'annotations = false\npolicy_dir = "/etc/p"\n', "agent.toml")
    assert config.allow == ("/run/netns/vpn", "/srv/ns/*", "/proc/1/ns/net")
    assert not config.annotations and config.policy_dir == "/etc/p"
    assert config.allows("/srv/ns/x") and config.allows("/proc/1/ns/net")
    assert not config.allows("/run/netns/other") and not config.allows("/srv/ns/x/y")
    with pytest.raises(RequestError, match="not allowed by agent.toml"):
        config.stack("other")


@pytest.mark.parametrize("text, why", [
    ("allow = 'x'", "array of strings"),
    ("allow = ['rel/path']", "is not a NAME"),
    ("allow = ['ns/*']", "is not a NAME"),
    ("annotations = 1", "true or false"),
    ("policy_dir = 'p'", "absolute"),
    ("alow = []", "unknown key 'alow'"),
    ("allow = [", "agent.toml"),
])
def test_config_refused(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_config(text, "agent.toml")


# --- profile ---------------------------------------------------------------------------


BASE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        {"names": ["read", "socket", "socketcall", "socketpair"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
         "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 2, "value": 9, "op": "SCMP_CMP_NE"}]},
    ],
}


def test_profile_notifies_every_socket_call_and_nothing_else_names_them() -> None:
    out = notify_profile(BASE, "/run/mstack/agent.sock", "stack=vpn; families=ipv4")
    rules = out["syscalls"]
    assert rules[0] == {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
    assert len(rules) == 2  # the socket-only rules are gone, conditions and all
    assert rules[1]["names"] == ["socket", "socketpair", "socketcall"]
    assert rules[1]["action"] == "SCMP_ACT_NOTIFY" and "args" not in rules[1]
    assert out["listenerPath"] == "/run/mstack/agent.sock"
    assert out["listenerMetadata"] == "stack=vpn; families=ipv4"
    assert out["archMap"] == BASE["archMap"] and "flags" not in out  # runc takes no flag
    assert BASE["syscalls"][0]["names"][1] == "socket"  # the base is left as it was
    assert "listenerMetadata" not in notify_profile(BASE, "/s")


@pytest.mark.parametrize("base", [{}, {"defaultAction": "x", "syscalls": {}},
                                  {"defaultAction": "x", "syscalls": [{"action": "y"}]}])
def test_profile_refuses_what_is_no_profile(base: dict[str, Any]) -> None:
    with pytest.raises(ProfileError):
        notify_profile(base, "/s")


def test_wait_killable_asks_the_runtime_for_the_flag_once() -> None:
    assert notify_profile(BASE, "/s", wait_killable=True)["flags"] == [WAIT_KILLABLE]
    logged = {**BASE, "flags": ["SECCOMP_FILTER_FLAG_LOG"]}
    both = notify_profile(logged, "/s", wait_killable=True)
    assert both["flags"] == ["SECCOMP_FILTER_FLAG_LOG", WAIT_KILLABLE]
    assert notify_profile(both, "/s", wait_killable=True)["flags"] == both["flags"]
    assert notify_profile(logged, "/s")["flags"] == ["SECCOMP_FILTER_FLAG_LOG"]  # kept
    assert oci_seccomp(both)["flags"] == both["flags"]  # ctr run, config.json
    with pytest.raises(ProfileError, match="flags"):
        notify_profile({**BASE, "flags": "x"}, "/s", wait_killable=True)


@pytest.mark.parametrize("config, killable", [
    ({"linux": {"seccomp": {"flags": [WAIT_KILLABLE]}}}, True),
    ({"linux": {"seccomp": {"flags": ["SECCOMP_FILTER_FLAG_LOG", WAIT_KILLABLE]}}}, True),
    ({"linux": {"seccomp": {"flags": ["SECCOMP_FILTER_FLAG_LOG"]}}}, False),
    ({"linux": {"seccomp": {"flags": WAIT_KILLABLE}}}, False),  # not the spec's array
    ({"linux": {"seccomp": {}}}, False),
    ({"linux": {}}, False),
    ({"linux": None}, False),
    ([], False),
])
def test_what_a_bundle_says_about_the_killable_wait(config: object, killable: bool) -> None:
    assert waits_killably(config) is killable


def test_the_agent_reads_the_flag_from_the_bundle_and_nothing_else(tmp_path: Any) -> None:
    from mstack_bpf.agent.agent import waits_killably_in
    (tmp_path / "config.json").write_text(json.dumps(
        {"linux": {"seccomp": {"flags": [WAIT_KILLABLE]}}}))
    assert waits_killably_in(str(tmp_path))
    assert not waits_killably_in(tmp_path.name)  # relative: not a bundle the runtime names
    assert not waits_killably_in(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text("{" * 100000)
    assert not waits_killably_in(str(tmp_path))
