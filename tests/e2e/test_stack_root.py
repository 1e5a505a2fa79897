"""mstack-stack as root: real traffic across each stack type, only between endpoints on
this machine (a stack's own loopback, both ends of the test's own veth, a user-mode
backend's alias of the host's loopback), and every error case.

Every stack has a unique name and is deleted in a finalizer, also when the test fails.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mstack_bpf.stacks import addrs
from tests.conftest import needs_root, run
from tests.e2e.conftest import info, netns_exec, ok, stack_cli

pytestmark = needs_root


def free_subnet() -> str:
    taken = addrs.host_networks()
    for _ in range(100):
        net = ipaddress.ip_network(f"10.251.{random.randrange(256)}.{4 * random.randrange(64)}/30")
        if addrs.clash(net, taken) is None:
            return str(net)
    pytest.skip("no free 10.251.0.0/16 subnet on this host")


def test_loopback_stack_serves_inside(new_name: Callable[[], str]) -> None:
    name = new_name()
    assert "loopback" in ok("add", name)
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            name,
            sys.executable,
            "-m",
            "http.server",
            "-b",
            "127.0.0.1",
            "18931",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        got = ""
        for _ in range(50):  # the server needs a moment to bind
            res = netns_exec(name, "curl", "-s", "-m", "2", "-o", "/dev/null", "-w",
                             "%{http_code}", "http://127.0.0.1:18931/")  # fmt: skip
            got = res.stdout
            if got == "200":
                break
            time.sleep(0.1)
        assert got == "200"
        users = info(name)["users"]
        assert any(u["comm"].startswith("python") and u["how"] == "member" for u in users)
        assert "python" in ok("list")
    finally:
        server.kill()
        server.wait()
    assert stack_cli("del", name).returncode == 0
    assert not os.path.lexists(f"/run/netns/{name}")
    assert not os.path.exists(f"/run/mstack/stacks/{name}")
    assert stack_cli("del", name).returncode == 0  # idempotent


def _tcp_echo_via(name: str, listen_ns: bool, addr: str) -> str:
    """One TCP exchange: a listener in the stack (or on the host) on ``addr``."""
    code = (
        "import socket,sys\n"
        f"s=socket.create_server(({addr!r}, 0))\n"
        "print(s.getsockname()[1], flush=True)\n"
        "c,_=s.accept(); c.sendall(c.recv(100)[::-1]); c.close()\n"
    )
    argv = [sys.executable, "-c", code]
    if listen_ns:
        argv = ["ip", "netns", "exec", name, *argv]
    lst = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert lst.stdout is not None
        port = int(lst.stdout.readline())
        client = [sys.executable, "-c",
                  "import socket,sys\n"
                  f"c=socket.create_connection(({addr!r}, {port}), timeout=5)\n"
                  "c.sendall(b'mstack'); sys.stdout.write(c.recv(100).decode())\n"]  # fmt: skip
        if not listen_ns:
            client = ["ip", "netns", "exec", name, *client]
        out = run(client, timeout=15)
        assert out.returncode == 0, out.stderr
        return out.stdout
    finally:
        lst.kill()
        lst.wait()


def test_veth_tcp(new_name: Callable[[], str]) -> None:
    name, subnet = new_name(), free_subnet()
    ok("add", name, "--veth", "--addr", subnet)
    st = info(name)
    host_ip, stack_ip = st["gateway"], st["addresses"][0].split("/")[0]
    assert run(["ping", "-c", "1", "-W", "2", stack_ip]).returncode == 0
    assert _tcp_echo_via(name, True, stack_ip) == "kcatsm"  # host → stack
    assert _tcp_echo_via(name, False, host_ip) == "kcatsm"  # stack → host
    host_if = st["host_if"]
    ok("del", name)
    links = run(["ip", "-br", "link"]).stdout
    assert host_if not in links


def test_veth_range_and_clash(new_name: Callable[[], str]) -> None:
    subnet = ipaddress.ip_network(free_subnet()).supernet(new_prefix=29)
    if addrs.clash(subnet, addrs.host_networks()):
        pytest.skip("picked range is busy")
    a, b, c = new_name(), new_name(), new_name()
    ok("add", a, "--veth", "--range", str(subnet))
    ok("add", b, "--veth", "--range", str(subnet))
    sa, sb = info(a)["subnet"], info(b)["subnet"]
    assert sa != sb and {sa, sb} == {str(s) for s in subnet.subnets(new_prefix=30)}
    full = stack_cli("add", c, "--veth", "--range", str(subnet))
    assert full.returncode == 125 and "no free subnet" in full.stderr
    clash = stack_cli("add", c, "--veth", "--addr", sa)
    assert clash.returncode == 125 and "address clash" in clash.stderr
    assert not os.path.lexists(f"/run/netns/{c}")
    assert not os.path.exists(f"/run/mstack/stacks/{c}")


def _dns_stub(addr: str, answer: str, stop: threading.Event) -> socket.socket:
    """A one-record DNS responder (RFC 1035) on ``addr``:53 answering A ``answer``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    s.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                q, peer = s.recvfrom(512)
            except OSError:
                continue
            end = q.index(b"\0", 12) + 5
            reply = q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:end]
            reply += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04"
            reply += socket.inet_aton(answer)
            s.sendto(reply, peer)

    threading.Thread(target=serve, daemon=True).start()
    return s


_DNS_QUERY = """
import socket, struct, sys
server = sys.argv[1]
q = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00"
q += b"".join(bytes([len(p)]) + p.encode() for p in "example.test".split(".")) + b"\\0"
q += b"\\x00\\x01\\x00\\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, (server, 53)); r = s.recv(512)
print(socket.inet_ntoa(r[-4:]))
"""


