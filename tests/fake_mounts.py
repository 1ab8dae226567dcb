"""A mount backend that mounts nothing, for running a real daemon (real
provider, real control socket) without FUSE or WinFsp: it records what the
daemon hands to the adapter."""

from __future__ import annotations

from typing import Any


class FakeHandle:
    """A mount handle: ready at once, unmounted when asked."""

    def __init__(self, mountpoint: str, *, over: bool = False) -> None:
        self.mountpoint = mountpoint
        self.over = over
        self.mounted = True

    def wait_ready(self, timeout: float) -> bool:
        return True

    def unmount(self, timeout: float) -> None:
        self.mounted = False


class FakeBackend:
    """Records each live view and virtual drive the daemon mounts, as handles."""

    def __init__(self) -> None:
        self.live: list[FakeHandle] = []
        self.drives: list[FakeHandle] = []

    def mount_live(self, volume: object, mountpoint: str, *, over: bool = False, **kw: Any) -> FakeHandle:
        handle = FakeHandle(mountpoint, over=over)
        self.live.append(handle)
        return handle

    def mount_snapshot(self, snapshot: object, mountpoint: str, **kw: Any) -> FakeHandle:
        handle = FakeHandle(mountpoint)
        self.drives.append(handle)
        return handle
