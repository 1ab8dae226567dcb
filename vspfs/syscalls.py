"""The few Linux system calls Python's os module does not expose.

Only ``vspfs.hostfs``'s POSIX binding calls them; the constants are shared
with its other binding, so libc is loaded on first call, not at import.

renameat2 (RENAME_NOREPLACE / RENAME_EXCHANGE), utimensat with UTIME_NOW /
UTIME_OMIT, and fallocate with a mode. They are called through ctypes so the
live view can pass an application's request through unchanged instead of
emulating it (an emulation would differ from the filesystem underneath, e.g.
in ctime, which the live view must not).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

#: the kernel's markers, carried in tv_nsec of a struct timespec
KERNEL_UTIME_NOW = (1 << 30) - 1
KERNEL_UTIME_OMIT = (1 << 30) - 2

#: the core's markers for a time given in integer nanoseconds: outside the
#: int64 range, so no real time (not even 1.073741823 s after the epoch) can
#: be mistaken for them
UTIME_NOW = 1 << 63
UTIME_OMIT = (1 << 63) + 1

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_NO_HIDE_STALE = 0x04
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
FALLOC_FL_UNSHARE_RANGE = 0x40

AT_SYMLINK_NOFOLLOW = 0x100

_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    """libc, loaded on first use: importing this module's constants must
    work where there is no libc (Windows)."""
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc_handle


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(ret: int, *names: str | bytes) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *(os.fsdecode(n) for n in names[:1]))


def renameat2(olddirfd: int, old: str, newdirfd: int, new: str, flags: int = 0) -> None:
    if flags == 0:
        os.rename(old, new, src_dir_fd=olddirfd, dst_dir_fd=newdirfd)
        return
    ret = _libc().renameat2(olddirfd, os.fsencode(old), newdirfd, os.fsencode(new), ctypes.c_uint(flags))
    _check(ret, old)


def _timespec(value_ns: int) -> _Timespec:
    if value_ns == UTIME_NOW:
        return _Timespec(0, KERNEL_UTIME_NOW)
    if value_ns == UTIME_OMIT:
        return _Timespec(0, KERNEL_UTIME_OMIT)
    sec, nsec = divmod(value_ns, 1_000_000_000)
    return _Timespec(sec, nsec)


def utimensat(dirfd: int, name: str, atime_ns: int, mtime_ns: int, *, follow_symlinks: bool = False) -> None:
    times = (_Timespec * 2)(_timespec(atime_ns), _timespec(mtime_ns))
    flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    ret = _libc().utimensat(dirfd, os.fsencode(name), times, flags)
    _check(ret, name)


def futimens(fd: int, atime_ns: int, mtime_ns: int) -> None:
    times = (_Timespec * 2)(_timespec(atime_ns), _timespec(mtime_ns))
    _check(_libc().futimens(fd, times))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    ret = _libc().fallocate(fd, ctypes.c_int(mode), ctypes.c_int64(offset), ctypes.c_int64(length))
    _check(ret)


#: f_type of a FUSE filesystem (linux/magic.h)
FUSE_SUPER_MAGIC = 0x65735546


def fs_magic(fd: int) -> int:
    """f_type of the filesystem holding ``fd`` (fstatfs; os.statvfs does not report it)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    _check(_libc().fstatfs(fd, buf))
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], sys.byteorder) & 0xFFFFFFFF
