"""The supervisor process: the loop, its handlers, and what they hold (stacks, tables, sockets)."""
