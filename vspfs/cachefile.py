"""One snapshot's cache file: the exception store of a copy-on-write snapshot.

The file holds the *original* bytes of whatever the live volume changed since
the snapshot, as append-only records behind a fixed header (format: vspfs/
cacheformat.py, docs/cache-file.md). The in-memory index of a snapshot points
into it; nothing here knows about inodes beyond storing their numbers.

Design points that are easy to get wrong:

- Ownership is an exclusive lock (``portable_io.try_lock_exclusive``: flock
  on POSIX, a LockFileEx lock on a byte far past the end on Windows) on the
  owner's own open file description, held for the object's life. A file nobody holds is *stale* (its
  daemon died) and may be removed by :func:`remove_if_stale`, which takes the
  lock itself before unlinking so that it can never race a live owner.
- A record's payload is written before its header. A reader that finds an
  all-zero record header has reached the end (never-written or preallocated
  space), and a process crash can leave nothing worse than that behind. This
  is why a record is *not* written with one pwritev of header and payload: a
  write cut short (SIGKILL stops a write between pages) would leave a header
  promising a payload that is not there, and chunk payloads carry no crc to
  tell. The chunks of one live write are appended as a batch: one pwritev of
  everything after the first record header (payloads and the other headers,
  in file order), then that first header. Until the last write, the batch
  sits behind a zero header, so a crash at any point leaves "unwritten" (a
  first header that would straddle a page, where a write can be cut, falls
  back to record-by-record writes).
- Appends reserve space under one short lock (the leaf of vspfs.gate's lock
  order) and write outside it, so preserving threads do not serialise on I/O.
- Once the maximum is reached or the cache volume is full, the file refuses
  every further append: a snapshot with a hole in its history must not look
  as if it recovered.
- Every OS call goes through ``vspfs.portable_io`` (``pio``), looked up at
  call time: on Linux its pread/pwrite/pwritev *are* os.pread/os.pwrite/
  os.pwritev, on Windows they are ReadFile/WriteFile with an offset, and
  there is no directory fd there (a directory is its path).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from fractions import Fraction
from typing import NamedTuple

from vspfs import portable_io as pio
from vspfs.cacheformat import (
    DEFAULT_CHUNK_SIZE,
    FLAG_ACTIVE,
    FLAG_CLOSED,
    FLAG_INVALID,
    FORMAT_VERSION,
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    RECORD_LISTING,
    RECORD_MAGIC,
    RECORD_META,
    Buffer,
    Header,
    cache_file_name,
    decode_header,
    decode_record_header,
    encode_chunk_header,
    encode_header,
    encode_record_header,
    is_cache_file_name,
    payload_crc,
)
from vspfs.errors import CacheFileError, CacheOverflow, UsageError

log = logging.getLogger(__name__)

MiB = 1 << 20

#: preallocated at creation: enough for a quiet backup without any growth, small
#: enough that a snapshot of a small volume does not eat its cache volume
DEFAULT_INITIAL_SIZE = 16 * MiB
#: each growth reserves this much more (fallocate), keeping fragmentation and
#: the number of allocation calls low for a busy volume
DEFAULT_GROW_STEP = 64 * MiB
#: no maximum of its own: the cache file is limited by its cache volume
DEFAULT_MAX_SIZE: int | None = None
#: on_warning fires once at each of these percentages of the maximum
WARN_PERCENTS = (80, 95)

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: how long create() retries its lock: a concurrent remove_if_stale may hold the
#: brand-new, still empty file for the moment it takes to find out it is not stale
_LOCK_RETRY_S = 2.0
_SCAN_BLOCK = MiB
#: records per pwritev (each takes two iovecs; Linux allows 1024)
_BATCH_MAX = 256
#: the unit in which the kernel may cut a write short (it checks for SIGKILL
#: between pages of the page cache)
_PAGE = 4096

WarningCallback = Callable[[int, int, int], None]

# (st_dev, st_ino) of every cache file this process owns. flock is per open file
# description, so a second open in the owning process already sees the lock; this
# also covers filesystems (NFS) where the kernel emulates flock with per-process
# POSIX locks, which would let the owner's own cleanup see its file as unlocked.
_owned: set[tuple[int, int]] = set()
_owned_lock = threading.Lock()


class RecordInfo(NamedTuple):
    """One intact record, as :func:`iter_records` finds it."""

    offset: int  # of the record header
    type: int
    ino: int
    arg: int
    payload_len: int

    @property
    def data_offset(self) -> int:
        return self.offset + RECORD_HEADER_SIZE


# -- low-level helpers -------------------------------------------------------------


def _try_lock(fd: int, *, shared: bool = False) -> bool:
    """Lock ``fd`` without waiting, through the platform layer (flock on POSIX)."""
    return pio.try_lock_shared(fd) if shared else pio.try_lock_exclusive(fd)


def _open_existing_flags() -> int:
    """Read-only, close-on-exec, no symlink followed, no FIFO waited for
    (built per call, as the tests swap the layer's flags with its functions)."""
    return pio.O_RDONLY | pio.O_CLOEXEC | pio.O_NOFOLLOW | pio.O_NONBLOCK


def _pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    n = pio.pwrite(fd, data, offset)
    if n == len(data):  # the usual case: no memoryview to build
        return
    view = memoryview(data)
    while True:
        if n <= 0:  # a regular file only does this when it cannot take more
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
        offset += n
        if not view:
            return
        n = pio.pwrite(fd, view, offset)


def _pwritev_all(fd: int, buffers: list[Buffer], offset: int, total: int) -> None:
    """Write ``buffers`` (bytes-like, one byte per item, ``total`` bytes in
    all) back to back at ``offset``."""
    done = pio.pwritev(fd, buffers, offset)
    if done < total:  # rare (a signal, a full disk): finish the rest piece by piece
        if done <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _pwrite_all(fd, b"".join(buffers)[done:], offset + done)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes; fewer only at end of file."""
    first = pio.pread(fd, length, offset)
    if len(first) == length or not first:
        return first
    parts = [first]
    got = len(first)
    while got < length:
        more = pio.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _allocate(fd: int, offset: int, length: int) -> None:
    """Reserve blocks so later writes cannot fail for space; where the
    filesystem cannot reserve, at least extend the file (writes may then
    report ENOSPC themselves, which is handled the same way)."""
    pio.allocate(fd, offset, length)


def _open_existing(path: str, dir_fd: pio.DirRef | None = None, name: str | None = None) -> int:
    """Open a would-be cache file for reading without following a symlink and
    without blocking on a FIFO; only regular files pass. With ``dir_fd`` (from
    ``pio.open_dir``), ``name`` is opened relative to it and ``path`` only
    names it in errors."""
    try:
        fd = pio.open_at(dir_fd, path if dir_fd is None else name, _open_existing_flags())
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CacheFileError(f"{path} is a symbolic link, not a vspfs cache file") from None
        raise
    try:
        if not statmod.S_ISREG(os.fstat(fd).st_mode):
            raise CacheFileError(f"{path} is not a regular file, so not a vspfs cache file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _header_of(fd: int, path: str) -> Header:
    return decode_header(_pread_all(fd, HEADER_SIZE, 0), path)


# -- the cache file ----------------------------------------------------------------


class CacheFile:
    """An open, owned cache file. Build it with :meth:`create`.

    ``display_path`` is the path to show people: the owner may write through a
    path that is only meaningful inside the daemon (``/proc/self/fd/N/...``)
    and sets this to the user-visible one; error messages use it.
    """

    def __init__(
        self,
        *,
        dir_fd: pio.DirRef,
        fd: int,
        directory: str,
        name: str,
        header: Header,
        allocated: int,
        max_size: int | None,
        grow_step: int,
        on_warning: WarningCallback | None,
    ) -> None:
        self._dir_fd = dir_fd
        self._fd = fd
        self._directory = directory
        self._name = name
        self._header = header
        self._allocated = allocated
        self._end = HEADER_SIZE
        self._max = max_size
        self._grow_step = grow_step
        self._on_warning = on_warning
        self._warned: set[int] = set()
        self._lock = threading.Lock()
        #: close() waits on it for reads and appends in flight; they notify it
        #: only once the file is closing
        self._cond = threading.Condition(self._lock)
        self._inflight = 0
        self._closed = False
        self._overflow: str | None = None
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        self.path = os.path.join(directory, name)
        self.display_path = self.path

    # -- creation ----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str,
        snapshot_id: str,
        volume_id: str,
        *,
        volume_path: str = "",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        initial_size: int = DEFAULT_INITIAL_SIZE,
        max_size: int | None = DEFAULT_MAX_SIZE,
        grow_step: int = DEFAULT_GROW_STEP,
        on_warning: WarningCallback | None = None,
    ) -> CacheFile:
        """Create, lock and preallocate ``VSP_<snapshot_id>.vsp`` at the root of
        ``directory``; never replaces an existing file.

        ``initial_size`` and ``max_size`` count the whole file, header included;
        the preallocation is at least the header and at most the maximum.
        """
        name = cache_file_name(snapshot_id)
        if max_size is not None and max_size < HEADER_SIZE + RECORD_HEADER_SIZE:
            raise UsageError(
                f"cache maximum of {max_size} bytes is too small: a cache file needs at least "
                f"{HEADER_SIZE + RECORD_HEADER_SIZE} bytes; give a larger maximum"
            )
        if initial_size < 0 or grow_step < 1:
            raise ValueError(f"bad sizes: initial_size={initial_size}, grow_step={grow_step}")
        allocated = max(initial_size, HEADER_SIZE)
        if max_size is not None:
            allocated = min(allocated, max_size)
        header = Header(
            version=FORMAT_VERSION,
            header_size=HEADER_SIZE,
            chunk_size=chunk_size,
            flags=FLAG_ACTIVE,
            created_ns=time.time_ns(),
            snapshot_id=snapshot_id,
            volume_id=volume_id,
            volume_path=volume_path,
        )
        block = encode_header(header)  # refuses bad ids before anything exists on disk
        path = os.path.join(directory, name)
        full = f"cache volume {directory} is full: cannot preallocate {allocated} bytes for {name}"
        dir_fd = pio.open_dir(directory)
        try:
            try:
                fd = pio.open_at(
                    dir_fd,
                    name,
                    pio.O_RDWR | pio.O_CREAT | pio.O_EXCL | pio.O_CLOEXEC | pio.O_NOFOLLOW,
                    0o600,
                )
            except FileExistsError:
                raise FileExistsError(
                    errno.EEXIST, f"cache file {path} already exists: it is never overwritten", path
                ) from None
            except OSError as exc:
                if exc.errno in _FULL_ERRNOS:
                    raise CacheOverflow(f"cache volume {directory} is full: cannot create {name}") from None
                raise
            try:
                deadline = time.monotonic() + _LOCK_RETRY_S
                while not _try_lock(fd):
                    if time.monotonic() > deadline:
                        raise CacheFileError(
                            f"cache file {path} is locked by someone else right after creation"
                        )
                    time.sleep(0.01)
                try:
                    _pwrite_all(fd, block, 0)
                    _allocate(fd, 0, allocated)
                except OSError as exc:
                    if exc.errno in _FULL_ERRNOS:
                        raise CacheOverflow(f"{full}; free space there or ask for a smaller cache") from None
                    raise
                cache = cls(
                    dir_fd=dir_fd,
                    fd=fd,
                    directory=directory,
                    name=name,
                    header=header,
                    allocated=allocated,
                    max_size=max_size,
                    grow_step=grow_step,
                    on_warning=on_warning,
                )
            except BaseException:
                try:
                    pio.unlink_at(dir_fd, name)  # still holding the lock: nobody can mistake it
                finally:
                    os.close(fd)
                raise
        except BaseException:
            pio.close_dir(dir_fd)
            raise
        with _owned_lock:
            _owned.add(cache._identity)
        return cache

    # -- properties --------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def header(self) -> Header:
        """The header as last written (flags, invalid reason included)."""
        return self._header

    @property
    def snapshot_id(self) -> str:
        return self._header.snapshot_id

    @property
    def volume_id(self) -> str:
        return self._header.volume_id

    @property
    def chunk_size(self) -> int:
        return self._header.chunk_size

    @property
    def created_ns(self) -> int:
        return self._header.created_ns

    @property
    def used_bytes(self) -> int:
        """Header plus every record appended (or being appended) so far."""
        return self._end

    @property
    def allocated_bytes(self) -> int:
        return self._allocated

    @property
    def max_bytes(self) -> int | None:
        return self._max

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def overflowed(self) -> bool:
        return self._overflow is not None

    # -- appending ---------------------------------------------------------------

    def append_chunk(self, ino: int, chunk_no: int, data: Buffer) -> int:
        """Store a chunk's original bytes; returns the offset of the *data*, so
        readers pread it without parsing a record (never 0: that is the header)."""
        return self.append_chunks(ino, [(chunk_no, data)])[0]

    def append_chunks(self, ino: int, chunks: list[tuple[int, Buffer]]) -> list[int]:
        """Store several chunks of one inode, each as its own CHUNK record
        (without a payload crc), in few system calls; returns their data
        offsets, in order. All or nothing: a batch that does not fit is refused
        whole (the file then refuses everything anyway)."""
        if len(chunks) <= _BATCH_MAX:
            return self._append_batch(ino, chunks) if chunks else []
        out: list[int] = []
        for first in range(0, len(chunks), _BATCH_MAX):
            out += self._append_batch(ino, chunks[first : first + _BATCH_MAX])
        return out

    def _append_batch(self, ino: int, chunks: list[tuple[int, Buffer]]) -> list[int]:
        heads = []
        buffers: list[Buffer] = []  # everything after the first header, in file order
        rel = []  # data offsets relative to the batch
        size = 0
        for chunk_no, data in chunks:
            if len(data) > self.chunk_size:
                raise ValueError(f"chunk of {len(data)} bytes exceeds the chunk size {self.chunk_size}")
            head = encode_chunk_header(ino, chunk_no, len(data))
            if heads:
                buffers.append(head)
            heads.append(head)
            buffers.append(data)
            size += RECORD_HEADER_SIZE
            rel.append(size)
            size += len(data)
        offset, end, due = self._reserve(size)
        offsets = [offset + r for r in rel]
        try:
            if len(chunks) > 1 and offset % _PAGE > _PAGE - RECORD_HEADER_SIZE:
                # The first header would straddle a page: a write cut there
                # (SIGKILL is honoured between pages) would leave a damaged
                # header with intact records of this batch behind it, which
                # reads as corruption, not as a torn tail. Rare (< 1 %): write
                # record by record instead, each payload before its header.
                for head, (_, data), data_offset in zip(heads, chunks, offsets, strict=True):
                    _pwrite_all(self._fd, data, data_offset)
                    _pwrite_all(self._fd, head, data_offset - RECORD_HEADER_SIZE)
            else:
                # everything but the first header, then the first header:
                # until that last write the whole batch reads as unwritten
                _pwritev_all(self._fd, buffers, offset + RECORD_HEADER_SIZE, size - RECORD_HEADER_SIZE)
                _pwrite_all(self._fd, heads[0], offset)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                with self._lock:
                    raise self._refuse(self._full_message()) from None
            raise
        finally:
            self._leave()
        for percent in due:
            self._warn(percent, end)
        return offsets

    def append_meta(self, ino: int, payload: bytes) -> int:
        """Store an encode_meta() payload; returns the record offset."""
        return self._append(RECORD_META, ino, 0, payload)

    def append_listing(self, ino: int, payload: bytes) -> int:
        """Store an encode_listing() payload; returns the record offset."""
        return self._append(RECORD_LISTING, ino, 0, payload)

    def _full_message(self) -> str:
        return f"cache volume {os.path.dirname(self.display_path)} is full"

    def _refuse(self, message: str) -> CacheOverflow:
        """Make the file done for good (caller holds the lock)."""
        if self._overflow is None:
            self._overflow = message
        return CacheOverflow(self._overflow)

    def _grow(self, end: int) -> None:
        """Extend the reservation to cover ``end`` (lock held). Grows by whole
        steps; when a whole step no longer fits, takes just what the record needs."""
        steps = -(-(end - self._allocated) // self._grow_step)
        target = self._allocated + steps * self._grow_step
        if self._max is not None:
            target = min(target, self._max)
        try:
            try:
                _allocate(self._fd, self._allocated, target - self._allocated)
            except OSError as exc:
                if exc.errno not in _FULL_ERRNOS or target == end:
                    raise
                target = end
                _allocate(self._fd, self._allocated, target - self._allocated)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise self._refuse(self._full_message()) from None
            raise
        self._allocated = target

    def _reserve(self, size: int) -> tuple[int, int, list[int]]:
        """Reserve ``size`` bytes at the end: (offset, new end, warnings due).
        The caller writes there and must call :meth:`_leave` afterwards."""
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, f"cache file {self.display_path} is closed")
            if self._overflow is not None:
                raise CacheOverflow(self._overflow)
            offset = self._end
            end = offset + size
            if self._max is not None and end > self._max:
                raise self._refuse(f"cache file {self.display_path} reached its maximum of {self._max} bytes")
            if end > self._allocated:
                self._grow(end)
            self._end = end
            self._inflight += 1
            return offset, end, self._due_warnings(end)

    def _append(self, rtype: int, ino: int, arg: int, payload: bytes) -> int:
        head = encode_record_header(rtype, ino, arg, payload)  # crc outside the lock
        offset, end, due = self._reserve(len(head) + len(payload))
        try:
            # payload first: a header on disk promises a complete payload behind it
            _pwrite_all(self._fd, payload, offset + len(head))
            _pwrite_all(self._fd, head, offset)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                with self._lock:
                    raise self._refuse(self._full_message()) from None
            raise
        finally:
            self._leave()
        for percent in due:
            self._warn(percent, end)
        return offset

    def _due_warnings(self, used: int) -> list[int]:
        if self._max is None:
            return []
        due = [p for p in WARN_PERCENTS if p not in self._warned and used * 100 >= p * self._max]
        self._warned.update(due)
        return due

    def _warn(self, percent: int, used: int) -> None:
        if self._on_warning is None:
            return
        try:
            self._on_warning(percent, used, self._max or 0)
        except Exception:  # a failing warning must not undo a stored record
            log.exception("cache file warning callback failed for %s", self.display_path)

    # -- reading -----------------------------------------------------------------

    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, f"cache file {self.display_path} is closed")
            self._inflight += 1

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._closed and not self._inflight:
                self._cond.notify_all()  # close() is waiting for the last one

    def read_data(self, offset: int, length: int) -> bytes:
        """Bytes at a data offset that an append returned (or inside that data).

        Counted in flight (two uncontended lock round trips, no Condition) so
        that close() never closes the fd under a read: a recycled fd number
        would hand this read someone else's data."""
        if offset < HEADER_SIZE or length < 0 or offset + length > self._end:
            raise CacheFileError(
                f"cache file {self.display_path}: read of {length} bytes at {offset} is outside its records"
            )
        lock = self._lock
        with lock:
            if self._closed:
                raise OSError(errno.EBADF, f"cache file {self.display_path} is closed")
            self._inflight += 1
        try:
            data = _pread_all(self._fd, length, offset)
        finally:
            with lock:
                self._inflight -= 1
                if self._closed and not self._inflight:
                    self._cond.notify_all()
        if len(data) != length:
            raise CacheFileError(f"cache file {self.display_path} is shorter than its records (at {offset})")
        return data

    def read_record(self, offset: int) -> tuple[int, int, int, bytes]:
        """(type, ino, arg, payload) of the record at ``offset``, crcs checked
        (the payload's only where it has one: not for CHUNK records)."""
        where = f"cache file {self.display_path}: record at offset {offset}"
        if offset < HEADER_SIZE or offset + RECORD_HEADER_SIZE > self._end:
            raise CacheFileError(f"{where} is outside its records")
        self._enter()
        try:
            raw = _pread_all(self._fd, RECORD_HEADER_SIZE, offset)
            try:
                rh = decode_record_header(raw, self.chunk_size)
            except CacheFileError as exc:
                raise CacheFileError(f"{where}: {exc}") from None
            payload = _pread_all(self._fd, rh.length, offset + RECORD_HEADER_SIZE)
        finally:
            self._leave()
        if len(payload) != rh.length:
            raise CacheFileError(f"{where}: payload is cut short")
        if rh.has_crc and payload_crc(payload) != rh.crc:
            raise CacheFileError(f"{where}: payload is damaged (crc mismatch)")
        return rh.type, rh.ino, rh.arg, payload

    # -- state -------------------------------------------------------------------

    def _write_header(self, header: Header) -> None:
        """Rewrite the header block in place (lock held). Not synced: the state
        is for people and for `vspfs cleanup`, and a stale file goes anyway."""
        _pwrite_all(self._fd, encode_header(header), 0)
        self._header = header

    def mark_invalid(self, reason: str) -> None:
        """Record in the header that the snapshot is invalid, and why."""
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, f"cache file {self.display_path} is closed")
            self._write_header(
                replace(self._header, flags=self._header.flags | FLAG_INVALID, invalid_reason=reason)
            )

    def close(self, delete: bool) -> None:
        """Stop owning the file; ``delete`` removes it (while still locked, so a
        cleaner never sees it half gone). Waits for reads and appends in flight;
        calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cond.wait_for(lambda: self._inflight == 0)
        try:
            if delete:
                self._unlink_own()
            else:
                flags = (self._header.flags & ~FLAG_ACTIVE) | FLAG_CLOSED
                self._write_header(replace(self._header, flags=flags))
        finally:
            with _owned_lock:
                _owned.discard(self._identity)
            os.close(self._fd)  # releases the lock
            pio.close_dir(self._dir_fd)

    def _unlink_own(self) -> None:
        """Unlink our name only if it still names our file."""
        try:
            st = pio.stat_at(self._dir_fd, self._name)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            pio.unlink_at(self._dir_fd, self._name)

    def __repr__(self) -> str:
        return f"<CacheFile {self.display_path} used={self._end} allocated={self._allocated} max={self._max}>"


# -- files on disk -------------------------------------------------------------------


def read_header(path: str) -> Header:
    """The header of the cache file at ``path``; CacheFileError (naming the file
    and what is wrong) for anything that is not an intact vspfs cache file."""
    fd = _open_existing(path)
    try:
        return _header_of(fd, path)
    finally:
        os.close(fd)


def iter_records(path: str) -> Iterator[RecordInfo]:
    """Every intact record in file order, each checked against its crcs (the
    record header's; the payload's where it has one: not CHUNK records).

    Ends quietly at the end of the records: an all-zero record header (space
    preallocated or reserved but never written), a record that runs past the
    end of the file, or a damaged record with nothing intact after it (a tail
    torn by a crash). A damaged record *followed* by intact records is
    corruption and raises CacheFileError.
    """
    fd = _open_existing(path)
    try:
        header = _header_of(fd, path)
        size = os.fstat(fd).st_size
        offset = HEADER_SIZE
        zero = bytes(RECORD_HEADER_SIZE)
        while offset + RECORD_HEADER_SIZE <= size:
            raw = _pread_all(fd, RECORD_HEADER_SIZE, offset)
            if raw == zero or len(raw) < RECORD_HEADER_SIZE:
                return
            try:
                rh = decode_record_header(raw, header.chunk_size, header.version)
            except CacheFileError as exc:
                _damaged(fd, path, offset, str(exc), offset + 1, size, header)
                return
            data = offset + RECORD_HEADER_SIZE
            if data + rh.length > size:
                return
            if rh.has_crc and _crc_range(fd, data, rh.length) != rh.crc:
                why = "payload crc mismatch"
                _damaged(fd, path, offset, why, data + rh.length, size, header)
                return
            yield RecordInfo(offset, rh.type, rh.ino, rh.arg, rh.length)
            offset = data + rh.length
    finally:
        os.close(fd)


def _crc_range(fd: int, offset: int, length: int) -> int | None:
    """crc32 of a file range, read in bounded pieces; None if the file is shorter."""
    crc = 0
    while length:
        piece = _pread_all(fd, min(length, _SCAN_BLOCK), offset)
        if not piece:
            return None
        crc = payload_crc(piece, crc)
        offset += len(piece)
        length -= len(piece)
    return crc


def _intact_at(fd: int, offset: int, size: int, header: Header) -> bool:
    raw = _pread_all(fd, RECORD_HEADER_SIZE, offset)
    try:
        rh = decode_record_header(raw, header.chunk_size, header.version)
    except CacheFileError:
        return False
    end = offset + RECORD_HEADER_SIZE + rh.length
    if end > size:
        return False
    return not rh.has_crc or _crc_range(fd, offset + RECORD_HEADER_SIZE, rh.length) == rh.crc


def _damaged(fd: int, path: str, offset: int, why: str, scan_from: int, size: int, header: Header) -> None:
    """Decide whether a damaged record is a torn tail (return) or corruption
    (raise): only corruption leaves intact records behind it."""
    pos = scan_from
    overlap = len(RECORD_MAGIC) - 1
    while pos < size:
        block = _pread_all(fd, min(_SCAN_BLOCK, size - pos), pos)
        if not block:
            break
        hit = block.find(RECORD_MAGIC)
        while hit != -1:
            if _intact_at(fd, pos + hit, size, header):
                raise CacheFileError(
                    f"cache file {path}: record at offset {offset} is damaged ({why}) but an intact "
                    f"record follows at {pos + hit}: the file is corrupt, not just cut short"
                )
            hit = block.find(RECORD_MAGIC, hit + 1)
        if len(block) <= overlap:
            break
        pos += len(block) - overlap


def is_locked(path: str) -> bool:
    """Whether a live owner holds the cache file at ``path``.

    Uses a fresh open file description, so the answer is right even inside the
    owning process; a shared lock, so two checkers do not see each other."""
    fd = pio.open_at(None, path, _open_existing_flags())
    try:
        st = os.fstat(fd)
        with _owned_lock:
            if (st.st_dev, st.st_ino) in _owned:
                return True
        if not _try_lock(fd, shared=True):
            return True
        pio.unlock(fd)
        return False
    finally:
        os.close(fd)


def find_cache_files(directory: str) -> list[str]:
    """Names (not paths) of the entries at the root of ``directory`` that look
    like cache files, whatever their type: a rule check must see them all."""
    return sorted(n for n in os.listdir(directory) if is_cache_file_name(n))


def remove_if_stale(path: str) -> bool:
    """Remove a cache file whose owner is gone; False if it is in use (or gone).

    The lock is taken *before* the header is judged and held until after the
    unlink, so a starting owner can never lose its file to a cleaner. Anything
    that is not an intact vspfs cache file raises CacheFileError and stays.
    """
    parent, name = os.path.split(path)
    dir_fd = pio.open_dir(parent or ".")
    try:
        try:
            fd = _open_existing(path, dir_fd, name)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            with _owned_lock:
                if (st.st_dev, st.st_ino) in _owned:
                    return False
            if not _try_lock(fd):
                return False
            _header_of(fd, path)
            try:
                now = pio.stat_at(dir_fd, name)
            except FileNotFoundError:
                return False
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return False  # replaced meanwhile: judge the new file on another run
            pio.unlink_at(dir_fd, name)
            return True
        finally:
            os.close(fd)
    finally:
        pio.close_dir(dir_fd)


# -- sizes ---------------------------------------------------------------------------

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|(b)|(%))?\s*", re.IGNORECASE)
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_LIMIT = (1 << 63) - 1


def parse_size(text: str, volume_size: int | None) -> int:
    """Bytes from "123", "64K", "10M", "2G", "1T" (binary units; KiB, MiB... and
    a trailing B are accepted too) or "20%" of ``volume_size``."""
    m = _SIZE_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise UsageError(
            f"bad size {text!r}: give bytes, a number with K, M, G or T (binary units) "
            "or a percentage like 20%"
        )
    number, unit, _bytes, percent = m.groups()
    value = Fraction(number)
    if percent:
        if volume_size is None:
            raise UsageError(f"size {text!r} is a percentage, but the volume size is unknown: give bytes")
        if value > 100:
            raise UsageError(f"size {text!r} is more than the whole volume: give at most 100%")
        value = value * volume_size / 100
    elif unit:
        value *= _UNITS[unit.lower()]
    result = int(value)
    if result > _SIZE_LIMIT:
        raise UsageError(f"size {text!r} is too large")
    return result
