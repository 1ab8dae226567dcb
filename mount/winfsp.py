"""The WinFsp adapter: winfspy callbacks -> vspfs core calls.

Translation only, like ``mount/fuse.py``. Every callback becomes calls on a
:class:`vspfs.volume.Volume` (the live view, read-write pass-through on a
drive letter) or a :class:`vspfs.snapshot.Snapshot` (a read-only virtual
drive), and every error becomes one NTSTATUS through :func:`ntstatus_of`,
the single table of this adapter. The reasons behind each volume parameter
and each binding trap are in ``docs/windows.md``; the short version:

* winfspy is imported lazily (:func:`load_winfspy`), so ``import mount.winfsp``
  and all translation helpers work on Linux; asking for a drive letter there
  is a MountError that says drive letters need Windows with WinFsp;
* winfspy's ``FileSystem`` insists on a ``BaseFileSystemOperations``
  instance, so the operation classes here are plain mixins that
  :func:`operations_class` puts in front of winfspy's base class once it is
  loaded (tests put them in front of a fake with winfspy's signatures);
* winfspy's own catch-all (``_catch_unhandled_exceptions``) would answer
  STATUS_UNEXPECTED_IO_ERROR with a bare "Unhandled exception"; every
  callback here goes through :func:`translated` first, so the caller gets
  the right status and the log says which operation failed and why;
* names are NT names: backslashes, case-insensitive lookup (NTFS order for
  enumeration and markers), characters Windows forbids mapped to U+F0xx;
* winfspy 0.8.4 cannot return a normalized name, set DisableCache or fill
  an IO_STATUS_BLOCK; docs/windows.md says what each of these costs.

The platform facts (paths, drive letters, FILETIME, attributes, security
descriptors, reparse data) live in :mod:`vspfs.winplatform`, pure and tested.
"""

from __future__ import annotations

import bisect
import errno
import functools
import importlib
import logging
import os
import stat as statmod
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from struct import error as struct_error
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from cachetools import LRUCache

from vspfs import winplatform as wp
from vspfs.attrs import Attr
from vspfs.errors import (
    CacheFull,
    MountError,
    NotFound,
    ProtectedName,
    ReadOnly,
    SnapshotInvalid,
    UsageError,
    VspError,
)

if TYPE_CHECKING:
    from vspfs.snapshot import Snapshot
    from vspfs.volume import Volume

