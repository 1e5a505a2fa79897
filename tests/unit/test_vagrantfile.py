"""The Vagrant test VM's Vagrantfile, read as Vagrant reads it, against what
vagrant/provision.sh needs and what vagrant/README.md and the README's Vagrant section
promise: a Debian 12 box (``debian/bookworm64``), 2 CPUs and 3 GB unless MSTACK_VM_CPUS and
MSTACK_VM_MEMORY say otherwise, libvirt or virtualbox, the checkout rsynced to /vagrant,
``provision.sh /vagrant`` run as root, and ``SKIP_TESTS=1`` on the host skipping the suite.

What this proves: the file is in the Ruby subset ``tests/unit/vagrantfile.py`` reads (and
is valid Ruby, by ``ruby -c``, where Ruby is installed — it is not needed otherwise); the
values Vagrant is given under the default and an overriding environment; that they fit
provision.sh and this checkout, and that no file git tracks is left out of the VM's copy.
What it cannot prove: that Vagrant accepts these options (``vagrant validate`` needs Vagrant
and a provider plugin), that the box exists and boots, or that a provider honours them —
only a real ``vagrant up`` shows that; tests/e2e/test_vagrant_provision.py runs
provision.sh itself on this host.
"""

from __future__ import annotations

import os
import re
import shutil
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from tests.conftest import run
from tests.unit.vagrantfile import Call, Config, VagrantfileError, read

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
VAGRANTFILE = VAGRANT / "Vagrantfile"
PROVISION = VAGRANT / "provision.sh"
#: the promises (vagrant/README.md, the README's "Vagrant test VM")
BOX = "debian/bookworm64"
PROVIDERS = {"virtualbox", "libvirt"}
CPUS, MEMORY_MB = 2, 3072


def config(**env: str) -> Config:
    return read(VAGRANTFILE.read_text(), env)


def only(calls: list[Call]) -> Call:
    assert len(calls) == 1, calls
    return calls[0]


def test_it_is_ruby() -> None:
    """Ruby's own syntax check where Ruby is installed; the reader's everywhere."""
    ruby = shutil.which("ruby")
    if ruby:  # nothing is installed for this
        cp = run([ruby, "-c", str(VAGRANTFILE)])
        assert cp.returncode == 0 and "Syntax OK" in cp.stdout, cp.stderr
    config()  # raises, naming the line, on anything outside the subset


def test_the_box_and_its_resources() -> None:
    c = config()
    assert c.values["vm.box"] == BOX
    providers = {call.args[0]: call for call in c.called("vm.provider")}
    assert set(providers) == PROVIDERS
    for name, call in providers.items():
        assert call.block is not None, name
        assert call.block.values == {"memory": MEMORY_MB, "cpus": CPUS}, name


def test_memory_and_cpus_follow_the_environment() -> None:
    c = config(MSTACK_VM_MEMORY="4096", MSTACK_VM_CPUS="4")
    for call in c.called("vm.provider"):
        assert call.block is not None
        assert call.block.values == {"memory": 4096, "cpus": 4}, call.args
    with pytest.raises(VagrantfileError, match="Integer"):  # Ruby's Integer() refuses it too
        config(MSTACK_VM_MEMORY="3G")


def test_the_checkout_is_rsynced_to_where_provision_sh_looks() -> None:
    c = config()
    folder = only(c.called("vm.synced_folder"))
    source, dest = folder.args
    assert folder.kwargs["type"] == "rsync"
    assert isinstance(source, str) and isinstance(dest, str)
    # relative to the Vagrantfile's directory: the checkout provision.sh accepts
    root = (VAGRANT / source).resolve()
    assert root == REPO and (root / "Makefile").is_file() and (root / "mstack_bpf").is_dir()
    script = PROVISION.read_text()
    assert '[ -f "$SRC/Makefile" ] && [ -d "$SRC/mstack_bpf" ]' in script
    # provision.sh's default source is that destination, and it is given it as well
    default = re.search(r'^SRC="\$\{1:-\$\{MSTACK_SRC:-(/[^}]*)\}\}"$', script, re.M)
    assert default is not None and default.group(1) == dest
    provision = only(c.called("vm.provision"))
    assert provision.args == ["shell"] and provision.kwargs["args"] == [dest]


