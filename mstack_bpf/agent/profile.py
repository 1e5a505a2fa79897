"""``mstack-agent profile``: a runtime's seccomp profile turned into one that sends every
socket call to the agent (pure).

Measured with libseccomp 2.5.4 and runc 1.1.5 / crun 1.8.1 (mstack-agent(8), PROFILE):
libseccomp drops a conditional NOTIFY that an unconditional ALLOW shadows; with x86 among
the architectures, per-family conditions on ``socket`` cannot be mixed with other actions
(runc: "file exists"); and ``SCMP_CMP_EQ`` on the family compares all 64 bits. So no rule
looks at a family: ``socket``, ``socketpair`` and ``socketcall`` leave every rule of the base
and get one unconditional ``SCMP_ACT_NOTIFY``; the agent answers CONTINUE for the families a
container keeps, and reads i386 socketcall's arguments from memory.
"""

from __future__ import annotations

import copy
from typing import Any

NOTIFIED = ("socket", "socketpair", "socketcall")
DEFAULT_BASE = "/usr/share/containers/seccomp.json"
DEFAULT_SOCKET = "/run/mstack/agent.sock"


class ProfileError(ValueError):
    """A base profile this cannot work from."""


def notify_profile(base: dict[str, Any], listener_path: str,
                   metadata: str | None = None) -> dict[str, Any]:
    """``base`` with the socket calls notified to the agent at ``listener_path``."""
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
    return out