__all__ = [
    "NTSTATUS_BY_ERROR",
    "LiveOperations",
    "NtStatus",
    "SnapshotOperations",
    "WinFspMount",
    "file_info",
    "live_volume_params",
    "load_winfspy",
    "mount_live",
    "mount_live_drive",
    "mount_snapshot",
    "mount_snapshot_drive",
    "ntstatus_of",
    "operations_class",
    "snapshot_label",
    "snapshot_volume_params",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# ------------------------------------------------------------------ NTSTATUS
# Values from winfspy 0.8.4 src/winfspy/plumbing/status.py (NTSTATUS enum),
# which copies ntstatus.h; kept here as plain ints so that the table below is
# importable and testable without winfspy.

STATUS_SUCCESS = 0x00000000
STATUS_REPARSE = 0x00000104
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_DEVICE_BUSY = 0x80000011
STATUS_NOT_IMPLEMENTED = 0xC0000002
STATUS_INVALID_HANDLE = 0xC0000008
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_NO_SUCH_DEVICE = 0xC000000E
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
STATUS_END_OF_FILE = 0xC0000011
STATUS_BUFFER_TOO_SMALL = 0xC0000023
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_OBJECT_NAME_INVALID = 0xC0000033
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_FILE_LOCK_CONFLICT = 0xC0000054
STATUS_LOCK_NOT_GRANTED = 0xC0000055
STATUS_DELETE_PENDING = 0xC0000056
STATUS_PRIVILEGE_NOT_HELD = 0xC0000061
STATUS_INVALID_SECURITY_DESCR = 0xC0000079
STATUS_DISK_FULL = 0xC000007F
STATUS_INVALID_VOLUME_LABEL = 0xC0000086
STATUS_FILE_INVALID = 0xC0000098
STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
STATUS_MEDIA_WRITE_PROTECTED = 0xC00000A2
STATUS_IO_TIMEOUT = 0xC00000B5
STATUS_FILE_IS_A_DIRECTORY = 0xC00000BA
STATUS_NOT_SUPPORTED = 0xC00000BB
STATUS_NOT_SAME_DEVICE = 0xC00000D4
STATUS_UNEXPECTED_IO_ERROR = 0xC00000E9
STATUS_DIRECTORY_NOT_EMPTY = 0xC0000101
STATUS_NOT_A_DIRECTORY = 0xC0000103
STATUS_NAME_TOO_LONG = 0xC0000106
STATUS_TOO_MANY_OPENED_FILES = 0xC000011F
STATUS_CANCELLED = 0xC0000120
STATUS_CANNOT_DELETE = 0xC0000121
STATUS_PIPE_BROKEN = 0xC000014B
STATUS_IO_DEVICE_ERROR = 0xC0000185
STATUS_POSSIBLE_DEADLOCK = 0xC0000194
STATUS_TOO_MANY_LINKS = 0xC0000265
STATUS_NOT_A_REPARSE_POINT = 0xC0000275
STATUS_IO_REPARSE_DATA_INVALID = 0xC0000278
STATUS_IO_REPARSE_TAG_NOT_HANDLED = 0xC0000279
STATUS_REPARSE_POINT_NOT_RESOLVED = 0xC0000280
STATUS_DISK_QUOTA_EXCEEDED = 0xC0000802
STATUS_FILE_TOO_LARGE = 0xC0000904

# FSP_FILE_SYSTEM_INTERFACE::Cleanup flags (winfspy's winfsp.cdef.h, winfsp.h)
CLEANUP_DELETE = 0x01
CLEANUP_SET_ALLOCATION_SIZE = 0x02
CLEANUP_SET_ARCHIVE_BIT = 0x10
CLEANUP_SET_LAST_ACCESS_TIME = 0x20
CLEANUP_SET_LAST_WRITE_TIME = 0x40
CLEANUP_SET_CHANGE_TIME = 0x80

# NtCreateFile CreateOptions (ntifs.h; winfspy's CREATE_FILE_CREATE_OPTIONS takes them from there)
FILE_DIRECTORY_FILE = 0x00000001
FILE_NON_DIRECTORY_FILE = 0x00000040
FILE_DELETE_ON_CLOSE = 0x00001000
FILE_OPEN_REPARSE_POINT = 0x00200000

# -------------------------------------------------------------- parameters

#: what the drives call their file system (GetVolumeInformation, Explorer's "File system")
FILE_SYSTEM_NAME = "vspfs"
#: bytes per sector and per allocation unit (AllocationSize is rounded up to this)
SECTOR_SIZE = 4096
ALLOCATION_UNIT = SECTOR_SIZE
#: WinFsp's FileInfoTimeout meaning "cache forever" (INFINITE): a snapshot never changes
INFINITE = 0xFFFFFFFF
#: how long a snapshot drive's volume info (free space) may be cached, ms
SNAPSHOT_VOLUME_INFO_TIMEOUT = 1000
#: longest volume label: FSP_FSCTL_VOLUME_INFO.VolumeLabel is WCHAR[32]
MAX_LABEL = 32
#: the pseudo extended attribute that carries a file's Windows security descriptor
#: (self-relative bytes). The name is ntfs-3g's, which serves exactly this on
#: Linux-mounted NTFS; a Windows core would map it to Get/SetFileSecurityW.
SECURITY_XATTR = "system.ntfs_acl"

_INFO_KEYS = (
    "file_attributes",
    "reparse_tag",
    "allocation_size",
    "file_size",
    "creation_time",
    "last_access_time",
    "last_write_time",
    "change_time",
    "index_number",
)

# ------------------------------------------------------------ loading winfspy

_REQUIRED = ("FileSystem", "BaseFileSystemOperations", "NTStatusError")


def load_winfspy() -> ModuleType:
    """The winfspy module, or MountError saying what this machine lacks.

    Never imported at module load: the core, the CLI and these translation
    helpers must work where winfspy cannot exist (it needs Windows, WinFsp's
    DLL and the registry). An already-imported ``winfspy`` (the real one, or
    the tests' fake) is used as is.
    """
    mod = sys.modules.get("winfspy")
    if mod is None:
        if sys.platform != "win32":
            raise MountError(
                f"drive letters need Windows with WinFsp and winfspy (this is {sys.platform}): "
                "on Linux, mount snapshots on a directory (vspfs mount SNAPSHOT DIR)"
            )
        try:
            mod = importlib.import_module("winfspy")
        except ImportError as exc:
            raise MountError(
                f"winfspy is not installed ({exc}): pip install winfspy, after installing WinFsp "
                "(choco install winfsp, or the installer from winfsp.dev)"
            ) from None
        except (RuntimeError, OSError) as exc:
            # winfspy.plumbing raises RuntimeError when WinFsp's DLL or registry key is missing
            raise MountError(
                f"WinFsp cannot be loaded ({exc}): install WinFsp (choco install winfsp, or the "
                "installer from winfsp.dev) or set WINFSP_LIBRARY_PATH"
            ) from None
    missing = [name for name in _REQUIRED if not hasattr(mod, name)]
    if missing:
        raise MountError(f"winfspy lacks {', '.join(missing)}: install winfspy 0.8.4 or later")
    return mod


def _plumbing() -> Any:
    """``winfspy.plumbing`` (ffi and lib) for the few raw pointers winfspy hands over."""
    mod = sys.modules.get("winfspy.plumbing")
    if mod is None:
        load_winfspy()
        mod = importlib.import_module("winfspy.plumbing")
    return mod


_class_lock = threading.Lock()
_classes: dict[tuple[type, int], type] = {}


def operations_class(mixin: type, winfspy: ModuleType | None = None) -> type:
    """``mixin`` in front of winfspy's BaseFileSystemOperations (built once per pair).

    winfspy's FileSystem refuses anything that is not a
    BaseFileSystemOperations instance, and its ``ll_*`` methods (which
    convert the C arguments and call ours) live in that base class.
    """
    mod = winfspy or load_winfspy()
    base = mod.BaseFileSystemOperations
    key = (mixin, id(base))
    with _class_lock:
        cls = _classes.get(key)
        if cls is None:
            cls = type(mixin.__name__, (mixin, base), {"__module__": __name__})
            _classes[key] = cls
    return cls


# ------------------------------------------------------------ NTSTATUS table


class NtStatus(Exception):
    """An NTSTATUS the adapter decided itself (end of file, reparse ...).

    Turned into winfspy's NTStatusError by :func:`translated`; a plain
    exception here so that the adapter's logic runs without winfspy.
    """

    def __init__(self, value: int, why: str = "") -> None:
        super().__init__(value, why)
        self.value = value
        self.why = why


class _PathNotFound(FileNotFoundError):
    """A directory on the way to a name is missing (STATUS_OBJECT_PATH_NOT_FOUND)."""


def _winerror(code: int) -> tuple[str, int]:
    return ("winerror", code)


#: THE mapping of this adapter, beside mount/fuse.py's errno table. Rows of three kinds:
#:
#: - an error class (vspfs.errors and the adapter's own): the nearest listed base wins;
#: - an errno value: an OSError from the backing file system (the live view must say
#:   what the file system said) or from the snapshot view;
#: - ("winerror", code): an OSError raised on Windows, whose winerror is more exact
#:   than the errno Python derives from it (ERROR_SHARING_VIOLATION becomes EACCES).
#:
#: Anything else becomes STATUS_UNEXPECTED_IO_ERROR plus a log line (ntstatus_of).
NTSTATUS_BY_ERROR: dict[object, int] = {
    # vspfs domain errors (docs/engine-api.md)
    SnapshotInvalid: STATUS_UNEXPECTED_IO_ERROR,
    CacheFull: STATUS_DISK_FULL,
    ProtectedName: STATUS_ACCESS_DENIED,
    ReadOnly: STATUS_MEDIA_WRITE_PROTECTED,
    NotFound: STATUS_OBJECT_NAME_NOT_FOUND,
    # the adapter's own
    _PathNotFound: STATUS_OBJECT_PATH_NOT_FOUND,
    wp.SecurityDescriptorError: STATUS_INVALID_SECURITY_DESCR,
    UnicodeError: STATUS_OBJECT_NAME_INVALID,
    # errno (symbolic: the numbers differ between Linux and Windows' CRT)
    errno.EPERM: STATUS_ACCESS_DENIED,
    errno.ENOENT: STATUS_OBJECT_NAME_NOT_FOUND,
    errno.EIO: STATUS_IO_DEVICE_ERROR,
    errno.ENXIO: STATUS_NO_SUCH_DEVICE,
    errno.EBADF: STATUS_INVALID_HANDLE,
    errno.ENOMEM: STATUS_INSUFFICIENT_RESOURCES,
    errno.EACCES: STATUS_ACCESS_DENIED,
    errno.EBUSY: STATUS_DEVICE_BUSY,
    errno.EEXIST: STATUS_OBJECT_NAME_COLLISION,
    errno.EXDEV: STATUS_NOT_SAME_DEVICE,
    errno.ENODEV: STATUS_NO_SUCH_DEVICE,
    errno.ENOTDIR: STATUS_OBJECT_PATH_NOT_FOUND,
    errno.EISDIR: STATUS_FILE_IS_A_DIRECTORY,
    errno.EINVAL: STATUS_INVALID_PARAMETER,
    errno.ENFILE: STATUS_TOO_MANY_OPENED_FILES,
    errno.EMFILE: STATUS_TOO_MANY_OPENED_FILES,
    errno.ETXTBSY: STATUS_SHARING_VIOLATION,
    errno.EFBIG: STATUS_FILE_TOO_LARGE,
    errno.ENOSPC: STATUS_DISK_FULL,
    errno.ESPIPE: STATUS_INVALID_PARAMETER,
    errno.EROFS: STATUS_MEDIA_WRITE_PROTECTED,
    errno.EMLINK: STATUS_TOO_MANY_LINKS,
    errno.EPIPE: STATUS_PIPE_BROKEN,
    errno.EDEADLK: STATUS_POSSIBLE_DEADLOCK,
    errno.ENAMETOOLONG: STATUS_NAME_TOO_LONG,
    errno.ENOLCK: STATUS_LOCK_NOT_GRANTED,
    errno.ENOSYS: STATUS_NOT_IMPLEMENTED,
    errno.ENOTEMPTY: STATUS_DIRECTORY_NOT_EMPTY,
    errno.ELOOP: STATUS_REPARSE_POINT_NOT_RESOLVED,
    errno.EINTR: STATUS_CANCELLED,
    errno.ETIMEDOUT: STATUS_IO_TIMEOUT,
    errno.ENOTSUP: STATUS_NOT_SUPPORTED,
    errno.EOPNOTSUPP: STATUS_NOT_SUPPORTED,
    errno.ESTALE: STATUS_FILE_INVALID,
    errno.EDQUOT: STATUS_DISK_QUOTA_EXCEEDED,
    # Windows system error codes (winerror.h)
    _winerror(2): STATUS_OBJECT_NAME_NOT_FOUND,  # ERROR_FILE_NOT_FOUND
    _winerror(3): STATUS_OBJECT_PATH_NOT_FOUND,  # ERROR_PATH_NOT_FOUND
    _winerror(5): STATUS_ACCESS_DENIED,  # ERROR_ACCESS_DENIED
    _winerror(6): STATUS_INVALID_HANDLE,  # ERROR_INVALID_HANDLE
    _winerror(17): STATUS_NOT_SAME_DEVICE,  # ERROR_NOT_SAME_DEVICE
    _winerror(19): STATUS_MEDIA_WRITE_PROTECTED,  # ERROR_WRITE_PROTECT
    _winerror(32): STATUS_SHARING_VIOLATION,  # ERROR_SHARING_VIOLATION
    _winerror(33): STATUS_FILE_LOCK_CONFLICT,  # ERROR_LOCK_VIOLATION
    _winerror(38): STATUS_END_OF_FILE,  # ERROR_HANDLE_EOF
    _winerror(39): STATUS_DISK_FULL,  # ERROR_HANDLE_DISK_FULL
    _winerror(80): STATUS_OBJECT_NAME_COLLISION,  # ERROR_FILE_EXISTS
    _winerror(87): STATUS_INVALID_PARAMETER,  # ERROR_INVALID_PARAMETER
    _winerror(112): STATUS_DISK_FULL,  # ERROR_DISK_FULL
    _winerror(123): STATUS_OBJECT_NAME_INVALID,  # ERROR_INVALID_NAME
    _winerror(145): STATUS_DIRECTORY_NOT_EMPTY,  # ERROR_DIR_NOT_EMPTY
    _winerror(183): STATUS_OBJECT_NAME_COLLISION,  # ERROR_ALREADY_EXISTS
    _winerror(206): STATUS_NAME_TOO_LONG,  # ERROR_FILENAME_EXCED_RANGE
    _winerror(267): STATUS_NOT_A_DIRECTORY,  # ERROR_DIRECTORY
    _winerror(303): STATUS_DELETE_PENDING,  # ERROR_DELETE_PENDING
    _winerror(1314): STATUS_PRIVILEGE_NOT_HELD,  # ERROR_PRIVILEGE_NOT_HELD
    _winerror(4390): STATUS_NOT_A_REPARSE_POINT,  # ERROR_NOT_A_REPARSE_POINT
}

_invalid_logged: set[tuple[str, str]] = set()
_invalid_lock = threading.Lock()


def _by_class(exc: BaseException) -> int | None:
    for cls in type(exc).__mro__:
        if cls in (OSError, Exception, BaseException, object):
            return None
        code = NTSTATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return None


def ntstatus_of(exc: BaseException, op: str = "operation") -> int:
    """The NTSTATUS a Windows caller sees for ``exc``: the one mapping of this adapter.

    * an adapter decision (:class:`NtStatus`, winfspy's NTStatusError): its value;
    * OSError: its winerror when listed (Windows), else its class when listed
      (the adapter's own), else its errno when listed; an unlisted errno is
      STATUS_UNEXPECTED_IO_ERROR plus an error log line naming it;
    * vspfs domain errors and the adapter's: the nearest listed base class;
      an invalid snapshot is logged with its reason, once per snapshot and
      reason (a backup reading thousands of files must not flood the log);
    * anything else is a bug: STATUS_UNEXPECTED_IO_ERROR plus a log line
      with the traceback.
    """
    value = getattr(exc, "value", None)
    if isinstance(exc, NtStatus) or (type(exc).__name__.startswith("NTStatus") and isinstance(value, int)):
        return int(value)  # type: ignore[arg-type]
    if isinstance(exc, OSError):
        win = getattr(exc, "winerror", None)
        if isinstance(win, int) and _winerror(win) in NTSTATUS_BY_ERROR:
            return NTSTATUS_BY_ERROR[_winerror(win)]
        code = _by_class(exc)
        if code is not None:
            return code
        if isinstance(exc.errno, int) and exc.errno in NTSTATUS_BY_ERROR:
            return NTSTATUS_BY_ERROR[exc.errno]
        log.error(
            "%s: %s (errno %s, winerror %s) has no NTSTATUS: returning STATUS_UNEXPECTED_IO_ERROR",
            op,
            exc,
            exc.errno,
            win,
        )
        return STATUS_UNEXPECTED_IO_ERROR
    code = _by_class(exc)
    if isinstance(exc, SnapshotInvalid):
        key = (exc.snapshot_id, exc.reason)
        with _invalid_lock:
            first = key not in _invalid_logged
            _invalid_logged.add(key)
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "%s: snapshot %s is invalid (%s): its readers get STATUS_UNEXPECTED_IO_ERROR",
            op,
            exc.snapshot_id,
            exc.reason,
        )
    if code is not None:
        return code
    if isinstance(exc, VspError):
        log.error("%s: %s: returning STATUS_UNEXPECTED_IO_ERROR", op, exc)
        return STATUS_UNEXPECTED_IO_ERROR
    log.error("%s: unexpected %s: returning STATUS_UNEXPECTED_IO_ERROR", op, type(exc).__name__, exc_info=exc)
    return STATUS_UNEXPECTED_IO_ERROR


