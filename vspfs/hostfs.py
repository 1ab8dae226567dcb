"""The host filesystem under a volume: every call the engine makes on it.

``Volume``, ``Snapshot`` and the retained area work with *directory
handles*: an int fd on a directory, and names relative to it (the ``*at``
calls). A handle follows its directory wherever the live view moves it,
which is how a snapshot reaches an unchanged object after its parent was
renamed, and why a volume mounted over its own backing directory still
reaches the tree underneath. This module says how each of those calls is
made, in two ways:

- **POSIX** (Linux): the calls themselves, ``dir_fd=`` everywhere, libc for
  renameat2/utimensat/fallocate (``vspfs.syscalls``), ``/proc/self/fd`` for
  what has no ``*at`` call (xattrs, reopening an fd). The hot calls are the
  ``os`` functions themselves (``pread is os.pread``).
- **By path** (``PathCalls``, what Windows uses): Windows has no ``dir_fd``.
  A directory handle there is a CRT fd on a directory opened with full
  sharing (so the live volume can still rename and delete it), and a name
  relative to it is joined to the directory's *current* path, which the
  handle gives (GetFinalPathNameByHandleW): the same "follows its
  directory" rule, paid with one call per operation. The Win32 primitives
  are in ``vspfs.portable_io.Win32Files``; ``PathCalls`` itself is plain
  Python over three of them (where is this fd, open a file, open a
  directory), so the tests run the whole engine over it on Linux with
  Linux's own answers to those three (``use(linux_path_calls())``).

The core looks every function up here at call time (``hostfs.x``), so
``use()`` can swap a whole binding for the tests, as ``portable_io`` does.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from vspfs import portable_io as pio
from vspfs import syscalls
from vspfs import winplatform as wp

WINDOWS = sys.platform == "win32"

T = TypeVar("T")

#: how often a by-path call is retried because its directory moved meanwhile
_RETRIES = 8

#: open flags, 0 where the platform has no such thing (Windows handles are
#: never inherited and never follow reparse points when vspfs opens them)
O_CLOEXEC: int = pio.O_CLOEXEC
O_NOFOLLOW: int = pio.O_NOFOLLOW
O_NONBLOCK: int = pio.O_NONBLOCK
O_NOATIME: int = getattr(os, "O_NOATIME", 0)
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
O_NOCTTY: int = getattr(os, "O_NOCTTY", 0)

#: renameat2(2) flags (the by-path binding supports NOREPLACE only), the
#: core's "now" and "unchanged" markers for a time in nanoseconds, and the
#: f_type of a FUSE filesystem: one definition, in vspfs.syscalls
RENAME_NOREPLACE = syscalls.RENAME_NOREPLACE
RENAME_EXCHANGE = syscalls.RENAME_EXCHANGE
RENAME_WHITEOUT = syscalls.RENAME_WHITEOUT
UTIME_NOW = syscalls.UTIME_NOW
UTIME_OMIT = syscalls.UTIME_OMIT
FUSE_SUPER_MAGIC = syscalls.FUSE_SUPER_MAGIC

#: the pseudo extended attribute holding a Windows security descriptor
#: (ntfs-3g's name for the same bytes)
NTFS_ACL = "system.ntfs_acl"


class StatVfs(NamedTuple):
    """The fields of ``os.statvfs_result`` the core and adapters read, for
    platforms without statvfs."""

    f_bsize: int
    f_frsize: int
    f_blocks: int
    f_bfree: int
    f_bavail: int
    f_files: int
    f_ffree: int
    f_favail: int
    f_flag: int
    f_namemax: int


def _unsupported(what: str) -> OSError:
    return OSError(errno.ENOTSUP, f"{what} is not supported on this platform")


# =============================================================================
# POSIX
# =============================================================================

_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | O_CLOEXEC


def _posix_open_dir(path: str) -> int:
    return os.open(path, _DIR)


def _posix_open_dir_at(dir_fd: int, name: str, flags: int = 0) -> int:
    """A directory under ``dir_fd``, never through a symlink."""
    return os.open(name, _DIR | O_NOFOLLOW | flags, dir_fd=dir_fd)


def _posix_open_search_at(dir_fd: int, name: str) -> int:
    """A directory to resolve names in (O_PATH: search permission is enough)."""
    return os.open(name, os.O_PATH | getattr(os, "O_DIRECTORY", 0) | O_NOFOLLOW | O_CLOEXEC, dir_fd=dir_fd)


def _posix_open_at(dir_fd: int, name: str, flags: int, mode: int = 0o777) -> int:
    return os.open(name, flags, mode, dir_fd=dir_fd)


def _posix_reopen(fd: int, flags: int) -> int:
    """A new open file description of what ``fd`` is open on (its own access mode)."""
    return os.open(f"/proc/self/fd/{fd}", flags)


def _posix_lstat_at(dir_fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _posix_readlink_at(dir_fd: int, name: str) -> str:
    return os.readlink(name, dir_fd=dir_fd)


@contextmanager
def _posix_scandir(fd: int) -> Iterator[Iterator[os.DirEntry[str]]]:
    """The entries of a directory, through a fresh open of it: a shared fd
    (and its dups) has one read position, so two threads listing through it
    would each see part of the directory."""
    own = _quiet(lambda extra: _posix_open_dir_at(fd, ".", extra))
    try:
        with os.scandir(own) as it:
            yield it
    finally:
        os.close(own)


def _posix_mkdir_at(dir_fd: int, name: str, mode: int) -> None:
    os.mkdir(name, mode, dir_fd=dir_fd)


def _posix_mknod_at(dir_fd: int, name: str, mode: int, dev: int) -> None:
    os.mknod(name, mode, dev, dir_fd=dir_fd)


def _posix_symlink_at(target: str, dir_fd: int, name: str) -> None:
    os.symlink(target, name, dir_fd=dir_fd)


def _posix_link_at(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)


def _posix_unlink_at(dir_fd: int, name: str) -> None:
    os.unlink(name, dir_fd=dir_fd)


def _posix_rmdir_at(dir_fd: int, name: str) -> None:
    os.rmdir(name, dir_fd=dir_fd)


def _posix_chmod_at(dir_fd: int, name: str, mode: int) -> None:
    """chmod without following a final symlink (EOPNOTSUPP on a symlink, as
    fchmodat(AT_SYMLINK_NOFOLLOW) answers)."""
    fd = os.open(name, os.O_PATH | O_NOFOLLOW | O_CLOEXEC, dir_fd=dir_fd)
    try:
        if statmod.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), name)
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _posix_chown_at(dir_fd: int, name: str, uid: int, gid: int) -> None:
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def _posix_futimes(fd: int, atime_ns: int, mtime_ns: int) -> None:
    os.utime(fd, ns=(atime_ns, mtime_ns))


def _posix_getxattr_at(dir_fd: int, name: str, attr: str) -> bytes:
    return os.getxattr(f"/proc/self/fd/{dir_fd}/{name}", attr, follow_symlinks=False)


def _posix_listxattr_at(dir_fd: int, name: str) -> list[str]:
    return os.listxattr(f"/proc/self/fd/{dir_fd}/{name}", follow_symlinks=False)


def _posix_setxattr_at(dir_fd: int, name: str, attr: str, value: bytes, flags: int = 0) -> None:
    os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", attr, value, flags, follow_symlinks=False)


def _posix_removexattr_at(dir_fd: int, name: str, attr: str) -> None:
    os.removexattr(f"/proc/self/fd/{dir_fd}/{name}", attr, follow_symlinks=False)


def _posix_access_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _posix_location(fd: int) -> str:
    """Where the object of ``fd`` is now, as a path with ``/`` separators
    (compared with the volume root's, never opened)."""
    return os.readlink(f"/proc/self/fd/{fd}")


_posix_fallocate = syscalls.fallocate
_posix_fs_magic = syscalls.fs_magic


# =============================================================================
# by path (Windows; on Linux for the tests)
# =============================================================================


class PathCalls:
    """Every directory-handle call made by joining names to the handle's
    current path. What a platform provides:

    - ``access_path(fd)``: the current path of an open file or directory;
    - ``open_file(path, flags, mode)``: ``os.open`` with ``O_NOFOLLOW``
      honoured and (on Windows) delete sharing;
    - ``open_directory(path)``: an fd on a directory, not through a link;
    - ``rename(old, new, replace)``: a rename that may replace a file;
    - ``open_by_id(any_fd, file_id)``: an fd on a directory of the same
      volume by its file id, or None where that cannot be done (then moved
      directories are held open, as on POSIX);
    - ``xattrs``: an object with ``get(path, name)``, ``list(path)``,
      ``set(path, name, value, flags)``, ``remove(path, name)``, or None
      (every xattr call answers ENOTSUP).
    """

    def __init__(
        self,
        *,
        access_path: Callable[[int], str],
        open_file: Callable[[str, int, int], int],
        open_directory: Callable[[str], int],
        rename: Callable[[str, str, bool], None],
        sep: str = os.sep,
        xattrs: Any = None,
        open_by_id: Callable[[int, int], int] | None = None,
        hide: Callable[[str], None] | None = None,
        disk_usage: Callable[[str], pio.DiskUsage] = pio.disk_usage,
    ) -> None:
        self._path = access_path
        self._open_file = open_file
        self._open_directory = open_directory
        self._rename = rename
        self._sep = sep
        self._x = xattrs
        self.open_by_id = open_by_id
        #: renames through this binding: in flight, and started or ended
        #: (``_moves_lock`` guards both writes; readers read each int once)
        self._moves_lock = threading.Lock()
        self._moving = 0
        self._moves = 0
        self._hide = hide
        self._disk_usage = disk_usage

    def _join(self, base: str, name: str) -> str:
        if name in ("", "."):
            return base
        rel = name.replace("/", self._sep)
        return base + rel if base.endswith(self._sep) else base + self._sep + rel

    def at_path(self, dir_fd: int, name: str) -> str:
        return self._join(self._path(dir_fd), name)

    def _on(self, dir_fd: int, name: str, op: Callable[[str], T]) -> T:
        """``op(path of name)``, again if the directory may have moved meanwhile.

        A path is only a snapshot of where the directory was: if it is
        renamed between asking its path and using it, the name is not found
        there, where a POSIX ``*at`` call would have found it. A "not found"
        or "not a directory" is the answer only if the directory's path is
        the same afterwards *and* no rename through this binding ran in
        between; otherwise the call is made again with the new path. The
        second condition catches a directory renamed away and back during
        the call, which leaves its path as it was (every rename of a served
        volume goes through the live view, hence through here)."""
        return self._retrying((dir_fd,), (name,), op)

    def _on2(self, fd1: int, name1: str, fd2: int, name2: str, op: Callable[[str, str], T]) -> T:
        """``_on`` for calls naming two objects (link)."""
        return self._retrying((fd1, fd2), (name1, name2), op)

    def _retrying(
        self, fds: tuple[int, ...], names: tuple[str, ...], op: Callable[..., T], *, watch_moves: bool = True
    ) -> T:
        for _ in range(_RETRIES):
            moves, quiet = self._moves, not self._moving
            bases = [self._path(fd) for fd in fds]
            try:
                return op(*(self._join(base, name) for base, name in zip(bases, names, strict=True)))
            except (FileNotFoundError, NotADirectoryError):
                settled = not watch_moves or (quiet and self._moves == moves)
                if settled and [self._path(fd) for fd in fds] == bases:
                    raise
        return op(*(self.at_path(fd, name) for fd, name in zip(fds, names, strict=True)))

    def location(self, fd: int) -> str:
        return self._path(fd).replace(self._sep, "/")

    def access_path(self, fd: int) -> str:
        return self._path(fd)

    def open_dir(self, path: str) -> int:
        return self._open_directory(os.path.abspath(path))

    def open_dir_at(self, dir_fd: int, name: str, flags: int = 0) -> int:
        return self._on(dir_fd, name, self._open_directory)

    def open_search_at(self, dir_fd: int, name: str) -> int:
        return self._on(dir_fd, name, self._open_directory)

    def open_at(self, dir_fd: int, name: str, flags: int, mode: int = 0o777) -> int:
        return self._on(dir_fd, name, lambda path: self._open_file(path, flags, mode))

    def reopen(self, fd: int, flags: int) -> int:
        """By the file's current name (FileNotFoundError when it has none)."""
        return self._on(fd, "", lambda path: self._open_file(path, flags & ~O_NOFOLLOW, 0o777))

    def lstat_at(self, dir_fd: int, name: str) -> os.stat_result:
        return self._on(dir_fd, name, lambda path: os.stat(path, follow_symlinks=False))

    def readlink_at(self, dir_fd: int, name: str) -> str:
        return self._on(dir_fd, name, os.readlink)

    def listdir(self, fd: int) -> list[str]:
        return self._on(fd, "", os.listdir)

    @contextmanager
    def scandir(self, fd: int) -> Iterator[Iterator[os.DirEntry[str]]]:
        with self._on(fd, "", os.scandir) as it:
            yield it

    def mkdir_at(self, dir_fd: int, name: str, mode: int) -> None:
        self._on(dir_fd, name, lambda path: os.mkdir(path, mode))

    def mknod_at(self, dir_fd: int, name: str, mode: int, dev: int) -> None:
        mknod = getattr(os, "mknod", None)
        if mknod is None:
            raise _unsupported("mknod")
        self._on(dir_fd, name, lambda path: mknod(path, mode, dev))

    def symlink_at(self, target: str, dir_fd: int, name: str) -> None:
        def make(path: str) -> None:
            # Windows must know whether a link names a directory: decide by
            # what the target is now (a dangling target makes a file link)
            resolved = os.path.join(os.path.dirname(path), target.replace("/", self._sep))
            os.symlink(target, path, target_is_directory=os.path.isdir(resolved))

        self._on(dir_fd, name, make)

    def link_at(self, src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
        if os.link in os.supports_follow_symlinks:
            self._on2(src_dir_fd, src, dst_dir_fd, dst, lambda a, b: os.link(a, b, follow_symlinks=False))
        else:  # Windows: CreateHardLinkW links a reparse point itself
            self._on2(src_dir_fd, src, dst_dir_fd, dst, os.link)

    def unlink_at(self, dir_fd: int, name: str) -> None:
        self._on(dir_fd, name, os.unlink)

    def rmdir_at(self, dir_fd: int, name: str) -> None:
        self._on(dir_fd, name, os.rmdir)

    def rename_at(self, old_dir_fd: int, old: str, new_dir_fd: int, new: str, flags: int = 0) -> None:
        """Counted while it runs (see ``_on``). Its own "not found" is judged
        by the paths alone: the live view makes one rename at a time."""
        if flags & ~RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE is supported here", old)
        with self._moves_lock:
            self._moving += 1
            self._moves += 1
        try:
            self._retrying(
                (old_dir_fd, new_dir_fd),
                (old, new),
                lambda a, b: self._rename(a, b, not flags),
                watch_moves=False,
            )
        finally:
            with self._moves_lock:
                self._moving -= 1
                self._moves += 1

    def chmod_at(self, dir_fd: int, name: str, mode: int) -> None:
        def change(path: str) -> None:
            if statmod.S_ISLNK(os.stat(path, follow_symlinks=False).st_mode):
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), name)
            os.chmod(path, mode)

        self._on(dir_fd, name, change)

    def chown_at(self, dir_fd: int, name: str, uid: int, gid: int) -> None:
        chown = getattr(os, "chown", None)
        if chown is None:
            raise _unsupported("chown")
        self._on(dir_fd, name, lambda path: chown(path, uid, gid, follow_symlinks=False))

    def utimens_at(self, dir_fd: int, name: str, atime_ns: int, mtime_ns: int) -> None:
        def change(path: str) -> None:
            a, m = atime_ns, mtime_ns
            if UTIME_OMIT in (a, m):
                st = os.stat(path, follow_symlinks=False)
                a = st.st_atime_ns if a == UTIME_OMIT else a
                m = st.st_mtime_ns if m == UTIME_OMIT else m
            now = time.time_ns()
            times = (now if a == UTIME_NOW else a, now if m == UTIME_NOW else m)
            if os.utime in os.supports_follow_symlinks:
                os.utime(path, ns=times, follow_symlinks=False)
            else:
                os.utime(path, ns=times)

        self._on(dir_fd, name, change)

    def futimes(self, fd: int, atime_ns: int, mtime_ns: int) -> None:
        self._on(fd, "", lambda path: os.utime(path, ns=(atime_ns, mtime_ns)))

    def hide(self, fd: int) -> None:
        if self._hide is not None:
            self._on(fd, "", self._hide)

    # -- xattrs: of an fd (getxattr ...) or of a name in a directory (getxattr_at ...)

    def _xattrs(self) -> Any:
        if self._x is None:
            raise _unsupported("extended attributes")
        return self._x

    def getxattr(self, fd: int, attr: str) -> bytes:
        return self._on(fd, "", lambda path: self._xattrs().get(path, attr))

    def listxattr(self, fd: int) -> list[str]:
        """Nothing for a file that has no name any more: by path its
        attributes cannot be reached (its snapshot-time ones are kept only if
        it was changed while it still had one)."""
        try:
            return self._on(fd, "", lambda path: self._xattrs().list(path))
        except FileNotFoundError:
            return []

    def setxattr(self, fd: int, attr: str, value: bytes, flags: int = 0) -> None:
        self._on(fd, "", lambda path: self._xattrs().set(path, attr, value, flags))

    def removexattr(self, fd: int, attr: str) -> None:
        self._on(fd, "", lambda path: self._xattrs().remove(path, attr))

    def getxattr_at(self, dir_fd: int, name: str, attr: str) -> bytes:
        return self._on(dir_fd, name, lambda path: self._xattrs().get(path, attr))

    def listxattr_at(self, dir_fd: int, name: str) -> list[str]:
        return self._on(dir_fd, name, lambda path: self._xattrs().list(path))

    def setxattr_at(self, dir_fd: int, name: str, attr: str, value: bytes, flags: int = 0) -> None:
        self._on(dir_fd, name, lambda path: self._xattrs().set(path, attr, value, flags))

    def removexattr_at(self, dir_fd: int, name: str, attr: str) -> None:
        self._on(dir_fd, name, lambda path: self._xattrs().remove(path, attr))

    # -- the rest ---------------------------------------------------------------

    def statvfs(self, fd: int) -> StatVfs:
        usage = self._disk_usage(self._path(fd))
        block = 4096
        return StatVfs(block, block, usage.total // block, usage.free // block, usage.available // block,
                       0, 0, 0, 0, 255)  # fmt: skip

    @staticmethod
    def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
        raise _unsupported("fallocate")

    @staticmethod
    def fs_magic(fd: int) -> int:
        return 0

    #: the names ``use()`` binds from an instance
    NAMES = (
        "location", "access_path", "open_dir", "open_dir_at", "open_search_at", "open_at",
        "reopen", "lstat_at", "readlink_at", "listdir", "scandir", "mkdir_at", "mknod_at", "symlink_at",
        "link_at", "unlink_at", "rmdir_at", "rename_at", "chmod_at", "chown_at", "utimens_at", "futimes",
        "getxattr", "listxattr", "setxattr", "removexattr", "getxattr_at", "listxattr_at", "setxattr_at",
        "removexattr_at", "statvfs", "fallocate", "fs_magic", "open_by_id", "hide",
    )  # fmt: skip


