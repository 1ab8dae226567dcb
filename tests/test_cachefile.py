"""The cache file layer: format codecs, the append-only file, locking and staleness.

These tests use real files (and, for a full cache volume, a real tmpfs) because
the properties that matter are the ones the kernel decides: O_EXCL, flock per
open file description, ENOSPC from fallocate, what a crash leaves on disk.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vspfs import cachefile as cf
from vspfs.attrs import Attr
from vspfs.cachefile import (
    DEFAULT_INITIAL_SIZE,
    DEFAULT_MAX_SIZE,
    CacheFile,
    find_cache_files,
    is_locked,
    iter_records,
    parse_size,
    read_header,
    remove_if_stale,
)
from vspfs.cacheformat import (
    CACHE_FILE_PREFIX,
    CACHE_FILE_SUFFIX,
    FLAG_ACTIVE,
    FLAG_INVALID,
    FORMAT_VERSION,
    HEADER_CRC_OFFSET,
    HEADER_SIZE,
    MAGIC,
    REASON_MAX,
    RECORD_CHUNK,
    RECORD_FLAG_NO_CRC,
    RECORD_HEADER_SIZE,
    RECORD_LISTING,
    RECORD_MAGIC,
    RECORD_META,
    RETAINED_DIR_NAME,
    VOLUME_PATH_MAX,
    Header,
    cache_file_name,
    decode_header,
    decode_listing,
    decode_meta,
    decode_record_header,
    encode_chunk_header,
    encode_header,
    encode_listing,
    encode_meta,
    encode_record_header,
    is_cache_file_name,
)
from vspfs.errors import CacheFileError, CacheOverflow, UsageError

REPO = Path(__file__).resolve().parent.parent
KiB = 1024
MiB = 1024 * KiB


def _attr(**over: int) -> Attr:
    base = dict(
        mode=stat.S_IFREG | 0o644,
        ino=12345,
        nlink=1,
        uid=1000,
        gid=1000,
        rdev=0,
        size=70000,
        blocks=144,
        blksize=4096,
        atime_ns=1_700_000_000_123_456_789,
        mtime_ns=-1_500_000_001,  # before 1970: the split into sec/nsec must floor
        ctime_ns=0,
    )
    base.update(over)
    return Attr(**base)


def _make(directory: Path | str, snap: str = "s1", **kw: object) -> CacheFile:
    kw.setdefault("initial_size", 0)
    return CacheFile.create(str(directory), snap, "vol1", volume_path="/srv/data", **kw)


def _corrupt(path: str, offset: int, xor: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ xor]))


def _run_owner(directory: str, snap: str, *, wait: bool) -> subprocess.Popen[str]:
    """Another process that creates a cache file, reports its path, then either
    holds it until its stdin closes or dies at once without closing (a crash)."""
    code = (
        "import os, sys\n"
        "from vspfs.cachefile import CacheFile\n"
        f"c = CacheFile.create(sys.argv[1], {snap!r}, 'vol1', initial_size=0)\n"
        "c.append_chunk(1, 0, b'x' * 100)\n"
        "print(c.path, flush=True)\n" + ("sys.stdin.read()\n" if wait else "") + "os._exit(0)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, directory],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


# -- names ---------------------------------------------------------------------------


def test_names() -> None:
    assert cache_file_name("20240101T000000-abc123") == "VSP_20240101T000000-abc123.vsp"
    assert CACHE_FILE_PREFIX == "VSP_" and CACHE_FILE_SUFFIX == ".vsp"
    assert RETAINED_DIR_NAME == ".vsp-retained"
    for good in ("VSP_x.vsp", b"VSP_x.vsp", "VSP_.vsp", "VSP_a b.vsp", b"VSP_\xff.vsp"):
        assert is_cache_file_name(good)
    for bad in ("VSP_x.vs", "xVSP_x.vsp", "VSP.vsp", "", b"VSP_x", ".vsp-retained"):
        assert not is_cache_file_name(bad)
    for bad_id in ("", "../x", "a/b", ".hidden", "x" * 65, "é", "a\0b"):
        with pytest.raises(ValueError):
            cache_file_name(bad_id)


# -- codecs --------------------------------------------------------------------------


def test_meta_round_trip() -> None:
    attr = _attr()
    xattrs = [(b"user.a", b""), (b"security.selinux", b"ctx\0"), (b"user.\xff", bytes(range(256)) * 10)]
    assert decode_meta(encode_meta(attr, xattrs)) == (attr, xattrs)
    assert decode_meta(encode_meta(attr, [])) == (attr, [])


def test_meta_round_trip_of_a_real_stat(tmp_path: Path) -> None:
    attr = Attr.from_stat(os.stat(tmp_path))
    assert decode_meta(encode_meta(attr, [])) == (attr, [])


@given(
    times=st.tuples(*[st.integers(-(2**70), 2**70)] * 3),
    big=st.integers(0, 2**64 - 1),
    small=st.integers(0, 2**32 - 1),
    xattrs=st.dictionaries(
        st.binary(min_size=1, max_size=255).filter(lambda b: b"\0" not in b),
        st.binary(max_size=300),
        max_size=5,
    ),
)
def test_meta_round_trip_any(
    times: tuple[int, int, int], big: int, small: int, xattrs: dict[bytes, bytes]
) -> None:
    attr = _attr(
        mode=small, uid=small, gid=small, blksize=small, ino=big, nlink=big, rdev=big, size=big, blocks=big,
        atime_ns=times[0], mtime_ns=times[1], ctime_ns=times[2],
    )  # fmt: skip
    pairs = list(xattrs.items())
    assert decode_meta(encode_meta(attr, pairs)) == (attr, pairs)


def test_meta_encode_refuses_what_the_format_cannot_hold() -> None:
    for bad in ({"uid": -1}, {"mode": 2**32}, {"size": 2**64}, {"atime_ns": 10**9 * 2**64}):
        with pytest.raises(ValueError):
            encode_meta(_attr(**bad), [])
    for bad_xattrs in ([(b"", b"v")], [(b"a\0b", b"v")], [(b"x" * 256, b"")], [(b"a", b"1"), (b"a", b"2")]):
        with pytest.raises(ValueError):
            encode_meta(_attr(), bad_xattrs)


def test_listing_round_trip() -> None:
    entries = [
        (b"file", 11, stat.S_IFREG),
        (b"dir", 12, stat.S_IFDIR),
        (b"link", 13, stat.S_IFLNK),
        (b"\xff\xfe not utf-8", 14, stat.S_IFIFO),
        (b"x" * 255, 2**64 - 1, stat.S_IFSOCK),
        (b"...", 15, stat.S_IFCHR),
        (b"\n\t", 16, stat.S_IFBLK),
    ]
    assert decode_listing(encode_listing(entries)) == entries
    assert decode_listing(encode_listing([])) == []


@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=255).filter(
            lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
        ),
        st.tuples(st.integers(0, 2**64 - 1), st.sampled_from([stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK])),
        max_size=20,
    )
)
def test_listing_round_trip_any(entries: dict[bytes, tuple[int, int]]) -> None:
    rows = [(name, ino, t) for name, (ino, t) in entries.items()]
    assert decode_listing(encode_listing(rows)) == rows


def test_listing_encode_refuses_bad_entries() -> None:
    for bad in (b"", b"a/b", b"a\0", b".", b"..", b"x" * 256):
        with pytest.raises(ValueError):
            encode_listing([(bad, 1, stat.S_IFREG)])
    for bad_type in (0, 0o644, stat.S_IFREG | 0o644):
        with pytest.raises(ValueError):
            encode_listing([(b"a", 1, bad_type)])
    with pytest.raises(ValueError):
        encode_listing([(b"a", 1, stat.S_IFREG), (b"a", 2, stat.S_IFREG)])


def test_decoders_name_what_is_wrong() -> None:
    payload = encode_listing([(b"abc", 1, stat.S_IFREG)])
    with pytest.raises(CacheFileError, match="truncated"):
        decode_listing(payload[:-1])
    with pytest.raises(CacheFileError, match="stray bytes"):
        decode_listing(payload + b"\0")
    meta = encode_meta(_attr(), [(b"user.a", b"v")])
    with pytest.raises(CacheFileError, match="truncated"):
        decode_meta(meta[:50])
    with pytest.raises(CacheFileError, match="stray"):
        decode_meta(meta + b"x")


def test_header_round_trip() -> None:
    h = Header(
        FORMAT_VERSION, HEADER_SIZE, 65536, FLAG_ACTIVE | FLAG_INVALID, -5, "snap-1", "völ", "/p", "why"
    )
    block = encode_header(h)
    assert len(block) == HEADER_SIZE and block.startswith(MAGIC)
    assert decode_header(block) == h
    assert decode_header(block).active and decode_header(block).invalid and not decode_header(block).closed


def test_header_cuts_informational_text_on_a_character_boundary() -> None:
    long_path = "/" + "é" * VOLUME_PATH_MAX
    reason = "bad name \udcff " + "ü" * REASON_MAX
    h = Header(FORMAT_VERSION, HEADER_SIZE, 16, FLAG_ACTIVE, 0, "s", "v", long_path, reason)
    back = decode_header(encode_header(h))
    assert long_path.startswith(back.volume_path)
    assert len(back.volume_path.encode()) in (VOLUME_PATH_MAX, VOLUME_PATH_MAX - 1)
    assert back.invalid_reason.startswith("bad name \\udcff ü")
    assert len(back.invalid_reason.encode()) <= REASON_MAX


# -- creating, appending, reading ----------------------------------------------------


def test_default_sizes(tmp_path: Path) -> None:
    """Without arguments a cache file preallocates the modest default and has no maximum."""
    c = CacheFile.create(str(tmp_path), "s1", "vol1")
    try:
        assert c.allocated_bytes == DEFAULT_INITIAL_SIZE == os.stat(c.path).st_size
        assert c.max_bytes is DEFAULT_MAX_SIZE is None
        assert c.chunk_size == 65536
    finally:
        c.close(delete=True)


def test_create_append_read(tmp_path: Path) -> None:
    c = CacheFile.create(
        str(tmp_path), "s1", "vol1", volume_path="/srv/data", chunk_size=16, initial_size=64 * KiB
    )
    try:
        assert c.path == str(tmp_path / "VSP_s1.vsp")
        assert (c.snapshot_id, c.volume_id, c.chunk_size) == ("s1", "vol1", 16)
        assert c.used_bytes == HEADER_SIZE and c.allocated_bytes == 64 * KiB and c.max_bytes is None
        assert os.stat(c.path).st_size == 64 * KiB
        assert stat.S_IMODE(os.stat(c.path).st_mode) == 0o600
        assert not os.get_inheritable(c._fd)

        d1 = c.append_chunk(7, 3, b"A" * 16)
        d2 = c.append_chunk(7, 4, b"B" * 5)  # the last chunk of a file may be short
        meta = encode_meta(_attr(), [(b"user.k", b"v")])
        m = c.append_meta(7, meta)
        listing = encode_listing([(b"f", 7, stat.S_IFREG)])
        li = c.append_listing(1, listing)
        assert d1 == HEADER_SIZE + RECORD_HEADER_SIZE
        assert c.read_data(d1, 16) == b"A" * 16 and c.read_data(d1 + 4, 3) == b"AAA"
        assert c.read_data(d2, 5) == b"BBBBB"
        assert c.read_record(d1 - RECORD_HEADER_SIZE) == (RECORD_CHUNK, 7, 3, b"A" * 16)
        assert c.read_record(m) == (RECORD_META, 7, 0, meta)
        assert c.read_record(li) == (RECORD_LISTING, 1, 0, listing)
        assert c.used_bytes == li + RECORD_HEADER_SIZE + len(listing)

        got = list(iter_records(c.path))
        assert [(r.type, r.ino, r.arg, r.payload_len) for r in got] == [
            (RECORD_CHUNK, 7, 3, 16),
            (RECORD_CHUNK, 7, 4, 5),
            (RECORD_META, 7, 0, len(meta)),
            (RECORD_LISTING, 1, 0, len(listing)),
        ]
        assert [r.data_offset for r in got[:2]] == [d1, d2]
        assert got[2].offset == m and got[3].offset == li

        h = read_header(c.path)
        assert (h.snapshot_id, h.volume_id, h.volume_path, h.chunk_size) == ("s1", "vol1", "/srv/data", 16)
        assert h.active and not h.invalid and h.created_ns == c.created_ns

        with pytest.raises(ValueError):
            c.append_chunk(7, 5, b"x" * 17)
        with pytest.raises(CacheFileError):
            c.read_data(c.used_bytes - 2, 10)
    finally:
        c.close(delete=True)
    assert not os.path.exists(c.path)


def test_read_record_checks_the_crc(tmp_path: Path) -> None:
    c = _make(tmp_path)
    try:
        rec = c.append_meta(1, encode_meta(_attr(), []))
        _corrupt(c.path, rec + RECORD_HEADER_SIZE + 3)
        with pytest.raises(CacheFileError, match="crc"):
            c.read_record(rec)
        _corrupt(c.path, rec + 9)  # the ino in the record header
        with pytest.raises(CacheFileError, match="damaged"):
            c.read_record(rec)
    finally:
        c.close(delete=True)


def test_create_never_overwrites(tmp_path: Path) -> None:
    victim = tmp_path / "VSP_s1.vsp"
    victim.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        _make(tmp_path)
    assert victim.read_bytes() == b"precious"
    c = _make(tmp_path, "s2")
    with pytest.raises(FileExistsError):
        _make(tmp_path, "s2")
    assert is_locked(c.path)
    c.close(delete=True)


def test_create_refuses_bad_arguments_before_touching_the_disk(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _make(tmp_path, "../escape")
    with pytest.raises(ValueError):
        CacheFile.create(str(tmp_path), "s1", "", initial_size=0)
    with pytest.raises(ValueError):
        _make(tmp_path, chunk_size=0)
    with pytest.raises(UsageError, match="too small"):
        _make(tmp_path, max_size=HEADER_SIZE)
    assert os.listdir(tmp_path) == []


def test_growth_in_steps(tmp_path: Path) -> None:
    c = _make(tmp_path, chunk_size=4096, initial_size=8 * KiB, grow_step=16 * KiB)
    try:
        assert c.allocated_bytes == 8 * KiB
        c.append_chunk(1, 0, b"x" * 4000)  # 4096 + 36 + 4000 fits in 8 KiB
        assert c.allocated_bytes == 8 * KiB
        c.append_chunk(1, 1, b"x" * 4000)  # passes 8 KiB: one step
        assert c.allocated_bytes == 24 * KiB
        assert os.stat(c.path).st_size == 24 * KiB
        while c.used_bytes + RECORD_HEADER_SIZE + 4000 <= 24 * KiB:
            c.append_chunk(1, 2, b"x" * 4000)
        assert c.allocated_bytes == 24 * KiB
        c.append_chunk(1, 3, b"x" * 4000)
        assert c.allocated_bytes == 40 * KiB
        big = _make(tmp_path, "s2", chunk_size=MiB, initial_size=0, grow_step=16 * KiB)
        big.append_chunk(1, 0, b"y" * (100 * KiB))  # several steps at once, still whole steps
        assert big.allocated_bytes == HEADER_SIZE + 7 * 16 * KiB
        big.close(delete=True)
    finally:
        c.close(delete=True)


def test_max_size_overflow_is_final(tmp_path: Path) -> None:
    maximum = HEADER_SIZE + 3 * (RECORD_HEADER_SIZE + 100)
    c = _make(tmp_path, chunk_size=100, initial_size=1 * MiB, grow_step=64, max_size=maximum)
    try:
        assert c.allocated_bytes == maximum  # never reserves past the maximum
        for i in range(3):
            c.append_chunk(1, i, b"z" * 100)
        assert c.used_bytes == maximum
        with pytest.raises(
            CacheOverflow, match=rf"cache file .*VSP_s1\.vsp reached its maximum of {maximum} bytes"
        ):
            c.append_chunk(1, 3, b"z")
        with pytest.raises(CacheOverflow, match="maximum"):
            c.append_meta(1, b"")  # even a record that would fit: the file is done
        assert c.overflowed and c.used_bytes == maximum
        assert len(list(iter_records(c.path))) == 3
    finally:
        c.close(delete=True)


def test_growth_is_capped_by_the_maximum(tmp_path: Path) -> None:
    maximum = HEADER_SIZE + 10 * KiB
    c = _make(tmp_path, chunk_size=KiB, initial_size=0, grow_step=MiB, max_size=maximum)
    try:
        c.append_chunk(1, 0, b"q" * KiB)
        assert c.allocated_bytes == maximum
        assert os.stat(c.path).st_size == maximum
    finally:
        c.close(delete=True)


def test_warnings_at_80_and_95_percent_once_each(tmp_path: Path) -> None:
    calls: list[tuple[int, int, int]] = []
    maximum = 10_000
    c = _make(tmp_path, chunk_size=8192, max_size=maximum, on_warning=lambda *a: calls.append(a))
    try:
        c.append_chunk(1, 0, b"a" * (7900 - HEADER_SIZE - RECORD_HEADER_SIZE))  # 79 %
        assert calls == []
        c.append_chunk(1, 1, b"b" * 64)  # 80.0 %
        assert calls == [(80, c.used_bytes, maximum)]
        c.append_chunk(1, 2, b"c" * 100)
        assert len(calls) == 1
        c.append_chunk(1, 3, b"d" * (9500 - c.used_bytes - RECORD_HEADER_SIZE))  # exactly 95 %
        assert calls[1:] == [(95, 9500, maximum)]
        c.append_chunk(1, 4, b"e" * 100)
        assert len(calls) == 2
    finally:
        c.close(delete=True)

    jumped: list[tuple[int, int, int]] = []
    c = _make(tmp_path, "s2", chunk_size=8192, max_size=maximum, on_warning=lambda *a: jumped.append(a))
    try:
        c.append_chunk(1, 0, b"x" * (9700 - HEADER_SIZE - RECORD_HEADER_SIZE))
        assert [p for p, _, _ in jumped] == [80, 95]
    finally:
        c.close(delete=True)


def test_a_failing_warning_callback_does_not_lose_the_record(tmp_path: Path) -> None:
    def boom(*_: int) -> None:
        raise RuntimeError("callback bug")

    c = _make(tmp_path, chunk_size=8192, max_size=HEADER_SIZE + 100, on_warning=boom)
    try:
        off = c.append_chunk(1, 0, b"x" * 60)
        assert c.read_data(off, 60) == b"x" * 60
    finally:
        c.close(delete=True)


def test_concurrent_appends(tmp_path: Path) -> None:
    c = _make(tmp_path, chunk_size=512, initial_size=0, grow_step=8 * KiB)
    results: dict[tuple[int, int], int] = {}
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(200):
            data = bytes([t]) * (1 + (i * 7 + t) % 512)
            off = c.append_chunk(t, i, data)
            with lock:
                results[(t, i)] = off

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        for (t, i), off in results.items():
            n = 1 + (i * 7 + t) % 512
            assert c.read_data(off, n) == bytes([t]) * n
        recs = list(iter_records(c.path))
        assert len(recs) == 8 * 200
        assert {(r.ino, r.arg) for r in recs} == set(results)
        assert recs[-1].data_offset + recs[-1].payload_len == c.used_bytes
    finally:
        c.close(delete=True)


def test_mark_invalid_and_close(tmp_path: Path) -> None:
    c = _make(tmp_path)
    c.append_chunk(1, 0, b"x")
    c.mark_invalid("cache file reached its maximum")
    h = read_header(c.path)
    assert h.invalid and h.active and h.invalid_reason == "cache file reached its maximum"
    assert c.header.invalid
    c.mark_invalid("x" * 1000)
    assert len(read_header(c.path).invalid_reason) == REASON_MAX
    c.close(delete=False)
    c.close(delete=True)  # idempotent: the first close decided
    h = read_header(c.path)
    assert h.closed and not h.active and h.invalid
    with pytest.raises(OSError) as exc:
        c.append_chunk(1, 1, b"x")
    assert exc.value.errno == errno.EBADF
    with pytest.raises(OSError):
        c.read_data(HEADER_SIZE + RECORD_HEADER_SIZE, 1)
    assert remove_if_stale(c.path)  # closed without delete: nobody holds it
    assert not os.path.exists(c.path)


# -- locking and staleness -----------------------------------------------------------


def test_lock_held_in_the_same_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = _make(tmp_path)
    try:
        assert is_locked(c.path)
        assert remove_if_stale(c.path) is False
        # and by flock alone (per open file description), without the in-process registry
        monkeypatch.setattr(cf, "_owned", set())
        assert is_locked(c.path)
        assert remove_if_stale(c.path) is False
        assert os.path.exists(c.path)
        assert c.read_data(HEADER_SIZE, 0) == b""
    finally:
        c.close(delete=True)
    assert not os.path.exists(c.path)


def test_lock_held_by_another_process_then_its_crash(tmp_path: Path) -> None:
    owner = _run_owner(str(tmp_path), "live-1", wait=True)
    try:
        assert owner.stdout is not None
        path = owner.stdout.readline().strip()
        assert path.endswith("VSP_live-1.vsp")
        assert is_locked(path)
        assert remove_if_stale(path) is False
        assert os.path.exists(path)
    finally:
        assert owner.stdin is not None
        owner.stdin.close()  # the owner now dies without closing its cache file
        owner.wait(timeout=30)
    assert os.path.exists(path)
    assert not is_locked(path)
    assert [r.payload_len for r in iter_records(path)] == [100]
    assert remove_if_stale(path) is True
    assert not os.path.exists(path)
    assert remove_if_stale(path) is False  # already gone


def test_crashed_owner_is_stale(tmp_path: Path) -> None:
    owner = _run_owner(str(tmp_path), "dead-1", wait=False)
    out, _ = owner.communicate(timeout=30)
    path = out.strip()
    assert find_cache_files(str(tmp_path)) == ["VSP_dead-1.vsp"]
    assert not is_locked(path)
    assert remove_if_stale(path)
    assert find_cache_files(str(tmp_path)) == []


def test_find_cache_files(tmp_path: Path) -> None:
    for name in ("VSP_b.vsp", "VSP_a.vsp", "other.vsp", "VSP_x.txt", ".vsp-retained"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "VSP_dir.vsp").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "VSP_deep.vsp").write_bytes(b"")
    assert find_cache_files(str(tmp_path)) == ["VSP_a.vsp", "VSP_b.vsp", "VSP_dir.vsp"]


def _valid_file(tmp_path: Path, snap: str = "s1") -> str:
    c = _make(tmp_path, snap, chunk_size=64)
    c.append_chunk(1, 0, b"x" * 64)
    c.append_meta(1, encode_meta(_attr(), []))
    c.close(delete=False)
    return c.path


def _assert_refused(path: str, match: str) -> None:
    before = os.lstat(path)
    with pytest.raises(CacheFileError, match=match):
        read_header(path)
    with pytest.raises(CacheFileError, match=match):
        remove_if_stale(path)
    assert os.lstat(path).st_ino == before.st_ino, "a file that is not a cache file must never be removed"


def test_foreign_files_are_refused_and_kept(tmp_path: Path) -> None:
    rnd = tmp_path / "VSP_random.vsp"
    rnd.write_bytes(os.urandom(8192))
    _assert_refused(str(rnd), "not a vspfs cache file")
    text = tmp_path / "VSP_x.vsp"
    text.write_text("my notes, not a cache file\n")
    _assert_refused(str(text), rf"{text} is not a vspfs cache file")
    empty = tmp_path / "VSP_empty.vsp"
    empty.write_bytes(b"")
    _assert_refused(str(empty), "empty")
    d = tmp_path / "VSP_dir.vsp"
    d.mkdir()
    _assert_refused(str(d), "not a regular file")
    target = Path(_valid_file(tmp_path, "target"))
    link = tmp_path / "VSP_link.vsp"
    link.symlink_to(target)
    _assert_refused(str(link), "symbolic link")
    assert target.exists()
    fifo = tmp_path / "VSP_fifo.vsp"
    os.mkfifo(fifo)
    _assert_refused(str(fifo), "not a regular file")  # and must not block


def test_truncated_header(tmp_path: Path) -> None:
    path = _valid_file(tmp_path)
    os.truncate(path, 100)
    _assert_refused(path, "truncated")
    os.truncate(path, 4)
    _assert_refused(path, "truncated")


@pytest.mark.parametrize(
    "offset", [0, 9, 20, 40, 200, HEADER_CRC_OFFSET, HEADER_CRC_OFFSET + 3, HEADER_SIZE - 1]
)
def test_flipped_bit_in_header(tmp_path: Path, offset: int) -> None:
    path = _valid_file(tmp_path)
    _corrupt(path, offset, 0x10)
    _assert_refused(path, "crc|magic|version")


def test_unsupported_version(tmp_path: Path) -> None:
    path = _valid_file(tmp_path)
    with open(path, "r+b") as f:
        block = bytearray(f.read(HEADER_SIZE))
        struct.pack_into("<I", block, 8, FORMAT_VERSION + 1)
        struct.pack_into("<I", block, HEADER_CRC_OFFSET, 0)
        struct.pack_into("<I", block, HEADER_CRC_OFFSET, zlib.crc32(block))
        f.seek(0)
        f.write(block)
    _assert_refused(path, f"format version {FORMAT_VERSION + 1}")


# -- torn tails and corruption -------------------------------------------------------


def _three_records(tmp_path: Path, *, initial_size: int = 0, kind: str = "chunk") -> tuple[str, list[int]]:
    """A closed cache file with three 1000-byte records of inodes 0, 1, 2:
    chunks (no payload crc) or metadata-type records (with one); with no
    preallocation (and growth by the byte) the file ends exactly after the
    last record."""
    c = _make(tmp_path, chunk_size=1000, initial_size=initial_size, grow_step=1)
    if kind == "chunk":
        offs = [c.append_chunk(i, i, bytes([65 + i]) * 1000) - RECORD_HEADER_SIZE for i in range(3)]
    else:
        offs = [c.append_meta(i, bytes([65 + i]) * 1000) for i in range(3)]
    c.close(delete=False)
    return c.path, offs


def _kinds(path: str) -> list[int]:
    return [r.ino for r in iter_records(path)]


def test_iter_records_stops_at_preallocated_space(tmp_path: Path) -> None:
    path, _ = _three_records(tmp_path, initial_size=MiB)
    assert os.path.getsize(path) == MiB
    assert _kinds(path) == [0, 1, 2]


@pytest.mark.parametrize("cut", [1, 500, 1000 + RECORD_HEADER_SIZE - 1, 1000 + RECORD_HEADER_SIZE - 10])
def test_torn_tail_at_end_of_file(tmp_path: Path, cut: int) -> None:
    path, _ = _three_records(tmp_path)
    assert _kinds(path) == [0, 1, 2]
    os.truncate(path, os.path.getsize(path) - cut)
    assert _kinds(path) == [0, 1]


def test_torn_tail_unwritten_header(tmp_path: Path) -> None:
    """What a crash between a record's payload and its header leaves: payload, no header."""
    path, offs = _three_records(tmp_path, initial_size=MiB)
    with open(path, "r+b") as f:
        f.seek(offs[2])
        f.write(bytes(RECORD_HEADER_SIZE))
    assert _kinds(path) == [0, 1]