def nt_error(status: int) -> Exception:
    """winfspy's NTStatusError(status) when winfspy is loaded; NtStatus otherwise.

    winfspy's ``ll_*`` wrappers return ``exc.value`` for any NTStatusError,
    so one class carries every status.
    """
    mod = sys.modules.get("winfspy")
    cls = getattr(mod, "NTStatusError", None) if mod is not None else None
    if cls is not None:
        return cls(status)
    return NtStatus(status)


def translated(fn: F) -> F:
    """Run one callback; turn whatever it raises into NTStatusError(ntstatus_of(...)).

    Every callback of the operation classes goes through this one wrapper,
    so winfspy's own catch-all (which would answer STATUS_UNEXPECTED_IO_ERROR
    and log only "Unhandled exception") is reached only by bugs in winfspy.
    """
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:
            raise nt_error(ntstatus_of(exc, f"{self._label}: {name}")) from None

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------ pure helpers


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


def file_info(attr: Attr, attributes: int | None = None, creation_time: int | None = None) -> dict[str, int]:
    """An Attr as winfspy's file info dict (FSP_FSCTL_FILE_INFO fields).

    - attributes: the file's own NTFS attributes when its volume carries
      them (``attributes``, from ``system.ntfs_attrib``; shown as
      :func:`vspfs.winplatform.served_attributes` says), else derived from
      the mode (:func:`vspfs.winplatform.file_attributes`);
    - sizes: a regular file's size, allocation rounded up to the allocation
      unit (WinFsp's rule: allocation >= size); 0 for directories and links
      (NTFS reports 0 for both);
    - times: FILETIME; LastWriteTime = mtime, ChangeTime = ctime, and
      CreationTime = the file's own (``creation_time``, from
      ``system.ntfs_crtime``) where its volume carries one, else the earlier
      of mtime and ctime (POSIX keeps no creation time in the core's Attr; a
      file cannot have been created after it was written);
    - IndexNumber: the inode number (the snapshot-time inode on a virtual
      drive), folded to 64 bits;
    - symlinks carry FILE_ATTRIBUTE_REPARSE_POINT and IO_REPARSE_TAG_SYMLINK.
    """
    size = attr.size if attr.is_reg else 0
    if attributes is None:
        shown = wp.file_attributes(attr.mode)
    else:
        shown = wp.served_attributes(attributes, attr.mode)
    if creation_time is None:
        creation_time = wp.ns_to_filetime(min(attr.mtime_ns, attr.ctime_ns))
    return {
        "file_attributes": shown,
        "reparse_tag": wp.IO_REPARSE_TAG_SYMLINK if attr.is_lnk else 0,
        "allocation_size": _round_up(size, ALLOCATION_UNIT),
        "file_size": size,
        "creation_time": creation_time,
        "last_access_time": wp.ns_to_filetime(attr.atime_ns),
        "last_write_time": wp.ns_to_filetime(attr.mtime_ns),
        "change_time": wp.ns_to_filetime(attr.ctime_ns),
        "index_number": wp.file_index(attr.ino),
    }


def _fallback_info(ftype: int, ino: int) -> dict[str, int]:
    """File info for a listed entry that could not be stat'ed (removed meanwhile)."""
    mode = ftype | 0o644
    return {
        "file_attributes": wp.file_attributes(mode),
        "reparse_tag": wp.IO_REPARSE_TAG_SYMLINK if ftype == statmod.S_IFLNK else 0,
        "allocation_size": 0,
        "file_size": 0,
        "creation_time": 0,
        "last_access_time": 0,
        "last_write_time": 0,
        "change_time": 0,
        "index_number": wp.file_index(ino),
    }


