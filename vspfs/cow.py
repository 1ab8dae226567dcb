"""Copy-on-write: copy what snapshots still need before the live view changes it.

Every function here runs *before* the change it protects, with the identity
stripe lock of the inode held by the caller (``vspfs.gate``), and publishes
into each snapshot that lacks the item. A snapshot that already holds an item
keeps it: first copy wins. Pre-images are read once and handed to every
snapshot that needs them: a snapshot that lacks a chunk has seen no change to
it since it was created, so the live bytes are its bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vspfs import hostfs
from vspfs.attrs import Attr
from vspfs.cacheformat import Buffer

if TYPE_CHECKING:
    from vspfs.snapshot import Snapshot

#: an end offset meaning "to the snapshot-time end of the file"
TO_END = 1 << 62
#: consecutive chunks read with one pread and stored with one pwritev: bounds
#: the memory a truncation of a large file takes (1 MiB at 64 KiB chunks)
RUN_CHUNKS = 16

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
    metadata, which the caller preserved first).

    Consecutive chunks are read with one pread (up to RUN_CHUNKS at a time)
    and handed to each snapshot as one batch, which its cache file writes with
    one pwritev: a 128 KiB write to fresh chunks costs one pread and two
    writes to the cache file instead of two preads and four writes."""
    if len(snaps) == 1 and _one_run(snaps[0], ino, fd, start, end, chunk_size):
        return
    need: list[tuple[Snapshot, int, set[int]]] = []
    wanted: set[int] = set()
    for s in snaps:
        if not s.wants(ino):
            continue
        size = s.snapshot_size(ino)
        last = min(end, size)
        if start >= last:
            continue
        missing = {
            c for c in range(start // chunk_size, (last - 1) // chunk_size + 1) if not s.has_chunk(ino, c)
        }
        if missing:
            need.append((s, size, missing))
            wanted |= missing
    if not need:
        return
    for run in _runs(sorted(wanted), RUN_CHUNKS):
        base = run[0] * chunk_size
        data = memoryview(hostfs.pread(fd, len(run) * chunk_size, base))
        for s, size, missing in need:
            if not s.wants(ino):  # became invalid meanwhile
                continue
            batch: list[tuple[int, Buffer]] = []
            for chunk in run:
                if chunk not in missing:
                    continue
                at = (chunk - run[0]) * chunk_size
                length = min(chunk_size, size - chunk * chunk_size)
                piece: Buffer = data[at : at + length]
                if len(piece) < length:  # the live file is shorter than the snapshot's
                    piece = bytes(piece) + bytes(length - len(piece))
                batch.append((chunk, piece))
            if batch:
                s.add_chunks(ino, batch)


def _one_run(s: Snapshot, ino: int, fd: int, start: int, end: int, chunk_size: int) -> bool:
    """The usual first write, with fewer steps: one snapshot, and every chunk
    of a short range still to preserve. False (nothing done) otherwise."""
    if not s.wants(ino):
        return True
    size = s.snapshot_size(ino)
    last = end if end < size else size
    if start >= last:
        return True
    first = start // chunk_size
    stop = (last - 1) // chunk_size + 1
    if stop - first > RUN_CHUNKS:
        return False
    get = s.index.get
    for chunk in range(first, stop):
        if get(ino, chunk):
            return False
    base = first * chunk_size
    top = stop * chunk_size if stop * chunk_size < size else size  # whole chunks, up to the snapshot's end
    data = memoryview(hostfs.pread(fd, top - base, base))
    if len(data) < top - base:  # the live file is shorter than the snapshot's
        data = memoryview(bytes(data) + bytes(top - base - len(data)))
    s.add_chunks(
        ino, [(c, data[(c - first) * chunk_size : (c - first + 1) * chunk_size]) for c in range(first, stop)]
    )
    return True


def _runs(chunks: list[int], limit: int) -> list[list[int]]:
    """Sorted chunk numbers cut into runs of consecutive numbers, each at most ``limit`` long."""
    runs: list[list[int]] = []
    for chunk in chunks:
        if runs and chunk == runs[-1][-1] + 1 and len(runs[-1]) < limit:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
    return runs
