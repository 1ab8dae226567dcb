"""Windows platform details, in pure Python, testable on every platform.

The WinFsp adapter (``mount/winfsp.py``) and a Windows port of the core need
the same handful of facts about Windows: what a drive letter is and which are
free, how NT names differ from the core's ``/``-separated volume paths, how
NTFS compares and orders names, what a FILETIME is, which file attributes a
POSIX mode becomes, how a file is identified, and what a security descriptor
looks like as bytes. They live here, apart from any binding, so that every
one of them is unit-tested on Linux (``tests/test_winplatform.py``): Windows
cannot run on the machines that develop vspfs, so this code must be right by
construction. Nothing here imports winfspy, ctypes.windll or any core module
with Linux-only dependencies; the few calls that only exist on Windows are
made lazily and are marked as such.

Sections:

* paths: drive letters, UNC and ``\\\\?\\`` prefixes, backslashes, reserved
  device names, the mapping of characters Windows forbids in names;
* names: NTFS-like case-insensitive comparison, ordering and lookup;
* drive letters: validation, "taken" letters (injectable), the first free
  letter from V: down, flushing a live drive's cache (kernel32 injectable);
* time and attributes: FILETIME <-> ns, FILE_ATTRIBUTE_* from ``st_mode``,
  and the ``system.ntfs_attrib``/``system.ntfs_crtime`` values that carry a
  Windows file's own attributes and creation time through the core;
* identity: volume serial numbers and 64-bit file index numbers;
* security descriptors: a self-relative binary codec, an SDDL subset, the
  default descriptor derived from mode bits, SetSecurity's merge;
* reparse points: the symlink REPARSE_DATA_BUFFER and link resolution;
* control channel: the named pipe name and its owner-only descriptor;
* locking: an exclusive lock on an open file (cache files).

Every value of a Windows constant below was checked against the Windows SDK
headers as published (winnt.h, ntifs.h, ntstatus.h) and, where WinFsp or
winfspy repeat it, against their sources; docs/windows.md says which.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import ntpath
import os
import re
import stat as statmod
import struct
import sys
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from vspfs import portable_io
from vspfs.errors import UsageError

_log = logging.getLogger(__name__)

# =============================================================================
# paths
# =============================================================================

#: device names Win32 reserves in every directory, with or without extension
#: ("CON", "con.txt", "LPT1.log"); CONIN$/CONOUT$ are reserved too. Windows 11
#: also treats COM/LPT with superscript digits as devices (¹²³).
RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in "123456789\u00b9\u00b2\u00b3"}
    | {f"LPT{i}" for i in "123456789\u00b9\u00b2\u00b3"}
)

#: characters NTFS accepts in no file name (plus the controls 1-31; NUL ends a name)
INVALID_NAME_CHARS = frozenset('<>:"/\\|?*') | frozenset(chr(c) for c in range(1, 32))

#: where a forbidden character is shown instead (Cygwin, SFU and WinFsp-FUSE's
#: FspPosixEncodeWindowsPath use the same private-use range: U+F000 + code)
ENCODED_CHAR_BASE = 0xF000

#: longest name component NTFS takes, in UTF-16 code units
MAX_COMPONENT_LENGTH = 255

_DRIVE_RE = re.compile(r"^([A-Za-z]):?[\\/]?$")


def is_reserved_name(name: str) -> bool:
    """True when Win32 turns ``name`` into a device (CON, nul.txt, "COM1 .log" ...).

    Why it matters: such a name exists fine on a Linux volume (and on NTFS via
    ``\\\\?\\`` paths), but ``CreateFile("V:\\\\dir\\\\con")`` opens the console,
    so a backup program walking a virtual drive cannot read it. Win32 ignores
    what follows the first dot and trailing spaces before it.
    """
    base = name.split(".", 1)[0].rstrip(" ")
    return base.upper() in RESERVED_NAMES


def windows_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as-is in a Win32 path, or None when it can.

    Reported, never fixed silently: the adapter encodes forbidden characters
    (:func:`encode_name`), but reserved device names and trailing dots or
    spaces are legal on NTFS and only trouble Win32 callers.
    """
    if not name:
        return "empty name"
    if name in (".", ".."):
        return "dot names are not entries"
    if any(c in INVALID_NAME_CHARS for c in name):
        return "contains a character Windows forbids in names"
    if is_reserved_name(name):
        return "is a reserved device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    if name[-1] in ". ":
        return "ends with a dot or a space (Win32 strips them)"
    if utf16_len(name) > MAX_COMPONENT_LENGTH:
        return f"is longer than {MAX_COMPONENT_LENGTH} UTF-16 code units"
    return None


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (what Windows counts and limits)."""
    return sum(2 if ord(c) > 0xFFFF else 1 for c in text)


def encode_name(core_name: str) -> str:
    """A core name as Windows shows it: forbidden characters moved to U+F0xx.

    A Linux name may contain ``:``, ``\\``, ``*``, ``?`` ... which no Windows
    name can; the private-use mapping keeps every name listable and openable
    and round-trips through :func:`decode_name`. Names that already contain
    U+F001..U+F07F are shown unchanged (and decode to the ASCII character:
    documented collision, as in Cygwin), except U+F02F, which never decodes
    to "/".
    """
    if not any(c in INVALID_NAME_CHARS for c in core_name):
        return core_name
    return "".join(chr(ENCODED_CHAR_BASE + ord(c)) if c in INVALID_NAME_CHARS else c for c in core_name)


#: characters :func:`decode_name` never produces: no core name holds them, and
#: a "/" decoded from U+F02F would split a name into path components
#: ("..\uF02F..\uF02Fetc" must not become "../../etc")
_NEVER_DECODED = frozenset("/")


def decode_name(windows_name: str) -> str:
    """The core name of a name given by Windows (inverse of :func:`encode_name`)."""
    out = []
    for c in windows_name:
        code = ord(c) - ENCODED_CHAR_BASE
        ok = 0 < code < 0x80 and chr(code) in INVALID_NAME_CHARS and chr(code) not in _NEVER_DECODED
        out.append(chr(code) if ok else c)
    return "".join(out)


def is_utf16_encodable(name: str) -> bool:
    """False for names holding lone surrogates (undecodable bytes on Linux).

    A Linux name that is not UTF-8 reaches Python as ``surrogateescape``
    text; winfspy encodes names with a strict UTF-16 codec, which would fail
    the whole directory listing, so such names are left out (and logged).
    """
    try:
        name.encode("utf-16-le")
    except UnicodeEncodeError:
        return False
    return True


def to_core_path(windows_path: str) -> str:
    """A WinFsp file name (``\\\\dir\\\\file``) as a core volume path (``/dir/file``).

    WinFsp hands file names relative to the volume root, starting with a
    backslash. Each component is decoded (:func:`decode_name`). Named streams
    (``file:stream``) are refused with ValueError: the adapters declare no
    named-stream support, so WinFsp never sends one.
    """
    parts = [p for p in windows_path.replace("/", "\\").split("\\") if p]
    if any(":" in p for p in parts):
        raise ValueError(f"named streams are not supported: {windows_path!r}")
    if any(p in (".", "..") for p in parts):
        # WinFsp's FSD refuses them already; a core path must never climb
        raise ValueError(f"dot components in a file name: {windows_path!r}")
    return "/" + "/".join(decode_name(p) for p in parts)


def to_windows_path(core_path: str) -> str:
    """A core volume path as a WinFsp file name (inverse of :func:`to_core_path`)."""
    parts = [p for p in core_path.split("/") if p]
    return "\\" + "\\".join(encode_name(p) for p in parts)


@dataclass(frozen=True)
class WindowsPath:
    """A Windows path taken apart: what kind, which drive or share, the rest.

    ``kind`` is "drive" (``D:\\\\x``), "drive-relative" (``D:x``, relative to
    that drive's current directory: refused by :func:`parse_windows_path`),
    "unc" (``\\\\\\\\server\\\\share\\\\x``), "device" (``\\\\\\\\.\\\\pipe\\\\x``),
    "rooted" (``\\\\x``: root of the current drive) or "relative".
    """

    kind: str
    anchor: str  # "D:", "\\\\server\\share", "\\\\.\\pipe" ...
    parts: tuple[str, ...]

    def __str__(self) -> str:
        rest = "\\".join(self.parts)
        if self.kind == "drive":
            return f"{self.anchor}\\{rest}"
        if self.kind in ("unc", "device"):
            return f"{self.anchor}\\{rest}" if rest else self.anchor
        if self.kind == "rooted":
            return f"\\{rest}"
        return rest


def parse_windows_path(text: str) -> WindowsPath:
    """Take a Windows path apart without touching any file system.

    Accepts forward slashes, repeated separators, the ``\\\\\\\\?\\\\`` long-path
    prefix (``\\\\\\\\?\\\\D:\\\\x``, ``\\\\\\\\?\\\\UNC\\\\server\\\\share\\\\x``) and the
    ``\\\\??\\\\`` NT prefix. ``.`` components vanish and ``..`` goes up without
    passing the anchor, as Win32 normalises. Raises UsageError for what is
    not a usable path (empty, ``D:x``, a UNC path without a share).
    """
    if not text:
        raise UsageError("empty path: give a path such as D:\\data")
    s = text.replace("/", "\\")
    for prefix in ("\\\\?\\", "\\??\\"):
        if s.startswith(prefix):
            s = s[len(prefix) :]
            if s[:4].upper() == "UNC\\":
                s = "\\\\" + s[4:]
            elif not ntpath.splitdrive(s)[0]:
                # \\?\Volume{guid}\x and other device names
                s = "\\\\?\\" + s
            break
    if s.startswith("\\\\.\\") or s.startswith("\\\\?\\"):
        head, _, rest = s[4:].partition("\\")
        return WindowsPath("device", s[:4] + head, _normal_parts(rest))
    drive, rest = ntpath.splitdrive(s)
    if drive.startswith("\\\\"):
        pieces = [p for p in drive.split("\\") if p]
        if len(pieces) < 2:
            raise UsageError(f"bad UNC path {text!r}: give \\\\server\\share\\path")
        return WindowsPath("unc", "\\\\" + "\\".join(pieces), _normal_parts(rest))
    if drive:
        if not rest.startswith("\\"):
            raise UsageError(
                f"{text!r} is relative to the current directory of drive {drive.upper()}: "
                f"give a full path such as {drive.upper()}\\{rest}"
            )
        return WindowsPath("drive", drive.upper(), _normal_parts(rest))
    if s.startswith("\\"):
        return WindowsPath("rooted", "", _normal_parts(s))
    return WindowsPath("relative", "", _normal_parts(s, keep_dotdot=True))


def _normal_parts(rest: str, *, keep_dotdot: bool = False) -> tuple[str, ...]:
    out: list[str] = []
    for p in rest.split("\\"):
        if p in ("", "."):
            continue
        if p == "..":
            if out and out[-1] != "..":
                out.pop()
            elif keep_dotdot:
                out.append(p)
            continue
        out.append(p)
    return tuple(out)


def check_backing_path(text: str) -> WindowsPath:
    """Validate the backing directory of a live view (``D:\\\\data``, a UNC path).

    Refused with UsageError: relative paths, and components Win32 cannot
    open (reserved device names, trailing dots or spaces, forbidden
    characters), which would make the live view unreachable.
    """
    p = parse_windows_path(text)
    if p.kind not in ("drive", "unc", "device"):
        raise UsageError(f"backing directory {text!r} is not a full path: give e.g. D:\\data")
    for part in p.parts:
        problem = windows_name_problem(part)
        if problem is not None:
            raise UsageError(f"backing directory {text!r}: component {part!r} {problem}")
    return p


def parse_serve_spec(text: str) -> tuple[str, str | None]:
    """Split ``vspfs serve D:\\\\data=L:`` into (backing, drive letter or None).

    Why not the core's ``BACKING=MOUNTPOINT`` parser: it makes the mount
    point absolute with ``os.path.abspath``, which on Windows turns ``L:``
    into the current directory *on* L:. Here the part after the last ``=``
    is a drive letter (or a directory for a WinFsp directory mount) and is
    kept as given; a spec without ``=`` returns None (the caller decides: on
    Windows a live view cannot be mounted over its own backing directory).
    """
    if not text:
        raise UsageError("empty volume argument: give BACKING=L: (e.g. D:\\data=L:)")
    if sys.platform == "win32" and os.path.lexists(text):
        return str(check_backing_path(text)), None
    backing, sep, target = text.rpartition("=")
    if not sep:
        return str(check_backing_path(text)), None
    if not backing or not target:
        raise UsageError(f"bad volume argument {text!r}: give BACKING=L: (e.g. D:\\data=L:)")
    backing_path = str(check_backing_path(backing))
    if is_drive_letter(target):
        return backing_path, parse_drive_letter(target)
    mount = parse_windows_path(target)
    if mount.kind != "drive" or not mount.parts:
        raise UsageError(f"bad mount target {target!r}: give a drive letter (L:) or a full directory path")
    return backing_path, str(mount)


# =============================================================================
# names: NTFS-like case-insensitive comparison
# =============================================================================


def upcase(name: str) -> str:
    """Upper-case ``name`` one UTF-16 code unit at a time, as NTFS's $UpCase does.

    Python's ``str.upper`` changes lengths ("ß" -> "SS", "ﬁ" -> "FI"); NTFS
    maps each code unit to exactly one code unit and leaves characters
    outside the BMP alone. A character whose upper case is not a single BMP
    character is therefore kept as is. (The real $UpCase table of a volume
    is fixed when it is formatted; Unicode's simple mapping is what current
    Windows versions write.)
    """
    out = []
    for c in name:
        if ord(c) > 0xFFFF:
            out.append(c)
            continue
        u = c.upper()
        out.append(u if len(u) == 1 and ord(u) <= 0xFFFF else c)
    return "".join(out)


def names_equal(a: str, b: str) -> bool:
    """True when NTFS (case-insensitive) sees ``a`` and ``b`` as one name."""
    return a == b or upcase(a) == upcase(b)


def ntfs_sort_key(name: str) -> tuple[bytes, bytes]:
    """Directory order of NTFS: upcased names compared as UTF-16 code units.

    NTFS keeps directory entries in a B+ tree ordered by the upcased name,
    compared code unit by code unit. UTF-16-BE bytes compare in exactly that
    order (big-endian makes byte order equal unit order; UTF-16 order differs
    from code point order above U+E000). The exact name breaks ties, so names
    that differ only in case (possible on a Linux volume) still have one
    consistent order, which resuming an enumeration after a marker needs.
    """
    return (
        upcase(name).encode("utf-16-be", "surrogatepass"),
        name.encode("utf-16-be", "surrogatepass"),
    )


def find_name(names: Iterable[str], wanted: str) -> str | None:
    """The entry of ``names`` that NTFS would open for ``wanted``, or None.

    The exact spelling wins; otherwise the case-insensitive match. When a
    case-sensitive volume holds several names equal but for case, the first
    in NTFS order is taken (documented limit: the others are reachable only
    by their exact spelling).
    """
    best: str | None = None
    key = upcase(wanted)
    for n in names:
        if n == wanted:
            return n
        if upcase(n) == key and (best is None or ntfs_sort_key(n) < ntfs_sort_key(best)):
            best = n
    return best


# =============================================================================
# drive letters
# =============================================================================

#: where automatic drive letters start (counting down, as `vspfs mount` does)
FIRST_AUTO_LETTER = "V"
#: lowest letter handed out automatically: A and B are floppies by tradition, C the system
LAST_AUTO_LETTER = "D"


def is_drive_letter(text: str) -> bool:
    """True for ``V``, ``v:``, ``V:\\\\`` and ``V:/`` (and nothing else)."""
    return bool(_DRIVE_RE.match(text or ""))


_DRIVE_ARG_RE = re.compile(r"^[A-Za-z]:[\\/]?$")


def looks_like_drive_letter(text: str | None) -> bool:
    """True for a drive-letter argument of the CLI or daemon: ``V:``, ``v:\\``, ``V:/``.

    Stricter than :func:`is_drive_letter`: the colon is required, so that a
    bare ``V`` stays what it is on every platform, a directory name relative
    to the current directory. On Linux ``V:`` could also be a directory
    name, but nobody means that: it is refused with
    :func:`drive_letters_unsupported` rather than mounted on ``./V:``.
    """
    return bool(text) and bool(_DRIVE_ARG_RE.match(text or ""))


def drive_letters_unsupported(text: str | None = None) -> UsageError:
    """The one-line error for a drive letter asked for where there are none (not Windows)."""
    what = f"{text} is a drive letter, but drive letters" if text else "drive letters"
    return UsageError(
        f"{what} exist only on Windows (this is {sys.platform}): mount snapshots on a directory, "
        "e.g. vspfs mount SNAPSHOT /mnt/snap"
    )


def parse_drive_letter(text: str) -> str:
    """Normalise a drive letter to ``"V:"``; UsageError saying what is wrong otherwise."""
    m = _DRIVE_RE.match(text or "")
    if not m:
        raise UsageError(f"bad drive letter {text!r}: give one letter A-Z followed by a colon, e.g. V:")
    return m.group(1).upper() + ":"


def taken_letters_windows() -> set[str]:
    """Drive letters in use for this logon session (Windows only).

    GetLogicalDrives covers local volumes, subst and mapped network drives
    and WinFsp mounts; a letter taken by a disconnected network mapping is
    not in it (documented limit). On other platforms: the empty set.
    """
    if sys.platform != "win32":
        return set()
    import ctypes

    mask = ctypes.windll.kernel32.GetLogicalDrives()  # type: ignore[attr-defined]
    return {f"{chr(ord('A') + i)}:" for i in range(26) if mask & (1 << i)}


def _taken(taken: Iterable[str] | Callable[[], Iterable[str]] | None) -> set[str]:
    source = taken_letters_windows if taken is None else taken
    letters = source() if callable(source) else source
    return {parse_drive_letter(x) for x in letters}


def check_drive_letter(text: str, taken: Iterable[str] | Callable[[], Iterable[str]] | None = None) -> str:
    """``text`` as a usable free drive letter ("V:"), or UsageError saying why not.

    ``taken`` is the set of letters in use, or a function returning it
    (default: GetLogicalDrives on Windows): injectable so that the rules are
    tested anywhere.
    """
    letter = parse_drive_letter(text)
    if letter in _taken(taken):
        raise UsageError(
            f"drive {letter} is already in use: choose a free letter, or omit it to take "
            f"the first free one from {FIRST_AUTO_LETTER}: down"
        )
    return letter


def first_free_letter(taken: Iterable[str] | Callable[[], Iterable[str]] | None = None) -> str:
    """The first free drive letter from V: down to D: ("V:", then "U:" ...).

    Why from V: down: letters near the end of the alphabet are where Windows
    users expect virtual and network drives; the first letters go to disks.
    UsageError when all of V: .. D: are taken.
    """
    used = _taken(taken)
    for code in range(ord(FIRST_AUTO_LETTER), ord(LAST_AUTO_LETTER) - 1, -1):
        letter = f"{chr(code)}:"
        if letter not in used:
            return letter
    raise UsageError(
        f"no free drive letter from {FIRST_AUTO_LETTER}: to {LAST_AUTO_LETTER}: "
        "unmount a virtual drive or give a letter"
    )


#: CreateFileW arguments of :func:`flush_drive` (fileapi.h; GENERIC_WRITE and
#: OPEN_EXISTING are with the access rights and the pipe's arguments below)
FILE_SHARE_READ = 0x1
FILE_SHARE_WRITE = 0x2
#: what CreateFileW returns on failure: (HANDLE)-1, as ctypes reads a c_void_p
INVALID_HANDLE_VALUE = (1 << (8 * struct.calcsize("P"))) - 1


def _declare_flush_calls(kernel32: Any) -> None:
    """The signatures of the three calls :func:`flush_drive` makes (Microsoft's fileapi.h,
    handleapi.h): declared, so that ctypes converts each argument, and a 64-bit handle
    is not cut to an int."""
    from ctypes import wintypes

    kernel32.CreateFileW.restype = wintypes.HANDLE
    kernel32.CreateFileW.argtypes = [
        wintypes.LPCWSTR,  # lpFileName
        wintypes.DWORD,  # dwDesiredAccess
        wintypes.DWORD,  # dwShareMode
        wintypes.LPVOID,  # lpSecurityAttributes
        wintypes.DWORD,  # dwCreationDisposition
        wintypes.DWORD,  # dwFlagsAndAttributes
        wintypes.HANDLE,  # hTemplateFile
    ]
    kernel32.FlushFileBuffers.restype = wintypes.BOOL
    kernel32.FlushFileBuffers.argtypes = [wintypes.HANDLE]
    kernel32.CloseHandle.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]


def flush_drive(
    letter: str, *, kernel32: Any = None, get_last_error: Callable[[], int] | None = None
) -> bool:
    """Ask Windows to write out what its cache manager holds for drive ``letter``.

    Before a snapshot set, the daemon calls this for each live drive
    (docs/windows.md, "What the core still needs", item 6): WinFsp caches
    file data, and a write an application made before the snapshot may
    still be in the cache, reaching the engine only after the snapshot.
    ``FlushFileBuffers`` on the volume handle ``\\\\.\\L:`` makes WinFsp's
    driver flush every cached file of the drive (paging writes that arrive
    through our Write callback) and then send a volume Flush; winfspy
    answers that one with STATUS_UNEXPECTED_IO_ERROR (its ``ll_flush``
    cannot take the NULL file context, see docs/windows.md's table), so
    FlushFileBuffers reports an error even though the data is out: that
    error is ignored. Anything else that fails (the volume cannot be
    opened, for one because the account lacks a right to) is logged at
    debug level: the flush narrows a window, it is not a guarantee, and a
    snapshot must not fail for it.

    Returns True when the flush was asked for (the drive was opened).
    ``kernel32`` and ``get_last_error`` replace ctypes' (tests give fakes);
    without them this does nothing but return False where Windows is not.
    """
    drive = parse_drive_letter(letter)
    if kernel32 is None:
        if sys.platform != "win32":
            return False
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        get_last_error = ctypes.get_last_error  # type: ignore[attr-defined]
    last_error = get_last_error or (lambda: 0)
    _declare_flush_calls(kernel32)
    handle = kernel32.CreateFileW(
        f"\\\\.\\{drive}", GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE, None, OPEN_EXISTING, 0, None
    )
    if handle is None or handle == INVALID_HANDLE_VALUE:
        _log.debug("cannot open %s to flush it (Win32 error %d)", drive, last_error())
        return False
    try:
        kernel32.FlushFileBuffers(handle)  # its error is winfspy's, after the flush: ignored
    finally:
        if not kernel32.CloseHandle(handle):
            _log.debug("cannot close the handle of %s (Win32 error %d)", drive, last_error())
    return True


# =============================================================================
# FILETIME and file attributes
# =============================================================================

#: FILETIME of the Unix epoch: 100 ns intervals from 1601-01-01 to 1970-01-01 (UTC)
EPOCH_AS_FILETIME = 116_444_736_000_000_000
#: largest FILETIME Windows accepts (FileTimeToSystemTime refuses more: 0x7FFF... is year 30828)
MAX_FILETIME = 0x7FFF_FFFF_FFFF_FFFF


def ns_to_filetime(ns: int) -> int:
    """Nanoseconds since the Unix epoch as a FILETIME (100 ns units since 1601, UTC).

    Rounds toward the past (a time never moves forward in translation).
    Clamped to 1..MAX_FILETIME: 0 means "not set" to Windows (SetBasicInfo
    leaves such a time alone) and negative FILETIMEs do not exist.
    """
    ft = EPOCH_AS_FILETIME + ns // 100
    return min(max(ft, 1), MAX_FILETIME)


def filetime_to_ns(ft: int) -> int:
    """A FILETIME as nanoseconds since the Unix epoch (exact: 100 ns is a whole number of ns)."""
    return (ft - EPOCH_AS_FILETIME) * 100


# FILE_ATTRIBUTE_* (winnt.h; winfspy's FILE_ATTRIBUTE enum has the same values):
# those the cache file layer uses are defined there, beside its calls
FILE_ATTRIBUTE_READONLY = portable_io.FILE_ATTRIBUTE_READONLY
FILE_ATTRIBUTE_HIDDEN = portable_io.FILE_ATTRIBUTE_HIDDEN
FILE_ATTRIBUTE_SYSTEM = portable_io.FILE_ATTRIBUTE_SYSTEM
FILE_ATTRIBUTE_DIRECTORY = portable_io.FILE_ATTRIBUTE_DIRECTORY
FILE_ATTRIBUTE_ARCHIVE = portable_io.FILE_ATTRIBUTE_ARCHIVE
FILE_ATTRIBUTE_NORMAL = portable_io.FILE_ATTRIBUTE_NORMAL
FILE_ATTRIBUTE_TEMPORARY = portable_io.FILE_ATTRIBUTE_TEMPORARY
FILE_ATTRIBUTE_SPARSE_FILE = 0x200
FILE_ATTRIBUTE_REPARSE_POINT = portable_io.FILE_ATTRIBUTE_REPARSE_POINT
FILE_ATTRIBUTE_COMPRESSED = 0x800
FILE_ATTRIBUTE_OFFLINE = portable_io.FILE_ATTRIBUTE_OFFLINE
FILE_ATTRIBUTE_NOT_CONTENT_INDEXED = portable_io.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED
FILE_ATTRIBUTE_ENCRYPTED = 0x4000
INVALID_FILE_ATTRIBUTES = portable_io.INVALID_FILE_ATTRIBUTES
#: the attributes SetFileAttributesW sets (0x3127, ntfs-3g's FILE_ATTR_SETTABLE):
#: one definition, beside the call, in vspfs.portable_io
SETTABLE_FILE_ATTRIBUTES = portable_io.SETTABLE_ATTRIBUTES

#: pseudo extended attributes carrying a Windows file's attributes and creation
#: time through the core, with ntfs-3g's names and formats (its xattrs.c; the
#: values in the CPU's byte order there, little-endian on every Windows CPU):
#: 4 bytes of FILE_ATTRIBUTE_* and 8 bytes of FILETIME (the NTFS creation time)
NTFS_ATTRIB_XATTR = "system.ntfs_attrib"
NTFS_CRTIME_XATTR = "system.ntfs_crtime"

#: IO_REPARSE_TAG_SYMLINK (winnt.h): the tag of a symbolic link reparse point
IO_REPARSE_TAG_SYMLINK = 0xA000000C


def file_attributes(mode: int, *, hidden: bool = False) -> int:
    """FILE_ATTRIBUTE_* for a POSIX ``st_mode``.

    - directory: DIRECTORY; symbolic link: REPARSE_POINT (shown as an NTFS
      symlink); regular file: ARCHIVE (what NTFS sets on every new or changed
      file, so backup programs that honour it copy the file);
    - READONLY when the owner has no write bit (the Win32 "read-only" flag is
      a per-file bit, not a permission; for directories it means something
      else in Explorer, so it is never set on them);
    - never SPARSE_FILE, even for files with holes: programs that see it ask
      for FSCTL_QUERY_ALLOCATED_RANGES, which a WinFsp file system cannot
      answer through winfspy; they then read the holes as zeros, which is
      what the file holds;
    - SYSTEM for what has no Windows equivalent (FIFO, socket, device node):
      shown as an empty file that cannot be opened for data;
    - HIDDEN when asked (the live view's own names, never a dot file: Windows
      has no such convention).
    """
    ftype = statmod.S_IFMT(mode)
    if ftype == statmod.S_IFDIR:
        attrs = FILE_ATTRIBUTE_DIRECTORY
    elif ftype == statmod.S_IFLNK:
        attrs = FILE_ATTRIBUTE_REPARSE_POINT
    elif ftype == statmod.S_IFREG:
        attrs = FILE_ATTRIBUTE_ARCHIVE
    else:
        attrs = FILE_ATTRIBUTE_SYSTEM
    if ftype != statmod.S_IFDIR and not mode & statmod.S_IWUSR:
        attrs |= FILE_ATTRIBUTE_READONLY
    if hidden:
        attrs |= FILE_ATTRIBUTE_HIDDEN
    return attrs


def encode_ntfs_attrib(attributes: int) -> bytes:
    """``system.ntfs_attrib``'s value: the attributes as 4 bytes, little-endian."""
    return struct.pack("<I", attributes & 0xFFFFFFFF)


def decode_ntfs_attrib(value: bytes) -> int | None:
    """The attributes in a ``system.ntfs_attrib`` value; None if it is not 4 bytes."""
    return struct.unpack("<I", value)[0] if len(value) == 4 else None


def encode_ntfs_crtime(filetime: int) -> bytes:
    """``system.ntfs_crtime``'s value: a FILETIME as 8 bytes, little-endian."""
    return struct.pack("<Q", min(max(filetime, 0), MAX_FILETIME))


def decode_ntfs_crtime(value: bytes) -> int | None:
    """The FILETIME in a ``system.ntfs_crtime`` value; None if it is not 8
    bytes or not a time Windows accepts (0 means "not set" to it)."""
    if len(value) != 8:
        return None
    ft = struct.unpack("<Q", value)[0]
    return ft if 0 < ft <= MAX_FILETIME else None


def served_attributes(ntfs: int, mode: int) -> int:
    """The FILE_ATTRIBUTE_* a drive shows for an object whose backing file
    has the NTFS attributes ``ntfs`` (``system.ntfs_attrib``).

    As on the backing, except where the drive must agree with itself:

    - DIRECTORY and REPARSE_POINT follow the object's type as the core sees
      it (``mode``): a directory is always DIRECTORY, a symbolic link always
      REPARSE_POINT (served as IO_REPARSE_TAG_SYMLINK), anything else
      neither. Another kind of reparse point on the backing (a junction, a
      deduplicated or cloud file) is reached through it by the core and is
      shown as what it leads to;
    - never SPARSE_FILE, for the reason :func:`file_attributes` gives;
    - never ENCRYPTED: the drive serves the bytes as the daemon reads them,
      and a caller seeing ENCRYPTED may ask for the raw encrypted stream
      (OpenEncryptedFileRaw), which no WinFsp file system can answer
      through winfspy;
    - never NORMAL, which is valid only alone: WinFsp shows an object with no
      attribute as NORMAL itself (src/sys/fileinfo.c).
    """
    dropped = (
        FILE_ATTRIBUTE_DIRECTORY
        | FILE_ATTRIBUTE_REPARSE_POINT
        | FILE_ATTRIBUTE_SPARSE_FILE
        | FILE_ATTRIBUTE_ENCRYPTED
        | FILE_ATTRIBUTE_NORMAL
    )
    attrs = ntfs & 0xFFFFFFFF & ~dropped
    ftype = statmod.S_IFMT(mode)
    if ftype == statmod.S_IFDIR:
        attrs |= FILE_ATTRIBUTE_DIRECTORY
    elif ftype == statmod.S_IFLNK:
        attrs |= FILE_ATTRIBUTE_REPARSE_POINT
    return attrs


def mode_with_readonly(mode: int, readonly: bool) -> int:
    """The permission bits after setting or clearing the Win32 READONLY flag.

    Clearing gives the owner write permission back (and group/others where
    they may read: the usual 0644/0664 shape); setting removes every write bit.
    """
    perms = statmod.S_IMODE(mode)
    if readonly:
        return perms & ~0o222
    if perms & statmod.S_IWUSR:
        return perms
    return perms | statmod.S_IWUSR


# =============================================================================
# identity
# =============================================================================


@dataclass(frozen=True)
class FileIdentity:
    """How Windows identifies a file: (volume serial number, 64-bit file index).

    GetFileInformationByHandle returns exactly this pair; backup programs and
    hard-link detection compare it. Python's ``os.stat`` on Windows fills
    ``st_dev`` with the volume serial and ``st_ino`` with the file index, so
    the core's (st_dev, st_ino) identity *is* this pair there.
    """

    volume_serial: int
    file_index: int


def file_index(ino: int) -> int:
    """A 64-bit file index (FSP_FSCTL_FILE_INFO.IndexNumber) for an inode number.

    Linux and NTFS inode numbers fit in 64 bits and pass unchanged; a 128-bit
    ReFS file id (Python >= 3.12 reports it as st_ino) is folded by XOR of its
    halves (documented: two ids could then collide).
    """
    if ino < 0:
        ino &= (1 << 64) - 1
    while ino >> 64:
        ino = (ino & ((1 << 64) - 1)) ^ (ino >> 64)
    return ino


def volume_serial(ident: str) -> int:
    """A 32-bit volume serial number derived from an id (snapshot or volume id).

    Stable for the id, distinct between snapshots (CRC-32), never 0 (which
    Windows tools show as "no serial"). A snapshot's drive must not share the
    live volume's serial: backup programs treat (serial, file index) as
    identity and would take snapshot files for the live ones.
    """
    serial = zlib.crc32(ident.encode("utf-8", "surrogatepass")) & 0xFFFFFFFF
    return serial or 1


def identity_from_stat(st: os.stat_result, *, serial: int | None = None) -> FileIdentity:
    """The Windows identity of a stat result: (serial or st_dev, folded st_ino)."""
    dev = st.st_dev if serial is None else serial
    return FileIdentity(dev & 0xFFFFFFFF, file_index(st.st_ino))


# =============================================================================
# security descriptors
# =============================================================================

# SECURITY_DESCRIPTOR control bits (winnt.h)
SE_OWNER_DEFAULTED = 0x0001
SE_GROUP_DEFAULTED = 0x0002
SE_DACL_PRESENT = 0x0004
SE_DACL_DEFAULTED = 0x0008
SE_SACL_PRESENT = 0x0010
SE_SACL_DEFAULTED = 0x0020
SE_DACL_AUTO_INHERIT_REQ = 0x0100
SE_SACL_AUTO_INHERIT_REQ = 0x0200
SE_DACL_AUTO_INHERITED = 0x0400
SE_SACL_AUTO_INHERITED = 0x0800
SE_DACL_PROTECTED = 0x1000
SE_SACL_PROTECTED = 0x2000
SE_SELF_RELATIVE = 0x8000

# SECURITY_INFORMATION bits (winnt.h) of SetSecurity
OWNER_SECURITY_INFORMATION = 0x00000001
GROUP_SECURITY_INFORMATION = 0x00000002
DACL_SECURITY_INFORMATION = 0x00000004
SACL_SECURITY_INFORMATION = 0x00000008
LABEL_SECURITY_INFORMATION = 0x00000010
PROTECTED_DACL_SECURITY_INFORMATION = 0x80000000
PROTECTED_SACL_SECURITY_INFORMATION = 0x40000000
UNPROTECTED_DACL_SECURITY_INFORMATION = 0x20000000
UNPROTECTED_SACL_SECURITY_INFORMATION = 0x10000000

# ACE types and flags (winnt.h)
ACCESS_ALLOWED_ACE_TYPE = 0x0
ACCESS_DENIED_ACE_TYPE = 0x1
SYSTEM_AUDIT_ACE_TYPE = 0x2
SYSTEM_MANDATORY_LABEL_ACE_TYPE = 0x11
OBJECT_INHERIT_ACE = 0x01
CONTAINER_INHERIT_ACE = 0x02
NO_PROPAGATE_INHERIT_ACE = 0x04
INHERIT_ONLY_ACE = 0x08
INHERITED_ACE = 0x10
SUCCESSFUL_ACCESS_ACE_FLAG = 0x40
FAILED_ACCESS_ACE_FLAG = 0x80

# access rights (winnt.h)
FILE_READ_DATA = 0x0001  # FILE_LIST_DIRECTORY for directories
FILE_WRITE_DATA = 0x0002  # FILE_ADD_FILE
FILE_APPEND_DATA = 0x0004  # FILE_ADD_SUBDIRECTORY
FILE_READ_EA = 0x0008
FILE_WRITE_EA = 0x0010
FILE_EXECUTE = 0x0020  # FILE_TRAVERSE
FILE_DELETE_CHILD = 0x0040
FILE_READ_ATTRIBUTES = 0x0080
FILE_WRITE_ATTRIBUTES = 0x0100
DELETE = 0x00010000
READ_CONTROL = 0x00020000
WRITE_DAC = 0x00040000
WRITE_OWNER = 0x00080000
SYNCHRONIZE = 0x00100000
GENERIC_ALL = 0x10000000
GENERIC_EXECUTE = 0x20000000
GENERIC_WRITE = 0x40000000
GENERIC_READ = 0x80000000
FILE_GENERIC_READ = 0x00120089
FILE_GENERIC_WRITE = 0x00120116
FILE_GENERIC_EXECUTE = 0x001200A0
FILE_ALL_ACCESS = 0x001F01FF
#: access rights that change something (a read-only drive refuses them when asked for)
WRITE_ACCESS = (
    FILE_WRITE_DATA
    | FILE_APPEND_DATA
    | FILE_WRITE_EA
    | FILE_DELETE_CHILD
    | FILE_WRITE_ATTRIBUTES
    | DELETE
    | WRITE_DAC
    | WRITE_OWNER
)

#: the generic mapping WinFsp applies to files (FspFileGenericMapping, src/dll/security.c)
FILE_GENERIC_MAPPING = (
    (GENERIC_READ, FILE_GENERIC_READ),
    (GENERIC_WRITE, FILE_GENERIC_WRITE),
    (GENERIC_EXECUTE, FILE_GENERIC_EXECUTE),
    (GENERIC_ALL, FILE_ALL_ACCESS),
)

#: SDDL two-letter SID aliases that need no domain (the domain ones, DA, DU ..., are refused)
SID_ALIASES = {
    "AN": "S-1-5-7",
    "AO": "S-1-5-32-548",
    "AU": "S-1-5-11",
    "BA": "S-1-5-32-544",
    "BG": "S-1-5-32-546",
    "BO": "S-1-5-32-551",
    "BU": "S-1-5-32-545",
    "CG": "S-1-3-1",
    "CO": "S-1-3-0",
    "IU": "S-1-5-4",
    "LS": "S-1-5-19",
    "NS": "S-1-5-20",
    "NU": "S-1-5-2",
    "OW": "S-1-3-4",
    "PU": "S-1-5-32-547",
    "RC": "S-1-5-12",
    "SO": "S-1-5-32-549",
    "SU": "S-1-5-6",
    "SY": "S-1-5-18",
    "WD": "S-1-1-0",
    "ME": "S-1-16-8192",
    "HI": "S-1-16-12288",
    "LW": "S-1-16-4096",
    "SI": "S-1-16-16384",
}
_ALIAS_OF_SID = {v: k for k, v in SID_ALIASES.items()}

#: SDDL rights aliases; formatting uses an alias only for an exact match
RIGHT_ALIASES = {
    "GA": GENERIC_ALL,
    "GR": GENERIC_READ,
    "GW": GENERIC_WRITE,
    "GX": GENERIC_EXECUTE,
    "RC": READ_CONTROL,
    "SD": DELETE,
    "WD": WRITE_DAC,
    "WO": WRITE_OWNER,
    "FA": FILE_ALL_ACCESS,
    "FR": FILE_GENERIC_READ,
    "FW": FILE_GENERIC_WRITE,
    "FX": FILE_GENERIC_EXECUTE,
    "NW": 0x1,  # SYSTEM_MANDATORY_LABEL_NO_WRITE_UP
    "NR": 0x2,
    "NX": 0x4,
}
_FORMAT_RIGHTS = ("FA", "FR", "FW", "FX", "GA", "GR", "GW", "GX")

ACE_TYPE_ALIASES = {
    "A": ACCESS_ALLOWED_ACE_TYPE,
    "D": ACCESS_DENIED_ACE_TYPE,
    "AU": SYSTEM_AUDIT_ACE_TYPE,
    "ML": SYSTEM_MANDATORY_LABEL_ACE_TYPE,
}
_ACE_TYPE_NAMES = {v: k for k, v in ACE_TYPE_ALIASES.items()}

ACE_FLAG_ALIASES = {
    "OI": OBJECT_INHERIT_ACE,
    "CI": CONTAINER_INHERIT_ACE,
    "NP": NO_PROPAGATE_INHERIT_ACE,
    "IO": INHERIT_ONLY_ACE,
    "ID": INHERITED_ACE,
    "SA": SUCCESSFUL_ACCESS_ACE_FLAG,
    "FA": FAILED_ACCESS_ACE_FLAG,
}

_ACL_FLAGS = {"P": SE_DACL_PROTECTED, "AI": SE_DACL_AUTO_INHERITED, "AR": SE_DACL_AUTO_INHERIT_REQ}
_SACL_FLAGS = {"P": SE_SACL_PROTECTED, "AI": SE_SACL_AUTO_INHERITED, "AR": SE_SACL_AUTO_INHERIT_REQ}


class SecurityDescriptorError(ValueError):
    """Bytes or SDDL text that are not a security descriptor this codec understands."""


def sid_to_bytes(sid: str) -> bytes:
    """``"S-1-5-18"`` (or an SDDL alias such as ``"SY"``) as a binary SID."""
    text = SID_ALIASES.get(sid.upper(), sid) if len(sid) == 2 else sid
    parts = text.split("-")
    if len(parts) < 3 or parts[0].upper() != "S" or parts[1] != "1":
        raise SecurityDescriptorError(f"not a SID: {sid!r}")
    try:
        authority = int(parts[2], 0)
        subs = [int(p) for p in parts[3:]]
    except ValueError:
        raise SecurityDescriptorError(f"not a SID: {sid!r}") from None
    if not 0 <= authority < 1 << 48 or len(subs) > 15 or any(not 0 <= s < 1 << 32 for s in subs):
        raise SecurityDescriptorError(f"SID out of range: {sid!r}")
    return bytes([1, len(subs)]) + authority.to_bytes(6, "big") + b"".join(struct.pack("<I", s) for s in subs)


def sid_from_bytes(data: bytes, offset: int = 0) -> tuple[str, int]:
    """(``"S-1-..."``, length in bytes) of the binary SID at ``offset``."""
    if offset + 8 > len(data) or data[offset] != 1:
        raise SecurityDescriptorError("bad SID")
    count = data[offset + 1]
    end = offset + 8 + 4 * count
    if count > 15 or end > len(data):
        raise SecurityDescriptorError("bad SID length")
    authority = int.from_bytes(data[offset + 2 : offset + 8], "big")
    subs = struct.unpack_from(f"<{count}I", data, offset + 8)
    return "-".join(["S", "1", str(authority), *map(str, subs)]), end - offset


@dataclass(frozen=True)
class Ace:
    """One access control entry. ``raw`` keeps ACE kinds this codec does not
    decode (object ACEs, callback ACEs ...) byte for byte, so a merge never
    loses them."""

    ace_type: int
    flags: int
    mask: int = 0
    sid: str = ""
    raw: bytes = b""

    def to_bytes(self) -> bytes:
        if self.raw:
            return self.raw
        body = struct.pack("<I", self.mask) + sid_to_bytes(self.sid)
        return struct.pack("<BBH", self.ace_type, self.flags, 4 + len(body)) + body

    @classmethod
    def from_bytes(cls, data: bytes, offset: int) -> tuple[Ace, int]:
        if offset + 4 > len(data):
            raise SecurityDescriptorError("truncated ACE")
        ace_type, flags, size = struct.unpack_from("<BBH", data, offset)
        if size < 8 or size % 4 or offset + size > len(data):
            raise SecurityDescriptorError("bad ACE size")
        chunk = bytes(data[offset : offset + size])
        if ace_type in (
            ACCESS_ALLOWED_ACE_TYPE,
            ACCESS_DENIED_ACE_TYPE,
            SYSTEM_AUDIT_ACE_TYPE,
            SYSTEM_MANDATORY_LABEL_ACE_TYPE,
        ):
            (mask,) = struct.unpack_from("<I", data, offset + 4)
            sid, sid_len = sid_from_bytes(data, offset + 8)
            if 8 + sid_len == size:
                return cls(ace_type, flags, mask, sid), size
        return cls(ace_type, flags, raw=chunk), size


@dataclass(frozen=True)
class Acl:
    """An access control list (revision 2, or 4 when it holds object ACEs)."""

    aces: tuple[Ace, ...] = ()
    revision: int = 2

    def to_bytes(self) -> bytes:
        body = b"".join(a.to_bytes() for a in self.aces)
        return struct.pack("<BBHHH", self.revision, 0, 8 + len(body), len(self.aces), 0) + body

    @classmethod
    def from_bytes(cls, data: bytes, offset: int) -> Acl:
        if offset + 8 > len(data):
            raise SecurityDescriptorError("truncated ACL")
        revision, _sbz1, size, count, _sbz2 = struct.unpack_from("<BBHHH", data, offset)
        if revision not in (2, 3, 4) or offset + size > len(data) or size < 8:
            raise SecurityDescriptorError("bad ACL header")
        aces = []
        pos = offset + 8
        for _ in range(count):
            ace, ace_size = Ace.from_bytes(data[: offset + size], pos)
            aces.append(ace)
            pos += ace_size
        return cls(tuple(aces), revision)


@dataclass(frozen=True)
class SecurityDescriptor:
    """A security descriptor as data: owner, group, DACL, SACL, control bits.

    ``dacl`` None with SE_DACL_PRESENT set is a *null DACL* (everyone may do
    everything: SDDL ``D:NO_ACCESS_CONTROL``); without SE_DACL_PRESENT there
    is no DACL at all. Serialised self-relative, as WinFsp passes and expects
    descriptors (winfsp.h: "will always be in self-relative format").
    """

    owner: str | None = None
    group: str | None = None
    dacl: Acl | None = None
    sacl: Acl | None = None
    control: int = 0
    rm_control: int = 0

    def to_bytes(self) -> bytes:
        """Self-relative layout: 20-byte header, then SACL, DACL, owner, group
        (the order RtlMakeSelfRelativeSD uses)."""
        control = self.control | SE_SELF_RELATIVE
        if self.dacl is not None:
            control |= SE_DACL_PRESENT
        if self.sacl is not None:
            control |= SE_SACL_PRESENT
        body = bytearray()
        offsets = {"sacl": 0, "dacl": 0, "owner": 0, "group": 0}
        for name, blob in (
            ("sacl", self.sacl.to_bytes() if self.sacl is not None else b""),
            ("dacl", self.dacl.to_bytes() if self.dacl is not None else b""),
            ("owner", sid_to_bytes(self.owner) if self.owner else b""),
            ("group", sid_to_bytes(self.group) if self.group else b""),
        ):
            if blob:
                offsets[name] = 20 + len(body)
                body += blob
        header = struct.pack(
            "<BBHIIII",
            1,
            self.rm_control,
            control,
            offsets["owner"],
            offsets["group"],
            offsets["sacl"],
            offsets["dacl"],
        )
        return header + bytes(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> SecurityDescriptor:
        """Parse a self-relative descriptor; SecurityDescriptorError for anything else."""
        data = bytes(data)
        if len(data) < 20:
            raise SecurityDescriptorError("too short for a security descriptor")
        revision, rm_control, control, o_owner, o_group, o_sacl, o_dacl = struct.unpack_from("<BBHIIII", data)
        if revision != 1:
            raise SecurityDescriptorError(f"unknown security descriptor revision {revision}")
        if not control & SE_SELF_RELATIVE:
            raise SecurityDescriptorError("not a self-relative security descriptor")
        owner = sid_from_bytes(data, o_owner)[0] if o_owner else None
        group = sid_from_bytes(data, o_group)[0] if o_group else None
        dacl = Acl.from_bytes(data, o_dacl) if control & SE_DACL_PRESENT and o_dacl else None
        sacl = Acl.from_bytes(data, o_sacl) if control & SE_SACL_PRESENT and o_sacl else None
        keep = control & ~(SE_SELF_RELATIVE | SE_DACL_PRESENT | SE_SACL_PRESENT)
        if control & SE_DACL_PRESENT and dacl is None:
            keep |= SE_DACL_PRESENT  # null DACL
        if control & SE_SACL_PRESENT and sacl is None:
            keep |= SE_SACL_PRESENT
        return cls(owner, group, dacl, sacl, keep, rm_control)

    @property
    def has_dacl(self) -> bool:
        return self.dacl is not None or bool(self.control & SE_DACL_PRESENT)


def security_descriptor_length(data: bytes) -> int:
    """What GetSecurityDescriptorLength says of a self-relative descriptor.

    The end of its furthest part: WinFsp and the kernel copy exactly this
    many bytes, so trailing garbage after it is not part of the descriptor.
    """
    sd = bytes(data)
    if len(sd) < 20:
        raise SecurityDescriptorError("too short for a security descriptor")
    _rev, _rm, control, o_owner, o_group, o_sacl, o_dacl = struct.unpack_from("<BBHIIII", sd)
    end = 20
    for off in (o_owner, o_group):
        if off:
            end = max(end, off + sid_from_bytes(sd, off)[1])
    for off, flag in ((o_sacl, SE_SACL_PRESENT), (o_dacl, SE_DACL_PRESENT)):
        if off and control & flag:
            end = max(end, off + struct.unpack_from("<H", sd, off + 2)[0])
    return end


# -- SDDL ---------------------------------------------------------------------

_SDDL_PART = re.compile(r"([OGDS]):")


def sddl_to_sd(text: str) -> SecurityDescriptor:
    """Parse the SDDL subset vspfs writes and reads (owner, group, DACL, SACL
    with A/D/AU/ML ACEs, two-letter or hex rights, SID aliases or S-1-...).

    Why a parser of our own: ConvertStringSecurityDescriptorToSecurityDescriptorW
    exists only on Windows, and the default descriptors and the control
    pipe's descriptor must be testable where they are written.
    """
    text = text.strip()
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _SDDL_PART.match(text, pos)
        if not m:
            raise SecurityDescriptorError(f"bad SDDL at {text[pos:]!r}")
        key = m.group(1)
        start = m.end()
        # the value runs to the next "X:" outside parentheses
        depth, end = 0, start
        while end < len(text):
            c = text[end]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif depth == 0 and _SDDL_PART.match(text, end) and end > start:
                break
            end += 1
        if key in fields:
            raise SecurityDescriptorError(f"SDDL part {key}: given twice")
        fields[key] = text[start:end]
        pos = end
    control = 0
    owner = _sddl_sid(fields["O"]) if "O" in fields else None
    group = _sddl_sid(fields["G"]) if "G" in fields else None
    dacl = sacl = None
    if "D" in fields:
        dacl, flags = _sddl_acl(fields["D"], _ACL_FLAGS)
        control |= flags
        if dacl is None:
            control |= SE_DACL_PRESENT
    if "S" in fields:
        sacl, flags = _sddl_acl(fields["S"], _SACL_FLAGS)
        control |= flags
        if sacl is None:
            control |= SE_SACL_PRESENT
    return SecurityDescriptor(owner, group, dacl, sacl, control)


def _sddl_sid(text: str) -> str:
    text = text.strip()
    if len(text) == 2:
        if text.upper() not in SID_ALIASES:
            raise SecurityDescriptorError(f"SID alias {text!r} is unknown or needs a domain")
        return SID_ALIASES[text.upper()]
    sid_from_bytes(sid_to_bytes(text))
    return text.upper()


def _sddl_acl(text: str, flag_names: dict[str, int]) -> tuple[Acl | None, int]:
    head, paren, rest = text.partition("(")
    flags = 0
    head = head.strip()
    if head.startswith("NO_ACCESS_CONTROL"):
        return None, 0
    while head:
        for name in sorted(flag_names, key=len, reverse=True):
            if head.startswith(name):
                flags |= flag_names[name]
                head = head[len(name) :]
                break
        else:
            raise SecurityDescriptorError(f"bad ACL flags {head!r}")
    aces = []
    body = paren + rest
    for m in re.finditer(r"\(([^)]*)\)", body):
        aces.append(_sddl_ace(m.group(1)))
    if re.sub(r"\([^)]*\)", "", body).strip():
        raise SecurityDescriptorError(f"bad ACL text {text!r}")
    return Acl(tuple(aces)), flags


def _sddl_ace(text: str) -> Ace:
    fields = text.split(";")
    if len(fields) != 6:
        raise SecurityDescriptorError(f"ACE {text!r}: want type;flags;rights;object;inherit;sid")
    ace_type_s, flags_s, rights_s, obj, inh, sid_s = (f.strip() for f in fields)
    if obj or inh:
        raise SecurityDescriptorError(f"ACE {text!r}: object ACEs are not supported")
    if ace_type_s.upper() not in ACE_TYPE_ALIASES:
        raise SecurityDescriptorError(f"ACE {text!r}: unknown type {ace_type_s!r}")
    flags = 0
    s = flags_s.upper()
    while s:
        if s[:2] not in ACE_FLAG_ALIASES:
            raise SecurityDescriptorError(f"ACE {text!r}: unknown flag {s[:2]!r}")
        flags |= ACE_FLAG_ALIASES[s[:2]]
        s = s[2:]
    return Ace(ACE_TYPE_ALIASES[ace_type_s.upper()], flags, _sddl_rights(rights_s), _sddl_sid(sid_s))


def _sddl_rights(text: str) -> int:
    s = text.strip()
    if s.lower().startswith("0x"):
        return int(s, 16)
    if s.isdigit():
        return int(s)
    mask = 0
    s = s.upper()
    while s:
        if s[:2] not in RIGHT_ALIASES:
            raise SecurityDescriptorError(f"unknown access right {s[:2]!r}")
        mask |= RIGHT_ALIASES[s[:2]]
        s = s[2:]
    return mask


def sd_to_sddl(sd: SecurityDescriptor) -> str:
    """The SDDL of a descriptor; raw (undecoded) ACEs raise SecurityDescriptorError."""
    out = []
    if sd.owner:
        out.append(f"O:{_ALIAS_OF_SID.get(sd.owner, sd.owner)}")
    if sd.group:
        out.append(f"G:{_ALIAS_OF_SID.get(sd.group, sd.group)}")
    if sd.has_dacl:
        out.append("D:" + _format_acl(sd.dacl, sd.control, _ACL_FLAGS))
    if sd.sacl is not None or sd.control & SE_SACL_PRESENT:
        out.append("S:" + _format_acl(sd.sacl, sd.control, _SACL_FLAGS))
    return "".join(out)


def _format_acl(acl: Acl | None, control: int, flag_names: dict[str, int]) -> str:
    if acl is None:
        return "NO_ACCESS_CONTROL"
    flags = "".join(name for name in ("P", "AI", "AR") if control & flag_names[name])
    return flags + "".join(_format_ace(a) for a in acl.aces)


def _format_ace(ace: Ace) -> str:
    if ace.raw:
        raise SecurityDescriptorError(f"ACE type {ace.ace_type:#x} has no SDDL form here")
    flags = "".join(name for name, bit in ACE_FLAG_ALIASES.items() if ace.flags & bit)
    rights = next((n for n in _FORMAT_RIGHTS if RIGHT_ALIASES[n] == ace.mask), f"0x{ace.mask:x}")
    sid = _ALIAS_OF_SID.get(ace.sid, ace.sid)
    return f"({_ACE_TYPE_NAMES[ace.ace_type]};{flags};{rights};;;{sid})"


def sddl_to_bytes(text: str) -> bytes:
    """SDDL text as a self-relative binary descriptor."""
    return sddl_to_sd(text).to_bytes()


def bytes_to_sddl(data: bytes) -> str:
    """A self-relative binary descriptor as SDDL text."""
    return sd_to_sddl(SecurityDescriptor.from_bytes(data))


# -- the default descriptor -------------------------------------------------------

#: SIDs of Unix users and groups (Samba, NFS and Cygwin's "Unix_User+<uid>" namespace)
UNIX_USER_SID_PREFIX = "S-1-22-1-"
UNIX_GROUP_SID_PREFIX = "S-1-22-2-"


def posix_owner_sids(uid: int, gid: int) -> tuple[str, str]:
    """Owner and group SIDs for a POSIX uid and gid: S-1-22-1-<uid>, S-1-22-2-<gid>.

    Why these: they are the established mapping for Unix ids seen from
    Windows (Samba, the NFS client) and need no knowledge of the machine's
    domain SID, which WinFsp's own uid mapping (src/shared/ku/posix.c) does.
    """
    return f"{UNIX_USER_SID_PREFIX}{uid & 0xFFFFFFFF}", f"{UNIX_GROUP_SID_PREFIX}{gid & 0xFFFFFFFF}"


def rights_from_bits(bits: int, *, is_dir: bool, owner: bool) -> int:
    """Windows access rights for one rwx triplet (bits 4, 2, 1).

    Everyone who may see the file at all may read its attributes and its
    descriptor (FILE_READ_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE), as with
    SFU and WinFsp-FUSE. r gives FILE_GENERIC_READ, w FILE_GENERIC_WRITE
    (plus FILE_DELETE_CHILD on a directory: POSIX lets a writable directory's
    entries be removed), x FILE_GENERIC_EXECUTE (traverse on a directory).
    The owner may also change the descriptor, owner and attributes (chmod,
    chown to self, utime) and delete what it owns.
    """
    mask = FILE_READ_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE
    if bits & 4:
        mask |= FILE_GENERIC_READ
    if bits & 2:
        mask |= FILE_GENERIC_WRITE | (FILE_DELETE_CHILD if is_dir else 0)
    if bits & 1:
        mask |= FILE_GENERIC_EXECUTE
    if owner:
        mask |= WRITE_DAC | WRITE_OWNER | FILE_WRITE_ATTRIBUTES | DELETE
    return mask


def default_security_sddl(mode: int, uid: int, gid: int) -> str:
    """The documented descriptor of a file that has none of its own, from its mode.

    Used where the core has no Windows security descriptor for a file (every
    file of a Linux-hosted volume, docs/windows.md). Shape::

        O:<uid SID>G:<gid SID>D:P(A;;<owner rights>;;;<uid SID>)
                                 (A;;<group rights>;;;<gid SID>)
                                 (A;;<other rights>;;;WD)
                                 (A;;FA;;;SY)(A;;FA;;;BA)

    Protected (P: nothing inherited), no deny ACEs (POSIX has none; a group
    member who is also "other" gets the union of both, which is looser than
    POSIX when other has more rights than group: documented). SYSTEM and
    Administrators get full access, as on a default NTFS volume, so backup
    programs running as either can read everything.
    """
    owner_sid, group_sid = posix_owner_sids(uid, gid)
    is_dir = statmod.S_ISDIR(mode)
    perms = statmod.S_IMODE(mode)
    own = rights_from_bits(perms >> 6, is_dir=is_dir, owner=True)
    grp = rights_from_bits(perms >> 3, is_dir=is_dir, owner=False)
    oth = rights_from_bits(perms, is_dir=is_dir, owner=False)
    return (
        f"O:{owner_sid}G:{group_sid}D:P"
        f"(A;;0x{own:x};;;{owner_sid})(A;;0x{grp:x};;;{group_sid})(A;;0x{oth:x};;;WD)"
        "(A;;FA;;;SY)(A;;FA;;;BA)"
    )


def default_security_descriptor(mode: int, uid: int, gid: int) -> bytes:
    """:func:`default_security_sddl` as self-relative bytes."""
    return sddl_to_bytes(default_security_sddl(mode, uid, gid))


def map_generic_rights(mask: int) -> int:
    """Replace GENERIC_* bits by the file rights they stand for (FspFileGenericMapping)."""
    out = mask
    for generic, specific in FILE_GENERIC_MAPPING:
        if mask & generic:
            out = (out & ~generic) | specific
    return out


def _mapped(acl: Acl | None) -> Acl | None:
    if acl is None:
        return None
    aces = tuple(
        a
        if a.raw or a.flags & INHERIT_ONLY_ACE or a.ace_type == SYSTEM_MANDATORY_LABEL_ACE_TYPE
        else replace(a, mask=map_generic_rights(a.mask))
        for a in acl.aces
    )
    return Acl(aces, acl.revision)


def merge_security(current: bytes, information: int, modification: bytes) -> bytes:
    """What SetSecurity makes of a descriptor: the parts named by ``information``
    taken from ``modification``, the rest kept from ``current``.

    Follows SetPrivateObjectSecurity (which WinFsp's FspSetSecurityDescriptor
    calls) where it matters for files:

    - OWNER/GROUP/DACL/SACL_SECURITY_INFORMATION replace that part; a part
      asked for but absent from ``modification`` is removed (for the DACL:
      no DACL), as Windows does;
    - LABEL_SECURITY_INFORMATION alone replaces only the mandatory-label ACEs
      of the SACL;
    - PROTECTED_/UNPROTECTED_DACL (and SACL) set or clear the protection bit;
      without them the bit comes from ``modification``'s control;
    - GENERIC_* rights in effective ACEs are mapped to file rights.

    Not done (documented in docs/windows.md): re-propagating inherited ACEs
    to children (Windows does not either: Explorer and icacls do that by
    walking the tree) and owner checks (WinFsp checked WRITE_OWNER already).
    """
    cur = SecurityDescriptor.from_bytes(current)
    mod = SecurityDescriptor.from_bytes(modification)
    owner, group, dacl, sacl, control = cur.owner, cur.group, cur.dacl, cur.sacl, cur.control
    if information & OWNER_SECURITY_INFORMATION:
        if mod.owner is None:
            raise SecurityDescriptorError("SetSecurity names the owner but gives none (STATUS_INVALID_OWNER)")
        owner = mod.owner
        control = (control & ~SE_OWNER_DEFAULTED) | (mod.control & SE_OWNER_DEFAULTED)
    if information & GROUP_SECURITY_INFORMATION:
        group = mod.group
        control = (control & ~SE_GROUP_DEFAULTED) | (mod.control & SE_GROUP_DEFAULTED)
    if information & DACL_SECURITY_INFORMATION:
        dacl = _mapped(mod.dacl)
        keep = SE_DACL_PRESENT | SE_DACL_DEFAULTED | SE_DACL_AUTO_INHERITED | SE_DACL_PROTECTED
        control = (control & ~keep) | (mod.control & keep)
        if not mod.has_dacl:
            control &= ~SE_DACL_PRESENT
    if information & SACL_SECURITY_INFORMATION:
        sacl = mod.sacl
        keep = SE_SACL_PRESENT | SE_SACL_DEFAULTED | SE_SACL_AUTO_INHERITED | SE_SACL_PROTECTED
        control = (control & ~keep) | (mod.control & keep)
    elif information & LABEL_SECURITY_INFORMATION:
        label = SYSTEM_MANDATORY_LABEL_ACE_TYPE
        others = tuple(a for a in (sacl.aces if sacl else ()) if a.ace_type != label)
        labels = tuple(a for a in (mod.sacl.aces if mod.sacl else ()) if a.ace_type == label)
        sacl = Acl(labels + others) if labels or others else None
    if information & PROTECTED_DACL_SECURITY_INFORMATION:
        control |= SE_DACL_PROTECTED
    elif information & UNPROTECTED_DACL_SECURITY_INFORMATION:
        control &= ~SE_DACL_PROTECTED
    if information & PROTECTED_SACL_SECURITY_INFORMATION:
        control |= SE_SACL_PROTECTED
    elif information & UNPROTECTED_SACL_SECURITY_INFORMATION:
        control &= ~SE_SACL_PROTECTED
    if dacl is not None:
        control &= ~SE_DACL_PRESENT  # to_bytes sets it again
    if sacl is not None:
        control &= ~SE_SACL_PRESENT
    return SecurityDescriptor(owner, group, dacl, sacl, control, cur.rm_control).to_bytes()


# =============================================================================
# reparse points (symbolic links)
# =============================================================================

#: SYMLINK_FLAG_RELATIVE (ntifs.h; winfsp.h defines it too): the target is relative to the link
SYMLINK_FLAG_RELATIVE = 1
#: the most links one resolution follows (WinFsp's FspFileSystemResolveReparsePoints: 32)
MAX_LINK_HOPS = 32
_REPARSE_HEADER = struct.Struct("<IHH")  # ReparseTag, ReparseDataLength, Reserved
_SYMLINK_HEADER = struct.Struct("<HHHHI")  # Substitute off/len, Print off/len, Flags
_DOS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


@dataclass(frozen=True)
class LinkTarget:
    """A symbolic link's target as Windows sees it.

    ``absolute`` targets name another place in the Windows namespace
    (``C:\\\\x``, ``\\\\\\\\server\\\\share``) and become ``\\\\??\\\\`` NT paths;
    relative ones (``..\\\\x``, or ``\\\\x`` from the volume root) are
    components resolved inside the same drive.
    """

    absolute: bool
    rooted: bool
    parts: tuple[str, ...]
    nt_path: str = ""


def parse_link_target(target: str, *, windows: bool | None = None) -> LinkTarget:
    """Classify a link target read from the core (``os.readlink``).

    With ``windows`` (default: running on Windows) backslashes separate
    components, as in targets NTFS stores; otherwise only ``/`` does and a
    backslash is part of a name (Linux). A POSIX absolute target (``/x``)
    is taken relative to the drive's root: the host's root directory is not
    reachable from a virtual drive (documented).
    """
    if windows is None:
        windows = sys.platform == "win32"
    text = target.replace("/", "\\") if windows else target
    if windows and (_DOS_PATH.match(text) or text.startswith("\\\\") or text.startswith("\\??\\")):
        p = parse_windows_path(text)
        if p.kind == "drive":
            nt = f"\\??\\{p.anchor}\\" + "\\".join(p.parts)
        elif p.kind == "unc":
            nt = "\\??\\UNC\\" + p.anchor[2:] + ("\\" + "\\".join(p.parts) if p.parts else "")
        else:
            nt = "\\??\\" + p.anchor[4:] + ("\\" + "\\".join(p.parts) if p.parts else "")
        return LinkTarget(True, True, p.parts, nt)
    sep = "\\" if windows else "/"
    rooted = text.startswith(sep)
    parts = tuple(p for p in text.split(sep) if p)
    return LinkTarget(False, rooted, parts)


def symlink_reparse_data(target: str, *, windows: bool | None = None) -> bytes:
    """The REPARSE_DATA_BUFFER (IO_REPARSE_TAG_SYMLINK) of a link, for
    FSCTL_GET_REPARSE_POINT.

    Substitute and print names are the same text; relative links carry
    SYMLINK_FLAG_RELATIVE, absolute ones a ``\\\\??\\\\`` substitute name and a
    DOS print name. Components are shown as Windows names (:func:`encode_name`).
    """
    t = parse_link_target(target, windows=windows)
    if t.absolute:
        substitute = t.nt_path
        unc = substitute.startswith("\\??\\UNC\\")
        printed = "\\\\" + substitute[8:] if unc else substitute[4:]
        flags = 0
    else:
        substitute = ("\\" if t.rooted else "") + "\\".join(encode_name(p) for p in t.parts)
        printed = substitute
        flags = SYMLINK_FLAG_RELATIVE
    sub = substitute.encode("utf-16-le", "surrogatepass")
    prn = printed.encode("utf-16-le", "surrogatepass")
    body = _SYMLINK_HEADER.pack(0, len(sub), len(sub), len(prn), flags) + sub + prn
    return _REPARSE_HEADER.pack(IO_REPARSE_TAG_SYMLINK, len(body), 0) + body


def parse_symlink_reparse_data(data: bytes) -> tuple[str, bool]:
    """(substitute name, relative?) of a symlink REPARSE_DATA_BUFFER (FSCTL_SET_REPARSE_POINT).

    ValueError for other reparse tags or malformed buffers.
    """
    data = bytes(data)
    if len(data) < _REPARSE_HEADER.size + _SYMLINK_HEADER.size:
        raise ValueError("reparse buffer too short")
    tag, length, _ = _REPARSE_HEADER.unpack_from(data)
    if tag != IO_REPARSE_TAG_SYMLINK:
        raise ValueError(f"reparse tag {tag:#x} is not a symbolic link")
    if _REPARSE_HEADER.size + length > len(data):
        raise ValueError("reparse buffer shorter than its length")
    sub_off, sub_len, _p_off, _p_len, flags = _SYMLINK_HEADER.unpack_from(data, _REPARSE_HEADER.size)
    start = _REPARSE_HEADER.size + _SYMLINK_HEADER.size + sub_off
    if sub_len % 2 or start + sub_len > _REPARSE_HEADER.size + length:
        raise ValueError("bad substitute name in reparse buffer")
    name = data[start : start + sub_len].decode("utf-16-le", "surrogatepass")
    return name, bool(flags & SYMLINK_FLAG_RELATIVE)


class LinkLoop(OSError):
    """More than MAX_LINK_HOPS links in one path (ELOOP)."""


def resolve_links(
    parts: Iterable[str],
    link_target: Callable[[tuple[str, ...]], str | None],
    *,
    resolve_last: bool = True,
    windows: bool | None = None,
) -> tuple[tuple[str, ...], str | None]:
    """Follow the symbolic links of a path inside one drive.

    ``parts`` are core names; ``link_target(prefix)`` returns the target of
    the link at that prefix, or None when it is not a link (or does not
    exist: the rest of the path is then returned as is, and opening it will
    say what is missing). Returns (resolved parts, None), or ((), NT path)
    when a link leaves the drive (absolute target): that is where resolution
    stops, as WinFsp's own resolver does. ``..`` never climbs above the root.
    LinkLoop after MAX_LINK_HOPS links.
    """
    comps = list(parts)
    i = 0
    hops = 0
    while i < len(comps):
        c = comps[i]
        if c in ("", "."):
            del comps[i]
            continue
        if c == "..":
            del comps[i]
            if i > 0:
                del comps[i - 1]
                i -= 1
            continue
        if i == len(comps) - 1 and not resolve_last:
            break
        target = link_target(tuple(comps[: i + 1]))
        if target is None:
            i += 1
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            raise LinkLoop(errno.ELOOP, "too many levels of symbolic links", "/".join(comps[: i + 1]))
        t = parse_link_target(target, windows=windows)
        rest = comps[i + 1 :]
        if t.absolute:
            tail = "\\".join(encode_name(p) for p in rest)
            return (), t.nt_path + ("\\" + tail if tail else "")
        if t.rooted:
            comps = [*t.parts, *rest]
            i = 0
        else:
            comps = [*comps[:i], *t.parts, *rest]
    return tuple(comps), None


# =============================================================================
# control channel: named pipe
# =============================================================================

#: what the named pipe must be created with (docs/windows.md, "Control channel")
PIPE_CREATE_FLAGS = (
    "PIPE_ACCESS_DUPLEX | FILE_FLAG_FIRST_PIPE_INSTANCE | FILE_FLAG_OVERLAPPED",
    "PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS",
)

# Constants of the pipe and file calls (winbase.h, winnt.h, fileapi.h, winerror.h;
# each checked against the Microsoft documentation cited in docs/windows.md).
PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
FILE_FLAG_OVERLAPPED = 0x40000000
PIPE_TYPE_BYTE = 0x00000000
PIPE_READMODE_BYTE = 0x00000000
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008
PIPE_UNLIMITED_INSTANCES = 255
#: buffer sizes the pipe asks for: a request or reply larger than this just takes more writes
PIPE_BUFFER_SIZE = 65536
OPEN_EXISTING = 3
CREATE_NEW = 1
#: CreateFile's SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION: the server may learn who
#: the client is but cannot act as the client (a planted pipe gains nothing by impersonating)
SECURITY_SQOS_PRESENT = 0x00100000
SECURITY_IDENTIFICATION = 0x00010000
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_BROKEN_PIPE = 109
ERROR_SEM_TIMEOUT = 121
ERROR_PIPE_BUSY = 231
ERROR_NO_DATA = 232
ERROR_PIPE_NOT_CONNECTED = 233
ERROR_PIPE_CONNECTED = 535
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997
#: Win32 errors that mean "the other end is gone": a read then reports end of stream
PIPE_GONE_ERRORS = frozenset({ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED})
#: the well-known SID of LocalSystem, which may use any user's control pipe (as root may use a socket)
LOCAL_SYSTEM_SID = "S-1-5-18"


def running_on_windows() -> bool:
    """True on Windows: the one switch every Windows branch of the core asks.

    A function rather than a constant so that tests on Linux can make the
    Windows branches of the decision logic run (monkeypatching it), without
    winfspy, ctypes.windll or a Windows machine.
    """
    return sys.platform == "win32"


@dataclass(frozen=True)
class PipeCreateArgs:
    """The arguments of one ``CreateNamedPipeW`` call (all but the descriptor).

    Pure, so that the exact flags are unit-tested on Linux: the first
    instance carries FILE_FLAG_FIRST_PIPE_INSTANCE (the call fails with
    ERROR_ACCESS_DENIED when the name exists: nobody can squat it before the
    daemon, and a second daemon learns that one runs); later instances
    (one per client being served) must not, or they would fail.
    """

    name: str
    open_mode: int
    pipe_mode: int
    max_instances: int
    out_buffer: int
    in_buffer: int
    default_timeout_ms: int


def pipe_create_args(name: str, *, first: bool) -> PipeCreateArgs:
    """CreateNamedPipeW arguments for the control pipe ``name`` (see :class:`PipeCreateArgs`).

    Byte mode (the JSON framing carries its own lengths), blocking mode with
    overlapped handles (so that reads have deadlines and close() can cancel
    them), remote clients rejected (the pipe is local, like a Unix socket).
    """
    if not is_pipe_name(name):
        raise UsageError(f"{name!r} is not a local pipe name such as \\\\.\\pipe\\vspfs")
    open_mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED
    if first:
        open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE
    pipe_mode = PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS
    return PipeCreateArgs(
        name, open_mode, pipe_mode, PIPE_UNLIMITED_INSTANCES, PIPE_BUFFER_SIZE, PIPE_BUFFER_SIZE, 0
    )


#: CreateFileW flags of the client's end: overlapped like the server's, identification only
PIPE_CLIENT_FLAGS = FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION


def pipe_peer_allowed(peer_sid: str | None, owner_sid: str) -> bool:
    """May a process running as ``peer_sid`` use the control pipe of ``owner_sid``?

    The Windows twin of the Unix socket's peer check (owner or root): the
    owner itself, or LocalSystem. None (the peer's identity could not be
    read: it exited, or it is a protected process) is refused: the check
    fails closed. SIDs compare case-insensitively ("s-1-5-18" is S-1-5-18).
    """
    if not peer_sid:
        return False
    peer = peer_sid.strip().upper()
    return peer in (owner_sid.strip().upper(), LOCAL_SYSTEM_SID)


def key_file_sddl(owner_sid: str) -> str:
    """The control key file's descriptor: owner-only, as mode 0600 is on POSIX.

    Protected (nothing inherited from the directory, whose default ACEs may
    let Administrators or Users read), full access for the owner and
    LocalSystem only; owner and group set explicitly so that a daemon run
    elevated does not hand the file to the Administrators group.
    """
    sid = _sddl_sid(owner_sid)
    return f"O:{sid}G:{sid}D:P(A;;FA;;;{sid})(A;;FA;;;SY)"


def default_key_dir(environ: dict[str, str] | None = None) -> str:
    """Where the control key files of a user's daemons live on Windows.

    A named pipe is not a file, so its key cannot sit beside it as the
    socket's does: ``%LOCALAPPDATA%\\vspfs`` (per user, not roamed), or the
    profile's ``AppData\\Local\\vspfs`` when the variable is missing.
    """
    env = os.environ if environ is None else environ
    base = env.get("LOCALAPPDATA") or ntpath.join(env.get("USERPROFILE") or "C:\\", "AppData", "Local")
    return ntpath.join(base, "vspfs")


def pipe_key_path(pipe_name: str, key_dir: str) -> str:
    """The key file of the daemon listening on ``pipe_name``: ``<key_dir>\\<pipe>.key``.

    The pipe's last component is a valid file name (control_pipe_name keeps
    it to letters, digits, ``.``, ``_`` and ``-``); anything else a user put
    in ``VSPFS_SOCKET`` is mapped to ``_`` so the key stays in ``key_dir``.
    """
    if not is_pipe_name(pipe_name):
        raise UsageError(f"{pipe_name!r} is not a local pipe name such as \\\\.\\pipe\\vspfs")
    leaf = pipe_name.replace("/", "\\")[9:]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", leaf).strip(".") or "pipe"
    return ntpath.join(key_dir, f"{safe}.key")


def control_pipe_name(user: str, instance: str | None = None) -> str:
    """The control channel of a user's daemon: ``\\\\\\\\.\\\\pipe\\\\vspfs-<user>[-<hash>]``.

    One pipe per user (the Unix socket's per-user directory has no pipe
    equivalent: pipes live in one flat namespace), plus a short hash of
    ``instance`` (e.g. the state directory) when several daemons of one user
    run side by side. ``VSPFS_SOCKET`` may name a pipe directly instead.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", user) or "user"
    name = f"vspfs-{safe}"
    if instance:
        name += "-" + hashlib.sha256(instance.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"\\\\.\\pipe\\{name}"


def is_pipe_name(text: str) -> bool:
    """True for ``\\\\\\\\.\\\\pipe\\\\name`` (a local named pipe)."""
    return text.replace("/", "\\").lower().startswith("\\\\.\\pipe\\") and len(text) > 9


def pipe_sddl(owner_sid: str) -> str:
    """The pipe's descriptor: only its owner and SYSTEM, never from the network.

    ``D:P`` (protected: nothing inherited from the pipe namespace's defaults,
    which grant Everyone read); a deny for NETWORK logons first (canonical
    order: deny before allow); full access for the owner and LocalSystem
    (the Unix socket accepts root). Owner and group are the daemon's user,
    so an elevated daemon's pipe does not belong to Administrators.
    """
    sid = _sddl_sid(owner_sid)
    return f"O:{sid}G:{sid}D:P(D;;GA;;;NU)(A;;GA;;;{sid})(A;;GA;;;SY)"


def check_owner_only(sd: bytes, owner_sid: str) -> None:
    """Raise UsageError unless ``sd`` lets only ``owner_sid`` and SYSTEM in.

    The client runs this on the pipe's descriptor before sending its key:
    a pipe planted by another user (who could then collect keys) fails.
    """
    parsed = SecurityDescriptor.from_bytes(sd)
    owner = _sddl_sid(owner_sid)
    allowed = {owner, SID_ALIASES["SY"]}
    if parsed.owner not in allowed:
        raise UsageError(f"the control pipe belongs to {parsed.owner}, not to you: refusing to use it")
    if parsed.dacl is None:
        raise UsageError("the control pipe has no access list (everyone may use it): refusing to use it")
    for ace in parsed.dacl.aces:
        if ace.ace_type == ACCESS_ALLOWED_ACE_TYPE and ace.sid not in allowed:
            raise UsageError(f"the control pipe also admits {ace.sid}: refusing to use it")
        if ace.raw and ace.ace_type != ACCESS_DENIED_ACE_TYPE:
            raise UsageError("the control pipe's access list has entries vspfs cannot check: refusing")


def current_user_sid() -> str:
    """The SID of this process's user (Windows only; untested on Linux by nature).

    Through the token (OpenProcessToken + GetTokenInformation(TokenUser) +
    ConvertSidToStringSidW), not the user name, which is ambiguous across
    domains.
    """
    if sys.platform != "win32":
        raise UsageError("current_user_sid needs Windows")
    import ctypes
    from ctypes import wintypes

    advapi32 = ctypes.windll.advapi32  # type: ignore[attr-defined]
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    token = wintypes.HANDLE()
    if not advapi32.OpenProcessToken(kernel32.GetCurrentProcess(), 0x0008, ctypes.byref(token)):
        raise ctypes.WinError()  # type: ignore[attr-defined]
    try:
        size = wintypes.DWORD()
        advapi32.GetTokenInformation(token, 1, None, 0, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        if not advapi32.GetTokenInformation(token, 1, buf, size, ctypes.byref(size)):
            raise ctypes.WinError()  # type: ignore[attr-defined]
        psid = ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0]
        text = wintypes.LPWSTR()
        if not advapi32.ConvertSidToStringSidW(ctypes.c_void_p(psid), ctypes.byref(text)):
            raise ctypes.WinError()  # type: ignore[attr-defined]
        try:
            return str(text.value)
        finally:
            kernel32.LocalFree(text)
    finally:
        kernel32.CloseHandle(token)


# =============================================================================
# locking
# =============================================================================


def try_lock_exclusive(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False if someone holds it.

    The cache-file rule "a file nobody holds is stale" needs a lock that
    dies with its process: flock on POSIX, LockFileEx on Windows on one byte
    far beyond the end of the file (``portable_io.LOCK_OFFSET``: Windows
    byte locks are mandatory, and a lock on byte 0 would keep others from
    reading the header). Implemented in ``vspfs.portable_io``.
    """
    return portable_io.try_lock_exclusive(fd)


def try_lock_shared(fd: int) -> bool:
    """A shared, non-blocking lock; False if someone holds it exclusively.

    Used to ask "does a live owner hold this file?" without two askers
    seeing each other: flock LOCK_SH on POSIX, LockFileEx without
    LOCKFILE_EXCLUSIVE_LOCK on Windows (same byte as the exclusive lock).
    """
    return portable_io.try_lock_shared(fd)


def unlock(fd: int) -> None:
    """Release :func:`try_lock_exclusive` or :func:`try_lock_shared` (closing
    the file releases it too)."""
    portable_io.unlock(fd)