def _clip_utf16(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 code units (never inside a surrogate pair)."""
    out, used = [], 0
    for c in text:
        n = 2 if ord(c) > 0xFFFF else 1
        if used + n > limit:
            break
        out.append(c)
        used += n
    return "".join(out)


def _label_text(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and wp.is_utf16_encodable(c)).strip()


def snapshot_label(volume_name: str, created_ns: int) -> str:
    """The volume label of a virtual drive: the volume's name and the snapshot time.

    ``"data 20240601-120000Z"``: at most 32 UTF-16 code units (winfspy raises
    ValueError beyond 64 bytes, inside its callback), the time in UTC to the
    second, so two snapshots of one volume differ. The name is shortened
    first, never the time.
    """
    stamp = time.strftime("%Y%m%d-%H%M%SZ", time.gmtime(created_ns / 1e9))
    name = _clip_utf16(_label_text(volume_name) or "vspfs", MAX_LABEL - len(stamp) - 1)
    return f"{name} {stamp}"


def live_label(volume_name: str) -> str:
    """The volume label of a live drive: ``"vspfs <name>"`` within 32 code units."""
    return _clip_utf16(f"vspfs {_label_text(volume_name) or 'volume'}", MAX_LABEL)


def _common_params(mountpoint: str) -> dict[str, Any]:
    is_drive = wp.is_drive_letter(mountpoint)
    return {
        "sector_size": SECTOR_SIZE,
        "sectors_per_allocation_unit": ALLOCATION_UNIT // SECTOR_SIZE,
        "max_component_length": wp.MAX_COMPONENT_LENGTH,
        "case_sensitive_search": 0,
        "case_preserved_names": 1,
        "unicode_on_disk": 1,
        "persistent_acls": 1,
        "reparse_points": 1,
        "reparse_points_access_check": 0,
        "named_streams": 0,
        "post_cleanup_when_modified_only": 1,
        "um_file_context_is_user_context2": 1,
        "file_system_name": FILE_SYSTEM_NAME,
        "prefix": "",
        # memfs's rule: the "avast" workaround is needed for directory mount points only
        "reject_irp_prior_to_transact0": 0 if is_drive else 1,
    }


def snapshot_volume_params(snapshot_id: str, created_ns: int, mountpoint: str) -> dict[str, Any]:
    """winfspy FileSystem keyword arguments of a virtual drive (docs/windows.md, each one)."""
    params = _common_params(mountpoint)
    params.update(
        volume_creation_time=wp.ns_to_filetime(created_ns),
        volume_serial_number=wp.volume_serial(snapshot_id),
        read_only_volume=1,
        file_info_timeout=INFINITE,
        volume_info_timeout_valid=1,
        volume_info_timeout=SNAPSHOT_VOLUME_INFO_TIMEOUT,
    )
    return params


def live_volume_params(volume_id: str, mountpoint: str, *, created_ns: int | None = None) -> dict[str, Any]:
    """winfspy FileSystem keyword arguments of a live drive (docs/windows.md, each one)."""
    params = _common_params(mountpoint)
    params.update(
        volume_creation_time=wp.ns_to_filetime(time.time_ns() if created_ns is None else created_ns),
        volume_serial_number=wp.volume_serial(f"live:{volume_id}"),
        read_only_volume=0,
        file_info_timeout=0,
        flush_and_purge_on_cleanup=1,
    )
    return params


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def _parent_of(path: str) -> str:
    head = path.rstrip("/").rsplit("/", 1)[0]
    return head or "/"


def _core(windows_name: str) -> str:
    """The core path of a WinFsp file name; STATUS_OBJECT_NAME_INVALID for a stream name."""
    try:
        return wp.to_core_path(windows_name)
    except ValueError:
        raise NtStatus(STATUS_OBJECT_NAME_INVALID, windows_name) from None


def _split_core(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _entry_key(windows_name: str) -> tuple[int, tuple[bytes, bytes]]:
    """Enumeration order: "." then ".." then NTFS order of the names."""
    if windows_name == ".":
        return (0, (b"", b""))
    if windows_name == "..":
        return (1, (b"", b""))
    return (2, wp.ntfs_sort_key(windows_name))


class _DirEntry(Mapping[str, Any]):
    """One enumeration entry whose file info is computed only when winfspy reads it.

    winfspy's ll_read_directory copies entries until the caller's buffer is
    full and asks again with a marker; returning every remaining entry each
    time (which its interface demands) would stat a whole large directory
    on every call. Entries past the buffer are never read, so never stat'ed.
    """

    __slots__ = ("_info", "_info_fn", "file_name")

    def __init__(self, file_name: str, info_fn: Callable[[], dict[str, int]]) -> None:
        self.file_name = file_name
        self._info_fn = info_fn
        self._info: dict[str, int] | None = None

    def _get(self) -> dict[str, int]:
        if self._info is None:
            self._info = self._info_fn()
        return self._info

    def __getitem__(self, key: str) -> Any:
        if key == "file_name":
            return self.file_name
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        yield "file_name"
        yield from _INFO_KEYS

    def __len__(self) -> int:
        return 1 + len(_INFO_KEYS)

    def __repr__(self) -> str:
        return f"<entry {self.file_name!r}>"


@dataclass(eq=False)
class OpenFile:
    """One open of a file or directory (winfspy's file context).

    ``path`` is the core path in its exact spelling; the adapter updates it
    when the file or a directory above it is renamed while open.
    """

    path: str
    attr: Attr
    fh: int | None = None
    writable: bool = False
    delete_pending: bool = False
    deleted: bool = False
    listing: tuple[list[tuple[int, tuple[bytes, bytes]]], list[_DirEntry]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_dir(self) -> bool:
        return self.attr.is_dir


# ------------------------------------------------------- operation classes


class _Operations:
    """What both drives share: name resolution, file info, enumeration,
    security descriptors, reparse points, the table of open files.

    A mixin: :func:`operations_class` puts winfspy's BaseFileSystemOperations
    behind it. Method names and signatures are winfspy 0.8.4's (the
    high-level methods its ``ll_*`` wrappers call, src/winfspy/operations.py).
    """

    _label = "vspfs"
    #: name of the pseudo xattr carrying security descriptors (tests change it)
    security_xattr = SECURITY_XATTR
    #: do names on the backing differ by case? (Linux: yes; NTFS: no)
    case_sensitive_backing = sys.platform != "win32"

    def __init__(self, mountpoint: str = "V:") -> None:
        super().__init__()
        self.mountpoint = mountpoint
        self._opened: set[OpenFile] = set()
        self._opened_lock = threading.Lock()
        self._windows_metadata: bool | None = None

    # -- what each view provides

    def _stat(self, path: str) -> Attr:
        raise NotImplementedError

    def _entries(self, path: str) -> list[tuple[str, int, int]]:
        """(name, ino, S_IFMT type) of a directory; ino/type 0 when unknown."""
        raise NotImplementedError

    def _readlink(self, path: str) -> str:
        raise NotImplementedError

    def _getxattr(self, path: str, name: str) -> bytes:
        raise NotImplementedError

    def _listxattr(self, path: str) -> list[str]:
        raise NotImplementedError

    def _names(self, path: str) -> list[str]:
        return [name for name, _ino, _ftype in self._entries(path)]

    # -- a Windows file's own attributes and creation time

    def has_windows_metadata(self) -> bool:
        """Whether this drive's volume carries each file's NTFS attributes and
        creation time (``system.ntfs_attrib``, ``system.ntfs_crtime``: the
        Windows host filesystem binding lists them on every object).

        Decided once per drive, by whether the root lists
        ``system.ntfs_attrib`` (on a virtual drive: as at snapshot time), so
        that a Linux-hosted volume pays no xattr read per file described.
        Listed, not merely readable: ntfs-3g serves the same names without
        listing them, and the core preserves only what is listed, so a
        snapshot could not keep them.
        """
        if self._windows_metadata is None:
            try:
                found = wp.NTFS_ATTRIB_XATTR in self._listxattr("/")
            except OSError as exc:
                log.debug("%s: no xattrs at the root (%s): attributes come from modes", self._label, exc)
                found = False
            self._windows_metadata = found
        return self._windows_metadata

    def _ntfs_value(self, path: str, name: str, decode: Callable[[bytes], int | None]) -> int | None:
        """``name`` of ``path`` decoded, or None (missing or malformed: the
        caller then derives the value from the mode, as for any volume)."""
        try:
            value = self._getxattr(path, name)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                log.debug("%s: %s of %s cannot be read: %s", self._label, name, path, exc)
            return None
        decoded = decode(bytes(value))
        if decoded is None:
            log.debug("%s: %s of %s is malformed (%d bytes): ignored", self._label, name, path, len(value))
        return decoded

    def _ntfs_attributes(self, path: str) -> int | None:
        """The file's own NTFS attributes, where the volume carries them."""
        if not self.has_windows_metadata():
            return None
        return self._ntfs_value(path, wp.NTFS_ATTRIB_XATTR, wp.decode_ntfs_attrib)

    def _attributes(self, path: str, attr: Attr) -> int:
        """FILE_ATTRIBUTE_* shown for ``path`` (as :func:`file_info` shows them)."""
        ntfs = self._ntfs_attributes(path)
        return wp.file_attributes(attr.mode) if ntfs is None else wp.served_attributes(ntfs, attr.mode)

    def _info(self, path: str, attr: Attr) -> dict[str, int]:
        """:func:`file_info` of ``path``, with its own attributes and creation
        time where the volume carries them (two xattr reads per file there,
        none elsewhere)."""
        if not self.has_windows_metadata():
            return file_info(attr)
        crtime = self._ntfs_value(path, wp.NTFS_CRTIME_XATTR, wp.decode_ntfs_crtime)
        return file_info(attr, self._ntfs_attributes(path), crtime)

    # -- names

    def _lookup(self, windows_name: str) -> tuple[str, Attr]:
        """(exact core path, attributes) of a WinFsp file name, case-insensitively.

        The exact spelling is tried first (one stat); only when it is missing
        is the path walked component by component through directory listings.
        A symbolic link on the way raises STATUS_REPARSE: WinFsp then calls
        resolve_reparse_points, as winfsp.h asks of GetSecurityByName.
        """
        core = _core(windows_name)
        try:
            return core, self._stat(core)
        except (FileNotFoundError, NotADirectoryError, NotFound):
            pass
        parts = _split_core(core)
        cur = "/"
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                found = wp.find_name(self._names(cur), part)
            except NotADirectoryError:
                found = None
            if found is None:
                if last:
                    raise FileNotFoundError(errno.ENOENT, "no such file", windows_name)
                raise _PathNotFound(errno.ENOENT, "no such directory on the way", windows_name)
            cur = _join(cur, found)
            if not last:
                attr = self._stat(cur)
                if attr.is_lnk:
                    raise NtStatus(STATUS_REPARSE, cur)
                if not attr.is_dir:
                    raise _PathNotFound(errno.ENOTDIR, "not a directory on the way", windows_name)
        return cur, self._stat(cur)

    # -- security descriptors

    def _security(self, path: str, attr: Attr) -> bytes:
        """The file's own descriptor, or the documented default from its mode bits."""
        try:
            sd = self._getxattr(path, self.security_xattr)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
                raise
        else:
            try:
                n = wp.security_descriptor_length(sd)
                wp.SecurityDescriptor.from_bytes(sd[:n])
                return bytes(sd[:n])
            except (wp.SecurityDescriptorError, struct_error):
                log.warning(
                    "%s: %s of %s is no valid security descriptor: using the default",
                    self._label,
                    self.security_xattr,
                    path,
                )
        return wp.default_security_descriptor(attr.mode, attr.uid, attr.gid)

    # -- open files table

    def _register(self, of: OpenFile) -> OpenFile:
        with self._opened_lock:
            self._opened.add(of)
        return of

    def _unregister(self, of: OpenFile) -> None:
        with self._opened_lock:
            self._opened.discard(of)

    def _renamed(self, old: str, new: str) -> None:
        """Point every open file at or below ``old`` to its name under ``new``."""
        prefix = old.rstrip("/") + "/"
        with self._opened_lock:
            for of in self._opened:
                if of.path == old:
                    of.path = new
                elif of.path.startswith(prefix):
                    of.path = new.rstrip("/") + "/" + of.path[len(prefix) :]

    def open_files(self) -> list[OpenFile]:
        """The files open now (diagnostics and tests)."""
        with self._opened_lock:
            return list(self._opened)

    # -- directory enumeration

    def _listing(self, of: OpenFile) -> tuple[list[tuple[int, tuple[bytes, bytes]]], list[_DirEntry]]:
        """The open directory's entries in enumeration order, built once per enumeration."""
        path = of.path
        entries: list[_DirEntry] = []
        if path.strip("/"):
            parent = _parent_of(path)
            here, up = of.attr, self._stat(parent)
            entries.append(_DirEntry(".", lambda a=here: self._info(path, a)))
            entries.append(_DirEntry("..", lambda a=up: self._info(parent, a)))
        skipped = 0
        for name, ino, ftype in self._entries(path):
            if not wp.is_utf16_encodable(name):
                skipped += 1
                continue
            entries.append(
                _DirEntry(wp.encode_name(name), self._entry_info_fn(_join(path, name), ftype, ino))
            )
        if skipped:
            log.warning(
                "%s: %d name(s) in %s are not valid Unicode and are not listed on the drive",
                self._label,
                skipped,
                path,
            )
        entries.sort(key=lambda e: _entry_key(e.file_name))
        return [_entry_key(e.file_name) for e in entries], entries

    def _entry_info_fn(self, path: str, ftype: int, ino: int) -> Callable[[], dict[str, int]]:
        def info() -> dict[str, int]:
            # runs inside winfspy's ll_read_directory: must not raise
            try:
                return self._info(path, self._stat(path))
            except Exception as exc:
                log.debug("%s: %s vanished while listed: %s", self._label, path, exc)
                return _fallback_info(ftype, ino)

        return info

    @translated
    def read_directory(self, file_context: OpenFile, marker: str | None) -> list[_DirEntry]:
        """Every entry after ``marker`` (NTFS order), "." and ".." first except at the root.

        WinFsp asks again with the last name it could fit as the marker; the
        listing is taken once per enumeration (marker None) and kept on the
        open directory, so the continuation is consistent and cheap. A marker
        that is no longer listed still works: the order, not the name, decides.
        """
        of = file_context
        if not of.is_dir:
            raise NtStatus(STATUS_NOT_A_DIRECTORY, of.path)
        with of.lock:
            if marker is None or of.listing is None:
                of.listing = self._listing(of)
            keys, entries = of.listing
        if marker is None:
            return list(entries)
        return entries[bisect.bisect_right(keys, _entry_key(marker)) :]

    @translated
    def get_dir_info_by_name(self, file_context: OpenFile, file_name: str) -> dict[str, Any]:
        """One entry of an open directory (FindFirstFile with an exact name)."""
        of = file_context
        found = wp.find_name(self._names(of.path), wp.decode_name(file_name))
        if found is None:
            raise NtStatus(STATUS_OBJECT_NAME_NOT_FOUND, file_name)
        path = _join(of.path, found)
        return {"file_name": file_name, **self._info(path, self._stat(path))}

    # -- reparse points (symbolic links)

    def _link_target(self, parts: tuple[str, ...]) -> str | None:
        try:
            path, attr = self._lookup("\\" + "\\".join(wp.encode_name(p) for p in parts))
        except (FileNotFoundError, NotADirectoryError, NotFound, NtStatus):
            return None
        if not attr.is_lnk:
            return None
        return self._readlink(path)

    @translated
    def resolve_reparse_points(
        self,
        file_name: str,
        reparse_point_index: int,
        resolve_last_path_component: bool,
        p_io_status: Any,
        buffer: Any,
        p_size: Any,
    ) -> None:
        """Resolve the links of ``file_name`` into a full NT path (IO_REPARSE).

        winfspy passes the raw buffers and returns STATUS_SUCCESS after this
        method; WinFsp's caller (FspFileSystemCallResolveReparsePoints)
        turns any success into STATUS_REPARSE with the IO_STATUS_BLOCK it
        zeroed, i.e. Information = IO_REPARSE: "the buffer holds an absolute
        path to send to the I/O manager". So the buffer receives
        ``\\\\??\\\\V:\\\\target\\\\rest`` (or the target of a link leading out of
        the drive), not NUL-terminated.
        """
        parts = _split_core(_core(file_name))
        resolved, outside = wp.resolve_links(
            parts, self._link_target, resolve_last=resolve_last_path_component
        )
        if outside is not None:
            target = outside
        else:
            target = self._mount_prefix() + wp.to_windows_path("/".join(resolved))
        self._copy_out(
            buffer, p_size, target.encode("utf-16-le", "surrogatepass"), STATUS_REPARSE_POINT_NOT_RESOLVED
        )

    def _mount_prefix(self) -> str:
        mp = self.mountpoint.rstrip("\\/")
        return "\\??\\" + (wp.parse_drive_letter(mp) if wp.is_drive_letter(mp) else mp)

    @translated
    def get_reparse_point(self, file_context: OpenFile, file_name: str, buffer: Any, p_size: Any) -> None:
        """FSCTL_GET_REPARSE_POINT: the symlink REPARSE_DATA_BUFFER of a link."""
        of = file_context
        if not of.attr.is_lnk:
            raise NtStatus(STATUS_NOT_A_REPARSE_POINT, of.path)
        data = wp.symlink_reparse_data(self._readlink(of.path))
        self._copy_out(buffer, p_size, data, STATUS_BUFFER_TOO_SMALL)

    @staticmethod
    def _copy_out(buffer: Any, p_size: Any, data: bytes, too_small: int) -> None:
        """Copy ``data`` into a winfspy raw buffer and set ``*p_size``."""
        if len(data) > p_size[0]:
            raise NtStatus(too_small, f"{len(data)} bytes do not fit in {p_size[0]}")
        _plumbing().ffi.memmove(buffer, data, len(data))
        p_size[0] = len(data)

    # -- callbacks shared as they are

    @translated
    def get_security_by_name(self, file_name: str) -> tuple[int, bytes, int]:
        """(file attributes, security descriptor, its size) of a name, for WinFsp's access checks."""
        path, attr = self._lookup(file_name)
        sd = self._security(path, attr)
        return self._attributes(path, attr), sd, len(sd)

    @translated
    def get_security(self, file_context: OpenFile) -> tuple[bytes, int]:
        of = file_context
        sd = self._security(of.path, self._current_attr(of))
        return sd, len(sd)

    def _current_attr(self, of: OpenFile) -> Attr:
        return of.attr

    @translated
    def get_file_info(self, file_context: OpenFile) -> dict[str, int]:
        of = file_context
        return self._info(of.path, self._current_attr(of))

    @translated
    def get_stream_info(
        self, file_context: OpenFile, buffer: Any, length: int, p_bytes_transferred: Any
    ) -> None:
        """Never called: named_streams is 0. Answered instead of winfspy's NotImplementedError."""
        raise NtStatus(STATUS_INVALID_DEVICE_REQUEST, "no named streams")

    @translated
    def control(self, file_context: OpenFile, control_code: int, *args: Any) -> None:
        """Never called: device_control is 0."""
        raise NtStatus(STATUS_INVALID_DEVICE_REQUEST, "no device control")


class SnapshotOperations(_Operations):
    """A virtual drive: the snapshot as it was; every change is STATUS_MEDIA_WRITE_PROTECTED.

    WinFsp's ReadOnlyVolume flag only *reports* a read-only volume
    (FILE_READ_ONLY_VOLUME in the volume attributes, src/sys/volinfo.c); the
    FSD still forwards writes, so every changing callback refuses here.
    """

    def __init__(self, snapshot: Snapshot, mountpoint: str = "V:") -> None:
        super().__init__(mountpoint)
        self.snapshot = snapshot
        self._label = f"snapshot {snapshot.id}"
        self.volume_label = snapshot_label(snapshot.volume.name, snapshot.created_ns)
        self._names_cache: LRUCache = LRUCache(maxsize=64)
        self._names_lock = threading.Lock()

    def _stat(self, path: str) -> Attr:
        return self.snapshot.getattr(path)

    def _entries(self, path: str) -> list[tuple[str, int, int]]:
        return self.snapshot.readdir(path)

    def _names(self, path: str) -> list[str]:
        """Listings of a snapshot never change: cached for case-insensitive lookups."""
        with self._names_lock:
            names = self._names_cache.get(path)
        if names is None:
            names = [n for n, _i, _t in self.snapshot.readdir(path)]
            with self._names_lock:
                self._names_cache[path] = names
        return names

    def _readlink(self, path: str) -> str:
        return self.snapshot.readlink(path)

    def _getxattr(self, path: str, name: str) -> bytes:
        return self.snapshot.getxattr(path, name)

    def _listxattr(self, path: str) -> list[str]:
        return self.snapshot.listxattr(path)

    def _refuse(self, what: str, path: str | None = None) -> None:
        raise ReadOnly(f"{what} {path or ''}: snapshot {self.snapshot.id} is a read-only virtual drive")

    # -- volume

    @translated
    def get_volume_info(self) -> dict[str, Any]:
        """Size and free space of the volume now (a snapshot keeps no statfs of its own)."""
        st = self.snapshot.statfs()
        return {
            "total_size": st.f_blocks * st.f_frsize,
            "free_size": st.f_bavail * st.f_frsize,
            "volume_label": self.volume_label,
        }

    @translated
    def set_volume_label(self, volume_label: str) -> None:
        self._refuse("set the volume label")

    # -- open and read

    @translated
    def open(self, file_name: str, create_options: int, granted_access: int) -> OpenFile:
        """Open for reading; delete-on-close is refused at once, as NTFS does on read-only media."""
        if create_options & FILE_DELETE_ON_CLOSE:
            self._refuse("open for deletion", file_name)
        path, attr = self._lookup(file_name)
        of = OpenFile(path, attr)
        if attr.is_reg:
            of.fh = self.snapshot.open(path)
        return self._register(of)

    @translated
    def read(self, file_context: OpenFile, offset: int, length: int) -> bytes:
        """Bytes at ``offset``; STATUS_END_OF_FILE at or past the end (as winfspy's memfs)."""
        of = file_context
        if of.is_dir:
            raise NtStatus(STATUS_FILE_IS_A_DIRECTORY, of.path)
        if of.fh is None:
            raise NtStatus(STATUS_END_OF_FILE, of.path)
        data = self.snapshot.read(of.fh, length, offset)
        if not data and length:
            raise NtStatus(STATUS_END_OF_FILE, of.path)
        return data

    @translated
    def flush(self, file_context: OpenFile | None) -> None:
        """Nothing to flush on a snapshot."""

    def cleanup(self, file_context: OpenFile, file_name: str | None, flags: int) -> None:
        """Nothing to do: no deletion can be pending (can_delete/set_delete refuse)."""
        if flags & CLEANUP_DELETE:
            log.warning("%s: WinFsp asked to delete %s on a read-only drive: ignored", self._label, file_name)

    def close(self, file_context: OpenFile) -> None:
        """Release the snapshot handle. Never raises: winfspy would then keep
        the context forever (its ll_close forgets it only after success)."""
        of = file_context
        self._unregister(of)
        if of.fh is not None:
            fh, of.fh = of.fh, None
            try:
                self.snapshot.release(fh)
            except Exception:
                log.exception("%s: releasing %s failed", self._label, of.path)

    # -- everything that would change something

    @translated
    def create(
        self,
        file_name: str,
        create_options: int,
        granted_access: int,
        file_attributes: int,
        security_descriptor: Any,
        allocation_size: int,
    ) -> OpenFile:
        self._refuse("create", file_name)
        raise AssertionError("unreachable")

    @translated
    def overwrite(
        self,
        file_context: OpenFile,
        file_attributes: int,
        replace_file_attributes: bool,
        allocation_size: int,
    ) -> None:
        self._refuse("overwrite", file_context.path)

    @translated
    def write(
        self,
        file_context: OpenFile,
        buffer: Any,
        offset: int,
        write_to_end_of_file: bool,
        constrained_io: bool,
    ) -> int:
        self._refuse("write", file_context.path)
        return 0

    @translated
    def set_basic_info(
        self,
        file_context: OpenFile,
        file_attributes: int,
        creation_time: int,
        last_access_time: int,
        last_write_time: int,
        change_time: int,
        file_info: Any,
    ) -> dict[str, int]:
        self._refuse("change attributes or times of", file_context.path)
        return {}

    @translated
    def set_file_size(self, file_context: OpenFile, new_size: int, set_allocation_size: bool) -> None:
        self._refuse("resize", file_context.path)

    @translated
    def can_delete(self, file_context: OpenFile, file_name: str) -> None:
        self._refuse("delete", file_name)

    @translated
    def set_delete(self, file_context: OpenFile, file_name: str, delete_file: bool) -> None:
        if delete_file:
            self._refuse("delete", file_name)

    @translated
    def rename(
        self, file_context: OpenFile, file_name: str, new_file_name: str, replace_if_exists: bool
    ) -> None:
        self._refuse("rename", file_name)

    @translated
    def set_security(
        self, file_context: OpenFile, security_information: int, modification_descriptor: Any
    ) -> None:
        self._refuse("change the security of", file_context.path)

    @translated
    def set_reparse_point(self, file_context: OpenFile, file_name: str, buffer: Any, size: int) -> None:
        self._refuse("set a reparse point on", file_name)

    @translated
    def delete_reparse_point(self, file_context: OpenFile, file_name: str, buffer: Any, size: int) -> None:
        self._refuse("delete the reparse point of", file_name)


class LiveOperations(_Operations):
    """The live view on a drive letter: each callback is calls on the Volume.

    Only writes made through this drive (or the Linux live view) pass the
    copy-on-write engine: vspfs has no kernel filter driver, so a program
    writing to the backing directory directly is not seen (docs/windows.md).
    """

    def __init__(self, volume: Volume, mountpoint: str = "L:") -> None:
        super().__init__(mountpoint)
        self.volume = volume
        self._label = f"live view of {volume.backing}"
        self.volume_label = live_label(volume.name)

    def _stat(self, path: str) -> Attr:
        return self.volume.getattr(path)

    def _entries(self, path: str) -> list[tuple[str, int, int]]:
        return [(name, 0, 0) for name in self.volume.readdir(path)]

    def _names(self, path: str) -> list[str]:
        return self.volume.readdir(path)

    def _readlink(self, path: str) -> str:
        return self.volume.readlink(path)

    def _getxattr(self, path: str, name: str) -> bytes:
        return self.volume.getxattr(path, name)

    def _listxattr(self, path: str) -> list[str]:
        return self.volume.listxattr(path)

    def _current_attr(self, of: OpenFile) -> Attr:
        """Live attributes (through the handle when there is one: the file may be unlinked)."""
        attr = self.volume.getattr(of.path, of.fh)
        of.attr = attr
        return attr

    def _entry_info_fn(self, path: str, ftype: int, ino: int) -> Callable[[], dict[str, int]]:
        """A live listing has names only: an entry gone before its stat shows as a plain file."""
        return super()._entry_info_fn(path, statmod.S_IFREG, ino)

    def _target(self, windows_name: str) -> tuple[str, str, str | None]:
        """(parent core path, new leaf, existing entry or None) for a name to be created.

        On a case-sensitive (Linux) backing the parent is listed to find a
        name that differs only in case, which NTFS would treat as the same.
        """
        _core(windows_name)
        parent_win, _, leaf_win = windows_name.replace("/", "\\").rstrip("\\").rpartition("\\")
        leaf = wp.decode_name(leaf_win)
        if not leaf:
            raise NtStatus(STATUS_OBJECT_NAME_INVALID, windows_name)
        try:
            parent, pattr = self._lookup(parent_win or "\\")
        except FileNotFoundError as exc:
            raise _PathNotFound(errno.ENOENT, "no such directory", windows_name) from exc
        if not pattr.is_dir:
            raise _PathNotFound(errno.ENOTDIR, "not a directory", windows_name)
        if self.case_sensitive_backing:
            return parent, leaf, wp.find_name(self.volume.readdir(parent), leaf)
        try:
            self.volume.getattr(_join(parent, leaf))
        except FileNotFoundError:
            return parent, leaf, None
        return parent, leaf, leaf

    def _writable(self, of: OpenFile) -> int:
        """A read-write handle for ``of``, reopening it when it was opened read-only.

        WinFsp may send cached (paging) writes and size changes through any
        open of the file, including one made for reading; the core's
        read-only handle cannot write, so it is upgraded on first need. (Not
        opened read-write up front: the daemon reports files open for
        writing at snapshot time, and readers must not count.)
        """
        with of.lock:
            if of.fh is None:
                raise NtStatus(STATUS_INVALID_HANDLE, of.path)
            if not of.writable:
                fh = self.volume.open(of.path, os.O_RDWR)
                old, of.fh, of.writable = of.fh, fh, True
                self.volume.release(old)
            return of.fh

    # -- volume

    @translated
    def get_volume_info(self) -> dict[str, Any]:
        st = self.volume.statfs()
        return {
            "total_size": st.f_blocks * st.f_frsize,
            "free_size": st.f_bavail * st.f_frsize,
            "volume_label": self.volume_label,
        }

    @translated
    def set_volume_label(self, volume_label: str) -> None:
        """Kept for this mount only: the backing directory has no label to change."""
        if wp.utf16_len(volume_label) > MAX_LABEL:
            raise NtStatus(STATUS_INVALID_VOLUME_LABEL, volume_label)
        self.volume_label = volume_label

    # -- create and open

    @translated
    def create(
        self,
        file_name: str,
        create_options: int,
        granted_access: int,
        file_attributes: int,
        security_descriptor: Any,
        allocation_size: int,
    ) -> OpenFile:
        """Create a file (opened read-write) or a directory; then apply the
        creator's security descriptor where the core can keep one, and, on a
        volume that carries NTFS attributes, the settable ones asked for
        (HIDDEN, SYSTEM, ...; READONLY is already the mode's)."""
        parent, leaf, existing = self._target(file_name)
        if existing is not None:
            raise FileExistsError(errno.EEXIST, "exists", _join(parent, existing))
        path = _join(parent, leaf)
        readonly = bool(file_attributes & wp.FILE_ATTRIBUTE_READONLY)
        if create_options & FILE_DIRECTORY_FILE:
            self.volume.mkdir(path, 0o777)
            of = OpenFile(path, self.volume.getattr(path))
        else:
            fh = self.volume.create(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o444 if readonly else 0o666)
            of = OpenFile(path, self.volume.getattr(path, fh), fh, writable=True)
        sd = _descriptor_of_create(security_descriptor)
        if sd:
            # the file exists now: failing the create would leave it behind, unopened
            try:
                self.volume.setxattr(path, self.security_xattr, sd)
            except OSError as exc:
                quiet = exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "%s: cannot keep the security descriptor of new %s: %s",
                    self._label,
                    path,
                    exc,
                )
        wanted = file_attributes & wp.SETTABLE_FILE_ATTRIBUTES
        if wanted and self.has_windows_metadata():
            try:  # as above: the file is made, whatever happens here
                self._set_ntfs_attributes(path, of.attr, wanted, add=True)
            except OSError as exc:
                log.warning("%s: cannot set the attributes of new %s: %s", self._label, path, exc)
        return self._register(of)

    @translated
    def open(self, file_name: str, create_options: int, granted_access: int) -> OpenFile:
        """Open read-write when WinFsp granted write access, read-only otherwise.

        With FILE_DELETE_ON_CLOSE (no CanDelete/SetDelete follows, winfsp.h)
        the deletion checks run now: a non-empty directory cannot be opened
        for deletion, whose failure at cleanup could not be reported.
        """
        path, attr = self._lookup(file_name)
        of = OpenFile(path, attr)
        if create_options & FILE_DELETE_ON_CLOSE:
            self._check_deletable(of)
        if attr.is_reg:
            want_write = bool(granted_access & (wp.FILE_WRITE_DATA | wp.FILE_APPEND_DATA))
            if want_write:
                try:
                    of.fh = self.volume.open(path, os.O_RDWR)
                    of.writable = True
                except PermissionError:
                    of.fh = self.volume.open(path, os.O_RDONLY)
            else:
                of.fh = self.volume.open(path, os.O_RDONLY)
        return self._register(of)

    @translated
    def overwrite(
        self,
        file_context: OpenFile,
        file_attributes: int,
        replace_file_attributes: bool,
        allocation_size: int,
    ) -> None:
        """Truncate to zero (through the Volume, so a snapshot keeps the old data).

        Then the attributes, as NTFS treats an overwrite (and WinFsp's memfs
        does): ``replace_file_attributes`` (FILE_SUPERSEDE) makes them the
        given ones plus ARCHIVE, otherwise the given ones are added. On a
        volume without NTFS attributes only READONLY has a place (the mode).
        """
        of = file_context
        self.volume.truncate(of.path, 0, self._writable(of))
        if self.has_windows_metadata():
            wanted = file_attributes & wp.SETTABLE_FILE_ATTRIBUTES
            if replace_file_attributes:
                self._set_ntfs_attributes(of.path, of.attr, wanted | wp.FILE_ATTRIBUTE_ARCHIVE, add=False)
            elif wanted:
                self._set_ntfs_attributes(of.path, of.attr, wanted, add=True)
            return
        readonly = bool(file_attributes & wp.FILE_ATTRIBUTE_READONLY)
        if replace_file_attributes or readonly:
            self._set_readonly(of, readonly)

    def _set_ntfs_attributes(self, path: str, attr: Attr, wanted: int, *, add: bool) -> None:
        """Make the settable NTFS attributes of ``path`` ``wanted`` (``add``:
        the current ones and ``wanted``) through ``Volume.setxattr`` of
        ``system.ntfs_attrib``, so a snapshot keeps the old ones: the core
        preserves a file's xattrs before it changes them. Nothing is written
        when nothing changes (Explorer sends its attributes back unchanged
        often). A symbolic link keeps its own, as it keeps its mode."""
        if attr.is_lnk:
            return
        settable = wp.SETTABLE_FILE_ATTRIBUTES
        current = self._ntfs_value(path, wp.NTFS_ATTRIB_XATTR, wp.decode_ntfs_attrib)
        new = (wanted | (current or 0) if add else wanted) & settable
        if current is not None and current & settable == new:
            return
        value = ((current or 0) & ~settable) | new
        self.volume.setxattr(path, wp.NTFS_ATTRIB_XATTR, wp.encode_ntfs_attrib(value))

    def _set_readonly(self, of: OpenFile, readonly: bool) -> None:
        attr = self.volume.getattr(of.path, of.fh)
        if attr.is_dir or attr.is_lnk:
            return
        new = wp.mode_with_readonly(attr.mode, readonly)
        if new != statmod.S_IMODE(attr.mode):
            self.volume.chmod(of.path, new)

    # -- data

    @translated
    def read(self, file_context: OpenFile, offset: int, length: int) -> bytes:
        of = file_context
        if of.fh is None:
            raise NtStatus(STATUS_FILE_IS_A_DIRECTORY if of.is_dir else STATUS_END_OF_FILE, of.path)
        data = self.volume.read(of.fh, length, offset)
        if not data and length:
            raise NtStatus(STATUS_END_OF_FILE, of.path)
        return data

    @translated
    def write(
        self,
        file_context: OpenFile,
        buffer: Any,
        offset: int,
        write_to_end_of_file: bool,
        constrained_io: bool,
    ) -> int:
        """Write through the Volume (copy-on-write first).

        ``write_to_end_of_file``: append (WinFsp passes offset -1);
        ``constrained_io`` (paging I/O): never extend the file, write only
        what lies before its end.
        """
        of = file_context
        fh = self._writable(of)
        data = bytes(buffer)
        if write_to_end_of_file or constrained_io:
            size = self.volume.getattr(of.path, fh).size
            if write_to_end_of_file:
                offset = size
            elif offset >= size:
                return 0
            else:
                data = data[: size - offset]
        done = 0
        while done < len(data):
            n = self.volume.write(fh, data[done:], offset + done)
            if n <= 0:
                break
            done += n
        return done

    @translated
    def flush(self, file_context: OpenFile | None) -> None:
        """fsync one file; a volume flush (no context) has nothing buffered here."""
        if file_context is not None and file_context.fh is not None:
            self.volume.fsync(file_context.fh, False)

    @translated
    def set_file_size(self, file_context: OpenFile, new_size: int, set_allocation_size: bool) -> None:
        """End of file, or allocation (which only truncates when below the size)."""
        of = file_context
        fh = self._writable(of)
        if set_allocation_size:
            if new_size < self.volume.getattr(of.path, fh).size:
                self.volume.truncate(of.path, new_size, fh)
            return
        self.volume.truncate(of.path, new_size, fh)

    # -- attributes, times, security

    @translated
    def set_basic_info(
        self,
        file_context: OpenFile,
        file_attributes: int,
        creation_time: int,
        last_access_time: int,
        last_write_time: int,
        change_time: int,
        file_info: Any,
    ) -> dict[str, int]:
        """Attributes, creation time, access and write times.

        WinFsp sends INVALID_FILE_ATTRIBUTES and 0 times for "no change" (it
        turns 0 attributes and -1 times into those: src/sys/fileinfo.c).

        - On a volume that carries NTFS attributes (a Windows backing), the
          settable attributes become ``system.ntfs_attrib`` and a creation
          time ``system.ntfs_crtime``, both through ``Volume.setxattr`` (so
          a snapshot keeps the old values);
        - elsewhere only READONLY has a place (the write bits, ``chmod``),
          and the creation time is accepted and dropped (POSIX cannot set
          one);
        - access and write times become ``utimens``; the change time cannot
          be set through the core on either (accepted and dropped).
        """
        from vspfs.volume import UTIME_OMIT

        of = file_context
        windows = self.has_windows_metadata()
        if file_attributes != wp.INVALID_FILE_ATTRIBUTES:
            if windows:
                wanted = file_attributes & wp.SETTABLE_FILE_ATTRIBUTES
                self._set_ntfs_attributes(of.path, self._current_attr(of), wanted, add=False)
            else:
                self._set_readonly(of, bool(file_attributes & wp.FILE_ATTRIBUTE_READONLY))
        if creation_time and windows:
            current = self._ntfs_value(of.path, wp.NTFS_CRTIME_XATTR, wp.decode_ntfs_crtime)
            if current != creation_time:
                self.volume.setxattr(of.path, wp.NTFS_CRTIME_XATTR, wp.encode_ntfs_crtime(creation_time))
        if last_access_time or last_write_time:
            atime = wp.filetime_to_ns(last_access_time) if last_access_time else UTIME_OMIT
            mtime = wp.filetime_to_ns(last_write_time) if last_write_time else UTIME_OMIT
            self.volume.utimens(of.path, atime, mtime)
        return self._info(of.path, self._current_attr(of))

    @translated
    def set_security(
        self, file_context: OpenFile, security_information: int, modification_descriptor: Any
    ) -> None:
        """Merge the change into the file's descriptor and store it through the Volume
        (so a snapshot keeps the old one: the core preserves metadata first)."""
        of = file_context
        current = self._security(of.path, self._current_attr(of))
        merged = wp.merge_security(current, security_information, _descriptor_at(modification_descriptor))
        self.volume.setxattr(of.path, self.security_xattr, merged)

    # -- deletion

    def _check_deletable(self, of: OpenFile) -> None:
        if not of.path.strip("/"):
            raise NtStatus(STATUS_CANNOT_DELETE, "the root directory")
        if of.is_dir and self.volume.readdir(of.path):
            raise NtStatus(STATUS_DIRECTORY_NOT_EMPTY, of.path)

    @translated
    def can_delete(self, file_context: OpenFile, file_name: str) -> None:
        """DeleteFile / RemoveDirectory ask first: refuse a non-empty directory or the root."""
        self._check_deletable(file_context)

    @translated
    def set_delete(self, file_context: OpenFile, file_name: str, delete_file: bool) -> None:
        """The same check when the disposition is set; the deletion itself is in cleanup."""
        if delete_file:
            self._check_deletable(file_context)
        file_context.delete_pending = bool(delete_file)

    def cleanup(self, file_context: OpenFile, file_name: str | None, flags: int) -> None:
        """The last handle of a file is closed: delete it now if WinFsp says so.

        Cannot report failure (a Windows limitation): a failed deletion is
        logged. The handle is released first, so that a Windows core can
        delete a file it opened without FILE_SHARE_DELETE.
        """
        of = file_context
        if not flags & CLEANUP_DELETE:
            return
        try:
            if of.fh is not None:
                fh, of.fh = of.fh, None
                self.volume.release(fh)
            if of.is_dir:
                self.volume.rmdir(of.path)
            else:
                self.volume.unlink(of.path)
            of.deleted = True
        except Exception as exc:
            status = ntstatus_of(exc, f"{self._label}: cleanup")
            log.warning("%s: could not delete %s (NTSTATUS %#x): %s", self._label, of.path, status, exc)

    def close(self, file_context: OpenFile) -> None:
        """Release the handle. Never raises (see SnapshotOperations.close)."""
        of = file_context
        self._unregister(of)
        if of.fh is not None:
            fh, of.fh = of.fh, None
            try:
                self.volume.release(fh)
            except Exception:
                log.exception("%s: releasing %s failed", self._label, of.path)

    # -- rename

    @translated
    def rename(
        self, file_context: OpenFile, file_name: str, new_file_name: str, replace_if_exists: bool
    ) -> None:
        """Rename with NTFS's rules on a backing that may be case-sensitive.

        - a change of case only ("a" -> "A") renames even though the target
          "exists" (it is the same file);
        - an existing target is a collision unless ``replace_if_exists``, and
          a directory is never replaced (STATUS_ACCESS_DENIED, as NTFS);
        - the new name keeps the caller's spelling, also when it replaces a
          file spelled differently (that file is replaced, then renamed).
        WinFsp guarantees the target has no open handles (winfsp.h, Rename).
        """
        of = file_context
        old = of.path
        parent, leaf, existing = self._target(new_file_name)
        new = _join(parent, leaf)
        if existing is None:
            self._move(old, new)
            return
        target = _join(parent, existing)
        if target == old or (
            wp.names_equal(target, old) and self.volume.getattr(target).ino == self.volume.getattr(old).ino
        ):
            if existing != leaf or target != old:
                self._move(old, new)  # only the case changes
            return
        if not replace_if_exists:
            raise FileExistsError(errno.EEXIST, "exists", target)
        if self.volume.getattr(target).is_dir:
            raise NtStatus(STATUS_ACCESS_DENIED, f"{target} is a directory: NTFS never replaces one")
        self._move(old, target, replace=True)
        if existing != leaf:
            self._move(target, new)

    def _move(self, old: str, new: str, *, replace: bool = False) -> None:
        """One core rename (never replacing unless asked), and the open files follow."""
        from vspfs.volume import RENAME_NOREPLACE

        self.volume.rename(old, new, 0 if replace else RENAME_NOREPLACE)
        self._renamed(old, new)

    # -- reparse points

    @translated
    def set_reparse_point(self, file_context: OpenFile, file_name: str, buffer: Any, size: int) -> None:
        """Turn an empty file or directory into a symbolic link (how CreateSymbolicLink works).

        Only IO_REPARSE_TAG_SYMLINK is understood (anything else:
        STATUS_IO_REPARSE_TAG_NOT_HANDLED). Not atomic: the empty object is
        removed, then the link made, both through the Volume.
        """
        of = file_context
        try:
            substitute, _relative = wp.parse_symlink_reparse_data(bytes(_plumbing().ffi.buffer(buffer, size)))
        except ValueError as exc:
            raise NtStatus(STATUS_IO_REPARSE_TAG_NOT_HANDLED, str(exc)) from None
        target = _core_link_target(substitute)
        attr = self._current_attr(of)
        if (attr.is_reg and attr.size) or (attr.is_dir and self.volume.readdir(of.path)):
            raise NtStatus(STATUS_IO_REPARSE_DATA_INVALID, f"{of.path} is not empty")
        if of.fh is not None:
            fh, of.fh = of.fh, None
            self.volume.release(fh)
        if attr.is_dir:
            self.volume.rmdir(of.path)
        else:
            self.volume.unlink(of.path)
        self.volume.symlink(target, of.path)
        of.attr = self.volume.getattr(of.path)

    @translated
    def delete_reparse_point(self, file_context: OpenFile, file_name: str, buffer: Any, size: int) -> None:
        """Not supported: the core has no way to turn a link back into a file."""
        raise NtStatus(STATUS_NOT_SUPPORTED, file_name)


