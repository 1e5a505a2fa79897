"""mstack-agent with real podman containers, under crun and under runc: the mapping a
container gets, checked from inside it (SO_NETNS_COOKIE, tests/helpers/escape.c), and every
way it must fail closed.

Each test module run builds a tiny image (busybox-static and the static probe, no
registry) in a private podman storage root under a temporary directory, and removes every
container, image and file it made. Machine facts (no systemd; no CAP_SYS_RESOURCE; crun
refuses the hybrid cgroup layout) are met by running podman with cgroupfs, a file events
backend, explicit rlimits, and in a private mount namespace without /sys/fs/cgroup/unified.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mstack_bpf.agent import server
from mstack_bpf.linux import cgroup as cgroup_mod
from mstack_bpf.linux.seccomp import Listener
from tests.conftest import (
    BINDIR,
    PREFIX,
    PYTHON,
    MakeNetns,
    Netns,
    Report,
    cookie_code,
    cpus_allowed,
    needs_root,
    new_cgroup,
    run,
    wait_until,
)
from tests.e2e.conftest import AGENT, Agent, agents, probe_rootfs
from tests.e2e.test_colocate import skip_without_sync_wakeups

IMAGE = "localhost/mstack-agent-probe"
RUNTIMES = ["crun", "runc"]
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
ABIS = ("x86_64", "high32", "i386_socket", "i386_socketcall")

pytestmark = [
    needs_root,
    pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman (make test)"),
    pytest.mark.timeout(180),
]


class Podman:
    """podman with a storage root of its own, run in a private mount namespace without the
    cgroup v2 mount of the hybrid layout (crun refuses it)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.args = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"),
                     "--tmpdir", str(base / "tmp"), "--network-config-dir", str(base / "net"),
                     "--cgroup-manager=cgroupfs", "--events-backend=file"]

    def command(self, *args: str) -> list[str]:
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"', "sh", *self.args, *args]

    def __call__(self, *args: str, timeout: float = 90,
                 stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            input=stdin.decode("latin-1") if stdin is not None else None,
            capture_output=True, text=True, timeout=timeout)

    def pid(self, name: str) -> int:
        return int(self("inspect", "-f", "{{.State.Pid}}", name).stdout)


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    if not Path("/bin/busybox").exists():
        pytest.skip("needs busybox-static (make test installs it)")
    base = Path(tempfile.mkdtemp(prefix="mstack-agent-test-"))
    pm = Podman(base)
    try:
        probe_rootfs(base / "rootfs")
        with tarfile.open(base / "image.tar", "w") as tar:
            tar.add(base / "rootfs", arcname=".")
        imported = pm("import", "-q", str(base / "image.tar"), IMAGE)
        assert imported.returncode == 0, imported.stderr
        yield pm
    finally:
        pm("rm", "-af", "-t", "0")
        pm("rmi", "-af")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_agent(podman: Podman) -> Iterator[Callable[..., Agent]]:
    with agents(podman.base) as make:
        yield make


