#!/usr/bin/env python3
"""make bench: mstack side by side with native, ip netns exec and View-OS' umview.

Every comparison runs on this machine in one run and is reported as a ratio of rates
(baseline time / variant time: 1.0 = as fast as the baseline), with the min and median of
several rounds. Absolute times vary a lot on shared machines; ratios measured together do
not. Writes bench/results.json, bench/results.md, bench/overheads.png and bench/README.md
(the table with the date, kernel, CPU and Python of the run, and what bounds each row).
Traffic stays on loopback inside the benchmark's own namespaces; they are removed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/agent.py
from agent import GROUP as AGENT_GROUP  # noqa: E402
from agent import HOST as AGENT_HOST  # noqa: E402
from agent import START as AGENT_START  # noqa: E402
from visitor import GROUP as VISIT_GROUP  # noqa: E402
from visitor import OWN as VISIT_OWN  # noqa: E402

BIN = HERE / "bin"
MSTACK = shutil.which("mstack", path=os.environ.get("MSTACK_BINDIR", "/usr/local/bin")) or "mstack"
UMVIEW = ["env", "LD_BIND_NOW=1", "umview", "-x", "-p", "umnet"]
REPS = "7"
ROUNDS = 3


@dataclass
class Row:
    group: str
    name: str
    min_ns: float
    median_ns: float
    baseline: str = ""
    ratio_min: float = 0.0
    ratio_median: float = 0.0
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)


KEEP = "--keep-namespace"  # the IP families stay redirected: the supervisor's own path
HOME = "socket()+close(), AF_INET, in a home stack"
UNIX = "socket()+close(), AF_UNIX"


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kw)


def build() -> None:
    BIN.mkdir(exist_ok=True)
    targets = (("workload.c", "workload", False), ("workload.c", "workload.static", True),
               ("allowall.c", "allowall", False), ("notifybound.c", "notifybound", False))
    for src, out, static in targets:
        args = ["cc", "-O2", "-o", str(BIN / out), str(HERE / src)]
        if static:
            args.insert(1, "-static")
        cp = sh(*args)
        if cp.returncode:
            sys.exit(f"bench: building {out} failed:\n{cp.stderr}")


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[str]]:
    names = [f"mstk-bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names:
            for pid in sh("ip", "netns", "pids", name).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            sh("ip", "netns", "del", name)


def measure(prefix: list[str], *workload: str, static: bool = False) -> tuple[float, float]:
    binary = str(BIN / ("workload.static" if static else "workload"))
    cp = sh(*prefix, binary, *workload, env={**os.environ, "REPS": REPS}, timeout=600)
    lines = [line for line in cp.stdout.splitlines() if line.startswith("{")]
    if cp.returncode or not lines:
        raise RuntimeError(f"{' '.join(prefix)} {binary} {' '.join(workload)}: {cp.stderr[-300:]}")
    result = json.loads(lines[-1])
    if result.get("fails"):
        raise RuntimeError(f"{workload}: {result['fails']} calls failed")
    return float(result["min_ns"]), float(result["median_ns"])


def per_call(rows: list[Row], ns: str, ns2: str) -> None:
    m = [MSTACK]
    variants_getpid = [
        ("native", [], False),
        ("allow-all seccomp filter", [str(BIN / "allowall")], False),
        ("mstack -o ip NS (unlocked)", [*m, "-o", "ip", ns], False),
        ("mstack --lock -o ip NS", [*m, "--lock", "-o", "ip", ns], False),
        ("mstack --lock -o ip null (no supervisor)", [*m, "--lock", "-o", "ip", "null"], False),
        ("umview (View-OS, static)", UMVIEW, True),
    ]
    for group, workload, n in (("getpid", ("getpid",), "2000000"),
                               ("read /dev/zero", ("readzero",), "1000000")):
        # Rounds interleaved across variants: a few percent of drift would otherwise land
        # on whichever variant ran during it.
        results: dict[str, list[tuple[float, float]]] = {v[0]: [] for v in variants_getpid}
        for _ in range(ROUNDS):
            for name, prefix, static in variants_getpid:
                count = str(int(n) // 100) if prefix is UMVIEW else n
                results[name].append(measure(prefix, *workload, count, static=static))
        for name, _, _ in variants_getpid:
            rows.append(Row(group, name, min(r[0] for r in results[name]),
                            statistics.median(r[1] for r in results[name])))
    socket_variants: list[tuple[str, list[str], tuple[str, ...]]] = [
        ("native", [], ("socket", "2")),
        ("native family, mstack --lock -o 6 null", [*m, "--lock", "-o", "6", "null"],
         ("socket", "2")),
        ("native family, mstack -o 6 NS (CONTINUE)", [*m, "-o", "6", ns], ("socket", "2")),
        ("CONTINUE from a minimal C supervisor (the bound)", [str(BIN / "notifybound"),
                                                              "continue"], ("socket", "2")),
        ("null family, mstack --lock -o 4 null", [*m, "--lock", "-o", "4", "null"],
         ("socket", "2")),
        ("null family, mstack -o 4 null", [*m, "-o", "4", "null"], ("socket", "2")),
        ("redirected, mstack --keep-namespace -o 4 NS", [*m, KEEP, "-o", "4", ns],
         ("socket", "2")),
        ("redirected by a minimal C supervisor: socket(), ADDFD with SEND (the bound)",
         [str(BIN / "notifybound"), "inject"], ("socket", "2")),
        ("redirected, mstack --keep-namespace --no-colocate -o 4 NS (the scheduler's own "
         "placement)", [*m, KEEP, "--no-colocate", "-o", "4", ns], ("socket", "2")),
        ("redirected, supervisor and command on one CPU (taskset -c 1)",
         ["taskset", "-c", "1", *m, KEEP, "-o", "4", ns], ("socket", "2")),
        ("redirected, both CPUs kept busy (nice-19 spinners: no idle wake-ups)",
         ["busy", *m, KEEP, "-o", "4", ns], ("socket", "2")),
        ("redirected, own table (nested mstack: table lookup)",
         [*m, KEEP, "-o", "4", ns, *m, KEEP, "-o", "4", ns2], ("socket", "2")),
        ("redirected via msocket(NS)", [*m, "-o", "6", ns], ("msocket", f"/run/netns/{ns}", "2")),
        ("native family, mstack -v --lock -o 6 null (eBPF tracing on)",
         [*m, "-v", "--lock", "-o", "6", "null"], ("socket", "2")),
        ("umview (View-OS, static)", UMVIEW, ("socket", "2")),
    ]
    for name, prefix, args in socket_variants:
        null = "null family" in name
        slow = prefix is UMVIEW or "redirected" in name or "CONTINUE" in name
        count = "3000" if slow else "20000"
        if null:
            lo, med = measure_null(prefix, args, count)
        elif prefix[:1] == ["busy"]:
            with spinners():
                lo, med = measure(prefix[1:], *args, count)
        else:
            lo, med = measure(prefix, *args, count, static=prefix is UMVIEW)
        rows.append(Row("socket()+close()", name, lo, med))
    home(rows, ns)


def home(rows: list[Row], ns: str) -> None:
    """The command living in NS (core/home.py): its IP families are the kernel's own, against
    the same loop under ip netns exec; AF_UNIX, left native, is redirected to where mstack
    started, against a native AF_UNIX socket()."""
    m = [MSTACK]
    variants: list[tuple[str, str, list[str], tuple[str, ...]]] = [
        (HOME, "ip netns exec NS", ["ip", "netns", "exec", ns], ("socket", "2")),
        (HOME, "ip netns exec NS + allow-all seccomp filter (the bound)",
         ["ip", "netns", "exec", ns, str(BIN / "allowall")], ("socket", "2")),
        (HOME, "mstack --lock -o ip NS (the kernel's own, under the filter)",
         [*m, "--lock", "-o", "ip", ns], ("socket", "2")),
        (HOME, "mstack -o ip NS (CONTINUE)", [*m, "-o", "ip", ns], ("socket", "2")),
        (HOME, "ip netns exec NS + CONTINUE from a minimal C supervisor (the bound)",
         ["ip", "netns", "exec", ns, str(BIN / "notifybound"), "continue"], ("socket", "2")),
        (UNIX, "native", [], ("socket", "1")),
        (UNIX, "mstack -o ip NS (redirected to where mstack started)",
         [*m, "-o", "ip", ns], ("socket", "1")),
        (UNIX, "redirected by a minimal C supervisor (the bound)",
         [str(BIN / "notifybound"), "inject"], ("socket", "1")),
    ]
    # Rounds interleaved across variants, as for getpid: drift lands on every variant alike.
    results: dict[str, list[tuple[float, float]]] = {v[1]: [] for v in variants}
    for _ in range(ROUNDS):
        for _group, name, prefix, args in variants:
            slow = "redirected" in name or "CONTINUE" in name
            results[name].append(measure(prefix, *args, "3000" if slow else "20000"))
    for group, name, _prefix, _args in variants:
        rows.append(Row(group, name, min(r[0] for r in results[name]),
                        statistics.median(r[1] for r in results[name])))


@contextlib.contextmanager
def spinners() -> Iterator[None]:
    """Keep every CPU busy at the lowest priority, so that no wake-up leaves an idle CPU."""
    procs = [subprocess.Popen(["nice", "-n", "19", "sh", "-c", "while :; do :; done"])
             for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.2)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def measure_null(prefix: list[str], workload: tuple[str, ...], count: str) -> tuple[float, float]:
    """A refused socket(): the workload counts failures, which are the point here."""
    cp = sh(*prefix, str(BIN / "workload"), *workload, count, env={**os.environ, "REPS": REPS})
    result = json.loads(cp.stdout.splitlines()[-1])
    return float(result["min_ns"]), float(result["median_ns"])


def tcp(rows: list[Row], ns: str) -> None:
    """Server and client pinned to different CPUs in both variants, rounds interleaved:
    loopback TCP on a small VM swings by ±40 % with placement and drift."""
    port = "5201"
    variants = (("ip netns exec NS", ["ip", "netns", "exec", ns]),
                ("ip netns exec NS + allow-all seccomp filter",
                 ["ip", "netns", "exec", ns, str(BIN / "allowall")]),
                ("mstack -o ip NS (lives in NS)", [MSTACK, "-o", "ip", ns]),
                ("mstack --keep-namespace -o ip NS (redirected)",
                 [MSTACK, KEEP, "-o", "ip", ns]))
    for chunk, total in (("128", "50000000"), ("65536", "2000000000")):
        results: dict[str, list[float]] = {name: [] for name, _ in variants}
        for _ in range(7):
            for name, prefix in variants:
                server = subprocess.Popen(
                    ["taskset", "-c", "0", *prefix, str(BIN / "workload"), "tcp-server", port],
                    stdout=subprocess.PIPE, text=True)
                assert server.stdout is not None
                server.stdout.readline()
                client = sh("taskset", "-c", "1", *prefix, str(BIN / "workload"), "tcp-client",
                            port, total, chunk)
                server.wait(timeout=120)
                results[name].append(json.loads(client.stdout)["MBps"])
        for name, _ in variants:
            best, med = max(results[name]), statistics.median(results[name])
            # rates → "ns per MB" so that ratios read like the others
            rows.append(Row(f"TCP, {chunk}-byte writes", name, 1e3 / best, 1e3 / med,
                            extra={"MBps_best": best, "MBps_median": med}))


def tracing(rows: list[Row]) -> None:
    """The eBPF tracer: how long loading and attaching takes, and what an attached tracer
    costs processes it does not even trace (the sys_exit hook runs for every syscall)."""
    from mstack_bpf.trace.tracer import Tracer

    loads = []
    for _ in range(5):
        t = time.perf_counter()
        Tracer(root_pid=os.getpid()).close()
        loads.append((time.perf_counter() - t) * 1e9)
    rows.append(Row("eBPF tracer", "load and attach", min(loads), statistics.median(loads)))
    idle = subprocess.Popen(["sleep", "600"])
    try:
        base = measure([], "getpid", "2000000")
        rows.append(Row("getpid", "native (again, before the tracer row)", *base))
        with Tracer(root_pid=idle.pid):
            rows.append(Row("getpid", "native, eBPF tracer attached to another tree",
                            *measure([], "getpid", "2000000")))
    finally:
        idle.kill()
        idle.wait()


def startup(rows: list[Row], ns: str) -> None:
    for name, cmd in (("ip netns exec NS true", ["ip", "netns", "exec", ns, "true"]),
                      ("mstack NS true", [MSTACK, ns, "true"]),
                      ("mstack --keep-namespace NS true", [MSTACK, KEEP, ns, "true"]),
                      ("mstack --lock null true", [MSTACK, "--lock", "null", "true"]),
                      ("python3 -c pass", ["/usr/bin/python3", "-c", "pass"])):
        times = []
        for _ in range(15):
            t = time.perf_counter()
            subprocess.run(cmd, check=True)
            times.append((time.perf_counter() - t) * 1e9)
        rows.append(Row("start-up", name, min(times), statistics.median(times)))


def supervisor_rss() -> float:
    """Largest VmRSS (kB) among running supervisors."""
    best = 0.0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == "mstack-sv":
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        best = max(best, float(line.split()[1]))
        except OSError:
            continue
    return best


def scale(rows: list[Row], stacks: list[str]) -> None:
    for procs in (1, 8, 64):
        per = 8000 if procs == 1 else 2000 if procs == 8 else 500
        for nstacks in (1, 16):
            inner = " ".join(
                f"mstack -o 4 {stacks[i % nstacks]} {BIN / 'workload'} socket 2 {per} >/dev/null &"
                for i in range(procs))
            script = f"{inner} wait"
            t = time.perf_counter()
            proc = subprocess.Popen([MSTACK, "-o", "4", stacks[0], "bash", "-c", script],
                                    env={**os.environ, "REPS": "1"})
            rss = 0.0
            while proc.poll() is None:
                rss = max(rss, supervisor_rss())
                time.sleep(0.05)
            wall = time.perf_counter() - t
            calls = procs * per * 1.1  # the workload's warm-up round adds a tenth
            rows.append(Row("supervisor scale", f"{procs} procs, {nstacks} stacks",
                            wall / calls * 1e9, wall / calls * 1e9,
                            extra={"calls_per_s": calls / wall, "rss_MB": rss / 1024}))


def containers(rows: list[Row], ns: str, count: int = 50, rounds: int = ROUNDS) -> None:
    """The mstack-agent rows (bench/agent.py); skipped without podman and crun."""
    if not (shutil.which("podman") and shutil.which("crun") and Path("/bin/busybox").exists()):
        print("bench: no podman, crun or busybox-static: no mstack-agent rows", file=sys.stderr)
        return
    from agent import agent_rows

    def add(group: str, name: str, lo: float, med: float, **extra: float) -> None:
        rows.append(Row(group, name, lo, med, extra=dict(extra)))
    agent_rows(add, measure, MSTACK, ns, BIN / "workload.static", rounds, count)


def in_cgroups(rows: list[Row], ns: str, rounds: int = ROUNDS) -> None:
    """The visitor rows (bench/visitor.py)."""
    from visitor import visitor_rows

    def add(group: str, name: str, lo: float, med: float) -> None:
        rows.append(Row(group, name, lo, med))
    visitor_rows(add, ns, rounds)


def ratios(rows: list[Row]) -> None:
    baselines = {"getpid": "native", "read /dev/zero": "native", "socket()+close()": "native",
                 "start-up": "ip netns exec NS true", HOME: "ip netns exec NS", UNIX: "native",
                 AGENT_GROUP: AGENT_HOST, AGENT_START: "default profile",
                 VISIT_GROUP: VISIT_OWN}
    for row in rows:
        base_name = baselines.get(row.group)
        if row.group.startswith("TCP"):
            base_name = "ip netns exec NS"
        base = next((r for r in rows if r.group == row.group and r.name == base_name), None)
        if base is None:
            continue
        row.baseline = base_name or ""
        row.ratio_min = base.min_ns / row.min_ns
        row.ratio_median = base.median_ns / row.median_ns
    # the physical limit: any seccomp filter sends syscalls through the slower entry path
    for group in ("getpid", "read /dev/zero", HOME):
        allow = next((r for r in rows if r.group == group and "allow-all" in r.name), None)
        if allow is None:
            continue
        for row in rows:
            if row.group == group and row.name.startswith("mstack"):
                row.note = f"{allow.median_ns / row.median_ns:.3f} of allow-all"
    # the least any supervisor can cost: the minimal C one (bench/notifybound.c)
    for row in rows:
        kind = "CONTINUE" if "CONTINUE" in row.name else "redirected"
        if "mstack" not in row.name or kind not in row.name or "minimal C" in row.name:
            continue
        bound = next((r for r in rows if r.group == row.group and "minimal C" in r.name
                      and (kind == "CONTINUE") == ("CONTINUE" in r.name)), None)
        if bound is not None:
            note = f"{bound.median_ns / row.median_ns:.3f} of the C bound"
            row.note = f"{row.note}; {note}" if row.note else note


def table(rows: list[Row]) -> str:
    out = ["| benchmark | variant | min | median | ratio (min / median) | note |",
           "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        note = r.note or ", ".join(f"{k} {v:.1f}" for k, v in r.extra.items())
        ratio = f"{r.ratio_min:.3f} / {r.ratio_median:.3f}" if r.baseline else "-"
        out.append(f"| {r.group} | {r.name} | {duration(r, r.min_ns)} | "
                   f"{duration(r, r.median_ns)} | {ratio} | {note} |")
    return "\n".join(out)


def duration(row: Row, value: float) -> str:
    """A time for the table; TCP rows hold 1e3 / (MB/s), i.e. milliseconds per MB."""
    if "MBps_best" in row.extra:
        return f"{value:.2f} ms/MB"
    unit = ("µs", 1e3) if row.min_ns > 5000 else ("ns", 1.0)
    return f"{value / unit[1]:.1f} {unit[0]}"


def machine() -> dict[str, str]:
    """What bench/README.md says about the run: date, kernel, CPU model and count, Python."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"date": time.strftime("%Y-%m-%d"), "kernel": platform.release(),
            "CPU": f"{model}, {os.cpu_count()} CPUs", "Python": platform.python_version()}