# ------------------------------------------------------ raw winfspy values


def _descriptor_of_create(security_descriptor: Any) -> bytes | None:
    """The bytes of winfspy's SecurityDescriptor(handle, size) given to create (None when NULL)."""
    if security_descriptor is None:
        return None
    size = getattr(security_descriptor, "size", 0)
    if not size:
        return None
    return bytes(_plumbing().ffi.buffer(security_descriptor.handle, size))


def _descriptor_at(pointer: Any) -> bytes:
    """The bytes of a raw PSECURITY_DESCRIPTOR (self-relative: WinFsp's FSD
    converts it with RtlAbsoluteToSelfRelativeSD before sending, src/sys/security.c)."""
    plumbing = _plumbing()
    size = plumbing.lib.GetSecurityDescriptorLength(pointer)
    return bytes(plumbing.ffi.buffer(pointer, size))


def _core_link_target(substitute: str) -> str:
    """A symlink's substitute name as the core stores a link target.

    ``\\\\??\\\\C:\\\\x`` (absolute) becomes ``C:\\\\x`` on Windows and is refused
    elsewhere (it means nothing on a Linux volume); relative names get the
    platform's separator and decoded names.
    """
    if substitute.startswith("\\??\\"):
        if sys.platform != "win32":
            raise NtStatus(STATUS_IO_REPARSE_DATA_INVALID, "absolute Windows link target on a POSIX volume")
        rest = substitute[4:]
        return "\\\\" + rest[4:] if rest.upper().startswith("UNC\\") else rest
    parts = [wp.decode_name(p) for p in substitute.split("\\")]
    return os.sep.join(parts)


