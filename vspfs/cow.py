"""Copy-on-write: copy what snapshots still need before the live view changes it.

Every function here runs *before* the change it protects, with the identity
stripe lock of the inode held by the caller (``vspfs.gate``), and publishes
into each snapshot that lacks the item. A snapshot that already holds an item
keeps it: first copy wins. Pre-images are read once and handed to every
snapshot that needs them: a snapshot that lacks a chunk has seen no change to
it since it was created, so the live bytes are its bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from vspfs.attrs import Attr

if TYPE_CHECKING:
    from vspfs.snapshot import Snapshot

#: an end offset meaning "to the snapshot-time end of the file"
TO_END = 1 << 62

MetaReader = Callable[[], tuple[Attr, list[tuple[bytes, bytes]]]]


def preserve_meta(snaps: list[Snapshot], ino: int, read: MetaReader) -> None:
    meta = None
    for s in snaps:
        if s.wants(ino) and not s.has_meta(ino):
            if meta is None:
                meta = read()
            s.add_meta(ino, *meta)


def preserve_listing(
    snaps: list[Snapshot], dir_ino: int, read: Callable[[], list[tuple[str, int, int]]]
) -> None:
    listing = None
    for s in snaps:
        if s.wants(dir_ino) and not s.has_listing(dir_ino):
            if listing is None:
                listing = read()
            s.add_listing(dir_ino, listing)


def preserve_chunks(snaps: list[Snapshot], ino: int, fd: int, start: int, end: int, chunk_size: int) -> None:
    """Preserve the chunks overlapping [start, end) that lie within each
    snapshot's view of the file (its snapshot-time size, from preserved
    metadata, which the caller preserved first)."""
    need: dict[int, list[Snapshot]] = {}
    for s in snaps:
        if not s.wants(ino):
            continue
        size = s.snapshot_size(ino)
        last = min(end, size)
        if start >= last:
            continue
        for chunk in range(start // chunk_size, (last - 1) // chunk_size + 1):
            if not s.has_chunk(ino, chunk):
                need.setdefault(chunk, []).append(s)
    for chunk in sorted(need):
        base = chunk * chunk_size
        data = os.pread(fd, chunk_size, base)
        for s in need[chunk]:
            if not s.wants(ino):  # became invalid meanwhile
                continue
            length = min(chunk_size, s.snapshot_size(ino) - base)
            piece = data[:length]
            if len(piece) < length:
                piece += bytes(length - len(piece))
            s.add_chunk(ino, chunk, piece)
