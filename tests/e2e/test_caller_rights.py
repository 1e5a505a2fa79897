"""The supervisor acts with the caller's rights, always: what it does on a caller's behalf
(interface ioctls, socketpairs, the sockets' cgroup) is what the kernel would do for the
caller itself. Every check is made from inside the target, against the same call made
natively in the same namespace."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import Netns, build_c, mstack, needs_root

pytestmark = needs_root

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
SIOCGIFADDR, SIOCGIFFLAGS, SIOCGMIIPHY = "8915", "8913", "8947"
AF_UNIX, AF_INET, AF_INET6, AF_PACKET = "1", "2", "10", "17"


@pytest.fixture(scope="module")
def ifioctl(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The ioctl probe, where nobody may run it."""
    public = tmp_path_factory.mktemp("ifioctl")
    public.chmod(0o755)
    path = public / "ifioctl"
    shutil.copy(build_c("ifioctl"), path)
    path.chmod(0o755)
    return str(path)


def _view(cp: object) -> object:
    assert getattr(cp, "returncode", 1) == 0, getattr(cp, "stderr", "")
    return json.loads(getattr(cp, "stdout", ""))


@pytest.mark.parametrize("abi", ["x86_64", "i386"])
@pytest.mark.parametrize("mapping", [("-o", "ip"), ("--lock", "-o", "ip")])
def test_capability_checked_ioctl_as_unprivileged_caller(netns: Netns, ifioctl: str,
                                                         abi: str,
                                                         mapping: tuple[str, ...]) -> None:
    """SIOCGMIIPHY checks CAP_NET_ADMIN: a root supervisor must not pass the check for an
    unprivileged caller (it did, and reached the driver: EOPNOTSUPP instead of EPERM)."""
    command = (*NOBODY, ifioctl, AF_INET, SIOCGMIIPHY, "lo", *(["i386"] if abi == "i386" else []))
    native = _view(netns.exec(*command))
    under = _view(mstack(*mapping, netns.name, *command))
    assert native == {"errno": "EPERM"}
    assert under == native


def test_root_caller_keeps_its_capability(netns: Netns, ifioctl: str) -> None:
    command = (ifioctl, AF_INET, SIOCGMIIPHY, "lo")
    assert _view(mstack("-o", "ip", netns.name, *command)) == _view(netns.exec(*command))


@pytest.mark.parametrize("family", [AF_INET, AF_INET6, AF_UNIX, AF_PACKET])
@pytest.mark.parametrize("stack", ["native", "netns"])
def test_address_requests_answer_as_on_the_callers_socket(netns: Netns, ifioctl: str,
                                                          family: str, stack: str) -> None:
    """SIOCGIFADDR is the AF_INET protocol's (AF_PACKET passes it on): net-tools' address
    lookup works under any mstack, and other sockets get ENOTTY as natively."""
    name = netns.name if stack == "netns" else "native"
    for request in (SIOCGIFADDR, SIOCGIFFLAGS):
        command = (ifioctl, family, request, "lo")
        native = _view(netns.exec(*command) if stack == "netns" else subprocess.run(
            command, capture_output=True, text=True, timeout=30))
        assert _view(mstack("-o", "ip", name, *command)) == native, (family, request)
        if family == AF_INET and request == SIOCGIFADDR:
            assert native == {"addr": "127.0.0.1", "value": 0}