def test_torn_tail_damaged_last_payload(tmp_path: Path) -> None:
    path, offs = _three_records(tmp_path, initial_size=MiB, kind="meta")
    _corrupt(path, offs[2] + RECORD_HEADER_SIZE + 999)
    assert _kinds(path) == [0, 1]
    _corrupt(path, offs[2] + 2)  # and its header too
    assert _kinds(path) == [0, 1]


def test_corruption_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path, offs = _three_records(tmp_path, kind="meta")
    _corrupt(path, offs[1] + RECORD_HEADER_SIZE + 10)
    with pytest.raises(CacheFileError, match=rf"offset {offs[1]} .*intact record follows at {offs[2]}"):
        list(iter_records(path))
    (tmp_path / "again").mkdir()
    path, offs = _three_records(tmp_path / "again")
    _corrupt(path, offs[0] + 12)  # the ino of the first record header
    with pytest.raises(CacheFileError, match="corrupt"):
        list(iter_records(path))


def test_chunk_payloads_carry_no_crc_but_their_headers_do(tmp_path: Path) -> None:
    """A damaged chunk payload goes unnoticed (by design: see docs/cache-file.md,
    "CHUNK"); a damaged chunk record header is still caught."""
    path, offs = _three_records(tmp_path, initial_size=MiB)
    for off in offs:
        raw = Path(path).read_bytes()[off : off + RECORD_HEADER_SIZE]
        rh = decode_record_header(raw, 1000)
        assert rh.flags == RECORD_FLAG_NO_CRC and rh.crc == 0 and not rh.has_crc
    _corrupt(path, offs[1] + RECORD_HEADER_SIZE + 10)
    assert _kinds(path) == [0, 1, 2]
    _corrupt(path, offs[1] + 12)  # the ino in the second record header
    with pytest.raises(CacheFileError, match=rf"offset {offs[1]} .*intact record follows at {offs[2]}"):
        list(iter_records(path))
    _corrupt(path, offs[2] + 12)
    assert _kinds(path) == [0], "nothing intact after the damage: a torn tail"


