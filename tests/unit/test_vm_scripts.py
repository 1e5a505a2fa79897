"""The test VM's scripts (vagrant/build-box, vagrant/vm-test, vagrant/vm-guest.sh), read
against what vagrant/README.md promises: ``make vm-test`` is no part of ``make test``, the
VM's only network is qemu's restricted user network with one guestfwd (no bridge, no tap, no
port open beyond it), the guest's result is what vm-test exits with, and every script is
valid bash.

What this cannot prove: that the VM boots and the suite passes in it — only ``make vm-test``
shows that (it takes minutes under TCG, so ``make test`` does not run it); the guest itself
checks, from inside, that it reaches neither the mirror's address nor a name server.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import run
from tests.unit.vagrantfile import Call, Config, read

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
SCRIPTS = [VAGRANT / "build-box", VAGRANT / "vm-test", VAGRANT / "vm-guest.sh"]


def only(calls: list[Call]) -> Call:
    assert len(calls) == 1, calls
    return calls[0]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_valid_bash(script: Path) -> None:
    bash = shutil.which("bash") or "/bin/bash"
    cp = run([bash, "-n", str(script)])
    assert cp.returncode == 0, cp.stderr


def test_vm_test_is_not_part_of_make_test() -> None:
    """``make -n test`` lists what the suite runs: nothing of the VM."""
    cp = run(["make", "-n", "-C", str(REPO), "--no-print-directory", "test",
              "PREFIX=/nonexistent", "BINDIR=/nonexistent"])
    assert cp.returncode == 0, cp.stderr
    for word in ("vm-test", "build-box", "qemu", "vagrant up"):
        assert word not in cp.stdout, word
    targets = (REPO / "Makefile").read_text()
    assert re.search(r"^vm-test:", targets, re.M) and re.search(r"^vm-clean:", targets, re.M)


def _qemu_command(text: str) -> str:
    start = text.index("qemu-system-x86_64 -name")
    return text[start:text.index("&\n", start)]


def test_the_vms_only_network_is_restricted_user_networking() -> None:
    text = (VAGRANT / "vm-test").read_text()
    qemu = _qemu_command(text)
    assert re.findall(r'-netdev "([^"]+)"', qemu) == ["$NETDEV"], qemu
    assert re.findall(r'^NETDEV="([^"]+)"', text, re.M) == ["user,id=n0,restrict=on,$GUESTFWD"]
    for word in ("hostfwd", "tap", "bridge", "-nic", "vde", "socket,"):
        assert word not in qemu, word
    fwd = re.findall(r'^GUESTFWD="([^"]+)"', text, re.M)
    assert fwd == ["guestfwd=tcp:$GUESTFWD_ADDR:$GUESTFWD_PORT-cmd:socat STDIO "
                   "TCP:$MIRROR_IP:$MIRROR_PORT"], fwd
    # vagrant's VM: the same network, plus ssh forwarded from 127.0.0.1 only
    hostfwds = re.findall(r"hostfwd=[^\s\"]*", text)
    assert hostfwds == ["hostfwd=tcp:127.0.0.1:$port-:22"], hostfwds
    assert re.findall(r'MSTACK_VM_NETDEV="([^"]+)"', text) == [
        "$NETDEV,hostfwd=tcp:127.0.0.1:$port-:22"]


def _vagrant_config(**env: str) -> Config:
    return read((VAGRANT / "vm-test.Vagrantfile").read_text(), env)


def test_the_vagrant_front_ends_vagrantfile_is_ruby() -> None:
    ruby = shutil.which("ruby")
    if ruby:  # nothing is installed for this
        cp = run([ruby, "-c", str(VAGRANT / "vm-test.Vagrantfile")])
        assert cp.returncode == 0 and "Syntax OK" in cp.stdout, cp.stderr
    _vagrant_config()  # raises, naming the line, on anything outside the reader's subset


def test_the_vagrant_vm_has_no_libvirt_network() -> None:
    """No management network, no vagrant network: the only NIC is vm-test's user network,
    and ssh goes to the 127.0.0.1 port vm-test forwarded."""
    netdev = "user,id=n0,restrict=on,guestfwd=X,hostfwd=tcp:127.0.0.1:2222-:22"
    c = _vagrant_config(MSTACK_VM_NETDEV=netdev, MSTACK_VM_SSH_PORT="2222")
    assert not c.called("vm.network")
    assert c.values["ssh.host"] == "127.0.0.1" and c.values["ssh.port"] == 2222
    lv = only(c.called("vm.provider"))
    assert lv.args == ["libvirt"] and lv.block is not None
    assert lv.block.values["mgmt_attach"] is False
    assert lv.block.values["qemu_use_agent"] is True  # the guest's address without DHCP leases
    args = [str(call.kwargs["value"]) for call in lv.block.called("qemuargs")]
    assert args.count("-netdev") == 1 and args[args.index("-netdev") + 1] == netdev, args
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert [d for d in devices if not d.startswith("virtio-9p-pci,")] == [
        "virtio-net-pci,netdev=n0,bus=pcie.0,addr=0x10"], devices
    assert not any(w in a for a in args for w in ("tap", "bridge", "-nic", "vde")), args
    assert only(c.called("vm.synced_folder")).kwargs == {"disabled": True}  # 9p shares instead


def test_the_guest_uses_the_guestfwd_as_apt_proxy_and_no_dns() -> None:
    box = (VAGRANT / "build-box").read_text()
    test = (VAGRANT / "vm-test").read_text()
    addr = re.findall(r"^GUESTFWD_ADDR=(\S+)", box, re.M)
    port = re.findall(r"^GUESTFWD_PORT=(\S+)", box, re.M)
    assert addr == re.findall(r"^GUESTFWD_ADDR=(\S+)", test, re.M) and len(addr) == 1
    assert port == re.findall(r"^GUESTFWD_PORT=(\S+)", test, re.M) and len(port) == 1
    assert 'Acquire::http::Proxy "http://$GUESTFWD_ADDR:$GUESTFWD_PORT/";' in box
    assert ': >"$root/etc/resolv.conf"' in box
    assert "UseDNS=no" in box


def test_the_result_is_the_guests() -> None:
    """vm-test exits with the status the guest wrote (after its whole log), never qemu's."""
    guest = (VAGRANT / "vm-guest.sh").read_text()
    finish = guest[guest.index("finish() {"):guest.index("trap finish EXIT")]
    assert finish.index('wait "$tee_pid"') < finish.index('echo "$status" >"$OUT/status"')
    test = (VAGRANT / "vm-test").read_text()
    assert 'exit "$status"' in test
    assert 'status="$(cat "$run/share/status"' in test
    assert "trap cleanup EXIT" in test and 'rm -rf "$run"' in test
