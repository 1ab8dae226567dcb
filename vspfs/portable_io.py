"""The OS calls of the cache file layer, one spelling for Linux and Windows.

``vspfs/cachefile.py`` needs positional reads and writes, preallocation,
no-follow opens relative to a directory, byte locks that die with their
process, and free space. POSIX has all of them in ``os``; Windows has none
of ``os.pread``/``os.pwrite``/``os.pwritev``/``os.posix_fallocate``/
``dir_fd``/``O_NOFOLLOW``/``O_CLOEXEC``/``os.statvfs``, and its byte locks
are mandatory. This module is the one place that knows.

**Linux pays nothing for it.** The hot functions (:data:`pread`,
:data:`pwrite`, :data:`pwritev`) are bound at import to ``os.pread`` &c.
themselves, not wrapped: ``pio.pread(fd, n, off)`` is the same global plus
attribute lookup as ``os.pread(fd, n, off)`` and the same C call. Callers
must look them up through the module at call time (``pio.pread``), never
``from vspfs.portable_io import pread``: the tests swap the module's
bindings for the Windows branch to run the cache file over it.

**Windows** (:class:`Win32Files`, ctypes over kernel32 and msvcrt, both
given to it so that tests on Linux can pass fakes with the same
signatures):

- positional I/O is ``ReadFile``/``WriteFile`` with an OVERLAPPED carrying
  the offset, on the synchronous handle behind the CRT fd
  (``msvcrt.get_osfhandle``). Such a call does not move any position the
  caller relies on and reads ERROR_HANDLE_EOF as end of file. The I/O
  manager serialises calls on one synchronous handle, so concurrent reads
  of one cache file queue there (correct, not as parallel as Linux).
  ``pwritev`` is one ``WriteFile`` of the joined buffers (``WriteFileGather``
  needs unbuffered, page-aligned I/O): the cache file's order, payloads
  before the header that makes them visible, is kept because the header is
  always a separate, later call;
- preallocation is ``SetFileInformationByHandle`` with FileAllocationInfo
  (reserve the space, as ``posix_fallocate``) then FileEndOfFileInfo (make
  the size cover it, as ``posix_fallocate`` does); never shrinks;
- files are opened with ``CreateFileW`` sharing read, write *and delete*,
  then given a CRT fd with ``msvcrt.open_osfhandle``: ``os.open`` shares no
  delete, and the cache file is unlinked while its owner (or a cleaner)
  still holds it open and locked, which Windows refuses otherwise. No
  SECURITY_ATTRIBUTES means a handle children do not inherit (what
  O_CLOEXEC / O_NOINHERIT ask); the CRT fd's text/binary mode does not
  matter because no byte goes through the CRT. O_NOFOLLOW is
  FILE_FLAG_OPEN_REPARSE_POINT plus a refusal (ELOOP) of what turns out to
  be a reparse point. A mode without write bits creates a read-only file,
  as ``os.open`` does there; other mode bits mean nothing on Windows (the
  file inherits its directory's ACL);
- there are no directory fds: a "directory" is its absolute path, and the
  ``*_at`` functions join names to it;
- the lock is ``LockFileEx`` on one byte at :data:`LOCK_OFFSET`, far beyond
  any cache file's end (allowed: "locking a region that goes beyond the
  current end-of-file position is not an error"). Windows byte locks are
  mandatory, so a lock on byte 0 would make the header unreadable to anyone
  but the owner; at 2**62 nobody reads or writes. LockFileEx has a real
  shared form, so ``is_locked``'s checkers do not see each other. Locks
  are dropped when their handle closes or their process dies, which the
  staleness rule ("a file nobody holds is stale") needs;
- free space is ``GetDiskFreeSpaceExW``.

Every signature and constant is checked against Microsoft's documentation
in docs/windows.md ("The cache file layer"). None of it has run on Windows
here; ``tests/test_portable_io.py`` runs it, and the whole cache file, over
a fake kernel32 built on Linux files and OFD byte locks.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

WINDOWS = sys.platform == "win32"

#: what :func:`open_dir` returns: a directory fd on POSIX, an absolute path on Windows
DirRef: TypeAlias = "int | str"

#: where the Windows owner lock sits: far beyond the end of any cache file,
#: so the mandatory lock never covers a byte anybody reads or writes
LOCK_OFFSET = 1 << 62

# Win32 constants (winnt.h, fileapi.h, winbase.h, winerror.h, minwinbase.h)
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
FILE_SHARE_READ = 0x1
FILE_SHARE_WRITE = 0x2
FILE_SHARE_DELETE = 0x4
CREATE_NEW = 1
CREATE_ALWAYS = 2
OPEN_EXISTING = 3
OPEN_ALWAYS = 4
TRUNCATE_EXISTING = 5
FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
LOCKFILE_FAIL_IMMEDIATELY = 0x1
LOCKFILE_EXCLUSIVE_LOCK = 0x2
#: FILE_INFO_BY_HANDLE_CLASS values
FILE_ALLOCATION_INFO_CLASS = 5  # FileAllocationInfo
FILE_END_OF_FILE_INFO_CLASS = 6  # FileEndOfFileInfo
FILE_ATTRIBUTE_TAG_INFO_CLASS = 9  # FileAttributeTagInfo
ERROR_INVALID_FUNCTION = 1
ERROR_FILE_NOT_FOUND = 2
ERROR_PATH_NOT_FOUND = 3
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_SHARING_VIOLATION = 32
ERROR_LOCK_VIOLATION = 33
ERROR_HANDLE_EOF = 38
ERROR_HANDLE_DISK_FULL = 39
ERROR_NOT_SUPPORTED = 50
ERROR_FILE_EXISTS = 80
ERROR_INVALID_PARAMETER = 87
ERROR_DISK_FULL = 112
ERROR_ALREADY_EXISTS = 183

#: errno for the Win32 errors this layer can meet, so the cache file's errno
#: tests (ENOSPC means "cache volume full", EEXIST "never overwritten") read
#: them the same on both systems. On Windows, OSError derives errno from the
#: winerror argument itself, with the same answers for these.
_ERRNO_OF_WINERROR = {
    ERROR_INVALID_FUNCTION: errno.EINVAL,
    ERROR_FILE_NOT_FOUND: errno.ENOENT,
    ERROR_PATH_NOT_FOUND: errno.ENOENT,
    ERROR_ACCESS_DENIED: errno.EACCES,
    ERROR_INVALID_HANDLE: errno.EBADF,
    ERROR_SHARING_VIOLATION: errno.EACCES,
    ERROR_LOCK_VIOLATION: errno.EACCES,
    ERROR_HANDLE_DISK_FULL: errno.ENOSPC,
    ERROR_NOT_SUPPORTED: errno.EINVAL,
    ERROR_FILE_EXISTS: errno.EEXIST,
    ERROR_INVALID_PARAMETER: errno.EINVAL,
    ERROR_DISK_FULL: errno.ENOSPC,
    ERROR_ALREADY_EXISTS: errno.EEXIST,
}
#: SetFileInformationByHandle(FileAllocationInfo) answers these where the file
#: system cannot reserve; the size extension that follows still happens
_NO_ALLOCATION_ERRORS = frozenset({ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED, ERROR_INVALID_PARAMETER})
#: one ReadFile/WriteFile moves at most this much (DWORD counts); callers loop
_MAX_IO = 1 << 30
#: our own open flag for "do not follow a final reparse point" on Windows, where
#: the CRT has no O_NOFOLLOW; a bit no _O_* flag uses
_WIN_NOFOLLOW = 0x20000000

_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class DiskUsage(NamedTuple):
    """Sizes of the file system holding a path, in bytes."""

    total: int
    free: int  # free for the superuser (f_bfree); on Windows: free on the volume
    available: int  # free for this caller (f_bavail; quotas on Windows)


def win_error(code: int, filename: str | None = None) -> OSError:
    """An OSError for a Win32 error code, with the errno the cache file tests.

    Built by hand rather than with ``ctypes.WinError`` so that the errno is
    the same when the Windows branch runs on Linux in the tests (Linux's
    OSError ignores the winerror argument); ``winerror`` is set either way.
    """
    num = _ERRNO_OF_WINERROR.get(code, errno.EIO)
    exc = OSError(num, f"{os.strerror(num)} (Windows error {code})", filename, code)
    if getattr(exc, "winerror", None) != code:
        exc.winerror = code  # type: ignore[attr-defined]  # Linux's OSError drops it
    return exc


# =============================================================================
# POSIX
# =============================================================================


def _posix_allocate(fd: int, offset: int, length: int) -> None:
    """Reserve blocks so later writes cannot fail for space; where the
    filesystem cannot reserve, at least extend the file (writes may then
    report ENOSPC themselves, which the cache file handles the same way)."""
    if length <= 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in _NO_FALLOCATE:
                raise
    if os.fstat(fd).st_size < offset + length:
        os.ftruncate(fd, offset + length)


def _posix_pwritev(fd: int, buffers: Sequence[Any], offset: int) -> int:
    """pwritev where os lacks it (macOS before 11): one pwrite of the joined buffers."""
    return os.pwrite(fd, b"".join(buffers), offset)


def _posix_open_dir(path: str) -> int:
    """A directory fd that names keep resolving against even if the path moves."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _posix_open_at(directory: int | None, name: str, flags: int, mode: int = 0o777) -> int:
    return os.open(name, flags, mode, dir_fd=directory)


