"""deploy/kubernetes/ checked offline: the DaemonSet and the Pod against Kubernetes' own
schemas (kubernetes-validate, strict), the SeccompProfile against what the Security Profiles
Operator's v1beta1 CRD accepts and against what ``mstack-agent profile --spo`` prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mstack_bpf.agent.config import parse_config
from mstack_bpf.agent.profile import (
    DEFAULT_BASE,
    DEFAULT_SOCKET,
    NOTIFIED,
    WAIT_KILLABLE,
    notify_profile,
    oci_seccomp,
    spo_profile,
    to_yaml,
)
from mstack_bpf.agent.request import Request, parse_metadata

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
PROFILE = DEPLOY / "seccompprofile-vpn-ipv4.yaml"
VALIDATE = shutil.which("kubernetes-validate", path=os.path.dirname(sys.executable))
#: what the SeccompProfile CRD (security-profiles-operator.x-k8s.io/v1beta1) allows
SPEC_KEYS = {"architectures", "baseProfileName", "defaultAction", "flags", "listenerMetadata",
             "listenerPath", "syscalls"}
ACTIONS = {"SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG",
           "SCMP_ACT_NOTIFY"}
#: the CRD's Flag enum (api/seccompprofile/v1beta1/seccompprofile_types.go)
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
         "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"}
OPS = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
       "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"}


def load(path: Path) -> list[Any]:
    with open(path) as f:
        return list(yaml.safe_load_all(f))


@pytest.mark.skipif(VALIDATE is None, reason="needs kubernetes-validate (pip: the test extra)")
@pytest.mark.parametrize("name", ["agent-daemonset.yaml", "pod-example.yaml"])
def test_manifests_pass_kubernetes_schemas(name: str) -> None:
    assert VALIDATE is not None
    cp = subprocess.run([VALIDATE, "--strict", str(DEPLOY / name)], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.count(" passed ") == len(load(DEPLOY / name)), cp.stdout


def test_the_pieces_fit_together() -> None:
    namespace, config, daemonset = load(DEPLOY / "agent-daemonset.yaml")
    parse_config(config["data"]["agent.toml"], "the ConfigMap")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (agent,) = pod["containers"]
    assert agent["command"][agent["command"].index("--socket") + 1] == DEFAULT_SOCKET
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert mounts["agent-socket"] == os.path.dirname(DEFAULT_SOCKET)
    (profile,) = load(PROFILE)
    (example,) = load(DEPLOY / "pod-example.yaml")
    local = example["spec"]["securityContext"]["seccompProfile"]["localhostProfile"]
    assert local == f"operator/{example['metadata']['namespace']}/" \
                    f"{profile['metadata']['name']}.json"
    spec = profile["spec"]
    assert spec["listenerPath"] == DEFAULT_SOCKET
    assert parse_metadata(spec["listenerMetadata"]) == Request("metadata", "vpn",
                                                                frozenset({2}))


def test_seccompprofile_fits_the_crd_and_sends_every_socket_call() -> None:
    (profile,) = load(PROFILE)
    assert profile["apiVersion"] == "security-profiles-operator.x-k8s.io/v1beta1"
    spec = profile["spec"]
    assert set(spec) <= SPEC_KEYS and spec["defaultAction"] in ACTIONS
    assert "SCMP_ARCH_X86" in spec["architectures"]  # i386 socketcall is sent too
    for rule in spec["syscalls"]:
        assert set(rule) <= {"names", "action", "args", "errnoRet"} and rule["action"] in ACTIONS
        assert all(isinstance(n, str) for n in rule["names"])
        assert isinstance(rule.get("errnoRet", ""), str)
        for arg in rule.get("args", []):
            assert set(arg) <= {"index", "value", "valueTwo", "op"} and arg["op"] in OPS
            assert all(arg[k] >= 0 for k in ("index", "value", "valueTwo") if k in arg)
    naming = [r for r in spec["syscalls"] if set(r["names"]) & set(NOTIFIED)]
    assert naming == [{"names": list(NOTIFIED), "action": "SCMP_ACT_NOTIFY"}]


@pytest.mark.skipif(not os.path.exists(DEFAULT_BASE), reason=f"needs {DEFAULT_BASE} (podman)")
def test_seccompprofile_is_what_the_agent_prints() -> None:
    first = PROFILE.read_text().splitlines()[0]
    args = first.removeprefix("# mstack-agent ").replace("'", "").split(" --metadata ")
    cp = subprocess.run([sys.executable, "-m", "mstack_bpf.cli.agent", *args[0].split(),
                         "--metadata", args[1]], capture_output=True, text=True, timeout=60,
                        cwd=DEPLOY.parents[1])
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == PROFILE.read_text()


def test_spo_profile_keeps_what_it_can_state() -> None:
    base: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/s",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                     "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64"}],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "", "includes": {}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["cacheflush"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["arm64"]}},
            {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["X"]}},
            {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "excludes": {"caps": ["X"]}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}]}
    oci = oci_seccomp({**base, "defaultErrnoRet": 38})
    assert oci["defaultErrnoRet"] == 38 and oci["syscalls"][2]["errnoRet"] == 1  # numbers
    assert "archMap" not in oci and oci["listenerPath"] == "/s"
    spec = spo_profile(base, "n")["spec"]
    assert spec["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert [r["names"] for r in spec["syscalls"]] == [["read"], ["arch_prctl"], ["bpf"],
                                                      ["personality"]]
    assert spec["syscalls"][2] == {"names": ["bpf"], "action": "SCMP_ACT_ERRNO",
                                   "errnoRet": "1"}
    assert spec["syscalls"][3]["args"] == base["syscalls"][5]["args"]
    killable = spo_profile(notify_profile(base, "/s", wait_killable=True), "n")["spec"]
    assert killable["flags"] == [WAIT_KILLABLE] and set(killable["flags"]) <= FLAGS


def test_to_yaml_round_trips() -> None:
    value = {"a": "x: y", "b": [1, "two", {"c": [], "d": {"e": "#f"}}], "g": {},
             "h": [{"i": 1, "j": [2]}], "k": True}
    assert yaml.safe_load(to_yaml(value)) == value


# --- systemd (a podman host) ------------------------------------------------------------

UNIT = DEPLOY.parent / "systemd" / "mstack-agent.service"


def test_the_systemd_unit_verifies_and_runs_what_the_agent_takes(tmp_path: Path) -> None:
    """systemd's own check (offline: no systemd runs here), on the unit as `make install`
    writes it, and its ExecStart accepted by `mstack-agent serve`."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (apt systemd)")
    agent = shutil.which("mstack-agent", path=os.path.dirname(sys.executable))
    assert agent is not None
    unit = tmp_path / "mstack-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/mstack-agent", agent))
    cp = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                        text=True, timeout=60)  # --man=no: man(1) may not be installed
    assert cp.returncode == 0 and not cp.stderr.strip(), cp.stderr
    (start,) = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
                if line.startswith("ExecStart=")]
    command, *args = start.split()
    assert command == "/usr/local/bin/mstack-agent" and args[0] == "serve"
    parsed = subprocess.run([agent, *args, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert parsed.returncode == 0, parsed.stderr
