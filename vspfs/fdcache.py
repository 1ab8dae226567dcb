"""A bounded cache of open file descriptors that is safe under concurrency.

The snapshot view keeps directory fds open because an fd follows its
directory wherever the live view later moves it. An fd must never be closed
while another thread still uses it (the number could be reused for another
file), so entries are reference-counted and only idle ones are evicted.

Lock: ``_lock`` guards the table and the reference counts; it is never held
while calling the opener (which may do I/O), so two threads may open the same
key at once; the loser closes its duplicate.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class FdCache:
    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, list[int]] = OrderedDict()  # key -> [fd, refs]
        self._closed = False

    @contextmanager
    def use(self, key: int, opener: Callable[[], int]) -> Iterator[int]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry[1] += 1
                self._entries.move_to_end(key)
        if entry is None:
            fd = opener()
            with self._lock:
                entry = self._entries.get(key)
                if entry is None and not self._closed:
                    entry = self._entries[key] = [fd, 1]
                    fd = -1
                elif entry is not None:
                    entry[1] += 1
            if fd >= 0:
                if entry is None:  # cache closed meanwhile: use the private fd once
                    try:
                        yield fd
                    finally:
                        os.close(fd)
                    return
                os.close(fd)
        try:
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1
                self._evict_idle()

    def _evict_idle(self) -> None:
        if len(self._entries) <= self._capacity and not self._closed:
            return
        for key in list(self._entries):
            if len(self._entries) <= self._capacity and not self._closed:
                break
            fd, refs = self._entries[key]
            if refs == 0:
                del self._entries[key]
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._evict_idle()