class WindowsXattrs:
    """The extended attributes of the Windows binding: three pseudo xattrs
    with ntfs-3g's names and formats, over what a Windows file really has.
    Listed on every object, so the core preserves them for its snapshots
    before a file's first change, like any xattr, and a drive serves them as
    they were at snapshot time:

    - ``system.ntfs_acl``: the security descriptor, self-relative (owner,
      group and DACL: the SACL would need SeSecurityPrivilege);
      Get/SetFileSecurityW;
    - ``system.ntfs_attrib``: the FILE_ATTRIBUTE_* word, 4 bytes
      little-endian. Read from ``os.stat(path, follow_symlinks=False)
      .st_file_attributes`` (the object itself, a link included); written
      with ``set_attributes`` (SetFileAttributesW: only READONLY, HIDDEN,
      SYSTEM, ARCHIVE, TEMPORARY, OFFLINE and NOT_CONTENT_INDEXED change, the
      other bits of the value are ignored). Refused on a symbolic link
      (EOPNOTSUPP, as chmod is), because SetFileAttributesW takes a name
      and may act on the link's target;
    - ``system.ntfs_crtime``: the creation time, 8 bytes little-endian
      FILETIME (100 ns since 1601). Read from ``st_birthtime_ns`` where
      Python has it (3.12 and later), else from ``st_ctime_ns``, which is
      the creation time on Windows before 3.12 (it was deprecated there in
      3.12 in favour of ``st_birthtime``); written with
      ``set_creation_time`` (SetFileTime on a handle that does not follow
      a reparse point).

    ntfs-3g writes the last two in the CPU's byte order: the same bytes on
    every little-endian machine, which every Windows one is. Other names:
    ENODATA to read, ENOTSUP to write; none can be removed (ENOTSUP). The
    ``flags`` of setxattr (XATTR_CREATE, XATTR_REPLACE) are ignored: these
    always exist.
    """

    INFO = 0x1 | 0x2 | 0x4  # OWNER | GROUP | DACL_SECURITY_INFORMATION
    NAMES = (NTFS_ACL, wp.NTFS_ATTRIB_XATTR, wp.NTFS_CRTIME_XATTR)

    def __init__(
        self,
        *,
        get_security: Callable[[str, int], bytes],
        set_security: Callable[[str, int, bytes], None],
        set_attributes: Callable[[str, int], None],
        set_creation_time: Callable[[str, int], None],
        stat: Callable[[str], Any] | None = None,
    ) -> None:
        self._get_sd = get_security
        self._put_sd = set_security
        self._set_attributes = set_attributes
        self._set_creation_time = set_creation_time
        self._stat = stat or (lambda path: os.stat(path, follow_symlinks=False))

    def get(self, path: str, name: str) -> bytes:
        if name == NTFS_ACL:
            return self._get_sd(path, self.INFO)
        if name == wp.NTFS_ATTRIB_XATTR:
            return wp.encode_ntfs_attrib(self._stat(path).st_file_attributes)
        if name == wp.NTFS_CRTIME_XATTR:
            st = self._stat(path)
            ns = getattr(st, "st_birthtime_ns", None)
            return wp.encode_ntfs_crtime(wp.ns_to_filetime(st.st_ctime_ns if ns is None else ns))
        raise OSError(errno.ENODATA, os.strerror(errno.ENODATA), name)

    def list(self, path: str) -> list[str]:
        return list(self.NAMES)

    def set(self, path: str, name: str, value: bytes, flags: int) -> None:
        data = bytes(value)
        if name == NTFS_ACL:
            self._put_sd(path, self.INFO, data)
        elif name == wp.NTFS_ATTRIB_XATTR:
            attributes = wp.decode_ntfs_attrib(data)
            if attributes is None:
                raise OSError(errno.EINVAL, f"{name} takes 4 bytes, not {len(data)}", path)
            if statmod.S_ISLNK(self._stat(path).st_mode):
                raise OSError(errno.EOPNOTSUPP, f"{name} of a symbolic link cannot be set", path)
            self._set_attributes(path, attributes)
        elif name == wp.NTFS_CRTIME_XATTR:
            filetime = wp.decode_ntfs_crtime(data)
            if filetime is None:
                raise OSError(errno.EINVAL, f"{name} takes 8 bytes of a FILETIME", path)
            self._set_creation_time(path, filetime)
        else:
            raise _unsupported(f"extended attribute {name}")

    def remove(self, path: str, name: str) -> None:
        raise _unsupported(f"removing {name}")


