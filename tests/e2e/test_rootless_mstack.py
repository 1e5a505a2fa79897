"""mstack without root: a user's own stack, user-mode networking, no sudo at any step."""

from __future__ import annotations

from tests.e2e.test_stack_root import host_http  # noqa: F401  (fixture)
from tests.e2e.test_stack_rootless import (  # noqa: F401  (fixtures)
    PY,
    Nobody,
    _in_stack,
    nobody,
    tun_usable,
    unique,
)

COOKIE = ("import socket,struct;s=socket.socket(socket.AF_INET);"
          "print(struct.unpack('=Q',s.getsockopt(1,71,8))[0])")


def test_unprivileged_mstack_through_a_rootless_user_net_stack(
        nobody: Nobody, tun_usable: None, host_http: int) -> None:  # noqa: F811
    name = unique()
    nobody.ok("add", name, "--user-net", "--host-loopback")
    info = nobody.info(name)
    inside = _in_stack(nobody, info["holder_pid"], PY, "-c", COOKIE)
    under = nobody.run("mstack", "-o", "ip", name, PY, "-c", COOKIE)
    native = nobody.run(PY, "-c", COOKIE)
    assert under.returncode == 0, under.stderr
    assert int(under.stdout) == int(inside.stdout) != int(native.stdout)
    url = f"http://{info['host_alias']}:{host_http}/"
    curl = nobody.run("mstack", "-o", "ip", name, "curl", "-s", "-m", "10", "-o", "/dev/null",
                      "-w", "%{http_code}", url)
    assert curl.stdout == "200", curl.stderr
    nobody.ok("del", name)
