"""A POSIX conformance battery for differential testing of file systems.

pjdfstest, the usual suite, is neither packaged for Debian nor on PyPI, and CI
cannot download it; this battery covers the same ground in Python so that CI
can run it. Every check is a generator function taking one empty directory
(its own): the code before its ``yield`` sets the stage, the code after it
acts and *returns a result* built only from values that two correct file
systems agree on -- errno names, sizes, modes, link counts, contents, and
times *relative to each other or to what they were before*, never inode
numbers or absolute timestamps. The runner (:func:`run`) first runs every
setup, then calls a hook (the differential test takes a snapshot there, so
that the actions meet the copy-on-write paths of objects that existed at
snapshot time), then runs every action. Two file systems conform to each
other when :func:`run` gives equal results on both (:func:`differences`).

What is covered is modelled on pjdfstest's directories: open and creat
flags, errno of each operation on missing and wrong-type paths, link counts
after link/unlink/mkdir/rmdir/rename seen through every name, rename and
renameat2 flags, utimensat with UTIME_NOW/UTIME_OMIT, parent timestamps,
chmod/chown as root and as an unprivileged user (a child process running as
uid/gid 65534, so the directory given to :func:`run` and its ancestors must
be searchable by others), sticky and set-id bits, truncate/ftruncate,
symlinks, mknod/mkfifo, extended attributes, large and sparse offsets,
255/256-byte names and paths near PATH_MAX. ``docs/conformance.md`` lists
it against pjdfstest.

Usable as a script: ``python tests/posix_battery.py DIR`` prints the results
as JSON lines, ``--list`` the check names.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

__all__ = ["CHECKS", "NOBODY", "differences", "run"]

Check = Callable[[str], Generator[None, None, Any]]

#: every check, by name, in definition order
CHECKS: dict[str, Check] = {}

#: the unprivileged user and group the permission checks run as
NOBODY = 65534
#: the umask the battery runs with (restored afterwards)
UMASK = 0o022
#: long enough for the kernel to give a later change a different timestamp
#: (the coarse clock advances once per jiffy, 1-10 ms)
TICK = 0.02
#: the times setups give files so that a later change is always visible
OLD_ATIME = 1_000_000_000_111_111_111
OLD_MTIME = 1_100_000_000_222_222_222
NAME_MAX = 255
PATH_MAX = 4096

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def check(fn: Check) -> Check:
    name = fn.__name__.removeprefix("check_")
    assert name not in CHECKS, name
    CHECKS[name] = fn
    return fn


# ------------------------------------------------------------- syscalls


def _raise(path: str | bytes = "") -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), os.fsdecode(path) if path else None)


def renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags)) != 0:
        _raise(old)


def _ts(value: int | tuple[int, int]) -> _Timespec:
    if isinstance(value, tuple):
        return _Timespec(*value)
    if value in (UTIME_NOW, UTIME_OMIT):
        return _Timespec(0, value)
    return _Timespec(*divmod(value, 1_000_000_000))


def utimensat(path: str, times: tuple[Any, Any] | None, *, follow: bool = True) -> None:
    """utimensat(2): ``times`` None (both now), or (atime, mtime) as ns, markers or (sec, nsec)."""
    buf = None if times is None else (_Timespec * 2)(_ts(times[0]), _ts(times[1]))
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), buf, flags) != 0:
        _raise(path)


def getxattr_size(path: str, name: str, size: int) -> int:
    """getxattr(2) with a buffer of ``size`` bytes: the length it returns."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.getxattr(os.fsencode(path), name.encode(), buf if size else None, ctypes.c_size_t(size))
    if n < 0:
        _raise(path)
    return n


def listxattr_size(path: str, size: int) -> int:
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.listxattr(os.fsencode(path), buf if size else None, ctypes.c_size_t(size))
    if n < 0:
        _raise(path)
    return n


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, ctypes.c_int(mode), ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
        _raise()


# -------------------------------------------------------------- helpers


def E(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """'ok' (or what ``fn`` returned, if not None) or the errno name it failed with."""
    try:
        value = fn(*args, **kwargs)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok" if value is None else value


def touch(path: str, data: bytes = b"", mode: int = 0o644) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)
    return path


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def lst(path: str) -> os.stat_result:
    return os.lstat(path)


def nlink(*paths: str) -> list[int]:
    return [os.lstat(p).st_nlink for p in paths]


def mode(path: str) -> str:
    return oct(stat.S_IMODE(os.lstat(path).st_mode))


def ftype(path: str) -> str:
    m = os.lstat(path).st_mode
    for name in ("REG", "DIR", "LNK", "FIFO", "CHR", "BLK", "SOCK"):
        if getattr(stat, f"S_IS{name}")(m):
            return name
    return "?"


def times(path: str, follow: bool = False) -> tuple[int, int, int]:
    st = os.stat(path, follow_symlinks=follow)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def age(path: str, follow: bool = False) -> None:
    """Give ``path`` old atime and mtime (its ctime becomes now)."""
    os.utime(path, ns=(OLD_ATIME, OLD_MTIME), follow_symlinks=follow)


def delta(before: tuple[int, int, int], after: tuple[int, int, int]) -> str:
    """Which of atime, mtime, ctime changed: e.g. 'a.c', '-m-', '---'."""
    return "".join(flag if b != a else "-" for flag, b, a in zip("amc", before, after, strict=True))


def tick() -> None:
    time.sleep(TICK)


def same_ino(*paths: str) -> bool:
    return len({os.lstat(p).st_ino for p in paths}) == 1


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def subs(path: str, *names: str) -> list[str]:
    return [os.path.join(path, n) for n in names]


# The unprivileged child: runs a list of operations as NOBODY and prints one
# result per operation ('ok', a value, or an errno name) as JSON.
_CHILD = r"""
import ctypes, errno, json, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
class TS(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
def fail(p):
    e = ctypes.get_errno(); raise OSError(e, os.strerror(e), p)
def op_open(p, flags, mode=0o644):
    os.close(os.open(p, flags, mode))
def op_write(p, data):
    fd = os.open(p, os.O_WRONLY)
    try: os.write(fd, data.encode())
    finally: os.close(fd)
def op_utimens(p, t, follow=True):
    buf = None if t is None else (TS * 2)(*(TS(*x) for x in t))
    if libc.utimensat(-100, os.fsencode(p), buf, 0 if follow else 0x100) != 0: fail(p)
def op_rename(a, b, flags=0):
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), ctypes.c_uint(flags)) != 0: fail(a)
def op_stat(p, field):
    st = os.lstat(p)
    return oct(stat.S_IMODE(st.st_mode)) if field == "mode" else getattr(st, field)
OPS = {
    "open": op_open, "write": op_write, "utimens": op_utimens, "rename": op_rename, "stat": op_stat,
    "chmod": os.chmod, "chown": os.chown, "lchown": os.lchown, "unlink": os.unlink,
    "rmdir": os.rmdir, "mkdir": os.mkdir, "link": os.link, "symlink": os.symlink,
    "truncate": os.truncate, "mknod": os.mknod, "mkfifo": os.mkfifo,
    "setxattr": lambda p, n, v, f=0: os.setxattr(p, n, v.encode(), f),
    "getxattr": lambda p, n: os.getxattr(p, n).decode(),
    "removexattr": os.removexattr, "listdir": lambda p: sorted(os.listdir(p)),
    "read": lambda p: open(p, "rb").read().decode(),
}
out = []
for name, *args in json.loads(sys.stdin.read()):
    try:
        value = OPS[name](*args)
        out.append("ok" if value is None else value)
    except OSError as exc:
        out.append(errno.errorcode.get(exc.errno, str(exc.errno)))
print(json.dumps(out))
"""


_python_for_nobody: list[str] = []


def python_for_nobody() -> str | None:
    """A Python interpreter that NOBODY may run (a virtualenv under /root is not one)."""
    if not _python_for_nobody:
        for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
            try:
                done = subprocess.run(
                    [candidate, "-I", "-c", "pass"],
                    user=NOBODY,
                    group=NOBODY,
                    extra_groups=[],
                    cwd="/",
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
            except OSError:
                continue
            if done.returncode == 0:
                _python_for_nobody.append(candidate)
                break
        else:
            _python_for_nobody.append("")
    return _python_for_nobody[0] or None


def nobody(*ops: tuple[Any, ...]) -> list[Any]:
    """Run ``ops`` (each ``(name, *args)``, paths absolute) as uid/gid NOBODY; one result each."""
    python = python_for_nobody()
    if python is None:
        return ["skipped: no Python interpreter that uid 65534 may run"]
    done = subprocess.run(
        [python, "-I", "-c", _CHILD],
        input=json.dumps(ops),
        capture_output=True,
        text=True,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        umask=UMASK,
        cwd="/",
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return [f"child failed: {done.stderr.strip().splitlines()[-1:]}"]
    return json.loads(done.stdout)


def world(path: str, perm: int = 0o777) -> str:
    """A directory others may work in (the permission checks need it)."""
    os.chmod(path, perm)
    return path


# ================================================================ open


@check
def check_open_creat_mode(d: str) -> Any:
    yield
    out = []
    for name, m in (("a", 0o640), ("b", 0o777), ("c", 0o4755), ("d", 0o2755), ("e", 0o1644), ("f", 0)):
        fd = os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, m)
        os.close(fd)
        st = os.stat(os.path.join(d, name))
        out.append((name, mode(os.path.join(d, name)), st.st_uid == os.getuid(), st.st_size, st.st_nlink))
    return out


@check
def check_open_creat_times(d: str) -> Any:
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    age(sub)
    yield
    before = times(sub)
    os.close(os.open(os.path.join(sub, "new"), os.O_CREAT | os.O_WRONLY, 0o644))
    a, m, c = times(os.path.join(sub, "new"))
    return {"parent": delta(before, times(sub)), "new a=m=c": a == m == c}


@check
def check_open_creat_existing_keeps_times(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"data")
    age(d)
    age(f)
    yield
    pb, fb = times(d), times(f)
    os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o600))
    return {"parent": delta(pb, times(d)), "file": delta(fb, times(f)), "mode": mode(f), "data": read(f)}