class Containers:
    """Containers of one test, each removed at the end."""

    def __init__(self, podman: Podman, runtime: str) -> None:
        self.podman, self.runtime = podman, runtime
        self.names: list[str] = []

    def flags(self, agent: Agent, annotations: dict[str, str], *extra: str) -> list[str]:
        notes = [f"--annotation={k}={v}" for k, v in annotations.items()]
        return ["--runtime", self.runtime, "--network", "none",
                "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
                "--security-opt", f"seccomp={agent.profile}", *notes, *extra]

    def run(self, agent: Agent, annotations: dict[str, str], script: str,
            *extra: str) -> subprocess.CompletedProcess[str]:
        """Run ``script`` to its end in a new container."""
        return self.podman("run", "--rm", *self.flags(agent, annotations, *extra), IMAGE,
                           "/bin/sh", "-c", script)

    def start(self, agent: Agent, annotations: dict[str, str], script: str,
              *extra: str) -> str:
        """Start a container running ``script`` then sleeping; its name."""
        name = f"mstack-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        cp = self.podman("run", "-d", "--name", name, *self.flags(agent, annotations, *extra),
                         IMAGE, "/bin/sh", "-c", f"{script}; exec /bin/sleep 600")
        assert cp.returncode == 0, cp.stderr
        return name

    def reports(self, name: str, count: int) -> list[Report]:
        """The first ``count`` JSON lines a started container printed."""
        lines: list[str] = []

        def enough() -> bool:
            lines[:] = self.podman("logs", name).stdout.splitlines()
            return len(lines) >= count
        assert wait_until(enough, timeout=30), lines
        return [json.loads(line) for line in lines[:count]]

    def exec(self, name: str, *args: str) -> Report:
        cp = self.podman("exec", name, *args)
        assert cp.returncode == 0, cp.stderr
        return json.loads(cp.stdout.splitlines()[-1])

    def own_cookie(self, name: str) -> int:
        """The cookie of the container's own network namespace, seen from the host."""
        pid = self.podman.pid(name)
        return int(run(["nsenter", "-t", str(pid), "-n", PYTHON, "-c", cookie_code("AF_UNIX")],
                       check=True).stdout)

    def remove(self) -> None:
        if self.names:
            self.podman("rm", "-f", "-t", "0", *self.names)


@pytest.fixture(params=RUNTIMES)
def containers(request: pytest.FixtureRequest, podman: Podman) -> Iterator[Containers]:
    runtime: str = request.param
    if shutil.which(runtime) is None:
        pytest.skip(f"needs {runtime} (make test installs it)")
    c = Containers(podman, runtime)
    try:
        yield c
    finally:
        c.remove()


def sock(family: int, kind: int = 1) -> str:
    return f"/bin/escape sock {family} {kind} 0"


def cookies(report: Report) -> set[object]:
    """What every ABI's socket() got: {cookie} when they all agree."""
    return {report[abi].get("cookie", report[abi].get("errno")) for abi in ABIS}


def ip_to(stack: Netns) -> dict[str, str]:
    return {"io.mstack.stack": stack.name, "io.mstack.families": "ip"}


# --- the mapping ------------------------------------------------------------------------


def test_annotations_map_ip_to_a_stack_and_exec_gets_it_too(
        containers: Containers, make_agent: Callable[..., Agent], netns: Netns,
        host_cookie: int) -> None:
    agent = make_agent()
    name = containers.start(agent, ip_to(netns),
                            f"{sock(AF_INET)}; {sock(AF_INET6, 2)}; {sock(AF_UNIX)}")
    inet, inet6, unix = containers.reports(name, 3)
    own = containers.own_cookie(name)
    assert own not in (netns.cookie, host_cookie)
    assert cookies(inet) == cookies(inet6) == {netns.cookie}
    assert cookies(unix) == {own}
    # podman exec: another connection to the agent, the same annotations
    assert cookies(containers.exec(name, *sock(AF_INET).split())) == {netns.cookie}
    assert cookies(containers.exec(name, *sock(AF_UNIX).split())) == {own}
    assert f"ipv4,ipv6,netlink,packet -> {netns.name}" in agent.text()


def test_two_containers_with_different_stacks_at_once(
        containers: Containers, make_agent: Callable[..., Agent],
        make_netns: MakeNetns) -> None:
    agent = make_agent()
    blue, green = make_netns(), make_netns()
    first = containers.start(agent, ip_to(blue), sock(AF_INET))
    second = containers.start(agent, {"io.mstack.stack": green.name}, sock(AF_INET))
    assert cookies(containers.reports(first, 1)[0]) == {blue.cookie}
    assert cookies(containers.reports(second, 1)[0]) == {green.cookie}
    # both served at once: each exec while the other runs
    assert cookies(containers.exec(first, *sock(AF_INET).split())) == {blue.cookie}
    assert cookies(containers.exec(second, *sock(AF_UNIX).split())) == {green.cookie}
    assert cookies(containers.exec(first, *sock(AF_UNIX).split())) == {
        containers.own_cookie(first)}


