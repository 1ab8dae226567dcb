"""Fuzz the cache file readers: whatever the bytes, only CacheFileError escapes.

A cache file is read back after crashes, by `vspfs cleanup` and at daemon
start, and may be foreign or damaged; any other exception there (IndexError,
struct.error, UnicodeDecodeError, ...) would be a crash of the reader instead
of a clear message. Inputs are both arbitrary bytes and mutations of valid
encodings, since random bytes alone rarely get past the first magic check.
"""

from __future__ import annotations

import os
import stat
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from vspfs import cachefile
from vspfs.attrs import Attr
from vspfs.cachefile import CacheFile, iter_records, read_header
from vspfs.cacheformat import (
    HEADER_SIZE,
    RECORD_CHUNK,
    RECORD_HEADER_SIZE,
    decode_header,
    decode_listing,
    decode_meta,
    encode_listing,
    encode_meta,
)
from vspfs.errors import CacheFileError

ATTR = Attr(
    mode=stat.S_IFREG | 0o640,
    ino=77,
    nlink=2,
    uid=1000,
    gid=100,
    rdev=0,
    size=123456,
    blocks=248,
    blksize=4096,
    atime_ns=1_700_000_000_000_000_001,
    mtime_ns=-3,
    ctime_ns=1_700_000_000_999_999_999,
)
META = encode_meta(ATTR, [(b"user.a", b"1"), (b"user.\xff", b"x" * 40), (b"trusted.t", b"")])
LISTING = encode_listing(
    [(b"a", 1, stat.S_IFREG), (b"\xfe\xff", 2, stat.S_IFDIR), (b"l" * 40, 3, stat.S_IFLNK)]
)


def _valid_file_bytes() -> bytes:
    """A small but complete cache file: header, every record type, no preallocation."""
    with tempfile.TemporaryDirectory() as d:
        c = CacheFile.create(d, "fuzz-1", "vol1", volume_path=d, chunk_size=64, initial_size=0, grow_step=1)
        c.append_meta(77, META)
        c.append_chunk(77, 0, bytes(range(64)))
        c.append_listing(1, LISTING)
        c.append_chunk(77, 1, b"tail")
        c.close(delete=False)
        with open(c.path, "rb") as f:
            return f.read()


VALID_FILE = _valid_file_bytes()

# an edit: (position as a fraction of the length, byte to put there)
_edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6)


@st.composite
def mutated(draw: st.DrawFn, base: bytes, *, keep_prefix: int = 0) -> bytes:
    """``base`` with a few bytes replaced, maybe cut short, maybe with junk appended.

    ``keep_prefix`` leaves the first bytes intact (the file header) so that the
    mutations reach the record scanner instead of stopping at the header crc.
    """
    data = bytearray(base)
    span = len(data) - keep_prefix
    for where, value in draw(_edits):
        data[keep_prefix + int(where * span)] = value
    if draw(st.booleans()):
        data = data[: keep_prefix + draw(st.integers(0, span))]
    data += draw(st.binary(max_size=64))
    return bytes(data)


def _only_cache_file_errors(fn, data: bytes) -> object:  # type: ignore[no-untyped-def]
    try:
        return fn(data)
    except CacheFileError:
        return None


# -- payload codecs --------------------------------------------------------------------


@settings(max_examples=400)
@given(st.binary(max_size=400) | mutated(META))
def test_decode_meta_fuzz(data: bytes) -> None:
    got = _only_cache_file_errors(decode_meta, data)
    if got is not None:
        attr, xattrs = got
        assert encode_meta(attr, xattrs) == data, "a decoded payload must be the canonical encoding"


@settings(max_examples=400)
@given(st.binary(max_size=400) | mutated(LISTING))
def test_decode_listing_fuzz(data: bytes) -> None:
    got = _only_cache_file_errors(decode_listing, data)
    if got is not None:
        assert encode_listing(got) == data, "a decoded payload must be the canonical encoding"


@settings(max_examples=300)
@given(st.binary(max_size=HEADER_SIZE + 10) | mutated(VALID_FILE[:HEADER_SIZE]))
def test_decode_header_fuzz(data: bytes) -> None:
    _only_cache_file_errors(decode_header, data)


# -- files -----------------------------------------------------------------------------


def _read_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "VSP_fuzz.vsp")
        with open(path, "wb") as f:
            f.write(data)
        try:
            header = read_header(path)
        except CacheFileError:
            header = None
        try:
            records = list(iter_records(path))
        except CacheFileError:
            return
        assert header is not None, "iter_records read a file whose header is refused"
        end = HEADER_SIZE
        for r in records:
            assert r.offset == end, "records must be contiguous"
            end = r.data_offset + r.payload_len
            assert end <= len(data)