def test_record_flags_are_checked() -> None:
    body = struct.Struct("<4sBBHQQII")
    meta = encode_record_header(RECORD_META, 1, 0, b"abc")
    assert decode_record_header(meta, 16).has_crc
    with pytest.raises(ValueError, match="flags"):
        encode_record_header(RECORD_META, 1, 0, b"abc", RECORD_FLAG_NO_CRC)
    with pytest.raises(ValueError, match="flags"):
        encode_record_header(RECORD_CHUNK, 1, 0, b"abc", 0x02)
    for ino, chunk, payload in [(1, 2, b"abc"), (0, 0, b""), ((1 << 64) - 1, (1 << 64) - 1, b"z" * 70)]:
        assert encode_chunk_header(ino, chunk, len(payload)) == encode_record_header(
            RECORD_CHUNK, ino, chunk, payload, RECORD_FLAG_NO_CRC
        )
    for bad in [(-1, 0, 0), (1 << 64, 0, 0), (0, -1, 0), (0, 0, 1 << 32)]:
        with pytest.raises(ValueError, match="does not fit"):
            encode_chunk_header(*bad)

    def raw(rtype: int, flags: int, crc: int) -> bytes:
        b = body.pack(RECORD_MAGIC, rtype, flags, 0, 1, 0, 3, crc)
        return b + struct.pack("<I", zlib.crc32(b))

    assert decode_record_header(raw(RECORD_CHUNK, RECORD_FLAG_NO_CRC, 0), 16).flags == RECORD_FLAG_NO_CRC
    for bad, why in [
        (raw(RECORD_META, RECORD_FLAG_NO_CRC, 0), "reserved bits"),  # chunks only
        (raw(RECORD_CHUNK, 0x02, 0), "reserved bits"),
        (raw(RECORD_CHUNK, RECORD_FLAG_NO_CRC, 5), "non-zero crc"),
    ]:
        with pytest.raises(CacheFileError, match=why):
            decode_record_header(bad, 16)
    with pytest.raises(CacheFileError, match="reserved bits"):  # version 1 had no flags
        decode_record_header(raw(RECORD_CHUNK, RECORD_FLAG_NO_CRC, 0), 16, version=1)


