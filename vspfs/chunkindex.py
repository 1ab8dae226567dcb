"""The exception index: (file identity, chunk number) -> offset in the cache file.

This is the structure that scales with the amount of changed data, so it is
built for memory, not generality. Chunk offsets are kept in small fixed pages
(``array('q')`` of PAGE entries) per file: sequential changes cost ~9 bytes
per preserved chunk, and a file that never changes costs nothing at all.
Offset 0 means "not preserved" (offset 0 of a cache file is its header, so no
chunk data can live there).

Thread safety: one writer per (file, chunk) at a time is guaranteed by the
volume's identity stripe locks; readers take no lock. Publishing an entry is
a single item store into an array, which is atomic under the GIL, so a reader
sees either 0 or the final offset.
"""

from __future__ import annotations

import sys
from array import array

PAGE_BITS = 6
PAGE = 1 << PAGE_BITS
_MASK = PAGE - 1
_EMPTY_PAGE = array("q", bytes(8 * PAGE))


class ChunkIndex:
    __slots__ = ("_files", "count")

    def __init__(self) -> None:
        self._files: dict[int, dict[int, array]] = {}
        self.count = 0

    def get(self, ino: int, chunk: int) -> int:
        pages = self._files.get(ino)
        if pages is None:
            return 0
        page = pages.get(chunk >> PAGE_BITS)
        if page is None:
            return 0
        return page[chunk & _MASK]

    def has_file(self, ino: int) -> bool:
        return ino in self._files

    def put(self, ino: int, chunk: int, offset: int) -> None:
        """Publish a preserved chunk. First copy wins: an existing entry is kept."""
        pages = self._files.get(ino)
        if pages is None:
            pages = self._files[ino] = {}
        key = chunk >> PAGE_BITS
        page = pages.get(key)
        if page is None:
            page = pages[key] = array("q", _EMPTY_PAGE)
        if page[chunk & _MASK] == 0:
            page[chunk & _MASK] = offset
            self.count += 1

    def chunks(self, ino: int) -> list[tuple[int, int]]:
        """(chunk, offset) pairs of one file, in chunk order."""
        pages = self._files.get(ino, {})
        out = []
        for key in sorted(pages):
            page = pages[key]
            base = key << PAGE_BITS
            out.extend((base + i, off) for i, off in enumerate(page) if off)
        return out

    def files(self) -> list[int]:
        return list(self._files)

    def memory_bytes(self) -> int:
        """Bytes held by the index structures (containers and pages)."""
        total = sys.getsizeof(self._files)
        for pages in self._files.values():
            total += sys.getsizeof(pages)
            for page in pages.values():
                total += sys.getsizeof(page)
        return total
