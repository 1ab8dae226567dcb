"""The on-disk format of a cache file: every constant and every pure codec.

All names and numbers that end up on disk live here and nowhere else, so the
format can be reviewed (and versioned) in one place; docs/cache-file.md is its
prose description and must change together with this module.

Decoders are strict and total: whatever bytes they are given, they either
return a value that the matching encoder would produce again, or raise
:class:`vspfs.errors.CacheFileError`. A cache file is read back after crashes
and may be foreign or damaged, so a decoder that raised ``IndexError`` or
``struct.error`` would turn a bad file into a crash of the daemon or of
``vspfs cleanup``. Encoders raise ``ValueError`` for values the format cannot
hold: that is a bug in the caller, not a property of a file.

Byte order is little-endian everywhere.
"""

from __future__ import annotations

import re
import stat as statmod
import struct
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from vspfs.attrs import Attr
from vspfs.errors import CacheFileError

Buffer = bytes | bytearray | memoryview

# -- names -----------------------------------------------------------------------

CACHE_FILE_PREFIX = "VSP_"
CACHE_FILE_SUFFIX = ".vsp"

#: the hidden directory at the root of a snapshotted volume that keeps unlinked
#: inodes alive for their snapshots (vspfs.retained); named here so that every
#: name vspfs puts on a disk is defined in one module
RETAINED_DIR_NAME = ".vsp-retained"

#: snapshot ids become file names, so they are limited to characters that are
#: safe in a file name on every platform and cannot climb out of a directory
_SNAPSHOT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: Windows and macOS volumes are normally case-insensitive: there "vsp_x.VSP" is
#: the same file as "VSP_x.vsp" and must be protected and found like it
_CASE_INSENSITIVE_NAMES = sys.platform in ("win32", "darwin")

# -- file header -----------------------------------------------------------------

MAGIC = b"VSPCACHE"
#: version 2 added the record flag RECORD_FLAG_NO_CRC (a version-1 reader refuses
#: any record flag, so it could not read what this version writes)
FORMAT_VERSION = 2
#: versions this code reads: a version-1 file is a version-2 file whose records
#: carry no flags, so stale files left by an older daemon can still be judged
READABLE_VERSIONS = (1, 2)
HEADER_SIZE = 4096
DEFAULT_CHUNK_SIZE = 65536
#: a chunk is one record's payload, whose length is a u32; 1 GiB keeps a wide margin
MAX_CHUNK_SIZE = 1 << 30

SNAPSHOT_ID_MAX = 64
VOLUME_ID_MAX = 64
VOLUME_PATH_MAX = 1024
REASON_MAX = 256

#: header state flags
FLAG_ACTIVE = 0x1  # an owner is (or was, if the file is stale) appending
FLAG_INVALID = 0x2  # the snapshot cannot be read exactly any more; see the reason
FLAG_CLOSED = 0x4  # the owner closed the file without deleting it
_KNOWN_FLAGS = FLAG_ACTIVE | FLAG_INVALID | FLAG_CLOSED

# magic, version, header size, chunk size, flags, created_ns,
# lengths of: snapshot id, volume id, volume path, invalid reason
_HEADER_FIXED = struct.Struct("<8sIIIIqHHHH")
_HEADER_FIELDS = struct.Struct(
    f"<{_HEADER_FIXED.size}s{SNAPSHOT_ID_MAX}s{VOLUME_ID_MAX}s{VOLUME_PATH_MAX}s{REASON_MAX}s"
)
#: offset of the header crc32; the crc covers the whole HEADER_SIZE block with
#: these four bytes taken as zero, so a flipped bit anywhere is noticed
HEADER_CRC_OFFSET = _HEADER_FIELDS.size
_U32 = struct.Struct("<I")
assert HEADER_CRC_OFFSET + 4 <= HEADER_SIZE

# -- records ---------------------------------------------------------------------

