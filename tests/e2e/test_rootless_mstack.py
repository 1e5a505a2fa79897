"""mstack without root: a user's own stack, user-mode networking, no sudo at any step."""

from __future__ import annotations

from tests.conftest import VENV_PYTHON, cookie_code
from tests.e2e.conftest import Nobody, in_stack, unique


def test_unprivileged_mstack_through_a_rootless_user_net_stack(
        nobody: Nobody, tun_usable: None, host_http: int) -> None:
    name = unique()
    nobody.ok("add", name, "--user-net", "--host-loopback")
    info = nobody.info(name)
    inside = in_stack(nobody, info["holder_pid"], VENV_PYTHON, "-c", cookie_code())
    under = nobody.run("mstack", "-o", "ip", name, VENV_PYTHON, "-c", cookie_code())
    native = nobody.run(VENV_PYTHON, "-c", cookie_code())
    assert under.returncode == 0, under.stderr
    assert int(under.stdout) == int(inside.stdout) != int(native.stdout)
    url = f"http://{info['host_alias']}:{host_http}/"
    curl = nobody.run("mstack", "-o", "ip", name, "curl", "-s", "-m", "10", "-o", "/dev/null",
                      "-w", "%{http_code}", url)
    assert curl.stdout == "200", curl.stderr
    nobody.ok("del", name)
