"""Real FUSE mounts: the live view and virtual drives seen through the kernel.

Every test mounts in its own temporary directories and its teardown always
unmounts (the handle's unmount, then ``fusermount3 -u`` and ``-u -z``
directly if anything is left), even when the test failed. Every wait has a
timeout. The checks are the ones the kernel and libfuse could break on the
way between an application and the core: open flags, renameat2 flags,
link counts, UTIME_OMIT, non-UTF-8 names, ownership of new files, shared
writable mmap, fallocate; and for a snapshot: content as it was, EROFS,
the snapshot id in /proc/mounts, hard links with equal inode numbers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mount import fuse
from vspfs.errors import MountError
from vspfs.provider import Provider
from vspfs.volume import Volume

pytestmark = pytest.mark.mount

READY = 15.0
UNMOUNT = 15.0
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

libc = ctypes.CDLL(None, use_errno=True)


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def renameat2(old: str, new: str, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if libc.fallocate(fd, ctypes.c_int(mode), ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``check`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def force_unmount(path: str) -> None:
    """Last resort of every teardown: whatever is still mounted at ``path`` goes."""
    for args in (["-u"], ["-u", "-z"]):
        if not any(m["fstype"].startswith("fuse") for m in fuse.mounts_at(os.path.realpath(path))):
            return
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(["fusermount3", *args, path], capture_output=True, timeout=UNMOUNT, check=False)


@contextlib.contextmanager
def mounted(handle: fuse.MountHandle) -> Iterator[fuse.MountHandle]:
    """Wait for ``handle``; unmount it afterwards whatever happened."""
    try:
        assert handle.wait_ready(READY), f"{handle} not ready within {READY} s"
        yield handle
    finally:
        try:
            handle.unmount(UNMOUNT)
        finally:
            force_unmount(handle.mountpoint)


@dataclass
class Live:
    provider: Provider
    volume: Volume
    backing: str
    mnt: str
    handle: fuse.MountHandle

    def m(self, *parts: str) -> str:
        return os.path.join(self.mnt, *parts)

    def b(self, *parts: str) -> str:
        return os.path.join(self.backing, *parts)


def make_dirs(root: Path) -> tuple[str, str, str, str]:
    dirs = [root / name for name in ("volume", "mnt", "state", "cache")]
    for d in dirs:
        d.mkdir()
    return tuple(str(d) for d in dirs)  # type: ignore[return-value]


@contextlib.contextmanager
def live_mount(root: Path, *, allow_other: bool = False) -> Iterator[Live]:
    backing, mnt, state, cache = make_dirs(root)
    provider = Provider(state, cache_volumes=[cache])
    try:
        vol = provider.add_volume(backing)
        with mounted(fuse.mount_live(vol, mnt, allow_other=allow_other)) as handle:
            yield Live(provider, vol, backing, mnt, handle)
    finally:
        force_unmount(mnt)
        provider.close()


@pytest.fixture
def lv(tmp_path: Path) -> Iterator[Live]:
    with live_mount(tmp_path) as live:
        yield live


# --------------------------------------------------------------- live view


def test_create_write_read(lv: Live) -> None:
    with open(lv.m("f"), "wb") as f:
        f.write(b"hello " * 1000)
    assert Path(lv.b("f")).read_bytes() == b"hello " * 1000
    assert Path(lv.m("f")).read_bytes() == b"hello " * 1000
    with open(lv.m("f"), "r+b") as f:
        f.seek(6)
        f.write(b"HELLO")
    assert Path(lv.m("f")).read_bytes()[:11] == b"hello HELLO"
    st_m, st_b = os.stat(lv.m("f")), os.stat(lv.b("f"))
    assert (st_m.st_ino, st_m.st_size, st_m.st_mtime_ns) == (st_b.st_ino, st_b.st_size, st_b.st_mtime_ns)
    assert sorted(os.listdir(lv.mnt)) == ["f"]


def test_o_append(lv: Live) -> None:
    Path(lv.m("log")).write_bytes(b"start\n")
    a = os.open(lv.m("log"), os.O_WRONLY | os.O_APPEND)
    b = os.open(lv.m("log"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(a, b"one\n")
        os.write(b, b"two\n")
        os.pwrite(a, b"three\n", 0)  # O_APPEND wins over the offset on Linux
    finally:
        os.close(a)
        os.close(b)
    assert Path(lv.b("log")).read_bytes() == b"start\none\ntwo\nthree\n"


def test_o_excl_and_o_trunc(lv: Live) -> None:
    fd = os.open(lv.m("x"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"data")
    os.close(fd)
    with pytest.raises(FileExistsError):
        os.open(lv.m("x"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    assert stat.S_IMODE(os.stat(lv.b("x")).st_mode) == 0o640  # the daemon's umask did not apply twice
    fd = os.open(lv.m("x"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(lv.b("x")).st_size == 0


def test_rename_exchange_and_noreplace(lv: Live) -> None:
    Path(lv.m("a")).write_bytes(b"A")
    Path(lv.m("b")).write_bytes(b"B")
    renameat2(lv.m("a"), lv.m("b"), RENAME_EXCHANGE)
    assert Path(lv.b("a")).read_bytes() == b"B" and Path(lv.b("b")).read_bytes() == b"A"
    assert Path(lv.m("a")).read_bytes() == b"B" and Path(lv.m("b")).read_bytes() == b"A"
    with pytest.raises(FileExistsError):
        renameat2(lv.m("a"), lv.m("b"), RENAME_NOREPLACE)
    assert Path(lv.b("a")).read_bytes() == b"B" and Path(lv.b("b")).read_bytes() == b"A"
    renameat2(lv.m("a"), lv.m("c"), RENAME_NOREPLACE)
    assert sorted(os.listdir(lv.mnt)) == ["b", "c"]


def test_hard_link_counts(lv: Live) -> None:
    Path(lv.m("one")).write_bytes(b"1")
    os.link(lv.m("one"), lv.m("two"))
    for name in ("one", "two"):
        st_m, st_b = os.stat(lv.m(name)), os.stat(lv.b(name))
        assert st_m.st_nlink == st_b.st_nlink == 2
        assert st_m.st_ino == st_b.st_ino
    os.unlink(lv.m("two"))
    assert os.stat(lv.m("one")).st_nlink == os.stat(lv.b("one")).st_nlink == 1


def test_utimensat_omit_keeps_the_other_time(lv: Live) -> None:
    Path(lv.m("t")).write_bytes(b"t")
    utimensat(lv.m("t"), (1_000_000, 111), (2_000_000, 222))
    utimensat(lv.m("t"), (0, UTIME_OMIT), (3_000_000, 333))
    st = os.stat(lv.b("t"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_000_111, 3_000_000_000_000_333)
    utimensat(lv.m("t"), (4_000_000, 444), (0, UTIME_OMIT))
    st = os.stat(lv.b("t"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (4_000_000_000_000_444, 3_000_000_000_000_333)
    utimensat(lv.m("t"), (0, UTIME_OMIT), (0, UTIME_NOW))
    st = os.stat(lv.b("t"))
    assert st.st_atime_ns == 4_000_000_000_000_444 and st.st_mtime_ns > 3_000_000_000_000_333
    assert os.stat(lv.m("t")).st_mtime_ns == st.st_mtime_ns


def test_non_utf8_names_round_trip(lv: Live) -> None:
    name = b"caf\xe9-\xff\xfe.bin"
    with open(os.path.join(os.fsencode(lv.mnt), name), "wb") as f:
        f.write(b"latin-1")
    assert name in os.listdir(os.fsencode(lv.mnt))
    assert name in os.listdir(os.fsencode(lv.backing))
    os.mkdir(os.path.join(os.fsencode(lv.mnt), b"d\x80"))
    os.rename(os.path.join(os.fsencode(lv.mnt), name), os.path.join(os.fsencode(lv.mnt), b"d\x80", name))
    assert Path(os.fsdecode(os.path.join(os.fsencode(lv.backing), b"d\x80", name))).read_bytes() == b"latin-1"


def run_client(code: str, timeout: float = 60) -> None:
    """Run client code in a child process.

    Needed where the client would hold the GIL while the kernel waits for
    this process's own FUSE threads (a page fault on an mmap of the mount):
    in one process that is a deadlock no timeout can break.
    """
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr


def test_shared_writable_mmap_reaches_the_backing_file(lv: Live) -> None:
    Path(lv.m("map")).write_bytes(b"\0" * 8192)
    run_client(
        "import mmap, os\n"
        f"fd = os.open({lv.m('map')!r}, os.O_RDWR)\n"
        "mm = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n"
        "mm[4096:4101] = b'mmap!'\n"
        "mm.flush()\n"
        "mm.close()\n"
        "os.close(fd)\n"
    )
    assert Path(lv.b("map")).read_bytes()[4096:4101] == b"mmap!"


def test_fallocate(lv: Live) -> None:
    fd = os.open(lv.m("big"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
        assert os.stat(lv.b("big")).st_size == 1 << 20
        os.pwrite(fd, b"\xaa" * 8192, 0)
        try:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        else:
            assert os.pread(fd, 8192, 0) == b"\0" * 4096 + b"\xaa" * 4096
        assert os.stat(lv.m("big")).st_size == 1 << 20
    finally:
        os.close(fd)


def test_unlinked_open_file_keeps_working(lv: Live) -> None:
    fd = os.open(lv.m("tmp"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.unlink(lv.m("tmp"))
        os.write(fd, b"scratch")
        assert os.fstat(fd).st_size == 7
        os.ftruncate(fd, 3)
        assert os.pread(fd, 10, 0) == b"scr"
        os.fchmod(fd, 0o640)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640 and os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    # the kernel sends RELEASE after close() returns; libfuse then removes the hidden name
    assert wait_for(lambda: not [n for n in os.listdir(lv.backing) if n.startswith(".fuse_hidden")])


def test_new_files_belong_to_the_caller() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another user")
    root = Path(tempfile.mkdtemp(prefix="vspfs-owner-", dir="/tmp"))
    try:
        root.chmod(0o755)
        with live_mount(root, allow_other=True) as live:
            os.chmod(live.backing, 0o755)
            os.chmod(live.mnt, 0o755)
            os.mkdir(live.b("shared"))
            os.chmod(live.b("shared"), 0o1777)
            code = (
                "import os; os.setgid(65534); os.setgroups([]); os.setuid(65534); os.umask(0o022);"
                f"open({live.m('shared', 'mine')!r}, 'w').write('x');"
                f"os.mkdir({live.m('shared', 'dir')!r}, 0o777)"
            )
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            for name, mode in (("mine", 0o644), ("dir", 0o755)):
                st = os.stat(live.b("shared", name))
                assert (st.st_uid, st.st_gid) == (65534, 65534), name
                assert stat.S_IMODE(st.st_mode) == mode, name  # the caller's umask, applied once
    finally:
        force_unmount(str(root / "mnt"))
        if not fuse.mounts_at(str(root / "mnt")):
            shutil.rmtree(root, ignore_errors=True)


def test_daemon_process_state_is_untouched(tmp_path: Path) -> None:
    """libfuse chdirs to / and installs signal handlers for the whole process; not here."""
    cwd = os.getcwd()
    old_umask = os.umask(0o027)
    try:
        with live_mount(tmp_path) as live:
            assert os.getcwd() == cwd
            assert os.umask(0o027) == 0o027
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) == signal.SIG_DFL:
                    assert fuse.c_signal_handler(sig) == 0, signal.Signals(sig).name
            # the daemon's umask (0o027 here) must not apply a second time: the
            # kernel already applied the caller's (0 in the child)
            run_client(f"import os; os.umask(0); os.close(os.open({live.m('wide')!r}, os.O_CREAT, 0o666))")
            assert stat.S_IMODE(os.stat(live.b("wide")).st_mode) == 0o666
            entry = fuse.mounts_at(live.mnt)[-1]
            assert entry["fstype"] == "fuse.vspfs"
            assert entry["source"] == f"vspfs-live:{live.volume.volume_id}"
    finally:
        os.umask(old_umask)


def test_mount_errors(lv: Live, tmp_path: Path) -> None:
    with pytest.raises(MountError, match=r"busy|already mounts"):
        fuse.mount_live(lv.volume, lv.mnt)
    with pytest.raises(MountError, match="not empty"):
        fuse.mount_snapshot(lv.provider.create_snapshot_set([lv.volume])[0], lv.backing)
    with pytest.raises(MountError, match="no such directory"):
        fuse.mount_live(lv.volume, str(tmp_path / "nowhere"))


def test_busy_mount_is_detached(tmp_path: Path) -> None:
    with live_mount(tmp_path) as live:
        Path(live.m("held")).write_bytes(b"x")
        fd = os.open(live.m("held"), os.O_RDONLY)
        try:
            how = live.handle.unmount(UNMOUNT)
            assert how in ("detached", "unmounted")
            assert not live.handle.mounted
            assert os.read(fd, 1) == b"x"  # an open file still works after a lazy unmount
        finally:
            os.close(fd)
        live.handle._thread.join(UNMOUNT)
        assert not live.handle.serving


def test_live_view_over_its_backing_directory(tmp_path: Path) -> None:
    backing, _, state, cache = make_dirs(tmp_path)
    Path(backing, "old").write_bytes(b"before")
    provider = Provider(state, cache_volumes=[cache])
    try:
        vol = provider.add_volume(backing)  # takes its directory fd before the mount
        with mounted(fuse.mount_live(vol, backing, over=True)):
            assert fuse.mounts_at(os.path.realpath(backing))[-1]["fstype"] == "fuse.vspfs"
            assert Path(backing, "old").read_bytes() == b"before"
            (snap,) = provider.create_snapshot_set([vol])
            Path(backing, "old").write_bytes(b"after!")  # through the live view: preserved first
            Path(backing, "new").write_bytes(b"new")
            assert sorted(os.listdir(backing)) == ["new", "old"]
            fh = snap.open("/old")
            try:
                assert snap.read(fh, 100, 0) == b"before"
            finally:
                snap.release(fh)
        assert not any(m["fstype"].startswith("fuse") for m in fuse.mounts_at(os.path.realpath(backing)))
        assert Path(backing, "old").read_bytes() == b"after!"
    finally:
        force_unmount(backing)
        provider.close()


# ----------------------------------------------------------- virtual drives


def tree(root: str) -> dict[bytes, tuple[str, bytes, int]]:
    """Path -> (kind, content or link target, mode bits) of everything under root."""
    out: dict[bytes, tuple[str, bytes, int]] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, broot)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", b"", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", f.read(), stat.S_IMODE(st.st_mode))
    return out


def populate(root: str) -> None:
    Path(root, "keep").write_bytes(b"unchanged")
    Path(root, "edit").write_bytes(b"x" * 200_000)
    Path(root, "gone").write_bytes(b"to be deleted")
    Path(root, "grow").write_bytes(b"short")
    os.mkdir(os.path.join(root, "dir"))
    Path(root, "dir", "inner").write_bytes(b"inner")
    os.link(os.path.join(root, "keep"), os.path.join(root, "dir", "keep-link"))
    os.symlink("keep", os.path.join(root, "sym"))
    os.chmod(os.path.join(root, "grow"), 0o600)


def change_everything(root: str) -> None:
    with open(os.path.join(root, "edit"), "r+b") as f:
        f.seek(70_000)
        f.write(b"CHANGED" * 1000)
    os.unlink(os.path.join(root, "gone"))
    with open(os.path.join(root, "grow"), "ab") as f:
        f.write(b" and longer")
    os.chmod(os.path.join(root, "grow"), 0o644)
    os.rename(os.path.join(root, "dir"), os.path.join(root, "moved"))
    Path(root, "moved", "inner").write_bytes(b"rewritten")
    Path(root, "brand-new").write_bytes(b"new")
    os.unlink(os.path.join(root, "sym"))
    os.symlink("elsewhere", os.path.join(root, "sym"))


def test_snapshot_drive_shows_the_past(lv: Live, tmp_path: Path) -> None:
    populate(lv.mnt)
    before = tree(lv.mnt)
    (snap,) = lv.provider.create_snapshot_set([lv.volume])
    drive = tmp_path / "drive"
    drive.mkdir()
    with mounted(fuse.mount_snapshot(snap, str(drive))):
        change_everything(lv.mnt)
        assert tree(lv.mnt) != before
        assert tree(str(drive)) == before

        # the snapshot id names the drive in /proc/mounts
        with open("/proc/mounts", encoding="utf-8") as f:
            lines = [line.split() for line in f]
        entry = [fields for fields in lines if fields[1] == str(drive.resolve())]
        assert entry and entry[-1][0] == f"vspfs:{snap.id}" and entry[-1][2] == "fuse.vspfs"
        assert "ro" in entry[-1][3].split(",")

        # hard links stay hard links: same st_ino, and d_ino agrees
        keep, link = os.stat(drive / "keep"), os.stat(drive / "dir" / "keep-link")
        assert keep.st_ino == link.st_ino and keep.st_nlink == link.st_nlink == 2
        by_name = {e.name: e.inode() for e in os.scandir(drive)}
        assert by_name["keep"] == keep.st_ino
        assert by_name["dir"] == os.stat(drive / "dir").st_ino

        # nothing can change it
        for attempt in (
            lambda: os.open(drive / "keep", os.O_RDWR),
            lambda: os.open(drive / "newfile", os.O_WRONLY | os.O_CREAT, 0o644),
            lambda: os.mkdir(drive / "newdir"),
            lambda: os.unlink(drive / "keep"),
            lambda: os.rename(drive / "keep", drive / "k2"),
            lambda: os.chmod(drive / "keep", 0o777),
            lambda: os.utime(drive / "keep"),
            lambda: os.truncate(drive / "keep", 0),
            lambda: os.setxattr(drive / "keep", "user.x", b"1"),
        ):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS
        assert tree(str(drive)) == before
    lv.provider.destroy(snap)


def test_many_mounts_in_one_process(lv: Live, tmp_path: Path) -> None:
    """Several drives and a live view served by threads of one process, unmounted out of order."""
    Path(lv.m("f")).write_bytes(b"v0")
    handles = []
    try:
        for i in range(3):
            (snap,) = lv.provider.create_snapshot_set([lv.volume])
            Path(lv.m("f")).write_bytes(f"v{i + 1}".encode())
            where = tmp_path / f"d{i}"
            where.mkdir()
            handles.append((fuse.mount_snapshot(snap, str(where)), where, f"v{i}".encode()))
        for handle, _, _ in handles:
            assert handle.wait_ready(READY)
        readers = []
        results: dict[int, bytes] = {}
        for i, (_, where, _) in enumerate(handles):
            t = threading.Thread(target=lambda i=i, w=where: results.__setitem__(i, (w / "f").read_bytes()))
            t.start()
            readers.append(t)
        for t in readers:
            t.join(READY)
        assert results == {i: want for i, (_, _, want) in enumerate(handles)}
        for handle, _, _ in (handles[1], handles[0], handles[2]):
            assert handle.unmount(UNMOUNT) == "unmounted"
            assert not handle.serving
        assert Path(lv.m("f")).read_bytes() == b"v3"  # the live view still serves
    finally:
        for handle, where, _ in handles:
            with contextlib.suppress(Exception):
                handle.unmount(UNMOUNT)
            force_unmount(str(where))