def test_metadata_wins_over_annotations(
        containers: Containers, make_agent: Callable[..., Agent],
        make_netns: MakeNetns) -> None:
    blue, green = make_netns(), make_netns()
    agent = make_agent()
    agent.profile.write_text(run([AGENT, "profile", "--socket", str(agent.socket),
                                  "--metadata", f"stack={green.name}; families=ipv4"],
                                 check=True).stdout)
    cp = containers.run(agent, ip_to(blue), sock(AF_INET))
    assert cp.returncode == 0, cp.stderr
    assert cookies(json.loads(cp.stdout)) == {green.cookie}


# --- failing closed ---------------------------------------------------------------------


@pytest.mark.parametrize("annotations, why", [
    ({"io.mstack.stack": "/proc/1/ns/net"}, "is not allowed"),
    ({"io.mstack.stack": "NETNS", "io.mstack.families": "bogus"}, "unknown family"),
    ({"io.mstack.policy": "no-such-policy"}, "no-such-policy"),
    ({"io.mstack.stack": "no-such-stack-here"}, "no-such-stack-here"),
])
def test_what_cannot_be_decided_gets_eacces_never_native(
        containers: Containers, make_agent: Callable[..., Agent], netns: Netns,
        annotations: dict[str, str], why: str) -> None:
    agent = make_agent()
    notes = {k: v.replace("NETNS", netns.name) for k, v in annotations.items()}
    cp = containers.run(agent, notes, f"{sock(AF_INET)}; {sock(AF_UNIX)}")
    assert cp.returncode == 0, cp.stderr
    inet, unix = (json.loads(line) for line in cp.stdout.splitlines())
    assert cookies(inet) == cookies(unix) == {"EACCES"}
    assert "refused" in agent.text() and why in agent.text()


def test_a_stack_outside_the_configured_allow_list_is_refused(
        containers: Containers, make_agent: Callable[..., Agent],
        make_netns: MakeNetns) -> None:
    allowed, other = make_netns(), make_netns()
    agent = make_agent(f'allow = ["{allowed.name}"]\n')
    refused = containers.run(agent, ip_to(other), sock(AF_INET))
    assert cookies(json.loads(refused.stdout)) == {"EACCES"}, refused.stderr
    served = containers.run(agent, ip_to(allowed), sock(AF_INET))
    assert cookies(json.loads(served.stdout)) == {allowed.cookie}, served.stderr


def test_without_the_agent_the_container_does_not_start(
        containers: Containers, make_agent: Callable[..., Agent], netns: Netns) -> None:
    agent = make_agent(start=False)
    cp = containers.run(agent, ip_to(netns), f"{sock(AF_INET)}; echo started")
    assert cp.returncode != 0
    assert "started" not in cp.stdout
    assert str(agent.socket) in cp.stderr or "connect" in cp.stderr, cp.stderr


def test_agent_killed_while_the_container_runs_fails_its_calls(
        containers: Containers, make_agent: Callable[..., Agent], netns: Netns,
        tmp_path: Path) -> None:
    agent = make_agent()
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    name = containers.start(
        agent, ip_to(netns),
        f"{sock(AF_INET)}; while [ ! -e /ctl/go ]; do sleep 0.05; done; "
        f"{sock(AF_INET)}; {sock(AF_UNIX)}", "-v", f"{ctl}:/ctl")
    assert cookies(containers.reports(name, 1)[0]) == {netns.cookie}
    agent.kill()
    (ctl / "go").touch()
    _, inet, unix = containers.reports(name, 3)
    assert cookies(inet) == cookies(unix) == {"ENOSYS"}  # the kernel's answer: no listener


# --- the mapping is final ---------------------------------------------------------------