# ---------------------------------------------------------------- handles

_registry: dict[str, WinFspMount] = {}
_registry_lock = threading.Lock()


class WinFspMount:
    """One WinFsp file system served by this process (the daemon's MountHandle).

    winfspy's ``FileSystem.start`` mounts, starts WinFsp's dispatcher
    threads and stats the mount point until it answers, so the drive is
    ready when :meth:`start` returns; ``stop`` removes it whatever is open
    (open handles then fail), so unmounting never has to wait or detach.
    """

    def __init__(self, file_system: Any, operations: _Operations, mountpoint: str, what: str) -> None:
        self.file_system = file_system
        self.operations = operations
        self.mountpoint = mountpoint
        self.what = what
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<WinFspMount {self.what} at {self.mountpoint}>"

    @property
    def mounted(self) -> bool:
        return bool(getattr(self.file_system, "started", False))

    @property
    def serving(self) -> bool:
        return self.mounted

    def start(self) -> None:
        key = self.mountpoint.upper()
        with _registry_lock:
            if key in _registry:
                raise UsageError(f"vspfs already mounts {_registry[key].what} on {self.mountpoint}")
            _registry[key] = self
        try:
            self.file_system.start()
        except Exception as exc:
            with _registry_lock:
                _registry.pop(key, None)
            raise MountError(
                f"cannot mount the {self.what} on {self.mountpoint}: {exc}; check that WinFsp is "
                "installed and running and that the drive letter or directory is free"
            ) from None
        log.info("%s mounted on %s", self.what, self.mountpoint)

    def wait_ready(self, timeout: float = 15.0) -> bool:
        """True once mounted (``start`` already waited for WinFsp to answer)."""
        return self.mounted

    def unmount(self, timeout: float = 15.0) -> str:
        """Stop WinFsp's dispatcher and remove the drive: "unmounted" or "not mounted"."""
        with self._lock:
            if not self.mounted:
                return "not mounted"
            try:
                self.file_system.stop()
            except Exception as exc:
                raise MountError(f"cannot unmount {self.mountpoint}: {exc}") from None
            finally:
                with _registry_lock:
                    if _registry.get(self.mountpoint.upper()) is self:
                        del _registry[self.mountpoint.upper()]
        log.info("%s unmounted from %s", self.what, self.mountpoint)
        return "unmounted"


