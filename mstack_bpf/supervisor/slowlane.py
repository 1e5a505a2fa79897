"""Work on behalf of one caller that may block for as long as that caller likes.

Reading or writing a caller's memory (``process_vm_readv``) faults its pages in, and a page
backed by a FUSE file or registered with userfaultfd waits for whoever serves it — possibly
the caller itself, never. Resolving a msocket path can wait on a FUSE lookup the same way.
Such work runs on a few worker threads, so that the supervisor loop goes on answering every
other call; what it yields comes back to the loop, which alone touches the supervisor's
state. The listener's ioctls may be issued from any thread (seccomp_unotify(2)), and the
credential switches are per thread (``linux/creds.py``).

A worker stuck for good (a FUSE server that never answers) is lost until the supervisor
exits. One process may have at most :data:`PER_PROCESS` calls in the lane (more fail with
EAGAIN), so that it cannot take every worker; with every worker stuck all the same (many
processes stalling on purpose), further slow work waits in a bounded backlog, beyond which
it fails with EAGAIN. Plain ``socket()`` calls never take this lane.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("mstack.supervisor")

WORKERS = 32
BACKLOG = 256
PER_PROCESS = 4

Job = Callable[[], object]
Then = Callable[[object], None]  # gets the job's value, or the exception it raised


class SlowLane:
    def __init__(self, workers: int = WORKERS, backlog: int = BACKLOG,
                 per_process: int = PER_PROCESS) -> None:
        self._jobs: queue.SimpleQueue[tuple[Job, Then] | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[Then, object, int]] = collections.deque()
        self._per_process = per_process
        self._owners: dict[int, int] = {}  # process → its calls in the lane (the loop's)
        #: the loop polls this: a byte per finished job
        self.fd, self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._workers, self._backlog = workers, backlog
        self._threads = 0
        self.pending = 0  # submitted and not yet handed back (the loop's count only)
        #: after close(), a worker finishing a job must not write to a reused fd number
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Job, then: Then, owner: int = 0) -> None:
        """Run ``job`` for process ``owner`` on a worker; ``then`` gets its outcome on the
        loop, in :meth:`drain`."""
        if self.pending >= self._backlog:
            raise OSError(errno.EAGAIN, "too much slow work pending (callers not answering)")
        if self._owners.get(owner, 0) >= self._per_process:
            raise OSError(errno.EAGAIN, "this process has too many slow calls pending")
        self._owners[owner] = self._owners.get(owner, 0) + 1
        self.pending += 1
        if self._threads < min(self.pending, self._workers):
            self._threads += 1
            threading.Thread(target=self._work, name="mstack-slow", daemon=True).start()
        self._jobs.put((job, lambda value: self._done.append((then, value, owner))))

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, finish = item
            try:
                value: object = job()
            except BaseException as e:  # handed to the loop, which fails the call closed
                value = e
            with self._lock:
                if self._closed:
                    return
                finish(value)
                with contextlib.suppress(BlockingIOError):  # the loop has bytes enough
                    os.write(self._wake, b"\0")

    def close(self) -> None:
        """Stop: idle workers exit, a busy one drops what its job yields (nobody is left to
        answer: the loop serving these callers has ended)."""
        with self._lock:
            self._closed = True
            os.close(self.fd)
            os.close(self._wake)
        for _ in range(self._threads):
            self._jobs.put(None)

    def drain(self) -> bool:
        """Hand finished jobs' outcomes to their ``then`` (the loop calls this on POLLIN)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 4096)
        while self._done:
            then, value, owner = self._done.popleft()
            self.pending -= 1
            left = self._owners.pop(owner) - 1
            if left:
                self._owners[owner] = left
            try:
                then(value)
            except Exception:
                log.exception("supervisor: finishing a slow call failed")
        return True