def _posix_stat_at(directory: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=directory, follow_symlinks=False)


def _posix_unlink_at(directory: int, name: str) -> None:
    os.unlink(name, dir_fd=directory)


def _posix_disk_usage(path: str) -> DiskUsage:
    st = os.statvfs(path)
    return DiskUsage(st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize)


def _posix_try_lock_exclusive(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _posix_try_lock_shared(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _posix_unlock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


# =============================================================================
# Windows
# =============================================================================


class Win32Files:
    """The Windows branch of every function here, over ``kernel32`` and ``msvcrt``.

    Both are parameters so the tests can hand in fakes: ``kernel32`` is
    anything whose attributes are ctypes-style functions (``restype``,
    ``argtypes``, callable), ``msvcrt`` needs ``get_osfhandle`` and
    ``open_osfhandle``, ``get_last_error`` returns the calling thread's
    last Win32 error (``ctypes.get_last_error`` with ``use_last_error=True``).
    """

    #: the open flags callers combine for this branch. CreateFileW without
    #: SECURITY_ATTRIBUTES already makes a handle children do not inherit, so
    #: O_CLOEXEC (the CRT's O_NOINHERIT) has nothing left to ask; Windows
    #: directories hold no FIFOs, so O_NONBLOCK has nothing to prevent
    O_CLOEXEC = 0
    O_NOFOLLOW = _WIN_NOFOLLOW
    O_NONBLOCK = 0

    def __init__(self, kernel32: Any, msvcrt: Any, get_last_error: Callable[[], int]) -> None:
        import ctypes
        from ctypes import wintypes

        self._ctypes = ctypes
        self._k = kernel32
        self._msvcrt = msvcrt
        self._last_error = get_last_error

        class OVERLAPPED(ctypes.Structure):
            """minwinbase.h OVERLAPPED; the Offset/OffsetHigh union member as its DWORDs."""

            _fields_ = [
                ("Internal", ctypes.c_size_t),
                ("InternalHigh", ctypes.c_size_t),
                ("Offset", wintypes.DWORD),
                ("OffsetHigh", wintypes.DWORD),
                ("hEvent", wintypes.HANDLE),
            ]

        class FILE_ATTRIBUTE_TAG_INFO(ctypes.Structure):
            """winbase.h FILE_ATTRIBUTE_TAG_INFO."""

            _fields_ = [("FileAttributes", wintypes.DWORD), ("ReparseTag", wintypes.DWORD)]

        self.OVERLAPPED = OVERLAPPED
        self.FILE_ATTRIBUTE_TAG_INFO = FILE_ATTRIBUTE_TAG_INFO
        #: FILE_ALLOCATION_INFO and FILE_END_OF_FILE_INFO are one LARGE_INTEGER each
        self.LARGE_INTEGER = ctypes.c_int64
        self.INVALID_HANDLE_VALUE = wintypes.HANDLE(-1).value

        lp = ctypes.POINTER
        k = kernel32
        _sig(k.CreateFileW, wintypes.HANDLE, wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD,
             wintypes.LPVOID, wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE)  # fmt: skip
        _sig(k.CloseHandle, wintypes.BOOL, wintypes.HANDLE)
        _sig(k.ReadFile, wintypes.BOOL, wintypes.HANDLE, wintypes.LPVOID, wintypes.DWORD,
             lp(wintypes.DWORD), lp(OVERLAPPED))  # fmt: skip
        _sig(k.WriteFile, wintypes.BOOL, wintypes.HANDLE, wintypes.LPCVOID, wintypes.DWORD,
             lp(wintypes.DWORD), lp(OVERLAPPED))  # fmt: skip
        _sig(k.SetFileInformationByHandle, wintypes.BOOL, wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
             wintypes.DWORD)  # fmt: skip
        _sig(k.GetFileInformationByHandleEx, wintypes.BOOL, wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
             wintypes.DWORD)  # fmt: skip
        _sig(k.LockFileEx, wintypes.BOOL, wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
             wintypes.DWORD, lp(OVERLAPPED))  # fmt: skip
        _sig(k.UnlockFileEx, wintypes.BOOL, wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
             lp(OVERLAPPED))  # fmt: skip
        _sig(k.GetDiskFreeSpaceExW, wintypes.BOOL, wintypes.LPCWSTR, lp(ctypes.c_ulonglong),
             lp(ctypes.c_ulonglong), lp(ctypes.c_ulonglong))  # fmt: skip

    # -- helpers -----------------------------------------------------------------

    def _handle(self, fd: int) -> int:
        """The Win32 handle behind a CRT fd (OSError EBADF for a bad fd)."""
        return int(self._msvcrt.get_osfhandle(fd))

    def _overlapped(self, offset: int) -> Any:
        if offset < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        ov = self.OVERLAPPED()
        ov.Offset = offset & 0xFFFFFFFF
        ov.OffsetHigh = offset >> 32
        return ov

    def _fail(self, filename: str | None = None) -> OSError:
        return win_error(self._last_error(), filename)

    # -- positional I/O ----------------------------------------------------------

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        """``os.pread``: up to ``length`` bytes at ``offset``; b"" at or past the end."""
        ctypes = self._ctypes
        ov = self._overlapped(offset)
        if length <= 0:
            return b""
        length = min(length, _MAX_IO)
        buf = ctypes.create_string_buffer(length)
        done = ctypes.c_ulong(0)
        if not self._k.ReadFile(self._handle(fd), buf, length, ctypes.byref(done), ctypes.byref(ov)):
            code = self._last_error()
            if code == ERROR_HANDLE_EOF:  # a synchronous handle read with an OVERLAPPED, at the end
                return b""
            raise win_error(code)
        return ctypes.string_at(buf, done.value)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        """``os.pwrite``: bytes written at ``offset`` (the file grows as needed)."""
        ctypes = self._ctypes
        ov = self._overlapped(offset)
        if not isinstance(data, bytes):
            data = bytes(data)  # a pointer for ctypes; bytearray and memoryview are copied
        if len(data) > _MAX_IO:
            data = data[:_MAX_IO]
        done = ctypes.c_ulong(0)
        if not self._k.WriteFile(self._handle(fd), data, len(data), ctypes.byref(done), ctypes.byref(ov)):
            raise self._fail()
        return int(done.value)

    def pwritev(self, fd: int, buffers: Sequence[Any], offset: int) -> int:
        """``os.pwritev``: the buffers back to back, as one WriteFile."""
        return self.pwrite(fd, b"".join(buffers), offset)

    # -- size --------------------------------------------------------------------

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """``posix_fallocate``: space reserved and the size extended to
        ``offset + length``; a file already that long is left alone."""
        if length <= 0:
            return
        end = offset + length
        if os.fstat(fd).st_size >= end:
            return  # FileAllocationInfo below the size would truncate
        ctypes = self._ctypes
        handle = self._handle(fd)
        size = self.LARGE_INTEGER(end)
        if not self._k.SetFileInformationByHandle(
            handle, FILE_ALLOCATION_INFO_CLASS, ctypes.byref(size), ctypes.sizeof(size)
        ):
            code = self._last_error()
            if code not in _NO_ALLOCATION_ERRORS:
                raise win_error(code)
        if not self._k.SetFileInformationByHandle(
            handle, FILE_END_OF_FILE_INFO_CLASS, ctypes.byref(size), ctypes.sizeof(size)
        ):
            raise self._fail()

    # -- names -------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        """``os.open`` for this module's flags, sharing read, write and delete."""
        ctypes = self._ctypes
        access = {os.O_RDONLY: GENERIC_READ, os.O_WRONLY: GENERIC_WRITE}.get(
            flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR), GENERIC_READ | GENERIC_WRITE
        )
        create, excl, trunc = flags & os.O_CREAT, flags & os.O_EXCL, flags & os.O_TRUNC
        if create and excl:
            disposition = CREATE_NEW
        elif create:
            disposition = CREATE_ALWAYS if trunc else OPEN_ALWAYS
        else:
            disposition = TRUNCATE_EXISTING if trunc else OPEN_EXISTING
        attributes = FILE_ATTRIBUTE_NORMAL if mode & 0o200 else FILE_ATTRIBUTE_READONLY
        nofollow = bool(flags & _WIN_NOFOLLOW)
        if nofollow:
            attributes |= FILE_FLAG_OPEN_REPARSE_POINT
        share = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE
        handle = self._k.CreateFileW(path, access, share, None, disposition, attributes, None)
        if handle is None or handle == self.INVALID_HANDLE_VALUE:
            raise self._fail(path)
        try:
            if nofollow:
                info = self.FILE_ATTRIBUTE_TAG_INFO()
                if not self._k.GetFileInformationByHandleEx(
                    handle, FILE_ATTRIBUTE_TAG_INFO_CLASS, ctypes.byref(info), ctypes.sizeof(info)
                ):
                    raise self._fail(path)
                if info.FileAttributes & FILE_ATTRIBUTE_REPARSE_POINT:
                    raise OSError(errno.ELOOP, "a reparse point (not followed)", path)
            # flags 0: _O_RDONLY is 0 in the CRT, and no _O_TEXT means no translation
            return int(self._msvcrt.open_osfhandle(handle, 0))
        except BaseException:
            self._k.CloseHandle(handle)
            raise

    @staticmethod
    def open_dir(path: str) -> str:
        """No directory fds on Windows: the directory is its absolute path."""
        full = os.path.abspath(path)
        if not os.path.isdir(full):
            num = errno.ENOTDIR if os.path.exists(full) else errno.ENOENT
            raise OSError(num, os.strerror(num), path)
        return full

    @staticmethod
    def close_dir(directory: str) -> None:
        """Nothing to close: :meth:`open_dir` opened nothing."""

    def open_at(self, directory: str | None, name: str, flags: int, mode: int = 0o777) -> int:
        return self.open(name if directory is None else os.path.join(directory, name), flags, mode)

    @staticmethod
    def stat_at(directory: str, name: str) -> os.stat_result:
        return os.stat(os.path.join(directory, name), follow_symlinks=False)

    @staticmethod
    def unlink_at(directory: str, name: str) -> None:
        """DeleteFileW; works on a file we hold open because we share delete."""
        os.unlink(os.path.join(directory, name))

    def disk_usage(self, path: str) -> DiskUsage:
        ctypes = self._ctypes
        avail, total, free = ctypes.c_ulonglong(0), ctypes.c_ulonglong(0), ctypes.c_ulonglong(0)
        if not self._k.GetDiskFreeSpaceExW(
            path, ctypes.byref(avail), ctypes.byref(total), ctypes.byref(free)
        ):
            raise self._fail(path)
        return DiskUsage(int(total.value), int(free.value), int(avail.value))

    # -- locks -------------------------------------------------------------------

    def _lock(self, fd: int, flags: int) -> bool:
        ov = self._overlapped(LOCK_OFFSET)
        if self._k.LockFileEx(
            self._handle(fd), flags | LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, self._ctypes.byref(ov)
        ):
            return True
        code = self._last_error()
        if code == ERROR_LOCK_VIOLATION:  # someone holds it
            return False
        raise win_error(code)

    def try_lock_exclusive(self, fd: int) -> bool:
        return self._lock(fd, LOCKFILE_EXCLUSIVE_LOCK)

    def try_lock_shared(self, fd: int) -> bool:
        return self._lock(fd, 0)

    def unlock(self, fd: int) -> None:
        ov = self._overlapped(LOCK_OFFSET)
        if not self._k.UnlockFileEx(self._handle(fd), 0, 1, 0, self._ctypes.byref(ov)):
            raise self._fail()


def _sig(fn: Any, restype: Any, *argtypes: Any) -> None:
    fn.restype = restype
    fn.argtypes = list(argtypes)


# =============================================================================
# the bindings
# =============================================================================

O_RDONLY = os.O_RDONLY
O_RDWR = os.O_RDWR
O_CREAT = os.O_CREAT
O_EXCL = os.O_EXCL

if WINDOWS:  # tests/test_portable_io.py imports a copy of this module as on Windows
    import ctypes as _ctypes
    import msvcrt as _msvcrt

    _win = Win32Files(
        _ctypes.WinDLL("kernel32", use_last_error=True),  # type: ignore[attr-defined]
        _msvcrt,
        _ctypes.get_last_error,  # type: ignore[attr-defined]
    )
    O_CLOEXEC = _win.O_CLOEXEC
    O_NOFOLLOW = _win.O_NOFOLLOW
    O_NONBLOCK = _win.O_NONBLOCK
    pread: Callable[[int, int, int], bytes] = _win.pread
    pwrite: Callable[[int, Any, int], int] = _win.pwrite
    pwritev: Callable[[int, Sequence[Any], int], int] = _win.pwritev
    allocate: Callable[[int, int, int], None] = _win.allocate
    open_dir: Callable[[str], Any] = _win.open_dir
    close_dir: Callable[[Any], None] = _win.close_dir
    open_at: Callable[..., int] = _win.open_at
    stat_at: Callable[[Any, str], os.stat_result] = _win.stat_at
    unlink_at: Callable[[Any, str], None] = _win.unlink_at
    disk_usage: Callable[[str], DiskUsage] = _win.disk_usage
    try_lock_exclusive: Callable[[int], bool] = _win.try_lock_exclusive
    try_lock_shared: Callable[[int], bool] = _win.try_lock_shared
    unlock: Callable[[int], None] = _win.unlock
else:
    O_CLOEXEC = os.O_CLOEXEC
    O_NOFOLLOW = os.O_NOFOLLOW
    O_NONBLOCK = os.O_NONBLOCK
    pread = os.pread
    pwrite = os.pwrite
    pwritev = getattr(os, "pwritev", _posix_pwritev)
    allocate = _posix_allocate
    open_dir = _posix_open_dir
    close_dir = os.close
    open_at = _posix_open_at
    stat_at = _posix_stat_at
    unlink_at = _posix_unlink_at
    disk_usage = _posix_disk_usage
    try_lock_exclusive = _posix_try_lock_exclusive
    try_lock_shared = _posix_try_lock_shared
    unlock = _posix_unlock

#: fsync works on both (Windows: _commit, i.e. FlushFileBuffers); fdatasync is POSIX only
fsync = os.fsync
fdatasync = getattr(os, "fdatasync", os.fsync)

#: what the tests swap to run callers over the Windows branch
BINDINGS = (
    "O_CLOEXEC",
    "O_NOFOLLOW",
    "O_NONBLOCK",
    "pread",
    "pwrite",
    "pwritev",
    "allocate",
    "open_dir",
    "close_dir",
    "open_at",
    "stat_at",
    "unlink_at",
    "disk_usage",
    "try_lock_exclusive",
    "try_lock_shared",
    "unlock",
)
