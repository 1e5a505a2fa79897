"""Backend command lines and DNS choice (pure)."""

from __future__ import annotations

from pathlib import Path

from mstack_bpf.stacks import usernet
from mstack_bpf.stacks.usernet import Target


def test_pasta_rootless_argv() -> None:
    argv = usernet.pasta_argv(Target(holder_pid=42), "/s/pasta.pid", False, "10.0.0.53")
    assert argv[:2] == ["pasta", "--config-net"]
    assert argv[-1] == "42" and "--runas" not in argv
    assert "--no-map-gw" in argv
    assert argv[argv.index("--dns-forward") + 1] == "10.0.0.53"
    for opt in ("-t", "-u", "-T", "-U"):  # no automatic port forwarding
        assert argv[argv.index(opt) + 1] == "none"


def test_pasta_root_argv_host_loopback() -> None:
    argv = usernet.pasta_argv(Target(netns_path="/run/netns/x"), "/p", True, None)
    assert argv[-2:] == ["--netns", "/run/netns/x"]
    assert "--no-map-gw" not in argv and "--dns-forward" not in argv


def test_slirp_argv() -> None:
    argv = usernet.slirp_argv(Target(netns_path="/run/netns/x"), 7, False)
    assert argv[-3:] == ["--netns-type=path", "/run/netns/x", "tap0"]
    assert "--disable-host-loopback" in argv and "--ready-fd=7" in argv
    argv = usernet.slirp_argv(Target(holder_pid=9), 7, True)
    assert argv[-2:] == ["9", "tap0"] and "--disable-host-loopback" not in argv


def test_pasta_dns_choice() -> None:
    assert usernet.pasta_dns("10.255.255.53", "192.0.2.1") == "10.255.255.53"
    assert usernet.pasta_dns("127.0.0.53", "192.0.2.1") == "192.0.2.1"
    assert usernet.pasta_dns("::1", None) is None
    assert usernet.pasta_dns(None, "192.0.2.1") == "192.0.2.1"


def test_host_resolver(tmp_path: Path) -> None:
    f = tmp_path / "resolv.conf"
    f.write_text("# c\nsearch x\nnameserver fe80::1%eth0\nnameserver 1.2.3.4\n")
    assert usernet.host_resolver(str(f)) == "fe80::1%eth0"
    f.write_text("nameserver bogus\n")
    assert usernet.host_resolver(str(f)) is None
    assert usernet.host_resolver(str(tmp_path / "none")) is None
