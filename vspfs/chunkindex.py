"""The exception index: (file identity, chunk number) -> offset in the cache file.

This is the structure that scales with the amount of changed data, so it is
built for memory, not generality. Offset 0 means "not preserved" (offset 0 of
a cache file is its header, so no chunk data can live there).

Each file that has preserved chunks gets two representations side by side:

- *dense pages*: ``array('q')`` pages of PAGE offsets, keyed by page number.
  A full page costs ~9 bytes per chunk, which is what sequential changes get.
- a *sparse part*: sorted chunk numbers with their offsets in parallel
  ``array('q')`` pairs, cut into segments of at most SEGMENT_MAX entries
  (a small B-tree of depth one: a ``fences`` list of each segment's lowest
  key, and the segments). ~17 bytes per chunk however scattered the chunks
  are: random writes over a large file (VM images, databases) would cost a
  whole ~600-byte page per isolated chunk with pages alone.

A chunk goes to the sparse part unless its page exists; once PROMOTE entries
of one page are in the sparse part, they move to a new dense page. So a page
is only ever built when it is at least half full (<= ~20 bytes per chunk).

Thread safety. Writers (``put``) hold the index's own lock, which no reader
takes: a live writer never waits on a snapshot reader. Readers take no lock
and need two properties: a lookup never returns a wrong offset, and a lookup
that *starts* after a ``put`` returned finds that entry (the live view
publishes before it writes the live file, and a reader re-checks the index
after its live read; DESIGN.md, "Ordering"). Shifting elements of a sorted
array in place would break both (a reader between the insert into the chunk
array and the insert into the offset array would pair a chunk with its
neighbour's offset, and a reader bisecting during a shift could miss an old
entry), so the sparse part is copy-on-write:

- a segment is a ``(chunks, offsets)`` tuple that is only ever changed by
  appending at its end (the offset first, then the chunk number: a reader
  sees a chunk number only once its offset is there); any other insert
  builds a new tuple and stores it into the segment list (one atomic item
  store), so nothing a reader may be bisecting ever shifts;
- a split builds a new fences list and a new segment list and publishes both
  as one ``(fences, segments)`` tuple (one atomic attribute store). A reader
  holding the old tuple still sees every entry published before the split;
- a page store is a single array item store, 0 -> offset, never changed again;
- promotion publishes the new page (with all its entries) *before* it removes
  the entries from the sparse part, and a reader that misses in the sparse
  part looks at the pages again, so an entry that moves is never missed.
"""

from __future__ import annotations

import sys
import threading
from array import array
from bisect import bisect_left, bisect_right

PAGE_BITS = 6
PAGE = 1 << PAGE_BITS
_MASK = PAGE - 1
_EMPTY_PAGE = array("q", bytes(8 * PAGE))
#: sparse entries of one page that make it dense: at half full a page costs
#: about as much as its entries did in the sparse part
PROMOTE = PAGE // 2
#: entries of a sparse segment before it is split in two; an insert copies one
#: segment (2 x 8 bytes per entry), a segment costs ~200 bytes of overhead
SEGMENT_MAX = 256
_LOWEST = -(1 << 63)
#: the pages of a file that has none yet (shared, never mutated)
_NO_PAGES: dict[int, array] = {}


def _sparse_find(sparse: tuple[list[int], list[tuple[array, array]]], chunk: int) -> int:
    fences, segments = sparse
    keys, offsets = segments[bisect_right(fences, chunk) - 1]
    i = bisect_left(keys, chunk)
    if i < len(keys) and keys[i] == chunk:
        return offsets[i]
    return 0