RECORD_MAGIC = b"VSPR"
RECORD_CHUNK = 1  # arg: chunk number; payload: the chunk's original bytes
RECORD_META = 2  # arg: 0; payload: encode_meta()
RECORD_LISTING = 3  # arg: 0; payload: encode_listing()
RECORD_TYPES = (RECORD_CHUNK, RECORD_META, RECORD_LISTING)

#: record flag (format version 2): the payload crc field is zero and means
#: nothing. Only CHUNK records use it: a chunk's payload crc cost as much as
#: the copy itself on the first write and was never checked where chunks are
#: read (a snapshot read is a plain pread of the data); the record header
#: keeps its own crc, and META and LISTING payloads keep theirs.
RECORD_FLAG_NO_CRC = 0x01

# magic, type, flags, reserved, ino, arg, payload length, payload crc32
_RECORD_BODY = struct.Struct("<4sBBHQQII")
#: a record header is its body followed by the crc32 of the body, so that a
#: damaged ino or length is caught before it misleads a reader
RECORD_HEADER_SIZE = _RECORD_BODY.size + 4
MAX_PAYLOAD = 0xFFFFFFFF

# -- payloads --------------------------------------------------------------------

# mode, uid, gid, blksize, ino, nlink, rdev, size, blocks,
# atime sec/nsec, mtime sec/nsec, ctime sec/nsec
_META_FIXED = struct.Struct("<IIIIQQQQQqIqIqI")
_XATTR_HEAD = struct.Struct("<BI")  # name length, value length
_LISTING_ENTRY = struct.Struct("<BHQ")  # name length, S_IFMT bits, ino
_NAME_MAX = 255
_NS = 1_000_000_000
_FORMAT_BITS = statmod.S_IFMT(0xFFFFFFFF)


# -- names -----------------------------------------------------------------------


def validate_snapshot_id(snapshot_id: str) -> None:
    """Refuse ids that would not make a safe, bounded file name."""
    if (
        not isinstance(snapshot_id, str)
        or len(snapshot_id.encode("utf-8", "surrogatepass")) > SNAPSHOT_ID_MAX
        or not _SNAPSHOT_ID_RE.fullmatch(snapshot_id)
    ):
        raise ValueError(
            f"bad snapshot id {snapshot_id!r}: use 1 to {SNAPSHOT_ID_MAX} characters "
            "from A-Z a-z 0-9 . _ - (not starting with . _ -)"
        )


def cache_file_name(snapshot_id: str) -> str:
    """The file name of a snapshot's cache file (at the root of its cache volume)."""
    validate_snapshot_id(snapshot_id)
    return f"{CACHE_FILE_PREFIX}{snapshot_id}{CACHE_FILE_SUFFIX}"


def is_cache_file_name(name: str | bytes) -> bool:
    """Whether a directory entry name looks like a cache file (glob ``VSP_*.vsp``).

    Deliberately wider than what :func:`cache_file_name` produces: the rules
    "a volume with a cache file cannot be snapshotted" and "applications may
    not touch cache files" must also hold for a file some other version wrote.
    """
    if isinstance(name, bytes):
        prefix, suffix = CACHE_FILE_PREFIX.encode(), CACHE_FILE_SUFFIX.encode()
    else:
        prefix, suffix = CACHE_FILE_PREFIX, CACHE_FILE_SUFFIX
    if _CASE_INSENSITIVE_NAMES:
        name, prefix, suffix = name.lower(), prefix.lower(), suffix.lower()
    return len(name) >= len(prefix) + len(suffix) and name.startswith(prefix) and name.endswith(suffix)


# -- helpers ---------------------------------------------------------------------


