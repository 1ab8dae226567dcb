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
  file inherits its directory's ACL). A read-only open of an existing name
  adds FILE_FLAG_BACKUP_SEMANTICS, so that a directory opens as it does
  with POSIX's O_RDONLY (the caller's fstat then sees it) instead of being
  refused with ERROR_ACCESS_DENIED;
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

``Win32Files`` also holds the primitives ``vspfs/hostfs.py`` builds the
engine's by-path directory calls on (they are not module bindings; hostfs
takes them from the instance): a directory fd that shares delete
(:meth:`Win32Files.open_directory`), its current path
(:meth:`~Win32Files.final_path`, how a directory fd "follows" its
directory), an object reopened by file id (:meth:`~Win32Files.open_by_id`),
a rename on a handle (:meth:`~Win32Files.rename`), security descriptors
(:meth:`~Win32Files.get_security`, :meth:`~Win32Files.set_security`, over
advapi32), the hidden+system mark (:meth:`~Win32Files.set_hidden_system`),
and a file's attributes and creation time (:meth:`~Win32Files.set_attributes`,
:meth:`~Win32Files.set_creation_time`).

Every signature and constant is checked against Microsoft's documentation
in docs/windows.md ("The cache file layer", and its "Host filesystem
primitives" table). None of it has run on Windows here;
``tests/test_portable_io.py`` runs it, and the whole cache file, over a fake
kernel32 (and advapi32) built on Linux files and OFD byte locks.
"""

from __future__ import annotations

import errno
import functools
import os
import struct
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
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_SYSTEM = 0x4
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_TEMPORARY = 0x100
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
FILE_ATTRIBUTE_OFFLINE = 0x1000
FILE_ATTRIBUTE_NOT_CONTENT_INDEXED = 0x2000
#: what SetFileAttributesW sets (its documented list, NORMAL aside: "valid only
#: when used alone", i.e. none of these; the same set as ntfs-3g's
#: FILE_ATTR_SETTABLE); every other attribute is a state with a call of its own:
#: DIRECTORY (CreateDirectory), REPARSE_POINT (FSCTL_SET_REPARSE_POINT),
#: SPARSE_FILE (FSCTL_SET_SPARSE), COMPRESSED (FSCTL_SET_COMPRESSION), ENCRYPTED
#: (EncryptFile)
SETTABLE_ATTRIBUTES = (
    FILE_ATTRIBUTE_READONLY
    | FILE_ATTRIBUTE_HIDDEN
    | FILE_ATTRIBUTE_SYSTEM
    | FILE_ATTRIBUTE_ARCHIVE
    | FILE_ATTRIBUTE_TEMPORARY
    | FILE_ATTRIBUTE_OFFLINE
    | FILE_ATTRIBUTE_NOT_CONTENT_INDEXED
)
#: what GetFileAttributesW returns on failure
INVALID_FILE_ATTRIBUTES = 0xFFFFFFFF
FILE_FLAG_BACKUP_SEMANTICS = 0x02000000
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
#: access rights (winnt.h): standard ones, then file/directory-specific ones
DELETE = 0x00010000
READ_CONTROL = 0x00020000
SYNCHRONIZE = 0x00100000
FILE_LIST_DIRECTORY = 0x1  # FILE_READ_DATA on a file
FILE_TRAVERSE = 0x20
FILE_READ_ATTRIBUTES = 0x80
FILE_WRITE_ATTRIBUTES = 0x100
LOCKFILE_FAIL_IMMEDIATELY = 0x1
LOCKFILE_EXCLUSIVE_LOCK = 0x2
#: FILE_INFO_BY_HANDLE_CLASS values
FILE_RENAME_INFO_CLASS = 3  # FileRenameInfo
FILE_ALLOCATION_INFO_CLASS = 5  # FileAllocationInfo
FILE_END_OF_FILE_INFO_CLASS = 6  # FileEndOfFileInfo
FILE_ATTRIBUTE_TAG_INFO_CLASS = 9  # FileAttributeTagInfo
FILE_RENAME_INFO_EX_CLASS = 22  # FileRenameInfoEx
#: FILE_RENAME_INFO.Flags, for FileRenameInfoEx (winbase.h)
FILE_RENAME_FLAG_REPLACE_IF_EXISTS = 0x1
FILE_RENAME_FLAG_POSIX_SEMANTICS = 0x2
#: GetFinalPathNameByHandleW flags: FILE_NAME_NORMALIZED | VOLUME_NAME_DOS, both 0
FILE_NAME_NORMALIZED = 0x0
VOLUME_NAME_DOS = 0x0
#: FILE_ID_TYPE (FILE_ID_DESCRIPTOR.Type)
FILE_ID_TYPE_FILE_ID = 0  # FileIdType: the LARGE_INTEGER FileId
FILE_ID_TYPE_EXTENDED = 2  # ExtendedFileIdType: the FILE_ID_128 (ReFS)
#: SECURITY_INFORMATION bits. The SACL needs SeSecurityPrivilege enabled, so
#: vspfs asks OWNER | GROUP | DACL
OWNER_SECURITY_INFORMATION = 0x1
GROUP_SECURITY_INFORMATION = 0x2
DACL_SECURITY_INFORMATION = 0x4
SACL_SECURITY_INFORMATION = 0x8
#: SECURITY_DESCRIPTOR_CONTROL bits set_security checks
SE_DACL_PRESENT = 0x0004
SE_SACL_PRESENT = 0x0010
SE_SELF_RELATIVE = 0x8000
ERROR_INVALID_FUNCTION = 1
ERROR_FILE_NOT_FOUND = 2
ERROR_PATH_NOT_FOUND = 3
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_NOT_SAME_DEVICE = 17
ERROR_SHARING_VIOLATION = 32
ERROR_LOCK_VIOLATION = 33
ERROR_HANDLE_EOF = 38
ERROR_HANDLE_DISK_FULL = 39
ERROR_NOT_SUPPORTED = 50
ERROR_FILE_EXISTS = 80
ERROR_INVALID_PARAMETER = 87
ERROR_DISK_FULL = 112
ERROR_INSUFFICIENT_BUFFER = 122
ERROR_DIR_NOT_EMPTY = 145
ERROR_ALREADY_EXISTS = 183
ERROR_DIRECTORY = 267
ERROR_PRIVILEGE_NOT_HELD = 1314

#: errno for the Win32 errors this layer can meet, so the cache file's errno
#: tests (ENOSPC means "cache volume full", EEXIST "never overwritten") and
#: the engine's (EXDEV, ENOTEMPTY) read them the same on both systems.
#: :func:`win_error` makes this table's errno the exception's on Windows too
#: (CPython's own table, PC/errmap.h, agrees except where noted).
_ERRNO_OF_WINERROR = {
    ERROR_INVALID_FUNCTION: errno.EINVAL,
    ERROR_FILE_NOT_FOUND: errno.ENOENT,
    ERROR_PATH_NOT_FOUND: errno.ENOENT,
    ERROR_ACCESS_DENIED: errno.EACCES,
    ERROR_INVALID_HANDLE: errno.EBADF,
    ERROR_NOT_SAME_DEVICE: errno.EXDEV,
    ERROR_SHARING_VIOLATION: errno.EACCES,
    ERROR_LOCK_VIOLATION: errno.EACCES,
    ERROR_HANDLE_DISK_FULL: errno.ENOSPC,  # CPython: EINVAL (its default)
    ERROR_NOT_SUPPORTED: errno.EINVAL,
    ERROR_FILE_EXISTS: errno.EEXIST,
    ERROR_INVALID_PARAMETER: errno.EINVAL,
    ERROR_DISK_FULL: errno.ENOSPC,
    ERROR_DIR_NOT_EMPTY: errno.ENOTEMPTY,
    ERROR_ALREADY_EXISTS: errno.EEXIST,
    ERROR_DIRECTORY: errno.ENOTDIR,
    ERROR_PRIVILEGE_NOT_HELD: errno.EPERM,  # CPython: EINVAL (its default)
}
#: SetFileInformationByHandle(FileAllocationInfo) answers these where the file
#: system cannot reserve; the size extension that follows still happens
_NO_ALLOCATION_ERRORS = frozenset({ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED, ERROR_INVALID_PARAMETER})
#: SetFileInformationByHandle(FileRenameInfoEx) answers these where the class
#: is unknown (Windows 10 before FileRenameInformationEx, other file systems
#: such as FAT): :meth:`Win32Files.rename` retries once with FileRenameInfo
_NO_RENAME_EX_ERRORS = frozenset({ERROR_INVALID_PARAMETER, ERROR_NOT_SUPPORTED, ERROR_INVALID_FUNCTION})
#: what an fd from :meth:`Win32Files.open_directory` may do: read attributes,
#: list, traverse, wait on it, and read its security descriptor. Nothing that
#: writes and no DELETE: an fd vspfs holds only reads
_DIRECTORY_ACCESS = FILE_READ_ATTRIBUTES | FILE_LIST_DIRECTORY | FILE_TRAVERSE | SYNCHRONIZE | READ_CONTROL
#: every handle here shares all three ways: the live volume renames and
#: deletes what vspfs holds open
_SHARE_ALL = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE
#: never follow a final reparse point; directories need backup semantics
_OPEN_AS_IS = FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT
#: the largest FILETIME Windows takes as a time (SetFileTime reads 0 as "leave
#: it unchanged" and 0xFFFFFFFF'FFFFFFFF as "stop updating it on this handle")
_MAX_FILETIME = 0x7FFF_FFFF_FFFF_FFFF
#: first buffer sizes (WCHARs for a path, bytes for a descriptor); both grow
_PATH_BUFFER = 512
_SECURITY_BUFFER = 512
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


def win_error(code: int, filename: str | None = None, filename2: str | None = None) -> OSError:
    """An OSError for a Win32 error code, with the errno the cache file tests.

    Built by hand rather than with ``ctypes.WinError`` so that the errno is
    the same when the Windows branch runs on Linux in the tests. The errno
    (and so the subclass: FileNotFoundError, FileExistsError, ...) comes
    from :data:`_ERRNO_OF_WINERROR` on both systems: ``winerror`` is set
    *after* construction, because given to the constructor on Windows it
    makes CPython recompute errno with its own table, which reads
    ERROR_HANDLE_DISK_FULL as EINVAL (a full cache volume would then not be
    ENOSPC). ``winerror`` stays what Windows said, for the adapter's
    NTSTATUS table.
    """
    num = _ERRNO_OF_WINERROR.get(code, errno.EIO)
    exc = OSError(num, f"{os.strerror(num)} (Windows error {code})", filename, None, filename2)
    exc.winerror = code  # type: ignore[attr-defined]  # a member on Windows, an attribute on Linux
    return exc


def check_self_relative_sd(sd: bytes) -> None:
    """Refuse (OSError EINVAL) what is not a self-relative security
    descriptor whose parts lie inside ``sd``.

    SetFileSecurityW takes a pointer and no length: an absolute-format
    descriptor (pointers, not offsets) or an offset past the end would make
    Windows read memory beyond the buffer. Only the layout is checked
    (SECURITY_DESCRIPTOR_RELATIVE: Revision, Sbz1, Control, then the
    Owner/Group/Sacl/Dacl offsets; a SID is 8 + 4 * SubAuthorityCount bytes;
    an ACL says its own AclSize); Windows judges the content.
    """

    def bad(why: str) -> OSError:
        return OSError(errno.EINVAL, f"not a self-relative security descriptor: {why}")

    if len(sd) < 20:
        raise bad("shorter than its 20-byte header")
    revision, _sbz1, control, o_owner, o_group, o_sacl, o_dacl = struct.unpack_from("<BBHIIII", sd)
    if revision != 1:
        raise bad(f"revision {revision}")
    if not control & SE_SELF_RELATIVE:
        raise bad("SE_SELF_RELATIVE is not set")
    for offset in (o_owner, o_group):
        if offset:
            if offset + 8 > len(sd):
                raise bad("a SID beyond the end")
            if offset + 8 + 4 * sd[offset + 1] > len(sd):
                raise bad("a SID beyond the end")
    for offset, flag in ((o_sacl, SE_SACL_PRESENT), (o_dacl, SE_DACL_PRESENT)):
        if offset and control & flag:
            if offset + 8 > len(sd):
                raise bad("an ACL beyond the end")
            (size,) = struct.unpack_from("<H", sd, offset + 2)
            if size < 8 or offset + size > len(sd):
                raise bad("an ACL beyond the end")


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


@functools.cache
def overlapped_type() -> Any:
    """minwinbase.h OVERLAPPED (the Offset/OffsetHigh union member as its
    DWORDs): one ctypes class for the cache file's positional I/O here and
    the control pipe's asynchronous I/O (vspfs/winpipe.py). Made on first
    use, so that importing this module does not import ctypes."""
    import ctypes
    from ctypes import wintypes

    class OVERLAPPED(ctypes.Structure):
        _fields_ = [
            ("Internal", ctypes.c_size_t),
            ("InternalHigh", ctypes.c_size_t),
            ("Offset", wintypes.DWORD),
            ("OffsetHigh", wintypes.DWORD),
            ("hEvent", wintypes.HANDLE),
        ]

    return OVERLAPPED


class Win32Files:
    """The Windows branch of every function here, over ``kernel32`` and ``msvcrt``.

    Both are parameters so the tests can hand in fakes: ``kernel32`` is
    anything whose attributes are ctypes-style functions (``restype``,
    ``argtypes``, callable), ``msvcrt`` needs ``get_osfhandle`` and
    ``open_osfhandle``, ``get_last_error`` returns the calling thread's
    last Win32 error (``ctypes.get_last_error`` with ``use_last_error=True``;
    one value per thread for every DLL loaded that way). ``advapi32``, the
    same kind of object, is only for the security descriptor calls; without
    it they raise OSError ENOTSUP.
    """

    #: the open flags callers combine for this branch. CreateFileW without
    #: SECURITY_ATTRIBUTES already makes a handle children do not inherit, so
    #: O_CLOEXEC (the CRT's O_NOINHERIT) has nothing left to ask; Windows
    #: directories hold no FIFOs, so O_NONBLOCK has nothing to prevent
    O_CLOEXEC = 0
    O_NOFOLLOW = _WIN_NOFOLLOW
    O_NONBLOCK = 0

    def __init__(
        self, kernel32: Any, msvcrt: Any, get_last_error: Callable[[], int], advapi32: Any = None
    ) -> None:
        import ctypes
        from ctypes import wintypes

        self._ctypes = ctypes
        self._k = kernel32
        self._msvcrt = msvcrt
        self._last_error = get_last_error
        self._a = advapi32

        class FILE_ATTRIBUTE_TAG_INFO(ctypes.Structure):
            """winbase.h FILE_ATTRIBUTE_TAG_INFO."""

            _fields_ = [("FileAttributes", wintypes.DWORD), ("ReparseTag", wintypes.DWORD)]

        # The structures below spell DWORD as c_uint32: wintypes.DWORD is
        # c_ulong, 4 bytes on Windows but 8 on Linux, where their layout is
        # tested. c_uint32 is 4 bytes on both, so the test sees Windows' offsets.
        class GUID(ctypes.Structure):
            """guiddef.h GUID (FILE_ID_DESCRIPTOR.ObjectId)."""

            _fields_ = [
                ("Data1", ctypes.c_uint32),
                ("Data2", wintypes.WORD),
                ("Data3", wintypes.WORD),
                ("Data4", ctypes.c_ubyte * 8),
            ]

        class FILE_ID_128(ctypes.Structure):
            """winnt.h FILE_ID_128: 16 bytes, which ``st_ino`` reads as a little-endian number."""

            _fields_ = [("Identifier", ctypes.c_ubyte * 16)]

        class _FILE_ID_UNION(ctypes.Union):
            _fields_ = [("FileId", ctypes.c_int64), ("ObjectId", GUID), ("ExtendedFileId", FILE_ID_128)]

        class FILE_ID_DESCRIPTOR(ctypes.Structure):
            """winbase.h FILE_ID_DESCRIPTOR, the union declared with all its
            members so that sizeof (dwSize) is the 24 bytes Windows expects,
            not the 16 of a LARGE_INTEGER-only union."""

            _anonymous_ = ("u",)
            _fields_ = [("dwSize", ctypes.c_uint32), ("Type", ctypes.c_int), ("u", _FILE_ID_UNION)]

        class _RENAME_UNION(ctypes.Union):
            _fields_ = [("ReplaceIfExists", wintypes.BOOLEAN), ("Flags", ctypes.c_uint32)]

        class FILE_RENAME_INFO(ctypes.Structure):
            """winbase.h FILE_RENAME_INFO: ReplaceIfExists (FileRenameInfo) and
            Flags (FileRenameInfoEx) share the first DWORD; on 64-bit Windows
            RootDirectory is at 8, FileNameLength at 16, FileName at 20. WCHAR
            is spelt c_uint16 because ctypes' c_wchar is 4 bytes on Linux."""

            _anonymous_ = ("u",)
            _fields_ = [
                ("u", _RENAME_UNION),
                ("RootDirectory", wintypes.HANDLE),
                ("FileNameLength", ctypes.c_uint32),
                ("FileName", ctypes.c_uint16 * 1),
            ]

        class FILETIME(ctypes.Structure):
            """minwinbase.h FILETIME: 100 ns intervals since 1601 as two DWORDs, low first."""

            _fields_ = [("dwLowDateTime", ctypes.c_uint32), ("dwHighDateTime", ctypes.c_uint32)]

        self.OVERLAPPED = overlapped_type()
        self.FILETIME = FILETIME
        self.FILE_ATTRIBUTE_TAG_INFO = FILE_ATTRIBUTE_TAG_INFO
        self.FILE_ID_DESCRIPTOR = FILE_ID_DESCRIPTOR
        self.FILE_RENAME_INFO = FILE_RENAME_INFO
        #: FILE_ALLOCATION_INFO and FILE_END_OF_FILE_INFO are one LARGE_INTEGER each
        self.LARGE_INTEGER = ctypes.c_int64
        self.INVALID_HANDLE_VALUE = wintypes.HANDLE(-1).value

        lp = ctypes.POINTER
        OVERLAPPED = self.OVERLAPPED
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
        _sig(k.GetFinalPathNameByHandleW, wintypes.DWORD, wintypes.HANDLE, wintypes.LPWSTR, wintypes.DWORD,
             wintypes.DWORD)  # fmt: skip
        _sig(k.OpenFileById, wintypes.HANDLE, wintypes.HANDLE, lp(FILE_ID_DESCRIPTOR), wintypes.DWORD,
             wintypes.DWORD, wintypes.LPVOID, wintypes.DWORD)  # fmt: skip
        _sig(k.GetFileAttributesW, wintypes.DWORD, wintypes.LPCWSTR)
        _sig(k.SetFileAttributesW, wintypes.BOOL, wintypes.LPCWSTR, wintypes.DWORD)
        _sig(k.SetFileTime, wintypes.BOOL, wintypes.HANDLE, lp(FILETIME), lp(FILETIME), lp(FILETIME))
        if advapi32 is not None:
            a = advapi32
            _sig(a.GetFileSecurityW, wintypes.BOOL, wintypes.LPCWSTR, wintypes.DWORD, wintypes.LPVOID,
                 wintypes.DWORD, lp(wintypes.DWORD))  # fmt: skip
            _sig(a.SetFileSecurityW, wintypes.BOOL, wintypes.LPCWSTR, wintypes.DWORD, wintypes.LPVOID)

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

    def _fail(self, filename: str | None = None, filename2: str | None = None) -> OSError:
        return win_error(self._last_error(), filename, filename2)

    def _invalid(self, handle: Any) -> bool:
        """CreateFileW and OpenFileById fail with INVALID_HANDLE_VALUE (ctypes
        gives None for a NULL HANDLE, which no success returns either)."""
        return handle is None or handle == self.INVALID_HANDLE_VALUE

    def _adopt(self, handle: int, name: str | None, directory: bool | None) -> int:
        """The CRT fd for a handle opened with FILE_FLAG_OPEN_REPARSE_POINT,
        after checking what it is: a reparse point is refused with ELOOP (as
        O_NOFOLLOW refuses a symlink), and with ``directory`` True/False a
        non-directory with ENOTDIR / a directory with EISDIR; ``None`` checks
        the reparse point only. The handle is closed on any failure; on
        success the fd owns it (``os.close`` closes it)."""
        ctypes = self._ctypes
        try:
            info = self.FILE_ATTRIBUTE_TAG_INFO()
            if not self._k.GetFileInformationByHandleEx(
                handle, FILE_ATTRIBUTE_TAG_INFO_CLASS, ctypes.byref(info), ctypes.sizeof(info)
            ):
                raise self._fail(name)
            attributes = int(info.FileAttributes)
            if attributes & FILE_ATTRIBUTE_REPARSE_POINT:
                raise OSError(errno.ELOOP, "a reparse point (not followed)", name)
            is_dir = bool(attributes & FILE_ATTRIBUTE_DIRECTORY)
            if directory is True and not is_dir:
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
            if directory is False and is_dir:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), name)
            # flags 0: _O_RDONLY is 0 in the CRT, and no _O_TEXT means no translation
            return int(self._msvcrt.open_osfhandle(handle, 0))
        except BaseException:
            self._k.CloseHandle(handle)
            raise

    def _advapi32(self, path: str) -> Any:
        if self._a is None:
            raise OSError(errno.ENOTSUP, "security descriptors need advapi32", path)
        return self._a

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
        if access == GENERIC_READ and disposition == OPEN_EXISTING:
            # as POSIX's O_RDONLY open, a directory opens too (the caller's
            # fstat then sees what it is: the cache file refuses "not a
            # regular file"); CreateFileW opens a directory only with backup
            # semantics and answers ERROR_ACCESS_DENIED without them
            attributes |= FILE_FLAG_BACKUP_SEMANTICS
        share = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE
        handle = self._k.CreateFileW(path, access, share, None, disposition, attributes, None)
        if self._invalid(handle):
            raise self._fail(path)
        if nofollow:
            return self._adopt(handle, path, None)
        try:
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

    # -- the host filesystem layer's primitives (vspfs/hostfs.py) -----------------

    def open_directory(self, path: str) -> int:
        """A CRT fd on the directory ``path``, never through a reparse point.

        CreateFileW with FILE_FLAG_BACKUP_SEMANTICS (the only way to open a
        directory) and FILE_FLAG_OPEN_REPARSE_POINT, asking only to read
        attributes, list, traverse and read the security descriptor, and
        sharing read, write *and delete*: the live volume renames and deletes
        directories vspfs holds, which a handle without FILE_SHARE_DELETE
        would refuse. OSError ELOOP for a reparse point (a symlink or a
        junction), ENOTDIR for a file; the handle is closed on any failure.
        The fd is for :meth:`final_path`, ``os.fstat``, ``os.close`` and as
        :meth:`open_by_id`'s volume hint, not for reading.
        """
        handle = self._k.CreateFileW(
            path, _DIRECTORY_ACCESS, _SHARE_ALL, None, OPEN_EXISTING, _OPEN_AS_IS, None
        )
        if self._invalid(handle):
            raise self._fail(path)
        return self._adopt(handle, path, True)

    def final_path(self, fd: int) -> str:
        """The current path of what ``fd`` is open on, as Windows gives it.

        GetFinalPathNameByHandleW(FILE_NAME_NORMALIZED | VOLUME_NAME_DOS):
        ``\\\\?\\C:\\dir`` for a drive, ``\\\\?\\UNC\\server\\share\\dir``
        for a share, returned as is (both are usable paths; stripping the
        prefix would bring back the MAX_PATH limit). This is how a directory
        fd "follows" its directory on Windows: asked after a rename, it
        answers the new path. The buffer grows to the size the call asks
        for (the answer counts the NUL when the buffer was too small), and
        again if the path grew meanwhile.
        """
        ctypes = self._ctypes
        handle = self._handle(fd)
        size = _PATH_BUFFER
        while True:
            buf = ctypes.create_unicode_buffer(size)
            n = int(
                self._k.GetFinalPathNameByHandleW(handle, buf, size, FILE_NAME_NORMALIZED | VOLUME_NAME_DOS)
            )
            if n == 0:
                raise self._fail()
            if n < size:  # success: the length without the NUL
                return str(buf.value)
            size = max(n, size + 1)  # too small: the size needed, NUL included

    def open_by_id(self, volume_fd: int, file_id: int, directory: bool) -> int:
        """A CRT fd on the object with ``file_id`` on the volume ``volume_fd``
        (any fd open there) is on: how a moved or retained directory is
        reached again without holding it open.

        ``file_id`` is ``os.stat(...).st_ino``: below 2**64 it goes in the
        LARGE_INTEGER FileId (FileIdType; NTFS ids, whose sequence number may
        set the top bit, are passed as the same 64 bits); above, in the
        128-bit ExtendedFileId (ExtendedFileIdType: ReFS, whose ``st_ino`` is
        128 bits from Python 3.12). A directory is opened as
        :meth:`open_directory` opens one, a file with GENERIC_READ |
        FILE_READ_ATTRIBUTES; both share all three ways and never follow a
        reparse point (ELOOP). ENOTDIR / EISDIR when the object is not of
        the kind asked. No such object is FileNotFoundError: NTFS answers
        ERROR_INVALID_PARAMETER for the id of a deleted file, so that error
        means ENOENT here (and only here). An object pending deletion
        answers ERROR_ACCESS_DENIED (EACCES), as documented.
        """
        ctypes = self._ctypes
        if not 0 <= file_id < 1 << 128:
            raise OSError(errno.EINVAL, f"not a file id: {file_id}")
        desc = self.FILE_ID_DESCRIPTOR()
        desc.dwSize = ctypes.sizeof(desc)
        if file_id < 1 << 64:
            desc.Type = FILE_ID_TYPE_FILE_ID
            desc.FileId = file_id - (1 << 64) if file_id >= 1 << 63 else file_id
        else:
            desc.Type = FILE_ID_TYPE_EXTENDED
            desc.ExtendedFileId.Identifier[:] = list(file_id.to_bytes(16, "little"))
        access = _DIRECTORY_ACCESS if directory else GENERIC_READ | FILE_READ_ATTRIBUTES
        handle = self._k.OpenFileById(
            self._handle(volume_fd), ctypes.byref(desc), access, _SHARE_ALL, None, _OPEN_AS_IS
        )
        if self._invalid(handle):
            code = self._last_error()
            if code == ERROR_INVALID_PARAMETER:
                raise FileNotFoundError(
                    errno.ENOENT, f"no object has the file id {file_id:#x} on this volume (Windows error 87)"
                )
            raise win_error(code)
        return self._adopt(handle, None, directory)

    def rename(self, old: str, new: str, replace: bool) -> None:
        """Rename ``old`` (a file, a directory or a reparse point itself) to
        ``new``; with ``replace`` an existing ``new`` is replaced, without it
        FileExistsError.

        ``new`` must be a full path (``C:\\...``, or the ``\\\\?\\`` form
        :meth:`final_path` gives), on the same volume (else EXDEV): the name
        goes to the file system with no RootDirectory, and a relative one
        would be read against the process's current directory. ``old`` is
        opened for DELETE, sharing all three ways (so the handle gets in
        nobody's way; it still needs every handle already open on ``old`` to
        share delete, as any rename does), and renamed with
        SetFileInformationByHandle
        (FileRenameInfoEx, FILE_RENAME_FLAG_POSIX_SEMANTICS
        [| FILE_RENAME_FLAG_REPLACE_IF_EXISTS]): POSIX semantics lets a
        replace succeed while the replaced file is open, as rename(2) does.
        Where FileRenameInfoEx is refused (ERROR_INVALID_PARAMETER,
        ERROR_NOT_SUPPORTED, ERROR_INVALID_FUNCTION: older Windows 10, FAT)
        it is retried once as FileRenameInfo with ReplaceIfExists, which
        cannot replace an open file. The handle is always closed.
        """
        ctypes = self._ctypes
        if not os.path.isabs(new):
            raise OSError(errno.EINVAL, "the new name must be a full path", old, None, new)
        name = new.encode("utf-16-le", "surrogatepass")
        offset = self.FILE_RENAME_INFO.FileName.offset
        size = max(ctypes.sizeof(self.FILE_RENAME_INFO), offset + len(name) + 2)  # + the NUL
        buf = ctypes.create_string_buffer(size)  # zeroed: RootDirectory NULL, the name NUL-terminated
        info = self.FILE_RENAME_INFO.from_buffer(buf)
        info.Flags = FILE_RENAME_FLAG_POSIX_SEMANTICS | (FILE_RENAME_FLAG_REPLACE_IF_EXISTS if replace else 0)
        info.FileNameLength = len(name)  # bytes, without the NUL
        ctypes.memmove(ctypes.addressof(buf) + offset, name, len(name))
        handle = self._k.CreateFileW(
            old, DELETE | SYNCHRONIZE, _SHARE_ALL, None, OPEN_EXISTING, _OPEN_AS_IS, None
        )
        if self._invalid(handle):
            raise self._fail(old, new)
        try:
            if self._k.SetFileInformationByHandle(handle, FILE_RENAME_INFO_EX_CLASS, ctypes.byref(buf), size):
                return
            code = self._last_error()
            if code not in _NO_RENAME_EX_ERRORS:
                raise win_error(code, old, new)
            info.Flags = 0
            info.ReplaceIfExists = 1 if replace else 0
            if not self._k.SetFileInformationByHandle(
                handle, FILE_RENAME_INFO_CLASS, ctypes.byref(buf), size
            ):
                raise self._fail(old, new)
        finally:
            self._k.CloseHandle(handle)

    def get_security(self, path: str, info: int) -> bytes:
        """The self-relative security descriptor of ``path`` (GetFileSecurityW),
        with the parts ``info`` asks (OWNER_SECURITY_INFORMATION 1 |
        GROUP_SECURITY_INFORMATION 2 | DACL_SECURITY_INFORMATION 4; the SACL,
        8, needs SeSecurityPrivilege enabled, else EPERM). The buffer grows to
        the length the call reports. GetFileSecurityW opens the name without
        FILE_FLAG_OPEN_REPARSE_POINT, so a final symbolic link is followed.
        """
        ctypes = self._ctypes
        advapi32 = self._advapi32(path)
        size = _SECURITY_BUFFER
        while True:
            buf = ctypes.create_string_buffer(size)
            needed = ctypes.c_ulong(0)
            if advapi32.GetFileSecurityW(path, info, ctypes.byref(buf), size, ctypes.byref(needed)):
                length = int(needed.value)
                return buf.raw[:length] if 0 < length <= size else buf.raw
            code = self._last_error()
            if code != ERROR_INSUFFICIENT_BUFFER:
                raise win_error(code, path)
            needed_size = int(needed.value)
            size = needed_size if needed_size > size else size * 2  # doubling only if it said nothing useful

    def set_security(self, path: str, info: int, sd: bytes) -> None:
        """Set the parts ``info`` names of ``path``'s security descriptor from
        the self-relative descriptor ``sd`` (SetFileSecurityW: written as
        given, with no inheritance propagated to children, unlike
        SetNamedSecurityInfo). ``sd`` is checked to be self-relative with
        its parts inside it first (:func:`check_self_relative_sd`, EINVAL):
        Windows reads it through a bare pointer. Setting the owner needs
        WRITE_OWNER (or SeRestorePrivilege for another owner), the DACL
        WRITE_DAC, the SACL SeSecurityPrivilege.
        """
        ctypes = self._ctypes
        advapi32 = self._advapi32(path)
        data = bytes(sd)
        check_self_relative_sd(data)
        buf = ctypes.create_string_buffer(data, len(data))
        if not advapi32.SetFileSecurityW(path, info, ctypes.byref(buf)):
            raise self._fail(path)

    def set_hidden_system(self, path: str) -> None:
        """Add FILE_ATTRIBUTE_HIDDEN | FILE_ATTRIBUTE_SYSTEM to ``path``
        (vspfs's retained-area directory, which Explorer would otherwise
        show: a dot name hides nothing on Windows). GetFileAttributesW, then
        SetFileAttributesW with the same attributes plus these two (the
        CRT's chmod does the same read-modify-write); nothing is written when
        both are already there.
        """
        attributes = int(self._k.GetFileAttributesW(path))
        if attributes == INVALID_FILE_ATTRIBUTES:
            raise self._fail(path)
        wanted = FILE_ATTRIBUTE_HIDDEN | FILE_ATTRIBUTE_SYSTEM
        if attributes & wanted == wanted:
            return
        # NORMAL is only valid alone
        if not self._k.SetFileAttributesW(path, (attributes & ~FILE_ATTRIBUTE_NORMAL) | wanted):
            raise self._fail(path)

    def set_attributes(self, path: str, attributes: int) -> None:
        """Make ``path``'s settable attributes those of ``attributes``
        (SetFileAttributesW): READONLY, HIDDEN, SYSTEM, ARCHIVE, TEMPORARY,
        OFFLINE and NOT_CONTENT_INDEXED (:data:`SETTABLE_ATTRIBUTES`, the
        function's documented list). Every other bit is ignored, as the
        function ignores what it cannot set: DIRECTORY, REPARSE_POINT,
        SPARSE_FILE, COMPRESSED and ENCRYPTED are states with calls of their
        own, and a value read back from a file (``system.ntfs_attrib``)
        carries them. None of the settable bits is passed as
        FILE_ATTRIBUTE_NORMAL, the documented way to clear them all.
        SetFileAttributesW takes a name, so a final symbolic link may be
        followed: callers (hostfs) refuse links first.
        """
        if not 0 <= attributes <= 0xFFFFFFFF:
            raise OSError(errno.EINVAL, f"not a DWORD of attributes: {attributes}", path)
        value = attributes & SETTABLE_ATTRIBUTES or FILE_ATTRIBUTE_NORMAL
        if not self._k.SetFileAttributesW(path, value):
            raise self._fail(path)

    def set_creation_time(self, path: str, filetime: int) -> None:
        """Set the creation time of ``path`` (a file, a directory, or a
        reparse point itself) to ``filetime`` (100 ns since 1601, UTC).

        CreateFileW(FILE_WRITE_ATTRIBUTES, sharing all three ways,
        OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT),
        then SetFileTime(h, &ft, NULL, NULL): NULL leaves the access and write
        times as they are. The handle is always closed. ``filetime`` must lie
        in 1..0x7FFFFFFFFFFFFFFF (EINVAL otherwise, before any call):
        SetFileTime reads 0 as "leave it unchanged" and all ones as "stop
        updating it", neither of which is a time.
        """
        if not 0 < filetime <= _MAX_FILETIME:
            raise OSError(errno.EINVAL, f"not a FILETIME to set: {filetime}", path)
        ctypes = self._ctypes
        ft = self.FILETIME(filetime & 0xFFFFFFFF, filetime >> 32)
        handle = self._k.CreateFileW(
            path, FILE_WRITE_ATTRIBUTES, _SHARE_ALL, None, OPEN_EXISTING, _OPEN_AS_IS, None
        )
        if self._invalid(handle):
            raise self._fail(path)
        try:
            if not self._k.SetFileTime(handle, ctypes.byref(ft), None, None):
                raise self._fail(path)
        finally:
            self._k.CloseHandle(handle)


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
        _ctypes.WinDLL("advapi32", use_last_error=True),  # type: ignore[attr-defined]
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
