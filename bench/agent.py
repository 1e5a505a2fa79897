"""make bench, the mstack-agent rows: a redirected socket() inside a podman (crun) container
served by the agent against the same call under mstack on the host, the agent's memory with
many containers at once, and podman run → first socket with and without the agent.

podman runs with a storage root of its own under a temporary directory (removed after), in
a private mount namespace without /sys/fs/cgroup/unified (crun refuses the hybrid layout),
with cgroupfs and explicit rlimits (no systemd, no CAP_SYS_RESOURCE here).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

AGENT = shutil.which("mstack-agent",
                     path=os.environ.get("MSTACK_BINDIR", "/usr/local/bin")) or "mstack-agent"
IMAGE = "localhost/mstack-bench"
GROUP = "mstack-agent: socket()+close(), AF_INET"
HOST = "redirected on the host, mstack --keep-namespace -o 4 NS"
START = "mstack-agent: podman run → first socket()"
Measure = Callable[..., tuple[float, float]]


class Bench:
    """A podman storage root, an image with the static workload, and an agent serving."""

    def __init__(self, base: Path, workload: Path) -> None:
        self.base = base
        self.sock = base / "agent.sock"
        self.podman = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"),
                       "--tmpdir", str(base / "tmp"), "--network-config-dir", str(base / "net"),
                       "--cgroup-manager=cgroupfs", "--events-backend=file"]
        rootfs = base / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        (rootfs / "bin" / "sleep").symlink_to("busybox")
        shutil.copy(workload, rootfs / "workload")
        with tarfile.open(base / "image.tar", "w") as tar:
            tar.add(rootfs, arcname=".")
        self.run("import", "-q", str(base / "image.tar"), IMAGE)
        self.profile = base / "profile.json"
        self.profile.write_text(self._profile())
        #: the filter waits killably: the agent co-locates (agent.py)
        self.killable = base / "killable.json"
        self.killable.write_text(self._profile("--wait-killable"))
        (base / "none.toml").write_text("")  # the defaults, whatever /etc/mstack holds
        #: a cgroup v2 of its own for one container (as every container has on a v2 host)
        self.cgroup = _own_cgroup()
        self.agent = subprocess.Popen([AGENT, "serve", "--socket", str(self.sock), "--config",
                                       str(base / "none.toml")], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _profile(self, *flags: str) -> str:
        return subprocess.run([AGENT, "profile", "--socket", str(self.sock), *flags],
                              check=True, capture_output=True, text=True).stdout

    def run(self, *args: str, cgroup: str | None = None) -> str:
        join = [] if cgroup is None else [
            "sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", cgroup]
        cp = subprocess.run([*join, "unshare", "-m", "--propagation", "private", "sh", "-c",
                             'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"', "sh",
                             *self.podman, *args], capture_output=True, text=True, timeout=600)
        if cp.returncode:
            raise RuntimeError(f"podman {' '.join(args[:3])}...: {cp.stderr[-300:]}")
        return cp.stdout

    def container(self, ns: str | None, *command: str, detach: bool = False,
                  killable: bool = True, cgroup: str | None = None) -> str:
        flags = ["--runtime", "crun", "--network", "none", "--env", "REPS=7",
                 "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
        if ns is not None:
            profile = self.killable if killable else self.profile
            flags += ["--security-opt", f"seccomp={profile}",
                      f"--annotation=io.mstack.stack={ns}",
                      "--annotation=io.mstack.families=ipv4"]
        return self.run("run", "-d" if detach else "--rm", *flags, IMAGE, *command,
                        cgroup=cgroup)

    def shielded(self) -> bool:
        """Whether the agent runs with oom_score_adj -1000 (else its children fork)."""
        return Path(f"/proc/{self.agent.pid}/oom_score_adj").read_text().strip() == "-1000"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.agent.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.run("rm", "-af", "-t", "0")
        with contextlib.suppress(RuntimeError):
            self.run("rmi", "-af")
        self.agent.kill()
        self.agent.wait()
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self.cgroup)


def _own_cgroup() -> str | None:
    """A new cgroup v2 directory (None: no v2 hierarchy mounted at its root here)."""
    from mstack_bpf.linux.cgroup import v2_mount
    found = v2_mount()
    if found is None or found[1] != "/":
        return None
    path = tempfile.mkdtemp(prefix="mstack-bench-", dir=found[0])
    return path


@contextlib.contextmanager
def bench(workload: Path) -> Iterator[Bench]:
    base = Path(tempfile.mkdtemp(prefix="mstack-bench-agent-"))
    b: Bench | None = None
    try:
        b = Bench(base, workload)
        yield b
    finally:
        if b is not None:
            b.close()
        shutil.rmtree(base, ignore_errors=True)


def _json(out: str) -> tuple[float, float]:
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    if result.get("fails"):
        raise RuntimeError(f"{result['fails']} calls failed in the container")
    return float(result["min_ns"]), float(result["median_ns"])


def agent_rows(add: Callable[..., None], measure: Measure, mstack: str, ns: str,
               workload: Path, rounds: int, containers: int = 50) -> None:
    """Add the agent's rows with ``add(group, name, min, median, **extra)``; ``measure`` runs
    the host workload as run.py does."""
    with bench(workload) as b:
        host: list[tuple[float, float]] = []
        inside: list[tuple[float, float]] = []
        plain: list[tuple[float, float]] = []
        elsewhere: list[tuple[float, float]] = []
        for _ in range(rounds):  # interleaved: drift lands on all
            host.append(measure([mstack, "--keep-namespace", "-o", "4", ns], "socket", "2",
                                "3000"))
            inside.append(_json(b.container(ns, "/workload", "socket", "2", "3000")))
            plain.append(_json(b.container(ns, "/workload", "socket", "2", "3000",
                                           killable=False)))
            if b.cgroup is not None:
                elsewhere.append(_json(b.container(ns, "/workload", "socket", "2", "1000",
                                                   cgroup=b.cgroup)))
        for name, got in ((HOST, host),
                          ("in a container, through mstack-agent (crun, --wait-killable)",
                           inside),
                          ("the same, profile without --wait-killable (no co-location)",
                           plain),
                          ("the same, the container in a cgroup v2 of its own (" + (
                              "a child born there sharing the agent's memory" if b.shielded()
                              else "a forked child: no CAP_SYS_RESOURCE for the OOM shield")
                           + " makes each socket)", elsewhere)):
            if got:
                add(GROUP, name, min(r[0] for r in got), statistics.median(r[1] for r in got))
        for name, ns_or_none in (("default profile", None), ("through mstack-agent", ns)):
            times = []
            for _ in range(max(rounds, 5)):
                t = time.perf_counter()
                b.container(ns_or_none, "/workload", "socket", "2", "1")
                times.append((time.perf_counter() - t) * 1e9)
            add(START, name, min(times), statistics.median(times))
        for _ in range(containers):
            b.container(ns, "/bin/sleep", "600", detach=True)
        rss = b.rss_mb()
        add("mstack-agent: memory", f"agent serving {containers} containers", 0.0, 0.0,
            rss_MB=rss)