README_HEAD = """\
# mstack benchmarks

The last `make bench` run on this project's test machine. `make bench` (never part of
`make test`) rewrites this file, with `results.md`, `results.json` and the plot
`overheads.png` (those three are not committed); edit the text in `bench/run.py`, not here.
"""

README_HOW = """\
Every comparison runs side by side in one run. A ratio is baseline time / variant time (1.0:
as fast as the baseline; above 1: faster), as the min and the median of several rounds,
interleaved across variants. The baseline is `native` in each group, `ip netns exec NS` for
TCP and start-up. `NS` is a namespace the benchmark makes; `null` the built-in null stack.
The TCP rows give time per megabyte (1000 / MB/s) in the min and median columns, so that their
ratios read like the others; the note gives the rates.
"""

README_BOUNDS = """\
## What bounds each row

- **getpid, read /dev/zero** (system calls that are not socket calls) cost what *any* seccomp
  filter costs: with a filter installed, every system call takes the kernel's slower entry
  path. The "allow-all seccomp filter" row is that bound, and the note column gives each
  mstack row as a fraction of it: mstack's filter decides non-socket calls on their number
  alone, so the kernel's seccomp action cache skips it for them. umview (View-OS) stops at
  every system call with ptrace.
- **A native family under `--lock`** is allowed in the kernel and **a null family under
  `--lock`** refused there: no round trip to user space. Refusing is cheaper than making a
  socket, hence a null row above 1.
- **Without `--lock`** every socket call reaches the supervisor, so that a nested mstack can
  still change its family: a native family is answered with CONTINUE and a null one with an
  errno, both with `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, which keeps the round trip on one CPU.
  The supervisor waits and answers in C (`linux/_fastpath.c`): a call whose answer its
  registers decide, met before, never reaches Python. The bound is a minimal supervisor in C
  (`bench/notifybound.c`) that answers every `socket()` with CONTINUE: the kernel's round
  trip plus nothing.
- **A redirected `socket()`** is a round trip to the supervisor: `NOTIF_RECV`, the caller's
  owner ids and cgroup (one `PIDFD_GET_INFO`), `socket()` inside the stack, `ADDFD` and the
  reply. The first of a caller's sockets goes through Python; while the same thread repeats,
  the C loop makes the next ones itself, as long as the caller's ids and cgroup are the
  supervisor's (else Python switches to them). The bound is the minimal C supervisor making
  the socket in its own namespace and injecting it with one `ADDFD` with SEND.
  `ADDFD` wakes the caller without the synchronous flag, so with the scheduler's own
  placement (the `--no-colocate` row) every round trip crosses CPUs and, on an idle VM, waits
  for a halted vCPU to wake. Co-location (docs/design.md, "CPU placement") keeps the round
  trip on one CPU; it pays two more process switches, one `SEND` and three affinity calls so
  that the caller never sees its narrowed affinity, which the row with supervisor and
  command pinned to one CPU by the user (`taskset`) does not need. The row with both CPUs
  kept busy shows the round trip without idle wake-ups. A per-process default table (the
  nested-mstack row) is looked up in the eBPF carrier's map where eBPF runs (one `bpf()`
  call), else by a check of the caller's marker (one `kcmp()`), and keeps every call in
  Python. msocket with a path
  reads, resolves and checks the path at every call, in the slow lane.
- **In a home stack** (the command lives in the stack of its IP families, docs/design.md,
  "Native"): under `--lock` an AF_INET `socket()` is the kernel's own, against the same loop
  under `ip netns exec`, and what is left is the filter's entry cost; without the lock it is
  one CONTINUE round trip, against the same loop under `ip netns exec` with the minimal C
  supervisor. AF_UNIX, left native, is redirected to where mstack started: the supervisor's
  round trip, against a native AF_UNIX `socket()` and the minimal C supervisor. The
  redirected rows above run with `--keep-namespace`, which keeps the IP families on that
  path.
- **TCP throughput** of a redirected socket is the kernel's: it is an ordinary socket of the
  stack. Each `write()` pays the seccomp entry path, exactly as under the allow-all filter,
  which is the bound for the 128-byte rows. With 64 KiB writes the system calls are few
  against the copying, and what remains between the rows is placement: loopback transfers
  on a small VM swing with CPU placement even with pinned, interleaved rounds, so read those
  ratios as equal.
- **Start-up** is Python's and click's imports (`python3 -c pass` is the interpreter alone),
  plus the supervisor's set-up when something is redirected; `--lock` with nothing
  redirected starts no supervisor.
- **mstack-agent** (podman with crun, bench/agent.py): a redirected `socket()` in a container,
  served by the agent, against the same call under `mstack --keep-namespace` on the host. The
  agent runs without co-location (it would need the runtime to set `WAIT_KILLABLE_RECV`), so
  its round trip is placed by the scheduler. The start-up rows time `podman run` of a
  container that makes one socket and exits, with podman's default profile and through the
  agent; the memory row is the agent's resident size while that many containers run.
- **Supervisor scale**: aggregate calls per second of 1, 8 and 64 concurrent processes, each
  started by its own nested mstack (start-up included), across 1 and 16 stacks; `rss_MB` is
  the supervisor's largest resident size. Its loop is single-threaded. Co-location applies
  to a thread that calls back to back; calls from many threads at once are served where the
  scheduler puts them.
- **eBPF tracing** (`-v`, `mstack-trace`): "load and attach" is what a `-v` run pays once at
  start. While attached, the `sys_exit` hook runs for every system call on the machine,
  traced or not ("native, eBPF tracer attached to another tree" against "native (again,
  before the tracer row)"); a traced socket call costs the difference between the `-v
  --lock` row and the `--lock` row.
"""