class _Reader:
    """Bounds-checked cursor over a payload: every short read is a CacheFileError."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: Buffer, what: str) -> None:
        self._data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._pos = 0
        self._what = what

    def unpack(self, st: struct.Struct) -> tuple:
        if self._pos + st.size > len(self._data):
            raise CacheFileError(f"{self._what} is truncated at byte {self._pos}")
        values = st.unpack_from(self._data, self._pos)
        self._pos += st.size
        return values

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise CacheFileError(f"{self._what} is truncated at byte {self._pos}")
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def done(self) -> None:
        if self._pos != len(self._data):
            raise CacheFileError(f"{self._what} has {len(self._data) - self._pos} stray bytes at its end")


def _check_uint(value: int, bits: int, what: str) -> None:
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"{what} {value!r} does not fit an unsigned {bits}-bit field")


def _split_ns(ns: int, what: str) -> tuple[int, int]:
    if not isinstance(ns, int):
        raise ValueError(f"{what} {ns!r} is not an integer")
    sec, nsec = divmod(ns, _NS)
    if not -(1 << 63) <= sec < (1 << 63):
        raise ValueError(f"{what} {ns} is out of range")
    return sec, nsec


def _fit_utf8(text: str, limit: int) -> bytes:
    """UTF-8 of ``text`` cut to ``limit`` bytes on a character boundary.

    Used for informational fields (a path, a reason) that may carry surrogate
    escapes from undecodable file names: those are written as backslash
    escapes so that every text field on disk is valid UTF-8.
    """
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CacheFileError(f"{what} is not valid UTF-8") from None


# -- header ----------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The decoded fixed header at offset 0 of a cache file."""

    version: int
    header_size: int
    chunk_size: int
    flags: int
    created_ns: int
    snapshot_id: str
    volume_id: str
    volume_path: str = ""
    invalid_reason: str = ""

    @property
    def active(self) -> bool:
        return bool(self.flags & FLAG_ACTIVE)

    @property
    def invalid(self) -> bool:
        return bool(self.flags & FLAG_INVALID)

    @property
    def closed(self) -> bool:
        return bool(self.flags & FLAG_CLOSED)


def _header_crc(block: Buffer) -> int:
    view = memoryview(block)
    crc = zlib.crc32(view[:HEADER_CRC_OFFSET])
    crc = zlib.crc32(b"\0\0\0\0", crc)
    return zlib.crc32(view[HEADER_CRC_OFFSET + 4 : HEADER_SIZE], crc)


def encode_header(header: Header) -> bytes:
    """The HEADER_SIZE bytes of a header; a long volume path or reason is cut
    (both are informational), an id that does not fit is a ValueError."""
    validate_snapshot_id(header.snapshot_id)
    snap = header.snapshot_id.encode("utf-8")
    try:
        vol = header.volume_id.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):
        vol = b""
    if not vol or len(vol) > VOLUME_ID_MAX or b"\0" in vol:
        raise ValueError(f"bad volume id {header.volume_id!r}: use 1 to {VOLUME_ID_MAX} UTF-8 bytes, no NUL")
    path = _fit_utf8(header.volume_path, VOLUME_PATH_MAX)
    reason = _fit_utf8(header.invalid_reason, REASON_MAX)
    _check_uint(header.chunk_size, 32, "chunk size")
    if not 1 <= header.chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {header.chunk_size} is outside 1..{MAX_CHUNK_SIZE}")
    if header.flags & ~_KNOWN_FLAGS:
        raise ValueError(f"unknown header flags {header.flags:#x}")
    if not -(1 << 63) <= header.created_ns < (1 << 63):
        raise ValueError(f"creation time {header.created_ns} is out of range")
    fixed = _HEADER_FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        HEADER_SIZE,
        header.chunk_size,
        header.flags,
        header.created_ns,
        len(snap),
        len(vol),
        len(path),
        len(reason),
    )
    block = bytearray(HEADER_SIZE)
    _HEADER_FIELDS.pack_into(block, 0, fixed, snap, vol, path, reason)
    _U32.pack_into(block, HEADER_CRC_OFFSET, _header_crc(block))
    return bytes(block)


