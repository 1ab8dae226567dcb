"""The FUSE adapter: mfusepy (libfuse3) callbacks -> vspfs core calls.

Translation only. Every callback becomes one call on a
:class:`vspfs.volume.Volume` (the live view) or a
:class:`vspfs.snapshot.Snapshot` (a read-only virtual drive), and every error
becomes one errno through :func:`errno_of`, the single table of this adapter.
The reasons behind each option and each work-around of a binding trap are in
``docs/fuse-adapter.md``; the short version:

* mfusepy is imported lazily and bound to libfuse3 (it prefers libfuse2 when
  both are installed), so ``import mount.fuse`` and the translation helpers
  work on machines without libfuse;
* :class:`_FuseFixes` repairs what mfusepy 3.1.1 loses on the way: renameat2
  flags (RENAME_EXCHANGE became a plain rename that destroys the target), the
  file handle of ftruncate, the exact UTIME_NOW / UTIME_OMIT markers;
* each mount runs libfuse's loop in its own thread of the daemon; that thread
  first takes a private working directory and umask (``unshare(CLONE_FS)``),
  because libfuse does ``chdir("/")`` for the whole process and the live view
  needs umask 0 (the Volume applies the caller's umask itself), and the
  signal handlers libfuse installs for the whole process are put back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import platform
import shutil
import signal
import socket
import stat as statmod
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from vspfs import procs
from vspfs.attrs import Attr
from vspfs.errors import CacheFull, MountError, NotFound, ProtectedName, ReadOnly, SnapshotInvalid, VspError
from vspfs.syscalls import KERNEL_UTIME_NOW, KERNEL_UTIME_OMIT, UTIME_NOW, UTIME_OMIT

if TYPE_CHECKING:
    from vspfs.snapshot import Snapshot
    from vspfs.volume import Caller, Volume

__all__ = [
    "ERRNO_BY_ERROR",
    "LiveOperations",
    "MountHandle",
    "SnapshotOperations",
    "errno_of",
    "live_options",
    "load_mfusepy",
    "mount_live",
    "mount_snapshot",
    "snapshot_options",
    "stat_dict",
    "timespec_ns",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# ------------------------------------------------------------------ constants

#: what every vspfs mount calls its type: ``fuse.vspfs`` in /proc/self/mountinfo
SUBTYPE = "vspfs"
#: attribute and entry cache lifetime of a virtual drive: a snapshot never changes
SNAPSHOT_CACHE_SECONDS = 3600
#: libfuse 3.14's loop keeps at most 10 workers; saying so for idle ones too
#: silences its "Ignoring invalid max threads value 4294967295" on every mount
#: (its default of -1 is rejected by its own setter) without changing anything
MAX_IDLE_THREADS = 10
#: seconds unmount waits for the FUSE thread after a lazy (busy) unmount
LAZY_GRACE = 1.0
#: readahead asked for each mount's bdi (KiB); the kernel offers 128 KiB. One
#: FUSE request could carry 1 MiB (max_pages 256), but 1 MiB read buffers make
#: glibc's malloc hand pages back and fault them in again on every request
#: (docs/performance.md, "Mounts"): 512 KiB reads are 2-3x faster here
READAHEAD_KB = 512

# fuse_common.h (libfuse 3): capability bits in fuse_conn_info.want
FUSE_CAP_DONT_MASK = 1 << 6
FUSE_CAP_POSIX_ACL = 1 << 19
FUSE_CAP_WRITEBACK_CACHE = 1 << 16
FUSE_CAP_HANDLE_KILLPRIV = 1 << 20

# fuse_main_real's return codes (lib/helper.c, libfuse 3.14), for error messages
_FUSE_MAIN_ERRORS = {
    1: "bad command line options",
    2: "no mount point",
    3: "libfuse rejected the options (fuse_new)",
    4: "the mount itself failed (see libfuse's message on stderr)",
    5: "libfuse could not detach from the terminal",
    6: "libfuse could not install its signal handlers",
    7: "libfuse could not create its loop",
    8: "the FUSE loop ended with an error",
}

_CLONE_FS = 0x00000200
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT

# ----------------------------------------------------------- loading mfusepy

_load_lock = threading.Lock()


def load_mfusepy() -> ModuleType:
    """Import mfusepy bound to libfuse3, or raise MountError saying what to install.

    mfusepy 3.1.1 picks its library at import time: ``FUSE_LIBRARY_PATH`` if
    set, else ``find_library(FUSE_LIBRARY_NAME)`` if set, else
    ``find_library("fuse")`` -- libfuse2 whenever both are installed, which
    would silently lose renameat2 flags, ``fuse_config`` and the libfuse3
    option set. We set ``FUSE_LIBRARY_NAME=fuse3`` for the import only (the
    daemon's children must not inherit it) and check what was loaded, because
    ``FUSE_LIBRARY_PATH`` or an earlier import by someone else wins over it.
    """
    with _load_lock:
        if "mfusepy" not in sys.modules:
            saved = os.environ.get("FUSE_LIBRARY_NAME")
            os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
            try:
                import mfusepy  # noqa: F401
            except ImportError as exc:
                raise MountError(f"mfusepy is not installed ({exc}): pip install mfusepy") from None
            except (OSError, AttributeError) as exc:
                raise MountError(
                    f"libfuse3 cannot be loaded ({exc}): apt-get install fuse3 (libfuse3-3)"
                ) from None
            finally:
                if saved is None:
                    os.environ.pop("FUSE_LIBRARY_NAME", None)
                else:
                    os.environ["FUSE_LIBRARY_NAME"] = saved
        mod = sys.modules["mfusepy"]
    if getattr(mod, "fuse_version_major", None) != 3:
        version = f"{getattr(mod, 'fuse_version_major', '?')}.{getattr(mod, 'fuse_version_minor', '?')}"
        raise MountError(
            f"mfusepy is bound to libfuse {version} ({getattr(mod, '_libfuse_path', '?')}), "
            "vspfs needs libfuse3: unset FUSE_LIBRARY_PATH and install fuse3"
        )
    return mod


def _fuse_os_error(code: int) -> OSError:
    """mfusepy.FuseOSError when mfusepy is loaded; the same OSError otherwise.

    mfusepy turns any OSError into ``-errno``; FuseOSError is only the
    conventional spelling. Falling back keeps the translation testable
    without libfuse.
    """
    mod = sys.modules.get("mfusepy")
    if mod is not None:
        return mod.FuseOSError(code)
    return OSError(code, os.strerror(code))


def _fuse_context() -> tuple[int, int, int, int]:
    """(uid, gid, pid, umask) of the process that made the current request.

    mfusepy's fuse_get_context() leaves out the umask, which struct
    fuse_context has carried since libfuse 2.8 (the kernel sends it with
    every create, mkdir and mknod): read the struct itself. Without that
    struct the umask is reported as 0, and the live view does not ask for
    FUSE_CAP_DONT_MASK (``_context_umask``), so the kernel masks instead.
    """
    mod = load_mfusepy()
    lib = getattr(mod, "_libfuse", None)
    if lib is None:
        uid, gid, pid = mod.fuse_get_context()
        return uid, gid, pid, 0
    ctx = lib.fuse_get_context().contents
    return ctx.uid, ctx.gid, ctx.pid, ctx.umask


def _context_umask() -> bool:
    """True when :func:`_fuse_context` reports the caller's real umask."""
    return getattr(sys.modules.get("mfusepy"), "_libfuse", None) is not None


# --------------------------------------------------------------- errno table

#: domain errors with their errno; a subclass not listed gets its nearest
#: listed base, any other VspError EIO (see errno_of)
ERRNO_BY_ERROR: dict[type[VspError], int] = {
    SnapshotInvalid: errno.EIO,
    CacheFull: errno.ENOSPC,
    ProtectedName: errno.EPERM,
    ReadOnly: errno.EROFS,
    NotFound: errno.ENOENT,
}

_invalid_logged: set[tuple[str, str]] = set()
_invalid_lock = threading.Lock()


def errno_of(exc: BaseException, op: str = "operation") -> int:
    """The errno a FUSE caller sees for ``exc``: the one mapping of this adapter.

    * OSError: its own errno (the live view reports exactly what the backing
      filesystem said); an OSError without a usable errno is EIO;
    * vspfs domain errors: :data:`ERRNO_BY_ERROR`, EIO for the others;
      an invalid snapshot is logged with its reason (once per snapshot and
      reason: a backup reading thousands of files must not flood the log);
    * anything else is a bug: EIO plus a log line with the traceback.
    """
    if isinstance(exc, OSError):
        if isinstance(exc.errno, int) and exc.errno > 0:
            return exc.errno
        log.error("%s: OSError without an errno (%s): returning EIO", op, exc)
        return errno.EIO
    if isinstance(exc, VspError):
        code = errno.EIO
        for cls in type(exc).__mro__:
            if cls in ERRNO_BY_ERROR:
                code = ERRNO_BY_ERROR[cls]  # type: ignore[index]
                break
        else:
            log.error("%s: %s: returning EIO", op, exc)
        if isinstance(exc, SnapshotInvalid):
            key = (exc.snapshot_id, exc.reason)
            with _invalid_lock:
                first = key not in _invalid_logged
                _invalid_logged.add(key)
            log.log(
                logging.ERROR if first else logging.DEBUG,
                "%s: snapshot %s is invalid (%s): its readers get EIO",
                op,
                exc.snapshot_id,
                exc.reason,
            )
        return code
    log.error("%s: unexpected %s: returning EIO", op, type(exc).__name__, exc_info=exc)
    return errno.EIO


def translated(fn: F) -> F:
    """Run one callback; turn whatever it raises into FuseOSError(errno_of(...)).

    Every callback of the operation classes goes through this one wrapper,
    so no exception reaches mfusepy's own catch-all (which would answer
    EINVAL and hide the reason).
    """
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:
            raise _fuse_os_error(errno_of(exc, f"{self._label}: {name}")) from None

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------ pure helpers


def stat_dict(attr: Attr) -> dict[str, int]:
    """An Attr as the dict mfusepy copies into ``struct stat`` (times in ns: use_ns)."""
    return {
        "st_mode": attr.mode,
        "st_ino": attr.ino,
        "st_nlink": attr.nlink,
        "st_uid": attr.uid,
        "st_gid": attr.gid,
        "st_rdev": attr.rdev,
        "st_size": attr.size,
        "st_blocks": attr.blocks,
        "st_blksize": attr.blksize,
        "st_atime": attr.atime_ns,
        "st_mtime": attr.mtime_ns,
        "st_ctime": attr.ctime_ns,
    }


def statvfs_dict(st: os.statvfs_result) -> dict[str, int]:
    """os.statvfs_result as the dict mfusepy copies into ``struct statvfs``."""
    keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail")
    out = {k: getattr(st, k) for k in keys}
    out["f_flag"] = st.f_flag
    out["f_namemax"] = st.f_namemax
    return out


def dirent(name: str, mode: int, ino: int) -> tuple[str, dict[str, int], int]:
    """One readdir entry with its file type and inode number.

    mfusepy reuses one ``struct stat`` for all entries and copies only the keys
    given, so both keys are always given (else an entry inherits the previous
    entry's inode). With use_ino, libfuse hands st_ino to the kernel as d_ino.
    """
    return (name, {"st_mode": statmod.S_IFMT(mode), "st_ino": ino}, 0)


def timespec_ns(tv_sec: int, tv_nsec: int) -> int:
    """One ``struct timespec`` of utimensat as the Volume takes it.

    UTIME_NOW and UTIME_OMIT travel in tv_nsec (tv_sec is meaningless then,
    libfuse sets 0); they are passed on as the markers themselves, anything
    else as nanoseconds since the epoch.
    """
    if tv_nsec == KERNEL_UTIME_NOW:
        return UTIME_NOW
    if tv_nsec == KERNEL_UTIME_OMIT:
        return UTIME_OMIT
    return tv_sec * 1_000_000_000 + tv_nsec


def utimens_times(times: tuple[int, int] | None) -> tuple[int, int]:
    """mfusepy's ``times`` argument (ns with use_ns, or None) -> (atime_ns, mtime_ns).

    None is utimes(path, NULL): both set to now.
    """
    if times is None:
        return UTIME_NOW, UTIME_NOW
    atime, mtime = times
    return int(atime), int(mtime)


def chown_id(value: int) -> int:
    """-1 (or its unsigned 32-bit form) means "leave unchanged" in chown."""
    return -1 if value in (-1, 0xFFFFFFFF) else value


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def _parent_of(path: str) -> str:
    head = path.rstrip("/").rsplit("/", 1)[0]
    return head or "/"


def _safe_name(text: str) -> str:
    """A name usable inside a ``-o`` option (no commas, spaces or escapes)."""
    return "".join(c if c.isalnum() or c in "._:@+-" else "_" for c in text)


# ------------------------------------------------------ mfusepy FUSE repairs


class _FuseFixes:
    """Overrides of mfusepy.FUSE methods that lose information (mfusepy 3.1.1).

    Kept free of mfusepy so it is testable without libfuse; :func:`_fuse_class`
    puts it in front of ``mfusepy.FUSE``. Each method is a libfuse3 callback
    that mfusepy's ``_wrapper`` calls with the raw C arguments.
    """

    operations: Any
    encoding: str
    errors: str

    def _decode(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        """mfusepy drops the renameat2 flags: RENAME_EXCHANGE would destroy the target."""
        return self.operations.rename(self._decode(old), self._decode(new), int(flags))

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        """mfusepy drops the file handle: ftruncate of an unlinked open file would fail."""
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(self._decode(path), length, fh)

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        """Read UTIME_NOW / UTIME_OMIT from tv_nsec instead of summing them into a time."""
        if buf:
            times: tuple[int, int] | None = (
                timespec_ns(buf.contents.actime.tv_sec, buf.contents.actime.tv_nsec),
                timespec_ns(buf.contents.modtime.tv_sec, buf.contents.modtime.tv_nsec),
            )
        else:
            times = None
        return self.operations.utimens(self._decode(path), times)


_fuse_cls: type | None = None


def _fuse_class() -> type:
    """mfusepy.FUSE with :class:`_FuseFixes` in front (built once mfusepy is loaded)."""
    global _fuse_cls
    if _fuse_cls is None:
        mod = load_mfusepy()
        _fuse_cls = type("VspfsFUSE", (_FuseFixes, mod.FUSE), {"__module__": __name__})
    return _fuse_cls


# ------------------------------------------------------- operation classes


class _Operations:
    """What both views share: the init hook, naming, statfs.

    Duck-typed for mfusepy (which looks callbacks up by name and never
    requires its Operations base), so these classes import without libfuse.
    Helper names start with "_": any public name that matches a libfuse
    callback would be registered with libfuse.
    """

    #: times in integer nanoseconds, both ways (mfusepy's use_ns)
    use_ns = True
    _label = "vspfs"

    def __init__(self) -> None:
        #: called once libfuse has answered the kernel's INIT (see MountHandle)
        self._on_init: Callable[[], None] | None = None

    def _tune(self, conn: Any, config: Any) -> None:
        """Adjust the connection before libfuse answers INIT (subclasses extend it).

        POSIX_ACL: with ``default_permissions`` the kernel checks access
        itself, and without this capability it ignores ACLs and decides by
        the mode bits alone: a user granted access by an ACL entry (``setfacl
        -m u:alice:rx``) was refused on the live view and on drives, and one
        denied by an entry (``u:bob:---``) was let in through the other
        bits. With it the kernel reads ``system.posix_acl_*`` through
        getxattr (the backing file's ACL, or the snapshot's preserved one)
        and checks them as the backing filesystem would; keeping the mode in
        step with the ACL and inheriting default ACLs stay with the backing
        filesystem, which does both.
        """
        if conn is not None and getattr(conn, "capable", 0) & FUSE_CAP_POSIX_ACL:
            conn.want |= FUSE_CAP_POSIX_ACL

    def init_with_config(self, conn: Any, config: Any) -> None:
        """libfuse3's init: tune the connection, undo libfuse's signal handlers, report ready.

        Runs in the loop after ``fuse_set_signal_handlers``, so this is the
        first point where its handlers can be put back (restore_signals).
        Must not raise: libfuse cannot report an init failure usefully.
        """
        try:
            self._tune(conn, config)
        except Exception:
            log.exception("%s: could not tune the FUSE connection", self._label)
        try:
            restore_signals()
        except Exception:
            log.exception("%s: could not restore the signal handlers libfuse replaced", self._label)
        hook = self._on_init
        if hook is not None:
            hook()


class LiveOperations(_Operations):
    """The live view: every callback is one Volume call, caller passed for creations."""

    def __init__(self, volume: Volume, *, context: Callable[[], tuple[int, ...]] | None = None) -> None:
        super().__init__()
        self.volume = volume
        self._context = context or _fuse_context
        #: whether the context reports the caller's umask (then the kernel is
        #: told not to apply it: the Volume does, knowing the parent's ACL)
        self._reports_umask = context is None
        self._label = f"live view of {volume.backing}"

    def _caller(self) -> Caller:
        """The requesting process: (uid, gid, pid) and, from libfuse, its umask."""
        from vspfs.volume import Caller

        return Caller(*self._context())

    def _tune(self, conn: Any, config: Any) -> None:
        """No writeback cache (every write must pass the COW engine when it
        happens) and no HANDLE_KILLPRIV: libfuse's high-level API would not
        clear set-user-ID bits on write, so the kernel must do it (it sends a
        chmod, as the backing filesystem would have done).

        DONT_MASK: the kernel would apply the caller's umask to the mode of
        every new object even in a directory with a default ACL, where the
        umask must not apply; with it the Volume applies the umask itself
        (``Volume._creation_mode``)."""
        super()._tune(conn, config)
        if conn is not None:
            conn.want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_HANDLE_KILLPRIV)
            if self._reports_umask and _context_umask() and getattr(conn, "capable", 0) & FUSE_CAP_DONT_MASK:
                conn.want |= FUSE_CAP_DONT_MASK

    # -- attributes and names

    @translated
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        if path is None and fh is None:
            raise OSError(errno.ESTALE, "no path and no file handle")
        # with fh the Volume stats the open file (path is None once it was unlinked)
        return stat_dict(self.volume.getattr(path if path is not None else "", fh))

    @translated
    def readlink(self, path: str) -> str:
        return self.volume.readlink(path)

    @translated
    def readdir(self, path: str, fh: int = 0) -> list[tuple[str, dict[str, int] | None, int]]:
        """Names with their inode numbers and types (d_ino/d_type as the backing has them).

        Built as a list inside the wrapper: a generator would raise inside
        mfusepy, past the errno translation. An entry that vanished between
        listing and stat is still listed, with unknown type and inode, as a
        racing readdir on the backing filesystem would list it.
        """
        vol = self.volume
        here = vol.getattr(path)
        up = here if path.strip("/") == "" else vol.getattr(_parent_of(path))
        out: list[tuple[str, dict[str, int] | None, int]] = [
            dirent(".", here.mode, here.ino),
            dirent("..", up.mode, up.ino),
        ]
        for name in vol.readdir(path):
            try:
                attr = vol.getattr(_join(path, name))
            except OSError:
                out.append((name, None, 0))
                continue
            out.append(dirent(name, attr.mode, attr.ino))
        return out

    @translated
    def statfs(self, path: str) -> dict[str, int]:
        return statvfs_dict(self.volume.statfs())

    # -- open files

    @translated
    def open(self, path: str, flags: int) -> int:
        return self.volume.open(path, flags, self._caller())

    @translated
    def create(self, path: str, mode: int, flags: int) -> int:
        return self.volume.create(path, flags, mode, self._caller())

    @translated
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.volume.read(fh, size, offset)

    @translated
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self.volume.write(fh, data, offset)

    @translated
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if path is None and fh is None:
            raise OSError(errno.ESTALE, "no path and no file handle")
        self.volume.truncate(path if path is not None else "", length, fh)
        return 0

    @translated
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        self.volume.fallocate(fh, mode, offset, size)
        return 0

    @translated
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.volume.fsync(fh, bool(datasync))
        return 0

    @translated
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        """fsync of a directory: the backing directory is flushed (Volume.fsyncdir)."""
        if path is None:
            raise OSError(errno.ESTALE, "fsync of a removed directory")
        self.volume.fsyncdir(path, bool(datasync))
        return 0

    @translated
    def flush(self, path: str | None, fh: int) -> int:
        self.volume.flush(fh)
        return 0

    @translated
    def release(self, path: str | None, fh: int) -> int:
        self.volume.release(fh)
        return 0

    # -- namespace

    @translated
    def unlink(self, path: str) -> int:
        self.volume.unlink(path)
        return 0

    @translated
    def rmdir(self, path: str) -> int:
        self.volume.rmdir(path)
        return 0

    @translated
    def mkdir(self, path: str, mode: int) -> int:
        self.volume.mkdir(path, mode, self._caller())
        return 0

    @translated
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self.volume.mknod(path, mode, dev, self._caller())
        return 0

    @translated
    def symlink(self, path: str, target: str) -> int:
        """mfusepy's order: the new link's path first, then what it points to."""
        self.volume.symlink(target, path, self._caller())
        return 0

    @translated
    def link(self, new: str, existing: str) -> int:
        """mfusepy's order: the new name first, then the existing one."""
        self.volume.link(existing, new)
        return 0

    @translated
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self.volume.rename(old, new, flags)
        return 0

    # -- metadata

    @translated
    def chmod(self, path: str | None, mode: int) -> int:
        if path is None:
            raise OSError(errno.ESTALE, "chmod of a removed open file")
        self.volume.chmod(path, statmod.S_IMODE(mode))
        return 0

    @translated
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        if path is None:
            raise OSError(errno.ESTALE, "chown of a removed open file")
        self.volume.chown(path, chown_id(uid), chown_id(gid))
        return 0

    @translated
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        if path is None:
            raise OSError(errno.ESTALE, "utimens of a removed open file")
        atime, mtime = utimens_times(times)
        self.volume.utimens(path, atime, mtime)
        return 0

    @translated
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self.volume.setxattr(path, name, value, options)
        return 0

    @translated
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.volume.getxattr(path, name)

    @translated
    def listxattr(self, path: str) -> list[str]:
        return list(self.volume.listxattr(path))

    @translated
    def removexattr(self, path: str, name: str) -> int:
        self.volume.removexattr(path, name)
        return 0


class SnapshotOperations(_Operations):
    """A virtual drive: the snapshot's read calls; every change is EROFS.

    The mount is ``ro`` too, so the kernel refuses most changes before they
    arrive; the callbacks below answer the rest (and any libfuse that asks).
    """

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot
        self._label = f"snapshot {snapshot.id}"

    def _refuse(self, what: str, path: str | None = None) -> None:
        raise ReadOnly(f"{what} {path or ''}: snapshot {self.snapshot.id} is a read-only virtual drive")

    @translated
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        if path is None:
            raise OSError(errno.ESTALE, "no path")
        return stat_dict(self.snapshot.getattr(path))

    @translated
    def readlink(self, path: str) -> str:
        return self.snapshot.readlink(path)

    @translated
    def readdir(self, path: str, fh: int = 0) -> list[tuple[str, dict[str, int], int]]:
        """Every entry carries its snapshot-time inode, so hard links stay hard links."""
        snap = self.snapshot
        here = snap.getattr(path)
        up = here if path.strip("/") == "" else snap.getattr(_parent_of(path))
        out = [dirent(".", here.mode, here.ino), dirent("..", up.mode, up.ino)]
        out.extend(dirent(name, ftype, ino) for name, ino, ftype in snap.readdir(path))
        return out

    @translated
    def statfs(self, path: str) -> dict[str, int]:
        out = statvfs_dict(self.snapshot.statfs())
        out["f_flag"] |= os.ST_RDONLY
        return out

    @translated
    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            self._refuse("open for writing", path)
        return self.snapshot.open(path)

    @translated
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.snapshot.read(fh, size, offset)

    @translated
    def release(self, path: str | None, fh: int) -> int:
        self.snapshot.release(fh)
        return 0

    # no flush: libfuse answers ENOSYS for a missing flush (and lock), after
    # which the kernel stops sending FLUSH on every close of the mount; a
    # read-only drive has nothing to flush, and tar saves one round trip a file

    @translated
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        return 0

    @translated
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.snapshot.getxattr(path, name)

    @translated
    def listxattr(self, path: str) -> list[str]:
        return list(self.snapshot.listxattr(path))

    # -- everything that would change something

    @translated
    def create(self, path: str, mode: int, flags: int) -> int:
        self._refuse("create", path)
        return 0

    @translated
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self._refuse("write", path)
        return 0

    @translated
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._refuse("truncate", path)
        return 0

    @translated
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        self._refuse("fallocate", path)
        return 0

    @translated
    def unlink(self, path: str) -> int:
        self._refuse("unlink", path)
        return 0

    @translated
    def rmdir(self, path: str) -> int:
        self._refuse("rmdir", path)
        return 0

    @translated
    def mkdir(self, path: str, mode: int) -> int:
        self._refuse("mkdir", path)
        return 0

    @translated
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._refuse("mknod", path)
        return 0

    @translated
    def symlink(self, path: str, target: str) -> int:
        self._refuse("symlink", path)
        return 0

    @translated
    def link(self, new: str, existing: str) -> int:
        self._refuse("link", new)
        return 0

    @translated
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._refuse("rename", old)
        return 0

    @translated
    def chmod(self, path: str | None, mode: int) -> int:
        self._refuse("chmod", path)
        return 0

    @translated
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self._refuse("chown", path)
        return 0

    @translated
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        self._refuse("utimens", path)
        return 0

    @translated
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._refuse("setxattr", path)
        return 0

    @translated
    def removexattr(self, path: str, name: str) -> int:
        self._refuse("removexattr", path)
        return 0


# ----------------------------------------------------------- mount options


def _backing_flags(backing_flags: int, is_root: bool) -> dict[str, bool]:
    """Mirror the backing mount's suid/dev/exec flags onto the live view.

    libfuse mounts nosuid,nodev by default; a live view over a directory
    that holds set-user-ID programs or device nodes must not change what
    they do. Only root may ask for suid/dev (fusermount3 refuses others).
    """
    out: dict[str, bool] = {}
    if is_root:
        out["suid" if not backing_flags & os.ST_NOSUID else "nosuid"] = True
        out["dev" if not backing_flags & os.ST_NODEV else "nodev"] = True
    if backing_flags & os.ST_NOEXEC:
        out["noexec"] = True
    return out


def live_options(
    volume_id: str, *, allow_other: bool = False, backing_flags: int = 0, is_root: bool | None = None
) -> dict[str, Any]:
    """mfusepy keyword options of a live view (see docs/fuse-adapter.md for each)."""
    opts: dict[str, Any] = {
        "fsname": f"vspfs-live:{_safe_name(volume_id)}",
        "subtype": SUBTYPE,
        "default_permissions": True,
        "auto_unmount": True,
        "attr_timeout": 0,
        "entry_timeout": 0,
        "negative_timeout": 0,
        "use_ino": True,
        "max_idle_threads": MAX_IDLE_THREADS,
    }
    if allow_other:
        opts["allow_other"] = True
    opts.update(_backing_flags(backing_flags, os.geteuid() == 0 if is_root is None else is_root))
    return opts


def snapshot_options(snapshot_id: str, *, allow_other: bool = False) -> dict[str, Any]:
    """mfusepy keyword options of a virtual drive (see docs/fuse-adapter.md for each)."""
    opts: dict[str, Any] = {
        "fsname": f"vspfs:{_safe_name(snapshot_id)}",
        "subtype": SUBTYPE,
        "ro": True,
        "default_permissions": True,
        "auto_unmount": True,
        "use_ino": True,
        "kernel_cache": True,
        "attr_timeout": SNAPSHOT_CACHE_SECONDS,
        "entry_timeout": SNAPSHOT_CACHE_SECONDS,
        "negative_timeout": SNAPSHOT_CACHE_SECONDS,
        "max_idle_threads": MAX_IDLE_THREADS,
    }
    if allow_other:
        opts["allow_other"] = True
    return opts


# ------------------------------------------------- process-wide side effects


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def private_fs_state() -> bool:
    """Give the calling thread its own cwd and umask, then set umask 0.

    libfuse3's fuse_main does ``chdir("/")`` even in the foreground, which
    would move the whole daemon; and the live view must create files with
    exactly the mode the Volume computed (it applies the caller's umask
    itself, see ``Volume._creation_mode``). ``unshare(CLONE_FS)`` makes both affect only this thread and the
    worker threads libfuse starts from it. False (and a warning) if the
    kernel refuses, in which case the daemon's umask applies a second time.
    """
    libc = _libc()
    if libc.unshare(_CLONE_FS) != 0:
        err = ctypes.get_errno()
        log.warning("unshare(CLONE_FS) failed (%s): libfuse will change the daemon's cwd", os.strerror(err))
        return False
    os.umask(0)
    return True


# sigaction: glibc's struct sigaction starts with the handler on the
# architectures below (MIPS puts sa_flags first); 256 bytes hold it anywhere.
_SIGACTION_SIZE = 256
_HANDLER_FIRST = not platform.machine().lower().startswith("mips")
_LIBFUSE_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGHUP", "SIGINT", "SIGTERM", "SIGPIPE") if hasattr(signal, name)
)


