"""vspfs.portable_io: both branches on Linux, and the cache file over the Windows one.

The POSIX branch must be ``os`` itself for the hot calls (the engine's speed
depends on it). The Windows branch (:class:`Win32Files`) runs here over a
fake kernel32 and msvcrt in the manner of tests/test_winpipe.py, but one that
*does* the work on real Linux files: each function checks that it was
declared with the documented arity and that every argument is one ctypes
accepts for the declared type, then acts (CreateFileW opens, ReadFile and
WriteFile read and write at the OVERLAPPED offset and enforce Windows'
mandatory byte locks, LockFileEx takes a real per-handle byte-range lock
(Linux open file description locks, which conflict between handles as
Windows locks do)). With it, the cache file's own tests run once more
through the Windows branch (``test_cachefile_over_win32_*`` below). The
host filesystem primitives (directory fds, their current path, opening by
file id, rename on a handle, attributes and creation times, and security
descriptors over a fake advapi32) run over the same fake, which keeps to what Windows does:
a directory needs FILE_FLAG_BACKUP_SEMANTICS, a rename needs DELETE access,
an unknown file id answers ERROR_INVALID_PARAMETER.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_dll import FakeDll
from vspfs import portable_io as pio
from vspfs import winplatform as wp
from vspfs.cachefile import CacheFile, is_locked, iter_records, read_header, remove_if_stale
from vspfs.cacheformat import FLAG_CLOSED, HEADER_SIZE, decode_header
from vspfs.errors import CacheFileError, CacheOverflow

# -------------------------------------------------------------- POSIX branch


def test_hot_calls_are_the_os_functions_themselves() -> None:
    """No Python frame between the engine and the system call on Linux."""
    assert pio.pread is os.pread
    assert pio.pwrite is os.pwrite
    assert pio.pwritev is os.pwritev
    assert pio.fsync is os.fsync
    assert pio.fdatasync is os.fdatasync
    assert pio.close_dir is os.close
    assert (pio.O_CLOEXEC, pio.O_NOFOLLOW, pio.O_NONBLOCK) == (os.O_CLOEXEC, os.O_NOFOLLOW, os.O_NONBLOCK)


def test_posix_directory_calls(tmp_path: Path) -> None:
    d = pio.open_dir(str(tmp_path))
    try:
        fd = pio.open_at(d, "f", os.O_RDWR | os.O_CREAT | os.O_EXCL | pio.O_CLOEXEC | pio.O_NOFOLLOW, 0o600)
        try:
            assert pio.pwritev(fd, [b"ab", memoryview(b"cd")], 3) == 4
            assert pio.pread(fd, 10, 0) == b"\0\0\0abcd"
            pio.allocate(fd, 0, 8192)
            assert os.fstat(fd).st_size == 8192
            pio.allocate(fd, 0, 100)  # never shrinks
            assert os.fstat(fd).st_size == 8192
            assert stat.S_IMODE(pio.stat_at(d, "f").st_mode) == 0o600
        finally:
            os.close(fd)
        os.symlink("f", tmp_path / "link")
        with pytest.raises(OSError) as info:
            pio.open_at(d, "link", os.O_RDONLY | pio.O_NOFOLLOW)
        assert info.value.errno == errno.ELOOP
        pio.unlink_at(d, "f")
        assert not (tmp_path / "f").exists()
    finally:
        pio.close_dir(d)


def test_posix_allocate_falls_back_to_a_size_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "no")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        pio.allocate(fd, 100, 900)
        assert os.fstat(fd).st_size == 1000
    finally:
        os.close(fd)


def test_posix_disk_usage(tmp_path: Path) -> None:
    got = pio.disk_usage(str(tmp_path))
    st = os.statvfs(tmp_path)
    assert got.total == st.f_blocks * st.f_frsize
    assert 0 <= got.available <= got.free <= got.total


def test_posix_locks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    a, b = (os.open(path, os.O_RDWR) for _ in range(2))
    try:
        assert pio.try_lock_exclusive(a)
        assert not pio.try_lock_shared(b)
        pio.unlock(a)
        assert pio.try_lock_shared(a) and pio.try_lock_shared(b)
        assert not wp.try_lock_exclusive(a)  # winplatform's locks are these
    finally:
        os.close(a)
        os.close(b)


# ---------------------------------------------------- a fake Win32 on Linux


class _Flock(ctypes.Structure):
    """Linux struct flock (x86-64 and aarch64 layout), for OFD locks."""

    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


def _ofd(fd: int, cmd: int, kind: int, start: int, length: int) -> _Flock:
    req = _Flock(kind, os.SEEK_SET, start, length, 0)
    return _Flock.from_buffer_copy(fcntl.fcntl(fd, cmd, bytes(req)))


def _winerror_of(exc: OSError) -> int:
    """The Win32 error Windows would report where Linux raised ``exc``."""
    return {
        errno.ENOENT: pio.ERROR_FILE_NOT_FOUND,
        errno.EEXIST: pio.ERROR_FILE_EXISTS,
        errno.EACCES: pio.ERROR_ACCESS_DENIED,
        errno.ENOSPC: pio.ERROR_DISK_FULL,
        errno.EDQUOT: pio.ERROR_DISK_FULL,
        errno.EOPNOTSUPP: pio.ERROR_INVALID_PARAMETER,
    }.get(exc.errno or 0, pio.ERROR_INVALID_PARAMETER)


def _proc_path(fd: int) -> str:
    """Where a Linux fd is now (what GetFinalPathNameByHandleW answers)."""
    return os.readlink(f"/proc/self/fd/{fd}")


class FakeKernel32(FakeDll):
    """kernel32 over Linux files: a handle is a Linux fd of its own (so locks
    are per handle, as on Windows); ``last_error`` is the thread's last error."""

    INVALID = ctypes.c_void_p(-1).value

    def __init__(self) -> None:
        super().__init__()
        self.handles: dict[int, int] = {}  # handle -> Linux fd
        self.by_fd: dict[int, int] = {}  # Linux fd -> handle (the CRT's table)
        self.access: dict[int, int] = {}  # handle -> the access mask granted
        self.last_error = 0
        self.fail: dict[str, int] = {}  # function name -> Win32 error to fail with
        self.attributes: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> attributes set
        self.creation_times: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> FILETIME set
        self.final_names: dict[int, str] = {}  # handle -> what GetFinalPathNameByHandleW answers
        self.volume: str | None = None  # where OpenFileById looks (default: the hint's directory)
        self.renames: list[tuple[int, bytes]] = []  # (class, FILE_RENAME_INFO as it was when called)
        self._next = 0x1000

    def _error(self, code: int, result: object = 0) -> object:
        self.last_error = code
        return result

    def _injected(self, name: str) -> int:
        return self.fail.get(name, 0)

    @staticmethod
    def _offset(ov: Any) -> int:
        ov = ov._obj
        return int(ov.Offset) | int(ov.OffsetHigh) << 32

    def _locked_against(self, fd: int, kind: int, offset: int, length: int) -> bool:
        """Whether another handle's lock keeps this handle from the range
        (Windows: exclusive locks stop reads and writes, shared ones writes)."""
        return length > 0 and _ofd(fd, fcntl.F_OFD_GETLK, kind, offset, length).l_type != fcntl.F_UNLCK

    # -- the exports ---------------------------------------------------------

    def _open(self, path: str, access: int, disp: int, attrs: int) -> object:
        """CreateFileW's work, shared with OpenFileById."""
        rw = access & (pio.GENERIC_READ | pio.GENERIC_WRITE)
        if rw:
            flags = {pio.GENERIC_READ: os.O_RDONLY, pio.GENERIC_WRITE: os.O_WRONLY}.get(rw, os.O_RDWR)
        else:  # no data access: a directory listing (FILE_LIST_DIRECTORY), or nothing at all
            flags = os.O_RDONLY if access & pio.FILE_LIST_DIRECTORY else os.O_PATH
        flags |= {
            pio.CREATE_NEW: os.O_CREAT | os.O_EXCL,
            pio.CREATE_ALWAYS: os.O_CREAT | os.O_TRUNC,
            pio.OPEN_ALWAYS: os.O_CREAT,
            pio.TRUNCATE_EXISTING: os.O_TRUNC,
            pio.OPEN_EXISTING: 0,
        }[disp]
        link = bool(attrs & pio.FILE_FLAG_OPEN_REPARSE_POINT) and os.path.islink(path)
        if link:
            flags = os.O_PATH | os.O_NOFOLLOW  # the link itself, as Windows opens the reparse point
        elif os.path.isdir(path) and not attrs & pio.FILE_FLAG_BACKUP_SEMANTICS:
            return self._error(pio.ERROR_ACCESS_DENIED, self.INVALID)  # "you must set this flag"
        mode = 0o444 if attrs & pio.FILE_ATTRIBUTE_READONLY else 0o666
        try:
            try:  # read-write underneath whatever was asked: Linux wants it for write locks, Windows does not
                fd = os.open(path, (flags & ~os.O_ACCMODE) | os.O_RDWR | os.O_CLOEXEC, mode)
            except (PermissionError, IsADirectoryError):
                fd = os.open(path, flags | os.O_CLOEXEC, mode)
        except OSError as exc:
            return self._error(_winerror_of(exc), self.INVALID)
        self._next += 4
        self.handles[self._next] = fd
        self.access[self._next] = access
        self.by_fd[fd] = self._next
        return self._next

    def do_CreateFileW(
        self, path: str, access: int, share: int, sa: object, disp: int, attrs: int, tmpl: object
    ):
        assert sa is None and tmpl is None
        assert share == pio.FILE_SHARE_READ | pio.FILE_SHARE_WRITE | pio.FILE_SHARE_DELETE
        return self._open(path, access, disp, attrs)

    def do_CloseHandle(self, handle: int) -> int:
        os.close(self.handles.pop(handle))
        return 1

    def do_GetFileInformationByHandleEx(self, handle: int, cls: int, info: Any, size: int) -> int:
        assert cls == pio.FILE_ATTRIBUTE_TAG_INFO_CLASS and size == ctypes.sizeof(info._obj)  # 8 on Windows
        st = os.fstat(self.handles[handle])
        link = stat.S_ISLNK(st.st_mode)
        if link:
            attributes = pio.FILE_ATTRIBUTE_REPARSE_POINT
        elif stat.S_ISDIR(st.st_mode):
            attributes = pio.FILE_ATTRIBUTE_DIRECTORY
        else:
            attributes = pio.FILE_ATTRIBUTE_NORMAL
        info._obj.FileAttributes = attributes
        info._obj.ReparseTag = 0xA000000C if link else 0  # IO_REPARSE_TAG_SYMLINK
        return 1

    def do_ReadFile(self, handle: int, buf: Any, n: int, done: Any, ov: Any) -> int:
        fd, offset = self.handles[handle], self._offset(ov)
        done._obj.value = 0
        if not self.access[handle] & pio.GENERIC_READ:
            return int(self._error(pio.ERROR_ACCESS_DENIED))  # type: ignore[arg-type]
        if self._locked_against(fd, fcntl.F_RDLCK, offset, n):
            return int(self._error(pio.ERROR_LOCK_VIOLATION))  # type: ignore[arg-type]
        data = os.pread(fd, n, offset)
        if n and not data:
            return int(self._error(pio.ERROR_HANDLE_EOF))  # type: ignore[arg-type]
        ctypes.memmove(buf, data, len(data))
        done._obj.value = len(data)
        return 1

    def do_WriteFile(self, handle: int, data: bytes, n: int, done: Any, ov: Any) -> int:
        fd, offset = self.handles[handle], self._offset(ov)
        done._obj.value = 0
        if not self.access[handle] & pio.GENERIC_WRITE:
            return int(self._error(pio.ERROR_ACCESS_DENIED))  # type: ignore[arg-type]
        if self._injected("WriteFile"):
            return int(self._error(self._injected("WriteFile")))  # type: ignore[arg-type]
        if self._locked_against(fd, fcntl.F_WRLCK, offset, n):
            return int(self._error(pio.ERROR_LOCK_VIOLATION))  # type: ignore[arg-type]
        assert isinstance(data, bytes)
        try:
            done._obj.value = os.pwrite(fd, data[:n], offset)
        except OSError as exc:
            return int(self._error(_winerror_of(exc)))  # type: ignore[arg-type]
        return 1

    def do_SetFileInformationByHandle(self, handle: int, cls: int, info: Any, size: int) -> int:
        from vspfs import syscalls

        if cls in (pio.FILE_RENAME_INFO_CLASS, pio.FILE_RENAME_INFO_EX_CLASS):
            raw = bytes(info._obj)[:size]
            self.renames.append((cls, raw))
            return self._rename(handle, cls, raw)
        assert size == 8
        fd, value = self.handles[handle], int(info._obj.value)
        name = {pio.FILE_ALLOCATION_INFO_CLASS: "alloc", pio.FILE_END_OF_FILE_INFO_CLASS: "eof"}[cls]
        if self._injected(name):
            return int(self._error(self._injected(name)))  # type: ignore[arg-type]
        try:
            if cls == pio.FILE_ALLOCATION_INFO_CLASS:  # reserve, size unchanged
                syscalls.fallocate(fd, syscalls.FALLOC_FL_KEEP_SIZE, 0, value)
            else:
                os.ftruncate(fd, value)
        except OSError as exc:
            return int(self._error(_winerror_of(exc)))  # type: ignore[arg-type]
        return 1

    def do_LockFileEx(self, handle: int, flags: int, reserved: int, low: int, high: int, ov: Any) -> int:
        assert reserved == 0 and flags & pio.LOCKFILE_FAIL_IMMEDIATELY
        kind = fcntl.F_WRLCK if flags & pio.LOCKFILE_EXCLUSIVE_LOCK else fcntl.F_RDLCK
        try:
            _ofd(self.handles[handle], fcntl.F_OFD_SETLK, kind, self._offset(ov), low | high << 32)
        except BlockingIOError:
            return int(self._error(pio.ERROR_LOCK_VIOLATION))  # type: ignore[arg-type]
        return 1

    def do_UnlockFileEx(self, handle: int, reserved: int, low: int, high: int, ov: Any) -> int:
        _ofd(self.handles[handle], fcntl.F_OFD_SETLK, fcntl.F_UNLCK, self._offset(ov), low | high << 32)
        return 1

    def do_GetDiskFreeSpaceExW(self, path: str, avail: Any, total: Any, free: Any) -> int:
        st = os.statvfs(path)
        avail._obj.value = st.f_bavail * st.f_frsize
        total._obj.value = st.f_blocks * st.f_frsize
        free._obj.value = st.f_bfree * st.f_frsize
        return 1

    def _rename(self, handle: int, cls: int, raw: bytes) -> int:
        """FILE_RENAME_INFO read at the offsets 64-bit Windows uses (written
        out here, not taken from the declaration under test)."""
        from vspfs import syscalls

        assert len(raw) >= 24  # never less than sizeof(FILE_RENAME_INFO)
        (flags,) = struct.unpack_from("<I", raw, 0)
        (root,) = struct.unpack_from("<Q", raw, 8)
        (length,) = struct.unpack_from("<I", raw, 16)
        assert root == 0 and length % 2 == 0 and len(raw) >= 20 + length + 2
        assert raw[20 + length : 22 + length] == b"\0\0"  # NUL-terminated, not counted
        new = raw[20 : 20 + length].decode("utf-16-le")
        if cls == pio.FILE_RENAME_INFO_EX_CLASS:
            if self._injected("renameex"):  # a Windows or a file system without the class
                return int(self._error(self._injected("renameex")))  # type: ignore[arg-type]
            assert flags & pio.FILE_RENAME_FLAG_POSIX_SEMANTICS and not flags & ~0x3
            replace = bool(flags & pio.FILE_RENAME_FLAG_REPLACE_IF_EXISTS)
        else:
            assert raw[1:4] == b"\0\0\0" and raw[0] in (0, 1)  # a BOOLEAN, the rest of the DWORD clear
            replace = bool(raw[0])
        if not self.access[handle] & pio.DELETE:
            return int(self._error(pio.ERROR_ACCESS_DENIED))  # type: ignore[arg-type]
        old = _proc_path(self.handles[handle])
        try:
            if replace:
                os.rename(old, new)
            else:
                syscalls.renameat2(-100, old, -100, new, 1)  # AT_FDCWD, RENAME_NOREPLACE
        except FileExistsError:
            return int(self._error(pio.ERROR_ALREADY_EXISTS))  # type: ignore[arg-type]  # what NTFS says
        except OSError as exc:
            return int(self._error(_winerror_of(exc)))  # type: ignore[arg-type]
        return 1

    def do_GetFinalPathNameByHandleW(self, handle: int, buf: Any, size: int, flags: int) -> int:
        assert flags == 0 and size <= len(buf)  # FILE_NAME_NORMALIZED | VOLUME_NAME_DOS; no overrun
        if self._injected("GetFinalPathNameByHandleW"):
            return int(self._error(self._injected("GetFinalPathNameByHandleW")))  # type: ignore[arg-type]
        path = self.final_names.get(handle) or _proc_path(self.handles[handle])
        if len(path) + 1 > size:
            return len(path) + 1  # too small: the size needed, NUL included
        buf.value = path
        return len(path)

    def do_OpenFileById(self, hint: int, desc: Any, access: int, share: int, sa: object, flags: int):
        assert sa is None and share == pio.FILE_SHARE_READ | pio.FILE_SHARE_WRITE | pio.FILE_SHARE_DELETE
        assert flags & pio.FILE_FLAG_BACKUP_SEMANTICS
        if self._injected("OpenFileById"):
            return self._error(self._injected("OpenFileById"), self.INVALID)
        d = desc._obj
        assert d.dwSize == ctypes.sizeof(d) == 24
        raw = bytes(d)
        (kind,) = struct.unpack_from("<i", raw, 4)
        if kind == pio.FILE_ID_TYPE_FILE_ID:
            (wanted,) = struct.unpack_from("<Q", raw, 8)
        else:
            assert kind == pio.FILE_ID_TYPE_EXTENDED
            wanted = int.from_bytes(raw[8:24], "little")
        hint_fd = self.handles[hint]
        dev = os.fstat(hint_fd).st_dev
        root = self.volume or os.path.dirname(_proc_path(hint_fd))
        for where, dirs, files in os.walk(root):
            for name in [".", *dirs, *files]:
                path = os.path.normpath(os.path.join(where, name))
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, wanted):
                    return self._open(path, access, pio.OPEN_EXISTING, flags)
        return self._error(pio.ERROR_INVALID_PARAMETER, self.INVALID)  # NTFS, for an id nobody has

    def _key(self, path: str) -> tuple[int, int]:
        st = os.lstat(path)
        return st.st_dev, st.st_ino

    def do_GetFileAttributesW(self, path: str) -> int:
        try:
            st = os.lstat(path)  # "returns attributes for the symbolic link"
        except OSError as exc:
            return int(self._error(_winerror_of(exc), pio.INVALID_FILE_ATTRIBUTES))  # type: ignore[arg-type]
        attributes = self.attributes.get((st.st_dev, st.st_ino), 0)
        if stat.S_ISLNK(st.st_mode):
            attributes |= pio.FILE_ATTRIBUTE_REPARSE_POINT
        elif stat.S_ISDIR(st.st_mode):
            attributes |= pio.FILE_ATTRIBUTE_DIRECTORY
        return attributes or pio.FILE_ATTRIBUTE_NORMAL

    def do_SetFileTime(self, handle: int, creation: Any, access: Any, write: Any) -> int:
        """Only what vspfs asks: a creation time, the other two NULL (unchanged)."""
        assert access is None and write is None
        if not self.access[handle] & pio.FILE_WRITE_ATTRIBUTES:
            return int(self._error(pio.ERROR_ACCESS_DENIED))  # type: ignore[arg-type]  # documented
        ft = creation._obj
        st = os.fstat(self.handles[handle])
        self.creation_times[(st.st_dev, st.st_ino)] = int(ft.dwLowDateTime) | int(ft.dwHighDateTime) << 32
        return 1

    def do_SetFileAttributesW(self, path: str, attributes: int) -> int:
        assert not (attributes & pio.FILE_ATTRIBUTE_NORMAL and attributes != pio.FILE_ATTRIBUTE_NORMAL)
        try:
            key = self._key(path)
        except OSError as exc:
            return int(self._error(_winerror_of(exc)))  # type: ignore[arg-type]
        kept = pio.FILE_ATTRIBUTE_DIRECTORY | pio.FILE_ATTRIBUTE_REPARSE_POINT  # not settable
        self.attributes[key] = attributes & ~kept & ~pio.FILE_ATTRIBUTE_NORMAL
        return 1