def test_nothing_inside_changes_the_mapping(
        containers: Containers, make_agent: Callable[..., Agent], netns: Netns,
        host_cookie: int) -> None:
    """msocket, a listener of its own, a new network namespace (CAP_SYS_ADMIN granted for
    it) and a nested mstack: AF_INET stays in the stack."""
    agent = make_agent()
    # the installed mstack and what it runs on (merged /usr: the image links /lib there)
    mounts = [f"--volume={path}:{path}:ro" for path in sorted({"/usr", PREFIX, BINDIR})]
    script = (f"/bin/escape remap {AF_INET} 1 0; /bin/escape clone {AF_INET} 1 0; "
              f"{BINDIR}/mstack -o ip null /bin/escape sock {AF_INET} 1 0; echo $?")
    cp = containers.run(agent, ip_to(netns), script, "--cap-add", "SYS_ADMIN", *mounts)
    lines = cp.stdout.splitlines()
    remap, clones = json.loads(lines[0]), json.loads(lines[1])
    assert remap["msocket"]["errno"] == "ENOSYS"  # the profile's default: no such call
    assert remap["listener"]["errno"] == "EBUSY"  # the runtime's filter holds the listener
    assert remap["socket"]["cookie"] == netns.cookie
    assert clones["clone"]["ret"] > 0  # it did get a namespace of its own ...
    assert clones["clone"]["child"]["cookie"] == netns.cookie  # ... and AF_INET stays in B
    assert clones["clone3"]["child"] in (None, {"cookie": netns.cookie})
    assert lines[2:] == ["125"], cp.stderr  # nested mstack refuses: it runs nothing
    assert "another seccomp listener" in cp.stderr
    assert host_cookie != netns.cookie



# --- a container in a cgroup v2 of its own (every container on a cgroup v2 host) ---------


@pytest.fixture
def own_cgroup() -> Iterator[str]:
    """A cgroup v2 that podman (and so conmon and the container) is started in."""
    with new_cgroup("mstack-agent-") as path:
        yield path


def cgroup_of(pid: int) -> int:
    found = cgroup_mod.v2_mount()
    assert found is not None
    return os.stat(f"{found[0]}{cgroup_mod.task_path(pid)}").st_ino


def test_a_container_in_a_cgroup_of_its_own_gets_sockets_of_its_cgroup(
        containers: Containers, make_agent: Callable[..., Agent], netns: Netns,
        own_cgroup: str) -> None:
    """The agent is not in the container's cgroup: a child born there makes the socket
    (supervisor/visitor.py). sock_diag (ss -e) in the stack names the listener's cgroup."""
    agent = make_agent()
    name = f"mstack-test-{uuid.uuid4().hex[:10]}"
    containers.names.append(name)
    cp = subprocess.run(
        ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", own_cgroup,
         *containers.podman.command("run", "-d", "--name", name,
                                    *containers.flags(agent, ip_to(netns)), IMAGE,
                                    "/bin/nc", "-l", "-p", "9999")],
        capture_output=True, text=True, timeout=90)
    assert cp.returncode == 0, cp.stderr
    listening: list[str] = []

    def listens() -> bool:
        listening[:] = re.findall(r"cgroup:(\S+)", run(
            ["ip", "netns", "exec", netns.name, "ss", "-tlnHe", "sport", "= :9999"]).stdout)
        return bool(listening)
    try:
        assert wait_until(listens, timeout=30), agent.text()
        # own_cgroup itself, or one the runtime made (a host with cgroup v2 only: crun and
        # runc then put it in /libpod_parent/libpod-ID): not the agent's in either case
        containers_cgroup = cgroup_of(containers.podman.pid(name))
        assert agent.proc is not None
        agents_cgroup = cgroup_of(agent.proc.pid)
    finally:
        containers.remove()  # before its cgroup goes
    where = listening[0]
    found = (int(where.split(":")[1], 16) if where.startswith("unreachable:")
             else os.stat(f"{cgroup_mod.v2_mount()[0]}{where}").st_ino)  # type: ignore[index]
    assert found == containers_cgroup and found != agents_cgroup


# --- co-location: only where the runtime made the filter wait killably ------------------