class _File:
    """The index of one file: dense pages plus a copy-on-write sparse part."""

    __slots__ = ("pages", "sparse")

    def __init__(self) -> None:
        self.pages: dict[int, array] = _NO_PAGES
        self.sparse: tuple[list[int], list[tuple[array, array]]] = ([_LOWEST], [(array("q"), array("q"))])

    def get(self, chunk: int) -> int:
        page = self.pages.get(chunk >> PAGE_BITS)
        if page is not None:
            return page[chunk & _MASK]
        found = _sparse_find(self.sparse, chunk)
        if found:
            return found
        # not in the sparse part: it may just have moved to a new page
        page = self.pages.get(chunk >> PAGE_BITS)
        return page[chunk & _MASK] if page is not None else 0

    # -- writers (the index lock held) ---------------------------------------------

    def put(self, chunk: int, offset: int) -> bool:
        """Store unless present; True if stored."""
        key = chunk >> PAGE_BITS
        page = self.pages.get(key)
        if page is not None:
            if page[chunk & _MASK]:
                return False
            page[chunk & _MASK] = offset
            return True
        fences, segments = self.sparse
        j = bisect_right(fences, chunk) - 1
        keys, offsets = segments[j]
        i = bisect_left(keys, chunk)
        if i < len(keys) and keys[i] == chunk:
            return False
        lo = key << PAGE_BITS
        if fences[j] <= lo and (j + 1 == len(fences) or lo + PAGE <= fences[j + 1]):
            in_page = bisect_left(keys, lo + PAGE) - bisect_left(keys, lo)  # one segment holds the page
        else:
            in_page = sum(b - a for _j, a, b in self._segments_of(lo, lo + PAGE))
        if in_page + 1 >= PROMOTE:
            self._promote(key, chunk, offset)
            return True
        if i == len(keys) < SEGMENT_MAX:
            # appending cannot mislead a reader of this very segment: the offset
            # goes in first, so a chunk number is never seen without its offset
            offsets.append(offset)
            keys.append(chunk)
            return True
        new_keys = keys[:]
        new_keys.insert(i, chunk)
        new_offsets = offsets[:]
        new_offsets.insert(i, offset)
        if len(new_keys) <= SEGMENT_MAX:
            segments[j] = (new_keys, new_offsets)
            return True
        mid = len(new_keys) // 2
        split = [(new_keys[:mid], new_offsets[:mid]), (new_keys[mid:], new_offsets[mid:])]
        self.sparse = (
            [*fences[: j + 1], new_keys[mid], *fences[j + 1 :]],
            segments[:j] + split + segments[j + 1 :],
        )
        return True

    def _segments_of(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(segment number, first, end) positions of the sparse entries in [lo, hi)."""
        fences, segments = self.sparse
        out = []
        j = bisect_right(fences, lo) - 1
        while j < len(segments) and fences[j] < hi:
            keys = segments[j][0]
            a, b = bisect_left(keys, lo), bisect_left(keys, hi)
            if b > a:
                out.append((j, a, b))
            j += 1
        return out

    def _page_entries(self, key: int) -> int:
        lo = key << PAGE_BITS
        return sum(b - a for _j, a, b in self._segments_of(lo, lo + PAGE))

    def _promote(self, key: int, chunk: int, offset: int) -> None:
        """Move the sparse entries of page ``key`` (and the new one) to a dense page."""
        lo = key << PAGE_BITS
        where = self._segments_of(lo, lo + PAGE)
        segments = self.sparse[1]
        page = array("q", _EMPTY_PAGE)
        page[chunk & _MASK] = offset
        for j, a, b in where:
            keys, offsets = segments[j]
            for n in range(a, b):
                page[keys[n] & _MASK] = offsets[n]
        # publish the page first: a reader that then misses in the sparse part
        # looks at the pages again
        if self.pages is _NO_PAGES:
            self.pages = {key: page}
        else:
            self.pages[key] = page
        for j, a, b in where:
            keys, offsets = segments[j]
            segments[j] = (keys[:a] + keys[b:], offsets[:a] + offsets[b:])

    # -- reporting -----------------------------------------------------------------

    def items(self) -> list[tuple[int, int]]:
        out = []
        for key, page in self.pages.items():
            base = key << PAGE_BITS
            out.extend((base + i, off) for i, off in enumerate(page) if off)
        for keys, offsets in self.sparse[1]:
            out.extend(zip(keys, offsets, strict=True))
        out.sort()
        return out

    def memory_bytes(self) -> int:
        fences, segments = self.sparse
        total = sys.getsizeof(self) + sys.getsizeof(self.sparse) + sys.getsizeof(fences)
        total += sys.getsizeof(segments)
        for seg in segments:
            total += sys.getsizeof(seg) + sys.getsizeof(seg[0]) + sys.getsizeof(seg[1])
        if self.pages is not _NO_PAGES:
            total += sys.getsizeof(self.pages)
            total += sum(sys.getsizeof(page) for page in self.pages.values())
        return total


class ChunkIndex:
    __slots__ = ("_files", "_lock", "count")

    def __init__(self) -> None:
        self._files: dict[int, _File] = {}
        self._lock = threading.Lock()
        self.count = 0

    def get(self, ino: int, chunk: int) -> int:
        """The cache offset of a preserved chunk, 0 if it is not preserved. No lock."""
        f = self._files.get(ino)
        if f is None:
            return 0
        return f.get(chunk)

    def has_file(self, ino: int) -> bool:
        return ino in self._files

    def covers(self, ino: int, first: int, stop: int) -> bool:
        """Whether every chunk in [first, stop) is preserved. No lock: entries
        are never removed, so a True answer stays true. On the live write path
        (every write to a snapshot-time file asks), hence the one-page case
        first: one dict lookup and a C-level scan of a page slice."""
        if first >= stop:
            return True
        f = self._files.get(ino)
        if f is None:
            return False
        key = first >> PAGE_BITS
        if key == (stop - 1) >> PAGE_BITS:
            page = f.pages.get(key)
            if page is not None:
                lo = first & _MASK
                return 0 not in page[lo : lo + stop - first]
            # sparse: chunk numbers are sorted and unique, so the range is all
            # there if it starts at i and stop - 1 sits where it must
            fences, segments = f.sparse
            keys = segments[bisect_right(fences, first) - 1][0]
            i = bisect_left(keys, first)
            last = i + stop - first - 1
            if last < len(keys) and keys[last] == stop - 1 and keys[i] == first:
                return True
        chunk = first
        while chunk < stop:
            key = chunk >> PAGE_BITS
            end = min(stop, (key + 1) << PAGE_BITS)
            page = f.pages.get(key)
            if page is not None:
                if 0 in page[chunk & _MASK : ((end - 1) & _MASK) + 1]:
                    return False
            else:
                for c in range(chunk, end):
                    if not f.get(c):
                        return False
            chunk = end
        return True

    def put(self, ino: int, chunk: int, offset: int) -> None:
        """Publish a preserved chunk. First copy wins: an existing entry is kept."""
        self.put_many(ino, [(chunk, offset)])

    def put_many(self, ino: int, entries: list[tuple[int, int]]) -> None:
        """:meth:`put` for several (chunk, offset) pairs of one file, taking
        the writer lock once (the chunks of one live write)."""
        for _chunk, offset in entries:
            if offset <= 0:
                raise ValueError(f"chunk offset {offset} cannot be a cache file data offset")
        with self._lock:
            f = self._files.get(ino)
            new = f is None
            if new:
                f = _File()
            for chunk, offset in entries:
                if f.put(chunk, offset):
                    self.count += 1
            if new:
                self._files[ino] = f  # published whole

    def chunks(self, ino: int) -> list[tuple[int, int]]:
        """(chunk, offset) pairs of one file, in chunk order."""
        f = self._files.get(ino)
        return f.items() if f is not None else []

    def files(self) -> list[int]:
        return list(self._files)

    def memory_bytes(self) -> int:
        """Bytes held by the index structures (containers, pages, sparse arrays)."""
        total = sys.getsizeof(self._files)
        for f in list(self._files.values()):
            total += f.memory_bytes()
        return total