@check
def check_open_excl(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("missing", os.path.join(d, "dangling"))
    os.symlink("f", os.path.join(d, "good"))
    yield
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    out = {
        n: E(lambda p: os.close(os.open(p, flags, 0o644)), os.path.join(d, n)) for n in sorted(os.listdir(d))
    }
    out["new"] = E(lambda p: os.close(os.open(p, flags, 0o644)), os.path.join(d, "new"))
    out["missing after"] = os.path.lexists(os.path.join(d, "missing"))
    out["f size"] = os.stat(f).st_size
    return out


@check
def check_open_creat_through_dangling_symlink(d: str) -> Any:
    os.symlink("target", os.path.join(d, "link"))
    os.symlink("nodir/target", os.path.join(d, "link2"))
    yield
    r1 = E(lambda: os.close(os.open(os.path.join(d, "link"), os.O_CREAT | os.O_WRONLY, 0o600)))
    r2 = E(lambda: os.close(os.open(os.path.join(d, "link2"), os.O_CREAT | os.O_WRONLY, 0o600)))
    return [r1, r2, ftype(os.path.join(d, "target")), mode(os.path.join(d, "target")), sorted(os.listdir(d))]


@check
def check_open_trunc(d: str) -> Any:
    paths = [touch(os.path.join(d, n), b"x" * 100_000) for n in ("w", "rw", "empty")]
    os.truncate(paths[2], 0)
    for p in paths:
        age(p)
    yield
    out = []
    for p, flags in zip(paths, (os.O_WRONLY, os.O_RDWR, os.O_WRONLY), strict=True):
        before = times(p)
        os.close(os.open(p, flags | os.O_TRUNC))
        out.append((os.path.basename(p), os.stat(p).st_size, delta(before, times(p))))
    return out


@check
def check_open_rdonly_trunc(d: str) -> Any:
    """Linux truncates on O_RDONLY|O_TRUNC (POSIX leaves it unspecified) and needs write permission."""
    f = touch(os.path.join(d, "f"), b"y" * 70_000)
    g = touch(os.path.join(d, "g"), b"z" * 10, 0o444)
    world(d)
    yield
    r = E(lambda: os.close(os.open(f, os.O_RDONLY | os.O_TRUNC)))
    as_nobody = nobody(("open", g, os.O_RDONLY | os.O_TRUNC))
    return [r, os.stat(f).st_size, as_nobody, os.stat(g).st_size]


@check
def check_open_append(d: str) -> Any:
    f = touch(os.path.join(d, "log"), b"start\n")
    yield
    a = os.open(f, os.O_WRONLY | os.O_APPEND)
    b = os.open(f, os.O_RDWR | os.O_APPEND)
    try:
        os.write(a, b"one\n")
        os.write(b, b"two\n")
        os.pwrite(a, b"three\n", 0)
        pos = os.lseek(b, 0, os.SEEK_CUR)
    finally:
        os.close(a)
        os.close(b)
    return [read(f), pos]


@check
def check_open_errors(d: str) -> Any:
    f = touch(os.path.join(d, "file"), b"1")
    os.mkdir(os.path.join(d, "dir"))
    os.mkfifo(os.path.join(d, "fifo"))
    os.symlink("file", os.path.join(d, "sym"))
    os.symlink("loop", os.path.join(d, "loop"))
    yield

    def op(rel: str, flags: int) -> Any:
        return E(lambda: os.close(os.open(os.path.join(d, rel), flags, 0o644)))

    cases = [
        ("missing", os.O_RDONLY),
        ("missing/x", os.O_RDONLY),
        ("missing/x", os.O_CREAT | os.O_WRONLY),
        ("file/x", os.O_RDONLY),
        ("file/x", os.O_CREAT | os.O_WRONLY),
        ("file/", os.O_RDONLY),
        ("new/", os.O_CREAT | os.O_WRONLY),
        ("dir", os.O_WRONLY),
        ("dir", os.O_RDWR),
        ("dir", os.O_RDONLY),
        ("dir", os.O_RDONLY | os.O_DIRECTORY),
        ("dir", os.O_CREAT | os.O_WRONLY),
        ("file", os.O_DIRECTORY),
        ("sym", os.O_RDONLY | os.O_NOFOLLOW),
        ("sym", os.O_RDONLY),
        ("loop", os.O_RDONLY),
        ("fifo", os.O_WRONLY | os.O_NONBLOCK),
        ("fifo", os.O_RDONLY | os.O_NONBLOCK),
        ("", os.O_RDONLY),
    ]
    out = [(rel, flags, op(rel, flags)) for rel, flags in cases]
    out.append(("empty string", E(lambda: os.open("", os.O_RDONLY))))
    out.append(sorted(os.listdir(d)))
    out.append(read(f))
    return out


@check
def check_open_mode_zero_as_root(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"secret", 0)
    yield
    fd = os.open(f, os.O_RDWR)
    try:
        os.write(fd, b"S")
        data = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    return [data, mode(f)]


@check
def check_open_permissions_nobody(d: str) -> Any:
    world(d)
    pub = touch(os.path.join(d, "pub"), b"p", 0o644)
    priv = touch(os.path.join(d, "priv"), b"q", 0o600)
    wr = touch(os.path.join(d, "wr"), b"w", 0o622)
    closed = os.path.join(d, "closed")
    os.mkdir(closed, 0o700)
    touch(os.path.join(closed, "inner"))
    ro = os.path.join(d, "ro")
    os.mkdir(ro, 0o755)
    yield
    return nobody(
        ("open", pub, os.O_RDONLY),
        ("open", pub, os.O_WRONLY),
        ("open", priv, os.O_RDONLY),
        ("open", wr, os.O_WRONLY),
        ("open", wr, os.O_RDONLY),
        ("open", os.path.join(closed, "inner"), os.O_RDONLY),
        ("open", os.path.join(ro, "new"), os.O_CREAT | os.O_WRONLY, 0o644),
        ("open", os.path.join(d, "mine"), os.O_CREAT | os.O_WRONLY, 0o666),
        ("stat", os.path.join(d, "mine"), "st_uid"),
        ("stat", os.path.join(d, "mine"), "st_gid"),
        ("stat", os.path.join(d, "mine"), "mode"),
        ("listdir", closed),
    )


@check
def check_setgid_directory_inheritance(d: str) -> Any:
    world(d)
    sg = os.path.join(d, "sg")
    os.mkdir(sg)
    os.chown(sg, -1, 4242)
    os.chmod(sg, 0o2777)
    yield
    touch(os.path.join(sg, "byroot"))
    os.mkdir(os.path.join(sg, "subdir"), 0o755)
    kid = nobody(
        ("open", os.path.join(sg, "bynobody"), os.O_CREAT | os.O_WRONLY, 0o2755),
        ("stat", os.path.join(sg, "bynobody"), "st_gid"),
        ("stat", os.path.join(sg, "bynobody"), "mode"),
        ("mkdir", os.path.join(sg, "nobodydir"), 0o755),
        ("stat", os.path.join(sg, "nobodydir"), "st_gid"),
        ("stat", os.path.join(sg, "nobodydir"), "mode"),
    )
    return [
        os.stat(os.path.join(sg, "byroot")).st_gid,
        os.stat(os.path.join(sg, "subdir")).st_gid,
        mode(os.path.join(sg, "subdir")),
        kid,
    ]


# ======================================================== read / write


@check
def check_write_times(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"0123456789" * 10_000)
    age(f)
    yield
    before = times(f)
    fd = os.open(f, os.O_WRONLY)
    try:
        os.pwrite(fd, b"ABC", 70_000)
    finally:
        os.close(fd)
    after = times(f)
    return [delta(before, after), after[1] == after[2], os.stat(f).st_size]


@check
def check_read_atime_relatime(d: str) -> Any:
    """relatime: a read updates atime only if it is not newer than mtime/ctime."""
    f = touch(os.path.join(d, "stale"), b"a" * 5000)
    g = touch(os.path.join(d, "fresh"), b"b" * 5000)
    age(f)
    future = time.time_ns() + 3600 * 10**9
    yield
    os.utime(g, ns=(future, OLD_MTIME))
    fb, gb = times(f), times(g)
    read(f)
    read(g)
    return [delta(fb, times(f)), delta(gb, times(g))]


@check
def check_write_beyond_eof(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"head")
    yield
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"tail", 1 << 20)
        hole = os.pread(fd, 16, 1000)
        tail = os.pread(fd, 16, (1 << 20) - 2)
        past = os.pread(fd, 16, 2 << 20)
    finally:
        os.close(fd)
    return [os.stat(f).st_size, hole, tail, past]


@check
def check_write_read_large_chunks(d: str) -> Any:
    data = bytes(range(256)) * 4096 * 3  # 3 MiB, many 64 KiB chunks
    f = touch(os.path.join(d, "f"), data)
    yield
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"\x00" * 200_000, 100_000)
        os.pwrite(fd, b"\xff" * 5, len(data) - 2)
    finally:
        os.close(fd)
    got = read(f)
    return [len(got), digest(got), digest(data)]


# ========================================================= truncate


@check
def check_truncate_sizes(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"0123456789")
    yield
    out = []
    for size in (1000, 5, 0, 70_000, 70_000):
        os.truncate(f, size)
        got = read(f)
        out.append((size, os.stat(f).st_size, got[:6], got.count(0)))
    return out


@check
def check_truncate_times(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"x" * 100)
    g = touch(os.path.join(d, "g"), b"x" * 100)
    age(f)
    age(g)
    yield
    out = []
    for size in (200, 200, 50):
        before = times(f)
        os.truncate(f, size)
        out.append(("truncate", size, delta(before, times(f))))
        tick()
    fd = os.open(g, os.O_RDWR)
    try:
        for size in (200, 200, 50):
            before = times(g)
            os.ftruncate(fd, size)
            out.append(("ftruncate", size, delta(before, times(g))))
            tick()
    finally:
        os.close(fd)
    return out


