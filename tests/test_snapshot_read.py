"""Snapshot.read against a live write that lands *during* the read.

The ordering rule (DESIGN.md, "Ordering"): a writer preserves a chunk and
publishes its index entry before it changes the live file; a reader that
found a chunk not preserved reads the live file and then looks at the index
again. These tests put a live write between a snapshot reader's live pread
and everything after it (the write runs inside the reader's pread, and the
pread then returns the new live bytes), for each path Snapshot.read takes,
and check that the snapshot still shows the past.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vspfs import hostfs
from vspfs import snapshot as snapshot_module

CHUNK = 16
OLD = bytes(range(65, 65 + 8 * CHUNK))  # 8 chunks, each byte telling its position
NEW = b"#" * len(OLD)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[object, object]]:
    from vspfs.provider import Provider

    backing = tmp_path / "volume"
    backing.mkdir()
    (backing / "f").write_bytes(OLD)
    provider = Provider(str(tmp_path / "state"))
    vol = provider.add_volume(str(backing), chunk_size=CHUNK)
    [snap] = provider.create_snapshot_set([vol])
    try:
        yield vol, snap
    finally:
        provider.close()


class WriteDuringPread:
    """Stands in for ``hostfs`` in vspfs.snapshot: the first pread first lets a
    live write through (which preserves, publishes, then writes the live
    file), then reads, so it returns post-snapshot bytes."""

    def __init__(self, write: Callable[[], None]) -> None:
        self._write = write
        self.fired = False

    def __getattr__(self, name: str) -> object:
        return getattr(hostfs, name)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        if not self.fired:
            self.fired = True
            self._write()
        return hostfs.pread(fd, size, offset)


def _write(vol, offset: int, length: int) -> Callable[[], None]:  # type: ignore[no-untyped-def]
    def run() -> None:
        fh = vol.open("f", os.O_WRONLY)
        try:
            vol.write(fh, NEW[:length], offset)
        finally:
            vol.release(fh)

    return run


@pytest.mark.parametrize(
    ("already", "offset", "size", "during"),
    [
        (None, 0, len(OLD), (0, len(OLD))),  # unchanged file: one pread, then the re-check
        (None, 5, 40, (16, 16)),  # unchanged, a write inside the range read
        ((0, CHUNK), 0, len(OLD), (3 * CHUNK, 2 * CHUNK)),  # changed file: live run, then re-check
        ((2 * CHUNK, CHUNK), 7, 90, (5 * CHUNK, 3 * CHUNK)),  # runs on both sides of a preserved chunk
        ((2 * CHUNK, CHUNK), 7, 90, (0, 8 * CHUNK)),  # everything changes during the read
    ],
)
def test_live_write_during_a_snapshot_read(
    rig: tuple[object, object],
    monkeypatch: pytest.MonkeyPatch,
    already: tuple[int, int] | None,
    offset: int,
    size: int,
    during: tuple[int, int],
) -> None:
    vol, snap = rig
    if already is not None:
        _write(vol, *already)()  # some chunks come from the cache file from the start
    fake = WriteDuringPread(_write(vol, *during))
    monkeypatch.setattr(snapshot_module, "hostfs", fake)
    fh = snap.open("f")
    try:
        got = snap.read(fh, size, offset)
    finally:
        snap.release(fh)
    assert fake.fired, "the read never touched the live file: nothing was tested"
    assert got == OLD[offset : offset + size]
    monkeypatch.undo()
    fh = snap.open("f")
    try:
        assert snap.read(fh, len(OLD) + 10, 0) == OLD
    finally:
        snap.release(fh)


def test_read_returns_bytes_and_stops_at_the_snapshot_size(rig: tuple[object, object]) -> None:
    vol, snap = rig
    _write(vol, 20, 30)()
    fh = vol.open("f", os.O_WRONLY)
    vol.write(fh, b"grown" * 20, len(OLD))  # the live file grows; the snapshot does not
    vol.release(fh)
    sfh = snap.open("f")
    try:
        for offset, size in [(0, 1), (15, 2), (16, 16), (17, 100), (100, 100), (len(OLD), 5), (0, 10_000)]:
            got = snap.read(sfh, size, offset)
            assert type(got) is bytes
            assert got == OLD[offset : offset + size]
    finally:
        snap.release(sfh)
