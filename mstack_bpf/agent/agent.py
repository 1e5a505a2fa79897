"""The agent: accept the runtimes' connections and serve every container's listener with
the supervisor (:func:`mstack_bpf.supervisor.main.build`), one thread per process tree.

Threads, not processes: a supervisor's per-call state is its own (its listener, tables,
registry, slow lane, and the namespace and credentials its thread switches, which are per
thread: factory.py, creds.py), and one process keeps the agent's memory flat however many
containers it serves. Co-location (supervisor/colocate.py) relies on the listener waiting
killably (``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV``), which only the runtime sets: it is on
for a container whose bundle's config.json asks for that flag (``mstack-agent profile
--wait-killable``; crun applies it, runc 1.1.5 refuses every flag), off for every other.

Fail closed: a container whose mapping cannot be decided is served all the same, with
``EACCES`` for every call; a listener that cannot be served at all is closed (its calls
then fail with ``ENOSYS``); nothing is ever answered CONTINUE by default.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading

from mstack_bpf.agent import server
from mstack_bpf.agent.config import AgentConfig
from mstack_bpf.agent.message import MessageError, parse
from mstack_bpf.agent.profile import waits_killably
from mstack_bpf.agent.request import Request, RequestError, choose
from mstack_bpf.core.errors import StackError
from mstack_bpf.core.model import Mapping, StackKind
from mstack_bpf.core.policy import PolicyError
from mstack_bpf.launch.policy import load_policy, open_policy
from mstack_bpf.stacks.resolve import OpenStack, open_stack
from mstack_bpf.supervisor.loop import describe
from mstack_bpf.supervisor.main import SetupError, build

log = logging.getLogger("mstack.agent")

#: a bundle's config.json larger than this is not read (it then gets no co-location)
MAX_CONFIG = 16 << 20


class Refusal(Exception):
    """Why a container's socket calls get EACCES (its log line)."""


def _open(request: Request, config: AgentConfig) -> tuple[Mapping, tuple[OpenStack, ...]]:
    if request.policy is not None:
        return _open_policy(request.policy, config)
    assert request.stack is not None
    stack = config.stack(request.stack)
    if stack.kind is not StackKind.NETNS:
        return Mapping().with_families(request.families, stack), ()
    opened = open_stack(stack)
    return Mapping().with_families(request.families, opened.stack), (opened,)


def _open_policy(name: str, config: AgentConfig) -> tuple[Mapping, tuple[OpenStack, ...]]:
    """A policy of the policy directory; its stacks too must be allowed. Only its family
    table counts: the container's mapping is final anyway, and no_new_privs is the
    runtime's to set."""
    try:
        mapping, stacks = open_policy(load_policy(os.path.join(config.policy_dir,
                                                               f"{name}.toml")))
    except PolicyError as e:
        raise Refusal(f"policy {name}: {'; '.join(e.errors)}") from None
    for opened in stacks:
        path = os.path.normpath(opened.stack.path or "")
        if not config.allows(path):
            server.close_all([s.fd for s in stacks])
            raise Refusal(f"policy {name}: stack {opened.stack.name} ({path}) is not "
                          f"allowed by {config.source}")
    return Mapping(dict(mapping.table)), stacks


def decide_mapping(metadata: str, annotations: dict[str, str],
                   config: AgentConfig) -> tuple[Mapping, tuple[OpenStack, ...]]:
    """The mapping a container gets, its stacks held open; :class:`Refusal` says why none."""
    try:
        request = choose(metadata, annotations, config.annotations)
        if request is None:
            return Mapping(), ()
        return _open(request, config)
    except (RequestError, StackError) as e:
        raise Refusal(str(e)) from None


def waits_killably_in(bundle: str) -> bool:
    """Whether the runtime was asked to set the container's filter up to wait killably:
    its bundle's config.json says so. Unreadable: no (the agent then only loses speed)."""
    if not os.path.isabs(bundle):
        return False
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            return waits_killably(json.loads(f.read(MAX_CONFIG)))
    except (OSError, ValueError, RecursionError) as e:
        log.debug("bundle %s: no co-location: %s", bundle, e)
        return False


class Agent:
    def __init__(self, config: AgentConfig, sock: socket.socket, verbose: int = 0) -> None:
        self.config = config
        self.sock = sock
        #: -v: one line per call too
        self.verbose = verbose

    def serve(self) -> None:
        """Accept the runtimes' connections for good, each in a thread of its own."""
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._connection, args=(conn,), name="mstack-agent",
                             daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                data, fds = server.receive(conn)
        except (MessageError, OSError) as e:
            log.warning("refused a connection: %s", e)
            return
        try:
            arrival = parse(data, len(fds))
        except MessageError as e:
            # whatever listener came is still served: its calls must not go unanswered
            listeners = [fd for fd in fds if server.is_listener(fd)]
            server.close_all([fd for fd in fds if fd not in listeners])
            if not listeners:
                log.warning("refused a message with no listener: %s", e)
            for fd in listeners:
                self._serve(fd, "?", None, f"unreadable message: {e}", colocate=False)
            return
        listener = fds.pop(arrival.listener)
        server.close_all(fds)
        if not server.is_listener(listener):
            log.warning("container %s: refused: its seccompFd is no seccomp listener",
                        arrival.container)
            os.close(listener)
            return
        colocate = waits_killably_in(arrival.bundle)
        try:
            decided = decide_mapping(arrival.metadata, arrival.annotations, self.config)
        except Refusal as e:
            self._serve(listener, arrival.container, None, str(e), colocate)
        else:
            self._serve(listener, arrival.container, decided, None, colocate)

    def _serve(self, listener: int, container: str,
               decided: tuple[Mapping, tuple[OpenStack, ...]] | None, refusal: str | None,
               colocate: bool) -> None:
        """Serve one listener until every task under it has gone (this thread's work)."""
        mapping, stacks = decided or (Mapping(), ())
        try:
            supervisor = build(listener, mapping, stacks, colocate=colocate,
                               refuse=errno.EACCES if refusal else 0)
        except (SetupError, OSError) as e:
            log.error("container %s: cannot serve it, its socket calls fail: %s", container, e)
            server.close_all([listener, *(s.fd for s in stacks)])
            return
        if refusal:
            log.warning("container %s: refused, its socket calls fail with EACCES: %s",
                        container, refusal)
        else:
            log.info("container %s: %s%s", container, "; ".join(mapping.describe()),
                     " (co-located: the filter waits killably)"
                     if supervisor.injector.enabled else "")
        if self.verbose:
            supervisor.observers.append(
                lambda *call: log.info("container %.12s: %s", container, describe(*call)))
        try:
            supervisor.serve()
        except Exception:
            log.exception("container %s: serving failed, its socket calls fail", container)
        finally:
            with contextlib.suppress(OSError):
                supervisor.close()