def c_signal_handler(sig: int) -> int:
    """The C-level handler address of ``sig`` (0 = SIG_DFL, 1 = SIG_IGN)."""
    buf = ctypes.create_string_buffer(_SIGACTION_SIZE)
    if _libc().sigaction(sig, None, buf) != 0:
        raise OSError(ctypes.get_errno(), "sigaction")
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_void_p)], sys.byteorder)


def restore_signals() -> list[int]:
    """Put back SIG_DFL where libfuse replaced a default disposition.

    fuse_main installs its exit handler for SIGHUP/SIGINT/SIGTERM (and a
    no-op for SIGPIPE) wherever the disposition is SIG_DFL, for the whole
    process; that handler stops only the *last* session started and never
    lets the process die. Python's own handlers (and SIG_IGN) are left
    alone by libfuse, so the only dispositions to repair are those Python
    believes are SIG_DFL. Python's handler table is readable from any thread;
    sigaction via ctypes because signal.signal works only in the main thread.
    """
    if not _HANDLER_FIRST:
        return []
    restored = []
    libc = _libc()
    for sig in _LIBFUSE_SIGNALS:
        if signal.getsignal(sig) != signal.SIG_DFL:
            continue
        if c_signal_handler(sig) == 0:
            continue
        dfl = ctypes.create_string_buffer(_SIGACTION_SIZE)  # zeroed: SIG_DFL, empty mask, no flags
        if libc.sigaction(sig, dfl, None) == 0:
            restored.append(sig)
    if restored:
        log.debug("restored SIG_DFL for %s after libfuse", [signal.Signals(s).name for s in restored])
    return restored


