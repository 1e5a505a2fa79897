"""Launcher checks that need no privileges: the kernel feature gate and command lookup."""

from __future__ import annotations

import pytest

from mstack_bpf.core.errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    CommandNotExecutable,
    CommandNotFound,
    Unsupported,
)
from mstack_bpf.launch import launcher


def test_kernel_without_user_notification_fails_with_125_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher.seccomp, "action_available", lambda action: False)
    with pytest.raises(Unsupported) as info:
        launcher.check_kernel()
    assert info.value.exit_code == EXIT_FAILED
    assert "SECCOMP_RET_USER_NOTIF" in str(info.value)
    assert info.value.hint and "5.14" in info.value.hint


def test_command_lookup_follows_env_conventions() -> None:
    with pytest.raises(CommandNotFound) as missing:
        launcher.find_command("no-such-command-anywhere")
    assert missing.value.exit_code == EXIT_NOT_FOUND
    with pytest.raises(CommandNotExecutable) as directory:
        launcher.find_command("/")
    assert directory.value.exit_code == EXIT_CANNOT_EXECUTE
    assert launcher.find_command("sh").endswith("/sh")
