"""Typed wrappers of the kernel interfaces mstack uses, one module per interface."""
