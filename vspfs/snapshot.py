"""A snapshot: its exception store and the read-only view of the past.

State held per snapshot (the dm-snapshot "exception store", in memory, backed
by the cache file's records):

- ``index``: (ino, chunk) -> cache offset of the original chunk bytes;
- ``_meta``: ino -> (Attr, xattrs) as they were at snapshot time;
- ``_listings``: directory ino -> cache offset of its snapshot-time listing;
- ``_new``: inodes created after the snapshot (never preserved, never shown).

Reading the past: a path is walked from the root through preserved listings
where a directory changed and through the live tree where it did not. An
object whose name went away is found through the volume's retained area.
Every read that consults the live tree re-checks the store afterwards: the
live view publishes a preserved item *before* it changes the live object, so
"not published after my live read" proves the live read saw the past
(DESIGN.md, "Ordering"). Readers take no lock that a live writer waits on.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeVar

from cachetools import LRUCache

from vspfs.attrs import Attr
from vspfs.cacheformat import Buffer, decode_listing, encode_listing, encode_meta
from vspfs.chunkindex import ChunkIndex
from vspfs.errors import CacheFull, CacheOverflow, SnapshotInvalid
from vspfs.fdcache import FdCache
from vspfs.volume import is_hidden_root_name, open_quietly, read_xattrs, scan_dir

if TYPE_CHECKING:
    from vspfs.cachefile import CacheFile
    from vspfs.volume import Volume

log = logging.getLogger(__name__)

T = TypeVar("T")

POLICY_INVALIDATE = "invalidate"
POLICY_REFUSE_WRITES = "refuse-writes"
POLICIES = (POLICY_INVALIDATE, POLICY_REFUSE_WRITES)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_FILE = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def _enoent(path: str) -> OSError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


@dataclass(frozen=True, slots=True)
class Node:
    """An object of the snapshot's namespace, and how it was reached."""

    ino: int
    ftype: int
    parent: Node | None
    name: str


@dataclass(slots=True)
class _OpenFile:
    node: Node
    fd: int
    size: int