def test_provision_sh_runs_as_root_and_skip_tests_reaches_it() -> None:
    provision = only(config().called("vm.provision"))
    assert provision.kwargs["path"] == "provision.sh"
    assert PROVISION.read_text().startswith("#!/usr/bin/env bash\n")  # uploaded, then run
    assert provision.kwargs.get("privileged", True) is True  # provision.sh dies as non-root
    assert provision.kwargs["env"] == {"SKIP_TESTS": "0"}  # the suite runs by default
    skipped = only(config(SKIP_TESTS="1").called("vm.provision"))
    assert skipped.kwargs["env"] == {"SKIP_TESTS": "1"}
    script = PROVISION.read_text()
    assert 'SKIP_TESTS="${SKIP_TESTS:-0}"' in script and '[ "$SKIP_TESTS" = "1" ]' in script


def rsync_excludes(path: str, patterns: list[str]) -> bool:
    """Whether rsync leaves ``path`` (a file, relative to the transfer root) out: a pattern
    with a ``/`` inside matches the end of the path (from the root if it starts with one),
    one without matches a name; a trailing ``/`` matches directories only (rsync(1),
    "INCLUDE/EXCLUDE PATTERN RULES"). Excluding a directory excludes what is in it."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        here, is_dir = parts[:depth], depth < len(parts)
        for pattern in patterns:
            if pattern.endswith("/") and not is_dir:
                continue
            words = pattern.strip("/").split("/")
            if pattern.startswith("/") and len(words) != len(here):
                continue
            if len(words) > len(here):
                continue
            if all(fnmatchcase(name, word)
                   for name, word in zip(here[-len(words):], words, strict=True)):
                return True
    return False


def test_rsync_exclude_rules() -> None:
    assert rsync_excludes("build/lib/x.py", ["build/"])
    assert rsync_excludes("a/build/x", ["build/"])
    assert not rsync_excludes("build", ["build/"])  # a file named build
    assert rsync_excludes("bpf/x.o", ["bpf/*.o"]) and rsync_excludes("m/bpf/x.o", ["bpf/*.o"])
    assert not rsync_excludes("bpf/sub/x.o", ["bpf/*.o"])
    assert not rsync_excludes("a/tests/bin/x", ["/tests/bin/"])
    assert rsync_excludes("tests/bin/x", ["/tests/bin/"])


def test_every_tracked_file_reaches_the_vm() -> None:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    folder = only(config().called("vm.synced_folder"))
    patterns = folder.kwargs["rsync__exclude"]
    assert isinstance(patterns, list) and all(isinstance(p, str) for p in patterns)
    # safe.directory: root reading a clone another user owns (read only)
    tracked = run(["git", "-c", "safe.directory=*", "-C", str(REPO), "ls-files", "-z"],
                  check=True, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    files = [f for f in tracked.stdout.split("\0") if f]
    assert "vagrant/Vagrantfile" in files
    left_out = [f for f in files if rsync_excludes(f, [str(p) for p in patterns])]
    assert not left_out, f"rsync__exclude leaves tracked files out of the VM: {left_out}"


# --- the reader itself ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ('Vagrant.configure("2") do |config|\n  config.vm.box = "x"\n', "'do' without 'end'"),
    ('Vagrant.configure("2") do |config|\n  if true\n  end\nend\n', "line 2"),
    ('Vagrant.configure("2") do |config|\n  config.vm.box = "#{x}"\nend\n', "interpolation"),
    ('Vagrant.configure("2") do |config|\n  other.vm.box = "x"\nend\n', "'other'"),
    ('Vagrant.configure("1") do |config|\nend\n', 'configure("2")'),
    ('config = 1\n', "no configuration"),
    ("", "0 Vagrant.configure blocks"),
])
def test_the_reader_refuses_what_it_does_not_know(text: str, message: str) -> None:
    with pytest.raises(VagrantfileError, match=re.escape(message)):
        read(text)
