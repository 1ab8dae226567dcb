"""Unit tests of the engine's small building blocks: the chunk index, the fd
cache, the gate, the retained area and the syscall wrappers."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from vspfs import syscalls
from vspfs.cacheformat import RETAINED_DIR_NAME
from vspfs.chunkindex import ChunkIndex
from vspfs.errors import UsageError, VspError
from vspfs.fdcache import FdCache
from vspfs.gate import Gate
from vspfs.retained import RetainedArea, area_is_stale, remove_stale_area

# -- ChunkIndex -----------------------------------------------------------------


def test_chunk_index_first_copy_wins_and_absent_is_zero() -> None:
    idx = ChunkIndex()
    assert idx.get(7, 3) == 0
    assert not idx.has_file(7)
    idx.put(7, 3, 4096)
    idx.put(7, 3, 9999)  # a second copy never replaces the first
    assert idx.get(7, 3) == 4096
    assert idx.get(7, 4) == 0
    assert idx.get(8, 3) == 0
    assert idx.has_file(7)
    assert idx.count == 1


def test_chunk_index_far_apart_chunks_and_listing() -> None:
    idx = ChunkIndex()
    chunks = [0, 1, 63, 64, 65, 1 << 20, (1 << 34) + 5]
    for n, c in enumerate(chunks):
        idx.put(1, c, 4096 * (n + 1))
    assert [c for c, _ in idx.chunks(1)] == sorted(chunks)
    for n, c in enumerate(chunks):
        assert idx.get(1, c) == 4096 * (n + 1)
    assert idx.count == len(chunks)


def test_chunk_index_untouched_files_cost_nothing() -> None:
    idx = ChunkIndex()
    empty = idx.memory_bytes()
    for ino in range(1000):
        assert idx.get(ino, 0) == 0
    assert idx.memory_bytes() == empty
    assert idx.files() == []


# -- FdCache --------------------------------------------------------------------


def test_fd_cache_never_closes_an_fd_in_use(tmp_path) -> None:
    cache = FdCache(capacity=1)
    opened: list[int] = []

    def opener() -> int:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        opened.append(fd)
        return fd

    with cache.use(1, opener) as fd1:
        with cache.use(2, opener) as fd2:
            # over capacity, but both are in use: both must stay open
            os.fstat(fd1)
            os.fstat(fd2)
        os.fstat(fd1)
    cache.close()
    for fd in opened:
        with pytest.raises(OSError) as exc:
            os.fstat(fd)
        assert exc.value.errno == errno.EBADF


def test_fd_cache_reuses_an_open_fd(tmp_path) -> None:
    cache = FdCache(capacity=4)
    calls = []

    def opener() -> int:
        calls.append(1)
        return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)

    with cache.use(5, opener) as a:
        pass
    with cache.use(5, opener) as b:
        assert a == b
    assert len(calls) == 1
    cache.close()


# -- Gate -------------------------------------------------------------------------


def test_gate_hold_waits_for_changes_in_flight() -> None:
    gate = Gate()
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def change() -> None:
        with gate:
            entered.set()
            release.wait(10)
            order.append("change done")

    t = threading.Thread(target=change)
    t.start()
    assert entered.wait(10)
    threading.Timer(0.2, release.set).start()
    with gate.hold(timeout=10):
        order.append("held")
    t.join(10)
    assert order == ["change done", "held"]


def test_gate_hold_times_out_with_a_clear_error_and_reopens() -> None:
    gate = Gate()
    entered = threading.Event()
    release = threading.Event()

    def change() -> None:
        with gate:
            entered.set()
            release.wait(10)

    t = threading.Thread(target=change)
    t.start()
    assert entered.wait(10)
    with pytest.raises(VspError, match="did not drain"), gate.hold(timeout=0.1):
        pass
    release.set()
    t.join(10)
    with gate:  # not left closed after the failed hold
        pass


def test_gate_blocks_new_changes_while_held() -> None:
    gate = Gate()
    done = threading.Event()

    def change() -> None:
        with gate:
            done.set()

    with gate.hold(timeout=5):
        t = threading.Thread(target=change)
        t.start()
        time.sleep(0.1)
        assert not done.is_set()
    t.join(10)
    assert done.is_set()


# -- retained area ------------------------------------------------------------------


def test_retained_area_is_locked_while_served_and_stale_after(tmp_path) -> None:
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        area = RetainedArea(root, str(tmp_path))
        assert area_is_stale(root) is False
        with pytest.raises(UsageError, match="already served"):
            RetainedArea(root, str(tmp_path))
        assert remove_stale_area(root, str(tmp_path)) is False
        # a daemon that died leaves the area unlocked: simulate by dropping the lock
        (tmp_path / "f").write_text("x")
        area.keep_file(os.stat(tmp_path / "f").st_ino, root, "f", {"s1"}, 512)
        os.close(area.fd)
        if area._lock_fd != area.fd:  # the by-path binding locks a file inside the area
            os.close(area._lock_fd)
        assert area_is_stale(root) is True
        assert remove_stale_area(root, str(tmp_path)) is True
        assert not (tmp_path / RETAINED_DIR_NAME).exists()
        assert (tmp_path / "f").read_text() == "x"  # live data untouched
    finally:
        os.close(root)


def test_retained_links_go_when_their_last_owner_goes(tmp_path) -> None:
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        area = RetainedArea(root, str(tmp_path))
        (tmp_path / "f").write_text("x")
        ino = os.stat(tmp_path / "f").st_ino
        area.keep_file(ino, root, "f", {"s1"}, 512)
        area.keep_file(ino, root, "f", {"s2"}, 512)
        assert area.extra_links(ino) == 1
        assert os.stat(tmp_path / "f").st_nlink == 2
        seen: list[int] = []
        area.release_owner("s1", seen.append)
        assert area.extra_links(ino) == 1 and seen == []
        area.release_owner("s2", seen.append)
        assert seen == [ino]
        assert area.extra_links(ino) == 0
        assert os.stat(tmp_path / "f").st_nlink == 1
        area.close()
        assert not (tmp_path / RETAINED_DIR_NAME).exists()
    finally:
        os.close(root)


# -- syscalls ---------------------------------------------------------------------------


def test_renameat2_flags_and_utimensat_omit(tmp_path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "a").write_text("A")
        (tmp_path / "b").write_text("B")
        syscalls.renameat2(fd, "a", fd, "b", syscalls.RENAME_EXCHANGE)
        assert (tmp_path / "a").read_text() == "B"
        with pytest.raises(FileExistsError):
            syscalls.renameat2(fd, "a", fd, "b", syscalls.RENAME_NOREPLACE)
        before = os.stat(tmp_path / "a")
        syscalls.utimensat(fd, "a", syscalls.UTIME_OMIT, 5_000_000_123)
        after = os.stat(tmp_path / "a")
        assert after.st_mtime_ns == 5_000_000_123
        assert after.st_atime_ns == before.st_atime_ns
    finally:
        os.close(fd)


# -- directory listings and inode numbers


def test_scan_dir_with_stat_inodes_equals_readdir_on_a_local_filesystem(tmp_path) -> None:
    from vspfs.volume import _dirent_inodes_exact, scan_dir

    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    os.symlink("f", tmp_path / "l")
    os.mkfifo(tmp_path / "p")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        plain = sorted(scan_dir(fd, True))
        assert plain == sorted(scan_dir(fd, True, stat_inodes=True))
        assert {n: os.lstat(tmp_path / n).st_ino for n, _, _ in plain} == {n: i for n, i, _ in plain}
        assert _dirent_inodes_exact(fd)
        assert syscalls.fs_magic(fd) != syscalls.FUSE_SUPER_MAGIC
    finally:
        os.close(fd)
