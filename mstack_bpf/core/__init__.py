"""Pure logic: families, the model, decoding and deciding calls, policies, the error tree (no
ctypes, no I/O)."""