def linux_path_calls() -> PathCalls:
    """The by-path binding with Linux's answers to its primitives: the tests
    run the engine over it to exercise what Windows runs."""

    def open_file(path: str, flags: int, mode: int) -> int:
        return os.open(path, flags | O_CLOEXEC, mode)

    def open_directory(path: str) -> int:
        return os.open(path, _DIR | O_NOFOLLOW)

    def rename(old: str, new: str, replace: bool) -> None:
        if replace:
            os.rename(old, new)
        else:
            syscalls.renameat2(-100, old, -100, new, RENAME_NOREPLACE)  # AT_FDCWD

    return PathCalls(
        access_path=_posix_location, open_file=open_file, open_directory=open_directory, rename=rename,
        sep="/", xattrs=_LinuxXattrs(),
    )  # fmt: skip


class _LinuxXattrs:
    """Linux's xattrs by path, for the by-path binding on Linux."""

    @staticmethod
    def get(path: str, name: str) -> bytes:
        return os.getxattr(path, name, follow_symlinks=False)

    @staticmethod
    def list(path: str) -> list[str]:
        return os.listxattr(path, follow_symlinks=False)

    @staticmethod
    def set(path: str, name: str, value: bytes, flags: int) -> None:
        os.setxattr(path, name, value, flags, follow_symlinks=False)

    @staticmethod
    def remove(path: str, name: str) -> None:
        os.removexattr(path, name, follow_symlinks=False)


