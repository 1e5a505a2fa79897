"""mstack-agent under containerd: ``ctr run`` with runc and the profile as runtime-spec
``linux.seccomp`` (``mstack-agent profile --oci``), the mapping in ``listenerMetadata`` as
Kubernetes nodes use it. containerd runs with a root, state and socket of its own under a
temporary directory, in a private mount namespace (its snapshots and the containers' mounts
go with it), and the image is an OCI layout built here (nothing is pulled)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Netns, Report, needs_root, run, wait_until
from tests.e2e.conftest import AGENT, Agent, agents, probe_rootfs

IMAGE = "localhost/mstack-agent-probe:latest"
ABIS = ("x86_64", "high32", "i386_socket", "i386_socketcall")

pytestmark = [
    needs_root,
    pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                       reason="needs containerd (make test installs it)"),
    pytest.mark.timeout(180),
]


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(rootfs: Path, out: Path, ref: str) -> None:
    """An OCI image layout (image-spec, image-layout.md) of ``rootfs`` as one layer."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        t.add(rootfs, arcname=".")
    with tarfile.open(out, "w") as tar:
        lay = _blob(tar, layer.getvalue())
        config = _blob(tar, json.dumps({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [lay["digest"]]}}).encode())
        manifest = _blob(tar, json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **lay}]
        }).encode())
        for name, data in (("oci-layout", {"imageLayoutVersion": "1.0.0"}),
                           ("index.json", {"schemaVersion": 2, "manifests": [{
                               "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               **manifest,
                               "annotations": {"org.opencontainers.image.ref.name": ref}}]})):
            text = json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))


class Containerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "containerd.sock"
        (base / "config.toml").write_text(
            'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "containerd", "--root",
             str(base / "root"), "--state", str(base / "state"), "--address", str(self.sock),
             "--config", str(base / "config.toml")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: self.ctr("version").returncode == 0, timeout=30)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "-a", str(self.sock), *args], timeout=90)

    def close(self) -> None:
        for line in self.ctr("containers", "ls", "-q").stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", line)
            self.ctr("containers", "rm", line)
        self.ctr("images", "rm", IMAGE)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    if not Path("/bin/busybox").exists():
        pytest.skip("needs busybox-static (make test installs it)")
    base = Path(tempfile.mkdtemp(prefix="mstack-agent-ctr-"))
    daemon: Containerd | None = None
    try:
        probe_rootfs(base / "rootfs")
        oci_layout(base / "rootfs", base / "image.tar", IMAGE)
        daemon = Containerd(base)
        imported = daemon.ctr("images", "import", str(base / "image.tar"))
        assert imported.returncode == 0, imported.stderr
        yield daemon
    finally:
        if daemon is not None:
            daemon.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def agent(containerd: Containerd) -> Iterator[Agent]:
    with agents(containerd.base) as make:
        yield make()


def ctr_run(containerd: Containerd, agent: Agent, metadata: str, script: str) -> list[Report]:
    profile = agent.socket.with_suffix(".oci.json")
    profile.write_text(run([AGENT, "profile", "--oci", "--socket", str(agent.socket),
                            "--metadata", metadata], check=True).stdout)
    cp = containerd.ctr("run", "--rm", "--seccomp", "--seccomp-profile", str(profile), IMAGE,
                        f"mstack-test-{uuid.uuid4().hex[:10]}", "/bin/sh", "-c", script)
    assert cp.returncode == 0, cp.stderr
    return [json.loads(line) for line in cp.stdout.splitlines()]


def cookies(report: Report) -> set[object]:
    return {report[abi].get("cookie", report[abi].get("errno")) for abi in ABIS}


def test_ctr_run_takes_its_mapping_from_the_profile(containerd: Containerd, agent: Agent,
                                                    netns: Netns, host_cookie: int) -> None:
    inet, unix = ctr_run(containerd, agent, f"stack={netns.name}; families=ip",
                         "/bin/escape sock 2 1 0; /bin/escape sock 1 1 0")
    assert cookies(inet) == {netns.cookie}
    (own,) = cookies(unix)
    assert own not in (netns.cookie, host_cookie)  # ctr run: a namespace of its own


def test_ctr_run_with_a_stack_it_may_not_name_gets_eacces(containerd: Containerd,
                                                          agent: Agent) -> None:
    inet, unix = ctr_run(containerd, agent, "stack=/proc/1/ns/net",
                         "/bin/escape sock 2 1 0; /bin/escape sock 1 1 0")
    assert cookies(inet) == cookies(unix) == {"EACCES"}
