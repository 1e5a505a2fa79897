"""mstack: per-process, per-address-family network stack selection for Linux.

A stack is a network namespace (or the built-in ``null`` and ``native`` stacks). ``mstack``
installs a seccomp user-notification filter and execs a command; a supervisor process makes
each socket of a redirected family inside the chosen namespace and injects it into the
caller with ``SECCOMP_IOCTL_NOTIF_ADDFD``.
"""

__version__ = "0.1.0"

from mstack_bpf.msocket import NotUnderMstack, msocket, set_default_stack

__all__ = ["NotUnderMstack", "msocket", "set_default_stack", "__version__"]