def windows_path_calls(win: Any, *, stat: Callable[[str], Any] | None = None) -> PathCalls:
    """The Windows binding over ``portable_io.Win32Files``. ``stat`` (for the
    tests) replaces ``os.stat(path, follow_symlinks=False)``, where the
    attributes and creation time are read."""
    return PathCalls(
        access_path=win.final_path,
        open_file=win.open,
        open_directory=win.open_directory,
        rename=win.rename,
        sep="\\",
        xattrs=WindowsXattrs(
            get_security=win.get_security,
            set_security=win.set_security,
            set_attributes=win.set_attributes,
            set_creation_time=win.set_creation_time,
            stat=stat,
        ),
        open_by_id=lambda fd, file_id: win.open_by_id(fd, file_id, True),
        hide=win.set_hidden_system,
        disk_usage=win.disk_usage,
    )


# =============================================================================
# the bindings
# =============================================================================

fstat = os.fstat
ftruncate = os.ftruncate
pread = pio.pread
pwrite = pio.pwrite
fsync = pio.fsync
fdatasync = pio.fdatasync

# the POSIX binding, rebound by use()
location = _posix_location
access_path = _posix_access_path
open_dir = _posix_open_dir
open_dir_at = _posix_open_dir_at
open_search_at = _posix_open_search_at
open_at = _posix_open_at
reopen = _posix_reopen
lstat_at = _posix_lstat_at
readlink_at = _posix_readlink_at
listdir = os.listdir
scandir = _posix_scandir
mkdir_at = _posix_mkdir_at
mknod_at = _posix_mknod_at
symlink_at = _posix_symlink_at
link_at = _posix_link_at
unlink_at = _posix_unlink_at
rmdir_at = _posix_rmdir_at
rename_at = syscalls.renameat2
chmod_at = _posix_chmod_at
chown_at = _posix_chown_at
utimens_at = syscalls.utimensat
futimes = _posix_futimes
getxattr = getattr(os, "getxattr", None)
listxattr = getattr(os, "listxattr", None)
setxattr = getattr(os, "setxattr", None)
removexattr = getattr(os, "removexattr", None)
getxattr_at = _posix_getxattr_at
listxattr_at = _posix_listxattr_at
setxattr_at = _posix_setxattr_at
removexattr_at = _posix_removexattr_at
statvfs = getattr(os, "statvfs", None)
fallocate = _posix_fallocate
fs_magic = _posix_fs_magic
open_by_id: Callable[[int, int], int] | None = None


