"""The host filesystem layer (vspfs/hostfs.py), engine tier, no mounts.

The engine's own tests run over both bindings (``VSPFS_HOSTFS=paths``, see
tests/conftest.py); these test what is particular to each: the POSIX
binding's hot calls are the os functions themselves, and the by-path
binding (Windows') retries a call whose directory moved between asking its
path and using it, refuses what Windows cannot do, and maps its Windows
primitives as documented in docs/windows.md.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from vspfs import hostfs
from vspfs import portable_io as pio
from vspfs import winplatform as wp


@pytest.fixture
def calls() -> Iterator[hostfs.PathCalls]:
    yield hostfs.linux_path_calls()


def test_posix_hot_calls_are_the_os_functions() -> None:
    if hostfs.current is not None:
        pytest.skip("this run binds the by-path calls")
    assert hostfs.pread is os.pread
    assert hostfs.pwrite is os.pwrite
    assert hostfs.fstat is os.fstat
    assert hostfs.listdir is os.listdir


def test_use_binds_and_restores() -> None:
    before = hostfs.current
    mine = hostfs.linux_path_calls()
    previous = hostfs.use(mine)
    try:
        assert previous is before
        assert hostfs.current is mine
        assert not hostfs.HOLDS_DIRECTORY_HANDLES and not hostfs.FULL_RENAME
        assert hostfs.lstat_at.__self__ is mine  # type: ignore[attr-defined]
    finally:
        hostfs.use(before)
    assert hostfs.current is before


class StalePaths:
    """An access_path that answers the directory's old path once after it
    was renamed, as GetFinalPathNameByHandleW can when the rename lands
    between the question and the use of the answer."""

    def __init__(self, stale: str) -> None:
        self.stale: str | None = stale
        self.asked = 0

    def __call__(self, fd: int) -> str:
        self.asked += 1
        if self.stale is not None:
            stale, self.stale = self.stale, None
            return stale
        return os.readlink(f"/proc/self/fd/{fd}")


def _calls_with(access_path: StalePaths) -> hostfs.PathCalls:
    real = hostfs.linux_path_calls()
    return hostfs.PathCalls(
        access_path=access_path,
        open_file=real._open_file,
        open_directory=real._open_directory,
        rename=real._rename,
        sep="/",
    )


def test_a_directory_moved_meanwhile_is_found_again(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(tmp_path / "a", tmp_path / "b")
        paths = StalePaths(str(tmp_path / "a"))
        st = _calls_with(paths).lstat_at(fd, "f")
        assert st.st_size == 1
        assert paths.asked == 3  # stale answer, the check that it moved, the new answer
    finally:
        os.close(fd)


def test_a_missing_name_in_a_directory_that_stayed_is_the_answer(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    fd = os.open(tmp_path / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        paths = StalePaths(str(tmp_path / "a"))
        with pytest.raises(FileNotFoundError):
            _calls_with(paths).unlink_at(fd, "missing")
        assert paths.asked == 2  # no retry: the directory did not move
    finally:
        os.close(fd)


def test_a_directory_renamed_away_and_back_during_a_call_is_retried(tmp_path: Path) -> None:
    """The directory's path is the same before and after the call, yet the
    call ran while it was elsewhere: a rename through the binding in
    between makes the miss a retry, not the answer."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    real = hostfs.linux_path_calls()
    attempts: list[str] = []
    calls: hostfs.PathCalls

    def open_file(path: str, flags: int, mode: int) -> int:
        attempts.append(path)
        if len(attempts) == 1:  # the directory goes away and comes back while this open runs
            calls.rename_at(root, "a", root, "b", 0)
            calls.rename_at(root, "b", root, "a", 0)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return real._open_file(path, flags, mode)

    calls = hostfs.PathCalls(
        access_path=hostfs._posix_location,
        open_file=open_file,
        open_directory=real._open_directory,
        rename=real._rename,
        sep="/",
    )
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(tmp_path / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = calls.open_at(fd, "f", os.O_RDONLY)
        os.close(got)
        assert attempts == [str(tmp_path / "a" / "f")] * 2
    finally:
        os.close(fd)
        os.close(root)


def test_two_directory_calls_retry_when_either_moved(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    (tmp_path / "c").mkdir()
    src = os.open(tmp_path / "a", os.O_RDONLY | os.O_DIRECTORY)
    dst = os.open(tmp_path / "c", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(tmp_path / "a", tmp_path / "b")
        _calls_with(StalePaths(str(tmp_path / "a"))).rename_at(src, "f", dst, "g", hostfs.RENAME_NOREPLACE)
        assert (tmp_path / "c" / "g").read_bytes() == b"x"
    finally:
        os.close(src)
        os.close(dst)


def test_rename_flags_windows_has(calls: hostfs.PathCalls, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            calls.rename_at(fd, "a", fd, "b", hostfs.RENAME_NOREPLACE)
        with pytest.raises(OSError) as exc:
            calls.rename_at(fd, "a", fd, "b", hostfs.RENAME_EXCHANGE)
        assert exc.value.errno == errno.EINVAL
        assert (tmp_path / "b").read_bytes() == b"b"
        calls.rename_at(fd, "a", fd, "b", 0)
        assert (tmp_path / "b").read_bytes() == b"a"
        assert not (tmp_path / "a").exists()
    finally:
        os.close(fd)


def test_utimens_by_path_keeps_omitted_and_sets_now(calls: hostfs.PathCalls, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        calls.utimens_at(fd, "f", hostfs.UTIME_OMIT, 5_000_000_007)
        st = os.stat(f)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 5_000_000_007)
        calls.utimens_at(fd, "f", hostfs.UTIME_NOW, hostfs.UTIME_OMIT)
        st = os.stat(f)
        assert st.st_atime_ns > 2_000_000_000 and st.st_mtime_ns == 5_000_000_007
    finally:
        os.close(fd)


def test_chmod_of_a_symlink_is_refused_by_path(calls: hostfs.PathCalls, tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"")
    os.chmod(tmp_path / "t", 0o644)
    os.symlink("t", tmp_path / "l")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as exc:
            calls.chmod_at(fd, "l", 0o600)
        assert exc.value.errno == errno.EOPNOTSUPP
        assert statmod.S_IMODE(os.stat(tmp_path / "t").st_mode) == 0o644
    finally:
        os.close(fd)


def test_unsupported_calls_say_so(calls: hostfs.PathCalls, tmp_path: Path) -> None:
    no_xattrs = hostfs.PathCalls(
        access_path=hostfs._posix_location,
        open_file=calls._open_file,
        open_directory=calls._open_directory,
        rename=calls._rename,
    )
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for call in (lambda: no_xattrs.getxattr(fd, "user.x"), lambda: no_xattrs.fallocate(fd, 0, 0, 1)):
            with pytest.raises(OSError) as exc:
                call()
            assert exc.value.errno == errno.ENOTSUP
        assert no_xattrs.fs_magic(fd) == 0
    finally:
        os.close(fd)


# -- the Windows binding's mapping, over a stand-in for Win32Files ------------------------------


class FakeWin32:
    """The Win32Files methods windows_path_calls uses, recording calls; and
    ``stat``, what ``os.stat(path, follow_symlinks=False)`` gives on Windows
    (``st_file_attributes``; ``st_birthtime_ns`` from Python 3.12, before it
    ``st_ctime_ns`` is the creation time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.sd = b"\x01\x00\x04\x80" + bytes(16)
        self.st = SimpleNamespace(
            st_mode=statmod.S_IFREG | 0o666,
            st_file_attributes=wp.FILE_ATTRIBUTE_HIDDEN | wp.FILE_ATTRIBUTE_ARCHIVE,
            st_birthtime_ns=1_600_000_000_123_456_789,
            st_ctime_ns=1_700_000_000 * 10**9,
        )

    def stat(self, path: str) -> SimpleNamespace:
        self.calls.append(("stat", path))
        return self.st

    def final_path(self, fd: int) -> str:
        return {3: "\\\\?\\D:\\data", 4: "\\\\?\\D:\\"}[fd]

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        self.calls.append(("open", path, flags, mode))
        return 10

    def open_directory(self, path: str) -> int:
        self.calls.append(("open_directory", path))
        return 11

    def rename(self, old: str, new: str, replace: bool) -> None:
        self.calls.append(("rename", old, new, replace))

    def open_by_id(self, volume_fd: int, file_id: int, directory: bool) -> int:
        self.calls.append(("open_by_id", volume_fd, file_id, directory))
        return 12

    def get_security(self, path: str, info: int) -> bytes:
        self.calls.append(("get_security", path, info))
        return self.sd

    def set_security(self, path: str, info: int, sd: bytes) -> None:
        self.calls.append(("set_security", path, info, sd))

    def set_hidden_system(self, path: str) -> None:
        self.calls.append(("set_hidden_system", path))

    def set_attributes(self, path: str, attributes: int) -> None:
        self.calls.append(("set_attributes", path, attributes))

    def set_creation_time(self, path: str, filetime: int) -> None:
        self.calls.append(("set_creation_time", path, filetime))

    def disk_usage(self, path: str) -> pio.DiskUsage:
        return pio.DiskUsage(total=100 * 4096, free=40 * 4096, available=30 * 4096)


def test_windows_binding_joins_names_with_backslashes() -> None:
    win = FakeWin32()
    calls = hostfs.windows_path_calls(win)
    assert calls.at_path(3, "sub/file.txt") == "\\\\?\\D:\\data\\sub\\file.txt"
    assert calls.at_path(4, "x") == "\\\\?\\D:\\x"  # a root path already ends with one
    assert calls.location(3) == "//?/D:/data"
    calls.open_at(3, "f", os.O_RDONLY)
    calls.open_dir_at(3, "d")
    calls.rename_at(3, "a", 4, "b", hostfs.RENAME_NOREPLACE)
    calls.rename_at(3, "a", 4, "b", 0)
    assert calls.open_by_id is not None
    calls.open_by_id(3, 77)
    calls.hide(3)
    assert win.calls == [
        ("open", "\\\\?\\D:\\data\\f", os.O_RDONLY, 0o777),
        ("open_directory", "\\\\?\\D:\\data\\d"),
        ("rename", "\\\\?\\D:\\data\\a", "\\\\?\\D:\\b", False),
        ("rename", "\\\\?\\D:\\data\\a", "\\\\?\\D:\\b", True),
        ("open_by_id", 3, 77, True),
        ("set_hidden_system", "\\\\?\\D:\\data"),
    ]


def test_windows_binding_serves_the_security_descriptor_as_an_xattr() -> None:
    win = FakeWin32()
    calls = hostfs.windows_path_calls(win)
    assert calls.listxattr_at(3, "f") == [hostfs.NTFS_ACL, wp.NTFS_ATTRIB_XATTR, wp.NTFS_CRTIME_XATTR]
    assert calls.getxattr_at(3, "f", hostfs.NTFS_ACL) == win.sd
    with pytest.raises(OSError) as exc:
        calls.getxattr_at(3, "f", "user.other")
    assert exc.value.errno == errno.ENODATA
    calls.setxattr_at(3, "f", hostfs.NTFS_ACL, bytearray(b"sd"))
    with pytest.raises(OSError) as exc:
        calls.setxattr_at(3, "f", "user.other", b"v")
    assert exc.value.errno == errno.ENOTSUP
    owner_group_dacl = 0x7
    assert win.calls == [
        ("get_security", "\\\\?\\D:\\data\\f", owner_group_dacl),
        ("set_security", "\\\\?\\D:\\data\\f", owner_group_dacl, b"sd"),
    ]


def test_windows_binding_serves_attributes_and_creation_time_as_xattrs() -> None:
    """ntfs-3g's formats: 4 bytes of FILE_ATTRIBUTE_*, 8 bytes of FILETIME,
    both little-endian, read from the object itself (no link followed)."""
    win = FakeWin32()
    calls = hostfs.windows_path_calls(win, stat=win.stat)
    path = "\\\\?\\D:\\data\\f"
    assert calls.getxattr_at(3, "f", wp.NTFS_ATTRIB_XATTR) == (0x22).to_bytes(4, "little")
    crtime = calls.getxattr_at(3, "f", wp.NTFS_CRTIME_XATTR)
    assert crtime == (wp.EPOCH_AS_FILETIME + 16_000_000_001_234_567).to_bytes(8, "little")
    # before Python 3.12 Windows gives the creation time as st_ctime_ns
    del win.st.st_birthtime_ns
    ctime = wp.EPOCH_AS_FILETIME + 17_000_000_000_000_000
    assert calls.getxattr(3, wp.NTFS_CRTIME_XATTR) == ctime.to_bytes(8, "little")
    assert win.calls == [("stat", path), ("stat", path), ("stat", "\\\\?\\D:\\data")]
    win.calls.clear()
    hidden_system = wp.FILE_ATTRIBUTE_HIDDEN | wp.FILE_ATTRIBUTE_SYSTEM | wp.FILE_ATTRIBUTE_DIRECTORY
    calls.setxattr_at(3, "f", wp.NTFS_ATTRIB_XATTR, wp.encode_ntfs_attrib(hidden_system))
    calls.setxattr_at(3, "f", wp.NTFS_CRTIME_XATTR, wp.encode_ntfs_crtime(125_000_000_000_000_000))
    assert win.calls == [
        ("stat", path),  # a link is refused first
        ("set_attributes", path, hidden_system),  # Win32Files keeps only the settable bits
        ("set_creation_time", path, 125_000_000_000_000_000),
    ]
    for name, bad in [
        (wp.NTFS_ATTRIB_XATTR, b"\x02\x00"),
        (wp.NTFS_CRTIME_XATTR, b"\x01"),
        (wp.NTFS_CRTIME_XATTR, bytes(8)),  # 0: "unchanged" to Windows, no time
    ]:
        with pytest.raises(OSError) as exc:
            calls.setxattr_at(3, "f", name, bad)
        assert exc.value.errno == errno.EINVAL
    win.st.st_mode = statmod.S_IFLNK | 0o777
    with pytest.raises(OSError) as exc:
        calls.setxattr_at(3, "link", wp.NTFS_ATTRIB_XATTR, wp.encode_ntfs_attrib(2))
    assert exc.value.errno == errno.EOPNOTSUPP  # SetFileAttributesW might change the target
    for name in (hostfs.NTFS_ACL, wp.NTFS_ATTRIB_XATTR, wp.NTFS_CRTIME_XATTR):
        with pytest.raises(OSError) as exc:
            calls.removexattr_at(3, "f", name)
        assert exc.value.errno == errno.ENOTSUP
    # nothing else reached Windows: the malformed values were refused before any call
    assert win.calls[3:] == [("stat", "\\\\?\\D:\\data\\link")]


def test_windows_binding_statvfs_from_disk_usage() -> None:
    st = hostfs.windows_path_calls(FakeWin32()).statvfs(3)
    assert (st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail) == (4096, 100, 40, 30)


# -- moved directories reopened by file id (the Windows way) ------------------------------------


def test_moved_directories_are_reopened_by_file_id(tmp_path: Path) -> None:
    """With ``open_by_id`` (Windows: OpenFileById) the retained area holds no
    fd on a moved directory; a snapshot reopens it by id when it needs it.
    Linux has no unprivileged open by inode number, so the stand-in finds
    the inode by walking the volume."""
    from vspfs.provider import Provider

    backing = tmp_path / "vol"
    (backing / "d" / "inner").mkdir(parents=True)
    (backing / "d" / "inner" / "f").write_bytes(b"past")
    (tmp_path / "state").mkdir()
    base = hostfs.linux_path_calls()
    opened: list[int] = []

    def open_by_id(any_fd: int, file_id: int) -> int:
        opened.append(file_id)
        for root, dirs, _files in os.walk(backing):
            for name in dirs:
                path = os.path.join(root, name)
                if os.lstat(path).st_ino == file_id:
                    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        raise FileNotFoundError(errno.ENOENT, "no such file id", str(file_id))

    calls = hostfs.PathCalls(
        access_path=hostfs._posix_location,
        open_file=base._open_file,
        open_directory=base._open_directory,
        rename=base._rename,
        sep="/",
        open_by_id=open_by_id,
    )
    previous = hostfs.use(calls)
    prov = Provider(str(tmp_path / "state"))
    try:
        vol = prov.add_volume(str(backing), chunk_size=4096)
        [snap] = prov.create_snapshot_set([vol])
        inner_ino = snap.getattr("/d/inner").ino
        vol.mkdir("/elsewhere", 0o755)
        vol.rename("/d/inner", "/elsewhere/moved")  # kept by id, not by an open fd
        vol.rename("/elsewhere", "/renamed")  # and its new parent moves too
        fh = snap.open("/d/inner/f")
        try:
            assert snap.read(fh, 100, 0) == b"past"
        finally:
            snap.release(fh)
        assert [n for n, _i, _t in snap.readdir("/d/inner")] == ["f"]
        assert inner_ino in opened
        prov.destroy(snap)
    finally:
        prov.close()
        hostfs.use(previous)
