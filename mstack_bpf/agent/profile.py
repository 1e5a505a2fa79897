"""``mstack-agent profile``: a runtime's seccomp profile turned into one that sends every
socket call to the agent (pure).

Measured with libseccomp 2.5.4 and runc 1.1.5 / crun 1.8.1 (mstack-agent(8), PROFILE):
libseccomp drops a conditional NOTIFY that an unconditional ALLOW shadows; with x86 among
the architectures, per-family conditions on ``socket`` cannot be mixed with other actions
(runc: "file exists"); and ``SCMP_CMP_EQ`` on the family compares all 64 bits. So no rule
looks at a family: ``socket``, ``socketpair`` and ``socketcall`` leave every rule of the base
and get one unconditional ``SCMP_ACT_NOTIFY``; the agent answers CONTINUE for the families a
container keeps, and reads i386 socketcall's arguments from memory.

``--wait-killable`` adds the filter flag ``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`` (Linux
5.19): once the agent has received a call, only a fatal signal ends the caller's wait. The
agent reads it back from the bundle's config.json (:func:`waits_killably`) and only then
injects on the caller's CPU (supervisor/colocate.py). crun 1.8.1 applies the flag; runc
1.1.5 refuses every flag, so a runc container under such a profile does not start.
"""

from __future__ import annotations

import copy
import json
from typing import Any

NOTIFIED = ("socket", "socketpair", "socketcall")
DEFAULT_BASE = "/usr/share/containers/seccomp.json"
DEFAULT_SOCKET = "/run/mstack/agent.sock"
WAIT_KILLABLE = "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"


class ProfileError(ValueError):
    """A base profile this cannot work from."""


def notify_profile(base: dict[str, Any], listener_path: str,
                   metadata: str | None = None, wait_killable: bool = False) -> dict[str, Any]:
    """``base`` with the socket calls notified to the agent at ``listener_path``; with
    ``wait_killable``, the filter flag that lets the agent co-locate."""
    if not isinstance(base, dict) or "defaultAction" not in base:
        raise ProfileError("not a seccomp profile (no defaultAction)")
    rules = base.get("syscalls")
    rules = [] if rules is None else rules
    if not isinstance(rules, list):
        raise ProfileError("syscalls is not an array")
    out = copy.deepcopy(base)
    kept = []
    for rule in copy.deepcopy(rules):
        names = rule.get("names") if isinstance(rule, dict) else None
        if not isinstance(names, list):
            raise ProfileError(f"a rule without names: {rule!r}")
        rule["names"] = [n for n in names if n not in NOTIFIED]
        if rule["names"]:
            kept.append(rule)
    kept.append({"names": list(NOTIFIED), "action": "SCMP_ACT_NOTIFY",
                 "comment": "mstack-agent: every socket call (the agent keeps what is native)"})
    out["syscalls"] = kept
    out["listenerPath"] = listener_path
    if metadata:
        out["listenerMetadata"] = metadata
    else:
        out.pop("listenerMetadata", None)
    flags = out.get("flags") or []
    if not isinstance(flags, list):
        raise ProfileError("flags is not an array")
    if wait_killable and WAIT_KILLABLE not in flags:
        out["flags"] = [*flags, WAIT_KILLABLE]
    return out


def waits_killably(config: object) -> bool:
    """Whether a bundle's config.json (runtime-spec) asks for the killable wait."""
    linux = config.get("linux") if isinstance(config, dict) else None
    seccomp = linux.get("seccomp") if isinstance(linux, dict) else None
    flags = seccomp.get("flags") if isinstance(seccomp, dict) else None
    return isinstance(flags, list) and WAIT_KILLABLE in flags


#: Go's names (containers-common's ``includes.arches``) of the libseccomp architectures
GOARCH = {"SCMP_ARCH_X86_64": "amd64", "SCMP_ARCH_AARCH64": "arm64", "SCMP_ARCH_S390X": "s390x",
          "SCMP_ARCH_PPC64LE": "ppc64le", "SCMP_ARCH_RISCV64": "riscv64"}
SPO_API = "security-profiles-operator.x-k8s.io/v1beta1"


def _oci_rule(rule: dict[str, Any], goarch: str) -> dict[str, Any] | None:
    """A rule as the runtime-spec's ``LinuxSeccomp`` states it, or None where it cannot say
    the rule's condition: grants under capabilities (``includes.caps``, left out: stricter)
    and rules of other architectures. Denials for lacking a capability are kept."""
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if includes.get("caps") or includes.get("minKernel"):
        return None
    if includes.get("arches") and goarch not in includes["arches"]:
        return None
    if goarch in (excludes.get("arches") or []):
        return None
    out: dict[str, Any] = {"names": list(rule["names"]), "action": rule["action"]}
    if rule.get("args"):
        out["args"] = [{k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a}
                       for a in rule["args"]]
    if "errnoRet" in rule:
        out["errnoRet"] = rule["errnoRet"]
    return out


def oci_seccomp(profile: dict[str, Any], arch: str = "SCMP_ARCH_X86_64") -> dict[str, Any]:
    """``profile`` (containers-common's format, as :func:`notify_profile` makes it) as the
    runtime-spec's ``linux.seccomp`` for ``arch``: what ``ctr run --seccomp-profile`` and a
    bundle's config.json take (no ``archMap``, no ``includes``/``excludes``)."""
    goarch = GOARCH.get(arch, arch)
    arches = [arch]
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == arch:
            arches += entry.get("subArchitectures") or []
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"], "architectures": arches}
    for key in ("defaultErrnoRet", "listenerPath", "listenerMetadata", "flags"):
        if key in profile:
            out[key] = profile[key]
    rules = (_oci_rule(r, goarch) for r in profile.get("syscalls") or [])
    out["syscalls"] = [r for r in rules if r is not None]
    return out


def spo_profile(profile: dict[str, Any], name: str,
                arch: str = "SCMP_ARCH_X86_64") -> dict[str, Any]:
    """``profile`` as a Security Profiles Operator ``SeccompProfile`` named ``name``: the
    runtime-spec form, less what the CRD has no field for (``defaultErrnoRet``: unknown
    calls then get EPERM), ``errnoRet`` as the string the CRD wants."""
    spec = oci_seccomp(profile, arch)
    spec.pop("defaultErrnoRet", None)
    for rule in spec["syscalls"]:
        if "errnoRet" in rule:
            rule["errnoRet"] = str(rule["errnoRet"])
    return {"apiVersion": SPO_API, "kind": "SeccompProfile", "metadata": {"name": name},
            "spec": spec}


def to_yaml(value: object, indent: int = 0) -> str:
    """YAML for what :func:`spo_profile` makes (mappings, lists, strings, numbers): block
    style, every string JSON-quoted (valid YAML), no dependency."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = to_yaml(item, indent + 2).split("\n")
                lines.append(f"{pad}- {first.lstrip()}" + "".join(f"\n{r}" for r in rest))
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _scalar(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | str):
        return json.dumps(value)
    if value == {} or value == []:
        return json.dumps(value)
    raise TypeError(f"no YAML for {value!r}")