def active_mounts() -> list[WinFspMount]:
    """The WinFsp file systems this process serves now."""
    with _registry_lock:
        return list(_registry.values())


def _mount_target(
    mountpoint: str | None, taken: Iterable[str] | Callable[[], Iterable[str]] | None
) -> tuple[str | None, Callable[[], str]]:
    """Syntax-check the target now; return a function that checks it is free (needs Windows)."""
    if mountpoint is None or mountpoint == "":
        return None, lambda: wp.first_free_letter(taken)
    if wp.is_drive_letter(mountpoint) or len(mountpoint) <= 3:
        letter = wp.parse_drive_letter(mountpoint)
        return letter, lambda: wp.check_drive_letter(letter, taken)
    p = wp.parse_windows_path(mountpoint) if ("\\" in mountpoint or ":" in mountpoint) else None
    if p is None or p.kind != "drive" or not p.parts:
        raise UsageError(
            f"bad mount target {mountpoint!r}: give a drive letter (V:) or a full directory path"
        )
    target = str(p)

    def check_dir() -> str:
        # WinFsp makes the directory itself: it must not exist, its parent must
        if os.path.lexists(target):
            raise UsageError(f"{target} exists: WinFsp mounts on a directory it creates; give a new path")
        parent = str(wp.WindowsPath(p.kind, p.anchor, p.parts[:-1]))
        if not os.path.isdir(parent):
            raise UsageError(f"cannot mount on {target}: its parent directory {parent} does not exist")
        return target

    return target, check_dir


