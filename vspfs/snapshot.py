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

from vspfs import hostfs
from vspfs.attrs import Attr
from vspfs.cacheformat import Buffer, decode_listing, encode_listing, encode_meta
from vspfs.chunkindex import PAGE, PAGE_BITS, ChunkIndex
from vspfs.errors import CacheFull, CacheOverflow, SnapshotInvalid
from vspfs.fdcache import FdCache
from vspfs.volume import is_hidden_root_name, read_xattrs, read_xattrs_at

if TYPE_CHECKING:
    from vspfs.cachefile import CacheFile
    from vspfs.volume import Volume

log = logging.getLogger(__name__)

T = TypeVar("T")

POLICY_INVALIDATE = "invalidate"
POLICY_REFUSE_WRITES = "refuse-writes"
POLICIES = (POLICY_INVALIDATE, POLICY_REFUSE_WRITES)

_FILE = os.O_RDONLY | hostfs.O_CLOEXEC | hostfs.O_NOFOLLOW | hostfs.O_NONBLOCK
#: an end offset past any file: "from here on, nothing needs preserving"
_ANYWHERE = 1 << 62


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
        #: directory fds by inode; none kept where a held handle blocks renames (Windows)
        self._fds = FdCache(256 if hostfs.HOLDS_DIRECTORY_HANDLES else 0)
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

    def preserved_window(self, ino: int, start: int, end: int) -> tuple[int, int] | None:
        """A byte range containing [start, end) of ``ino`` in which a change
        needs nothing preserved for this snapshot (its metadata and every
        chunk below the snapshot-time size are in the store, or the inode is
        not wanted); None if [start, end) still needs something.

        Takes no lock: items are never removed from the store, so the answer
        stays true while the snapshot lives. The window is widened to the
        index page around the range when that page is complete, so that the
        live view can remember it and skip the check for the next writes
        through the same handle (sequential writes cross a page every 4 MiB)."""
        if not self.valid or ino in self._new:
            return 0, _ANYWHERE
        meta = self._meta.get(ino)
        if meta is None:
            return None
        size = meta[0].size
        if start >= size:
            return size, _ANYWHERE
        cs = self.chunk_size
        first = start // cs
        stop = ((end if end < size else size) - 1) // cs + 1
        in_size = (size - 1) // cs + 1  # chunks below the snapshot-time size
        page_first = first >> PAGE_BITS << PAGE_BITS
        page_stop = ((stop - 1) >> PAGE_BITS << PAGE_BITS) + PAGE
        index = self.index
        if page_stop >= in_size:
            if index.covers(ino, page_first, in_size):
                return page_first * cs, _ANYWHERE
        elif index.covers(ino, page_first, page_stop):
            return page_first * cs, page_stop * cs
        if not index.covers(ino, first, stop):
            return None
        return first * cs, (stop * cs if stop < in_size else _ANYWHERE)

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
            self.index.put_many(
                ino, [(chunk, offset) for (chunk, _), offset in zip(chunks, offsets, strict=True)]
            )
            self.bytes_preserved += sum(len(data) for _, data in chunks)

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
        with self._fds.use(node.ino, lambda: self._open(node, None)) as fd:
            yield fd

    def _open(self, node: Node, flags: int | None) -> int:
        """Open the live object that is ``node`` (verified by inode number);
        ``flags`` None opens a directory."""
        assert node.parent is not None
        with self._dir_fd(node.parent) as pfd:
            try:
                fd = self._open_at(pfd, node.name, flags)
            except OSError:
                fd = -1
            if fd >= 0:
                if hostfs.fstat(fd).st_ino == node.ino:
                    return fd
                os.close(fd)
        loc = self.volume.retained.dup_location(node.ino)
        if loc is None:
            raise OSError(errno.EIO, f"snapshot {self.id}: object is no longer reachable", node.name)
        dfd, name = loc
        if name is None:
            return dfd
        try:
            return self._open_at(dfd, name, flags)
        finally:
            os.close(dfd)

    @staticmethod
    def _open_at(dir_fd: int, name: str, flags: int | None) -> int:
        if flags is None:
            return hostfs.open_dir_quietly(dir_fd, name)
        return hostfs.open_quietly(dir_fd, name, flags)

    def _at(self, node: Node, op: Callable[[int, str], T]) -> T:
        """Run ``op(dir_fd, name)`` on the live object of a non-directory node."""
        assert node.parent is not None
        with self._dir_fd(node.parent) as pfd:
            try:
                if hostfs.lstat_at(pfd, node.name).st_ino == node.ino:
                    result = op(pfd, node.name)
                    if hostfs.lstat_at(pfd, node.name).st_ino == node.ino:
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
                    st = hostfs.lstat_at(dfd, name)
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
                st = hostfs.fstat(fd)
        else:
            st = self._at(node, hostfs.lstat_at)
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
                live = self._at(node, read_xattrs_at)
            meta = self._meta.get(node.ino)
            if meta is None:
                return {os.fsdecode(k): v for k, v in live}
        return {os.fsdecode(k): v for k, v in meta[1]}

    def _xattr(self, node: Node, name: str) -> bytes | None:
        """One xattr as at snapshot time (None: the object had none of that name).

        Reads only that name from a live, unchanged object: the WinFsp
        adapter asks for a file's attributes each time it describes the
        file, and reading every xattr for it would read the security
        descriptor too. It answers what :meth:`_xattrs` would: a name the
        object does not list is not there (ntfs-3g serves unlisted names,
        which the core never preserves, so serving them live would change
        the snapshot's answer at the file's first change), and the ordering
        rule holds: the preserved metadata first, then the live object,
        then the preserved metadata again, which wins if it appeared
        meanwhile."""

        def live_one(names: Callable[[], list[str]], value: Callable[[], bytes]) -> bytes | None:
            try:  # the errors read_xattrs reads as "no xattrs here"
                if name not in names():
                    return None
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    return None
                raise
            try:
                return value()
            except OSError as exc:
                if exc.errno == errno.ENODATA:  # removed meanwhile
                    return None
                raise

        meta = self._meta.get(node.ino)
        if meta is None:
            if node.ftype == statmod.S_IFDIR:
                with self._dir_fd(node) as fd:
                    live = live_one(lambda: hostfs.listxattr(fd), lambda: hostfs.getxattr(fd, name))
            else:
                live = self._at(
                    node,
                    lambda dfd, leaf: live_one(
                        lambda: hostfs.listxattr_at(dfd, leaf), lambda: hostfs.getxattr_at(dfd, leaf, name)
                    ),
                )
            meta = self._meta.get(node.ino)
            if meta is None:
                return live
        key = os.fsencode(name)
        return next((value for k, value in meta[1] if k == key), None)

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
                entries = self.volume.scan_dir(fd, node.parent is None)
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
        target = self._at(node, hostfs.readlink_at)
        self._check()
        return target

    def getxattr(self, path: str, name: str) -> bytes:
        self._check()
        value = self._xattr(self._resolve(path), name)
        self._check()
        if value is None:
            raise OSError(errno.ENODATA, os.strerror(errno.ENODATA), path)
        return value

    def listxattr(self, path: str) -> list[str]:
        self._check()
        names = list(self._xattrs(self._resolve(path)))
        self._check()
        return names

    def statfs(self) -> os.statvfs_result | hostfs.StatVfs:
        return hostfs.statvfs(self.volume.root_fd)

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
            data = hostfs.pread(f.fd, end - offset, offset)
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
            live = hostfs.pread(fd, hi - lo, lo)
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

    # -- changes since the snapshot (`vspfs changes`) ----------------------------------

    def changes(self) -> dict[str, list]:
        """What changed on the live volume since this snapshot, for an incremental backup.

        Returns ``{"created": [path], "modified": [path], "deleted": [path],
        "renamed": [(old path, new path)]}``, volume-relative paths, sorted.
        Old paths are snapshot-time paths; new, created and modified paths are
        where things are now. A renamed directory is one entry (what lies in it
        keeps its relative path); a name whose object was replaced (written to a
        temporary file, then renamed over) counts as modified.

        Derived only from what the engine tracks, never from timestamps:

        * every directory whose namespace changed has its snapshot-time listing
          preserved; comparing it with the live listing gives the names that
          went (deleted), came (created; a new directory brings its whole
          subtree) and moved (the same inode gone from one place and come to
          another: renamed);
        * every inode whose data or attributes changed has its snapshot-time
          metadata preserved (and its changed chunks): it is modified where its
          size, mtime, mode, owner, xattrs or data differ from the live inode;
        * inodes created after the snapshot are known as new.

        Finding where those directories and inodes are costs one walk of the
        snapshot-time directory tree (names only: no stat of unchanged files)
        that stops as soon as every changed inode is placed; directories are
        then reached through the handles the snapshot keeps anyway. The result
        describes one moment: changes made while it is computed may or may not
        be in it. Raises SnapshotInvalid for an invalid snapshot (once invalid,
        nothing more was tracked).
        """
        self._check()
        meta = dict(list(self._meta.items()))
        listings = set(list(self._listings))
        new = set(list(self._new))
        targets = (set(meta) | listings) - {self.volume.root_ino}
        located = _locate(self, targets, meta)
        root_live = hostfs.location(self.volume.root_fd)

        def live_dir(node: Node) -> tuple[str | None, list[tuple[str, int, int]]]:
            """(live path, live entries) of a snapshot-time directory; (None, []) if gone."""
            try:
                with self._dir_fd(node) as fd:
                    where = _relative(hostfs.location(fd), root_live)
                    if where is None or where.split("/", 1)[0] == _RETAINED:
                        return None, []
                    return where, self.volume.scan_dir(fd, node.parent is None)
            except OSError:
                return None, []

        removed: dict[int, list[str]] = {}
        added: dict[int, list[str]] = {}
        live_paths: dict[int, str | None] = {}  # changed directory ino -> its live path
        live_names: dict[int, dict[str, int]] = {}
        pending: list[str] = []  # live paths of new directories
        for ino in sorted(listings):
            if ino == self.volume.root_ino:
                node, old = self._root, ""
            elif ino in located.dirs:
                node, old = located.dirs[ino]
            else:
                continue  # not reachable in the snapshot tree (vspfs's own area)
            past = self._listing(ino) or {}
            where, entries = live_dir(node)
            live_paths[ino] = where
            now = {name: (i, t) for name, i, t in entries}
            live_names[ino] = {name: i for name, (i, _t) in now.items()}
            for name, (i, _t) in past.items():
                if now.get(name, (None,))[0] != i:
                    removed.setdefault(i, []).append(_join(old, name))
            if where is None:
                continue
            for name, (i, t) in now.items():
                if past.get(name, (None,))[0] != i:
                    added.setdefault(i, []).append(_join(where, name))
                    if i in new and t == statmod.S_IFDIR:
                        pending.append(_join(where, name))
        while pending:  # new directories: all they hold came after the snapshot
            path = pending.pop()
            try:
                with self._open_live_dir(path) as fd:
                    entries = self.volume.scan_dir(fd, False)
            except OSError:
                continue
            for name, i, t in entries:
                added.setdefault(i, []).append(_join(path, name))
                if i in new and t == statmod.S_IFDIR:
                    pending.append(_join(path, name))

        created: set[str] = set()
        deleted: set[str] = set()
        renamed: list[tuple[str, str]] = []
        for ino in set(removed) | set(added):
            gone = sorted(removed.get(ino, []))
            came = sorted(added.get(ino, []))
            pairs = min(len(gone), len(came))
            renamed.extend(zip(gone[:pairs], came[:pairs], strict=True))
            deleted.update(gone[pairs:])
            created.update(came[pairs:])
        modified = created & deleted  # the same name, another object: replaced
        created -= modified
        deleted -= modified
        moved_to = {new_path for _old, new_path in renamed}
        deleted -= moved_to  # renamed over: the name is still there, holding what moved

        path_of: dict[int, str | None] = dict(live_paths)

        def live_path(node: Node) -> str | None:
            if node.ino not in path_of:
                try:
                    with self._dir_fd(node) as fd:
                        where = _relative(hostfs.location(fd), root_live)
                except OSError:
                    where = None
                if where is not None and where.split("/", 1)[0] == _RETAINED:
                    where = None
                path_of[node.ino] = where
            return path_of[node.ino]

        for ino, (attr, xattrs) in meta.items():
            if ino == self.volume.root_ino:
                if self._changed_since(ino, attr, xattrs, "", ""):
                    modified.add(".")
                continue
            places: list[tuple[str, str]] = []
            for parent, name in located.places.get(ino, []):
                if parent.ino in live_names and live_names[parent.ino].get(name) != ino:
                    continue  # moved or deleted: the listings said so already
                where = live_path(parent)
                if where is not None:
                    places.append((where, name))
            for path in added.get(ino, []):
                if path in moved_to:
                    parent_path, _, name = path.rpartition("/")
                    places.append((parent_path, name))
            for where, name in places:
                if self._changed_since(ino, attr, xattrs, where, name):
                    modified.add(_join(where, name))
        modified -= created
        return {
            "created": sorted(created),
            "modified": sorted(modified),
            "deleted": sorted(deleted),
            "renamed": sorted(renamed),
        }

    @contextmanager
    def _open_live_dir(self, rel: str) -> Iterator[int]:
        """An fd on a live directory by its volume-relative path, one component at
        a time without following symlinks (the walk never leaves the volume)."""
        fd = os.dup(self.volume.root_fd)
        try:
            for part in rel.split("/") if rel else []:
                nxt = hostfs.open_dir_quietly(fd, part)
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _changed_since(
        self, ino: int, attr: Attr, xattrs: tuple[tuple[bytes, bytes], ...], parent: str, name: str
    ) -> bool:
        """Whether the live object ``parent/name`` (the root if ``name`` is empty),
        if it is still inode ``ino``, differs from its snapshot-time metadata or data."""
        try:
            if name:
                with self._open_live_dir(parent) as pfd:
                    st = hostfs.lstat_at(pfd, name)
                    link = statmod.S_ISLNK(st.st_mode)
                    live_x = None if link else read_xattrs_at(pfd, name)
            else:
                st = hostfs.fstat(self.volume.root_fd)
                live_x = read_xattrs(self.volume.root_fd)
        except OSError:
            return False
        if st.st_ino != ino:
            return False
        if live_x is not None and sorted(live_x) != sorted(xattrs):
            return True
        before = (statmod.S_IMODE(attr.mode), attr.uid, attr.gid)
        if (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != before:
            return True
        if statmod.S_ISDIR(st.st_mode):
            return False  # its entries are reported one by one
        return self.index.has_file(ino) or st.st_size != attr.size or st.st_mtime_ns != attr.mtime_ns


_RETAINED = ".vsp-retained"


@dataclass
class _Located:
    """Where changed inodes were at snapshot time: directories by node, every name by parent."""

    dirs: dict[int, tuple[Node, str]]
    places: dict[int, list[tuple[Node, str]]]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _relative(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` ("" for the root itself); None if outside it."""
    if path == root:
        return ""
    if root == "/":
        return path.lstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return None


def _locate(snap: Snapshot, targets: set[int], meta: dict[int, tuple[Attr, object]]) -> _Located:
    """Walk the snapshot-time tree (names only) until every target inode is placed.

    A non-directory is placed once for each of its snapshot-time links; the
    walk stops as soon as every target has all its places, so a volume where
    a few files changed near the top is not read to its last directory.
    """
    need: dict[int, int] = {}
    for ino in targets:
        attr = meta.get(ino)
        need[ino] = 1 if attr is None or statmod.S_ISDIR(attr[0].mode) else max(1, attr[0].nlink)
    remaining = sum(need.values())
    found = _Located({}, {})
    queue: list[tuple[Node, str]] = [(snap._root, "")]
    while queue and remaining > 0:
        node, path = queue.pop()
        try:
            listing = snap._listing(node.ino)
            if listing is None:
                with snap._dir_fd(node) as fd:
                    entries = snap.volume.scan_dir(fd, node.parent is None)
                listing = snap._listing(node.ino)
            if listing is not None:
                entries = [(n, i, t) for n, (i, t) in listing.items()]
        except OSError:
            continue
        for name, ino, ftype in entries:
            child = Node(ino, ftype, node, name)
            child_path = _join(path, name)
            if ino in need and need[ino] > 0:
                need[ino] -= 1
                remaining -= 1
                found.places.setdefault(ino, []).append((node, name))
                if ftype == statmod.S_IFDIR:
                    found.dirs[ino] = (child, child_path)
            if ftype == statmod.S_IFDIR:
                queue.append((child, child_path))
    return found
