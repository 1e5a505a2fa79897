"""The compiled modules (the rest is in pyproject.toml): the supervisor's two hot paths,
mstack_bpf/linux/_colocate.c and mstack_bpf/linux/_fastpath.c, and the cgroup visitor's
child, mstack_bpf/linux/_visit.c."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    f"mstack_bpf.linux.{name}", [f"mstack_bpf/linux/{name}.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
) for name in ("_colocate", "_fastpath", "_visit")])