def readme(text: str, facts: dict[str, str]) -> str:
    """bench/README.md: the run's facts, the table ``text`` and what bounds each row."""
    run = ["| " + " | ".join(facts) + " |", "| --- " * len(facts) + "|",
           "| " + " | ".join(facts.values()) + " |"]
    return "\n".join([README_HEAD, *run, "", README_HOW, text, "", README_BOUNDS])


def plot(rows: list[Row], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing, no plot", file=sys.stderr)
        return
    picked = [r for r in rows if r.group in ("getpid", "socket()+close()")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, group in zip(axes, ("getpid", "socket()+close()"), strict=True):
        data = [r for r in picked if r.group == group]
        ax.barh([r.name for r in data], [r.median_ns / 1e3 for r in data], color="#4c72b0")
        ax.set_xscale("log")
        ax.set_xlabel("µs per call (median, log scale)")
        ax.set_title(group)
        ax.invert_yaxis()
    fig.suptitle(f"mstack per-call overheads — {platform.node()}, {time.strftime('%Y-%m-%d')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: run as root (namespaces, seccomp)")
    build()
    rows: list[Row] = []
    with namespaces(16) as stacks:
        per_call(rows, stacks[0], stacks[1])
        tcp(rows, stacks[0])
        startup(rows, stacks[0])
        tracing(rows)
        scale(rows, stacks)
        containers(rows, stacks[0])
        in_cgroups(rows, stacks[0])
    ratios(rows)
    text = table(rows)
    header = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.node()} "
              f"({os.cpu_count()} CPUs, kernel {platform.release()}); ratios are baseline "
              f"time / variant time in the same run.")
    print(header)
    print(text)
    (HERE / "results.md").write_text(header + "\n\n" + text + "\n")
    (HERE / "results.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    (HERE / "README.md").write_text(readme(text, machine()))
    plot(rows, HERE / "overheads.png")


def agent_only(count: int) -> None:
    """``bench/run.py agent [N]``: only the mstack-agent rows, one round, N containers."""
    build()
    rows: list[Row] = []
    with namespaces(1) as stacks:
        containers(rows, stacks[0], count, rounds=1)
        in_cgroups(rows, stacks[0], rounds=1)
    ratios(rows)
    print(table(rows))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        if sys.argv[1:2] == ["agent"]:
            agent_only(int(sys.argv[2]) if sys.argv[2:] else 5)
        else:
            main()
