"""Socket tracing with eBPF: which stack (network namespace) every socket landed in.

:mod:`.tracer` loads ``bpf/socktrace.bpf.c`` (compiled to ``mstack_bpf/bpf/socktrace.bpf.o``)
through the system libbpf; :mod:`.summary` turns its events into text; :mod:`.cli` is
``mstack-trace``.
"""