class Snapshot:
    def __init__(
        self, volume: Volume, snapshot_id: str, cache: CacheFile, *, policy: str = POLICY_INVALIDATE
    ):
        self.id = snapshot_id
        self.volume = volume
        self.cache = cache
        self.policy = policy
        self.chunk_size = volume.chunk_size
        self.created_ns = time.time_ns()
        self.valid = True
        self.invalid_reason: str | None = None
        self.warnings: list[str] = []
        self.open_for_write: list[str] = []
        self.index = ChunkIndex()
        self.bytes_preserved = 0
        self._meta: dict[int, tuple[Attr, tuple[tuple[bytes, bytes], ...]]] = {}
        self._listings: dict[int, int] = {}
        self._listing_cache: LRUCache = LRUCache(maxsize=256)
        self._new: set[int] = set()
        self._lock = threading.Lock()  # guards the two LRU caches (cachetools is not thread safe)
        self._nodes: LRUCache = LRUCache(maxsize=65536)
        self._fds = FdCache(256)
        self._files: dict[int, _OpenFile] = {}
        self._next_fh = 1
        self._root = Node(volume.root_ino, statmod.S_IFDIR, None, "")

    # -- exception store (called by the live view, under its locks) --------------

    def wants(self, ino: int) -> bool:
        return self.valid and ino not in self._new

    def mark_new(self, ino: int) -> None:
        self._new.add(ino)

    def has_meta(self, ino: int) -> bool:
        return ino in self._meta

    def has_listing(self, ino: int) -> bool:
        return ino in self._listings

    def has_chunk(self, ino: int, chunk: int) -> bool:
        return self.index.get(ino, chunk) != 0

    def preserved(self, ino: int, start: int, end: int) -> bool:
        """Whether a change to bytes [start, end) of ``ino`` needs nothing
        preserved for this snapshot: its metadata and every chunk of the range
        below the snapshot-time size are already in the store (or the snapshot
        does not want the inode). Takes no lock: items are never removed from
        the store, so a True answer cannot become false; the live view uses it
        to skip the identity lock on writes to already-preserved chunks."""
        if not self.valid or ino in self._new:
            return True
        meta = self._meta.get(ino)
        if meta is None:
            return False
        last = meta[0].size
        if end < last:
            last = end
        if start >= last:
            return True
        cs = self.chunk_size
        return self.index.covers(ino, start // cs, (last - 1) // cs + 1)

    def snapshot_size(self, ino: int) -> int:
        return self._meta[ino][0].size

    def add_meta(self, ino: int, attr: Attr, xattrs: list[tuple[bytes, bytes]]) -> None:
        if self._store(self.cache.append_meta, ino, encode_meta(attr, xattrs)) is not None:
            self._meta.setdefault(ino, (attr, tuple(xattrs)))

    def add_listing(self, ino: int, entries: list[tuple[str, int, int]]) -> None:
        payload = encode_listing([(os.fsencode(n), i, t) for n, i, t in entries])
        offset = self._store(self.cache.append_listing, ino, payload)
        if offset is not None:
            self._listings.setdefault(ino, offset)

    def add_chunk(self, ino: int, chunk: int, data: Buffer) -> None:
        self.add_chunks(ino, [(chunk, data)])

    def add_chunks(self, ino: int, chunks: list[tuple[int, Buffer]]) -> None:
        """Store chunks of one inode in the cache file, then publish them (in
        that order: an index entry promises data that is already there)."""
        offsets = self._store(self.cache.append_chunks, ino, chunks)
        if offsets is not None:
            for (chunk, data), offset in zip(chunks, offsets, strict=True):
                self.index.put(ino, chunk, offset)
                self.bytes_preserved += len(data)

    def _store(self, append: Callable[..., T], *args: object) -> T | None:
        try:
            return append(*args)
        except CacheOverflow as exc:
            if self.policy == POLICY_REFUSE_WRITES:
                raise CacheFull(
                    f"write refused to keep snapshot {self.id} valid: {exc}; destroy the snapshot "
                    "or give it a larger cache"
                ) from None
            self.invalidate(str(exc))
            return None
        except OSError as exc:
            self.invalidate(f"cache file write failed: {exc}")
            return None

    def invalidate(self, reason: str) -> None:
        if not self.valid:
            return
        self.valid = False
        self.invalid_reason = reason
        log.error("snapshot %s of %s is now invalid: %s", self.id, self.volume.backing, reason)
        try:
            self.cache.mark_invalid(reason)
        except (OSError, CacheOverflow) as exc:
            log.warning("could not record the invalid state in %s: %s", self.cache.path, exc)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("snapshot %s: %s", self.id, message)

    # -- reading the past ---------------------------------------------------------

    def _check(self) -> None:
        if not self.valid:
            raise SnapshotInvalid(self.id, self.invalid_reason or "unknown reason")

    def _listing(self, ino: int) -> dict[str, tuple[int, int]] | None:
        offset = self._listings.get(ino)
        if offset is None:
            return None
        with self._lock:
            cached = self._listing_cache.get(ino)
        if cached is None:
            _type, _ino, _arg, payload = self.cache.read_record(offset)
            cached = {os.fsdecode(n): (i, t) for n, i, t in decode_listing(payload)}
            with self._lock:
                self._listing_cache[ino] = cached
        return cached

    @contextmanager
    def _dir_fd(self, node: Node) -> Iterator[int]:
        if node.parent is None:
            yield self.volume.root_fd
            return
        with self._fds.use(node.ino, lambda: self._open(node, _DIR)) as fd:
            yield fd

    def _open(self, node: Node, flags: int) -> int:
        """Open the live object that is ``node`` (verified by inode number)."""
        assert node.parent is not None
        with self._dir_fd(node.parent) as pfd:
            try:
                fd = open_quietly(node.name, flags, dir_fd=pfd)
            except OSError:
                fd = -1
            if fd >= 0:
                if os.fstat(fd).st_ino == node.ino:
                    return fd
                os.close(fd)
        loc = self.volume.retained.dup_location(node.ino)
        if loc is None:
            raise OSError(errno.EIO, f"snapshot {self.id}: object is no longer reachable", node.name)
        dfd, name = loc
        if name is None:
            return dfd
        try:
            return open_quietly(name, flags, dir_fd=dfd)
        finally:
            os.close(dfd)

    def _at(self, node: Node, op: Callable[[int, str], T]) -> T:
        """Run ``op(dir_fd, name)`` on the live object of a non-directory node."""
        assert node.parent is not None
        with self._dir_fd(node.parent) as pfd:
            try:
                if os.stat(node.name, dir_fd=pfd, follow_symlinks=False).st_ino == node.ino:
                    result = op(pfd, node.name)
                    if os.stat(node.name, dir_fd=pfd, follow_symlinks=False).st_ino == node.ino:
                        return result
            except FileNotFoundError:
                pass
        loc = self.volume.retained.dup_location(node.ino)
        if loc is None or loc[1] is None:
            if loc is not None:
                os.close(loc[0])
            raise OSError(errno.EIO, f"snapshot {self.id}: object is no longer reachable", node.name)
        dfd, name = loc
        try:
            return op(dfd, name)
        finally:
            os.close(dfd)

    def _lookup(self, parent: Node, name: str, path: str) -> Node:
        listing = self._listing(parent.ino)
        if listing is None:
            if parent.parent is None and is_hidden_root_name(name):
                raise _enoent(path)
            with self._dir_fd(parent) as dfd:
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
            listing = self._listing(parent.ino)
            if listing is None:
                if st is None:
                    raise _enoent(path)
                return Node(st.st_ino, statmod.S_IFMT(st.st_mode), parent, name)
        entry = listing.get(name)
        if entry is None:
            raise _enoent(path)
        return Node(entry[0], entry[1], parent, name)

    def _resolve(self, path: str) -> Node:
        key = path.strip("/")
        if not key:
            return self._root
        with self._lock:
            node = self._nodes.get(key)
        if node is not None:
            return node
        parent_key, _, name = key.rpartition("/")
        parent = self._resolve(parent_key)
        if parent.ftype != statmod.S_IFDIR:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        node = self._lookup(parent, name, path)
        with self._lock:
            self._nodes[key] = node
        return node

    def _live_attr(self, node: Node) -> Attr:
        if node.ftype == statmod.S_IFDIR:
            with self._dir_fd(node) as fd:
                st = os.fstat(fd)
        else:
            st = self._at(node, lambda d, n: os.stat(n, dir_fd=d, follow_symlinks=False))
        return self.volume.adjust(Attr.from_stat(st))

    def _attr(self, node: Node) -> Attr:
        meta = self._meta.get(node.ino)
        if meta is None:
            attr = self._live_attr(node)
            meta = self._meta.get(node.ino)
            if meta is None:
                return attr
        return meta[0]

    def _xattrs(self, node: Node) -> dict[str, bytes]:
        meta = self._meta.get(node.ino)
        if meta is None:
            if node.ftype == statmod.S_IFDIR:
                with self._dir_fd(node) as fd:
                    live = read_xattrs(fd)
            else:
                live = self._at(node, lambda d, n: read_xattrs(f"/proc/self/fd/{d}/{n}"))
            meta = self._meta.get(node.ino)
            if meta is None:
                return {os.fsdecode(k): v for k, v in live}
        return {os.fsdecode(k): v for k, v in meta[1]}

    # -- public read API ------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        self._check()
        node = self._resolve(path)
        self._check()
        return node

    def getattr(self, path: str) -> Attr:
        self._check()
        attr = self._attr(self._resolve(path))
        self._check()
        return attr

    def readdir(self, path: str) -> list[tuple[str, int, int]]:
        self._check()
        node = self._resolve(path)
        if node.ftype != statmod.S_IFDIR:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        listing = self._listing(node.ino)
        if listing is None:
            with self._dir_fd(node) as fd:
                entries = scan_dir(fd, node.parent is None)
            listing = self._listing(node.ino)
            if listing is None:
                self._check()
                return entries
        self._check()
        return [(name, ino, ftype) for name, (ino, ftype) in listing.items()]

    def readlink(self, path: str) -> str:
        self._check()
        node = self._resolve(path)
        if node.ftype != statmod.S_IFLNK:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
        target = self._at(node, lambda d, n: os.readlink(n, dir_fd=d))
        self._check()
        return target

    def getxattr(self, path: str, name: str) -> bytes:
        self._check()
        xattrs = self._xattrs(self._resolve(path))
        self._check()
        try:
            return xattrs[name]
        except KeyError:
            raise OSError(errno.ENODATA, os.strerror(errno.ENODATA), path) from None

    def listxattr(self, path: str) -> list[str]:
        self._check()
        names = list(self._xattrs(self._resolve(path)))
        self._check()
        return names

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.volume.root_fd)

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        self._check()
        node = self._resolve(path)
        if node.ftype == statmod.S_IFDIR:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if node.ftype != statmod.S_IFREG:
            raise OSError(errno.EINVAL, "only regular files can be read from a snapshot", path)
        size = self._attr(node).size
        fd = self._open(node, _FILE)
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._files[fh] = _OpenFile(node, fd, size)
        self._check()
        return fh

    def read(self, fh: int, size: int, offset: int) -> bytes:
        """Bytes of the file as it was at snapshot time.

        An unchanged file (no preserved chunk) is one pread, returned as it
        came. A changed file reads each preserved chunk from the cache file
        only, and the live file only for the chunks that are not preserved;
        those are looked up again *after* the live read: a chunk published
        meanwhile was preserved before its live bytes changed, so the cache
        holds its past (DESIGN.md, "Ordering")."""
        if not self.valid:
            raise SnapshotInvalid(self.id, self.invalid_reason or "unknown reason")
        try:
            f = self._files[fh]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        ino = f.node.ino
        if self.index.has_file(ino):
            data = self._read_changed(f.fd, ino, offset, end)
        else:
            data = os.pread(f.fd, end - offset, offset)
            if len(data) < end - offset:
                data += bytes(end - offset - len(data))
            if self.index.has_file(ino):  # the file changed during the read
                data = self._patch(ino, data, offset, end)
        self._check()
        return data

    def _from_cache(self, where: int, chunk: int, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi) of the file, all inside ``chunk``, preserved at ``where``."""
        return self.cache.read_data(where + lo - chunk * self.chunk_size, hi - lo)

    def _patch(self, ino: int, live: bytes, offset: int, end: int) -> bytes:
        """``live`` (read from the live file before this call) with every
        chunk that is preserved by now replaced by its preserved bytes."""
        cs = self.chunk_size
        buf = bytearray(live)
        for chunk in range(offset // cs, (end - 1) // cs + 1):
            where = self.index.get(ino, chunk)
            if where:
                lo, hi = max(offset, chunk * cs), min(end, (chunk + 1) * cs)
                buf[lo - offset : hi - offset] = self._from_cache(where, chunk, lo, hi)
        return bytes(buf)

    def _read_changed(self, fd: int, ino: int, offset: int, end: int) -> bytes:
        cs = self.chunk_size
        index = self.index
        first = offset // cs
        chunks = range(first, (end - 1) // cs + 1)
        wheres = [index.get(ino, c) for c in chunks]
        parts: list[bytes] = []
        i = 0
        while i < len(wheres):
            chunk = first + i
            lo = max(offset, chunk * cs)
            if wheres[i]:
                hi = min(end, (chunk + 1) * cs)
                parts.append(self._from_cache(wheres[i], chunk, lo, hi))
                i += 1
                continue
            j = i + 1  # a run of chunks that are not preserved: one live read
            while j < len(wheres) and not wheres[j]:
                j += 1
            hi = min(end, (first + j) * cs)
            live = os.pread(fd, hi - lo, lo)
            if len(live) < hi - lo:
                live += bytes(hi - lo - len(live))
            if any(index.get(ino, c) for c in range(chunk, first + j)):
                live = self._patch(ino, live, lo, hi)  # preserved since the lookup
            parts.append(live)
            i = j
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self, fh: int) -> None:
        with self._lock:
            f = self._files.pop(fh, None)
        if f is not None:
            os.close(f.fd)

    def close(self) -> None:
        """Release every fd this snapshot holds (the snapshot is being destroyed).

        A reader still holding a handle must not silently get present-day
        data: reads of a destroyed snapshot fail like those of an invalid one."""
        self.valid = False
        self.invalid_reason = "the snapshot was destroyed"
        with self._lock:
            files, self._files = self._files, {}
        for f in files.values():
            os.close(f.fd)
        self._fds.close()

    # -- reporting -------------------------------------------------------------------

    def changed_inodes(self) -> dict[str, int]:
        return {
            "metadata": len(self._meta),
            "listings": len(self._listings),
            "new": len(self._new),
            "files_with_chunks": len(self.index.files()),
        }

    def status(self) -> dict[str, object]:
        created = datetime.fromtimestamp(self.created_ns / 1e9, tz=timezone.utc)
        return {
            "id": self.id,
            "state": "valid" if self.valid else "invalid",
            "invalid_reason": self.invalid_reason,
            "volume": self.volume.backing,
            "volume_id": self.volume.volume_id,
            "mountpoint": self.volume.mountpoint,
            "created": created.isoformat(timespec="seconds"),
            "created_ns": self.created_ns,
            "policy": self.policy,
            "cache_file": self.cache.display_path,
            "cache_bytes": self.cache.used_bytes,
            "cache_allocated": self.cache.allocated_bytes,
            "cache_max": self.cache.max_bytes,
            "chunk_size": self.chunk_size,
            "chunks_preserved": self.index.count,
            "bytes_preserved": self.bytes_preserved,
            "pinned_bytes": self.volume.retained.pinned_bytes(self.id),
            "open_for_write": list(self.open_for_write),
            "warnings": list(self.warnings),
            "changed": self.changed_inodes(),
        }