@check
def check_truncate_errors(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"abc")
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("f", os.path.join(d, "sym"))
    os.mkfifo(os.path.join(d, "fifo"))
    yield
    out = [
        E(os.truncate, f, -1),
        E(os.truncate, os.path.join(d, "dir"), 0),
        E(os.truncate, os.path.join(d, "missing"), 0),
        E(os.truncate, os.path.join(d, "f/x"), 0),
        E(os.truncate, os.path.join(d, "fifo"), 0),
        E(os.truncate, os.path.join(d, "sym"), 1),
        os.stat(f).st_size,
        ftype(os.path.join(d, "sym")),
    ]
    fd = os.open(f, os.O_RDONLY)
    try:
        out.append(E(os.ftruncate, fd, 0))
    finally:
        os.close(fd)
    fd = os.open(f, os.O_WRONLY)
    try:
        out.append(E(os.ftruncate, fd, -5))
    finally:
        os.close(fd)
    out.append(os.stat(f).st_size)
    return out


@check
def check_truncate_permissions_nobody(d: str) -> Any:
    world(d)
    ro = touch(os.path.join(d, "ro"), b"r" * 10, 0o644)
    rw = touch(os.path.join(d, "rw"), b"w" * 10, 0o666)
    yield
    kid = nobody(("truncate", ro, 1), ("truncate", rw, 3), ("truncate", rw, 100))
    return [kid, os.stat(ro).st_size, os.stat(rw).st_size]


@check
def check_ftruncate_unlinked_open_file(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"q" * 1000)
    yield
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        os.ftruncate(fd, 100)
        os.pwrite(fd, b"still here", 10)
        st = os.fstat(fd)
        data = os.pread(fd, 30, 0)
    finally:
        os.close(fd)
    return [st.st_size, st.st_nlink, data, sorted(os.listdir(d))]


@check
def check_unlinked_open_file_is_not_listed(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"gone")
    os.mkdir(os.path.join(d, "sub"))
    g = touch(os.path.join(d, "sub", "g"), b"gone too")
    yield
    fd = os.open(f, os.O_RDONLY)
    gd = os.open(g, os.O_RDONLY)
    try:
        os.unlink(f)
        os.unlink(g)
        out = [sorted(os.listdir(d)), E(os.rmdir, os.path.join(d, "sub"))]
    finally:
        os.close(fd)
        os.close(gd)
    out.append(sorted(os.listdir(d)))
    return out


@check
def check_truncate_sparse_2_33(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"start")
    yield
    os.truncate(f, 1 << 33)
    st = os.stat(f)
    fd = os.open(f, os.O_RDONLY)
    try:
        tail = os.pread(fd, 20, (1 << 33) - 10)
        head = os.pread(fd, 5, 0)
    finally:
        os.close(fd)
    return [st.st_size, st.st_blocks * 512 < (1 << 20), tail, head]


# ============================================================== link


@check
def check_link_counts(d: str) -> Any:
    """Link counts seen through every name after each step (stale attribute caches fail here)."""
    os.mkdir(os.path.join(d, "sub"))
    a = touch(os.path.join(d, "a"), b"A")
    b, c = os.path.join(d, "b"), os.path.join(d, "sub", "c")
    yield
    out = [nlink(a)]
    os.link(a, b)
    out.append(nlink(a, b))
    os.link(b, c)
    out.append(nlink(a, b, c))
    os.unlink(a)
    out.append(nlink(b, c))
    os.link(c, a)
    out.append(nlink(a, b, c))
    os.unlink(b)
    os.unlink(c)
    out.append(nlink(a))
    out.append(same_ino(a))
    return out


@check
def check_link_counts_preexisting(d: str) -> Any:
    """Like link_counts, on a group of names that existed before the actions."""
    names = subs(d, "a", "b", "c", "d")
    touch(names[0], b"group")
    for n in names[1:]:
        os.link(names[0], n)
    yield
    out = [nlink(*names)]
    os.unlink(names[1])
    out.append(nlink(names[0], *names[2:]))
    os.rename(names[2], os.path.join(d, "moved"))
    out.append(nlink(names[0], os.path.join(d, "moved"), names[3]))
    touch(os.path.join(d, "other"), b"o")
    os.rename(os.path.join(d, "other"), names[3])  # replaces one name of the group
    out.append(nlink(names[0], os.path.join(d, "moved"), names[3]))
    os.link(names[0], names[1])
    out.append(nlink(names[0], names[1], os.path.join(d, "moved")))
    return out


@check
def check_link_shares_attributes(d: str) -> Any:
    a = touch(os.path.join(d, "a"), b"A" * 10)
    b, c = os.path.join(d, "b"), os.path.join(d, "c")
    os.link(a, b)
    os.link(a, c)
    yield
    out = []
    os.chmod(b, 0o600)
    out.append([mode(p) for p in (a, b, c)])
    fd = os.open(a, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"more")
    os.close(fd)
    out.append([os.stat(p).st_size for p in (a, b, c)])
    os.utime(c, ns=(OLD_ATIME, OLD_MTIME))
    out.append([times(p)[:2] == (OLD_ATIME, OLD_MTIME) for p in (a, b, c)])
    os.setxattr(a, "user.k", b"v")
    out.append([os.getxattr(p, "user.k") for p in (a, b, c)])
    os.chown(c, 123, 456)
    out.append([(os.stat(p).st_uid, os.stat(p).st_gid) for p in (a, b, c)])
    out.append(len({times(p) for p in (a, b, c)}))
    return out


@check
def check_link_times(d: str) -> Any:
    src, dst = os.path.join(d, "src"), os.path.join(d, "dst")
    os.mkdir(src)
    os.mkdir(dst)
    f = touch(os.path.join(src, "f"))
    for p in (src, dst, f):
        age(p)
    yield
    before = [times(p) for p in (src, dst, f)]
    os.link(f, os.path.join(dst, "g"))
    return [delta(b, times(p)) for b, p in zip(before, (src, dst, f), strict=True)]


