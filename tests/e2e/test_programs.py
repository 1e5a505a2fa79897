"""Real programs under mstack: servers, clients, ss, iperf3, ping, getent, bash /dev/tcp.

All traffic goes to 127.0.0.1. A port is picked free on the host, so that reaching it there
fails for sure while the stack (a fresh namespace) has only what the test started in it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import MSTACK, PYTHON, MakeNetns, Netns, mstack, needs_root, run, wait_until

pytestmark = needs_root

CURL = ("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10")


def host_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(ns: Netns, port: int) -> bool:
    return f":{port} " in ns.exec("ss", "-Htln", f"sport = :{port}").stdout


@contextlib.contextmanager
def server(args: list[str], ns: Netns, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` and wait (bounded) until ``ns`` has a listener on ``port``."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: listening(ns, port) or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def http_server(port: int) -> list[str]:
    return [PYTHON, "-m", "http.server", "--bind", "127.0.0.1", str(port)]


def test_server_under_mstack_is_reachable_in_the_stack_only(netns: Netns) -> None:
    port = host_free_port()
    with server([MSTACK, netns.name, *http_server(port)], netns, port):
        inside = netns.exec(*CURL, f"http://127.0.0.1:{port}/")
        assert inside.stdout == "200", inside.stderr
        host = run([*CURL, f"http://127.0.0.1:{port}/"])
        assert host.returncode == 7, (host.returncode, host.stdout)  # couldn't connect


def test_client_under_mstack_reaches_a_server_only_in_the_stack(netns: Netns) -> None:
    port = host_free_port()
    with server(["ip", "netns", "exec", netns.name, *http_server(port)], netns, port):
        cp = mstack(netns.name, *CURL, f"http://127.0.0.1:{port}/")
        assert (cp.returncode, cp.stdout) == (0, "200"), cp.stderr
        assert run([*CURL, f"http://127.0.0.1:{port}/"]).returncode == 7


def test_ss_under_mstack_lists_the_stack_s_listeners(netns: Netns) -> None:
    port = host_free_port()
    with server(["ip", "netns", "exec", netns.name, *http_server(port)], netns, port):
        for option in ([], ["-o", "ip"]):
            cp = mstack(*option, netns.name, "ss", "-tln")
            assert cp.returncode == 0, cp.stderr
            assert f"127.0.0.1:{port} " in cp.stdout, (option, cp.stdout)
        assert f"127.0.0.1:{port} " not in run(["ss", "-tln"]).stdout


def test_bash_dev_tcp_reaches_a_listener_in_the_stack(netns: Netns) -> None:
    port = host_free_port()
    script = (f"exec 3<>/dev/tcp/127.0.0.1/{port} && "
              "printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3")
    with server(["ip", "netns", "exec", netns.name, *http_server(port)], netns, port):
        cp = mstack(netns.name, "bash", "-c", script)
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.startswith("HTTP/1.0 200"), cp.stdout
        native = run(["bash", "-c", script])  # nothing listens on the host's loopback
        assert native.returncode == 1 and "Connection refused" in native.stderr, native.stderr


def test_iperf3_client_and_server_under_mstack(netns: Netns) -> None:
    port = host_free_port()
    srv = [MSTACK, netns.name, "iperf3", "-s", "-1", "-p", str(port)]
    with server(srv, netns, port) as proc:
        cp = mstack(netns.name, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "1", "-J",
                    timeout=40)
        assert cp.returncode == 0, cp.stdout[-2000:]
        result = json.loads(cp.stdout)
        assert result["end"]["sum_received"]["bytes"] > 0
        assert proc.wait(timeout=20) == 0  # -s -1: one test, then the server exits


def test_ping_as_root_uses_the_stack(make_netns: MakeNetns) -> None:
    up: Netns = make_netns()
    down: Netns = make_netns()
    down.exec("ip", "link", "set", "lo", "down", check=True)
    ok = mstack("-o", "ip", up.name, "ping", "-n", "-c1", "-W2", "127.0.0.1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 received" in ok.stdout
    # the host's loopback is up: only a ping made in the stack can fail this way
    bad = mstack("-o", "ip", down.name, "ping", "-n", "-c1", "-W2", "127.0.0.1")
    assert bad.returncode == 1 and "0 received" in bad.stdout, bad.stdout + bad.stderr


@pytest.mark.parametrize("option", [[], ["-o", "ip"]], ids=["all", "ip"])
def test_getent_hosts_localhost(netns: Netns, option: list[str]) -> None:
    cp = mstack(*option, netns.name, "getent", "hosts", "localhost")
    assert cp.returncode == 0, cp.stderr
    assert "localhost" in cp.stdout
    assert cp.stdout == run(["getent", "hosts", "localhost"]).stdout  # as natively


def test_writer_to_a_closed_pipe_dies_of_sigpipe_as_natively(netns: Netns) -> None:
    script = 'MSTACK yes | head -n1; echo "${PIPESTATUS[0]}"'
    native = run(["bash", "-c", script.replace("MSTACK ", "")])
    assert native.stdout == "y\n141\n"
    under = run(["bash", "-c", script.replace("MSTACK", f"{MSTACK} {netns.name}")])
    assert (under.stdout, under.stderr) == (native.stdout, native.stderr)