def test_valid_file_reads_back() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "VSP_fuzz.vsp")
        with open(path, "wb") as f:
            f.write(VALID_FILE)
        assert read_header(path).snapshot_id == "fuzz-1"
        recs = list(iter_records(path))
        assert [r.payload_len for r in recs] == [len(META), 64, len(LISTING), 4]
        assert recs[-1].data_offset + 4 == len(VALID_FILE)


@settings(max_examples=150)
@given(st.binary(max_size=HEADER_SIZE + 200))
def test_arbitrary_files(data: bytes) -> None:
    _read_file(data)


@settings(max_examples=300)
@given(mutated(VALID_FILE, keep_prefix=HEADER_SIZE) | mutated(VALID_FILE))
def test_mutated_files(data: bytes) -> None:
    _read_file(data)


@settings(max_examples=200)
@given(
    cut=st.integers(HEADER_SIZE, len(VALID_FILE)),
    junk=st.sampled_from([b"", bytes(RECORD_HEADER_SIZE), bytes(4096), b"VSPR" * 20]),
)
def test_cut_files_read_a_prefix(cut: int, junk: bytes) -> None:
    """Cutting a file anywhere never makes it an error, at most shorter.

    This cuts in file order, which is not the order of the writes (a payload
    is written before its header), so it is more than a crash can do: a
    CHUNK record, whose payload has no crc, may then read as whole with junk
    in its payload. What a crash can do is the next test."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "VSP_cut.vsp")
        with open(path, "wb") as f:
            f.write(VALID_FILE[:cut] + junk)
        recs = list(iter_records(path))
        assert all(r.data_offset <= cut for r in recs)
        assert all(r.data_offset + r.payload_len <= cut for r in recs if r.type != RECORD_CHUNK)
        full = list(iter_records_of(VALID_FILE))
        assert recs == full[: len(recs)]


def _write_log() -> tuple[list[tuple[int, bytes]], int]:
    """The writes (offset, bytes), in order, that make a small cache file with
    single records and a batch of chunks, and the file's final size."""
    log: list[tuple[int, bytes]] = []
    real = cachefile.pio  # the cache file's OS calls all go through vspfs.portable_io

    class Recording:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        @staticmethod
        def pwrite(fd: int, data: bytes, offset: int) -> int:
            log.append((offset, bytes(data)))
            return real.pwrite(fd, data, offset)

        @staticmethod
        def pwritev(fd: int, buffers: list[bytes], offset: int) -> int:
            log.append((offset, b"".join(bytes(b) for b in buffers)))
            return real.pwritev(fd, buffers, offset)

    cachefile.pio = Recording()  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as d:
            # chunks of 5000 bytes: records straddle pages, where writes can be cut
            c = CacheFile.create(d, "crash", "vol1", chunk_size=5000, initial_size=0, grow_step=1)
            c.append_meta(77, META)
            c.append_chunk(77, 0, b"0" * 5000)
            c.append_chunks(78, [(5, b"a" * 5000), (6, b"b" * 5000), (7, b"c" * 10)])
            c.append_listing(1, LISTING)
            c.append_chunks(79, [(0, b"d" * 5000), (1, b"e" * 3000)])
            c.append_chunks(80, [(n, bytes([n]) * 4000) for n in range(4)])
            size = c.used_bytes
            c.close(delete=True)
    finally:
        cachefile.pio = real
    assert log, "no write recorded: cachefile no longer writes through cachefile.pio"
    return log, size


CRASH_LOG, CRASH_SIZE = _write_log()
#: every write cut into the pieces it may be cut into: the kernel copies a write
#: into the page cache page by page and SIGKILL can stop it between two pages
CRASH_PIECES = [
    (at, data[at - offset : min(len(data), (at // 4096 + 1) * 4096 - offset)])
    for offset, data in CRASH_LOG
    for at in [offset, *range((offset // 4096 + 1) * 4096, offset + len(data), 4096)]
]


@settings(max_examples=300)
@given(st.integers(0, len(CRASH_PIECES)))
def test_a_crash_leaves_whole_records_or_nothing(done: int) -> None:
    """A process that dies during any write leaves, after its last complete
    record, nothing that reads as a record: the reader returns exactly the
    records whose every byte was written, stopping at the first that was not."""
    image = bytearray(CRASH_SIZE)
    for at, piece in CRASH_PIECES[:done]:
        image[at : at + len(piece)] = piece
    final = bytearray(CRASH_SIZE)
    for at, piece in CRASH_PIECES:
        final[at : at + len(piece)] = piece
    if done == 0 or image[:HEADER_SIZE] != final[:HEADER_SIZE]:
        return  # the file header itself is not written yet
    full = iter_records_of(bytes(final))
    whole = 0
    for r in full:
        if image[r.offset : r.data_offset + r.payload_len] != final[r.offset : r.data_offset + r.payload_len]:
            break
        whole += 1
    assert iter_records_of(bytes(image)) == full[:whole]


def iter_records_of(data: bytes) -> list:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "VSP_whole.vsp")
        with open(path, "wb") as f:
            f.write(data)
        return list(iter_records(path))
