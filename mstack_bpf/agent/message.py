"""What an OCI runtime sends a seccomp agent (pure).

runtime-spec 1.1 (config-linux.md, "seccomp", ``listenerPath``): the runtime connects to the
agent's unix socket once per process tree it starts under a ``SCMP_ACT_NOTIFY`` profile (the
container's init, then each ``exec``), sends the ``ContainerProcessState`` JSON with the fds
it names in ``fds`` (``"seccompFd"``: the listener) as ``SCM_RIGHTS``, and closes. The agent
replies nothing. ``pid`` is not to be relied on (crun 1.8.1 sends 0 for ``podman exec``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

#: larger messages are refused (annotations are bounded at 256 KiB by Kubernetes)
MAX_MESSAGE = 1 << 20
SECCOMP_FD = "seccompFd"


class MessageError(ValueError):
    """A message that is not a ContainerProcessState; says what is wrong."""


@dataclass(frozen=True)
class Arrival:
    """One process tree under a container's listener: which container, what it asks."""

    container: str
    #: index of the listener among the fds that came with the message
    listener: int
    metadata: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    #: the container's bundle (its config.json says how the runtime set the filter up)
    bundle: str = ""


def _object(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise MessageError(f"{what} is not a JSON object")
    return value


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MessageError(f"{what} is not a string")
    return value


def parse(data: bytes, fds: int) -> Arrival:
    """The message ``data`` that came with ``fds`` descriptors."""
    try:
        doc = _object(json.loads(data.decode("utf-8")), "the message")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MessageError(f"not JSON ({e})") from None
    names = doc.get("fds")
    if not isinstance(names, list) or SECCOMP_FD not in names:
        raise MessageError(f'no "{SECCOMP_FD}" in "fds"')
    index = names.index(SECCOMP_FD)
    if index >= fds:
        raise MessageError(f'"fds" names {len(names)} descriptors, {fds} came')
    state = _object(doc.get("state"), '"state"')
    container = _string(state.get("id"), '"state.id"')
    annotations = _object(state.get("annotations") or {}, '"state.annotations"')
    checked = {key: _string(value, f"annotation {key!r}") for key, value in annotations.items()}
    metadata = _string(doc.get("metadata") or "", '"metadata"')
    bundle = _string(state.get("bundle") or "", '"state.bundle"')
    return Arrival(container, index, metadata, checked, bundle)
