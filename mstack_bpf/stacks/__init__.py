"""Stacks: network namespaces made, listed and removed by ``mstack-stack``.

Modules: :mod:`.resolve` (a STACK or name → a stack, and its namespace opened),
:mod:`.paths` (names, state layout, :func:`.paths.resolve_user_stack`), :mod:`.create`
(``add``), :mod:`.manage` (``list``/``del``), :mod:`.veth`, :mod:`.usernet` (pasta,
slirp4netns), :mod:`.holder` (rootless holder process). The command line is
``mstack_bpf.cli.stack``; the supervisor's helper inside a rootless stack is
``mstack_bpf.supervisor.helper``.

DNS: a stack's resolver (``mstack-stack dns NAME``, the DNS column of ``list``, and
``STATE_DIR/resolv.conf``) is an address reachable from inside the stack. A program run
with mstack still reads the host's /etc/resolv.conf; for pasta stacks the recorded resolver
is the host's own resolver address whenever that is not a loopback address (pasta answers
DNS sent to it), so nothing needs to change. Otherwise point the program at the recorded
address (``dig @ADDR``, ``--dns-servers``), or, as root, bind-mount the stack's
``resolv.conf`` over /etc/resolv.conf in a private mount namespace
(``unshare -m sh -c 'mount --bind STATE/resolv.conf /etc/resolv.conf && exec mstack ...'``).
"""