def hide(fd: int) -> None:
    """Keep vspfs's own directory out of file managers: a dot name does it
    on POSIX; Windows needs the HIDDEN and SYSTEM attributes."""


_POSIX = {name: globals()[name] for name in PathCalls.NAMES}

#: True where a directory handle keeps its directory reachable wherever it
#: moves *and* may be held for long: on Windows an open handle inside a
#: directory stops that directory from being renamed, so handles there are
#: held only for the call that needs them (``Snapshot`` caches none, the
#: retained area reopens moved directories by file id)
HOLDS_DIRECTORY_HANDLES = True
#: whether rename_at supports RENAME_EXCHANGE and RENAME_WHITEOUT
FULL_RENAME = True
#: whether ``reopen`` reaches a file whatever happened to its names (POSIX:
#: /proc/self/fd); by path it needs a name, so the engine reads through
#: the application's own fd where that one can read
REOPENS_ANY_FD = True
#: the PathCalls bound now, None for POSIX
current: PathCalls | None = None


def use(calls: PathCalls | None) -> PathCalls | None:
    """Bind every directory-handle call to ``calls`` (None: POSIX); returns
    the previous binding, to restore it. For Windows and for the tests."""
    global HOLDS_DIRECTORY_HANDLES, FULL_RENAME, REOPENS_ANY_FD, current
    previous = current
    module = sys.modules[__name__]
    table = _POSIX if calls is None else {name: getattr(calls, name) for name in PathCalls.NAMES}
    for name, fn in table.items():
        setattr(module, name, fn)
    HOLDS_DIRECTORY_HANDLES = FULL_RENAME = REOPENS_ANY_FD = calls is None
    current = calls
    return previous


if WINDOWS:  # pragma: no cover - Windows only
    use(windows_path_calls(pio._win))


def _quiet(opener: Callable[[int], int]) -> int:
    """Open with O_NOATIME, or without it where that is refused (it needs
    ownership or CAP_FOWNER): vspfs's own reads must not move atimes."""
    if not O_NOATIME:
        return opener(0)
    try:
        return opener(O_NOATIME)
    except PermissionError:
        return opener(0)


def open_quietly(dir_fd: int, name: str, flags: int) -> int:
    """``open_at`` for vspfs's own reading (preservation, snapshot reads),
    leaving the live object's atime alone."""
    return _quiet(lambda extra: open_at(dir_fd, name, flags | extra))


def open_dir_quietly(dir_fd: int, name: str) -> int:
    return _quiet(lambda extra: open_dir_at(dir_fd, name, extra))


def reopen_quietly(fd: int, flags: int) -> int:
    return _quiet(lambda extra: reopen(fd, flags | extra))
