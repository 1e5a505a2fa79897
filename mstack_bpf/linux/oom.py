"""The OOM killer's view of this process: ``/proc/self/oom_score_adj`` (proc(5)).

The OOM killer never picks a process whose adjustment is :data:`SCORE_ADJ_MIN`; and when
it picks one, it kills every process that shares its memory (mm/oom_kill.c,
``__oom_kill_process``), all of which the kernel keeps at one adjustment (``CLONE_VM``
without ``CLONE_THREAD`` sets ``MMF_MULTIPROCESS``: a write to one is made to all).
"""

from __future__ import annotations

import os

SCORE_ADJ_MIN = -1000
PATH = "/proc/self/oom_score_adj"


def score_adj() -> int:
    """This process's adjustment (-1000 to 1000)."""
    fd = os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int(os.read(fd, 16))
    finally:
        os.close(fd)


def set_score_adj(value: int) -> None:
    """Set it (below its lowest yet: CAP_SYS_RESOURCE); raises OSError (EACCES)."""
    fd = os.open(PATH, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
