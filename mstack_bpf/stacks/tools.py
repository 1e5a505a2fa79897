"""Running the external tools a stack needs (ip, pasta, slirp4netns, nft, nsenter).

A missing tool is a :class:`MissingTool` naming the Debian package; a failing one is a
:class:`CommandFailed` quoting the last line of its stderr.
"""

from __future__ import annotations

import shutil
import subprocess

from mstack_bpf.stacks.errors import CommandFailed, MissingTool

PACKAGES = {
    "ip": "iproute2",
    "pasta": "passt",
    "slirp4netns": "slirp4netns",
    "nft": "nftables",
    "nsenter": "util-linux",
    "sleep": "coreutils",
}
# ip lives in /usr/sbin, which an unprivileged user's PATH often lacks.
_EXTRA_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


def which(tool: str) -> str:
    """Absolute path of ``tool`` or :class:`MissingTool`."""
    path = shutil.which(tool) or shutil.which(tool, path=_EXTRA_PATH)
    if path is None:
        raise MissingTool(tool, PACKAGES.get(tool, tool))
    return path


def run(argv: list[str], *, timeout: float = 10.0, input_text: str | None = None) -> str:
    """Run ``argv`` (argv[0] looked up with :func:`which`); return stdout or raise."""
    full = [which(argv[0]), *argv[1:]]
    try:
        out = subprocess.run(
            full,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise CommandFailed(argv, f"timed out after {timeout:g} s") from None
    if out.returncode != 0:
        raise CommandFailed(argv, clean_stderr(out.stderr) or f"exit status {out.returncode}")
    return out.stdout


def clean_stderr(text: str) -> str:
    """Drop pasta's "Failed to send N bytes to syslog" noise (no syslog in containers)."""
    lines = [ln for ln in text.splitlines() if "to syslog" not in ln and ln.strip()]
    return "\n".join(lines)