# ------------------------------------------------------------ mount table


def _unescape(field_text: str) -> str:
    """Undo mountinfo's octal escapes (\\040 for a space, \\134 for a backslash ...)."""
    out, i = [], 0
    while i < len(field_text):
        c = field_text[i]
        if c == "\\" and field_text[i + 1 : i + 4].isdigit() and len(field_text[i + 1 : i + 4]) == 3:
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def mounts_at(path: str) -> list[dict[str, str]]:
    """The entries of /proc/self/mountinfo whose mount point is ``path``, oldest first."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 7 or "-" not in fields:
            continue
        mp = _unescape(fields[4])
        if mp != path:
            continue
        sep = fields.index("-", 6)
        rest = fields[sep + 1 :]
        found.append(
            {
                "id": fields[0],
                "dev": fields[2],
                "fstype": rest[0] if rest else "",
                "source": _unescape(rest[1]) if len(rest) > 1 else "",
            }
        )
    return found


# ------------------------------------------------------------ mount checks


def _check_tools(mountpoint: str) -> str:
    tool = shutil.which("fusermount3")
    if tool is None:
        raise MountError(f"cannot mount at {mountpoint}: fusermount3 is missing; apt-get install fuse3")
    if not os.path.exists("/dev/fuse"):
        raise MountError(
            f"cannot mount at {mountpoint}: /dev/fuse is missing; modprobe fuse "
            "(in a container: --device /dev/fuse)"
        )
    return tool


def _check_mountpoint(mountpoint: str, *, may_be_non_empty: bool) -> str:
    """The real path of a usable mount point, or MountError saying what to do."""
    real = os.path.realpath(mountpoint)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise MountError(f"cannot mount at {mountpoint}: no such directory; create it first") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(
                f"cannot mount at {mountpoint}: a dead FUSE mount is there; remove it with "
                f"fusermount3 -u -z {mountpoint}"
            ) from None
        raise MountError(f"cannot mount at {mountpoint}: {exc.strerror}") from None
    if not statmod.S_ISDIR(st.st_mode):
        raise MountError(f"cannot mount at {mountpoint}: not a directory; give an empty directory")
    with _registry_lock:
        if real in _registry:
            raise MountError(f"cannot mount at {mountpoint}: vspfs already mounts something there")
    here = mounts_at(real)
    if here and (not may_be_non_empty or here[-1]["fstype"].startswith("fuse")):
        raise MountError(
            f"cannot mount at {mountpoint}: it is busy ({here[-1]['fstype']} {here[-1]['source']} "
            f"is mounted there); unmount it first or choose another directory"
        )
    if not may_be_non_empty:
        try:
            entries = os.listdir(real)
        except OSError as exc:
            raise MountError(f"cannot mount at {mountpoint}: {exc.strerror}") from None
        if entries:
            raise MountError(
                f"cannot mount at {mountpoint}: the directory is not empty; give an empty directory"
            )
    return real


# ------------------------------------------------- the auto_unmount helper
#
# With auto_unmount, libfuse mounts through fusermount3 over a socketpair and
# leaves fusermount3 running as our child, waiting for its end of the pair to
# be closed so that it can unmount if we die. libfuse never closes our end
# (not on unmount either): each drive would cost a descriptor and a process
# until the daemon exits. MountHandle finds both while the mount comes up and
# releases them when its FUSE loop has ended.
#
# Each later mount forks a fusermount3 that inherits every descriptor not
# marked close-on-exec, so the socket is marked as soon as it is found.
#
# Lock: _mount_start_lock serialises the window from "list our descriptors"
# to "libfuse answered INIT" across mounts, so that the one unnamed socketpair
# that appeared in it is this mount's. It is taken by the FUSE thread and
# released by whichever thread runs the init hook, or by the FUSE thread if
# the mount fails; nothing else is taken while it is held.

_mount_start_lock = threading.Lock()
#: how long a mount waits for another mount's start window before going
#: ahead without finding its helper (which then lives until the daemon exits)
MOUNT_START_WAIT = 30.0
#: how long the end of a FUSE loop waits for the released helper to exit
HELPER_EXIT_WAIT = 2.0


def _open_fds() -> set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def _is_own_socketpair(fd: int) -> bool:
    """True for an unnamed AF_UNIX stream socket whose peer was created by this process."""
    try:
        if not statmod.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            return False
        if sock.getsockname() or sock.getpeername():
            return False  # a control-channel connection, not a socketpair
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        return pid == os.getpid()
    except OSError:
        return False
    finally:
        sock.detach()


def _helper_pid(mountpoint: str) -> int | None:
    """The running fusermount3 child of this process that watches ``mountpoint``."""
    for pid in procs.children(os.getpid()):
        args = procs.argv(pid)
        is_helper = bool(args) and os.path.basename(args[0]) == b"fusermount3" and b"-u" not in args
        if is_helper and os.fsdecode(args[-1]) == mountpoint:
            return pid
    return None


def _release_helper(fd: int | None, pid: int | None, mountpoint: str) -> None:
    """Close our end of the helper's socketpair and reap the helper."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError as exc:
            log.warning("%s: could not close the fusermount3 socket: %s", mountpoint, exc)
    if pid is None:
        return
    deadline = time.monotonic() + HELPER_EXIT_WAIT
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() >= deadline:
            if not done:
                log.warning("%s: fusermount3 helper %d did not exit", mountpoint, pid)
            return
        time.sleep(0.01)