def _rewrite_version(path: str, version: int) -> None:
    with open(path, "r+b") as f:
        block = bytearray(f.read(HEADER_SIZE))
        struct.pack_into("<I", block, 8, version)
        struct.pack_into("<I", block, HEADER_CRC_OFFSET, 0)
        struct.pack_into("<I", block, HEADER_CRC_OFFSET, zlib.crc32(block))
        f.seek(0)
        f.write(block)


def test_version_1_files_still_read(tmp_path: Path) -> None:
    """A stale file of an older vspfs (version 1: no record flags) is still
    judged and removed; a chunk record flag in it is damage, not a format."""
    path, _ = _three_records(tmp_path, kind="meta")
    _rewrite_version(path, 1)
    assert read_header(path).version == 1
    assert _kinds(path) == [0, 1, 2]
    assert remove_if_stale(path)
    (tmp_path / "chunks").mkdir()
    path, _ = _three_records(tmp_path / "chunks")
    _rewrite_version(path, 1)
    assert _kinds(path) == [], "every record is damaged by version-1 rules: nothing intact, a torn tail"


def test_chunk_batches(tmp_path: Path) -> None:
    c = _make(tmp_path, chunk_size=100)
    try:
        first = c.append_meta(9, b"m")
        data = b"".join(bytes([i]) * 100 for i in range(5))
        view = memoryview(data)
        offs = c.append_chunks(3, [(i, view[i * 100 : i * 100 + (100 if i < 4 else 7)]) for i in range(5)])
        assert offs[0] == first + RECORD_HEADER_SIZE + 1 + RECORD_HEADER_SIZE
        for i, off in enumerate(offs):
            assert c.read_data(off, 7) == bytes([i]) * 7
        assert c.used_bytes == offs[-1] + 7
        got = [(r.type, r.ino, r.arg, r.payload_len) for r in iter_records(c.path)]
        assert got == [(RECORD_META, 9, 0, 1)] + [(RECORD_CHUNK, 3, i, 100 if i < 4 else 7) for i in range(5)]
        assert c.append_chunks(3, []) == []
        with pytest.raises(ValueError, match="exceeds the chunk size"):
            c.append_chunks(3, [(9, b"x"), (10, b"y" * 101)])
        assert c.used_bytes == offs[-1] + 7, "a refused batch reserves nothing"
    finally:
        c.close(delete=True)


