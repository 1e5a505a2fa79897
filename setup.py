"""The one compiled module (the rest is in pyproject.toml): see mstack_bpf/linux/_colocate.c."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "mstack_bpf.linux._colocate", ["mstack_bpf/linux/_colocate.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
)])