def test_veth_dns_stub(new_name: Callable[[], str]) -> None:
    name, subnet = new_name(), free_subnet()
    host_ip = str(ipaddress.ip_network(subnet)[1])
    ok("add", name, "--veth", "--addr", subnet, "--dns", host_ip)
    resolver = ok("dns", name).strip()
    assert resolver == host_ip
    conf = Path(f"/run/mstack/stacks/{name}/resolv.conf").read_text()
    assert f"nameserver {host_ip}" in conf
    stop = threading.Event()
    # the stub listens on the host end of the test's own veth; 10.99.98.97 is only the
    # answer it gives, never an address anything is sent to
    stub = _dns_stub(host_ip, "10.99.98.97", stop)
    try:
        res = netns_exec(name, sys.executable, "-c", _DNS_QUERY, resolver)
        assert res.stdout.strip() == "10.99.98.97", res.stderr
    finally:
        stop.set()
        stub.close()


@pytest.mark.parametrize("backend", ["pasta", "slirp4netns"])
def test_user_net_reaches_host_loopback(
    new_name: Callable[[], str], host_http: int, backend: str
) -> None:
    name = new_name()
    ok("add", name, "--user-net", "--backend", backend, "--host-loopback")
    st = info(name)
    assert st["type"] == f"user-net/{backend}" and st["dns"] and st["addresses"]
    helper = st["procs"][0]
    assert helper["role"] == backend and os.path.exists(f"/proc/{helper['pid']}")
    alias = st["host_alias"]
    assert alias, st
    res = netns_exec(name, "curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                     f"http://{alias}:{host_http}/")  # fmt: skip
    assert res.stdout == "200", res.stderr
    ok("del", name)
    assert not _alive(helper["pid"], helper["start"])
    assert not os.path.lexists(f"/run/netns/{name}")


def test_slirp_host_loopback_off_by_default(new_name: Callable[[], str], host_http: int) -> None:
    name = new_name()
    ok("add", name, "--user-net", "--backend", "slirp4netns")
    assert info(name)["host_alias"] is None
    # 10.0.2.2 is slirp4netns' own alias for the host's loopback (docs/design.md "Network in
    # tests"); with host loopback off, slirp refuses it: nothing leaves the machine.
    res = netns_exec(name, "curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
                     f"http://10.0.2.2:{host_http}/")  # fmt: skip
    assert res.stdout == "000", res.stdout  # no HTTP answer at all


def _alive(pid: int, start: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19]) == start and fields[0] != b"Z"


def test_errors(new_name: Callable[[], str], tmp_path: Path) -> None:
    name = new_name()
    ok("add", name)
    taken = stack_cli("add", name)
    assert taken.returncode == 125 and "already exists" in taken.stderr
    assert len(taken.stderr.strip().splitlines()) == 1
    missing = stack_cli("dns", name)
    assert missing.returncode == 125 and "no resolver" in missing.stderr
    for cmd in (("path", "nosuch"), ("dns", "nosuch")):
        res = stack_cli(*cmd)
        assert res.returncode == 125 and "no such stack" in res.stderr
    assert stack_cli("del", "nosuch-at-all").returncode == 0
    assert ok("path", name).strip() == f"/run/netns/{name}"


def test_external_netns_is_not_deleted(new_name: Callable[[], str]) -> None:
    name = new_name()
    run(["ip", "netns", "add", name], check=True)
    assert info(name)["type"] == "external"
    res = stack_cli("del", name)
    assert res.returncode == 125 and "ip netns del" in res.stderr
    assert os.path.lexists(f"/run/netns/{name}")


@pytest.mark.parametrize(("tool", "package"), [("pasta", "passt"), ("slirp4netns", "slirp4netns")])
def test_missing_backend_names_package(
    new_name: Callable[[], str], tool: str, package: str
) -> None:
    name = new_name()
    res = stack_cli("add", name, "--user-net", "--backend", tool, env={"PATH": "/nonexistent"})
    assert res.returncode == 125
    assert f"apt-get install {package}" in res.stderr
    assert not os.path.lexists(f"/run/netns/{name}")


def test_failed_add_leaves_nothing(new_name: Callable[[], str], tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pasta").write_text("#!/bin/sh\necho 'pasta: simulated failure' >&2\nexit 1\n")
    (fake / "pasta").chmod(0o755)
    name = new_name()
    res = stack_cli("add", name, "--user-net", env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert res.returncode == 125 and "simulated failure" in res.stderr
    assert not os.path.lexists(f"/run/netns/{name}")
    assert not os.path.exists(f"/run/mstack/stacks/{name}")


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft missing (apt-get install nftables)")
def test_veth_nat_rules_come_and_go(new_name: Callable[[], str]) -> None:
    """The NAT table is made and removed; no traffic is sent through it (it would leave the
    machine)."""
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    before = forward.read_text()
    name, subnet = new_name(), free_subnet()
    try:
        ok("add", name, "--veth", "--addr", subnet, "--nat")
        table = run(["nft", "list", "table", "ip", f"mstack-{name}"])
        assert table.returncode == 0 and f"ip saddr {subnet}" in table.stdout
        assert "masquerade" in table.stdout and forward.read_text().strip() == "1"
        ok("del", name)
        gone = run(["nft", "list", "table", "ip", f"mstack-{name}"])
        assert gone.returncode != 0
    finally:
        forward.write_text(before)
