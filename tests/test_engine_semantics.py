"""Targeted tests of the copy-on-write semantics of the engine (no mounts).

Each test builds a small tree through the live view, takes a snapshot,
changes the tree through the live view, and checks what the snapshot shows,
what the live view shows and what the engine left on disk (cache file,
retained area). Expectations come from DESIGN.md ("Copy-on-write, file
level") and docs/engine-api.md, not from the implementation.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.model import PATHS_BINDING, PUNCH_HOLE, read_pieces
from vspfs.errors import VspError
from vspfs.retained import LOCK_NAME

CHUNK = 16
RETAINED = ".vsp-retained"


@dataclass
class Env:
    provider: object
    vol: object
    backing: Path
    state: Path

    def snapshot(self, **kwargs):
        [snap] = self.provider.create_snapshot_set([self.vol], **kwargs)
        return snap


@contextmanager
def _env(tmp_path: Path, name: str, chunk_size: int | None) -> Iterator[Env]:
    from vspfs.provider import Provider

    backing = tmp_path / name
    backing.mkdir()
    state = tmp_path / f"{name}-state"
    provider = Provider(str(state))
    kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
    vol = provider.add_volume(str(backing), **kwargs)
    try:
        yield Env(provider, vol, backing, state)
    finally:
        provider.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with _env(tmp_path, "volume", CHUNK) as e:
        yield e


# -- helpers ---------------------------------------------------------------------------------


def put(vol, path: str, data: bytes, mode: int = 0o644) -> None:
    fh = vol.create(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        vol.write(fh, data, 0)
    finally:
        vol.release(fh)


def pwrite(vol, path: str, data: bytes, offset: int) -> None:
    fh = vol.open(path, os.O_WRONLY)
    try:
        vol.write(fh, data, offset)
    finally:
        vol.release(fh)


def live_bytes(vol, path: str) -> bytes:
    size = vol.getattr(path).size
    fh = vol.open(path, os.O_RDONLY)
    try:
        return read_pieces(lambda n, off: vol.read(fh, n, off), size)
    finally:
        vol.release(fh)


def snap_bytes(snap, path: str) -> bytes:
    size = snap.getattr(path).size
    fh = snap.open(path)
    try:
        return read_pieces(lambda n, off: snap.read(fh, n, off), size)
    finally:
        snap.release(fh)


def snap_names(snap, path: str = "/") -> list[str]:
    return sorted(name for name, _ino, _type in snap.readdir(path))


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed * 31 + 1) % 251 for i in range(n))


def preserved(snap) -> tuple[int, int]:
    """(chunks, bytes) the snapshot's cache holds, from its status."""
    st = snap.status()
    return st["chunks_preserved"], st["bytes_preserved"]


def retained_names(env: Env) -> list[str]:
    area = env.backing / RETAINED
    return sorted(n for n in os.listdir(area) if n != LOCK_NAME) if area.is_dir() else []


