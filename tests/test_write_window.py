"""The window a write handle remembers ("these bytes need nothing preserved")
must never let a write skip what a snapshot still needs: not after another
snapshot is created or destroyed, not for a chunk next to preserved ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHUNK = 16
PAGE_BYTES = 64 * CHUNK  # one page of the chunk index


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[object, object, bytes]]:
    from vspfs.provider import Provider

    backing = tmp_path / "volume"
    backing.mkdir()
    original = bytes(i % 251 for i in range(3 * PAGE_BYTES + 40))
    (backing / "f").write_bytes(original)
    provider = Provider(str(tmp_path / "state"))
    vol = provider.add_volume(str(backing), chunk_size=CHUNK)
    try:
        yield provider, vol, original
    finally:
        provider.close()


def _read(snap, size: int) -> bytes:  # type: ignore[no-untyped-def]
    fh = snap.open("f")
    try:
        return snap.read(fh, size + 100, 0)
    finally:
        snap.release(fh)


def test_a_new_snapshot_is_not_skipped_by_an_old_window(env) -> None:  # type: ignore[no-untyped-def]
    provider, vol, original = env
    fh = vol.open("f", os.O_WRONLY)
    try:
        [a] = provider.create_snapshot_set([vol])
        vol.write(fh, b"1" * 100, 50)  # preserves for a
        vol.write(fh, b"2" * 100, 50)  # remembered window: nothing to do for a
        live_before_b = bytearray(original)
        live_before_b[50:150] = b"2" * 100
        [b] = provider.create_snapshot_set([vol])
        vol.write(fh, b"3" * 100, 50)  # must preserve for b
        provider.destroy(a)
        [c] = provider.create_snapshot_set([vol])
        vol.write(fh, b"4" * 100, 50)  # and for c, after a went
        live_before_c = bytearray(live_before_b)
        live_before_c[50:150] = b"3" * 100
        assert _read(b, len(original)) == bytes(live_before_b)
        assert _read(c, len(original)) == bytes(live_before_c)
    finally:
        vol.release(fh)


def test_a_gap_in_a_page_is_never_skipped(env) -> None:  # type: ignore[no-untyped-def]
    provider, vol, original = env
    fh = vol.open("f", os.O_WRONLY)
    try:
        [snap] = provider.create_snapshot_set([vol])
        hole = 10 * CHUNK
        for off in range(0, 2 * PAGE_BYTES, CHUNK):  # every chunk of two pages but one
            if off != hole:
                vol.write(fh, b"x" * CHUNK, off)
        vol.write(fh, b"y" * CHUNK, 3 * CHUNK)  # a window is remembered around here
        vol.write(fh, b"z" * CHUNK, hole)  # the one chunk never preserved
        vol.write(fh, b"w" * 40, 3 * PAGE_BYTES)  # the short last chunk
        vol.write(fh, b"v" * 40, 3 * PAGE_BYTES)
        vol.write(fh, b"tail", len(original) + 10)  # past the snapshot-time end
        assert _read(snap, len(original)) == original
    finally:
        vol.release(fh)