class FakeAdvapi32(FakeDll):
    """advapi32's file security calls, a descriptor per inode (following
    links, as GetFileSecurityW opens the name); the thread's last error is
    kernel32's."""

    #: a self-relative descriptor with nothing in it: what a file starts with here
    EMPTY_SD = struct.pack("<BBHIIII", 1, 0, pio.SE_SELF_RELATIVE, 0, 0, 0, 0)

    def __init__(self, kernel32: FakeKernel32) -> None:
        super().__init__()
        self.k = kernel32
        self.descriptors: dict[tuple[int, int], bytes] = {}
        self.privileges: set[str] = set()

    def _error(self, code: int) -> int:
        self.k.last_error = code
        return 0

    def _key(self, path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def do_GetFileSecurityW(self, path: str, info: int, buf: Any, size: int, needed: Any) -> int:
        if info & pio.SACL_SECURITY_INFORMATION and "SeSecurityPrivilege" not in self.privileges:
            return self._error(pio.ERROR_PRIVILEGE_NOT_HELD)
        try:
            sd = self.descriptors.get(self._key(path), self.EMPTY_SD)
        except OSError as exc:
            return self._error(_winerror_of(exc))
        needed._obj.value = len(sd)
        if len(sd) > size:
            return self._error(pio.ERROR_INSUFFICIENT_BUFFER)  # "none of the descriptor is returned"
        assert size <= ctypes.sizeof(buf._obj)
        ctypes.memmove(buf._obj, sd, len(sd))
        return 1

    def do_SetFileSecurityW(self, path: str, info: int, sd: Any) -> int:
        if info & pio.SACL_SECURITY_INFORMATION and "SeSecurityPrivilege" not in self.privileges:
            return self._error(pio.ERROR_PRIVILEGE_NOT_HELD)
        try:
            self.descriptors[self._key(path)] = bytes(sd._obj)
        except OSError as exc:
            return self._error(_winerror_of(exc))
        return 1


class FakeMsvcrt:
    """The CRT's fd table: ``open_osfhandle`` gives the handle's Linux fd."""

    def __init__(self, kernel32: FakeKernel32) -> None:
        self.k = kernel32
        self.flags: list[int] = []

    def open_osfhandle(self, handle: int, flags: int) -> int:
        self.flags.append(flags)
        return self.k.handles[handle]

    def get_osfhandle(self, fd: int) -> int:
        handle = self.k.by_fd.get(fd)
        if handle is None or self.k.handles.get(handle) != fd:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return handle


@pytest.fixture
def win() -> pio.Win32Files:
    k = FakeKernel32()
    return pio.Win32Files(k, FakeMsvcrt(k), lambda: k.last_error, FakeAdvapi32(k))


@pytest.fixture
def over_win32(monkeypatch: pytest.MonkeyPatch, win: pio.Win32Files) -> Iterator[pio.Win32Files]:
    """Bind the layer to the Windows branch, as it is bound on Windows."""
    for name in pio.BINDINGS:
        monkeypatch.setattr(pio, name, getattr(win, name))
    yield win


def _k(win: pio.Win32Files) -> FakeKernel32:
    return win._k  # type: ignore[no-any-return]


def _a(win: pio.Win32Files) -> FakeAdvapi32:
    return win._a  # type: ignore[no-any-return]


def _win_msvcrt_flags(win: pio.Win32Files) -> list[int]:
    return win._msvcrt.flags  # type: ignore[no-any-return]


# -------------------------------------------------------- Windows branch


def test_module_binds_the_windows_branch_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh copy of the module, imported as on Windows (fake kernel32 and
    msvcrt): every binding is the Win32Files method and the flags are ours."""
    import importlib.util
    import sys
    import types

    k = FakeKernel32()
    crt = types.ModuleType("msvcrt")
    fake = FakeMsvcrt(k)
    crt.get_osfhandle = fake.get_osfhandle  # type: ignore[attr-defined]
    crt.open_osfhandle = fake.open_osfhandle  # type: ignore[attr-defined]
    advapi32 = FakeAdvapi32(k)
    loaded: list[tuple[str, bool]] = []

    def win_dll(name: str, use_last_error: bool = False) -> FakeDll:
        loaded.append((name, use_last_error))
        return {"kernel32": k, "advapi32": advapi32}[name]

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "msvcrt", crt)
    monkeypatch.setattr(ctypes, "WinDLL", win_dll, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: k.last_error, raising=False)
    spec = importlib.util.spec_from_file_location("portable_io_as_on_windows", pio.__file__)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # GetLastError kept per call by ctypes, for both DLLs
    assert mod.WINDOWS and loaded == [("kernel32", True), ("advapi32", True)]
    assert mod._win._a is advapi32 and advapi32.functions["GetFileSecurityW"].argtypes
    for name in mod.BINDINGS:
        bound = getattr(mod, name)
        expected = getattr(mod._win, name)
        assert bound == expected, name
    assert (mod.O_CLOEXEC, mod.O_NOFOLLOW, mod.O_NONBLOCK) == (0, 0x20000000, 0)
    assert mod.pread != os.pread and mod.fsync is os.fsync


def test_every_win32_function_has_the_documented_arity(win: pio.Win32Files) -> None:
    functions = _k(win).functions
    for name, count in {
        "CreateFileW": 7,
        "CloseHandle": 1,
        "ReadFile": 5,
        "WriteFile": 5,
        "SetFileInformationByHandle": 4,
        "GetFileInformationByHandleEx": 4,
        "LockFileEx": 6,
        "UnlockFileEx": 5,
        "GetDiskFreeSpaceExW": 4,
        "GetFinalPathNameByHandleW": 4,
        "OpenFileById": 6,
        "GetFileAttributesW": 1,
        "SetFileAttributesW": 2,
        "SetFileTime": 4,
    }.items():
        assert len(functions[name].argtypes or ()) == count, name
    for name, count in {"GetFileSecurityW": 5, "SetFileSecurityW": 3}.items():
        assert len(_a(win).functions[name].argtypes or ()) == count, name
    from ctypes import wintypes

    # OVERLAPPED: Internal, InternalHigh (ULONG_PTR), Offset, OffsetHigh (DWORD), hEvent
    expected = (
        2 * ctypes.sizeof(ctypes.c_size_t)
        + 2 * ctypes.sizeof(wintypes.DWORD)
        + ctypes.sizeof(ctypes.c_void_p)
    )
    assert ctypes.sizeof(win.OVERLAPPED) == expected
    assert [f[0] for f in win.OVERLAPPED._fields_] == [
        "Internal",
        "InternalHigh",
        "Offset",
        "OffsetHigh",
        "hEvent",
    ]
    assert ctypes.sizeof(win.LARGE_INTEGER) == 8  # FILE_ALLOCATION_INFO, FILE_END_OF_FILE_INFO
    assert [f[0] for f in win.FILE_ATTRIBUTE_TAG_INFO._fields_] == ["FileAttributes", "ReparseTag"]
    # FILETIME: dwLowDateTime, dwHighDateTime, one DWORD each (SetFileTime's three pointers)
    assert [f[0] for f in win.FILETIME._fields_] == ["dwLowDateTime", "dwHighDateTime"]
    assert ctypes.sizeof(win.FILETIME) == 8 and win.FILETIME.dwHighDateTime.offset == 4


def test_documented_constants() -> None:
    assert (pio.GENERIC_READ, pio.GENERIC_WRITE) == (0x80000000, 0x40000000)
    assert (pio.FILE_SHARE_READ, pio.FILE_SHARE_WRITE, pio.FILE_SHARE_DELETE) == (1, 2, 4)
    assert (pio.CREATE_NEW, pio.CREATE_ALWAYS, pio.OPEN_EXISTING, pio.OPEN_ALWAYS, pio.TRUNCATE_EXISTING) == (
        1,
        2,
        3,
        4,
        5,
    )
    assert pio.FILE_FLAG_OPEN_REPARSE_POINT == 0x00200000
    assert (pio.FILE_ATTRIBUTE_READONLY, pio.FILE_ATTRIBUTE_NORMAL, pio.FILE_ATTRIBUTE_REPARSE_POINT) == (
        0x1,
        0x80,
        0x400,
    )
    assert (pio.LOCKFILE_FAIL_IMMEDIATELY, pio.LOCKFILE_EXCLUSIVE_LOCK) == (1, 2)
    assert (pio.FILE_ALLOCATION_INFO_CLASS, pio.FILE_END_OF_FILE_INFO_CLASS) == (5, 6)
    assert pio.FILE_ATTRIBUTE_TAG_INFO_CLASS == 9
    assert (pio.ERROR_LOCK_VIOLATION, pio.ERROR_HANDLE_EOF, pio.ERROR_DISK_FULL) == (33, 38, 112)
    assert (pio.ERROR_HANDLE_DISK_FULL, pio.ERROR_FILE_EXISTS) == (39, 80)
    # the host filesystem primitives
    assert (pio.DELETE, pio.READ_CONTROL, pio.SYNCHRONIZE) == (0x10000, 0x20000, 0x100000)
    assert (pio.FILE_LIST_DIRECTORY, pio.FILE_TRAVERSE, pio.FILE_READ_ATTRIBUTES) == (0x1, 0x20, 0x80)
    assert pio._DIRECTORY_ACCESS == 0x001200A1
    assert pio.FILE_FLAG_BACKUP_SEMANTICS == 0x02000000
    assert (pio.FILE_ATTRIBUTE_HIDDEN, pio.FILE_ATTRIBUTE_SYSTEM, pio.FILE_ATTRIBUTE_DIRECTORY) == (
        2,
        4,
        0x10,
    )
    assert pio.INVALID_FILE_ATTRIBUTES == 0xFFFFFFFF
    # SetFileAttributesW's list (NORMAL aside), ntfs-3g's FILE_ATTR_SETTABLE
    assert (pio.FILE_ATTRIBUTE_ARCHIVE, pio.FILE_ATTRIBUTE_TEMPORARY) == (0x20, 0x100)
    assert (pio.FILE_ATTRIBUTE_OFFLINE, pio.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED) == (0x1000, 0x2000)
    assert pio.SETTABLE_ATTRIBUTES == wp.SETTABLE_FILE_ATTRIBUTES == 0x3127
    assert pio.FILE_WRITE_ATTRIBUTES == 0x100
    assert (pio.FILE_RENAME_INFO_CLASS, pio.FILE_RENAME_INFO_EX_CLASS) == (3, 22)
    assert (pio.FILE_RENAME_FLAG_REPLACE_IF_EXISTS, pio.FILE_RENAME_FLAG_POSIX_SEMANTICS) == (1, 2)
    assert (pio.FILE_NAME_NORMALIZED, pio.VOLUME_NAME_DOS) == (0, 0)
    assert (pio.FILE_ID_TYPE_FILE_ID, pio.FILE_ID_TYPE_EXTENDED) == (0, 2)
    assert (
        pio.OWNER_SECURITY_INFORMATION,
        pio.GROUP_SECURITY_INFORMATION,
        pio.DACL_SECURITY_INFORMATION,
        pio.SACL_SECURITY_INFORMATION,
    ) == (1, 2, 4, 8)
    assert (pio.SE_DACL_PRESENT, pio.SE_SACL_PRESENT, pio.SE_SELF_RELATIVE) == (0x4, 0x10, 0x8000)
    assert (pio.ERROR_NOT_SAME_DEVICE, pio.ERROR_INSUFFICIENT_BUFFER, pio.ERROR_DIR_NOT_EMPTY) == (
        17,
        122,
        145,
    )
    assert (pio.ERROR_DIRECTORY, pio.ERROR_PRIVILEGE_NOT_HELD, pio.ERROR_ALREADY_EXISTS) == (267, 1314, 183)


def test_win_errors_carry_errno_and_winerror() -> None:
    full = pio.win_error(pio.ERROR_DISK_FULL)
    assert full.errno == errno.ENOSPC and full.winerror == 112  # type: ignore[attr-defined]
    assert isinstance(pio.win_error(pio.ERROR_FILE_EXISTS, "x"), FileExistsError)
    assert isinstance(pio.win_error(pio.ERROR_FILE_NOT_FOUND), FileNotFoundError)
    assert pio.win_error(12345).errno == errno.EIO
    assert pio.win_error(pio.ERROR_HANDLE_DISK_FULL).errno == errno.ENOSPC
    assert pio.win_error(pio.ERROR_NOT_SAME_DEVICE).errno == errno.EXDEV
    assert pio.win_error(pio.ERROR_DIR_NOT_EMPTY).errno == errno.ENOTEMPTY
    assert isinstance(pio.win_error(pio.ERROR_DIRECTORY), NotADirectoryError)
    assert isinstance(pio.win_error(pio.ERROR_PRIVILEGE_NOT_HELD), PermissionError)
    both = pio.win_error(pio.ERROR_ALREADY_EXISTS, "old", "new")
    assert isinstance(both, FileExistsError) and (both.filename, both.filename2) == ("old", "new")


def test_win_error_keeps_winerror_out_of_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given to OSError's constructor on Windows, winerror makes CPython
    recompute errno with its own table, where ERROR_HANDLE_DISK_FULL is
    EINVAL: a full cache volume would stop being ENOSPC there."""
    seen: list[tuple[object, ...]] = []

    class Recording(OSError):
        def __init__(self, *args: object) -> None:
            seen.append(args)
            super().__init__(*args)

    monkeypatch.setattr(pio, "OSError", Recording, raising=False)
    exc = pio.win_error(pio.ERROR_HANDLE_DISK_FULL, "f")
    assert seen and seen[0][0] == errno.ENOSPC and seen[0][3] is None
    assert exc.winerror == pio.ERROR_HANDLE_DISK_FULL  # type: ignore[attr-defined]  # set afterwards


def test_win_positional_io(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    fd = win.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        big = (1 << 32) + 5  # needs OffsetHigh
        assert win.pwrite(fd, b"hello", big) == 5
        (_, args) = [c for c in k.calls if c[0] == "WriteFile"][-1]
        ov = args[4]._obj  # type: ignore[attr-defined]
        assert (ov.Offset, ov.OffsetHigh) == (5, 1)
        assert args[3] is not None  # a synchronous handle: the count comes back directly
        assert win.pread(fd, 5, big) == b"hello"
        assert win.pread(fd, 10, big + 3) == b"lo"  # short at the end
        assert win.pread(fd, 10, big + 5) == b""  # ERROR_HANDLE_EOF is the end, not an error
        assert win.pread(fd, 0, 0) == b""
        assert win.pwritev(fd, [b"ab", bytearray(b"cd"), memoryview(b"ef")], 1) == 6
        assert win.pwrite(fd, memoryview(b"xyz")[1:], 0) == 2
        assert win.pread(fd, 8, 0) == b"yzbcdef\0"
        with pytest.raises(OSError) as info:
            win.pread(fd, 1, -1)
        assert info.value.errno == errno.EINVAL
        k.fail["WriteFile"] = pio.ERROR_DISK_FULL
        with pytest.raises(OSError) as info:
            win.pwrite(fd, b"x", 0)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        win.pread(fd, 1, 0)  # get_osfhandle of a closed fd
    assert info.value.errno == errno.EBADF


def test_win_allocate_reserves_then_sets_the_size(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    fd = win.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        win.allocate(fd, 0, 10_000)
        sets = [a[1] for n, a in k.calls if n == "SetFileInformationByHandle"]
        assert sets == [pio.FILE_ALLOCATION_INFO_CLASS, pio.FILE_END_OF_FILE_INFO_CLASS]
        assert os.fstat(fd).st_size == 10_000
        k.calls.clear()
        win.allocate(fd, 0, 5_000)  # already that long: nothing, and never a truncation
        win.allocate(fd, 0, 0)
        assert not k.calls
        k.fail["alloc"] = pio.ERROR_INVALID_PARAMETER  # a file system that cannot reserve
        win.allocate(fd, 10_000, 100)
        assert os.fstat(fd).st_size == 10_100
        k.fail["alloc"] = pio.ERROR_DISK_FULL
        with pytest.raises(OSError) as info:
            win.allocate(fd, 0, 20_000)
        assert info.value.errno == errno.ENOSPC
        k.fail = {"eof": pio.ERROR_DISK_FULL}
        with pytest.raises(OSError) as info:
            win.allocate(fd, 0, 20_000)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_win_open_flags_and_refusals(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    d = win.open_dir(str(tmp_path))
    assert d == str(tmp_path) and win.close_dir(d) is None
    fd = win.open_at(d, "f", os.O_RDWR | os.O_CREAT | os.O_EXCL | win.O_CLOEXEC | win.O_NOFOLLOW, 0o600)
    os.close(fd)
    (_, args) = [c for c in k.calls if c[0] == "CreateFileW"][-1]
    path, access, share, _sa, disposition, attributes, _tmpl = args
    assert path == str(tmp_path / "f")
    assert access == pio.GENERIC_READ | pio.GENERIC_WRITE
    assert share & pio.FILE_SHARE_DELETE  # so the file can be unlinked while held
    assert disposition == pio.CREATE_NEW
    assert attributes == pio.FILE_ATTRIBUTE_NORMAL | pio.FILE_FLAG_OPEN_REPARSE_POINT
    with pytest.raises(FileExistsError):
        win.open_at(d, "f", os.O_RDWR | os.O_CREAT | os.O_EXCL)
    with pytest.raises(FileNotFoundError):
        win.open_at(d, "missing", os.O_RDONLY)
    fd = win.open_at(None, str(tmp_path / "f"), os.O_RDONLY | win.O_NONBLOCK)
    os.close(fd)
    (_, args) = [c for c in k.calls if c[0] == "CreateFileW"][-1]
    assert args[1] == pio.GENERIC_READ and args[4] == pio.OPEN_EXISTING
    # read-only opens take backup semantics, so a directory opens as it does with POSIX's O_RDONLY
    assert args[5] == pio.FILE_ATTRIBUTE_NORMAL | pio.FILE_FLAG_BACKUP_SEMANTICS
    (tmp_path / "sub").mkdir()
    fd = win.open_at(d, "sub", os.O_RDONLY | win.O_NOFOLLOW)
    try:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    with pytest.raises(PermissionError):  # Windows' answer where POSIX says EISDIR
        win.open_at(d, "sub", os.O_RDWR)
    os.symlink("f", tmp_path / "link")
    before = set(k.handles)
    with pytest.raises(OSError) as info:
        win.open_at(d, "link", os.O_RDONLY | win.O_NOFOLLOW)
    assert info.value.errno == errno.ELOOP
    assert set(k.handles) == before  # the handle was closed
    fd = win.open_at(d, "ro", os.O_RDWR | os.O_CREAT, 0o400)  # no write bit: a read-only file
    os.close(fd)
    assert [c for c in k.calls if c[0] == "CreateFileW"][-1][1][5] == pio.FILE_ATTRIBUTE_READONLY
    assert win.stat_at(d, "link").st_mode & stat.S_IFLNK == stat.S_IFLNK
    win.unlink_at(d, "link")
    assert not os.path.lexists(tmp_path / "link")
    with pytest.raises(NotADirectoryError):
        win.open_dir(str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError):
        win.open_dir(str(tmp_path / "nope"))


def test_win_locks_sit_far_past_the_end(tmp_path: Path, win: pio.Win32Files) -> None:
    """The owner's exclusive lock keeps others from locking, not from reading
    the header; shared locks do not see each other; closing releases."""
    k = _k(win)
    path = str(tmp_path / "f")
    owner = win.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    reader = win.open(path, os.O_RDONLY)
    other = win.open(path, os.O_RDONLY)
    try:
        win.pwrite(owner, b"header", 0)
        assert win.try_lock_exclusive(owner)
        (_, args) = [c for c in k.calls if c[0] == "LockFileEx"][-1]
        ov = args[5]._obj  # type: ignore[attr-defined]
        assert (ov.Offset | ov.OffsetHigh << 32) == pio.LOCK_OFFSET == 1 << 62
        assert args[1] == pio.LOCKFILE_EXCLUSIVE_LOCK | pio.LOCKFILE_FAIL_IMMEDIATELY and args[3:5] == (1, 0)
        assert win.pread(reader, 6, 0) == b"header"  # mandatory locks, but not on the header
        assert not win.try_lock_shared(reader)
        assert not win.try_lock_exclusive(other)
        win.unlock(owner)
        assert win.try_lock_shared(reader) and win.try_lock_shared(other)
        assert not win.try_lock_exclusive(owner)
        win.unlock(reader)
        win.unlock(other)
        assert win.try_lock_exclusive(owner)
    finally:
        for fd in (owner, reader, other):
            os.close(fd)
    again = win.open(path, os.O_RDONLY)
    try:
        assert win.try_lock_exclusive(again)  # the closed owner's lock went with its handle
    finally:
        os.close(again)


def test_the_fake_enforces_windows_mandatory_locks(tmp_path: Path, win: pio.Win32Files) -> None:
    """Why the lock moved: a lock on byte 0 (the old msvcrt.locking place)
    would make the header unreadable to everyone but the owner."""
    k = _k(win)
    path = str(tmp_path / "f")
    owner = win.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    reader = win.open(path, os.O_RDONLY)
    try:
        win.pwrite(owner, b"header", 0)
        _ofd(k.handles[k.by_fd[owner]], fcntl.F_OFD_SETLK, fcntl.F_WRLCK, 0, 1)
        with pytest.raises(OSError) as info:
            win.pread(reader, 6, 0)
        assert info.value.winerror == pio.ERROR_LOCK_VIOLATION  # type: ignore[attr-defined]
        assert win.pread(owner, 6, 0) == b"header"
    finally:
        os.close(owner)
        os.close(reader)


def test_win_disk_usage(tmp_path: Path, win: pio.Win32Files) -> None:
    got = win.disk_usage(str(tmp_path))
    assert got == pio.disk_usage(str(tmp_path))  # the same answer as statvfs


def test_winplatform_locks_follow_the_binding(over_win32: pio.Win32Files, tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    a = over_win32.open(path, os.O_RDWR | os.O_CREAT)
    b = over_win32.open(path, os.O_RDWR)
    try:
        assert wp.try_lock_exclusive(a)
        assert not wp.try_lock_shared(b)
        wp.unlock(a)
        assert wp.try_lock_shared(b)
    finally:
        os.close(a)
        os.close(b)
    assert any(n == "LockFileEx" for n, _ in _k(over_win32).calls)


# ------------------------------------ host filesystem primitives (hostfs)


def test_win_struct_layouts_are_windows_64_bit() -> None:
    """FILE_RENAME_INFO and FILE_ID_DESCRIPTOR as 64-bit Windows lays them
    out (this machine's pointers are 64-bit too, so ctypes computes the
    same offsets): a wrong offset would rename to garbage or open nothing."""
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("the offsets below are those of a 64-bit process")
    k = FakeKernel32()
    win = pio.Win32Files(k, FakeMsvcrt(k), lambda: k.last_error)
    rename = win.FILE_RENAME_INFO
    offsets = {name: getattr(rename, name).offset for name in ("Flags", "ReplaceIfExists", "RootDirectory")}
    assert offsets == {"Flags": 0, "ReplaceIfExists": 0, "RootDirectory": 8}
    assert (rename.FileNameLength.offset, rename.FileName.offset, ctypes.sizeof(rename)) == (16, 20, 24)
    assert rename.FileName.size == 2  # one WCHAR
    desc = win.FILE_ID_DESCRIPTOR
    assert (desc.dwSize.offset, desc.Type.offset) == (0, 4)
    assert (desc.FileId.offset, desc.ObjectId.offset, desc.ExtendedFileId.offset) == (8, 8, 8)
    assert (desc.FileId.size, desc.ObjectId.size, desc.ExtendedFileId.size) == (8, 16, 16)
    assert ctypes.sizeof(desc) == 24  # the union is as large as its largest member, FILE_ID_128
    assert win.FILE_RENAME_INFO.FileNameLength.size == 4 and win.FILE_ID_DESCRIPTOR.Type.size == 4


def test_win_open_directory(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    fd = win.open_directory(str(tmp_path / "d"))
    try:
        assert stat.S_ISDIR(os.fstat(fd).st_mode) and os.listdir(fd) == ["x"]
        (_, args) = [c for c in k.calls if c[0] == "CreateFileW"][-1]
        path, access, share, sa, disposition, flags, template = args
        assert path == str(tmp_path / "d") and sa is None and template is None
        assert access == pio.FILE_READ_ATTRIBUTES | pio.FILE_LIST_DIRECTORY | pio.FILE_TRAVERSE | (
            pio.SYNCHRONIZE | pio.READ_CONTROL
        )
        assert share == pio.FILE_SHARE_READ | pio.FILE_SHARE_WRITE | pio.FILE_SHARE_DELETE
        assert disposition == pio.OPEN_EXISTING
        assert flags == pio.FILE_FLAG_BACKUP_SEMANTICS | pio.FILE_FLAG_OPEN_REPARSE_POINT
        assert _win_msvcrt_flags(win)[-1] == 0
    finally:
        os.close(fd)
    before = set(k.handles)
    with pytest.raises(NotADirectoryError):
        win.open_directory(str(tmp_path / "d" / "x"))
    os.symlink("d", tmp_path / "link")
    with pytest.raises(OSError) as info:
        win.open_directory(str(tmp_path / "link"))  # a symlink to a directory: not followed
    assert info.value.errno == errno.ELOOP
    assert set(k.handles) == before  # both handles were closed
    with pytest.raises(FileNotFoundError):
        win.open_directory(str(tmp_path / "missing"))
    # the fake keeps Windows' rule: no directory without backup semantics
    with pytest.raises(PermissionError):
        win.open(str(tmp_path / "d"), os.O_RDWR)


def test_win_directory_fd_follows_its_directory(tmp_path: Path, win: pio.Win32Files) -> None:
    """What hostfs builds on: a held directory's current path after a rename,
    and the directory reopened by its file id."""
    (tmp_path / "a").mkdir()
    fd = win.open_directory(str(tmp_path / "a"))
    try:
        assert win.final_path(fd) == str(tmp_path / "a")
        win.rename(str(tmp_path / "a"), str(tmp_path / "b"), False)
        assert win.final_path(fd) == str(tmp_path / "b")
        (tmp_path / "b" / "child").write_text("c")
        assert os.path.exists(os.path.join(win.final_path(fd), "child"))
        again = win.open_by_id(fd, os.stat(tmp_path / "b").st_ino, True)
        try:
            assert os.path.samestat(os.fstat(again), os.fstat(fd))
            assert win.final_path(again) == str(tmp_path / "b")
        finally:
            os.close(again)
    finally:
        os.close(fd)


def test_win_final_path_grows_its_buffer_and_keeps_the_prefix(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    fd = win.open_directory(str(tmp_path))
    try:
        handle = k.by_fd[fd]
        unc = "\\\\?\\UNC\\server\\share\\" + "\\".join(["deep"] * 200)  # longer than the first buffer
        k.final_names[handle] = unc
        k.calls.clear()
        assert win.final_path(fd) == unc  # as Windows gives it: no prefix stripped
        sizes = [args[2] for name, args in k.calls if name == "GetFinalPathNameByHandleW"]
        assert sizes == [512, len(unc) + 1]  # then exactly the size asked, NUL included
        k.final_names[handle] = "\\\\?\\C:\\data"
        assert win.final_path(fd) == "\\\\?\\C:\\data"
        k.fail["GetFinalPathNameByHandleW"] = pio.ERROR_ACCESS_DENIED  # 0 is failure
        with pytest.raises(PermissionError):
            win.final_path(fd)
    finally:
        os.close(fd)


def test_win_open_by_id(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    k.volume = str(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"data")
    os.symlink("f", tmp_path / "link")
    hint = win.open_directory(str(tmp_path))
    try:
        d_id, f_id = os.stat(tmp_path / "d").st_ino, os.stat(tmp_path / "f").st_ino
        fd = win.open_by_id(hint, d_id, True)
        os.close(fd)
        (_, args) = [c for c in k.calls if c[0] == "OpenFileById"][-1]
        volume_hint, desc, access, share, sa, flags = args
        assert volume_hint == k.by_fd[hint] and sa is None
        d = desc._obj  # type: ignore[attr-defined]
        assert (d.dwSize, d.Type, d.FileId) == (24, pio.FILE_ID_TYPE_FILE_ID, d_id)
        assert access == pio._DIRECTORY_ACCESS
        assert share == pio.FILE_SHARE_READ | pio.FILE_SHARE_WRITE | pio.FILE_SHARE_DELETE
        assert flags == pio.FILE_FLAG_BACKUP_SEMANTICS | pio.FILE_FLAG_OPEN_REPARSE_POINT
        fd = win.open_by_id(hint, f_id, False)
        try:
            assert win.pread(fd, 4, 0) == b"data"
        finally:
            os.close(fd)
        assert [c for c in k.calls if c[0] == "OpenFileById"][-1][1][2] == (
            pio.GENERIC_READ | pio.FILE_READ_ATTRIBUTES
        )
        before = set(k.handles)
        with pytest.raises(NotADirectoryError):
            win.open_by_id(hint, f_id, True)
        with pytest.raises(IsADirectoryError):
            win.open_by_id(hint, d_id, False)
        with pytest.raises(OSError) as info:
            win.open_by_id(hint, os.lstat(tmp_path / "link").st_ino, False)
        assert info.value.errno == errno.ELOOP
        assert set(k.handles) == before  # every refused handle was closed
        (tmp_path / "d").rmdir()
        with pytest.raises(FileNotFoundError) as gone:  # NTFS: ERROR_INVALID_PARAMETER for a deleted id
            win.open_by_id(hint, d_id, True)
        assert gone.value.errno == errno.ENOENT and getattr(gone.value, "winerror", None) is None
        k.fail["OpenFileById"] = pio.ERROR_ACCESS_DENIED  # e.g. pending deletion
        with pytest.raises(PermissionError):
            win.open_by_id(hint, f_id, False)
    finally:
        os.close(hint)


def test_win_open_by_id_passes_every_id_bit(tmp_path: Path, win: pio.Win32Files) -> None:
    """NTFS ids with the top bit set go as the same 64 bits; ids beyond 64
    bits (ReFS, Python 3.12's st_ino) as a little-endian FILE_ID_128."""
    k = _k(win)
    hint = win.open_directory(str(tmp_path))
    try:
        for file_id in ((1 << 63) | 0x1234, (1 << 64) - 1, (0xAB << 120) | (1 << 64) | 5):
            with pytest.raises(FileNotFoundError):
                win.open_by_id(hint, file_id, True)
            raw = bytes([c for c in k.calls if c[0] == "OpenFileById"][-1][1][1]._obj)  # type: ignore[attr-defined]
            kind = struct.unpack_from("<i", raw, 4)[0]
            if file_id < 1 << 64:
                assert kind == pio.FILE_ID_TYPE_FILE_ID and struct.unpack_from("<Q", raw, 8)[0] == file_id
            else:
                assert kind == pio.FILE_ID_TYPE_EXTENDED and int.from_bytes(raw[8:24], "little") == file_id
        for bad in (-1, 1 << 128):
            with pytest.raises(OSError) as info:
                win.open_by_id(hint, bad, True)
            assert info.value.errno == errno.EINVAL
    finally:
        os.close(hint)


def _rename_calls(k: FakeKernel32) -> list[tuple[int, bytes]]:
    """(class, FILE_RENAME_INFO bytes) of each rename SetFileInformationByHandle,
    as they were at the call (the buffer is reused for the fallback)."""
    return k.renames


def test_win_rename(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    old, new = tmp_path / "old", tmp_path / "new é😀"
    old.write_text("1")
    before = set(k.handles)
    win.rename(str(old), str(new), False)
    assert new.read_text() == "1" and not old.exists()
    (_, args) = [c for c in k.calls if c[0] == "CreateFileW"][-1]
    assert args[1] == pio.DELETE | pio.SYNCHRONIZE and args[4] == pio.OPEN_EXISTING
    assert args[5] == pio.FILE_FLAG_BACKUP_SEMANTICS | pio.FILE_FLAG_OPEN_REPARSE_POINT
    [(cls, raw)] = _rename_calls(k)
    name = str(new).encode("utf-16-le")  # the emoji is a surrogate pair: 4 bytes
    assert cls == pio.FILE_RENAME_INFO_EX_CLASS
    assert struct.unpack_from("<IQI", raw, 0)[0] == pio.FILE_RENAME_FLAG_POSIX_SEMANTICS
    assert struct.unpack_from("<I", raw, 16)[0] == len(name) and raw[20 : 20 + len(name)] == name
    assert len(raw) == 20 + len(name) + 2
    old.write_text("2")
    with pytest.raises(FileExistsError) as info:
        win.rename(str(old), str(new), False)
    assert info.value.winerror == pio.ERROR_ALREADY_EXISTS  # type: ignore[attr-defined]
    assert (info.value.filename, info.value.filename2) == (str(old), str(new))
    assert new.read_text() == "1" and old.read_text() == "2"
    k.renames.clear()
    win.rename(str(old), str(new), True)
    assert new.read_text() == "2" and not old.exists()
    assert struct.unpack_from("<I", _rename_calls(k)[0][1], 0)[0] == (
        pio.FILE_RENAME_FLAG_POSIX_SEMANTICS | pio.FILE_RENAME_FLAG_REPLACE_IF_EXISTS
    )
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside").write_text("i")
    win.rename(str(tmp_path / "dir"), str(tmp_path / "moved"), False)
    assert (tmp_path / "moved" / "inside").read_text() == "i"
    os.symlink("new é😀", tmp_path / "link")
    win.rename(str(tmp_path / "link"), str(tmp_path / "link2"), False)  # the link itself, not its target
    assert os.readlink(tmp_path / "link2") == "new é😀" and new.read_text() == "2"
    with pytest.raises(FileNotFoundError):
        win.rename(str(tmp_path / "missing"), str(tmp_path / "x"), False)
    k.calls.clear()
    with pytest.raises(OSError) as info:
        win.rename(str(new), "relative", False)
    assert info.value.errno == errno.EINVAL and not k.calls  # refused before anything is opened
    assert set(k.handles) == before  # every handle was closed, failures included


@pytest.mark.parametrize(
    "refusal", [pio.ERROR_INVALID_PARAMETER, pio.ERROR_NOT_SUPPORTED, pio.ERROR_INVALID_FUNCTION]
)
def test_win_rename_falls_back_to_file_rename_info(tmp_path: Path, win: pio.Win32Files, refusal: int) -> None:
    """Where FileRenameInfoEx is unknown, FileRenameInfo with a BOOLEAN
    ReplaceIfExists in the same buffer, once."""
    k = _k(win)
    k.fail["renameex"] = refusal
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text("1")
    new.write_text("0")
    with pytest.raises(FileExistsError):
        win.rename(str(old), str(new), False)
    assert [cls for cls, _ in _rename_calls(k)] == [22, 3]
    assert _rename_calls(k)[-1][1][:4] == b"\0\0\0\0"  # ReplaceIfExists FALSE, no Flags left
    k.renames.clear()
    win.rename(str(old), str(new), True)
    assert new.read_text() == "1"
    [(_, ex), (_, plain)] = _rename_calls(k)
    assert ex[:4] == b"\3\0\0\0" and plain[:4] == b"\1\0\0\0" and ex[4:] == plain[4:]


def test_win_rename_does_not_retry_other_errors(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    k.fail["renameex"] = pio.ERROR_ACCESS_DENIED
    (tmp_path / "old").write_text("1")
    with pytest.raises(PermissionError):
        win.rename(str(tmp_path / "old"), str(tmp_path / "new"), False)
    assert [cls for cls, _ in _rename_calls(k)] == [22]


def _sid(*sub: int, authority: int = 5) -> bytes:
    return struct.pack("<BB", 1, len(sub)) + authority.to_bytes(6, "big") + struct.pack(f"<{len(sub)}I", *sub)


def _descriptor(aces: int) -> bytes:
    """A self-relative descriptor: owner, group, a DACL of ``aces`` ACEs."""
    owner, group = _sid(32, 544), _sid(18)
    ace_sid = _sid(21, 1, 2, 3, 1001)
    # ACCESS_ALLOWED_ACE (type 0) granting FILE_ALL_ACCESS
    ace = struct.pack("<BBHI", 0, 0, 8 + len(ace_sid), 0x1F01FF) + ace_sid
    acl = struct.pack("<BBHHH", 2, 0, 8 + aces * len(ace), aces, 0) + ace * aces
    control = pio.SE_SELF_RELATIVE | pio.SE_DACL_PRESENT
    o_owner = 20
    o_group = o_owner + len(owner)
    o_dacl = o_group + len(group)
    return struct.pack("<BBHIIII", 1, 0, control, o_owner, o_group, 0, o_dacl) + owner + group + acl


def test_win_security_descriptors(tmp_path: Path, win: pio.Win32Files) -> None:
    a = _a(win)
    path = str(tmp_path / "f")
    Path(path).write_text("x")
    info = pio.OWNER_SECURITY_INFORMATION | pio.GROUP_SECURITY_INFORMATION | pio.DACL_SECURITY_INFORMATION
    assert win.get_security(path, info) == FakeAdvapi32.EMPTY_SD
    big = _descriptor(40)  # larger than the first buffer
    assert len(big) > 512
    win.set_security(path, info, big)
    a.calls.clear()
    assert win.get_security(path, info) == big
    sizes = [args[3] for name, args in a.calls if name == "GetFileSecurityW"]
    assert sizes == [512, len(big)]  # ERROR_INSUFFICIENT_BUFFER, then the length it reported
    assert all(args[0] == path and args[1] == info for _, args in a.calls)
    with pytest.raises(PermissionError):  # the SACL without SeSecurityPrivilege
        win.get_security(path, info | pio.SACL_SECURITY_INFORMATION)
    with pytest.raises(FileNotFoundError):
        win.get_security(str(tmp_path / "missing"), info)
    with pytest.raises(FileNotFoundError):
        win.set_security(str(tmp_path / "missing"), info, big)


def test_win_set_security_refuses_what_windows_would_read_past(tmp_path: Path, win: pio.Win32Files) -> None:
    """SetFileSecurityW reads the descriptor through a bare pointer: anything
    not self-relative, or with a part beyond the bytes given, never reaches it."""
    a = _a(win)
    path = str(tmp_path / "f")
    Path(path).write_text("x")
    good = _descriptor(2)
    pio.check_self_relative_sd(good)
    pio.check_self_relative_sd(FakeAdvapi32.EMPTY_SD)
    header = struct.Struct("<BBHIIII")
    _r, _s, control, o_owner, o_group, _o_sacl, o_dacl = header.unpack_from(good)
    bad = {
        "short": good[:19],
        "revision": bytes([2]) + good[1:],
        "absolute": header.pack(1, 0, control & ~pio.SE_SELF_RELATIVE, o_owner, o_group, 0, o_dacl)
        + good[20:],
        "owner past the end": header.pack(1, 0, control, len(good) - 4, o_group, 0, o_dacl) + good[20:],
        "SID longer than the bytes": good[: o_group + 8],  # the group's subauthorities cut off
        "DACL past the end": good[:-1],
        "DACL offset past the end": header.pack(1, 0, control, o_owner, o_group, 0, len(good)) + good[20:],
    }
    for why, sd in bad.items():
        with pytest.raises(OSError) as info:
            win.set_security(path, pio.DACL_SECURITY_INFORMATION, sd)
        assert info.value.errno == errno.EINVAL, why
    assert not [c for c in a.calls if c[0] == "SetFileSecurityW"]
    # a DACL offset with SE_DACL_PRESENT clear is not read, so not checked
    pio.check_self_relative_sd(header.pack(1, 0, pio.SE_SELF_RELATIVE, 0, 0, 0, 999))


def test_win_security_needs_advapi32(tmp_path: Path) -> None:
    k = FakeKernel32()
    win = pio.Win32Files(k, FakeMsvcrt(k), lambda: k.last_error)
    for call in (lambda: win.get_security(str(tmp_path), 7), lambda: win.set_security(str(tmp_path), 7, b"")):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.ENOTSUP


def test_win_set_hidden_system(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    area = tmp_path / ".vspfs-retained"
    area.mkdir()
    win.set_hidden_system(str(area))
    sets = [args for name, args in k.calls if name == "SetFileAttributesW"]
    assert sets == [
        (str(area), pio.FILE_ATTRIBUTE_DIRECTORY | pio.FILE_ATTRIBUTE_HIDDEN | pio.FILE_ATTRIBUTE_SYSTEM)
    ]
    assert k.do_GetFileAttributesW(str(area)) & (pio.FILE_ATTRIBUTE_HIDDEN | pio.FILE_ATTRIBUTE_SYSTEM) == 6
    k.calls.clear()
    win.set_hidden_system(str(area))  # already both: nothing written
    assert [name for name, _ in k.calls] == ["GetFileAttributesW"]
    plain = tmp_path / "plain"
    plain.write_text("p")
    win.set_hidden_system(str(plain))  # FILE_ATTRIBUTE_NORMAL is valid only alone: dropped
    assert [args for name, args in k.calls if name == "SetFileAttributesW"][-1][1] == 6
    with pytest.raises(FileNotFoundError):
        win.set_hidden_system(str(tmp_path / "missing"))


def test_win_set_attributes(tmp_path: Path, win: pio.Win32Files) -> None:
    """Only SetFileAttributesW's settable bits are passed; none of them is
    FILE_ATTRIBUTE_NORMAL; states it cannot set are left out, not refused."""
    k = _k(win)
    f = tmp_path / "f"
    f.write_text("f")
    hidden_system = pio.FILE_ATTRIBUTE_HIDDEN | pio.FILE_ATTRIBUTE_SYSTEM
    states = pio.FILE_ATTRIBUTE_DIRECTORY | pio.FILE_ATTRIBUTE_REPARSE_POINT | 0x200 | 0x800 | 0x4000
    win.set_attributes(str(f), hidden_system | pio.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED | states)
    win.set_attributes(str(f), pio.FILE_ATTRIBUTE_NORMAL)  # nothing settable: all cleared
    win.set_attributes(str(f), pio.SETTABLE_ATTRIBUTES)
    sets = [args for name, args in k.calls if name == "SetFileAttributesW"]
    assert sets == [
        (str(f), hidden_system | pio.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED),
        (str(f), pio.FILE_ATTRIBUTE_NORMAL),
        (str(f), 0x3127),
    ]
    assert k.do_GetFileAttributesW(str(f)) == 0x3127
    with pytest.raises(FileNotFoundError):
        win.set_attributes(str(tmp_path / "missing"), hidden_system)
    k.calls.clear()
    for bad in (-1, 1 << 32):
        with pytest.raises(OSError) as info:
            win.set_attributes(str(f), bad)
        assert info.value.errno == errno.EINVAL
    assert k.calls == []


def test_win_set_creation_time(tmp_path: Path, win: pio.Win32Files) -> None:
    """CreateFileW for FILE_WRITE_ATTRIBUTES only, sharing all, not following
    a reparse point and able to open a directory; SetFileTime with the
    creation time alone; the handle closed whatever happens."""
    k = _k(win)
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("f")
    os.symlink("f", tmp_path / "link")
    ft = 0x01D9_0000_1234_5678  # above 2**32: both halves matter
    for name in ("f", "d", "link"):
        win.set_creation_time(str(tmp_path / name), ft + len(name))
        (_, args) = [c for c in k.calls if c[0] == "CreateFileW"][-1]
        path, access, share, sa, disposition, flags, template = args
        assert path == str(tmp_path / name) and sa is None and template is None
        assert (access, disposition) == (pio.FILE_WRITE_ATTRIBUTES, pio.OPEN_EXISTING)
        assert share == pio.FILE_SHARE_READ | pio.FILE_SHARE_WRITE | pio.FILE_SHARE_DELETE
        assert flags == pio.FILE_FLAG_BACKUP_SEMANTICS | pio.FILE_FLAG_OPEN_REPARSE_POINT
        st = os.lstat(tmp_path / name)  # the link itself, not its target
        assert k.creation_times[(st.st_dev, st.st_ino)] == ft + len(name)
    assert k.handles == {}  # every handle closed
    with pytest.raises(FileNotFoundError):
        win.set_creation_time(str(tmp_path / "missing"), ft)
    k.calls.clear()
    for bad in (0, -1, 1 << 63, (1 << 64) - 1):  # "unchanged", no time, no time, "stop updating"
        with pytest.raises(OSError) as info:
            win.set_creation_time(str(tmp_path / "f"), bad)
        assert info.value.errno == errno.EINVAL
    assert k.calls == []  # refused before any call


def test_win_set_creation_time_closes_the_handle_when_refused(tmp_path: Path, win: pio.Win32Files) -> None:
    k = _k(win)
    (tmp_path / "f").write_text("f")

    def refuse(handle: int, creation: Any, access: Any, write: Any) -> int:
        return int(k._error(pio.ERROR_ACCESS_DENIED))  # type: ignore[arg-type]

    k.do_SetFileTime = refuse  # type: ignore[method-assign]
    with pytest.raises(PermissionError):
        win.set_creation_time(str(tmp_path / "f"), 130_000_000_000_000_000)
    assert k.handles == {}


# ------------------------------------------- the cache file over Windows


def test_cache_file_life_over_win32(over_win32: pio.Win32Files, tmp_path: Path) -> None:
    """Create, append (single records and batches), read back, lock checks,
    stale removal and deletion while held, all through the Windows branch."""
    k = _k(over_win32)
    d = str(tmp_path)
    c = CacheFile.create(d, "snap1", "vol1", chunk_size=4096, initial_size=8192, grow_step=4096)
    try:
        assert os.path.getsize(c.path) == 8192
        meta = c.append_meta(7, b"m" * 100)
        offs = c.append_chunks(7, [(0, b"a" * 4096), (1, b"b" * 10), (2, b"c" * 4096)])
        assert c.read_data(offs[0], 4096) == b"a" * 4096
        assert c.read_data(offs[1], 10) == b"b" * 10
        assert c.read_record(meta)[3] == b"m" * 100
        assert os.path.getsize(c.path) >= c.used_bytes > 8192  # grew through SetFileInformationByHandle
        assert is_locked(c.path)
        assert read_header(c.path).snapshot_id == "snap1"  # another handle reads the header of a live file
        assert not remove_if_stale(c.path)
        assert [r.type for r in iter_records(c.path)] == [2, 1, 1, 1]  # META, then three CHUNKs
    finally:
        c.close(delete=False)
    assert not is_locked(c.path)
    assert decode_header(Path(c.path).read_bytes()[:HEADER_SIZE]).flags & FLAG_CLOSED
    assert remove_if_stale(c.path)  # unlinked while its own handle holds it (FILE_SHARE_DELETE)
    assert not os.path.exists(c.path)
    c2 = CacheFile.create(d, "snap2", "vol1")
    c2.close(delete=True)
    assert not os.path.exists(c2.path)
    names = {n for n, _ in k.calls}
    assert {"CreateFileW", "ReadFile", "WriteFile", "SetFileInformationByHandle", "LockFileEx"} <= names


def test_cache_file_overflow_over_win32(over_win32: pio.Win32Files, tmp_path: Path) -> None:
    k = _k(over_win32)
    c = CacheFile.create(str(tmp_path), "snap", "vol", chunk_size=4096, initial_size=4096, grow_step=4096)
    try:
        k.fail["alloc"] = pio.ERROR_DISK_FULL
        with pytest.raises(CacheOverflow, match="full"):
            c.append_chunk(1, 0, b"x" * 4096)
        k.fail.clear()
        with pytest.raises(CacheOverflow):  # refuses everything afterwards
            c.append_chunk(1, 1, b"y")
    finally:
        c.close(delete=True)


def test_cache_file_refuses_links_over_win32(over_win32: pio.Win32Files, tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x" * 5000)
    os.symlink("real", tmp_path / "VSP_x.vsp")
    with pytest.raises(CacheFileError, match="symbolic link"):
        read_header(str(tmp_path / "VSP_x.vsp"))
    with pytest.raises(CacheFileError, match="symbolic link"):
        remove_if_stale(str(tmp_path / "VSP_x.vsp"))


# The cache file's own test suite, once more over the Windows branch: the
# tests are collected here too and the autouse fixture below binds the layer
# to Win32Files for them. Left out, as POSIX facts: the file's mode bits
# (Windows files take their directory's ACL; the rest of that test is
# test_cache_file_life_over_win32 above), and an owner in a child process
# (which takes its lock through the real POSIX binding, not the fake).
import test_cachefile as _cachefile_tests  # noqa: E402

_POSIX_ONLY = {
    "test_create_append_read",
    "test_lock_held_by_another_process_then_its_crash",
}
small_tmpfs = _cachefile_tests.small_tmpfs


def _win32_twins() -> dict[str, Callable[..., Any]]:
    out = {}
    for name, fn in vars(_cachefile_tests).items():
        if name.startswith("test_") and callable(fn) and name not in _POSIX_ONLY:
            out[name.replace("test_", "test_cachefile_over_win32_", 1)] = fn
    return out


globals().update(_win32_twins())


@pytest.fixture(autouse=True)
def _win32_for_twins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.name.startswith("test_cachefile_over_win32_"):
        k = FakeKernel32()
        win = pio.Win32Files(k, FakeMsvcrt(k), lambda: k.last_error)
        for name in pio.BINDINGS:
            monkeypatch.setattr(pio, name, getattr(win, name))
