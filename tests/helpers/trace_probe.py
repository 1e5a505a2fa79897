"""Probe for tracing tests: makes sockets and reports, from inside, the namespace inode each
lives in (SIOCGSKNS, root) — or the errno — in the order they were made."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys

SIOCGSKNS = 0x894C


def inode(sock: socket.socket) -> int:
    nsfd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def main() -> None:
    from mstack_bpf import msocket

    out: list[dict[str, object]] = []
    for spec in sys.argv[1:]:  # FAMILY or STACK:FAMILY (msocket)
        stack, _, fam = spec.rpartition(":")
        try:
            if stack:
                s = msocket(stack, int(fam), socket.SOCK_DGRAM)
            else:
                s = socket.socket(int(fam), socket.SOCK_DGRAM)
        except OSError as e:
            out.append({"spec": spec, "errno": errno.errorcode[e.errno or 0]})
            continue
        out.append({"spec": spec, "fd": s.fileno(), "inode": inode(s)})
        s.detach()  # keep it open: fd numbers stay distinct
    print(json.dumps({"pid": os.getpid(), "sockets": out}), flush=True)


if __name__ == "__main__":
    main()
