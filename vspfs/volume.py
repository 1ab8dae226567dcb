"""The live view of a volume: a pass-through that preserves before it changes.

Every operation an application makes through the live view arrives here.
Without an active snapshot it is a plain pass-through; with one, whatever a
snapshot still needs is preserved *before* the change reaches the backing
filesystem (DESIGN.md, "Copy-on-write, file level").

Every backing call is relative to the volume's directory fd (the *at calls,
made through ``vspfs.hostfs``): root+path strings break at PATH_MAX, libfuse
changes the working directory, and when the live view is mounted over its
own backing directory the path leads back into the mount.

Concurrency: see ``vspfs.gate`` for the lock order. ``self._snaps`` is
replaced, never mutated, and only while the gate is held exclusively, so a
live operation reads it once and sees a stable list.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vspfs import cow, hostfs
from vspfs.attrs import Attr
from vspfs.cacheformat import DEFAULT_CHUNK_SIZE, RETAINED_DIR_NAME, is_cache_file_name
from vspfs.errors import ProtectedName
from vspfs.gate import Gate, StripedLocks
from vspfs.hostfs import (
    FUSE_SUPER_MAGIC,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    UTIME_NOW,
    UTIME_OMIT,
)
from vspfs.retained import RetainedArea

#: fallocate(2) modes (linux/falloc.h) that move or drop existing bytes
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20

if TYPE_CHECKING:
    from vspfs.snapshot import Snapshot

__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "UTIME_NOW",
    "UTIME_OMIT",
    "Caller",
    "Volume",
    "is_hidden_root_name",
    "read_xattrs",
    "read_xattrs_at",
    "scan_dir",
]

log = logging.getLogger(__name__)

_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
#: paths from the root at least this long are resolved in pieces (PATH_MAX is 4096)
_LONG_PATH = 3072
_IS_ROOT = getattr(os, "geteuid", lambda: -1)() == 0


@dataclass(frozen=True)
class Caller:
    """Who asked: new files belong to the caller, not to the daemon.

    ``umask`` is the caller's umask, for the live view to apply itself to the
    mode of what it creates (see ``Volume._creation_mode``): the kernel can
    only apply it correctly where it knows the parent's default ACL. A
    binding that lets the kernel mask the mode passes 0.
    """

    uid: int
    gid: int
    pid: int = 0
    umask: int = 0


@dataclass
class OpenFile:
    fd: int
    ino: int
    path: str
    writable: bool
    readable: bool
    append: bool
    read_fd: int = -1  # lazily opened read-only twin, for preservation
    #: (snapshot generation, lo, hi): bytes [lo, hi) of this file need nothing
    #: preserved for any snapshot of that generation; one tuple, stored whole,
    #: so that threads writing through the same handle never mix two windows
    preserved: tuple[int, int, int] | None = None


def is_hidden_root_name(name: str) -> bool:
    """Names at a volume root that belong to vspfs, not to applications."""
    return name == RETAINED_DIR_NAME or is_cache_file_name(name)


def _rel(path: str) -> str:
    rel = path.strip("/")
    return rel or "."


def _split(path: str) -> tuple[str, str]:
    rel = path.strip("/")
    if not rel:
        raise OSError(errno.EBUSY, "the volume root cannot be changed this way", "/")
    parent, _, name = rel.rpartition("/")
    return parent or ".", name


#: open flags an application's open must not pass on to the backing file:
#: creation and truncation are done (and preserved for) by vspfs itself, and
#: O_DIRECT is handled by the kernel's FUSE client (see _backing_open_flags)
_NOT_FOR_BACKING = os.O_CREAT | os.O_EXCL | os.O_TRUNC | hostfs.O_NOCTTY | hostfs.O_DIRECT


def _backing_open_flags(flags: int) -> int:
    """The flags of the backing file's open for an application's open.

    O_DIRECT is dropped. The kernel's FUSE client already honours it for the
    application (its reads and writes bypass the live view's page cache and
    reach vspfs one request each, as they were issued), but the backing
    filesystem would also require every buffer to be aligned to its block
    size, and vspfs's buffers are Python bytes objects that never are: with
    O_DIRECT on the backing fd every write, and most reads, failed with
    EINVAL (``dd oflag=direct``, databases). The same fd also serves the
    kernel's page-sized writeback of an mmap of that file, whose last page
    may end anywhere. Durability is what fsync/O_DSYNC ask for, and those
    pass through.
    """
    return (flags & ~_NOT_FOR_BACKING) | hostfs.O_CLOEXEC | hostfs.O_NOFOLLOW


def read_xattrs(fd: int) -> list[tuple[bytes, bytes]]:
    """All extended attributes of an fd. Filesystems without xattr support
    give an empty list."""
    return _read_xattrs(lambda: hostfs.listxattr(fd), lambda attr: hostfs.getxattr(fd, attr))


def read_xattrs_at(dir_fd: int, name: str) -> list[tuple[bytes, bytes]]:
    """``read_xattrs`` of ``name`` in ``dir_fd``, not following a final symlink."""
    return _read_xattrs(
        lambda: hostfs.listxattr_at(dir_fd, name), lambda attr: hostfs.getxattr_at(dir_fd, name, attr)
    )


def _read_xattrs(names: Callable[[], list[str]], value: Callable[[str], bytes]) -> list[tuple[bytes, bytes]]:
    try:
        listed = names()
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return []
        raise
    out = []
    for attr in listed:
        try:
            out.append((os.fsencode(attr), value(attr)))
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return out


def scan_dir(fd: int, at_root: bool, *, stat_inodes: bool = False) -> list[tuple[str, int, int]]:
    """(name, ino, S_IFMT type) of every entry of an open directory.

    With ``stat_inodes`` the inode number comes from lstat, not from
    readdir's d_ino (see Volume.exact_dirent_inodes); an entry that vanishes
    in between is left out, as if listed a moment later. (``lstat_at``, not
    ``DirEntry.stat``: on Windows the latter leaves st_ino at 0.)"""
    out = []
    with hostfs.scandir(fd) as it:
        for entry in it:
            if at_root and is_hidden_root_name(entry.name):
                continue
            if stat_inodes:
                try:
                    st = hostfs.lstat_at(fd, entry.name)
                except FileNotFoundError:
                    continue
                out.append((entry.name, st.st_ino, statmod.S_IFMT(st.st_mode)))
                continue
            if entry.is_symlink():
                ftype = statmod.S_IFLNK
            elif entry.is_dir(follow_symlinks=False):
                ftype = statmod.S_IFDIR
            elif entry.is_file(follow_symlinks=False):
                ftype = statmod.S_IFREG
            else:
                ftype = statmod.S_IFMT(entry.stat(follow_symlinks=False).st_mode)
            out.append((entry.name, entry.inode(), ftype))
    return out


def _dirent_inodes_exact(root_fd: int, probe: int = 64) -> bool:
    """False on FUSE, or when any of the first ``probe`` root entries disagrees."""
    try:
        if hostfs.fs_magic(root_fd) == FUSE_SUPER_MAGIC:
            return False
        with hostfs.scandir(root_fd) as it:
            for _, entry in zip(range(probe), it, strict=False):
                try:
                    if entry.inode() != hostfs.lstat_at(root_fd, entry.name).st_ino:
                        return False
                except FileNotFoundError:
                    continue
    except OSError:
        return False
    return True


def _rename_fails(
    old: str,
    new: str,
    flags: int,
    sst: os.stat_result,
    tst: os.stat_result | None,
    npfd: int,
    nname: str,
) -> bool:
    """True when rename(2) is certain to refuse this request (conservative:
    False whenever in doubt, so nothing a snapshot needs is ever skipped)."""
    src_dir = statmod.S_ISDIR(sst.st_mode)
    if src_dir and (_rel(new) + "/").startswith(_rel(old) + "/") and _rel(new) != _rel(old):
        return True  # EINVAL: a directory cannot move into itself
    if flags & RENAME_EXCHANGE and (_rel(old) + "/").startswith(_rel(new) + "/") and _rel(new) != _rel(old):
        return True  # EINVAL: nor be exchanged with its own descendant
    if tst is None:
        return bool(flags & RENAME_EXCHANGE)  # ENOENT
    if flags & RENAME_NOREPLACE:
        return True  # EEXIST, even onto another name of the same inode
    if flags & RENAME_EXCHANGE or tst.st_ino == sst.st_ino:
        return False
    dst_dir = statmod.S_ISDIR(tst.st_mode)
    if src_dir != dst_dir:
        return True  # ENOTDIR / EISDIR
    if dst_dir:
        fd = hostfs.open_dir_at(npfd, nname)
        try:
            return bool(hostfs.listdir(fd))  # ENOTEMPTY
        finally:
            os.close(fd)
    return False


class Volume:
    """A served backing directory and its snapshots' copy-on-write hooks."""

    def __init__(self, backing: str, *, volume_id: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE):
        self.backing = os.path.realpath(backing)
        self.name = os.path.basename(self.backing) or self.backing
        self.volume_id = volume_id or hashlib.sha256(os.fsencode(self.backing)).hexdigest()[:12]
        self.chunk_size = chunk_size
        self.root_fd = hostfs.open_dir(self.backing)
        st = hostfs.fstat(self.root_fd)
        self.dev = st.st_dev
        self.root_ino = st.st_ino
        #: whether readdir's d_ino equals lstat's st_ino here. Snapshots find
        #: objects by inode number, so a listing must carry the st_ino. FUSE
        #: filesystems without use_ino (sshfs by default...) give other numbers
        #: (or none) in readdir: their listings pay one lstat per entry.
        self.exact_dirent_inodes = _dirent_inodes_exact(self.root_fd)
        if hostfs.fs_magic(self.root_fd) == FUSE_SUPER_MAGIC:
            log.warning(
                "%s is on a FUSE filesystem: its snapshots are exact only if that filesystem keeps "
                "inode numbers stable (libfuse's use_ino); without it, reads of unchanged files "
                "in a drive may fail with EIO",
                self.backing,
            )
        self.retained = RetainedArea(self.root_fd, self.backing)
        self._gate = Gate()
        self._ns_lock = threading.RLock()
        self._stripe = StripedLocks()
        self._handles: dict[int, OpenFile] = {}
        self._snaps: list[Snapshot] = []
        #: moves whenever ``_snaps`` is replaced (under the exclusive gate)
        self._snaps_gen = 0
        #: monotonic time of the last change through the live view (quiet period)
        self.last_change_ns = time.monotonic_ns()
        self.change_count = 0
        self.mountpoint: str | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    @property
    def root_path(self) -> str:
        """A path to the backing directory that still works when the live view
        is mounted over it (the daemon must never go through its own mount)."""
        return hostfs.access_path(self.root_fd)

    @property
    def snapshots(self) -> list[Snapshot]:
        return list(self._snaps)

    def attach(self, snap: Snapshot) -> None:
        """Start preserving for ``snap``. Caller holds ``hold_changes``."""
        self._snaps = [*self._snaps, snap]
        self._snaps_gen += 1

    def detach(self, snap: Snapshot) -> None:
        """Stop preserving for ``snap``; waits for preservation in flight."""
        with self._gate.hold():
            self._snaps = [s for s in self._snaps if s is not snap]
            self._snaps_gen += 1

    def hold_changes(self, timeout: float = 30.0):
        """Context manager: no live change runs while it is held."""
        return self._gate.hold(timeout)

    def forget_snapshot(self, snap: Snapshot) -> None:
        """Drop what only ``snap`` needed from the retained area (after detach)."""
        with self._changing() as snaps, self._ns_lock:
            self.retained.release_owner(
                snap.id, lambda ino: self._preserve_at(snaps, self.retained.fd, str(ino))
            )

    def open_for_write(self) -> list[str]:
        return sorted({of.path for of in list(self._handles.values()) if of.writable})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fh in list(self._handles):
            self.release(fh)
        self.retained.close()
        os.close(self.root_fd)

    # -- helpers ---------------------------------------------------------------

    def scan_dir(self, fd: int, at_root: bool) -> list[tuple[str, int, int]]:
        """The entries of a directory of this volume, with the inode numbers lstat gives."""
        return scan_dir(fd, at_root, stat_inodes=not self.exact_dirent_inodes)

    def adjust(self, attr: Attr) -> Attr:
        """Hide vspfs's own links: retained hard links and the retained area
        (a subdirectory of the root) do not count in st_nlink."""
        extra = self.retained.extra_links(attr.ino)
        if attr.ino == self.root_ino:
            extra += 1
        return attr.with_nlink(attr.nlink - extra) if extra else attr

    def _visible(self, path: str) -> str:
        rel = _rel(path)
        if is_hidden_root_name(rel.split("/", 1)[0]):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return rel

    def _changeable(self, path: str) -> str:
        rel = _rel(path)
        if is_hidden_root_name(rel.split("/", 1)[0]):
            raise ProtectedName(f"{path}: reserved for vspfs (cache file or retained area)")
        return rel

    @contextmanager
    def _changing(self) -> Iterator[list[Snapshot]]:
        """Enter the gate for one live change; yields the snapshots to serve."""
        with self._gate:
            try:
                yield self._snaps
            finally:
                self.last_change_ns = time.monotonic_ns()
                self.change_count += 1

    @contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        parent, name = _split(self._changeable(path))
        if parent == ".":
            yield self.root_fd, name
            return
        with self._at(parent) as (base, rel):
            fd = hostfs.open_dir_at(base, rel)
        try:
            yield fd, name
        finally:
            os.close(fd)

    @contextmanager
    def _at(self, rel: str) -> Iterator[tuple[int, str]]:
        """(directory fd, relative name) for a volume-relative path.

        A path from the root can be longer than PATH_MAX even though every
        component is short (libfuse builds it from its own tree): such a path
        is walked in pieces, each opened relative to the previous one."""
        if len(os.fsencode(rel)) < _LONG_PATH:
            yield self.root_fd, rel
            return
        parts = rel.split("/")
        fd = self.root_fd
        try:
            while len(os.fsencode("/".join(parts))) >= _LONG_PATH:
                piece: list[str] = []
                while parts[:-1] and len(os.fsencode("/".join([*piece, parts[0]]))) < _LONG_PATH:
                    piece.append(parts.pop(0))
                if not piece:
                    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), rel)
                nxt = hostfs.open_search_at(fd, "/".join(piece))
                if fd != self.root_fd:
                    os.close(fd)
                fd = nxt
            yield fd, "/".join(parts)
        finally:
            if fd != self.root_fd:
                os.close(fd)

    def _handle(self, fh: int) -> OpenFile:
        try:
            return self._handles[fh]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None

    def _register(self, fd: int, path: str, flags: int) -> int:
        acc = flags & _ACCMODE
        self._handles[fd] = OpenFile(
            fd=fd,
            ino=hostfs.fstat(fd).st_ino,
            path=path,
            writable=acc != os.O_RDONLY,
            readable=acc != os.O_WRONLY,
            append=bool(flags & os.O_APPEND),
        )
        return fd

    def _reader(self, of: OpenFile) -> int | None:
        """A read-only fd on an open file, for copying its original chunks even
        when the application opened it write-only (or it was unlinked).

        None where the host filesystem can reopen a file only by name
        (``hostfs.REOPENS_ANY_FD`` False) and this one has none left: then
        no snapshot can show it (a file a snapshot shows keeps a name, in
        the retained area if need be), so there is nothing to preserve."""
        if of.read_fd < 0:
            if hostfs.REOPENS_ANY_FD:
                of.read_fd = hostfs.reopen_quietly(of.fd, os.O_RDONLY | hostfs.O_CLOEXEC)
            elif of.readable:
                return of.fd
            else:
                try:
                    of.read_fd = hostfs.reopen_quietly(of.fd, os.O_RDONLY | hostfs.O_CLOEXEC)
                except FileNotFoundError:
                    return None
        return of.read_fd

    @staticmethod
    def _creation_mode(parent_fd: int, mode: int, caller: Caller | None) -> int:
        """The mode to create an object with, as the kernel would have masked it.

        POSIX ACLs: in a directory with a default ACL the umask does not
        apply (the default ACL decides), elsewhere it does. Only the backing
        filesystem knows the parent's ACL, so the live view gets the mode
        unmasked with the caller's umask (FUSE_CAP_DONT_MASK), applies the
        umask here unless the parent has a default ACL, and creates with a
        umask of 0 (the FUSE threads have their own). Letting the kernel's
        FUSE client mask the mode first gave files created in a directory
        with a default ACL a narrower ACL mask than on a plain directory.
        """
        if caller is None or not caller.umask:
            return mode
        try:
            hostfs.getxattr(parent_fd, "system.posix_acl_default")
        except OSError:  # ENODATA (no default ACL), ENOTSUP (no ACLs at all)
            return mode & ~caller.umask
        return mode

    def _own(self, parent_fd: int, name: str, caller: Caller | None, fd: int | None = None) -> None:
        """Give a new object to its creator, as the kernel would have done."""
        if caller is None or not _IS_ROOT:
            return
        gid = caller.gid
        pst = hostfs.fstat(parent_fd)
        if pst.st_mode & statmod.S_ISGID:
            gid = pst.st_gid
        if fd is not None:
            st = hostfs.fstat(fd)
            if (st.st_uid, st.st_gid) != (caller.uid, gid):
                os.fchown(fd, caller.uid, gid)
                if st.st_mode & (statmod.S_ISUID | statmod.S_ISGID):
                    os.fchmod(fd, statmod.S_IMODE(st.st_mode))
            return
        st = hostfs.lstat_at(parent_fd, name)
        if (st.st_uid, st.st_gid) != (caller.uid, gid):
            hostfs.chown_at(parent_fd, name, caller.uid, gid)
            if not statmod.S_ISLNK(st.st_mode) and st.st_mode & (statmod.S_ISUID | statmod.S_ISGID):
                hostfs.chmod_at(parent_fd, name, statmod.S_IMODE(st.st_mode))

    # -- preservation ----------------------------------------------------------

    def _wanting(self, snaps: list[Snapshot], ino: int) -> list[Snapshot]:
        return [s for s in snaps if s.wants(ino)]

    def _preserve_fd(
        self, snaps: list[Snapshot], ino: int, fd: int | None, start: int = 0, end: int = 0
    ) -> None:
        """Preserve metadata of an open inode and its chunks in [start, end)
        (nothing for ``fd`` None: see ``_reader``)."""
        wanting = self._wanting(snaps, ino)
        if not wanting or fd is None:
            return
        with self._stripe(ino):
            cow.preserve_meta(
                wanting, ino, lambda: (self.adjust(Attr.from_stat(hostfs.fstat(fd))), read_xattrs(fd))
            )
            if end > start:
                cow.preserve_chunks(wanting, ino, fd, start, end, self.chunk_size)

    def _preserve_at(self, snaps: list[Snapshot], dir_fd: int, name: str) -> os.stat_result | None:
        """Preserve the metadata of ``name`` in ``dir_fd``; returns its stat
        (None if it does not exist)."""
        try:
            st = hostfs.lstat_at(dir_fd, name)
        except FileNotFoundError:
            return None
        wanting = self._wanting(snaps, st.st_ino)
        if wanting:
            with self._stripe(st.st_ino):
                cow.preserve_meta(
                    wanting,
                    st.st_ino,
                    lambda: (
                        self.adjust(Attr.from_stat(hostfs.lstat_at(dir_fd, name))),
                        read_xattrs_at(dir_fd, name),
                    ),
                )
        return st

    def _preserve_dir(self, snaps: list[Snapshot], dir_fd: int) -> None:
        """Preserve a directory's listing and metadata before its namespace changes."""
        st = hostfs.fstat(dir_fd)
        wanting = self._wanting(snaps, st.st_ino)
        if not wanting:
            return
        at_root = st.st_ino == self.root_ino
        with self._stripe(st.st_ino):
            cow.preserve_meta(
                wanting,
                st.st_ino,
                lambda: (self.adjust(Attr.from_stat(hostfs.fstat(dir_fd))), read_xattrs(dir_fd)),
            )
        cow.preserve_listing(wanting, st.st_ino, lambda: self.scan_dir(dir_fd, at_root))

    def _retain(self, snaps: list[Snapshot], dir_fd: int, name: str, st: os.stat_result) -> None:
        """Keep an object reachable by identity before its name goes away."""
        owners = {s.id for s in self._wanting(snaps, st.st_ino)}
        if not owners:
            return
        if statmod.S_ISDIR(st.st_mode):
            self.retained.keep_dir(st.st_ino, dir_fd, name, owners)
        else:
            self.retained.keep_file(st.st_ino, dir_fd, name, owners, st.st_blocks * 512)

    def _mark_new(self, snaps: list[Snapshot], ino: int) -> None:
        for s in snaps:
            s.mark_new(ino)

    # -- reads -----------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> Attr:
        if fh is not None and fh in self._handles:
            st = hostfs.fstat(self._handles[fh].fd)
        else:
            with self._at(self._visible(path)) as (base, rel):
                st = hostfs.lstat_at(base, rel)
        return self.adjust(Attr.from_stat(st))

    def readlink(self, path: str) -> str:
        with self._at(self._visible(path)) as (base, rel):
            return hostfs.readlink_at(base, rel)

    def readdir(self, path: str) -> list[str]:
        rel = self._visible(path)
        with self._at(rel) as (base, name):
            fd = hostfs.open_dir_at(base, name)
        try:
            names = hostfs.listdir(fd)
        finally:
            os.close(fd)
        if rel == ".":
            names = [n for n in names if not is_hidden_root_name(n)]
        return names

    def read(self, fh: int, size: int, offset: int) -> bytes:
        return hostfs.pread(self._handle(fh).fd, size, offset)

    def getxattr(self, path: str, name: str) -> bytes:
        rel = self._visible(path)
        if rel == ".":
            return hostfs.getxattr(self.root_fd, name)
        with self._parent(path) as (pfd, leaf):
            return hostfs.getxattr_at(pfd, leaf, name)

    def listxattr(self, path: str) -> list[str]:
        rel = self._visible(path)
        if rel == ".":
            return hostfs.listxattr(self.root_fd)
        with self._parent(path) as (pfd, leaf):
            return hostfs.listxattr_at(pfd, leaf)

    def statfs(self) -> os.statvfs_result | hostfs.StatVfs:
        return hostfs.statvfs(self.root_fd)

    # -- open files --------------------------------------------------------------

    def open(self, path: str, flags: int, caller: Caller | None = None) -> int:
        rel = self._visible(path)
        trunc = bool(flags & os.O_TRUNC)
        oflags = _backing_open_flags(flags)
        if not trunc:
            with self._at(rel) as (base, name):
                return self._register(hostfs.open_at(base, name, oflags), rel, flags)
        with self._changing() as snaps, self._at(rel) as (base, name):
            fh = self._open_truncating(snaps, base, name, oflags, flags)
            self._handles[fh].path = rel
            return fh

    def _open_truncating(self, snaps: list[Snapshot], dir_fd: int, name: str, oflags: int, flags: int) -> int:
        fd = hostfs.open_at(dir_fd, name, oflags)
        try:
            ino = hostfs.fstat(fd).st_ino
            if snaps:
                rfd = hostfs.reopen_quietly(fd, os.O_RDONLY | hostfs.O_CLOEXEC)
                try:
                    self._preserve_fd(snaps, ino, rfd, 0, cow.TO_END)
                finally:
                    os.close(rfd)
            if flags & _ACCMODE == os.O_RDONLY:
                # Linux truncates on O_RDONLY|O_TRUNC too (the kernel has
                # checked write permission): truncate through a writable twin.
                wfd = hostfs.reopen(fd, os.O_WRONLY | hostfs.O_CLOEXEC)
                try:
                    hostfs.ftruncate(wfd, 0)
                finally:
                    os.close(wfd)
            else:
                hostfs.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return self._register(fd, _rel(name), flags)

    def create(self, path: str, flags: int, mode: int, caller: Caller | None = None) -> int:
        rel = self._changeable(path)
        with self._changing() as snaps, self._ns_lock, self._parent(path) as (pfd, name):
            oflags = _backing_open_flags(flags)
            try:
                hostfs.lstat_at(pfd, name)
                exists = True
            except FileNotFoundError:
                exists = False
            if exists:
                if flags & os.O_EXCL:
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
                if flags & os.O_TRUNC:
                    return self._open_truncating(snaps, pfd, name, oflags, flags)
                return self._register(hostfs.open_at(pfd, name, oflags), rel, flags)
            if snaps:
                self._preserve_dir(snaps, pfd)
            creation_mode = self._creation_mode(pfd, mode, caller)
            fd = hostfs.open_at(pfd, name, oflags | os.O_CREAT | os.O_EXCL, creation_mode)
            try:
                self._mark_new(snaps, hostfs.fstat(fd).st_ino)
                self._own(pfd, name, caller, fd)
            except BaseException:
                os.close(fd)
                raise
            return self._register(fd, rel, flags)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        """The hottest path: written out by hand (no context managers, no lock
        when there is nothing to preserve) so that a write adds about a
        microsecond to its pwrite; see docs/performance.md."""
        try:
            of = self._handles[fh]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None
        gate = self._gate
        gate.enter()
        try:
            snaps = self._snaps
            if snaps:
                start = hostfs.fstat(of.fd).st_size if of.append else offset
                end = start + len(data)
                known = of.preserved
                if known is None or known[0] != self._snaps_gen or start < known[1] or end > known[2]:
                    self._before_write(snaps, of, start, end)
            return hostfs.pwrite(of.fd, data, offset)
        finally:
            # stamped before leaving the gate, so a quiet-period check made
            # under the exclusive hold always sees this write
            self.last_change_ns = time.monotonic_ns()
            self.change_count += 1
            gate.exit()

    def _before_write(self, snaps: list[Snapshot], of: OpenFile, start: int, end: int) -> None:
        """Preserve what bytes [start, end) of an open file still need, or
        remember for the handle the window around them that needs nothing.

        The check takes no lock: items are never removed from a snapshot's
        store, so "nothing needed" stays true while the same snapshots live
        (the generation moves on attach and detach, both under the exclusive
        gate, so it cannot change while this write is inside the gate).
        Otherwise the slow path re-checks under the identity lock."""
        lo, hi = 0, cow.TO_END
        ino = of.ino
        for s in snaps:
            window = s.preserved_window(ino, start, end)
            if window is None:
                self._preserve_fd(snaps, ino, self._reader(of), start, end)
                return
            if window[0] > lo:
                lo = window[0]
            if window[1] < hi:
                hi = window[1]
        of.preserved = (self._snaps_gen, lo, hi)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        with self._changing() as snaps:
            if fh is not None and fh in self._handles:
                of = self._handles[fh]
                if snaps:
                    self._preserve_fd(snaps, of.ino, self._reader(of), length, cow.TO_END)
                hostfs.ftruncate(of.fd, length)
                return
            with self._at(self._changeable(path)) as (base, name):
                fd = hostfs.open_at(base, name, os.O_WRONLY | hostfs.O_NOFOLLOW | hostfs.O_CLOEXEC)
            try:
                if snaps:
                    rfd = hostfs.reopen_quietly(fd, os.O_RDONLY | hostfs.O_CLOEXEC)
                    try:
                        self._preserve_fd(snaps, hostfs.fstat(fd).st_ino, rfd, length, cow.TO_END)
                    finally:
                        os.close(rfd)
                hostfs.ftruncate(fd, length)
            finally:
                os.close(fd)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        of = self._handle(fh)
        with self._changing() as snaps:
            if snaps:
                if mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE):
                    start, end = offset, cow.TO_END
                elif mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                    start, end = offset, offset + length
                else:
                    start = end = 0
                self._preserve_fd(snaps, of.ino, self._reader(of), start, end)
            hostfs.fallocate(of.fd, mode, offset, length)

    def fsync(self, fh: int, datasync: bool = False) -> None:
        fd = self._handle(fh).fd
        if datasync:
            hostfs.fdatasync(fd)
        else:
            hostfs.fsync(fd)

    def fsyncdir(self, path: str, datasync: bool = False) -> None:
        """Flush a backing directory: fsync(2) of a directory in the live view.

        Applications make a create, rename or unlink durable by syncing the
        directory afterwards (sqlite's rollback journal, git, write a
        temporary file and rename it over the old one). Without this the
        adapter had no fsyncdir, libfuse answered ENOSYS, and the kernel then
        reported success for every directory fsync without sending one: the
        directory entries were never flushed, and a power cut could lose what
        the application had been told was on disk.
        """
        rel = self._visible(path)
        with self._at(rel) as (base, name):
            fd = hostfs.open_dir_at(base, name)
        try:
            if datasync:
                hostfs.fdatasync(fd)
            else:
                hostfs.fsync(fd)
        finally:
            os.close(fd)

    def flush(self, fh: int) -> None:
        self._handle(fh)

    def release(self, fh: int) -> None:
        of = self._handles.pop(fh, None)
        if of is None:
            return
        if of.read_fd >= 0:
            os.close(of.read_fd)
        os.close(of.fd)

    # -- namespace ---------------------------------------------------------------

    def mkdir(self, path: str, mode: int, caller: Caller | None = None) -> None:
        with self._changing() as snaps, self._ns_lock, self._parent(path) as (pfd, name):
            if snaps:
                self._preserve_dir(snaps, pfd)
            hostfs.mkdir_at(pfd, name, self._creation_mode(pfd, mode, caller))
            self._created(snaps, pfd, name, caller)

    def mknod(self, path: str, mode: int, dev: int = 0, caller: Caller | None = None) -> None:
        with self._changing() as snaps, self._ns_lock, self._parent(path) as (pfd, name):
            if snaps:
                self._preserve_dir(snaps, pfd)
            hostfs.mknod_at(pfd, name, self._creation_mode(pfd, mode, caller), dev)
            self._created(snaps, pfd, name, caller)

    def symlink(self, target: str, path: str, caller: Caller | None = None) -> None:
        with self._changing() as snaps, self._ns_lock, self._parent(path) as (pfd, name):
            if snaps:
                self._preserve_dir(snaps, pfd)
            hostfs.symlink_at(target, pfd, name)
            self._created(snaps, pfd, name, caller)

    def _created(self, snaps: list[Snapshot], pfd: int, name: str, caller: Caller | None) -> None:
        if snaps:
            self._mark_new(snaps, hostfs.lstat_at(pfd, name).st_ino)
        self._own(pfd, name, caller)

    def link(self, existing: str, new: str) -> None:
        src = self._changeable(existing)
        # The kernel resolves the existing name before the new one's parent:
        # report ENOENT for a missing source first, as it would.
        with self._at(src) as (base, name):
            hostfs.lstat_at(base, name)
        with self._changing() as snaps, self._ns_lock, self._parent(new) as (pfd, name):
            if snaps:
                with self._parent(existing) as (spfd, sname):
                    self._preserve_at(snaps, spfd, sname)
                self._preserve_dir(snaps, pfd)
            with self._at(src) as (base, sname):
                hostfs.link_at(base, sname, pfd, name)

    def unlink(self, path: str) -> None:
        with self._changing() as snaps, self._ns_lock, self._parent(path) as (pfd, name):
            if snaps:
                st = hostfs.lstat_at(pfd, name)
                self._preserve_dir(snaps, pfd)
                if not statmod.S_ISDIR(st.st_mode):
                    self._preserve_at(snaps, pfd, name)
                    owners = {s.id for s in self._wanting(snaps, st.st_ino)}
                    if owners and self.retained.park_file(st.st_ino, pfd, name, owners, st.st_blocks * 512):
                        return  # the name went into the retained area
            hostfs.unlink_at(pfd, name)

    def rmdir(self, path: str) -> None:
        with self._changing() as snaps, self._ns_lock, self._parent(path) as (pfd, name):
            st = hostfs.lstat_at(pfd, name) if snaps else None
            if st is None or not statmod.S_ISDIR(st.st_mode) or not self._wanting(snaps, st.st_ino):
                hostfs.rmdir_at(pfd, name)
                return
            # A snapshot still names this directory: park it (empty) in the
            # retained area instead of deleting it, so its inode stays ours.
            fd = hostfs.open_dir_at(pfd, name)
            try:
                if hostfs.listdir(fd):
                    raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), path)
            finally:
                os.close(fd)
            self._preserve_dir(snaps, pfd)
            self._preserve_at(snaps, pfd, name)
            owners = {s.id for s in self._wanting(snaps, st.st_ino)}
            parked = self.retained.park_dir(st.st_ino, owners)
            hostfs.rename_at(pfd, name, self.retained.fd, parked, RENAME_NOREPLACE)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), old)
        with (
            self._changing() as snaps,
            self._ns_lock,
            self._parent(old) as (opfd, oname),
            self._parent(new) as (npfd, nname),
        ):
            if snaps:
                sst = hostfs.lstat_at(opfd, oname)
                try:
                    tst = hostfs.lstat_at(npfd, nname)
                except FileNotFoundError:
                    tst = None
                self._preserve_dir(snaps, opfd)
                self._preserve_dir(snaps, npfd)
                if _rename_fails(old, new, flags, sst, tst, npfd, nname):
                    # Retaining links would change ctimes that a failing
                    # rename leaves alone: let the filesystem refuse it.
                    hostfs.rename_at(opfd, oname, npfd, nname, flags)
                    raise OSError(errno.EIO, "rename succeeded where it was expected to fail", old)
                if tst is not None and tst.st_ino == sst.st_ino and not flags:
                    # Two names of one inode: rename(2) does nothing at all.
                    hostfs.rename_at(opfd, oname, npfd, nname, flags)
                    return
                self._preserve_at(snaps, opfd, oname)
                self._retain(snaps, opfd, oname, sst)
                if tst is not None and tst.st_ino != sst.st_ino:
                    self._preserve_at(snaps, npfd, nname)
                    if statmod.S_ISDIR(tst.st_mode) and not flags & RENAME_EXCHANGE:
                        self._preserve_replaced_dir(snaps, npfd, nname)
                    self._retain(snaps, npfd, nname, tst)
            hostfs.rename_at(opfd, oname, npfd, nname, flags)

    def _preserve_replaced_dir(self, snaps: list[Snapshot], dir_fd: int, name: str) -> None:
        """A directory renamed over is deleted: keep its (empty) listing, so
        that no snapshot ever needs to read it again. A held fd could still
        list it on POSIX; a host filesystem reached by path cannot."""
        fd = hostfs.open_dir_at(dir_fd, name)
        try:
            self._preserve_dir(snaps, fd)
        finally:
            os.close(fd)

    # -- metadata ----------------------------------------------------------------

    def _preserve_path(self, snaps: list[Snapshot], path: str) -> None:
        rel = self._changeable(path)
        if rel == ".":
            st = hostfs.fstat(self.root_fd)
            if self._wanting(snaps, st.st_ino):
                self._preserve_fd(snaps, st.st_ino, self.root_fd)
            return
        with self._parent(path) as (pfd, name):
            if self._preserve_at(snaps, pfd, name) is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)

    def chmod(self, path: str, mode: int) -> None:
        with self._changing() as snaps:
            if snaps:
                self._preserve_path(snaps, path)
            rel = self._changeable(path)
            with self._at(rel) as (base, name):
                hostfs.chmod_at(base, name, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        with self._changing() as snaps:
            if snaps:
                self._preserve_path(snaps, path)
            with self._at(self._changeable(path)) as (base, name):
                hostfs.chown_at(base, name, uid, gid)

    def utimens(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        with self._changing() as snaps:
            if snaps:
                self._preserve_path(snaps, path)
            with self._at(self._changeable(path)) as (base, name):
                hostfs.utimens_at(base, name, atime_ns, mtime_ns)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        with self._changing() as snaps:
            if snaps:
                self._preserve_path(snaps, path)
            if self._changeable(path) == ".":
                hostfs.setxattr(self.root_fd, name, value, flags)
                return
            with self._parent(path) as (pfd, leaf):
                hostfs.setxattr_at(pfd, leaf, name, value, flags)

    def removexattr(self, path: str, name: str) -> None:
        with self._changing() as snaps:
            if snaps:
                self._preserve_path(snaps, path)
            if self._changeable(path) == ".":
                hostfs.removexattr(self.root_fd, name)
                return
            with self._parent(path) as (pfd, leaf):
                hostfs.removexattr_at(pfd, leaf, name)
