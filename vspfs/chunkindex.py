"""The exception index: (file identity, chunk number) -> offset in the cache file.

This is the structure that scales with the amount of changed data, so it is
built for memory, not generality. Offset 0 means "not preserved" (offset 0 of
a cache file is its header, so no chunk data can live there).

Each file that has preserved chunks gets two representations side by side:

- *dense pages*: ``array('q')`` pages of PAGE offsets, keyed by page number.
  A full page costs ~9 bytes per chunk, which is what sequential changes get.
- a *sparse part*: sorted chunk numbers with their offsets, cut into
  segments of at most SEGMENT_MAX entries (a small B-tree of depth one: a
  ``fences`` list of each segment's lowest key, and the segments). A segment
  is one ``array('q')``: its n chunk numbers, then their n offsets, so a
  lookup is one ``bisect`` over the first half. ~17 bytes per chunk however
  scattered the chunks are: random writes over a large file (VM images,
  databases) would cost a whole ~600-byte page per isolated chunk with pages
  alone.

A chunk goes to the sparse part unless its page exists; once PROMOTE entries
of one page are in the sparse part, they move to a new dense page. So a page
is only ever built when it is at least half full (<= ~20 bytes per chunk),
with one exception for sequential writes: the page after a full page is built
at its first chunk (at most one page that may stay sparse per run of writes).

Thread safety. Writers (``put``) hold the index's own lock, which no reader
takes: a live writer never waits on a snapshot reader. Readers take no lock
and need two properties: a lookup never returns a wrong offset, and a lookup
that *starts* after a ``put`` returned finds that entry (the live view
publishes before it writes the live file, and a reader re-checks the index
after its live read; DESIGN.md, "Ordering"). Shifting elements of a sorted
array in place would break both (a reader between the shift of the chunk
numbers and that of the offsets would pair a chunk with its neighbour's
offset, and a reader bisecting during a shift could miss an old entry), so
the sparse part is copy-on-write:

- a segment array is never changed once a reader can see it: an insert
  builds a new array and stores it into the segment list (one atomic item
  store);
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
#: segment (2 x 8 bytes per entry), a segment costs ~100 bytes of overhead
SEGMENT_MAX = 256
_LOWEST = -(1 << 63)
#: the pages of a file that has none yet (shared, never mutated)
_NO_PAGES: dict[int, array] = {}


def _sparse_find(sparse: tuple[list[int], list[array]], chunk: int) -> int:
    fences, segments = sparse
    seg = segments[bisect_right(fences, chunk) - 1]
    n = len(seg) >> 1
    i = bisect_left(seg, chunk, 0, n)
    if i < n and seg[i] == chunk:
        return seg[n + i]
    return 0


class _File:
    """The index of one file: dense pages plus a copy-on-write sparse part."""

    __slots__ = ("pages", "sparse")

    def __init__(self) -> None:
        self.pages: dict[int, array] = _NO_PAGES
        self.sparse: tuple[list[int], list[array]] = ([_LOWEST], [array("q")])

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
        pages = self.pages
        page = pages.get(key)
        if page is not None:
            if page[chunk & _MASK]:
                return False
            page[chunk & _MASK] = offset
            return True
        fences, segments = self.sparse
        j = bisect_right(fences, chunk) - 1
        seg = segments[j]
        n = len(seg) >> 1
        i = bisect_left(seg, chunk, 0, n)
        if i < n and seg[i] == chunk:
            return False
        before = pages.get(key - 1)
        if before is not None and 0 not in before:
            # a sequential run goes on: its next page, from its first chunk
            self._promote(key, chunk, offset)
            return True
        lo = key << PAGE_BITS
        if fences[j] <= lo and (j + 1 == len(fences) or lo + PAGE <= fences[j + 1]):
            in_page = bisect_left(seg, lo + PAGE, 0, n) - bisect_left(seg, lo, 0, n)  # one segment
        else:
            in_page = sum(b - a for _j, a, b in self._segments_of(lo, lo + PAGE))
        if in_page + 1 >= PROMOTE:
            self._promote(key, chunk, offset)
            return True
        new = seg[:]
        new.insert(n + i, offset)
        new.insert(i, chunk)
        if n < SEGMENT_MAX:
            segments[j] = new
            return True
        half = (n + 1) // 2
        n += 1
        left = new[:half] + new[n : n + half]
        right = new[half:n] + new[n + half :]
        self.sparse = (
            [*fences[: j + 1], new[half], *fences[j + 1 :]],
            [*segments[:j], left, right, *segments[j + 1 :]],
        )
        return True

    def _segments_of(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(segment number, first, end) positions of the sparse entries in [lo, hi)."""
        fences, segments = self.sparse
        out = []
        j = bisect_right(fences, lo) - 1
        while j < len(segments) and fences[j] < hi:
            seg = segments[j]
            n = len(seg) >> 1
            a, b = bisect_left(seg, lo, 0, n), bisect_left(seg, hi, 0, n)
            if b > a:
                out.append((j, a, b))
            j += 1
        return out

    def _promote(self, key: int, chunk: int, offset: int) -> None:
        """Move the sparse entries of page ``key`` (and the new one) to a dense page."""
        lo = key << PAGE_BITS
        where = self._segments_of(lo, lo + PAGE)
        segments = self.sparse[1]
        page = array("q", _EMPTY_PAGE)
        page[chunk & _MASK] = offset
        for j, a, b in where:
            seg = segments[j]
            n = len(seg) >> 1
            for k in range(a, b):
                page[seg[k] & _MASK] = seg[n + k]
        # publish the page first: a reader that then misses in the sparse part
        # looks at the pages again
        if self.pages is _NO_PAGES:
            self.pages = {key: page}
        else:
            self.pages[key] = page
        for j, a, b in where:
            seg = segments[j]
            n = len(seg) >> 1
            segments[j] = seg[:a] + seg[b : n + a] + seg[n + b :]

    # -- reporting -----------------------------------------------------------------

    def items(self) -> list[tuple[int, int]]:
        out = []
        for key, page in self.pages.items():
            base = key << PAGE_BITS
            out.extend((base + i, off) for i, off in enumerate(page) if off)
        for seg in self.sparse[1]:
            n = len(seg) >> 1
            out.extend(zip(seg[:n], seg[n:], strict=True))
        out.sort()
        return out

    def memory_bytes(self) -> int:
        fences, segments = self.sparse
        total = sys.getsizeof(self) + sys.getsizeof(self.sparse) + sys.getsizeof(fences)
        total += sys.getsizeof(segments) + sum(sys.getsizeof(seg) for seg in segments)
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
                if stop - first <= 2:  # a write of up to two chunks: no slice to build
                    return page[lo] != 0 and page[stop - 1 & _MASK] != 0
                return 0 not in page[lo : lo + stop - first]
            # sparse: chunk numbers are sorted and unique, so the range is all
            # there if it starts at i and stop - 1 sits where it must
            fences, segments = f.sparse
            seg = segments[bisect_right(fences, first) - 1]
            n = len(seg) >> 1
            i = bisect_left(seg, first, 0, n)
            last = i + stop - first - 1
            if last < n and seg[last] == stop - 1 and seg[i] == first:
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
        if offset <= 0:
            raise ValueError(f"chunk offset {offset} cannot be a cache file data offset")
        with self._lock:
            f = self._files.get(ino)
            if f is None:
                f = _File()
                stored = f.put(chunk, offset)
                self._files[ino] = f  # published whole
            else:
                stored = f.put(chunk, offset)
            if stored:
                self.count += 1

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