def _mount(
    mixin: type,
    source: Any,
    mountpoint: str | None,
    params_fn: Callable[[str], dict[str, Any]],
    what: str,
    taken: Any,
) -> WinFspMount:
    _syntax, check = _mount_target(mountpoint, taken)
    winfspy = load_winfspy()
    target = check()
    ops = operations_class(mixin, winfspy)(source, target)
    try:
        fs = winfspy.FileSystem(target, ops, **params_fn(target))
    except Exception as exc:
        raise MountError(f"cannot create the WinFsp file system for the {what}: {exc}") from None
    handle = WinFspMount(fs, ops, target, what)
    handle.start()
    return handle


def mount_snapshot_drive(
    snapshot: Snapshot,
    letter: str | None = None,
    *,
    taken: Iterable[str] | Callable[[], Iterable[str]] | None = None,
) -> WinFspMount:
    """Mount ``snapshot`` read-only on a drive letter (the first free from V: down if None).

    UsageError for a bad or taken letter; MountError when this machine
    cannot mount (not Windows, no WinFsp, no winfspy). ``taken`` overrides
    the letters in use (GetLogicalDrives). Returns once the drive answers.
    """
    return _mount(
        SnapshotOperations,
        snapshot,
        letter,
        lambda target: snapshot_volume_params(snapshot.id, snapshot.created_ns, target),
        f"snapshot {snapshot.id}",
        taken,
    )


def mount_live_drive(
    volume: Volume,
    letter: str | None = None,
    *,
    taken: Iterable[str] | Callable[[], Iterable[str]] | None = None,
) -> WinFspMount:
    """Serve the live view of ``volume`` read-write on a drive letter (``vspfs serve D:\\\\data=L:``)."""
    return _mount(
        LiveOperations,
        volume,
        letter,
        lambda target: live_volume_params(volume.volume_id, target),
        f"live view of {volume.backing}",
        taken,
    )


def mount_snapshot(snapshot: Snapshot, mountpoint: str, *, allow_other: bool = False) -> WinFspMount:
    """The daemon's backend entry (vspfs.daemon.MountBackend): a drive letter or a new directory.

    ``allow_other`` has no WinFsp equivalent: a drive made by a service is
    seen by every session, one made in a logon session by that session only.
    """
    return mount_snapshot_drive(snapshot, mountpoint or None)


def mount_live(
    volume: Volume, mountpoint: str, *, allow_other: bool = False, over: bool = False
) -> WinFspMount:
    """The daemon's backend entry for a live view; ``over`` is Linux-only."""
    if over:
        raise MountError(
            f"cannot serve {volume.backing} over itself on Windows: a drive letter cannot cover a "
            "directory; serve it on a letter (vspfs serve D:\\data=L:)"
        )
    return mount_live_drive(volume, mountpoint or None)
