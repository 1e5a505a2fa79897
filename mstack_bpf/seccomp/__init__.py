"""The seccomp filter as data: the classic-BPF assembler and the mapping compiler (pure)."""