def test_torn_batch_reads_as_unwritten(tmp_path: Path) -> None:
    """What a crash during a batch leaves: the later records of the batch may
    be complete (or cut anywhere), but the first header is written last, so
    the whole batch reads as unwritten; so do records behind it."""
    c = _make(tmp_path, chunk_size=100, initial_size=MiB)
    c.append_meta(1, b"before")
    offs = c.append_chunks(2, [(i, bytes([i]) * 100) for i in range(3)])
    c.append_meta(3, b"after")
    c.close(delete=False)
    with open(c.path, "r+b") as f:
        f.seek(offs[0] - RECORD_HEADER_SIZE)
        f.write(bytes(RECORD_HEADER_SIZE))
    assert _kinds(c.path) == [1]
    with open(c.path, "r+b") as f:  # and the rest of the batch cut short too
        f.seek(offs[2] + 50)
        f.write(bytes(50))
    assert _kinds(c.path) == [1]


def test_bad_header_stops_iter_records(tmp_path: Path) -> None:
    path, _ = _three_records(tmp_path)
    _corrupt(path, 100)
    with pytest.raises(CacheFileError, match="crc"):
        list(iter_records(path))


# -- a cache volume that is really full ------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[str]:
    """A 2 MiB tmpfs: the only honest way to get ENOSPC from fallocate and write."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {done.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        res = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30, check=False)
        if res.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30, check=False)


def test_preallocation_on_a_full_volume(small_tmpfs: str) -> None:
    with pytest.raises(CacheOverflow, match=rf"cache volume {small_tmpfs} is full"):
        CacheFile.create(small_tmpfs, "big", "vol1", initial_size=4 * MiB)
    assert os.listdir(small_tmpfs) == [], "the half-made cache file must be removed"
    st = os.statvfs(small_tmpfs)
    assert st.f_bfree == st.f_blocks, "its space must be given back"


def test_appends_until_the_volume_is_full(small_tmpfs: str) -> None:
    c = CacheFile.create(
        small_tmpfs, "fill", "vol1", chunk_size=64 * KiB, initial_size=0, grow_step=512 * KiB
    )
    try:
        offsets = []
        with pytest.raises(CacheOverflow) as exc:
            for i in range(100):
                offsets.append(c.append_chunk(1, i, bytes([i]) * (64 * KiB)))
        assert str(exc.value) == f"cache volume {small_tmpfs} is full"
        assert 20 <= len(offsets) < 32, "the last partial step should still be used"
        with pytest.raises(CacheOverflow, match="is full"):
            c.append_meta(1, b"")
        for i, off in enumerate(offsets):
            assert c.read_data(off, 10) == bytes([i]) * 10
        assert len(list(iter_records(c.path))) == len(offsets)
        c.mark_invalid(str(exc.value))
        assert read_header(c.path).invalid_reason == f"cache volume {small_tmpfs} is full"
    finally:
        c.close(delete=True)
    assert os.listdir(small_tmpfs) == []


def test_display_path_names_the_volume_in_messages(small_tmpfs: str) -> None:
    c = CacheFile.create(small_tmpfs, "shown", "vol1", chunk_size=MiB, initial_size=0, grow_step=4 * MiB)
    c.display_path = "/srv/cache/VSP_shown.vsp"
    try:
        with pytest.raises(CacheOverflow, match=r"^cache volume /srv/cache is full$"):
            for i in range(10):
                c.append_chunk(1, i, b"x" * MiB)
    finally:
        c.close(delete=True)


# -- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123", 123),
        ("0", 0),
        ("64K", 64 * KiB),
        ("64k", 64 * KiB),
        ("10M", 10 * MiB),
        ("2G", 2 << 30),
        ("1T", 1 << 40),
        ("4KiB", 4 * KiB),
        ("3MiB", 3 * MiB),
        ("1GiB", 1 << 30),
        ("2 MB", 2 * MiB),
        ("512B", 512),
        ("1.5G", 3 << 29),
        (" 7M ", 7 * MiB),
        ("20%", 200),
        ("100%", 1000),
        ("2.5%", 25),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text, 1000) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "-5", "5X", "1.2.3", "M", "5 %%", "1e6", "0x10", "10 M B", "101%"]
)
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_size(text, 1000)
    assert repr(text) in str(exc.value) and "\n" not in str(exc.value)


def test_parse_size_percent_needs_a_volume() -> None:
    with pytest.raises(UsageError, match="'20%'"):
        parse_size("20%", None)
    assert parse_size("20M", None) == 20 * MiB