def lstat_all(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """(mtime, ctime, size, nlink) of every path under root, hidden entries excluded."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and RETAINED in dirnames:
            dirnames.remove(RETAINED)
        for name in ["", *dirnames, *filenames]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_nlink)
    return out


# -- creation is O(1) ---------------------------------------------------------------------------


def test_creation_copies_nothing_and_changes_nothing(tmp_path: Path) -> None:
    """Snapshot creation records an epoch: no record in the cache file whatever
    the tree holds, and not one timestamp of the tree changes."""
    results = {}
    for name, files in (("empty", 0), ("full", 120)):
        with _env(tmp_path, name, CHUNK) as env:
            for i in range(files):
                if i % 10 == 0:
                    env.vol.mkdir(f"/d{i}", 0o755)
                put(env.vol, f"/d{i - i % 10}/f{i}", pattern(100, i))
                env.vol.setxattr(f"/d{i - i % 10}/f{i}", "user.x", b"v")
            before = lstat_all(env.backing)
            time.sleep(0.02)
            snap = env.snapshot()
            assert lstat_all(env.backing) == before, "snapshot creation changed the tree"
            st = snap.status()
            assert preserved(snap) == (0, 0)
            assert st["changed"] == {"metadata": 0, "listings": 0, "new": 0, "files_with_chunks": 0}
            results[name] = st["cache_bytes"]
    assert results["empty"] == results["full"], f"cache bytes at creation depend on the tree: {results}"


# -- data ----------------------------------------------------------------------------------------


def test_first_write_preserves_only_touched_chunks(env: Env) -> None:
    original = pattern(150)  # 9 full chunks and one of 6 bytes
    put(env.vol, "/f", original)
    put(env.vol, "/other", pattern(64, 3))
    snap = env.snapshot()
    assert preserved(snap) == (0, 0)

    pwrite(env.vol, "/f", b"XYZ", 3 * CHUNK + 5)  # inside chunk 3
    assert preserved(snap) == (1, CHUNK)
    pwrite(env.vol, "/f", b"Q" * 20, 5 * CHUNK + 10)  # chunks 5 and 6
    assert preserved(snap) == (3, 3 * CHUNK)
    pwrite(env.vol, "/f", b"again", 3 * CHUNK)  # chunk 3 again: first copy wins, nothing new
    assert preserved(snap) == (3, 3 * CHUNK)
    pwrite(env.vol, "/f", b"tail", 9 * CHUNK + 1)  # the short last chunk: its 6 bytes
    assert preserved(snap) == (4, 3 * CHUNK + 6)
    pwrite(env.vol, "/f", b"beyond", 400)  # past the snapshot-time size: nothing to keep
    assert preserved(snap) == (4, 3 * CHUNK + 6)

    assert snap_bytes(snap, "/f") == original
    assert snap.getattr("/f").size == 150
    expected = bytearray(original)
    for data, off in ((b"XYZ", 3 * CHUNK + 5), (b"Q" * 20, 5 * CHUNK + 10), (b"again", 3 * CHUNK)):
        expected[off : off + len(data)] = data
    expected[9 * CHUNK + 1 : 9 * CHUNK + 5] = b"tail"
    expected += bytes(400 - len(expected)) + b"beyond"
    assert live_bytes(env.vol, "/f") == bytes(expected)
    assert snap_bytes(snap, "/other") == pattern(64, 3)


def test_truncate_preserves_cut_off_chunks(env: Env) -> None:
    original = pattern(160)  # 10 chunks
    put(env.vol, "/f", original)
    snap = env.snapshot()
    env.vol.truncate("/f", 3 * CHUNK + 8)  # cuts chunk 3 in half and drops 4..9
    assert preserved(snap) == (7, 7 * CHUNK)
    assert snap_bytes(snap, "/f") == original
    env.vol.truncate("/f", 300)  # up again: zeros live, the past unchanged
    pwrite(env.vol, "/f", b"new", 100)
    assert snap_bytes(snap, "/f") == original
    assert snap.getattr("/f").size == 160
    live = live_bytes(env.vol, "/f")
    assert live[: 3 * CHUNK + 8] == original[: 3 * CHUNK + 8]
    assert live[3 * CHUNK + 8 :] == bytes(100 - 3 * CHUNK - 8) + b"new" + bytes(197)


def test_truncate_through_open_handle_and_o_trunc(env: Env) -> None:
    put(env.vol, "/a", pattern(50, 1))
    put(env.vol, "/b", pattern(50, 2))
    fh = env.vol.open("/a", os.O_RDWR)
    snap = env.snapshot()
    env.vol.truncate("/a", 5, fh=fh)
    env.vol.write(fh, b"!", 40)
    env.vol.release(fh)
    fh = env.vol.open("/b", os.O_WRONLY | os.O_TRUNC)
    env.vol.release(fh)
    assert env.vol.getattr("/b").size == 0
    assert snap_bytes(snap, "/a") == pattern(50, 1)
    assert snap_bytes(snap, "/b") == pattern(50, 2)


def test_write_only_and_append_handles_preserve(env: Env) -> None:
    put(env.vol, "/w", pattern(40, 1))
    put(env.vol, "/ap", pattern(20, 2))
    snap = env.snapshot()
    fh = env.vol.open("/w", os.O_WRONLY)  # the engine cannot read through this fd
    env.vol.write(fh, b"#" * 40, 0)
    env.vol.release(fh)
    fh = env.vol.open("/ap", os.O_WRONLY | os.O_APPEND)
    env.vol.write(fh, b"more", 0)  # appends whatever the offset says
    env.vol.release(fh)
    assert live_bytes(env.vol, "/ap") == pattern(20, 2) + b"more"
    assert snap_bytes(snap, "/w") == pattern(40, 1)
    assert snap_bytes(snap, "/ap") == pattern(20, 2)


def test_directory_renamed_over_an_empty_directory(env: Env) -> None:
    """The replaced directory is deleted by the rename; the snapshot still
    shows it (empty) and the moved one under its old name."""
    env.vol.mkdir("/a", 0o755)
    put(env.vol, "/a/f", b"x")
    env.vol.mkdir("/c", 0o700)
    snap = env.snapshot()
    c_ino = snap.getattr("/c").ino
    env.vol.rename("/a", "/c")
    assert sorted(n for n, _i, _t in snap.readdir("/")) == ["a", "c"]
    assert snap.readdir("/c") == []
    assert snap.getattr("/c").ino == c_ino
    assert statmod.S_IMODE(snap.getattr("/c").mode) == 0o700
    assert [n for n, _i, _t in snap.readdir("/a")] == ["f"]


def test_write_only_handle_of_a_file_unlinked_before_the_snapshot(env: Env) -> None:
    """A file with no name at snapshot time is in no snapshot: writes through
    a write-only handle still open on it go on. (The by-path binding cannot
    reopen a nameless file for reading: it must see there is nothing to
    preserve rather than fail the write.)"""
    put(env.vol, "/gone", pattern(64, 3))
    fh = env.vol.open("/gone", os.O_WRONLY)
    env.vol.unlink("/gone")
    snap = env.snapshot()
    assert env.vol.write(fh, b"still writing", 5) == 13
    env.vol.truncate("/gone", 10, fh=fh)
    env.vol.release(fh)
    assert [name for name, _ino, _type in snap.readdir("/")] == []


def test_handle_opened_before_snapshot_and_file_unlinked(env: Env) -> None:
    """A handle opened before the snapshot writes into a file the live view
    has since unlinked: the snapshot still shows the original bytes."""
    put(env.vol, "/f", pattern(64, 4))
    fh = env.vol.open("/f", os.O_RDWR)
    snap = env.snapshot()
    env.vol.unlink("/f")
    env.vol.write(fh, b"after unlink", 10)
    env.vol.truncate("/f", 20, fh=fh)
    env.vol.release(fh)
    assert snap_bytes(snap, "/f") == pattern(64, 4)
    assert snap.getattr("/f").nlink == 1


@pytest.mark.skipif(PATHS_BINDING, reason="a POSIX call: the by-path (Windows) binding has none")
def test_punch_hole_preserved(env: Env) -> None:
    put(env.vol, "/f", pattern(100, 5))
    snap = env.snapshot()
    fh = env.vol.open("/f", os.O_RDWR)
    env.vol.fallocate(fh, PUNCH_HOLE, 10, 50)
    env.vol.release(fh)
    live = live_bytes(env.vol, "/f")
    assert live == pattern(100, 5)[:10] + bytes(50) + pattern(100, 5)[60:]
    assert snap_bytes(snap, "/f") == pattern(100, 5)


def test_default_chunk_size_large_file(tmp_path: Path) -> None:
    """The default (64 KiB) chunks: writes and reads across chunk boundaries."""
    with _env(tmp_path, "big", None) as env:
        original = os.urandom(300_000)
        put(env.vol, "/big", original)
        snap = env.snapshot()
        pwrite(env.vol, "/big", b"\xff" * 70_000, 65_530)
        env.vol.truncate("/big", 200_000)
        fh = snap.open("/big")
        try:
            assert snap.read(fh, 300_000, 0) == original
            assert snap.read(fh, 10, 65_531) == original[65_531:65_541]
            assert snap.read(fh, 1000, 299_500) == original[299_500:]
            assert snap.read(fh, 10, 300_000) == b""
        finally:
            snap.release(fh)


# -- namespace ---------------------------------------------------------------------------------


def test_unlink_keeps_file_readable_and_pinned(env: Env) -> None:
    put(env.vol, "/f", pattern(70, 6))
    ino = env.vol.getattr("/f").ino
    snap = env.snapshot()
    env.vol.unlink("/f")
    with pytest.raises(FileNotFoundError):
        env.vol.getattr("/f")
    assert snap_bytes(snap, "/f") == pattern(70, 6)
    assert snap.getattr("/f").ino == ino
    assert snap_names(snap) == ["f"]

    # pinned in the retained area, at the root of the volume
    names = retained_names(env)
    assert names, "unlinked snapshot-time file is not pinned in the retained area"
    assert snap.status()["pinned_bytes"] > 0
    # ... which the live view hides and refuses to touch
    assert RETAINED not in env.vol.readdir("/")
    assert env.vol.readdir("") == []
    with pytest.raises(FileNotFoundError):
        env.vol.getattr("/" + RETAINED)
    inside = f"/{RETAINED}/{names[0]}"
    refusals = {
        "open": lambda: env.vol.open(inside, os.O_RDONLY),
        "getattr": lambda: env.vol.getattr(inside),
        "readdir": lambda: env.vol.readdir("/" + RETAINED),
        "unlink": lambda: env.vol.unlink(inside),
        "rename": lambda: env.vol.rename(inside, "/stolen"),
        "link": lambda: env.vol.link(inside, "/stolen"),
        "create": lambda: env.vol.create(f"/{RETAINED}/x", os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: env.vol.mkdir("/" + RETAINED, 0o755),
        "rmdir": lambda: env.vol.rmdir("/" + RETAINED),
        "chmod": lambda: env.vol.chmod(inside, 0o777),
        "truncate": lambda: env.vol.truncate(inside, 0),
        "setxattr": lambda: env.vol.setxattr(inside, "user.x", b"1"),
        "symlink": lambda: env.vol.symlink("x", f"/{RETAINED}/s"),
    }
    accepted = []
    for what, call in refusals.items():
        try:
            call()
        except (OSError, VspError):
            continue
        accepted.append(what)
    assert not accepted, f"the live view let these reach the retained area: {accepted}"
    assert retained_names(env) == names
    assert not (env.backing / "stolen").exists()
    assert snap_bytes(snap, "/f") == pattern(70, 6)


def test_hidden_names_absent_from_snapshot(env: Env) -> None:
    put(env.vol, "/f", b"x")
    snap = env.snapshot()
    env.vol.unlink("/f")  # populate the retained area
    assert snap_names(snap) == ["f"]
    with pytest.raises(FileNotFoundError):
        snap.getattr("/" + RETAINED)


def test_rename_directory_keeps_snapshot_view(env: Env) -> None:
    v = env.vol
    v.mkdir("/d", 0o755)
    v.mkdir("/d/sub", 0o750)
    put(v, "/d/x", pattern(40, 1))
    put(v, "/d/sub/y", pattern(40, 2))
    inos = {p: v.getattr(p).ino for p in ("/d", "/d/sub", "/d/x", "/d/sub/y")}
    snap = env.snapshot()
    v.rename("/d", "/e")
    v.rename("/e/sub", "/top")
    pwrite(v, "/e/x", b"changed", 0)
    put(v, "/top/y", b"replaced")
    v.mkdir("/d", 0o700)
    put(v, "/d/x", b"impostor")
    v.mkdir("/d/sub", 0o700)
    assert snap_names(snap) == ["d"]
    assert snap_names(snap, "/d") == ["sub", "x"]
    assert snap_names(snap, "/d/sub") == ["y"]
    assert snap_bytes(snap, "/d/x") == pattern(40, 1)
    assert snap_bytes(snap, "/d/sub/y") == pattern(40, 2)
    assert {p: snap.getattr(p).ino for p in inos} == inos
    assert statmod.S_IMODE(snap.getattr("/d/sub").mode) == 0o750 & ~_umask()
    for gone in ("/e", "/top", "/e/x"):
        with pytest.raises(FileNotFoundError):
            snap.getattr(gone)


def test_rmdir_then_recreate(env: Env) -> None:
    v = env.vol
    v.mkdir("/d", 0o755)
    v.setxattr("/d", "user.k", b"old")
    ino = v.getattr("/d").ino
    snap = env.snapshot()
    v.rmdir("/d")
    v.mkdir("/d", 0o700)
    put(v, "/d/new", b"n")
    st = snap.getattr("/d")
    assert st.ino == ino and statmod.S_ISDIR(st.mode)
    assert snap_names(snap, "/d") == []
    assert snap.getxattr("/d", "user.k") == b"old"
    assert v.getattr("/").nlink == 3  # the root and one subdirectory, nothing hidden counted


def test_rmdir_non_empty_fails_like_the_filesystem(env: Env) -> None:
    v = env.vol
    v.mkdir("/d", 0o755)
    put(v, "/d/f", b"x")
    snap = env.snapshot()
    with pytest.raises(OSError) as exc:
        v.rmdir("/d")
    assert exc.value.errno == errno.ENOTEMPTY
    assert v.readdir("/d") == ["f"]
    assert snap_names(snap, "/d") == ["f"]


@pytest.mark.skipif(PATHS_BINDING, reason="a POSIX call: the by-path (Windows) binding has none")
def test_rename_over_existing_and_exchange(env: Env) -> None:
    from vspfs.volume import RENAME_EXCHANGE

    v = env.vol
    put(v, "/a", pattern(30, 1))
    put(v, "/b", pattern(30, 2))
    v.mkdir("/d", 0o755)
    put(v, "/d/c", pattern(30, 3))
    snap = env.snapshot()
    v.rename("/a", "/b")  # b replaced
    v.rename("/d", "/b", RENAME_EXCHANGE)  # a file and a directory swap places
    assert statmod.S_ISDIR(v.getattr("/b").mode)
    assert live_bytes(v, "/d") == pattern(30, 1)
    assert snap_bytes(snap, "/a") == pattern(30, 1)
    assert snap_bytes(snap, "/b") == pattern(30, 2)
    assert snap_bytes(snap, "/d/c") == pattern(30, 3)
    assert statmod.S_ISDIR(snap.getattr("/d").mode)


def test_files_created_after_snapshot_are_invisible(env: Env) -> None:
    """Each kind of creation is the first change of its own directory, so
    each one alone must preserve that directory's listing."""
    v = env.vol
    put(v, "/old", b"o")
    kinds = ("create", "mkdir", "symlink", "link", "mknod", "rename_in")
    for k in kinds:
        v.mkdir(f"/{k}", 0o755)
    v.mkdir("/src", 0o755)
    put(v, "/src/moving", b"m")
    snap = env.snapshot()
    put(v, "/create/new", b"n")
    v.mkdir("/mkdir/newdir", 0o755)
    v.symlink("old", "/symlink/sym")
    v.link("/old", "/link/hard")
    v.mknod("/mknod/fifo", statmod.S_IFIFO | 0o644, 0)
    v.rename("/src/moving", "/rename_in/moved")
    for k in kinds:
        assert snap_names(snap, "/" + k) == [], f"{k}: the new name shows in the snapshot"
    assert snap_names(snap, "/src") == ["moving"]
    for p in (
        "/create/new",
        "/mkdir/newdir",
        "/symlink/sym",
        "/link/hard",
        "/mknod/fifo",
        "/rename_in/moved",
    ):
        with pytest.raises(FileNotFoundError):
            snap.getattr(p)
    put(v, "/late", b"l")  # the root too
    assert snap_names(snap) == sorted(["old", "src", *kinds])
    assert snap.getattr("/old").nlink == 1


def test_writes_at_chunk_edges(env: Env) -> None:
    """One-byte writes on the first and the last byte of chunks, and writes
    ending exactly at a chunk boundary."""
    original = pattern(6 * CHUNK + 3)
    put(env.vol, "/f", original)
    snap = env.snapshot()
    pwrite(env.vol, "/f", b"A", 2 * CHUNK)  # first byte of chunk 2
    pwrite(env.vol, "/f", b"B", 4 * CHUNK - 1)  # last byte of chunk 3
    pwrite(env.vol, "/f", b"C" * CHUNK, 4 * CHUNK)  # exactly chunk 4
    pwrite(env.vol, "/f", b"D", 6 * CHUNK)  # first byte of the short last chunk
    assert preserved(snap) == (4, 3 * CHUNK + 3)
    assert snap_bytes(snap, "/f") == original
    env.vol.truncate("/f", 5 * CHUNK)  # cut exactly at a boundary: chunk 5 and the tail
    assert preserved(snap) == (5, 4 * CHUNK + 3)
    assert snap_bytes(snap, "/f") == original


def test_hard_links_stay_hard_links(env: Env) -> None:
    v = env.vol
    v.mkdir("/d", 0o755)
    put(v, "/a", pattern(33, 9))
    v.link("/a", "/b")
    v.link("/a", "/d/c")
    ino = v.getattr("/a").ino
    snap = env.snapshot()
    v.unlink("/a")
    v.rename("/b", "/z")
    pwrite(v, "/z", b"changed", 0)
    v.link("/z", "/d/c2")
    for p in ("/a", "/b", "/d/c"):
        st = snap.getattr(p)
        assert (st.ino, st.nlink) == (ino, 3), p
        assert snap_bytes(snap, p) == pattern(33, 9)
    assert {i for _n, i, _t in snap.readdir("/")} >= {ino}
    # the live view: links counted as the filesystem counts them, retained links hidden
    assert v.getattr("/z").nlink == 3
    assert v.getattr("/d/c").nlink == 3


def test_live_nlink_not_inflated_by_retained_links(env: Env) -> None:
    v = env.vol
    put(v, "/a", b"a")
    v.link("/a", "/b")
    put(v, "/c", b"c")
    v.mkdir("/d", 0o755)
    v.mkdir("/d/e", 0o755)
    v.symlink("c", "/s")
    snap = env.snapshot()
    v.unlink("/a")
    v.rename("/c", "/c2")
    v.rename("/s", "/d/s")
    v.rename("/d/e", "/e")
    assert v.getattr("/b").nlink == 1
    assert v.getattr("/c2").nlink == 1
    assert v.getattr("/d/s").nlink == 1
    assert v.getattr("/").nlink == 4  # ".", "..", d and e: the retained area does not count
    assert v.getattr("/d").nlink == 2
    v.rmdir("/e")
    assert v.getattr("/").nlink == 3
    assert snap.getattr("/").nlink == 3
    assert snap.getattr("/d").nlink == 3
    assert snap.getattr("/a").nlink == 2


def test_several_snapshots_each_show_their_own_time(env: Env) -> None:
    v = env.vol
    put(v, "/f", b"one" * 10)
    v.setxattr("/f", "user.v", b"1")
    s1 = env.snapshot()
    pwrite(v, "/f", b"TWO", 0)
    v.setxattr("/f", "user.v", b"2")
    put(v, "/g", b"g2")
    s2 = env.snapshot()
    v.truncate("/f", 4)
    v.setxattr("/f", "user.v", b"3")
    v.rename("/g", "/h")
    s3 = env.snapshot()
    v.unlink("/f")
    v.unlink("/h")
    expect = {
        s1: ({"f"}, b"one" * 10, b"1"),
        s2: ({"f", "g"}, b"TWO" + (b"one" * 10)[3:], b"2"),
        s3: ({"f", "h"}, b"TWOo", b"3"),
    }
    for snap, (names, data, xv) in expect.items():
        assert set(snap_names(snap)) == names
        assert snap_bytes(snap, "/f") == data
        assert snap.getxattr("/f", "user.v") == xv
    env.provider.destroy(s2)
    for snap in (s1, s3):
        names, data, xv = expect[snap]
        assert set(snap_names(snap)) == names
        assert snap_bytes(snap, "/f") == data
    assert snap_bytes(s3, "/h") == b"g2"


def test_destroy_removes_cache_file_and_retained_entries(env: Env) -> None:
    v = env.vol
    put(v, "/f", pattern(50))
    put(v, "/g", pattern(50, 1))
    v.mkdir("/d", 0o755)
    v.mkdir("/m", 0o755)
    s1 = env.snapshot()
    v.unlink("/f")
    v.rmdir("/d")
    v.rename("/m", "/m2")
    s2 = env.snapshot()
    v.unlink("/g")
    cache1, cache2 = s1.cache.path, s2.cache.path
    assert os.path.exists(cache1) and os.path.exists(cache2)
    assert retained_names(env)
    env.provider.destroy(s1)
    assert not os.path.exists(cache1)
    assert os.path.exists(cache2)
    assert snap_bytes(s2, "/g") == pattern(50, 1)  # still pinned for s2
    assert set(snap_names(s2)) == {"g", "m2"}
    env.provider.destroy(s2)
    assert not os.path.exists(cache2)
    assert retained_names(env) == []
    assert env.provider.snapshots == {}
    assert sorted(v.readdir("/")) == ["m2"]
    assert v.getattr("/").nlink == 3


def test_xattr_changes_preserved(env: Env) -> None:
    v = env.vol
    put(v, "/f", b"x")
    v.mkdir("/d", 0o755)
    v.setxattr("/f", "user.a", b"1")
    v.setxattr("/d", "user.a", b"dir")
    v.setxattr("/", "user.root", b"r")
    snap = env.snapshot()
    v.setxattr("/f", "user.a", b"2")
    v.setxattr("/f", "user.b", b"new")
    v.removexattr("/d", "user.a")
    v.setxattr("/", "user.root", b"changed")
    assert snap.getxattr("/f", "user.a") == b"1"
    assert sorted(n for n in snap.listxattr("/f") if n.startswith("user.")) == ["user.a"]
    with pytest.raises(OSError) as exc:
        snap.getxattr("/f", "user.b")
    assert exc.value.errno == errno.ENODATA
    assert snap.getxattr("/d", "user.a") == b"dir"
    assert snap.getxattr("/", "user.root") == b"r"
    assert v.getxattr("/f", "user.b") == b"new"


def test_chmod_utimens_preserved(env: Env) -> None:
    from vspfs.volume import UTIME_NOW, UTIME_OMIT

    v = env.vol
    put(v, "/f", b"x")
    v.chmod("/f", 0o640)
    v.utimens("/f", 1_000_000_000_123, 2_000_000_000_456)
    before = v.getattr("/f")
    snap = env.snapshot()
    v.chmod("/f", 0o600)
    v.utimens("/f", UTIME_OMIT, 3_000_000_000_789)
    after = v.getattr("/f")
    assert after.mtime_ns == 3_000_000_000_789
    assert after.atime_ns == before.atime_ns  # UTIME_OMIT kept it
    v.utimens("/f", UTIME_NOW, UTIME_OMIT)
    assert v.getattr("/f").mtime_ns == 3_000_000_000_789
    st = snap.getattr("/f")
    assert statmod.S_IMODE(st.mode) == 0o640
    assert (st.mtime_ns, st.ctime_ns) == (before.mtime_ns, before.ctime_ns)


def test_symlink_deletion_preserved(env: Env) -> None:
    v = env.vol
    v.symlink("target/path", "/l")
    v.mkdir("/d", 0o755)
    v.symlink("../elsewhere", "/d/l2")
    ino = v.getattr("/l").ino
    snap = env.snapshot()
    v.unlink("/l")
    v.symlink("other", "/l")
    v.rename("/d/l2", "/moved")
    assert snap.readlink("/l") == "target/path"
    st = snap.getattr("/l")
    assert statmod.S_ISLNK(st.mode) and st.ino == ino and st.size == len("target/path")
    assert snap.readlink("/d/l2") == "../elsewhere"
    assert v.readlink("/l") == "other"


def test_non_utf8_names(env: Env) -> None:
    name = os.fsdecode(b"caf\xe9")
    v = env.vol
    put(v, "/" + name, b"bytes")
    snap = env.snapshot()
    v.rename("/" + name, "/plain")
    assert snap_names(snap) == [name]
    assert snap_bytes(snap, "/" + name) == b"bytes"


def test_snapshot_readdir_entries_carry_snapshot_inodes_and_types(env: Env) -> None:
    v = env.vol
    put(v, "/f", b"x")
    v.mkdir("/d", 0o755)
    v.symlink("f", "/s")
    want = {n: (v.getattr("/" + n).ino, statmod.S_IFMT(v.getattr("/" + n).mode)) for n in ("f", "d", "s")}
    snap = env.snapshot()
    v.unlink("/f")
    put(v, "/f", b"new file, new inode")
    v.rmdir("/d")
    v.unlink("/s")
    got = {n: (i, t) for n, i, t in snap.readdir("/")}
    assert got == want


def test_snapshot_is_read_only_and_errors(env: Env) -> None:
    v = env.vol
    put(v, "/f", b"x")
    v.mkdir("/d", 0o755)
    snap = env.snapshot()
    with pytest.raises(OSError) as exc:
        snap.getattr("/f/below")
    assert exc.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as exc:
        snap.open("/d")
    assert exc.value.errno == errno.EISDIR
    with pytest.raises(OSError) as exc:
        snap.readlink("/f")
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        snap.readdir("/f")
    assert exc.value.errno == errno.ENOTDIR


# -- the live view's own behaviour --------------------------------------------------------------


def test_failed_rename_changes_nothing(env: Env) -> None:
    """A rename the filesystem refuses must leave the live tree as it was,
    ctime included, with or without a snapshot (the live view must behave
    exactly like the filesystem under it)."""
    from vspfs.volume import RENAME_EXCHANGE, RENAME_NOREPLACE

    v = env.vol
    put(v, "/a", b"a")
    put(v, "/b", b"b")
    v.mkdir("/d", 0o755)
    put(v, "/d/x", b"x")
    snap = env.snapshot()
    before = {p: v.getattr(p) for p in ("/a", "/b", "/d", "/d/x")}
    time.sleep(0.03)  # timestamps are coarse: make any change visible
    with pytest.raises(OSError) as exc:
        v.rename("/a", "/b", RENAME_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(OSError) as exc:
        v.rename("/a", "/d")  # a file over a directory
    assert exc.value.errno == errno.EISDIR
    with pytest.raises(OSError) as exc:
        v.rename("/a", "/a", RENAME_NOREPLACE)  # the same name
    assert exc.value.errno == errno.EEXIST
    for old, new in (("/d/x", "/d"), ("/d", "/d/x")):  # exchange with an ancestor
        with pytest.raises(OSError) as exc:
            v.rename(old, new, RENAME_EXCHANGE)
        assert exc.value.errno == errno.EINVAL
    after = {p: v.getattr(p) for p in before}
    changed = {
        p: (before[p], after[p])
        for p in before
        if replace(before[p], atime_ns=0) != replace(after[p], atime_ns=0)  # reading may touch atime
    }
    assert not changed, f"failed renames changed ctime/attributes: {changed}"
    assert snap.status()["pinned_bytes"] == 0, "failed renames pinned files in the retained area"


def test_live_errors_match_the_filesystem_with_a_snapshot(env: Env, tmp_path: Path) -> None:
    """The same failing calls, once with a snapshot active, once on a plain directory."""
    from vspfs.volume import RENAME_EXCHANGE

    v = env.vol
    twin = tmp_path / "twin"
    twin.mkdir()
    v.mkdir("/d", 0o755)
    put(v, "/d/f", b"x")
    put(v, "/f", b"y")
    (twin / "d").mkdir()
    (twin / "d" / "f").write_bytes(b"x")
    (twin / "f").write_bytes(b"y")
    env.snapshot()
    cases = [
        ("unlink dir", lambda: v.unlink("/d"), lambda: os.unlink(twin / "d")),
        ("unlink missing", lambda: v.unlink("/nope"), lambda: os.unlink(twin / "nope")),
        ("rmdir file", lambda: v.rmdir("/f"), lambda: os.rmdir(twin / "f")),
        ("rmdir missing", lambda: v.rmdir("/nope"), lambda: os.rmdir(twin / "nope")),
        ("mkdir existing", lambda: v.mkdir("/d", 0o755), lambda: os.mkdir(twin / "d")),
        ("link dir", lambda: v.link("/d", "/d2"), lambda: os.link(twin / "d", twin / "d2")),
        ("link missing", lambda: v.link("/nope", "/n2"), lambda: os.link(twin / "nope", twin / "n2")),
        ("rename missing", lambda: v.rename("/nope", "/n2"), lambda: os.rename(twin / "nope", twin / "n2")),
        ("rename into self", lambda: v.rename("/d", "/d/sub"), lambda: os.rename(twin / "d", twin / "d/sub")),
        ("rename dir over file", lambda: v.rename("/d", "/f"), lambda: os.rename(twin / "d", twin / "f")),
        ("rename file over dir", lambda: v.rename("/f", "/d"), lambda: os.rename(twin / "f", twin / "d")),
        ("truncate dir", lambda: v.truncate("/d", 0), lambda: os.truncate(twin / "d", 0)),
        ("open dir rw", lambda: v.open("/d", os.O_RDWR), lambda: os.open(twin / "d", os.O_RDWR)),
        (
            "removexattr missing",
            lambda: v.removexattr("/f", "user.no"),
            lambda: os.removexattr(twin / "f", "user.no"),
        ),
        ("getxattr missing", lambda: v.getxattr("/f", "user.no"), lambda: os.getxattr(twin / "f", "user.no")),
        ("readlink file", lambda: v.readlink("/f"), lambda: os.readlink(twin / "f")),
        ("readdir file", lambda: v.readdir("/f"), lambda: os.listdir(twin / "f")),
        ("path through file", lambda: v.getattr("/f/x"), lambda: os.lstat(twin / "f" / "x")),
    ]
    wrong = []
    for what, live, plain in cases:
        codes = []
        for call in (live, plain):
            try:
                call()
                codes.append(None)
            except OSError as exc:
                codes.append(exc.errno)
        if codes[0] != codes[1]:
            wrong.append(f"{what}: live {codes[0]}, filesystem {codes[1]}")
    assert not wrong, "\n".join(wrong)
    # and the exchange of a missing target, which the kernel checks itself
    if not PATHS_BINDING:
        with pytest.raises(FileNotFoundError):
            v.rename("/f", "/nope", RENAME_EXCHANGE)


# -- cache limits ---------------------------------------------------------------------------------


def test_cache_overflow_invalidates_but_never_refuses_writes(tmp_path: Path) -> None:
    with _env(tmp_path, "ovf", 4096) as env:
        put(env.vol, "/f", os.urandom(1 << 20))
        snap = env.snapshot(max_size=256 * 1024)
        for off in range(0, 1 << 20, 4096):
            pwrite(env.vol, "/f", b"z" * 4096, off)  # never refused
        assert live_bytes(env.vol, "/f") == b"z" * (1 << 20)
        assert snap.valid is False and snap.invalid_reason
        with pytest.raises((VspError, OSError)):
            snap_bytes(snap, "/f")


def test_cache_overflow_refuse_writes_keeps_snapshot(tmp_path: Path) -> None:
    with _env(tmp_path, "refuse", 4096) as env:
        original = os.urandom(1 << 20)
        put(env.vol, "/f", original)
        snap = env.snapshot(max_size=256 * 1024, policy="refuse-writes")
        refused = 0
        for off in range(0, 1 << 20, 4096):
            try:
                pwrite(env.vol, "/f", b"z" * 4096, off)
            except (VspError, OSError):
                refused += 1
        assert refused, "no write was refused although the cache is far too small"
        assert snap.valid
        assert snap_bytes(snap, "/f") == original


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_removing_many_directories_does_not_exhaust_descriptors(env: Env) -> None:
    """`rm -r` of a big tree during a backup: every removed snapshot-time
    directory must stay reachable for the snapshot without costing the
    process one open descriptor each - live operations are never refused,
    and a process has a bounded number of descriptors."""
    import resource

    v = env.vol
    v.mkdir("/tree", 0o755)
    count = 600
    for i in range(count):
        v.mkdir(f"/tree/d{i}", 0o755)
    snap = env.snapshot()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 300, hard))
    try:
        for i in range(count):
            v.rmdir(f"/tree/d{i}")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert v.readdir("/tree") == []
    assert len(snap.readdir("/tree")) == count
    assert statmod.S_ISDIR(snap.getattr(f"/tree/d{count - 1}").mode)