@check
def check_link_errors(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    touch(os.path.join(d, "g"))
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("f", os.path.join(d, "sym"))
    os.symlink("missing", os.path.join(d, "dangling"))
    age(d)
    yield
    before = times(d)
    j = os.path.join
    out = [
        E(os.link, f, j(d, "g")),
        E(os.link, f, j(d, "dir")),
        E(os.link, f, j(d, "sym")),
        E(os.link, j(d, "missing"), j(d, "x")),
        E(os.link, j(d, "dir"), j(d, "x")),
        E(os.link, f, j(d, "missing", "x")),
        E(os.link, f, j(d, "f", "x")),
        E(os.link, j(d, "f", "x"), j(d, "y")),
        E(os.link, f, j(d, "n" * (NAME_MAX + 1))),
        E(os.link, j(d, "dangling"), j(d, "dl"), follow_symlinks=True),
        sorted(os.listdir(d)),
        delta(before, times(d)),
        nlink(f),
    ]
    return out


@check
def check_link_symlink_and_special(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    s = os.path.join(d, "sym")
    os.symlink("f", s)
    os.mkfifo(os.path.join(d, "fifo"))
    os.mknod(os.path.join(d, "chr"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    yield
    os.link(s, os.path.join(d, "sym2"))  # linkat without AT_SYMLINK_FOLLOW: the link itself
    os.link(s, os.path.join(d, "target2"), follow_symlinks=True)
    os.link(os.path.join(d, "fifo"), os.path.join(d, "fifo2"))
    os.link(os.path.join(d, "chr"), os.path.join(d, "chr2"))
    return [
        (n, ftype(os.path.join(d, n)), nlink(os.path.join(d, n))[0])
        for n in ("sym", "sym2", "target2", "fifo2", "chr2")
    ] + [nlink(f), os.readlink(os.path.join(d, "sym2"))]


@check
def check_link_protected_hardlinks_nobody(d: str) -> Any:
    world(d)
    theirs = touch(os.path.join(d, "theirs"), b"t", 0o600)
    public = touch(os.path.join(d, "public"), b"p", 0o666)
    yield
    return nobody(
        ("link", theirs, os.path.join(d, "l1")),
        ("link", public, os.path.join(d, "l2")),
        ("open", os.path.join(d, "own"), os.O_CREAT | os.O_WRONLY, 0o600),
        ("link", os.path.join(d, "own"), os.path.join(d, "l3")),
        ("stat", os.path.join(d, "l3"), "st_nlink"),
    )


# ============================================================ unlink


@check
def check_unlink_basic(d: str) -> Any:
    a = touch(os.path.join(d, "a"), b"A")
    b = os.path.join(d, "b")
    os.link(a, b)
    solo = touch(os.path.join(d, "solo"))
    age(d)
    age(a)
    yield
    pd, fb = times(d), times(b)
    os.unlink(a)
    out = [delta(pd, times(d)), delta(fb, times(b)), nlink(b), os.path.lexists(a)]
    tick()
    pd = times(d)
    os.unlink(solo)
    out += [delta(pd, times(d)), sorted(os.listdir(d))]
    return out


@check
def check_unlink_errors(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("dir", os.path.join(d, "dirlink"))
    age(d)
    yield
    before = times(d)
    j = os.path.join
    out = [
        E(os.unlink, j(d, "missing")),
        E(os.unlink, j(d, "dir")),
        E(os.unlink, j(d, "f/")),
        E(os.unlink, j(d, "f", "x")),
        E(os.unlink, j(d, "missing", "x")),
        E(os.unlink, j(d, "dirlink/")),
        E(os.unlink, j(d, "n" * (NAME_MAX + 1))),
        delta(before, times(d)),
    ]
    out.append(E(os.unlink, j(d, "dirlink")))
    out.append(sorted(os.listdir(d)))
    out.append(nlink(f))
    return out


@check
def check_unlink_open_file(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"keep me")
    g = os.path.join(d, "g")
    os.link(f, g)
    yield
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        st1 = os.fstat(fd)
        os.unlink(g)
        st2 = os.fstat(fd)
        os.pwrite(fd, b"K", 0)
        data = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    return [st1.st_nlink, st2.st_nlink, data, os.listdir(d)]


@check
def check_unlink_sticky_nobody(d: str) -> Any:
    world(d, 0o1777)
    touch(os.path.join(d, "roots"), b"r", 0o666)
    os.mkdir(os.path.join(d, "rootdir"))
    open_dir = os.path.join(d, "open")
    os.mkdir(open_dir)
    world(open_dir)
    touch(os.path.join(open_dir, "roots"), b"r", 0o666)
    yield
    j = os.path.join
    return nobody(
        ("unlink", j(d, "roots")),
        ("rename", j(d, "roots"), j(d, "mine")),
        ("rmdir", j(d, "rootdir")),
        ("open", j(d, "own"), os.O_CREAT | os.O_WRONLY, 0o644),
        ("rename", j(d, "own"), j(d, "own2")),
        ("unlink", j(d, "own2")),
        ("unlink", j(open_dir, "roots")),
        ("listdir", d),
    )


@check
def check_unlink_permissions_nobody(d: str) -> Any:
    locked = os.path.join(d, "locked")
    os.mkdir(locked, 0o755)
    touch(os.path.join(locked, "f"), b"", 0o666)
    yield
    return nobody(
        ("unlink", os.path.join(locked, "f")),
        ("rename", os.path.join(locked, "f"), os.path.join(locked, "g")),
        ("mkdir", os.path.join(locked, "sub")),
        ("listdir", locked),
    )


# ====================================================== mkdir / rmdir


@check
def check_mkdir_basic(d: str) -> Any:
    age(d)
    nl = os.stat(d).st_nlink
    yield
    before = times(d)
    out = []
    for name, m in (("a", 0o755), ("b", 0o777), ("c", 0o1777), ("e", 0o2755), ("f", 0), ("g", 0o7777)):
        p = os.path.join(d, name)
        os.mkdir(p, m)
        a, mt, c = times(p)
        out.append((name, mode(p), nlink(p)[0], a == mt == c, os.stat(p).st_uid == os.getuid()))
    out.append(delta(before, times(d)))
    out.append(os.stat(d).st_nlink - nl)
    return out


@check
def check_mkdir_errors(d: str) -> Any:
    touch(os.path.join(d, "file"))
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("dir", os.path.join(d, "sym"))
    os.symlink("nothing", os.path.join(d, "dangling"))
    os.mkfifo(os.path.join(d, "fifo"))
    age(d)
    yield
    before = times(d)
    j = os.path.join
    out = [
        (n, E(os.mkdir, j(d, n)))
        for n in ("file", "dir", "sym", "dangling", "fifo", "missing/x", "file/x", "n" * (NAME_MAX + 1))
    ]
    out.append(("trailing slash", E(os.mkdir, j(d, "new/"))))
    out.append(("dot", E(os.mkdir, j(d, "."))))
    out.append(delta(before, times(d)))
    out.append(sorted(os.listdir(d)))
    return out


@check
def check_rmdir_basic(d: str) -> Any:
    for n in ("a", "b", "c"):
        os.mkdir(os.path.join(d, n))
    age(d)
    yield
    nl0 = os.stat(d).st_nlink
    before = times(d)
    os.rmdir(os.path.join(d, "a"))
    out = [os.stat(d).st_nlink - nl0, delta(before, times(d))]
    os.rmdir(os.path.join(d, "b/"))
    out.append(os.stat(d).st_nlink - nl0)
    out.append(sorted(os.listdir(d)))
    return out


@check
def check_rmdir_errors(d: str) -> Any:
    full = os.path.join(d, "full")
    os.mkdir(full)
    touch(os.path.join(full, "x"))
    touch(os.path.join(d, "file"))
    os.mkdir(os.path.join(d, "empty"))
    os.symlink("empty", os.path.join(d, "sym"))
    age(d)
    yield
    before = times(d)
    j = os.path.join
    out = [
        E(os.rmdir, full),
        E(os.rmdir, j(d, "file")),
        E(os.rmdir, j(d, "missing")),
        E(os.rmdir, j(d, "file", "x")),
        E(os.rmdir, j(d, "sym")),
        E(os.rmdir, j(d, "empty", ".")),
        E(os.rmdir, j(d, "empty", "..")),
        E(os.rmdir, j(d, "n" * (NAME_MAX + 1))),
        delta(before, times(d)),
        sorted(os.listdir(d)),
        nlink(full, j(d, "empty")),
    ]
    return out


@check
def check_directory_link_counts(d: str) -> Any:
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    os.mkdir(a)
    os.mkdir(b)
    for i in range(5):
        os.mkdir(os.path.join(a, f"s{i}"))
    touch(os.path.join(a, "file"))
    yield
    out = [nlink(d, a, b)]
    os.rename(os.path.join(a, "s0"), os.path.join(b, "s0"))
    out.append(nlink(d, a, b))
    os.rename(os.path.join(a, "file"), os.path.join(b, "file"))
    out.append(nlink(d, a, b))
    os.rmdir(os.path.join(a, "s1"))
    os.mkdir(os.path.join(b, "new"))
    out.append(nlink(d, a, b))
    out.append(os.stat(os.path.join(b, "s0", "..")).st_ino == os.stat(b).st_ino)
    out.append(os.stat(os.path.join(d, ".")).st_ino == os.stat(d).st_ino)
    return out


@check
def check_rmdir_sticky_nobody(d: str) -> Any:
    world(d, 0o1777)
    os.mkdir(os.path.join(d, "roots"), 0o777)
    yield
    return nobody(
        ("rmdir", os.path.join(d, "roots")),
        ("mkdir", os.path.join(d, "mine")),
        ("rmdir", os.path.join(d, "mine")),
        ("listdir", d),
    )


# ======================================================= mknod / fifo


@check
def check_mkfifo(d: str) -> Any:
    age(d)
    yield
    before = times(d)
    p = os.path.join(d, "fifo")
    os.mkfifo(p, 0o640)
    out = [ftype(p), mode(p), nlink(p), os.stat(p).st_size, delta(before, times(d))]
    out.append(E(os.mkfifo, p))
    out.append(E(os.mkfifo, os.path.join(d, "missing", "f")))
    a, m, c = times(p)
    out.append(a == m == c)
    return out


@check
def check_mknod_types(d: str) -> Any:
    yield
    out = []
    specs = [
        ("fifo", stat.S_IFIFO | 0o600, 0),
        ("chr", stat.S_IFCHR | 0o620, os.makedev(1, 3)),
        ("blk", stat.S_IFBLK | 0o640, os.makedev(7, 200)),
        ("sock", stat.S_IFSOCK | 0o755, 0),
        ("reg", stat.S_IFREG | 0o604, 0),
        ("zero", 0o644, 0),
    ]
    for name, m, dev in specs:
        p = os.path.join(d, name)
        r = E(os.mknod, p, m, dev)
        if r == "ok":
            st = os.lstat(p)
            out.append((name, ftype(p), mode(p), os.major(st.st_rdev), os.minor(st.st_rdev), st.st_size))
        else:
            out.append((name, r))
    out.append(("dir", E(os.mknod, os.path.join(d, "dir"), stat.S_IFDIR | 0o755)))
    out.append(("exists", E(os.mknod, os.path.join(d, "chr"), stat.S_IFIFO | 0o600)))
    out.append(("bad type", E(os.mknod, os.path.join(d, "bad"), 0o170000 | 0o600)))
    out.append(sorted(os.listdir(d)))
    return out


@check
def check_mknod_nobody(d: str) -> Any:
    world(d)
    yield
    j = os.path.join
    return nobody(
        ("mknod", j(d, "chr"), stat.S_IFCHR | 0o600, os.makedev(1, 3)),
        ("mknod", j(d, "blk"), stat.S_IFBLK | 0o600, os.makedev(7, 0)),
        ("mkfifo", j(d, "fifo"), 0o666),
        ("stat", j(d, "fifo"), "mode"),
        ("stat", j(d, "fifo"), "st_uid"),
        ("listdir", d),
    )


@check
def check_device_nodes_work(d: str) -> Any:
    """Device nodes in the tree work (a mount with nodev refuses to open them)."""
    os.mknod(os.path.join(d, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(os.path.join(d, "zero"), stat.S_IFCHR | 0o666, os.makedev(1, 5))
    yield

    def rw() -> bytes:
        fd = os.open(os.path.join(d, "null"), os.O_WRONLY)
        try:
            os.write(fd, b"into the void")
        finally:
            os.close(fd)
        fd = os.open(os.path.join(d, "zero"), os.O_RDONLY)
        try:
            return os.read(fd, 4)
        finally:
            os.close(fd)

    return E(rw)


@check
def check_setid_programs_run_setid(d: str) -> Any:
    """A set-user-ID/set-group-ID program gets its owner's ids (a nosuid mount drops them)."""
    world(d)
    source = next((p for p in ("/usr/bin/id", "/bin/id") if os.path.exists(p)), None)
    if source is not None:
        with open(source, "rb") as src, open(os.path.join(d, "id"), "wb") as dst:
            dst.write(src.read())
        os.chown(os.path.join(d, "id"), 0, 4242)
        os.chmod(os.path.join(d, "id"), 0o6755)
    yield
    if source is None:
        return "skipped: no id program"
    out = []
    for flag in ("-u", "-g"):
        done = subprocess.run(
            [os.path.join(d, "id"), flag],
            capture_output=True,
            text=True,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
            timeout=60,
            check=False,
        )
        out.append((flag, done.returncode, done.stdout.strip()))
    return [*out, mode(os.path.join(d, "id"))]


# ============================================================ symlink


@check
def check_symlink_basic(d: str) -> Any:
    touch(os.path.join(d, "target"), b"data")
    age(d)
    yield
    before = times(d)
    s = os.path.join(d, "link")
    os.symlink("target", s)
    st = os.lstat(s)
    out = [
        ftype(s),
        mode(s),
        st.st_size,
        st.st_nlink,
        os.readlink(s),
        ftype(os.path.realpath(s)),
        read(s),
        delta(before, times(d)),
        st.st_uid == os.getuid(),
    ]
    a, m, c = times(s)
    out.append(a == m == c)
    return out


@check
def check_symlink_errors(d: str) -> Any:
    touch(os.path.join(d, "f"))
    os.mkdir(os.path.join(d, "dir"))
    yield
    j = os.path.join
    return [
        E(os.symlink, "x", j(d, "f")),
        E(os.symlink, "x", j(d, "dir")),
        E(os.symlink, "x", j(d, "missing", "l")),
        E(os.symlink, "x", j(d, "f", "l")),
        E(os.symlink, "x", j(d, "n" * (NAME_MAX + 1))),
        E(os.symlink, "", j(d, "empty")),
        E(os.symlink, "t" * (PATH_MAX - 1), j(d, "longest")),
        E(os.symlink, "t" * PATH_MAX, j(d, "toolong")),
        E(lambda: len(os.readlink(j(d, "longest")))),
        E(os.symlink, "x", j(d, "slash/")),
        sorted(os.listdir(d)),
    ]


@check
def check_symlink_loops(d: str) -> Any:
    j = os.path.join
    os.symlink("b", j(d, "a"))
    os.symlink("a", j(d, "b"))
    touch(j(d, "end"), b"end")
    prev = "end"
    for i in range(45):
        os.symlink(prev, j(d, f"c{i}"))
        prev = f"c{i}"
    yield
    return [
        E(os.stat, j(d, "a")),
        E(lambda: os.open(j(d, "a"), os.O_RDONLY)),
        E(lambda: read(j(d, "c38"))),  # 39 links: within the kernel's limit of 40
        E(lambda: read(j(d, "c39"))),  # 40
        E(lambda: read(j(d, "c40"))),  # 41: ELOOP
        E(os.stat, j(d, "c44")),
        E(os.readlink, j(d, "a")),
        E(os.mkdir, j(d, "a", "x")),
    ]


@check
def check_readlink_errors(d: str) -> Any:
    touch(os.path.join(d, "f"))
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("f", os.path.join(d, "s"))
    yield
    j = os.path.join
    return [
        E(os.readlink, j(d, "f")),
        E(os.readlink, j(d, "dir")),
        E(os.readlink, j(d, "missing")),
        E(os.readlink, j(d, "f", "x")),
        E(os.readlink, j(d, "s")),
        E(os.readlink, j(d, "s/")),
    ]


@check
def check_symlink_metadata_targets(d: str) -> Any:
    """chmod/chown/utime follow a symlink; lchown/utimensat(NOFOLLOW) change the link itself."""
    t = touch(os.path.join(d, "t"), b"x", 0o644)
    s = os.path.join(d, "s")
    os.symlink("t", s)
    age(t)
    yield
    os.chmod(s, 0o600)
    os.chown(s, 11, 22)
    os.lchown(s, 33, 44)
    utimensat(s, ((5, 5), (6, 6)), follow=False)
    lt = os.lstat(s)
    tt = os.stat(t)
    out = [
        mode(t),
        mode(s),
        (tt.st_uid, tt.st_gid),
        (lt.st_uid, lt.st_gid),
        (lt.st_atime_ns, lt.st_mtime_ns),
        times(t)[:2] == (OLD_ATIME, OLD_MTIME),
        E(os.chmod, s, 0o700, follow_symlinks=False) if os.chmod in os.supports_follow_symlinks else "n/a",
        mode(s),
    ]
    return out


@check
def check_symlink_odd_targets(d: str) -> Any:
    targets = {"bytes": b"caf\xe9/\xff\xfe", "abs": b"/nonexistent/abs", "dots": b"../../..", "nl": b"a\nb"}
    yield
    out = {}
    for name, target in targets.items():
        p = os.path.join(os.fsencode(d), name.encode())
        os.symlink(target, p)
        out[name] = (os.readlink(p) == target, os.lstat(p).st_size)
    return out


# ============================================================ rename


@check
def check_rename_file(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"content")
    age(d)
    age(f)
    ino = os.stat(f).st_ino
    yield
    db, fb = times(d), times(f)
    g = os.path.join(d, "g")
    os.rename(f, g)
    return [
        os.path.lexists(f),
        read(g),
        os.stat(g).st_ino == ino,
        delta(db, times(d)),
        delta(fb, times(g)),
        nlink(g),
    ]


@check
def check_rename_across_directories(d: str) -> Any:
    src, dst = os.path.join(d, "src"), os.path.join(d, "dst")
    os.mkdir(src)
    os.mkdir(dst)
    touch(os.path.join(src, "f"))
    os.mkdir(os.path.join(src, "sub"))
    touch(os.path.join(src, "sub", "inner"), b"inner")
    for p in (src, dst, os.path.join(src, "sub")):
        age(p)
    yield
    sb, db, ub = times(src), times(dst), times(os.path.join(src, "sub"))
    nl = nlink(src, dst)
    os.rename(os.path.join(src, "f"), os.path.join(dst, "f"))
    out = [delta(sb, times(src)), delta(db, times(dst)), nlink(src, dst)]
    tick()
    sb, db = times(src), times(dst)
    os.rename(os.path.join(src, "sub"), os.path.join(dst, "sub"))
    moved = os.path.join(dst, "sub")
    out += [
        delta(sb, times(src)),
        delta(db, times(dst)),
        delta(ub, times(moved)),
        [a - b for a, b in zip(nlink(src, dst), nl, strict=True)],
        os.stat(os.path.join(moved, "..")).st_ino == os.stat(dst).st_ino,
        read(os.path.join(moved, "inner")),
    ]
    return out


@check
def check_rename_over_file(d: str) -> Any:
    a = touch(os.path.join(d, "a"), b"new content")
    b = touch(os.path.join(d, "b"), b"old content")
    keep = os.path.join(d, "keep")
    os.link(b, keep)
    age(b)
    yield
    kb = times(keep)
    os.rename(a, b)
    return [
        read(b),
        os.path.lexists(a),
        nlink(b, keep),
        read(keep),
        delta(kb, times(keep)),
        sorted(os.listdir(d)),
    ]


@check
def check_rename_directories(d: str) -> Any:
    j = os.path.join
    for n in ("a", "empty", "full", "a/child"):
        os.mkdir(j(d, n))
    touch(j(d, "full", "x"))
    touch(j(d, "file"))
    os.mkdir(j(d, "b"))
    yield
    out = [
        E(os.rename, j(d, "a"), j(d, "full")),
        E(os.rename, j(d, "a"), j(d, "file")),
        E(os.rename, j(d, "file"), j(d, "empty")),
        E(os.rename, j(d, "a"), j(d, "a", "child", "x")),
        E(os.rename, j(d, "a"), j(d, "a", "y")),
        E(os.rename, j(d, "a"), j(d, "a")),
        E(os.rename, j(d, "a", "."), j(d, "z")),
        E(os.rename, j(d, "a"), j(d, "a", "..")),
        E(os.rename, j(d, "b"), j(d, "empty")),
        sorted(os.listdir(d)),
        nlink(d),
        E(os.rename, j(d, "a/"), j(d, "a2/")),
        E(os.rename, j(d, "file"), j(d, "file2/")),
        sorted(os.listdir(d)),
    ]
    return out


@check
def check_rename_same_inode(d: str) -> Any:
    a = touch(os.path.join(d, "a"), b"same")
    b = os.path.join(d, "b")
    os.link(a, b)
    age(d)
    yield
    before = times(d)
    r = E(os.rename, a, b)
    return [r, sorted(os.listdir(d)), nlink(a, b), delta(before, times(d))]


@check
def check_rename_errors(d: str) -> Any:
    touch(os.path.join(d, "f"))
    os.mkdir(os.path.join(d, "dir"))
    age(d)
    yield
    before = times(d)
    j = os.path.join
    out = [
        E(os.rename, j(d, "missing"), j(d, "x")),
        E(os.rename, j(d, "f"), j(d, "missing", "x")),
        E(os.rename, j(d, "f"), j(d, "f", "x")),
        E(os.rename, j(d, "f", "x"), j(d, "y")),
        E(os.rename, j(d, "f"), j(d, "n" * (NAME_MAX + 1))),
        E(os.rename, j(d, "f/"), j(d, "g")),
        E(os.rename, j(d, "dir"), j(d, "dir", "sub")),
        delta(before, times(d)),
        sorted(os.listdir(d)),
    ]
    return out


@check
def check_rename_symlink(d: str) -> Any:
    touch(os.path.join(d, "t"), b"t")
    os.symlink("t", os.path.join(d, "s"))
    os.mkdir(os.path.join(d, "sub"))
    yield
    os.rename(os.path.join(d, "s"), os.path.join(d, "sub", "s"))
    moved = os.path.join(d, "sub", "s")
    return [ftype(moved), os.readlink(moved), E(lambda: read(moved)), read(os.path.join(d, "t"))]


@check
def check_renameat2_noreplace(d: str) -> Any:
    a = touch(os.path.join(d, "a"), b"A")
    b = touch(os.path.join(d, "b"), b"B")
    os.mkdir(os.path.join(d, "dir"))
    age(d)
    yield
    before = times(d)
    out = [
        E(renameat2, a, b, RENAME_NOREPLACE),
        E(renameat2, a, os.path.join(d, "dir"), RENAME_NOREPLACE),
        delta(before, times(d)),
        read(a),
        read(b),
        E(renameat2, a, os.path.join(d, "c"), RENAME_NOREPLACE),
        sorted(os.listdir(d)),
    ]
    return out


@check
def check_renameat2_exchange(d: str) -> Any:
    j = os.path.join
    a = touch(j(d, "a"), b"A")
    b = touch(j(d, "b"), b"BB")
    os.mkdir(j(d, "p"))
    os.mkdir(j(d, "q"))
    os.mkdir(j(d, "p", "dir"))
    touch(j(d, "q", "file"), b"F")
    for p in (a, b):
        age(p)
    ino_a = os.stat(a).st_ino
    yield
    ab, bb = times(a), times(b)
    out = [E(renameat2, a, b, RENAME_EXCHANGE), read(a), read(b), os.stat(b).st_ino == ino_a]
    out += [delta(ab, times(b)), delta(bb, times(a))]
    nl = nlink(j(d, "p"), j(d, "q"))
    out.append(E(renameat2, j(d, "p", "dir"), j(d, "q", "file"), RENAME_EXCHANGE))
    out += [
        ftype(j(d, "p", "dir")),
        ftype(j(d, "q", "file")),
        [x - y for x, y in zip(nlink(j(d, "p"), j(d, "q")), nl, strict=True)],
    ]
    out.append(os.stat(j(d, "q", "file", "..")).st_ino == os.stat(j(d, "q")).st_ino)
    out.append(E(renameat2, a, j(d, "missing"), RENAME_EXCHANGE))
    out.append(E(renameat2, a, b, RENAME_EXCHANGE | RENAME_NOREPLACE))
    out.append(E(renameat2, a, b, 1 << 5))
    out.append(E(renameat2, a, a, RENAME_EXCHANGE))
    out.append(E(renameat2, j(d, "p"), j(d, "p", "file"), RENAME_EXCHANGE))
    out.append(sorted(os.listdir(d)))
    return out


@check
def check_rename_sticky_nobody(d: str) -> Any:
    world(d, 0o1777)
    touch(os.path.join(d, "roots"), b"r", 0o666)
    yield
    j = os.path.join
    return nobody(
        ("open", j(d, "mine"), os.O_CREAT | os.O_WRONLY, 0o644),
        ("rename", j(d, "mine"), j(d, "roots")),
        ("rename", j(d, "roots"), j(d, "x")),
        ("rename", j(d, "mine"), j(d, "mine2"), RENAME_NOREPLACE),
        ("listdir", d),
    )


# ============================================================= chmod


@check
def check_chmod_modes(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    age(f)
    age(sub)
    yield
    out = []
    for p in (f, sub):
        for m in (0, 0o7777, 0o1777, 0o4755, 0o2755, 0o644):
            before = times(p)
            os.chmod(p, m)
            out.append((os.path.basename(p), oct(m), mode(p), delta(before, times(p))))
            tick()
    return out


@check
def check_chmod_errors(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    os.symlink("f", os.path.join(d, "s"))
    os.symlink("missing", os.path.join(d, "dangling"))
    yield
    j = os.path.join
    out = [
        E(os.chmod, j(d, "missing"), 0o600),
        E(os.chmod, j(d, "f", "x"), 0o600),
        E(os.chmod, j(d, "dangling"), 0o600),
        E(os.chmod, j(d, "s"), 0o640),
        mode(f),
        mode(j(d, "s")),
    ]
    fd = os.open(f, os.O_RDONLY)
    try:
        out.append(E(os.fchmod, fd, 0o604))
    finally:
        os.close(fd)
    out.append(mode(f))
    return out


@check
def check_chmod_nobody(d: str) -> Any:
    world(d)
    roots = touch(os.path.join(d, "roots"), b"", 0o666)
    yield
    j = os.path.join
    mine = j(d, "mine")
    kid = nobody(
        ("chmod", roots, 0o600),
        ("open", mine, os.O_CREAT | os.O_WRONLY, 0o644),
        ("chmod", mine, 0o4755),
        ("stat", mine, "mode"),
        ("chmod", mine, 0o1644),
        ("stat", mine, "mode"),
    )
    os.chown(mine, -1, 0)  # now in a group nobody does not belong to
    kid += nobody(
        ("chmod", mine, 0o2755),
        ("stat", mine, "mode"),
        ("mkdir", j(d, "mydir"), 0o755),
        ("chmod", j(d, "mydir"), 0o3777),
        ("stat", j(d, "mydir"), "mode"),
    )
    return [kid, mode(roots)]


@check
def check_write_clears_setid_nobody(d: str) -> Any:
    world(d)
    j = os.path.join
    for n, m in (("suid", 0o4777), ("sgid", 0o2777), ("both", 0o6777), ("sgid_nox", 0o2766)):
        touch(j(d, n), b"0", 0o777)
        os.chmod(j(d, n), m)
    yield
    kid = nobody(*[("write", j(d, n), "x") for n in ("suid", "sgid", "both", "sgid_nox")])
    return [kid, [mode(j(d, n)) for n in ("suid", "sgid", "both", "sgid_nox")]]


@check
def check_truncate_clears_setid_nobody(d: str) -> Any:
    world(d)
    f = touch(os.path.join(d, "f"), b"123", 0o777)
    os.chmod(f, 0o6777)
    yield
    return [nobody(("truncate", f, 1)), mode(f), os.stat(f).st_size]


# ============================================================= chown


@check
def check_chown_root(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    s = os.path.join(d, "s")
    os.symlink("f", s)
    for p in (f, sub):
        age(p)
    yield
    out = []
    for p in (f, sub):
        before = times(p)
        os.chown(p, 1001, 1002)
        st = os.stat(p)
        out.append(((st.st_uid, st.st_gid), delta(before, times(p))))
        tick()
        os.chown(p, -1, 1003)
        os.chown(p, 1004, -1)
        st = os.stat(p)
        out.append((st.st_uid, st.st_gid))
    os.lchown(s, 7, 8)
    out.append((os.lstat(s).st_uid, os.lstat(s).st_gid, os.stat(f).st_uid))
    out.append(E(os.chown, os.path.join(d, "missing"), 0, 0))
    out.append(E(os.chown, os.path.join(d, "f", "x"), 0, 0))
    return out


@check
def check_chown_minus_one_ctime(d: str) -> Any:
    """chown(-1, -1): Linux updates ctime; POSIX lets it leave the times alone."""
    f = touch(os.path.join(d, "f"))
    yield
    before = times(f)
    os.chown(f, -1, -1)
    return delta(before, times(f))


@check
def check_chown_clears_setid(d: str) -> Any:
    j = os.path.join
    for n, m in (("suid", 0o4755), ("sgid", 0o2755), ("sgid_nox", 0o2745), ("both", 0o6755)):
        touch(j(d, n), b"", 0o755)
        os.chmod(j(d, n), m)
    os.mkdir(j(d, "dir"))
    os.chmod(j(d, "dir"), 0o6755)
    yield
    for n in ("suid", "sgid", "sgid_nox", "both", "dir"):
        os.chown(j(d, n), 1, 1)
    return [mode(j(d, n)) for n in ("suid", "sgid", "sgid_nox", "both", "dir")]


@check
def check_chown_nobody(d: str) -> Any:
    world(d)
    roots = touch(os.path.join(d, "roots"), b"", 0o666)
    yield
    mine = os.path.join(d, "mine")
    return nobody(
        ("chown", roots, NOBODY, NOBODY),
        ("open", mine, os.O_CREAT | os.O_WRONLY, 0o644),
        ("chown", mine, 0, -1),
        ("chown", mine, -1, 0),
        ("chown", mine, NOBODY, NOBODY),
        ("chown", mine, -1, -1),
        ("stat", mine, "st_uid"),
        ("stat", mine, "st_gid"),
    )


# ========================================================= utimensat


@check
def check_utimensat_explicit(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    yield
    out = []
    for at, mt in (((1, 123), (2, 456)), ((1_500_000_000, 999_999_999), (1_600_000_000, 1))):
        before = times(f)
        utimensat(f, (at, mt))
        a, m, c = times(f)
        out.append((a == at[0] * 10**9 + at[1], m == mt[0] * 10**9 + mt[1], c != before[2]))
        tick()
    return out


@check
def check_utimensat_omit_and_now(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    age(f)
    yield
    out = []
    for at, mt in (
        (UTIME_OMIT, UTIME_OMIT),
        (UTIME_OMIT, (3, 3)),
        ((4, 4), UTIME_OMIT),
        (UTIME_NOW, UTIME_OMIT),
        (UTIME_OMIT, UTIME_NOW),
        (UTIME_NOW, UTIME_NOW),
        ((5, 5), UTIME_NOW),
    ):
        before = times(f)
        utimensat(f, (at, mt))
        after = times(f)
        out.append(
            (
                delta(before, after),
                after[0] == after[2],
                after[1] == after[2],
                after[0] if isinstance(at, tuple) else None,
                after[1] if isinstance(mt, tuple) else None,
            )
        )
        tick()
    before = times(f)
    utimensat(f, None)
    after = times(f)
    out.append((delta(before, after), after[0] == after[1] == after[2]))
    return out


@check
def check_utimensat_marker_lookalikes(d: str) -> Any:
    """Genuine times whose nanosecond sum equals UTIME_NOW / UTIME_OMIT (1.073741823 s / ...822 s)."""
    f = touch(os.path.join(d, "f"))
    age(f)
    yield
    utimensat(f, ((1, 73_741_823), (1, 73_741_822)))
    a, m, _ = times(f)
    return [a, m]


@check
def check_utimensat_symlink_nofollow(d: str) -> Any:
    t = touch(os.path.join(d, "t"))
    s = os.path.join(d, "s")
    os.symlink("t", s)
    age(t)
    yield
    utimensat(s, ((7, 7), (8, 8)), follow=False)
    out = [times(s)[:2], times(t)[:2] == (OLD_ATIME, OLD_MTIME)]
    before = times(s)
    utimensat(s, ((9, 9), (10, 10)), follow=True)
    out += [delta(before, times(s)), times(s)[1], times(t)[:2]]
    return out


@check
def check_utimensat_errors(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    age(f)
    yield
    j = os.path.join
    return [
        E(utimensat, j(d, "missing"), None),
        E(utimensat, j(d, "f", "x"), None),
        E(utimensat, f, ((0, 1_000_000_000), (0, 0))),
        E(utimensat, f, ((0, -1), (0, 0))),
        times(f)[:2] == (OLD_ATIME, OLD_MTIME),
    ]


@check
def check_utimensat_extreme_times(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    yield
    out = []
    for t in ((-1, 500), (-(10**9), 0), (1 << 33, 7), ((1 << 34) - 1, 999_999_999), (0, 0)):
        out.append((t, E(utimensat, f, (t, t)), times(f)[:2]))
    return out


@check
def check_utimensat_nobody(d: str) -> Any:
    world(d)
    wr = touch(os.path.join(d, "wr"), b"", 0o666)
    ro = touch(os.path.join(d, "ro"), b"", 0o644)
    age(wr)
    age(ro)
    yield
    now, omit = (0, UTIME_NOW), (0, UTIME_OMIT)
    kid = nobody(
        ("utimens", wr, None),
        ("utimens", wr, [now, now]),
        ("utimens", wr, [[1, 1], [2, 2]]),
        ("utimens", wr, [now, omit]),
        ("utimens", wr, [omit, omit]),
        ("utimens", ro, None),
        ("utimens", ro, [now, now]),
        ("utimens", ro, [[1, 1], [2, 2]]),
        ("utimens", ro, [omit, omit]),
        ("open", os.path.join(d, "mine"), os.O_CREAT | os.O_WRONLY, 0o644),
        ("utimens", os.path.join(d, "mine"), [[1, 1], [2, 2]]),
        ("stat", os.path.join(d, "mine"), "st_mtime_ns"),
    )
    return [kid, times(ro)[:2] == (OLD_ATIME, OLD_MTIME), times(wr)[:2] == (OLD_ATIME, OLD_MTIME)]


# ============================================================ xattrs


@check
def check_xattr_basic(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    os.setxattr(f, "user.pre", b"existing")
    yield
    out = []
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.b", b"")
    os.setxattr(f, "user.c", bytes(range(256)) * 4)
    out.append(sorted(os.listxattr(f)))
    out.append(
        [
            os.getxattr(f, n) == v
            for n, v in (("user.a", b"1"), ("user.b", b""), ("user.c", bytes(range(256)) * 4))
        ]
    )
    os.setxattr(f, "user.a", b"22")
    out.append(os.getxattr(f, "user.a"))
    os.removexattr(f, "user.a")
    os.removexattr(f, "user.pre")
    out.append(sorted(os.listxattr(f)))
    out.append(E(os.getxattr, f, "user.a"))
    return out


@check
def check_xattr_errors(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    os.setxattr(f, "user.x", b"x")
    yield
    j = os.path.join
    return [
        E(os.getxattr, f, "user.nope"),
        E(os.removexattr, f, "user.nope"),
        E(os.setxattr, f, "user.x", b"y", XATTR_CREATE),
        E(os.setxattr, f, "user.new", b"y", XATTR_REPLACE),
        E(os.setxattr, f, "user.new2", b"z", XATTR_CREATE),
        E(os.setxattr, f, "user.x", b"r", XATTR_REPLACE),
        E(os.setxattr, f, "user.x", b"r", XATTR_CREATE | XATTR_REPLACE),
        E(os.getxattr, j(d, "missing"), "user.x"),
        E(os.setxattr, j(d, "missing"), "user.x", b""),
        E(os.listxattr, j(d, "missing")),
        E(os.getxattr, j(d, "f", "x"), "user.x"),
        E(os.setxattr, f, "nonamespace", b"v"),
        E(os.setxattr, f, "user." + "n" * 251, b"v"),
        E(os.setxattr, f, "user." + "n" * 250, b"v"),
        E(os.setxattr, f, "user.huge", b"h" * 65537),
        E(os.setxattr, f, "user.big", b"b" * 3000),
        E(lambda: len(os.getxattr(f, "user.big"))),
        sorted(os.listxattr(f)),
        os.getxattr(f, "user.x"),
    ]


@check
def check_xattr_buffer_sizes(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    os.setxattr(f, "user.value", b"0123456789")
    os.setxattr(f, "user.other", b"")
    yield
    return [
        E(getxattr_size, f, "user.value", 0),
        E(getxattr_size, f, "user.value", 3),
        E(getxattr_size, f, "user.value", 10),
        E(getxattr_size, f, "user.other", 0),
        E(listxattr_size, f, 0),
        E(listxattr_size, f, 2),
        E(listxattr_size, f, 100),
    ]


@check
def check_xattr_file_types(d: str) -> Any:
    t = touch(os.path.join(d, "t"))
    s = os.path.join(d, "s")
    os.symlink("t", s)
    sub = os.path.join(d, "dir")
    os.mkdir(sub)
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)
    yield
    return [
        E(os.setxattr, s, "user.l", b"1", follow_symlinks=False),
        E(os.setxattr, s, "user.t", b"2"),
        E(os.getxattr, t, "user.t"),
        E(os.listxattr, s, follow_symlinks=False),
        E(os.setxattr, sub, "user.d", b"3"),
        E(os.getxattr, sub, "user.d"),
        E(os.setxattr, fifo, "user.f", b"4"),
        E(os.setxattr, t, "trusted.root", b"5"),
        E(os.getxattr, t, "trusted.root"),
        sorted(os.listxattr(t)),
    ]


@check
def check_xattr_times(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    age(f)
    yield
    out = []
    for op in (
        lambda: os.setxattr(f, "user.a", b"1"),
        lambda: os.setxattr(f, "user.a", b"2"),
        lambda: os.getxattr(f, "user.a"),
        lambda: os.listxattr(f),
        lambda: os.removexattr(f, "user.a"),
        lambda: E(os.removexattr, f, "user.a"),
    ):
        before = times(f)
        op()
        out.append(delta(before, times(f)))
        tick()
    return out


@check
def check_xattr_nobody(d: str) -> Any:
    world(d)
    ro = touch(os.path.join(d, "ro"), b"", 0o644)
    rw = touch(os.path.join(d, "rw"), b"", 0o666)
    priv = touch(os.path.join(d, "priv"), b"", 0o600)
    os.setxattr(ro, "user.r", b"r")
    os.setxattr(priv, "user.p", b"p")
    yield
    return nobody(
        ("setxattr", ro, "user.n", "v"),
        ("getxattr", ro, "user.r"),
        ("setxattr", rw, "user.n", "v"),
        ("getxattr", rw, "user.n"),
        ("getxattr", priv, "user.p"),
        ("removexattr", ro, "user.r"),
        ("setxattr", rw, "trusted.n", "v"),
    )


# ===================================================== names and paths


@check
def check_name_max(d: str) -> Any:
    long = "L" * NAME_MAX
    touch(os.path.join(d, "p" + "x" * (NAME_MAX - 1)), b"pre")
    yield
    j = os.path.join
    p = j(d, long)
    out = [E(lambda: touch(p, b"255") and None)]
    out.append(read(p))
    out.append(E(os.rename, p, j(d, "R" * NAME_MAX)))
    out.append(E(os.link, j(d, "R" * NAME_MAX), j(d, "K" * NAME_MAX)))
    out.append(E(os.mkdir, j(d, "D" * NAME_MAX)))
    out.append(E(os.symlink, "x", j(d, "S" * NAME_MAX)))
    out.append(sorted(len(n) for n in os.listdir(d)))
    out.append(E(os.unlink, j(d, "p" + "x" * (NAME_MAX - 1))))
    out.append(sorted(n[0] for n in os.listdir(d)))
    return out


@check
def check_name_too_long(d: str) -> Any:
    f = touch(os.path.join(d, "f"))
    yield
    j = os.path.join
    over = "O" * (NAME_MAX + 1)
    return [
        E(os.stat, j(d, over)),
        E(lambda: os.open(j(d, over), os.O_CREAT | os.O_WRONLY, 0o644)),
        E(os.mkdir, j(d, over)),
        E(os.symlink, "x", j(d, over)),
        E(os.link, f, j(d, over)),
        E(os.rename, f, j(d, over)),
        E(os.mkfifo, j(d, over)),
        E(os.unlink, j(d, over)),
        E(os.stat, j(d, over, "x")),
        sorted(os.listdir(d)),
    ]


@check
def check_names_non_utf8_and_odd(d: str) -> Any:
    bd = os.fsencode(d)
    names = [
        b"caf\xe9",
        b"\xff\xfe",
        b"nl\nname",
        b"back\\slash",
        b" space ",
        b"-dash",
        b"...",
        "üñí".encode(),
    ]
    touch(os.path.join(bd, b"pre\xe9").decode("utf-8", "surrogateescape"), b"pre")
    yield
    out = []
    for n in names:
        p = os.path.join(bd, n)
        with open(p, "wb") as f:
            f.write(n)
        out.append((n, os.stat(p).st_size, read(os.fsdecode(p)) == n))
    os.rename(os.path.join(bd, names[0]), os.path.join(bd, b"ren\xe0med"))
    os.mkdir(os.path.join(bd, b"dir\xfa"))
    os.rename(os.path.join(bd, b"pre\xe9"), os.path.join(bd, b"dir\xfa", b"in\xf1"))
    out.append(sorted(os.listdir(bd)))
    out.append(sorted(os.listdir(os.path.join(bd, b"dir\xfa"))))
    os.unlink(os.path.join(bd, names[1]))
    out.append(sorted(os.listdir(bd)))
    return out


def _deep(d: str, total: int, part: int = 200) -> tuple[str, str]:
    """Nested directories under ``d``: (relative path of about ``total`` bytes, its last directory)."""
    parts, length = [], 0
    while length + part + 1 < total:
        parts.append("d" * part)
        length += part + 1
    rel = "/".join(parts)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        cur = fd
        for p in parts:
            os.mkdir(p, dir_fd=cur)
            nxt = os.open(p, os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
            if cur != fd:
                os.close(cur)
            cur = nxt
        if cur != fd:
            os.close(cur)
    finally:
        os.close(fd)
    return rel, parts[-1]


@check
def check_path_near_path_max(d: str) -> Any:
    """A path of ~3900 bytes from the check directory (a little more from the volume root)."""
    rel, _ = _deep(d, 3900)
    yield
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        leaf = rel + "/" + "f" * 10
        out = [len(leaf)]
        out.append(E(lambda: os.close(os.open(leaf, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd))))
        out.append(E(lambda: os.stat(leaf, dir_fd=dfd).st_size))
        out.append(E(os.rename, leaf, leaf + "2", src_dir_fd=dfd, dst_dir_fd=dfd))
        out.append(E(os.symlink, "target", leaf + "s", dir_fd=dfd))
        out.append(E(os.mkdir, leaf + "d", dir_fd=dfd))
        # "./" padding: path strings of PATH_MAX - 1 and PATH_MAX bytes that name the same file
        name = "f" * 10 + "2"
        dots = "./" * ((PATH_MAX - 1 - len(rel) - 1 - len(name)) // 2)
        slashes = "/" * (PATH_MAX - 1 - len(rel) - len(dots) - len(name))
        longest = rel + slashes + dots + name
        out.append(len(longest))
        out.append(E(lambda: os.stat(longest, dir_fd=dfd).st_size))
        out.append(E(lambda: os.stat(rel + "/" + slashes + dots + name, dir_fd=dfd).st_size))
        out.append(E(lambda: os.close(os.open(rel + "/" + slashes + dots + "x", os.O_CREAT, dir_fd=dfd))))
        out.append(sorted(os.listdir(os.path.join(d, rel))))
    finally:
        os.close(dfd)
    return out


@check
def check_path_deeper_than_path_max(d: str) -> Any:
    """A tree whose depth exceeds PATH_MAX, worked on with openat relative to nearby directories."""
    yield
    out = []
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    fds = [fd]
    try:
        for i in range(24):  # 24 * 201 bytes: about 4.8 KiB deep
            r = E(os.mkdir, "d" * 200, dir_fd=fds[-1])
            if r != "ok":
                out.append((i, "mkdir", r))
                break
            fds.append(os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        last = fds[-1]
        out.append(len(fds))
        out.append(E(lambda: os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=last))))
        out.append(E(lambda: os.stat("leaf", dir_fd=last).st_size))
        out.append(E(os.listdir, last))
    finally:
        for f in fds:
            os.close(f)
    return out


# ====================================================== large files


@check
def check_large_offsets(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"head")
    yield
    out = []
    fd = os.open(f, os.O_RDWR)
    try:
        for off in (1 << 31, 1 << 32, 1 << 33, 1 << 40):
            out.append(E(os.pwrite, fd, b"@" + off.to_bytes(8, "big"), off))
            out.append(os.pread(fd, 9, off)[1:] == off.to_bytes(8, "big"))
        out.append(os.fstat(fd).st_size)
        out.append(os.pread(fd, 8, (1 << 33) - 8))
        out.append(os.fstat(fd).st_blocks * 512 < (1 << 22))
        out.append(E(os.pwrite, fd, b"x", 1 << 62))
        out.append(E(os.ftruncate, fd, 1 << 62))
    finally:
        os.close(fd)
    return out


@check
def check_fallocate(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"z" * 200_000)
    yield
    out = []
    fd = os.open(f, os.O_RDWR)
    try:
        out.append(E(os.posix_fallocate, fd, 0, 500_000))
        out.append(os.fstat(fd).st_size)
        out.append(E(fallocate, fd, FALLOC_FL_KEEP_SIZE, 0, 2_000_000))
        out.append(os.fstat(fd).st_size)
        out.append(E(fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192))
        out.append(os.pread(fd, 4, 4096) + os.pread(fd, 4, 12288))
        out.append(E(fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 4096))
        out.append(E(fallocate, fd, 0, 0, 0))
        out.append(E(fallocate, fd, 0, -1, 10))
    finally:
        os.close(fd)
    fd = os.open(f, os.O_RDONLY)
    try:
        out.append(E(fallocate, fd, 0, 0, 10))
    finally:
        os.close(fd)
    out.append(os.stat(f).st_size)
    return out


# ============================================================ misc


@check
def check_readdir_inodes_and_types(d: str) -> Any:
    touch(os.path.join(d, "f"))
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("f", os.path.join(d, "sym"))
    os.mkfifo(os.path.join(d, "fifo"))
    os.link(os.path.join(d, "f"), os.path.join(d, "hard"))
    yield
    os.mknod(os.path.join(d, "sock"), stat.S_IFSOCK | 0o600)
    touch(os.path.join(d, "new"))
    out = []
    with os.scandir(d) as it:
        for e in sorted(it, key=lambda e: e.name):
            st = os.lstat(e.path)
            out.append(
                (
                    e.name,
                    e.inode() == st.st_ino,
                    e.is_dir(follow_symlinks=False),
                    e.is_file(follow_symlinks=False),
                    e.is_symlink(),
                )
            )
    out.append(os.stat(os.path.join(d, "f")).st_ino == os.stat(os.path.join(d, "hard")).st_ino)
    return out


@check
def check_readdir_many(d: str) -> Any:
    for i in range(300):
        touch(os.path.join(d, f"pre{i:04d}"))
    yield
    for i in range(0, 300, 2):
        os.unlink(os.path.join(d, f"pre{i:04d}"))
    for i in range(200):
        os.mkdir(os.path.join(d, f"new{i:04d}"))
    names = os.listdir(d)
    return [len(names), len(set(names)), digest("\n".join(sorted(names)).encode()), os.stat(d).st_nlink]


@check
def check_dirfd_follows_renamed_directory(d: str) -> Any:
    a = os.path.join(d, "a")
    os.mkdir(a)
    touch(os.path.join(a, "f"), b"f")
    yield
    fd = os.open(a, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(a, os.path.join(d, "b"))
        out = [
            E(lambda: os.close(os.open("g", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))),
            E(os.mkdir, "sub", dir_fd=fd),
            E(os.unlink, "f", dir_fd=fd),
            E(os.rename, "g", "h", src_dir_fd=fd, dst_dir_fd=fd),
            sorted(os.listdir(fd)),
        ]
    finally:
        os.close(fd)
    out.append(sorted(os.listdir(os.path.join(d, "b"))))
    return out


@check
def check_fsync_and_statvfs(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"sync me")
    yield
    fd = os.open(f, os.O_RDWR)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = [E(os.fsync, fd), E(os.fdatasync, fd), E(os.fsync, dfd)]
    finally:
        os.close(fd)
        os.close(dfd)
    sv = os.statvfs(d)
    out += [sv.f_namemax, bool(sv.f_flag & os.ST_RDONLY), sv.f_bsize > 0, sv.f_blocks > 0]
    return out


@check
def check_access_as_root(d: str) -> Any:
    f = touch(os.path.join(d, "f"), b"", 0o644)
    x = touch(os.path.join(d, "x"), b"", 0o610)
    n = touch(os.path.join(d, "n"), b"", 0)
    yield
    return [[os.access(p, m) for m in (os.R_OK, os.W_OK, os.X_OK, os.F_OK)] for p in (f, x, n, d)] + [
        os.access(os.path.join(d, "missing"), os.F_OK)
    ]


@check
def check_ctime_of_preexisting_metadata_changes(d: str) -> Any:
    """Every metadata change on an object that existed before moves its ctime, and only that."""
    j = os.path.join
    f = touch(j(d, "f"), b"data")
    sub = j(d, "sub")
    os.mkdir(sub)
    s = j(d, "s")
    os.symlink("f", s)
    for p in (f, sub):
        age(p)
    yield
    out = []
    for p, op in (
        (f, lambda: os.chmod(f, 0o600)),
        (f, lambda: os.chown(f, 5, 5)),
        (f, lambda: os.setxattr(f, "user.x", b"1")),
        (f, lambda: os.truncate(f, 2)),
        (sub, lambda: os.chmod(sub, 0o700)),
        (sub, lambda: touch(j(sub, "new"))),
        (sub, lambda: os.unlink(j(sub, "new"))),
        (s, lambda: os.lchown(s, 6, 6)),
    ):
        before = times(p)
        op()
        out.append((os.path.basename(p), delta(before, times(p))))
        tick()
    return out


# ============================================================= runner


def run(
    root: str,
    between: Callable[[], None] | None = None,
    *,
    only: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Run the battery in ``root`` (an empty or new directory); {check name: result}.

    Every check gets ``root/<name>``. All setups run first, then ``between``
    (e.g. take a snapshot), then every action. An unexpected exception is a
    result too (its type and errno), so one broken check never hides the
    others.
    """
    root = os.path.abspath(root)
    names = list(only) if only is not None else list(CHECKS)
    old_umask = os.umask(UMASK)
    os.makedirs(root, 0o755, exist_ok=True)
    results: dict[str, Any] = {}
    running: dict[str, Generator[None, None, Any]] = {}
    try:
        for name in names:
            path = os.path.join(root, name)
            os.mkdir(path, 0o755)
            gen = CHECKS[name](path)
            try:
                next(gen)
            except StopIteration as stop:
                results[name] = ("finished in setup", stop.value)
            except Exception as exc:
                results[name] = ("setup failed", _describe(exc))
            else:
                running[name] = gen
        time.sleep(3 * TICK)
        if between is not None:
            between()
        time.sleep(3 * TICK)
        for name, gen in running.items():
            try:
                gen.send(None)
            except StopIteration as stop:
                results[name] = stop.value
            except Exception as exc:
                results[name] = ("failed", _describe(exc))
            else:
                results[name] = ("yielded twice",)
                gen.close()
    finally:
        os.umask(old_umask)
    return {name: results[name] for name in names}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{type(exc).__name__}: {errno.errorcode.get(exc.errno, exc.errno)}"
    return f"{type(exc).__name__}: {exc}"


def differences(expected: dict[str, Any], got: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{check: (expected result, got result)} for every check whose results differ."""
    return {
        name: (expected.get(name), got.get(name))
        for name in sorted(set(expected) | set(got))
        if expected.get(name) != got.get(name)
    }


def main(argv: list[str]) -> int:
    if argv[1:] == ["--list"]:
        print("\n".join(CHECKS))
        return 0
    if len(argv) != 2:
        print("usage: posix_battery.py DIR | --list", file=sys.stderr)
        return 2
    for name, result in run(argv[1]).items():
        print(json.dumps({"check": name, "result": result}, default=repr))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