# ---------------------------------------------------------------- handles

_registry: dict[str, MountHandle] = {}
_registry_lock = threading.Lock()


class MountHandle:
    """One FUSE mount served by a thread of this process.

    ``mountpoint`` is the real path. Nothing here goes through the mount
    after it is made (readiness comes from libfuse's init and from
    /proc/self/mountinfo), so a live view mounted over its backing directory
    is never entered by its own daemon.
    """

    def __init__(self, operations: _Operations, mountpoint: str, options: dict[str, Any], what: str) -> None:
        self.mountpoint = mountpoint
        self.what = what
        self.fsname: str = options["fsname"]
        self.options = dict(options)
        self._ops = operations
        self._before = {m["id"] for m in mounts_at(mountpoint)}
        self._mount: dict[str, str] | None = None
        self._initialised = threading.Event()
        self._ended = threading.Event()
        self._error: BaseException | None = None
        self._tuned = False
        # the auto_unmount helper (see _mount_start_lock): our socket end and its pid
        self._start_lock_held = False
        self._start_state = threading.Lock()
        self._fds_before: set[int] = set()
        self._helper_fd: int | None = None
        self._helper: int | None = None
        operations._on_init = self._on_init
        self._thread = threading.Thread(target=self._serve, name=f"vspfs-fuse {mountpoint}", daemon=True)

    def __repr__(self) -> str:
        return f"<MountHandle {self.what} at {self.mountpoint}>"

    # -- the FUSE thread

    def _start(self) -> None:
        with _registry_lock:
            _registry[self.mountpoint] = self
        self._thread.start()

    def _enter_start_window(self) -> None:
        if not self.options.get("auto_unmount"):
            return
        if _mount_start_lock.acquire(timeout=MOUNT_START_WAIT):
            self._fds_before = _open_fds()
            self._start_lock_held = True
        else:
            log.warning("%s: another mount is slow to start; its fusermount3 helper stays until exit", self)

    def _leave_start_window(self, *, find_helper: bool) -> None:
        with self._start_state:
            if not self._start_lock_held:
                return
            try:
                if find_helper:
                    found = [fd for fd in sorted(_open_fds() - self._fds_before) if _is_own_socketpair(fd)]
                    if len(found) == 1:
                        self._helper_fd = found[0]
                        # libfuse leaves it inheritable: the next mount's fusermount3 would
                        # keep a copy, and this helper would outlive our close
                        os.set_inheritable(found[0], False)
                        self._helper = _helper_pid(self.mountpoint)
                    else:
                        log.warning("%s: %d fusermount3 socket candidates; left open", self, len(found))
            finally:
                self._start_lock_held = False
                _mount_start_lock.release()

    def _on_init(self) -> None:
        self._leave_start_window(find_helper=True)
        self._initialised.set()

    def _serve(self) -> None:
        try:
            private_fs_state()
            self._enter_start_window()
            cls = _fuse_class()
            cls(
                self._ops,
                self.mountpoint,
                raw_fi=False,
                encoding=sys.getfilesystemencoding(),
                errors=sys.getfilesystemencodeerrors(),
                foreground=True,
                **self.options,
            )
        except RuntimeError as exc:
            code = exc.args[0] if exc.args else None
            self._error = MountError(
                f"{self.what} at {self.mountpoint}: "
                f"{_FUSE_MAIN_ERRORS.get(code, f'libfuse failed ({exc})') if isinstance(code, int) else exc}"
            )
        except BaseException as exc:
            self._error = exc
        finally:
            self._leave_start_window(find_helper=False)
            # the loop has ended, so the mount is gone: the helper has nothing left to watch
            _release_helper(self._helper_fd, self._helper, self.mountpoint)
            self._helper_fd = self._helper = None
            self._ended.set()
            with _registry_lock:
                if _registry.get(self.mountpoint) is self:
                    del _registry[self.mountpoint]
            if self._error is not None and not isinstance(self._error, MountError):
                log.error("%s at %s: FUSE thread failed", self.what, self.mountpoint, exc_info=self._error)

    # -- state

    def _find(self) -> dict[str, str] | None:
        """Our entry in /proc/self/mountinfo: new since start, fuse.vspfs, our fsname."""
        for m in reversed(mounts_at(self.mountpoint)):
            if m["id"] not in self._before and m["source"] == self.fsname and m["fstype"].startswith("fuse"):
                return m
        return None

    @property
    def mounted(self) -> bool:
        """True while our mount is attached at the mount point."""
        return self._find() is not None

    @property
    def serving(self) -> bool:
        """True while the FUSE thread runs (after a lazy unmount: while files stay open)."""
        return self._thread.is_alive()

    def wait_ready(self, timeout: float = 15.0) -> bool:
        """Wait until the mount is attached and libfuse answered INIT.

        True when ready, False after ``timeout`` seconds; MountError when the
        FUSE thread ended instead (the mount failed).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._ended.is_set():
                err = self._error
                if isinstance(err, MountError):
                    raise MountError(f"cannot mount the {err}")
                raise MountError(
                    f"cannot mount the {self.what} at {self.mountpoint}: "
                    f"{err or 'libfuse stopped at once (see its message on stderr)'}"
                )
            if self._initialised.is_set():
                found = self._find()
                if found is not None:
                    self._mount = found
                    self._after_ready()
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._ended.wait(min(0.02, remaining))

    def _after_ready(self) -> None:
        """A larger readahead for the connection's bdi (best effort: root only),
        and the suid/dev flags the options asked for."""
        if self._tuned or self._mount is None:
            return
        self._tuned = True
        self._restore_flags()
        path = f"/sys/class/bdi/{self._mount['dev']}/read_ahead_kb"
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(str(READAHEAD_KB))
        except OSError as exc:
            log.debug("could not raise the readahead of %s (%s): %s", self.mountpoint, path, exc)

    def _restore_flags(self) -> None:
        """With auto_unmount, libfuse mounts through fusermount3, which only
        hears the flags that are on (nosuid, nodev...) and applies its default
        MS_NOSUID|MS_NODEV: a live view would stop device nodes and set-ID
        programs from working. Root asks for them again on the mount itself."""
        wanted = [flag for flag in ("suid", "dev") if self.options.get(flag)]
        if not wanted or os.geteuid() != 0:
            return
        if self.options.get("noexec"):
            wanted.append("noexec")
        cmd = ["mount", "-o", ",".join(["remount", "bind", *wanted]), self.mountpoint]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("could not restore %s on %s: %s", ",".join(wanted), self.mountpoint, exc)
            return
        if proc.returncode != 0:
            log.warning(
                "could not restore %s on %s: %s", ",".join(wanted), self.mountpoint, proc.stderr.strip()
            )

    # -- unmount

    def unmount(self, timeout: float = 15.0) -> str:
        """Unmount and wait for the FUSE thread; every step is bounded by ``timeout``.

        ``fusermount3 -u`` first; if the mount is busy, ``fusermount3 -u -z``
        (a lazy unmount: the name goes away at once, open files keep working
        until closed). Returns "unmounted", "detached" (lazy, or the thread
        still serves open files) or "not mounted". MountError if the mount is
        still attached at the end.
        """
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        if self._thread.is_alive() and not self._initialised.is_set():
            # still coming up: let it finish (or fail) so there is something to unmount
            self._initialised.wait(min(left(), timeout / 2))
        how = "unmounted"
        if self.mounted:
            ok, why = _fusermount(["-u", self.mountpoint], left())
            if not ok and self.mounted:
                log.warning("%s: %s; detaching it lazily", self.mountpoint, why)
                ok_lazy, why_lazy = _fusermount(["-u", "-z", self.mountpoint], left())
                how = "detached"
                if not ok_lazy and self.mounted:
                    raise MountError(
                        f"cannot unmount {self.mountpoint}: {why}; lazy unmount failed too: {why_lazy}"
                    )
        elif not self._thread.is_alive():
            return "not mounted"
        # after a lazy unmount the loop ends only when the last open file is
        # closed, which waiting here does not hasten: a short grace, then report
        self._thread.join(left() if how == "unmounted" else min(left(), LAZY_GRACE))
        if self._thread.is_alive():
            log.warning(
                "%s: unmounted, but its FUSE thread still serves files that stay open", self.mountpoint
            )
            return "detached"
        return how


def _fusermount(args: list[str], timeout: float) -> tuple[bool, str]:
    """Run fusermount3 with a timeout; (ok, one-line reason)."""
    tool = shutil.which("fusermount3")
    if tool is None:
        return False, "fusermount3 is missing (apt-get install fuse3)"
    try:
        res = subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"fusermount3 {' '.join(args)} did not finish within {timeout:.3g} s"
    if res.returncode == 0:
        return True, ""
    msg = (res.stderr or res.stdout).strip().splitlines()
    return False, msg[-1] if msg else f"fusermount3 exited with {res.returncode}"


# ------------------------------------------------------------ entry points


def mount_live(
    volume: Volume, mountpoint: str, *, allow_other: bool = False, over: bool = False
) -> MountHandle:
    """Mount the live view of ``volume`` at ``mountpoint`` (its own backing directory if ``over``).

    The Volume already holds a directory fd of its backing tree, taken
    before this mount, so mounting over the backing directory keeps its
    access to the tree underneath. Returns at once; call ``wait_ready``.
    """
    _check_tools(mountpoint)
    load_mfusepy()
    backing = os.path.realpath(volume.backing)
    real = os.path.realpath(mountpoint)
    if over and real != backing:
        raise MountError(
            f"cannot mount the live view over {mountpoint}: "
            f"it is not the volume's backing directory {backing}"
        )
    if not over and (real == backing or os.path.commonpath([real, backing]) == backing):
        raise MountError(
            f"cannot mount the live view at {mountpoint}: it lies inside the volume it serves; "
            "choose a directory outside it, or mount over the backing directory"
        )
    real = _check_mountpoint(mountpoint, may_be_non_empty=over)
    try:
        flags = os.statvfs(real).f_flag
    except OSError:
        flags = 0
    options = live_options(volume.volume_id, allow_other=allow_other, backing_flags=flags)
    handle = MountHandle(LiveOperations(volume), real, options, f"live view of {backing}")
    handle._start()
    return handle


def mount_snapshot(snapshot: Snapshot, mountpoint: str, *, allow_other: bool = False) -> MountHandle:
    """Mount ``snapshot`` read-only at the empty directory ``mountpoint``. Returns at once."""
    _check_tools(mountpoint)
    load_mfusepy()
    real = _check_mountpoint(mountpoint, may_be_non_empty=False)
    options = snapshot_options(snapshot.id, allow_other=allow_other)
    handle = MountHandle(SnapshotOperations(snapshot), real, options, f"snapshot {snapshot.id}")
    handle._start()
    return handle


def active_mounts() -> list[MountHandle]:
    """The mounts this process serves now (for diagnostics and tests)."""
    with _registry_lock:
        return list(_registry.values())
