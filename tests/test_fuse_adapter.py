"""The FUSE adapter's translation, tested without any mount.

What is checked here is what mfusepy and libfuse would otherwise hide: the
single errno table, the renameat2 flags that mfusepy 3.1.1 drops, the
UTIME_NOW / UTIME_OMIT markers, chown's -1, inode numbers in readdir, the
read-only virtual drive, and the process-wide side effects of libfuse
(signal handlers, library choice). The operation classes are driven
directly with fake volumes and snapshots that record each call, so no
libfuse is needed except where a test says so and skips without it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mount import fuse
from vspfs.attrs import Attr
from vspfs.errors import (
    CacheFull,
    CacheOverflow,
    MountError,
    NotFound,
    ProtectedName,
    ReadOnly,
    RuleViolation,
    SnapshotInvalid,
    UsageError,
)
from vspfs.syscalls import (
    KERNEL_UTIME_NOW,
    KERNEL_UTIME_OMIT,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    UTIME_NOW,
    UTIME_OMIT,
)

ROOT = Path(__file__).resolve().parent.parent


def attr(mode: int, ino: int, nlink: int = 1) -> Attr:
    return Attr(
        mode=mode,
        ino=ino,
        nlink=nlink,
        uid=1000,
        gid=100,
        rdev=0,
        size=42,
        blocks=8,
        blksize=4096,
        atime_ns=1_000_000_001,
        mtime_ns=2_000_000_002,
        ctime_ns=3_000_000_003,
    )


class Recorder:
    """A stand-in for Volume or Snapshot: records every call, answers from ``answers``."""

    def __init__(self, **answers: Any) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.answers = answers

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            self.calls.append((name, args))
            answer = self.answers.get(name)
            if isinstance(answer, BaseException):
                raise answer
            return answer(*args) if callable(answer) else answer

        return call


class FakeVolume(Recorder):
    backing = "/srv/volume"
    volume_id = "vol123"


class FakeSnapshot(Recorder):
    id = "20260101-abcdef"


def live(**answers: Any) -> tuple[fuse.LiveOperations, FakeVolume]:
    vol = FakeVolume(**answers)
    ops = fuse.LiveOperations(vol, context=lambda: (1234, 567, 89))  # type: ignore[arg-type]
    return ops, vol


def errno_raised(fn: Any, *args: Any) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


# ------------------------------------------------------------- errno table


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (FileNotFoundError(errno.ENOENT, "gone"), errno.ENOENT),
        (FileExistsError(errno.EEXIST, "there"), errno.EEXIST),
        (OSError(errno.EXDEV, "cross-device"), errno.EXDEV),
        (OSError(errno.ENOTEMPTY, "not empty"), errno.ENOTEMPTY),
        (OSError("no errno at all"), errno.EIO),
        (SnapshotInvalid("s1", "cache file full"), errno.EIO),
        (CacheFull("refused to keep the snapshot valid"), errno.ENOSPC),
        (ProtectedName("VSP_x.vsp is reserved"), errno.EPERM),
        (ReadOnly("read-only drive"), errno.EROFS),
        (NotFound("no such path in the snapshot"), errno.ENOENT),
        (RuleViolation("another VspError"), errno.EIO),
        (CacheOverflow("the engine should have converted this"), errno.EIO),
        (UsageError("bad argument"), errno.EIO),
        (ValueError("a bug"), errno.EIO),
        (KeyError("a bug"), errno.EIO),
    ],
)
def test_errno_table(exc: BaseException, code: int) -> None:
    assert fuse.errno_of(exc) == code


def test_errno_table_follows_subclasses() -> None:
    class StricterReadOnly(ReadOnly):
        pass

    assert fuse.errno_of(StricterReadOnly("x")) == errno.EROFS


def test_unexpected_exception_is_logged_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError as exc:
        with caplog.at_level(logging.ERROR, logger="mount.fuse"):
            assert fuse.errno_of(exc, "read") == errno.EIO
    rec = [r for r in caplog.records if r.name == "mount.fuse"]
    assert rec and rec[-1].exc_info is not None and "read" in rec[-1].getMessage()


def test_invalid_snapshot_logs_its_reason_once(caplog: pytest.LogCaptureFixture) -> None:
    exc = SnapshotInvalid("snap-once", "cache maximum of 1 MiB reached")
    with caplog.at_level(logging.DEBUG, logger="mount.fuse"):
        for _ in range(3):
            assert fuse.errno_of(exc, "read") == errno.EIO
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "snap-once" in errors[0].getMessage() and "1 MiB reached" in errors[0].getMessage()


def test_every_callback_raises_the_mapped_errno() -> None:
    ops, _ = live(unlink=ProtectedName("reserved"), rmdir=OSError(errno.ENOTEMPTY, "x"), mkdir=RuntimeError())
    assert errno_raised(ops.unlink, "/VSP_1.vsp") == errno.EPERM
    assert errno_raised(ops.rmdir, "/d") == errno.ENOTEMPTY
    assert errno_raised(ops.mkdir, "/d", 0o755) == errno.EIO


def test_translated_raises_fuse_os_error_when_mfusepy_is_loaded() -> None:
    try:
        mod = fuse.load_mfusepy()
    except MountError as exc:
        pytest.skip(f"libfuse3 not loadable: {exc}")
    ops, _ = live(unlink=ReadOnly("x"))
    with pytest.raises(mod.FuseOSError):
        ops.unlink("/a")


# ----------------------------------------------------------------- times


def test_timespec_markers_pass_through() -> None:
    assert fuse.timespec_ns(0, KERNEL_UTIME_NOW) == UTIME_NOW
    assert fuse.timespec_ns(0, KERNEL_UTIME_OMIT) == UTIME_OMIT
    assert fuse.timespec_ns(12345, KERNEL_UTIME_OMIT) == UTIME_OMIT  # tv_sec is meaningless then
    # a real time that looks like a marker in integer nanoseconds stays a time
    assert fuse.timespec_ns(1, 73_741_823) == 1_073_741_823 != UTIME_NOW
    assert fuse.timespec_ns(1_700_000_000, 5) == 1_700_000_000_000_000_005
    assert fuse.timespec_ns(-2, 500_000_000) == -1_500_000_000  # before 1970


def test_utimens_times() -> None:
    assert fuse.utimens_times(None) == (UTIME_NOW, UTIME_NOW)
    assert fuse.utimens_times((UTIME_OMIT, 7)) == (UTIME_OMIT, 7)


@dataclass
class TS:
    tv_sec: int
    tv_nsec: int


@dataclass
class UtimBuf:
    actime: TS
    modtime: TS


class Ptr:
    """A non-null ctypes pointer stand-in."""

    def __init__(self, contents: Any) -> None:
        self.contents = contents

    def __bool__(self) -> bool:
        return True


def fixes(operations: Any) -> fuse._FuseFixes:
    fx = fuse._FuseFixes()
    fx.operations = operations
    fx.encoding = "utf-8"
    fx.errors = "surrogateescape"
    return fx


def test_utimens_callback_keeps_omit_and_now() -> None:
    ops, vol = live()
    fx = fixes(ops)
    fx.utimens_fuse_3(b"/f", Ptr(UtimBuf(TS(0, KERNEL_UTIME_OMIT), TS(99, 7))), None)
    fx.utimens_fuse_3(b"/f", Ptr(UtimBuf(TS(0, KERNEL_UTIME_NOW), TS(0, KERNEL_UTIME_OMIT))), None)
    fx.utimens_fuse_3(b"/f", None, None)
    assert vol.calls == [
        ("utimens", ("/f", UTIME_OMIT, 99_000_000_007)),
        ("utimens", ("/f", UTIME_NOW, UTIME_OMIT)),
        ("utimens", ("/f", UTIME_NOW, UTIME_NOW)),
    ]


# ----------------------------------------------------------------- rename


def test_rename_flags_reach_the_operations() -> None:
    seen: list[tuple[Any, ...]] = []

    class Ops:
        def rename(self, old: str, new: str, flags: int = 0) -> int:
            seen.append((old, new, flags))
            return 0

    fx = fixes(Ops())
    fx.rename_fuse_3(b"/a", b"/b", RENAME_EXCHANGE)
    fx.rename_fuse_3(b"/a", b"/b", RENAME_NOREPLACE)
    fx.rename_fuse_3(b"/\xff", b"/b", 0)
    assert seen == [("/a", "/b", RENAME_EXCHANGE), ("/a", "/b", RENAME_NOREPLACE), ("/\udcff", "/b", 0)]


def test_rename_flags_reach_the_volume() -> None:
    ops, vol = live()
    fixes(ops).rename_fuse_3(b"/x", b"/y", RENAME_EXCHANGE)
    assert vol.calls == [("rename", ("/x", "/y", RENAME_EXCHANGE))]


def test_fuse_class_uses_the_repairs() -> None:
    try:
        cls = fuse._fuse_class()
    except MountError as exc:
        pytest.skip(f"libfuse3 not loadable: {exc}")
    for name in ("rename_fuse_3", "truncate_fuse_3", "utimens_fuse_3"):
        assert getattr(cls, name) is getattr(fuse._FuseFixes, name)


def test_truncate_callback_passes_the_file_handle() -> None:
    @dataclass
    class FI:
        fh: int

    ops, vol = live()
    fx = fixes(ops)
    fx.truncate_fuse_3(None, 10, Ptr(FI(7)))  # ftruncate of a removed open file: no path
    fx.truncate_fuse_3(b"/f", 0, None)
    assert vol.calls == [("truncate", ("", 10, 7)), ("truncate", ("/f", 0, None))]


# ------------------------------------------------- the live view's calls


def test_new_objects_belong_to_the_caller() -> None:
    from vspfs.volume import Caller

    ops, vol = live(create=11, open=12)
    assert ops.create("/f", 0o100644, os.O_WRONLY | os.O_CREAT) == 11
    assert ops.open("/f", os.O_RDWR | os.O_APPEND) == 12
    ops.mkdir("/d", 0o755)
    ops.mknod("/p", stat.S_IFIFO | 0o600, 0)
    ops.symlink("/link", "target")
    caller = Caller(1234, 567, 89)
    assert vol.calls == [
        ("create", ("/f", os.O_WRONLY | os.O_CREAT, 0o100644, caller)),
        ("open", ("/f", os.O_RDWR | os.O_APPEND, caller)),
        ("mkdir", ("/d", 0o755, caller)),
        ("mknod", ("/p", stat.S_IFIFO | 0o600, 0, caller)),
        ("symlink", ("target", "/link", caller)),
    ]


def test_link_argument_order() -> None:
    ops, vol = live()
    ops.link("/new", "/existing")  # mfusepy's order
    assert vol.calls == [("link", ("/existing", "/new"))]


@pytest.mark.parametrize(
    ("uid", "gid", "expect"),
    [
        (0xFFFFFFFF, 5, (-1, 5)),
        (-1, -1, (-1, -1)),
        (7, 0xFFFFFFFF, (7, -1)),
        (0, 0, (0, 0)),
    ],
)
def test_chown_minus_one_means_unchanged(uid: int, gid: int, expect: tuple[int, int]) -> None:
    ops, vol = live()
    ops.chown("/f", uid, gid)
    assert vol.calls == [("chown", ("/f", *expect))]


def test_chmod_passes_permission_bits_only() -> None:
    ops, vol = live()
    ops.chmod("/f", stat.S_IFREG | 0o4755)
    assert vol.calls == [("chmod", ("/f", 0o4755))]


def test_file_handle_calls() -> None:
    ops, vol = live(read=b"data", write=4, getattr=attr(stat.S_IFREG | 0o644, 5))
    assert ops.read(None, 4, 0, 9) == b"data"
    assert ops.write(None, b"abcd", 8, 9) == 4
    ops.fallocate(None, 1, 0, 4096, 9)
    ops.fsync(None, 1, 9)
    ops.flush(None, 9)
    ops.release(None, 9)
    assert ops.getattr(None, 9)["st_ino"] == 5  # fstat of an open file: path may be None
    assert [c for c in vol.calls] == [
        ("read", (9, 4, 0)),
        ("write", (9, b"abcd", 8)),
        ("fallocate", (9, 1, 0, 4096)),
        ("fsync", (9, True)),
        ("flush", (9,)),
        ("release", (9,)),
        ("getattr", ("", 9)),
    ]


def test_stat_dict_has_nanosecond_times() -> None:
    d = fuse.stat_dict(attr(stat.S_IFREG | 0o600, 77, nlink=3))
    assert d["st_ino"] == 77 and d["st_nlink"] == 3
    assert (d["st_atime"], d["st_mtime"], d["st_ctime"]) == (1_000_000_001, 2_000_000_002, 3_000_000_003)
    assert fuse.LiveOperations.use_ns is True and fuse.SnapshotOperations.use_ns is True


def test_xattr_and_statfs() -> None:
    ops, vol = live(getxattr=b"v", listxattr=["user.a", "user.\udcff"], statfs=os.statvfs("/"))
    assert ops.getxattr("/f", "user.a") == b"v"
    assert ops.listxattr("/f") == ["user.a", "user.\udcff"]
    ops.setxattr("/f", "user.a", b"w", 1)
    ops.removexattr("/f", "user.a")
    assert ops.statfs("/")["f_namemax"] == os.statvfs("/").f_namemax
    assert ("setxattr", ("/f", "user.a", b"w", 1)) in vol.calls


# ----------------------------------------------------------------- readdir


def test_live_readdir_carries_inode_numbers() -> None:
    attrs = {
        "/d": attr(stat.S_IFDIR | 0o755, 10),
        "/": attr(stat.S_IFDIR | 0o755, 2),
        "/d/f": attr(stat.S_IFREG | 0o644, 11),
        "/d/l": attr(stat.S_IFLNK | 0o777, 12),
    }

    def getattr_(path: str, fh: int | None = None) -> Attr:
        if path not in attrs:
            raise FileNotFoundError(errno.ENOENT, "gone", path)
        return attrs[path]

    ops, _ = live(getattr=getattr_, readdir=["f", "l", "raced"])
    entries = ops.readdir("/d", 0)
    assert entries[:2] == [
        (".", {"st_mode": stat.S_IFDIR, "st_ino": 10}, 0),
        ("..", {"st_mode": stat.S_IFDIR, "st_ino": 2}, 0),
    ]
    assert entries[2:] == [
        ("f", {"st_mode": stat.S_IFREG, "st_ino": 11}, 0),
        ("l", {"st_mode": stat.S_IFLNK, "st_ino": 12}, 0),
        ("raced", None, 0),  # removed between listing and stat: listed, type unknown
    ]


def test_snapshot_readdir_carries_snapshot_inodes() -> None:
    snap = FakeSnapshot(
        getattr=lambda p: attr(stat.S_IFDIR | 0o755, 2 if p == "/" else 20),
        readdir=[("a", 31, stat.S_IFREG), ("hardlink-of-a", 31, stat.S_IFREG), ("sub", 32, stat.S_IFDIR)],
    )
    ops = fuse.SnapshotOperations(snap)  # type: ignore[arg-type]
    entries = ops.readdir("/x", 0)
    assert all(isinstance(e[1], dict) and e[1]["st_ino"] > 0 for e in entries)
    by_name = {name: d for name, d, _ in entries}
    assert by_name["a"]["st_ino"] == by_name["hardlink-of-a"]["st_ino"] == 31
    assert by_name["sub"] == {"st_mode": stat.S_IFDIR, "st_ino": 32}
    assert by_name["."]["st_ino"] == 20 and by_name[".."]["st_ino"] == 2
    root = ops.readdir("/", 0)
    assert root[0][1]["st_ino"] == root[1][1]["st_ino"] == 2


def test_readdir_errors_are_translated() -> None:
    ops, _ = live(getattr=NotADirectoryError(errno.ENOTDIR, "file"))
    assert errno_raised(ops.readdir, "/f", 0) == errno.ENOTDIR


# ------------------------------------------------------- the virtual drive


WRITE_CALLS = [
    ("create", ("/f", 0o644, os.O_WRONLY)),
    ("write", ("/f", b"x", 0, 3)),
    ("truncate", ("/f", 0)),
    ("fallocate", ("/f", 0, 0, 10, 3)),
    ("unlink", ("/f",)),
    ("rmdir", ("/d",)),
    ("mkdir", ("/d", 0o755)),
    ("mknod", ("/p", stat.S_IFIFO | 0o644, 0)),
    ("symlink", ("/l", "target")),
    ("link", ("/new", "/f")),
    ("rename", ("/a", "/b", 0)),
    ("chmod", ("/f", 0o600)),
    ("chown", ("/f", 0, 0)),
    ("utimens", ("/f", None)),
    ("setxattr", ("/f", "user.a", b"v", 0)),
    ("removexattr", ("/f", "user.a")),
]


@pytest.mark.parametrize(("name", "args"), WRITE_CALLS, ids=[c[0] for c in WRITE_CALLS])
def test_snapshot_write_callbacks_are_erofs(name: str, args: tuple[Any, ...]) -> None:
    snap = FakeSnapshot()
    ops = fuse.SnapshotOperations(snap)  # type: ignore[arg-type]
    assert errno_raised(getattr(ops, name), *args) == errno.EROFS
    assert snap.calls == []


@pytest.mark.parametrize(
    "flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_RDONLY | os.O_APPEND]
)
def test_snapshot_open_for_writing_is_erofs(flags: int) -> None:
    snap = FakeSnapshot(open=5)
    ops = fuse.SnapshotOperations(snap)  # type: ignore[arg-type]
    assert errno_raised(ops.open, "/f", flags) == errno.EROFS
    assert snap.calls == []


def test_snapshot_reads() -> None:
    snap = FakeSnapshot(
        open=5,
        read=b"old",
        getattr=attr(stat.S_IFREG | 0o644, 9),
        readlink="t",
        getxattr=b"v",
        listxattr=["user.a"],
    )
    ops = fuse.SnapshotOperations(snap)  # type: ignore[arg-type]
    assert ops.open("/f", os.O_RDONLY | os.O_NOFOLLOW) == 5
    assert ops.read("/f", 3, 0, 5) == b"old"
    assert ops.release("/f", 5) == 0
    assert ops.getattr("/f")["st_ino"] == 9
    assert ops.readlink("/l") == "t"
    assert ops.getxattr("/f", "user.a") == b"v" and ops.listxattr("/f") == ["user.a"]


def test_snapshot_invalid_reads_are_eio() -> None:
    snap = FakeSnapshot(read=SnapshotInvalid("s9", "cache volume full"))
    ops = fuse.SnapshotOperations(snap)  # type: ignore[arg-type]
    assert errno_raised(ops.read, "/f", 10, 0, 1) == errno.EIO


def test_snapshot_statfs_is_read_only() -> None:
    snap = FakeSnapshot(statfs=os.statvfs("/"))
    ops = fuse.SnapshotOperations(snap)  # type: ignore[arg-type]
    assert ops.statfs("/")["f_flag"] & os.ST_RDONLY


# ----------------------------------------------------------------- options


def test_live_options() -> None:
    opts = fuse.live_options("vol 1,x", allow_other=False, backing_flags=0, is_root=True)
    assert opts["attr_timeout"] == opts["entry_timeout"] == opts["negative_timeout"] == 0
    assert opts["default_permissions"] and opts["auto_unmount"] and opts["use_ino"]
    assert opts["fsname"] == "vspfs-live:vol_1_x" and opts["subtype"] == "vspfs"
    assert "allow_other" not in opts and "writeback_cache" not in opts and "kernel_cache" not in opts
    assert "hard_remove" not in opts  # see docs/fuse-adapter.md: fstat of unlinked open files
    assert opts["suid"] and opts["dev"]  # the backing allows them: so does the live view
    assert fuse.live_options("v", allow_other=True, is_root=False)["allow_other"] is True
    flags = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
    strict = fuse.live_options("v", backing_flags=flags, is_root=True)
    assert strict["nosuid"] and strict["nodev"] and strict["noexec"] and "suid" not in strict
    assert "suid" not in fuse.live_options("v", is_root=False)


def test_snapshot_options() -> None:
    opts = fuse.snapshot_options("20260101-abc")
    assert opts["fsname"] == "vspfs:20260101-abc" and opts["subtype"] == "vspfs"
    assert opts["ro"] and opts["use_ino"] and opts["kernel_cache"] and opts["default_permissions"]
    assert opts["attr_timeout"] >= 3600 and opts["entry_timeout"] >= 3600
    assert "allow_other" not in opts and fuse.snapshot_options("s", allow_other=True)["allow_other"]


def test_live_connection_has_no_writeback_cache_nor_killpriv() -> None:
    @dataclass
    class Conn:
        want: int

    ops, _ = live()
    conn = Conn(want=fuse.FUSE_CAP_WRITEBACK_CACHE | fuse.FUSE_CAP_HANDLE_KILLPRIV | 1)
    ready: list[bool] = []
    ops._on_init = lambda: ready.append(True)
    ops.init_with_config(conn, None)
    assert conn.want == 1 and ready == [True]


def test_both_views_ask_for_posix_acls_when_the_kernel_offers_them() -> None:
    """With default_permissions the kernel ignores ACLs unless POSIX_ACL is negotiated."""

    @dataclass
    class Conn:
        want: int
        capable: int

    ops, _ = live()
    offered = fuse.FUSE_CAP_POSIX_ACL | fuse.FUSE_CAP_DONT_MASK
    conn = Conn(want=0, capable=offered)
    ops.init_with_config(conn, None)
    # the test's context reports no umask, so the kernel keeps masking modes
    assert conn.want == fuse.FUSE_CAP_POSIX_ACL
    drive = fuse.SnapshotOperations(SimpleNamespace(id="s"))  # type: ignore[arg-type]
    conn = Conn(want=0, capable=offered)
    drive.init_with_config(conn, None)
    assert conn.want == fuse.FUSE_CAP_POSIX_ACL
    conn = Conn(want=0, capable=0)
    ops.init_with_config(conn, None)
    assert conn.want == 0


def test_init_reports_ready_even_if_tuning_fails() -> None:
    ops, _ = live()
    ready: list[bool] = []
    ops._on_init = lambda: ready.append(True)
    ops.init_with_config(object(), None)  # no .want: tuning fails, is logged
    assert ready == [True]


# ------------------------------------------------------- mount preconditions


def test_mountpoint_checks(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(MountError, match="no such directory"):
        fuse._check_mountpoint(str(missing), may_be_non_empty=False)
    busy = tmp_path / "full"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(MountError, match="not empty") as info:
        fuse._check_mountpoint(str(busy), may_be_non_empty=False)
    assert str(busy) in str(info.value) and "\n" not in str(info.value)
    assert fuse._check_mountpoint(str(busy), may_be_non_empty=True) == os.path.realpath(busy)
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(MountError, match="not a directory"):
        fuse._check_mountpoint(str(afile), may_be_non_empty=False)


def test_mount_point_that_is_already_mounted_is_busy() -> None:
    with pytest.raises(MountError, match="busy"):
        fuse._check_mountpoint("/proc", may_be_non_empty=False)
    # mounting the live view over a backing directory that is itself a mount
    # point of a real filesystem is fine; over another FUSE mount it is not
    assert fuse._check_mountpoint("/proc", may_be_non_empty=True) == "/proc"


def test_missing_fusermount3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fuse.shutil, "which", lambda name: None)
    with pytest.raises(MountError, match="fusermount3") as info:
        fuse.mount_snapshot(FakeSnapshot(), str(tmp_path))  # type: ignore[arg-type]
    assert str(tmp_path) in str(info.value) and "apt-get install fuse3" in str(info.value)


def test_live_view_inside_its_volume_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuse, "_check_tools", lambda mountpoint: "fusermount3")
    monkeypatch.setattr(fuse, "load_mfusepy", lambda: None)
    vol = FakeVolume()
    vol.backing = str(tmp_path)  # type: ignore[misc]
    (tmp_path / "m").mkdir()
    with pytest.raises(MountError, match="inside the volume"):
        fuse.mount_live(vol, str(tmp_path / "m"))  # type: ignore[arg-type]
    with pytest.raises(MountError, match="not the volume's backing directory"):
        fuse.mount_live(vol, str(tmp_path / "m"), over=True)  # type: ignore[arg-type]


def test_mountinfo_unescape() -> None:
    assert fuse._unescape(r"/mnt/a\040b\011c\134d") == "/mnt/a b\tc\\d"
    assert fuse._unescape("plain") == "plain"


# ------------------------------------------- library choice and signal handlers


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_import_needs_no_libfuse() -> None:
    res = run_python(
        """
        import sys
        import mount.fuse
        assert "mfusepy" not in sys.modules
        print("ok")
        """
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_libfuse3_is_loaded_even_when_libfuse2_is_there() -> None:
    res = run_python(
        """
        import os
        os.environ.pop("FUSE_LIBRARY_NAME", None)
        os.environ.pop("FUSE_LIBRARY_PATH", None)
        from mount import fuse
        try:
            mod = fuse.load_mfusepy()
        except fuse.MountError as exc:
            print("skip", exc)
            raise SystemExit(0)
        print(mod.fuse_version_major, "FUSE_LIBRARY_NAME" in os.environ)
        """
    )
    assert res.returncode == 0, res.stderr
    if res.stdout.startswith("skip"):
        pytest.skip(res.stdout.strip())
    assert res.stdout.split() == ["3", "False"]


def test_libfuse2_binding_is_refused() -> None:
    res = run_python(
        """
        import ctypes.util, os
        lib = ctypes.util.find_library("fuse")
        if not lib:
            print("skip no libfuse2")
            raise SystemExit(0)
        os.environ["FUSE_LIBRARY_PATH"] = lib
        from mount import fuse
        try:
            fuse.load_mfusepy()
        except fuse.MountError as exc:
            print("refused", exc)
        """
    )
    assert res.returncode == 0, res.stderr
    if res.stdout.startswith("skip"):
        pytest.skip(res.stdout.strip())
    assert res.stdout.startswith("refused") and "libfuse3" in res.stdout


def test_restore_signals_undoes_a_foreign_default_handler() -> None:
    res = run_python(
        """
        import ctypes, signal
        from mount import fuse
        libc = ctypes.CDLL(None, use_errno=True)
        def python_handler(signum, frame):
            pass
        signal.signal(signal.SIGHUP, python_handler)
        before_hup = fuse.c_signal_handler(signal.SIGHUP)
        # what libfuse does: a C handler where Python believes SIG_DFL (SIG_IGN stands in)
        libc.signal(signal.SIGTERM, ctypes.c_void_p(1))
        assert fuse.c_signal_handler(signal.SIGTERM) == 1
        restored = fuse.restore_signals()
        print(fuse.c_signal_handler(signal.SIGTERM), fuse.c_signal_handler(signal.SIGHUP) == before_hup,
              [signal.Signals(s).name for s in restored])
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "True", "['SIGTERM']"]
