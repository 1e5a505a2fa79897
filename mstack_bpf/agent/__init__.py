"""mstack-agent: an OCI seccomp agent serving containers' socket calls with the supervisor
(mstack-agent(8)). Pure: :mod:`message`, :mod:`request`, :mod:`config`, :mod:`profile`;
kernel: :mod:`server` (the runtime's socket), :mod:`agent` (one supervisor per container)."""