def tasks(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def wait_killable_profile(agent: Agent, socket_path: Path | None = None) -> None:
    agent.profile.write_text(run([AGENT, "profile", "--wait-killable", "--socket",
                                  str(socket_path or agent.socket)], check=True).stdout)


@pytest.mark.parametrize("killable", [True, False], ids=["wait-killable", "plain"])
def test_the_agent_colocates_only_where_the_filter_waits_killably(
        containers: Containers, make_agent: Callable[..., Agent], netns: Netns,
        killable: bool) -> None:
    """A burst of sockets in one thread pins the thread serving it (colocate.py) — only
    when the bundle's config.json asks for SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV."""
    agent = make_agent()
    if killable:
        wait_killable_profile(agent)
        if containers.runtime == "crun":
            skip_without_sync_wakeups(netns)  # co-location needs them (Linux 6.6)
    if killable and containers.runtime == "runc":  # runc 1.1.5 refuses every seccomp flag
        cp = containers.run(agent, ip_to(netns), "echo started")
        assert cp.returncode != 0 and "started" not in cp.stdout
        return
    name = containers.start(agent, ip_to(netns), "/bin/escape burst 2 1 300")
    assert containers.reports(name, 1)[0] == {"last": {"cookie": netns.cookie}, "failed": 0}
    assert agent.proc is not None
    pinned = [t for t in tasks(agent.proc.pid) if len(cpus_allowed(t)) == 1]
    assert len(pinned) == (1 if killable else 0), agent.text()
    assert ("co-located" in agent.text()) == killable


def test_crun_makes_the_filter_wait_killably(podman: Podman, netns: Netns,
                                             tmp_path: Path) -> None:
    """What co-location relies on, checked in the kernel: under a --wait-killable profile a
    stopped caller's received call stays pending (SECCOMP_IOCTL_NOTIF_ID_VALID); under the
    plain profile the stop interrupts it. The test plays the agent."""
    if shutil.which("crun") is None:
        pytest.skip("needs crun (make test installs it)")
    containers = Containers(podman, "crun")
    fake = Agent(podman.base)  # its profile and socket, never started
    try:
        results = {}
        for killable in (True, False):
            if killable:
                wait_killable_profile(fake)
            else:
                fake.profile.write_text(run([AGENT, "profile", "--socket", str(fake.socket)],
                                            check=True).stdout)
            results[killable] = stopped_call_stays_pending(containers, fake)
        assert results == {True: True, False: False}
    finally:
        containers.remove()


def stopped_call_stays_pending(containers: Containers, fake: Agent) -> bool:
    """Start a container whose first socket() comes to us; SIGSTOP the caller; is the
    call still pending? Then fail every call until the container is gone."""
    with contextlib.closing(server.listen(str(fake.socket))) as sock:
        sock.settimeout(60)
        runner = subprocess.Popen(
            containers.podman.command("run", "--rm", *containers.flags(fake, {}), IMAGE,
                                      "/bin/escape", "sock", "2", "1", "0"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fds: list[int] = []
        try:
            conn, _ = sock.accept()
            with conn:
                _, fds = server.receive(conn)
            listener = Listener(fds[0])
            assert select.select([listener.fd], [], [], 60)[0], "no call came"
            notif = listener.recv()
            assert listener.id_valid(notif.id)
            os.kill(notif.pid, signal.SIGSTOP)
            try:  # a killable wait ignores the stop (and the caller never gets to stop)
                pending = not wait_until(lambda: not listener.id_valid(notif.id), timeout=2)
                state = "D" if pending else "T"  # waiting killably, or stopped
                assert wait_until(lambda: proc_state(notif.pid) == state, timeout=10)
            finally:
                os.kill(notif.pid, signal.SIGCONT)
            if pending:
                listener.send(notif.id, error=-errno.ENETDOWN)
            waiting = select.poll()
            waiting.register(listener.fd, select.POLLIN)
            with contextlib.suppress(OSError):  # until every caller has gone (POLLHUP alone:
                while True:                     # on 6.1 a RECV then blocks for good)
                    ready = waiting.poll(30_000)
                    if not ready or not ready[0][1] & select.POLLIN:
                        break
                    listener.send(listener.recv().id, error=-errno.ENETDOWN)
            return pending
        finally:
            server.close_all(fds)
            runner.wait(timeout=60)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