def decode_header(data: Buffer, source: str = "cache file") -> Header:
    """Decode and fully validate a header block (at least HEADER_SIZE bytes);
    ``source`` (a path, usually) starts every error message.

    The checks run from the most telling to the most specific, so that a
    foreign file is reported as "not a vspfs cache file" rather than as a bad
    crc, and a newer file as "unsupported version" rather than as corrupt.
    """
    data = bytes(data[:HEADER_SIZE])
    if not data:
        raise CacheFileError(
            f"{source} is empty (0 bytes): not a vspfs cache file, or one whose creation was cut short"
        )
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise CacheFileError(f"{source} is not a vspfs cache file (wrong magic)")
    if len(data) < HEADER_SIZE:
        raise CacheFileError(
            f"{source} is truncated: {len(data)} bytes, a cache file header is {HEADER_SIZE}"
        )
    fixed, snap, vol, path, reason = _HEADER_FIELDS.unpack_from(data)
    (_magic, version, header_size, chunk_size, flags, created_ns, n_snap, n_vol, n_path, n_reason) = (
        _HEADER_FIXED.unpack(fixed)
    )
    if version not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise CacheFileError(
            f"{source} has format version {version}; this vspfs reads versions {readable} "
            "(use the vspfs that wrote it)"
        )
    (stored_crc,) = _U32.unpack_from(data, HEADER_CRC_OFFSET)
    if stored_crc != _header_crc(data):
        raise CacheFileError(f"{source} has a damaged header (crc mismatch)")
    if header_size != HEADER_SIZE:
        raise CacheFileError(f"{source} has header size {header_size}, expected {HEADER_SIZE}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise CacheFileError(f"{source} has an impossible chunk size {chunk_size}")
    if flags & ~_KNOWN_FLAGS:
        raise CacheFileError(f"{source} has unknown state flags {flags:#x}")
    if n_snap > SNAPSHOT_ID_MAX or n_vol > VOLUME_ID_MAX or n_path > VOLUME_PATH_MAX or n_reason > REASON_MAX:
        raise CacheFileError(f"{source} has a header text field longer than its slot")
    snapshot_id = _text(snap[:n_snap], f"{source}: header snapshot id")
    if not _SNAPSHOT_ID_RE.fullmatch(snapshot_id):
        raise CacheFileError(f"{source} has a bad snapshot id {snapshot_id!r}")
    volume_id = _text(vol[:n_vol], f"{source}: header volume id")
    if not volume_id or "\0" in volume_id:
        raise CacheFileError(f"{source} has a bad volume id {volume_id!r}")
    return Header(
        version=version,
        header_size=header_size,
        chunk_size=chunk_size,
        flags=flags,
        created_ns=created_ns,
        snapshot_id=snapshot_id,
        volume_id=volume_id,
        volume_path=_text(path[:n_path], f"{source}: header volume path"),
        invalid_reason=_text(reason[:n_reason], f"{source}: header invalid reason"),
    )


# -- record headers --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordHeader:
    type: int
    ino: int
    arg: int
    length: int
    crc: int
    flags: int = 0

    @property
    def has_crc(self) -> bool:
        """Whether ``crc`` is the payload's crc (False for RECORD_FLAG_NO_CRC)."""
        return not self.flags & RECORD_FLAG_NO_CRC


def encode_record_header(rtype: int, ino: int, arg: int, payload: Buffer, flags: int = 0) -> bytes:
    """The RECORD_HEADER_SIZE bytes that describe (and checksum) ``payload``;
    with RECORD_FLAG_NO_CRC (CHUNK records only) the payload is not read, only
    its length is used."""
    if rtype not in RECORD_TYPES:
        raise ValueError(f"unknown record type {rtype!r}")
    if flags & ~RECORD_FLAG_NO_CRC or (flags and rtype != RECORD_CHUNK):
        raise ValueError(f"record flags {flags:#x} are not allowed on a record of type {rtype}")
    _check_uint(ino, 64, "inode number")
    _check_uint(arg, 64, "record argument")
    _check_uint(len(payload), 32, "payload length")
    crc = 0 if flags else zlib.crc32(payload)
    body = _RECORD_BODY.pack(RECORD_MAGIC, rtype, flags, 0, ino, arg, len(payload), crc)
    return body + _U32.pack(zlib.crc32(body))


def encode_chunk_header(ino: int, chunk_no: int, length: int) -> bytes:
    """The header of a CHUNK record without a payload crc (RECORD_FLAG_NO_CRC),
    from the payload's length alone: what encode_record_header gives, with
    one struct call instead of a range check per field (it runs for every
    chunk preserved; struct refuses what does not fit)."""
    try:
        body = _RECORD_BODY.pack(RECORD_MAGIC, RECORD_CHUNK, RECORD_FLAG_NO_CRC, 0, ino, chunk_no, length, 0)
    except struct.error:
        raise ValueError(
            f"chunk record ino={ino!r} chunk={chunk_no!r} length={length!r} does not fit its fields"
        ) from None
    return body + _U32.pack(zlib.crc32(body))


def decode_record_header(data: Buffer, chunk_size: int, version: int = FORMAT_VERSION) -> RecordHeader:
    """Decode and validate a record header of a file of format ``version``
    (the payload crc is the caller's to check, when ``has_crc``)."""
    if len(data) < RECORD_HEADER_SIZE:
        raise CacheFileError(f"record header is truncated ({len(data)} of {RECORD_HEADER_SIZE} bytes)")
    magic, rtype, flags, reserved, ino, arg, length, crc = _RECORD_BODY.unpack_from(data)
    if magic != RECORD_MAGIC:
        raise CacheFileError("no record here (wrong record magic)")
    (stored,) = _U32.unpack_from(data, _RECORD_BODY.size)
    if stored != zlib.crc32(memoryview(data)[: _RECORD_BODY.size]):
        raise CacheFileError("record header is damaged (crc mismatch)")
    if rtype not in RECORD_TYPES:
        raise CacheFileError(f"unknown record type {rtype}")
    allowed = RECORD_FLAG_NO_CRC if version >= 2 and rtype == RECORD_CHUNK else 0
    if flags & ~allowed or reserved:
        raise CacheFileError(f"record has reserved bits set ({flags:#x}, {reserved:#x})")
    if flags & RECORD_FLAG_NO_CRC and crc:
        raise CacheFileError(f"record without a payload crc has a non-zero crc field {crc:#x}")
    if rtype == RECORD_CHUNK:
        if length > chunk_size:
            raise CacheFileError(f"chunk record of {length} bytes exceeds the chunk size {chunk_size}")
    elif arg:
        raise CacheFileError(f"record of type {rtype} has a non-zero argument {arg}")
    return RecordHeader(rtype, ino, arg, length, crc, flags)


def payload_crc(payload: Buffer, start: int = 0) -> int:
    """crc32 of a payload, continuable over pieces (``start`` = crc so far)."""
    return zlib.crc32(payload, start)


# -- META payload ----------------------------------------------------------------


def encode_meta(attr: Attr, xattrs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Preserved attributes and extended attributes of one inode."""
    for name, bits in (("mode", 32), ("uid", 32), ("gid", 32), ("blksize", 32)):
        _check_uint(getattr(attr, name), bits, name)
    for name in ("ino", "nlink", "rdev", "size", "blocks"):
        _check_uint(getattr(attr, name), 64, name)
    parts = [
        _META_FIXED.pack(
            attr.mode,
            attr.uid,
            attr.gid,
            attr.blksize,
            attr.ino,
            attr.nlink,
            attr.rdev,
            attr.size,
            attr.blocks,
            *_split_ns(attr.atime_ns, "atime"),
            *_split_ns(attr.mtime_ns, "mtime"),
            *_split_ns(attr.ctime_ns, "ctime"),
        )
    ]
    pairs = list(xattrs)
    _check_uint(len(pairs), 32, "xattr count")
    parts.append(_U32.pack(len(pairs)))
    seen: set[bytes] = set()
    for name, value in pairs:
        name, value = bytes(name), bytes(value)
        if not 1 <= len(name) <= _NAME_MAX or b"\0" in name:
            raise ValueError(f"bad xattr name {name!r}: 1 to {_NAME_MAX} bytes, no NUL")
        if name in seen:
            raise ValueError(f"xattr {name!r} is listed twice")
        seen.add(name)
        _check_uint(len(value), 32, "xattr value length")
        parts += (_XATTR_HEAD.pack(len(name), len(value)), name, value)
    return b"".join(parts)


def decode_meta(payload: Buffer) -> tuple[Attr, list[tuple[bytes, bytes]]]:
    r = _Reader(payload, "metadata record")
    (mode, uid, gid, blksize, ino, nlink, rdev, size, blocks, a_s, a_n, m_s, m_n, c_s, c_n) = r.unpack(
        _META_FIXED
    )
    if a_n >= _NS or m_n >= _NS or c_n >= _NS:
        raise CacheFileError("metadata record has a nanosecond field of a second or more")
    attr = Attr(
        mode=mode,
        ino=ino,
        nlink=nlink,
        uid=uid,
        gid=gid,
        rdev=rdev,
        size=size,
        blocks=blocks,
        blksize=blksize,
        atime_ns=a_s * _NS + a_n,
        mtime_ns=m_s * _NS + m_n,
        ctime_ns=c_s * _NS + c_n,
    )
    (count,) = r.unpack(_U32)
    xattrs: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for _ in range(count):
        n_name, n_value = r.unpack(_XATTR_HEAD)
        name = r.take(n_name)
        if not name or b"\0" in name:
            raise CacheFileError(f"metadata record has a bad xattr name {name!r}")
        if name in seen:
            raise CacheFileError(f"metadata record lists xattr {name!r} twice")
        seen.add(name)
        xattrs.append((name, r.take(n_value)))
    r.done()
    return attr, xattrs


# -- LISTING payload -------------------------------------------------------------


def _bad_entry_name(name: bytes) -> bool:
    return not name or b"/" in name or b"\0" in name or name in (b".", b"..")


def encode_listing(entries: Iterable[tuple[bytes, int, int]]) -> bytes:
    """A directory's entries at snapshot time: (name, ino, S_IFMT bits), in order."""
    rows = list(entries)
    _check_uint(len(rows), 32, "entry count")
    parts = [_U32.pack(len(rows))]
    seen: set[bytes] = set()
    for name, ino, ftype in rows:
        name = bytes(name)
        if len(name) > _NAME_MAX or _bad_entry_name(name):
            raise ValueError(f"bad directory entry name {name!r}")
        if name in seen:
            raise ValueError(f"directory entry {name!r} is listed twice")
        seen.add(name)
        _check_uint(ino, 64, "inode number")
        if not isinstance(ftype, int) or not ftype or ftype & ~_FORMAT_BITS:
            raise ValueError(f"file type {ftype!r} of {name!r} is not S_IFMT bits")
        parts += (_LISTING_ENTRY.pack(len(name), ftype, ino), name)
    return b"".join(parts)


def decode_listing(payload: Buffer) -> list[tuple[bytes, int, int]]:
    r = _Reader(payload, "listing record")
    (count,) = r.unpack(_U32)
    out: list[tuple[bytes, int, int]] = []
    seen: set[bytes] = set()
    for _ in range(count):
        n_name, ftype, ino = r.unpack(_LISTING_ENTRY)
        name = r.take(n_name)
        if _bad_entry_name(name):
            raise CacheFileError(f"listing record has a bad entry name {name!r}")
        if name in seen:
            raise CacheFileError(f"listing record lists {name!r} twice")
        if not ftype or ftype & ~_FORMAT_BITS:
            raise CacheFileError(f"listing record has a bad file type {ftype} for {name!r}")
        seen.add(name)
        out.append((name, ino, ftype))
    r.done()
    return out
